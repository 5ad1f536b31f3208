# PyInstaller runtime hook: runs before the application's first import in the frozen app.
# The CPU bundle ships without PyTorch: say so explicitly so nothing on the host can make
# the app try torch, and never let a library reach the network.
import os

os.environ.setdefault("CXR_VIEWER_NO_TORCH", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# ONNX Runtime telemetry (a device ID and event queue under ~/.cache/Microsoft/) is off only when this is
# set before onnxruntime loads; forced, not defaulted: the app promises that nothing leaves the machine.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
