"""The ONNX Runtime backend (what the torch-free app runs) against the torch backend, measured in the same run.

    python benchmarks/bench_lane.py [--threads 1] [--repeats 7]

Builds a random-weight ResNet-18 classifier bundle (224 px, the default models'
shape) and a tiny text U-Net in a temporary folder, exports them (``onnx_export``), then times
(median of ``--repeats``) on a 2500x2048 radiograph-sized image:

- scores: ``InferenceEngine.analyze`` with ``backend="torch"`` vs ``backend="onnx"``;
- a Grad-CAM heatmap: pytorch-grad-cam (gradients) vs the closed form from the exported map;
- report masks for three sentences: the torch vs the ONNX segmentation backend (embeddings cached);
- cold start in a fresh process: import + load the bundle + first analysis, with torch vs
  ``CXR_VIEWER_NO_TORCH=1`` (what the frozen CPU app does).

Prints each figure and the ratio torch / lane (above 1: the lane is faster).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _row(name: str, torch_ms: float, lane_ms: float) -> None:
    print(f"{name:<44} torch {torch_ms:9.1f} ms   onnx {lane_ms:9.1f} ms   ratio {torch_ms / lane_ms:6.2f}")


COLD = """
import time, sys
t0 = time.perf_counter()
from cxr_viewer.core.inference.engine import InferenceEngine
from cxr_viewer.core.io import read_image
engine = InferenceEngine.from_dirs([sys.argv[1]], device="cpu", threads={threads})
result = engine.analyze(read_image(sys.argv[2]))
assert result.findings
print((time.perf_counter() - t0) * 1e3, "onnx" if all(b.model is None for b in engine.bundles) else "torch")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.onnx_export import export_bundle, export_text_encoder
    from cxr_viewer.core.inference.onnx_runtime import ort_text_encoder
    from cxr_viewer.core.inference.segment import Segmenter
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import load_bundle, save_bundle
    from cxr_viewer.core.models.testing import make_untrained_bundle
    from cxr_viewer.core.models.text import get_text_encoder

    rng = np.random.default_rng(0)
    record = ImageRecord.from_array(rng.random((2500, 2048), dtype=np.float32))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        clf = make_untrained_bundle(tmp / "models" / "clf", name="clf", labels=[f"L{i}" for i in range(14)])
        export_bundle(clf)
        torch.manual_seed(0)
        save_bundle(create_model("text_unet_tiny", text_dim=384), {
            "name": "seg", "version": "0", "task": "text_segmentation",
            "architecture": {"name": "text_unet_tiny", "kwargs": {"text_dim": 384}},
            "labels": ["region"], "preprocessing": {"size": [256, 256]},
            "text_encoder": {"name": "all-MiniLM-L6-v2", "dim": 384}}, tmp / "seg")  # fmt: skip
        export_bundle(tmp / "seg")
        export_text_encoder(tmp / "text")

        spec = load_bundle(clf).preprocessing
        print(f"image {record.shape[0]}x{record.shape[1]}, ResNet-18 at {spec.size[0]} px, "
              f"{args.threads} thread(s), median of {args.repeats}\n")
        te = InferenceEngine([load_bundle(clf)], device="cpu", backend="torch", cache_size=0, threads=args.threads)
        le = InferenceEngine([load_bundle(clf)], device="cpu", backend="onnx", cache_size=0, threads=args.threads)
        _row("scores: analyze (14 labels)", _median_ms(lambda: te.analyze(record), args.repeats),
             _median_ms(lambda: le.analyze(record), args.repeats))

        def cam(engine: InferenceEngine) -> None:
            engine.clear_cache()
            engine.cam(record, "L3", "gradcam")

        _row("Grad-CAM heatmap at image size", _median_ms(lambda: cam(te), args.repeats),
             _median_ms(lambda: cam(le), args.repeats))

        phrases = ["Right lower lobe consolidation.", "Small left effusion.", "No pneumothorax."]
        ts = Segmenter(load_bundle(tmp / "seg", device="cpu"), text_encoder=get_text_encoder(None, device="cpu"))
        ls = Segmenter(load_bundle(tmp / "seg", device="cpu"), text_encoder=ort_text_encoder(None, folder=tmp / "text"),
                       prefer="onnx", threads=args.threads)
        _row("report masks, 3 sentences (256 px U-Net)", _median_ms(lambda: ts.segment(record, phrases), args.repeats),
             _median_ms(lambda: ls.segment(record, phrases), args.repeats))

        cold = {}
        for lane in (False, True):
            env = {**__import__("os").environ, "CXR_VIEWER_NO_TORCH": "1" if lane else "0"}
            runs = []
            for _ in range(3):
                out = subprocess.run([sys.executable, "-c", COLD.format(threads=args.threads), str(tmp / "models"),
                                      str(REPO / "resources" / "samples" / "nih_chest.png")],
                                     env=env, capture_output=True, text=True, check=True, cwd=REPO)
                ms, kind = out.stdout.split()
                runs.append(float(ms))
            cold[lane] = statistics.median(runs)
            print(f"  cold start ({kind}): runs {[round(r) for r in runs]} ms")
        _row("cold: import + load + first analysis", cold[False], cold[True])
    return 0


if __name__ == "__main__":
    sys.exit(main())
