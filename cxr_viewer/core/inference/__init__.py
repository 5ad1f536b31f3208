"""Running bundles on images: findings, Grad-CAM heatmaps, quality-control flags.

Import submodules directly (``cxr_viewer.core.inference.engine``); this package
imports nothing heavy so the GUI starts fast.
"""
