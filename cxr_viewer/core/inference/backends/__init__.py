"""What runs a bundle's network: one protocol, a torch backend and an ONNX Runtime backend.

The engine and the segmenter pick one backend per bundle (see ``engine.InferenceEngine``)
and keep everything else -- caches, thresholds, QC, derived findings, ``restore_map`` --
above it, written once.
"""

from cxr_viewer.core.inference.backends.base import ClassifierBackend, Executed, SegmentationBackend

__all__ = ["ClassifierBackend", "Executed", "SegmentationBackend"]
