"""cxr-viewer: a local chest X-ray viewer with findings, Grad-CAM and report-conditioned masks."""

import os as _os

__version__ = "0.1.0"

# Nothing leaves the machine: ONNX Runtime otherwise looks up its telemetry host and keeps a device ID
# and an event queue under ~/.cache/Microsoft/, and only this variable, set before onnxruntime is
# imported, stops it (its own disable call does not). Every entry point (app, CLI, cxr-train, library
# use) imports this package first, so it is set here; the frozen app's runtime hook sets it too.
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"
