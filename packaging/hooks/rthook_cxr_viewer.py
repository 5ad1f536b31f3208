# PyInstaller runtime hook: runs before the application's first import in the frozen app.
# The CPU bundle ships without PyTorch: say so explicitly so nothing on the host can make
# the app try torch, and never let a library reach the network.
import importlib.abc
import importlib.machinery
import os
import sys
import types

os.environ.setdefault("CXR_VIEWER_NO_TORCH", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The torch network definitions are left out of this build (their exports run on ONNX
# Runtime instead). Code that imports them only to register the architectures gets an
# empty module; touching anything in it raises an error that says why. Needed while
# cxr_viewer/qt/analysis.py imports cxr_viewer.core.models.segmenter for registration.
_TORCH_ONLY = ("cxr_viewer.core.models.segmenter", "cxr_viewer.core.models.classifier")


class _TorchOnlyModule(types.ModuleType):
    def __getattr__(self, name):
        raise AttributeError(
            f"{self.__name__}.{name} needs PyTorch, which this CPU build of cxr-viewer leaves out; "
            "its models run through their ONNX exports instead."
        )


class _TorchOnlyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name in _TORCH_ONLY else None

    def create_module(self, spec):
        return _TorchOnlyModule(spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _TorchOnlyFinder())
