"""Docked panels that show model results: findings, heatmap controls, report masks, model manager.

They listen to the :class:`~cxr_viewer.qt.analysis.AnalysisController` and the
session; none of them imports torch.
"""
