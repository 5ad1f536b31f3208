"""ONNX Runtime backend for classifier forwards on CPU.

Why: on CPU, ONNX Runtime's fused kernels run our small CNNs faster than eager
torch (see ``benchmarks/bench_inference.py``). An export is only ever used after
its outputs match torch's within ``ATOL`` on the same input; any failure falls back
to torch, which also serves the GPU and the gradient-based CAMs.

Exports are cached by the weights' sha256: beside the bundle (``model.onnx``,
recorded in the manifest) or in the user cache folder.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import InferenceError

if TYPE_CHECKING:
    from torch import nn

    from cxr_viewer.core.models.bundle import LoadedBundle
    from cxr_viewer.core.models.preprocess import Preprocessing

log = logging.getLogger(__name__)

ATOL = 1e-4
OPSET = 18

__all__ = ["ATOL", "OnnxRunner", "export_onnx", "onnx_runner_for", "verify_against_torch"]


def _export(model: "nn.Module", example: Any, path: Path) -> None:
    import torch

    errors: list[str] = []
    # torch.export-based exporter (needs onnxscript), then the TorchScript one.
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if dynamo:
                    torch.onnx.export(
                        model,
                        (example,),
                        str(path),
                        dynamo=True,
                        external_data=False,
                        input_names=["input"],
                        output_names=["logits"],
                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                        opset_version=OPSET,
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        model,
                        (example,),
                        str(path),
                        dynamo=False,
                        input_names=["input"],
                        output_names=["logits"],
                        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                        opset_version=17,
                    )
            return
        except Exception as exc:  # noqa: BLE001 - exporter failures are many and varied; we fall back
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc)[:200]}")
    raise InferenceError("The model could not be exported to ONNX (" + " | ".join(errors) + ").")


class OnnxRunner:
    """A thread-safe ONNX Runtime session taking (N, C, H, W) float32 and returning logits."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def verify_against_torch(
    runner: OnnxRunner, model: "nn.Module", spec: "Preprocessing", *, atol: float = ATOL, seed: int = 0
) -> float:
    """Max |onnx - torch| on a fixed random batch of 2; raises InferenceError above ``atol``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, spec.channels, *spec.size, generator=g)
    with torch.inference_mode():
        ref = model(x.to(next(model.parameters()).device)).float().cpu().numpy()
    got = runner(x.numpy())
    if got.shape != ref.shape:
        raise InferenceError(f"ONNX output shape {got.shape} differs from torch {ref.shape}.")
    diff = float(np.max(np.abs(got - ref)))
    if not np.isfinite(diff) or diff > atol:
        raise InferenceError(f"ONNX output differs from torch by {diff:.2e} (limit {atol:.0e}).")
    return diff


def export_onnx(model: "nn.Module", spec: "Preprocessing", path: str | Path, *, atol: float = ATOL) -> Path:
    """Export ``model`` (eval mode, CPU) for ``spec``'s input and verify it; returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    model = model.eval()
    example = torch.zeros(1, spec.channels, *spec.size)
    try:
        _export(model, example, tmp)
        verify_against_torch(OnnxRunner(tmp, threads=1), model, spec, atol=atol)
        os.replace(tmp, path)
    finally:
        for p in (tmp, Path(str(tmp) + ".data")):
            if p.exists():
                p.unlink()
    return path


def onnx_runner_for(bundle: "LoadedBundle", *, cache_dir: str | Path | None = None, threads: int | None = None) -> OnnxRunner | None:
    """A verified ONNX runner for a loaded classifier bundle, or ``None`` (then use torch).

    Looks for the bundle's own ``model.onnx`` (made for these exact weights), then the
    cache, else exports into the cache. Every candidate is re-verified against the
    torch model before use.
    """
    from cxr_viewer.core.models.bundle import sha256_file
    from cxr_viewer.core.paths import user_cache_dir

    if next(bundle.model.parameters()).device.type != "cpu":
        return None
    candidates: list[Path] = []
    rec = bundle.manifest.extra.get("onnx")
    if isinstance(rec, dict) and rec.get("weights_sha256") == bundle.sha256 and rec.get("file"):
        p = bundle.path / str(rec["file"])
        if p.suffix == ".onnx" and p.exists() and (not rec.get("sha256") or sha256_file(p) == rec["sha256"]):
            candidates.append(p)
    cache = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "onnx"
    cached = cache / f"{bundle.sha256[:32]}.onnx"
    candidates.append(cached)
    for p in candidates:
        if not p.exists():
            continue
        try:
            runner = OnnxRunner(p, threads=threads)
            diff = verify_against_torch(runner, bundle.model, bundle.preprocessing)
            log.info("ONNX backend for %s from %s (max diff %.1e)", bundle.name, p.name, diff)
            return runner
        except Exception as exc:  # noqa: BLE001 - a bad cached file must never stop inference
            log.warning("ignoring ONNX file %s for %s: %s", p, bundle.name, exc)
    try:
        with bundle.lock:
            export_onnx(bundle.model, bundle.preprocessing, cached)
        return OnnxRunner(cached, threads=threads)
    except Exception as exc:  # noqa: BLE001
        log.warning("ONNX backend unavailable for %s, using torch: %s", bundle.name, exc)
        return None
