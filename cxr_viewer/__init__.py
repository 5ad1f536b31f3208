"""cxr-viewer: a local chest X-ray viewer with findings, Grad-CAM and report-conditioned masks."""

__version__ = "0.1.0"
