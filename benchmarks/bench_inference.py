"""Inference speed, measured against baselines taken in the same run on the same image.

Prints, for one chest X-ray:
  1. matmul throughput of this machine (the yardstick for achieved GFLOP/s);
  2. each classifier's bare forward: torch eager, torch channels_last, ONNX Runtime;
  3. the full analyse path (read -> preprocess -> all models) and its ratio to the
     sum of the bare forwards (goal <= 1.25x);
  4. each heatmap method's time and its ratio to one forward (goal <= 2x), plus ROAD;
  5. torchxrayvision's DenseNet-121 pipeline on the same file (weights=None, nothing
     downloaded) against our densenet121 classifier: same architecture, two pipelines.

Run:  python benchmarks/bench_inference.py [--image FILE] [--models DIR] [--repeats N] [--threads N]
Without trained bundles it builds random-weight ones with save_bundle: timing only.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def matmul_gflops(device: str, n: int = 1024, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def run() -> None:
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()

    ms = timed(run, repeats, warmup=2)
    return 2 * n**3 / (ms / 1e3) / 1e9


def count_flops(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(x)
    return int(fc.get_total_flops())


def build_untrained(root: Path, size: int) -> list[Path]:
    from cxr_viewer.core.models.bundle import make_untrained_bundle

    nih = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
    return [
        make_untrained_bundle(root / "nih-resnet18", name="nih-resnet18", labels=nih, backbone="resnet18", size=(size, size)),
        make_untrained_bundle(root / "nih-densenet121", name="nih-densenet121", labels=nih, backbone="densenet121",
                              size=(size, size)),
        make_untrained_bundle(root / "pneumonia-effb0", name="pneumonia-effb0", labels=["Pneumonia"],
                              backbone="efficientnet_b0", size=(size, size), task="binary"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, default=None, help="default: the shared RG1 CR DICOM (1955x1841)")
    p.add_argument("--models", type=Path, action="append", help="bundle folder(s); default: random-weight bundles")
    p.add_argument("--size", type=int, default=224, help="input size of the random-weight bundles")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cam-methods", default="gradcam,gradcam++,xgradcam,hirescam,layercam,eigencam,scorecam")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import numpy as np
    import torch

    from cxr_viewer.core.inference.engine import InferenceEngine, configure_threads
    from cxr_viewer.core.inference.backends.ort_backend import OrtClassifier
    from cxr_viewer.core.inference.onnx_export import ort_artifact_for
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.models.preprocess import preprocess
    from cxr_viewer.core.paths import data_dir

    threads = configure_threads(args.threads)
    image = args.image or data_dir() / "dicom" / "pydicom-data_RG1_UNCR.dcm"
    tmp = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    if args.models:
        from cxr_viewer.core.models.bundle import find_bundles

        paths = [i.path for i in find_bundles(args.models) if i.enabled and i.manifest and i.manifest.is_classifier]
        trained = True
    else:
        paths = build_untrained(tmp / "models", args.size)
        trained = False
    if not paths:
        print("no classifier bundles found", file=sys.stderr)
        return 1
    device = args.device
    bundles = [load_bundle(pth, device=device) for pth in paths]
    header = "trained bundles" if trained and all(b.manifest.trained for b in bundles) else "untrained weights (timing only)"
    print(f"# cxr-viewer inference benchmark — {header}")
    print(f"image: {image.name}; device: {device}; torch threads: {threads}; torch {torch.__version__}; repeats: {args.repeats}")

    gflops_mm = matmul_gflops(device)
    print(f"\nbaseline: 1024x1024 fp32 matmul = {gflops_mm:.1f} GFLOP/s")

    record = read_image(image)
    t_read = timed(lambda: read_image(image), max(3, args.repeats // 2))
    print(f"read_image: {t_read:.1f} ms ({record.shape[1]}x{record.shape[0]})")

    # ---- bare forwards ------------------------------------------------------------
    print("\n## bare forward per model (median ms; GFLOP/s achieved; % of matmul)")
    print(f"{'model':<20}{'GFLOP':>8}{'eager':>10}{'ch_last':>10}{'onnxrt':>10}{'best GF/s':>11}{'% mm':>7}")
    bare: dict[str, dict[str, float]] = {}
    for b in bundles:
        x = torch.from_numpy(preprocess(record, b.preprocessing)[None]).to(device)
        flops = count_flops(b.model, x)
        # (format conversion outside inference_mode: parameters made there cannot take gradients later)
        cl_model = copy.deepcopy(b.model).to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            eager = timed(lambda: b.model(x), args.repeats)
            chl = timed(lambda: cl_model(xcl), args.repeats)
        del cl_model
        runner = OrtClassifier(ort_artifact_for(b), model=b.name, threads=threads) if device == "cpu" else None
        ort_ms = timed(lambda: runner.logits(x.cpu().numpy()), args.repeats) if runner else float("nan")
        bare[b.name] = {"eager": eager, "channels_last": chl, "onnx": ort_ms, "flops": flops}
        best = min(v for v in (eager, chl, ort_ms) if v == v)
        gfs = flops / (best / 1e3) / 1e9
        print(f"{b.name:<20}{flops / 1e9:>8.2f}{eager:>10.1f}{chl:>10.1f}{ort_ms:>10.1f}{gfs:>11.1f}{100 * gfs / gflops_mm:>6.0f}%")

    # ---- full analyse path -------------------------------------------------------------
    print("\n## full analyse path: read -> preprocess -> all models (median ms)")
    for backend in ("torch", "onnx") if device == "cpu" else ("torch",):
        engine = InferenceEngine(bundles, device=device, backend=backend, cache_size=0)
        engine.warmup()

        def full() -> None:
            engine.analyze(read_image(image))

        full_ms = timed(full, args.repeats)
        key = "eager" if backend == "torch" else "onnx"
        bare_sum = sum(v[key] for v in bare.values())
        res = engine.analyze(record)
        pre = res.timing_ms.get("preprocess", 0.0)
        print(f"{backend:<6} full {full_ms:8.1f} ms = read {t_read:.1f} + preprocess {pre:.1f} + models; "
              f"sum of bare forwards {bare_sum:.1f} ms; ratio {full_ms / bare_sum:.2f}x (goal <= 1.25x); "
              f"without read {(full_ms - t_read) / bare_sum:.2f}x")

    # ---- heatmaps ---------------------------------------------------------------------------
    b0 = bundles[0]
    engine = InferenceEngine([b0], device=device, backend="torch", cache_size=0)
    label = b0.labels[0]
    one_fwd = bare[b0.name]["eager"]
    print(f"\n## heatmaps on {b0.name} / {label} (median ms, CAM only, restored to {record.shape[1]}x{record.shape[0]}; "
          f"one eager forward = {one_fwd:.1f} ms)")
    from cxr_viewer.core.inference.cam import compute_cam

    x0 = torch.from_numpy(preprocess(record, b0.preprocessing)[None]).to(device)
    layers = b0.manifest.cam_layers
    print(f"{'method':<10}{'CAM core':>10}{'ratio':>8}{'end-to-end':>12}{'ratio':>8}   (end-to-end adds preprocess + restore to full size)")
    for method in args.cam_methods.split(","):
        reps = 1 if method == "scorecam" else max(3, args.repeats // 2)

        def core_once() -> None:
            with b0.lock:
                compute_cam(b0.model, x0, 0, method=method, target_layers=layers)

        def cam_once() -> None:
            engine.clear_cache()
            engine.cam(record, label, method)

        with torch.inference_mode():  # re-measured beside each method: a shared machine drifts
            one_fwd = timed(lambda: b0.model(x0), max(3, args.repeats // 2))
        core = timed(core_once, reps, warmup=1)
        e2e = timed(cam_once, reps, warmup=0)
        print(f"{method:<10}{core:>10.1f}{core / one_fwd:>7.2f}x{e2e:>12.1f}{e2e / one_fwd:>7.2f}x"
              f"   (forward now {one_fwd:.1f} ms; goal <= 2x)")
    engine.clear_cache()
    t0 = time.perf_counter()
    heat = engine.cam(record, label, "gradcam")
    t0 = time.perf_counter()
    heat = engine.faithfulness(record, heat)
    t_road = (time.perf_counter() - t0) * 1e3
    print(f"ROAD faithfulness ({heat.faithfulness_method}): {t_road:.0f} ms extra, score {heat.faithfulness:+.4f}")

    # ---- torchxrayvision comparison --------------------------------------------------------
    print("\n## torchxrayvision DenseNet-121 pipeline vs ours (same image, same architecture, random weights)")
    try:
        import torchvision
        import torchxrayvision as xrv
    except ImportError:
        print("torchxrayvision is not installed (pip install torchxrayvision); comparison skipped")
        return 0
    ours = next((b for b in bundles if b.manifest.architecture["kwargs"].get("backbone") == "densenet121"), None)
    xmodel = xrv.models.DenseNet(weights=None).eval().to(device)
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])

    def xrv_prep() -> torch.Tensor:
        if image.suffix.lower() == ".dcm":
            img = xrv.utils.read_xray_dcm(str(image))  # already in xrv's [-1024, 1024]
        else:
            import skimage.io

            img = xrv.datasets.normalize(skimage.io.imread(str(image)), 255)
            img = img.mean(2) if img.ndim == 3 else img
        return torch.from_numpy(transform(img[None].astype(np.float32)))[None].to(device)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xt = xrv_prep()
        with torch.inference_mode():
            x_fwd = timed(lambda: xmodel(xt), args.repeats)
            x_full = timed(lambda: xmodel(xrv_prep()), max(3, args.repeats // 2))
    x_flops = count_flops(xmodel, xt)
    print(f"torchxrayvision: read+preprocess+forward {x_full:.1f} ms; bare forward {x_fwd:.1f} ms "
          f"({x_flops / 1e9:.2f} GFLOP, {x_flops / (x_fwd / 1e3) / 1e9:.1f} GFLOP/s)")
    if ours is not None:
        eng = InferenceEngine([ours], device=device, backend="auto", cache_size=0)
        eng.warmup()
        our_full = timed(lambda: eng.analyze(read_image(image)), max(3, args.repeats // 2))
        our_best = min(v for k, v in bare[ours.name].items() if k != "flops" and v == v)
        print(f"ours ({ours.name}, backend {eng.backend_for(ours)}): read+preprocess+forward {our_full:.1f} ms; "
              f"best bare forward {our_best:.1f} ms; eager {bare[ours.name]['eager']:.1f} ms")
        print(f"ratio ours/torchxrayvision: full pipeline {our_full / x_full:.2f}x, "
              f"eager forward {bare[ours.name]['eager'] / x_fwd:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
