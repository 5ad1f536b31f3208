"""Inference speed against the goals, each figure beside a baseline measured in the same run.

One run prints, for the shipped bundles (resources/models: chest-resnet18 and the report
segmenter's derived lesion finding) on real films:

  1. sgemm: this machine's fp32 matmul GFLOP/s (numpy and torch), the yardstick;
  2. bare forwards per model (torch eager, ONNX Runtime from a temporary export when asked) and
     the achieved GFLOP/s of the classifier's forward against sgemm (goal >= 0.5);
  3. cold launch to first scores: ``cxr-viewer analyze FILE`` in a fresh subprocess (goal <= 3 s);
  4. warm image: a new film through the engine, read to findings (goal <= 0.5 s);
  5. full path / bare forwards: read + QC + preprocess + every model vs the bare forwards of the
     same models, measured alternately (goal <= 1.25x);
  6. Grad-CAM / forward (goal <= 2x) and ScoreCAM / forward (goal <= 10x), with pytorch-grad-cam's
     ScoreCAM as the baseline it replaces and the correlation of the two maps;
  7. ``analyze`` images/s over many files (batched, reader thread; and --batch 1) against
     torchxrayvision's 224 px model (DenseNet-121, weights=None: nothing can be downloaded, so its
     architecture is timed, not its weights) reading and scoring the same files (goal >= 4/s and faster);
  8. ROAD faithfulness time (on demand, model resolution).

A summary table at the end lists every figure with its goal. Timing only: no assertion.

Run:  python benchmarks/bench_inference.py [--files N] [--repeats N] [--threads N] [--onnx] [--no-reference]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SUMMARY: list[tuple[str, str, str, str]] = []  # (figure, value, goal, verdict)


def note(figure: str, value: float, goal: float, *, unit: str = "", higher_is_better: bool = False,
         fmt: str = "{:.2f}") -> None:  # fmt: skip
    ok = value >= goal if higher_is_better else value <= goal
    sign = ">=" if higher_is_better else "<="
    SUMMARY.append((figure, fmt.format(value) + unit, f"{sign} {fmt.format(goal)}{unit}", "met" if ok else "NOT met"))


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


def alternating(fns: dict[str, Callable[[int], object]], repeats: int) -> dict[str, float]:
    """Median ms of each function, run in turn (a, b, a, b, ...) so a shared machine's drift hits all alike."""
    for fn in fns.values():
        fn(0)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(i)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def sgemm_gflops(n: int = 1024, repeats: int = 10) -> tuple[float, float]:
    import numpy as np
    import torch

    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    np_ms = timed(lambda: a @ b, repeats, warmup=2)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t_ms = timed(lambda: ta @ tb, repeats, warmup=2)
    return 2 * n**3 / (np_ms / 1e3) / 1e9, 2 * n**3 / (t_ms / 1e3) / 1e9


def count_flops(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(x)
    return int(fc.get_total_flops())


def cold_launch(image: Path, models: Path, threads: int, env_extra: dict[str, str] | None = None) -> float:
    """Seconds from starting ``cxr-viewer analyze IMAGE`` in a new process to its findings on disk."""
    out = Path(tempfile.mkdtemp(prefix="cxr-cold-")) / "r.json"
    env = {**os.environ, **(env_extra or {})}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cxr_viewer.cli", "analyze", str(image), "--no-default-models",
                           "--models", str(models), "--json", str(out), "--threads", str(threads)],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    wall = time.perf_counter() - t0
    data = json.loads(out.read_text()) if out.exists() else []
    if proc.returncode != 0 or not data or not data[0].get("findings"):
        print(f"  (cold launch failed: rc {proc.returncode}: {proc.stderr[-300:]})")
        return float("nan")
    return wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=REPO / "resources" / "models")
    p.add_argument("--files", type=int, default=24, help="films for the images/s figure")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--onnx", action="store_true",
                   help="run every figure on ONNX Runtime: the bundles are copied to a temporary folder and exported there")
    p.add_argument("--no-reference", action="store_true", help="skip pytorch-grad-cam's full ScoreCAM (512 forwards)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import numpy as np
    import torch

    from cxr_viewer.core.inference.engine import InferenceEngine, configure_threads
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import find_bundles, load_bundle
    from cxr_viewer.core.paths import data_dir

    threads = configure_threads(args.threads)
    films = sorted((data_dir() / "nih14" / "images").glob("*.jpg"))[: max(args.files, args.repeats + 2)]
    image = films[0]
    infos = [i for i in find_bundles([args.models]) if i.enabled and i.manifest is not None]
    cold_root = Path(tempfile.mkdtemp(prefix="cxr-bench-models-"))  # the bundles the figures run (copies)
    for i in infos:
        if i.manifest.is_classifier or i.manifest.task == "text_segmentation":
            shutil.copytree(i.path, cold_root / i.path.name)
    lane = "onnx" if args.onnx else "torch"
    if args.onnx:
        from cxr_viewer.core.inference.onnx_export import export_bundle

        for d in sorted(cold_root.iterdir()):
            export_bundle(d)
    bundles = [load_bundle(d) for d in sorted(cold_root.iterdir())]
    engine = InferenceEngine(bundles, device="cpu", backend=lane, cache_size=0)
    engine.warmup()
    cls = engine.classifiers[0]
    derived = engine.derived_bundles
    print(f"# cxr-viewer inference benchmark — {', '.join(b.name for b in bundles)}")
    print(f"backend: {', '.join(f'{b.name} {engine.backend_for(b)}' for b in bundles)}")
    print(f"films: {len(films)} from nih14; torch {torch.__version__}; threads {threads}; repeats {args.repeats}; "
          f"cpus {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")

    # ---- 1. sgemm ---------------------------------------------------------------------
    np_gf, torch_gf = sgemm_gflops()
    sgemm = max(np_gf, torch_gf)
    print(f"\n## sgemm 1024^3 fp32: numpy {np_gf:.1f} GFLOP/s, torch {torch_gf:.1f} GFLOP/s")

    # ---- 2. bare forwards ---------------------------------------------------------------
    rec = read_image(image)
    x = engine.inputs.get(rec, cls.preprocessing)
    backend = engine._backend(cls)
    flops = count_flops(cls.model, torch.from_numpy(np.array(x)))  # the torch module; the ONNX graph is the same net
    fwd = {"classifier": lambda _i: backend.logits(x)}
    seg_parts = []
    for b in derived:
        seg = engine.segmenter(b)
        xs = engine.inputs.get(rec, b.preprocessing)
        emb = seg.embed([q for spec in b.manifest.derived_findings for q in spec.prompts])
        seg_parts.append((seg, xs, emb))
        fwd[b.name] = (lambda s, xx, ee: (lambda _i: s.probabilities(xx, ee)))(seg, xs, emb)
    bare_ms = alternating(fwd, args.repeats)
    cls_ms = bare_ms["classifier"]
    gfs = flops / (cls_ms / 1e3) / 1e9
    print(f"\n## bare forwards (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in bare_ms.items()))
    print(f"{cls.name}: {flops / 1e9:.2f} GFLOP per forward, {gfs:.1f} GFLOP/s = {gfs / sgemm:.2f} of sgemm")
    note("classifier forward GFLOP/s / sgemm", gfs / sgemm, 0.5, higher_is_better=True)
    # ---- 3. cold launch --------------------------------------------------------------------
    # The installed bundles as a user runs them (their recorded exports, torch deferred), then a user's
    # copy of the same bundles in another folder, whose exports are re-run against torch before use.
    cold = cold_launch(films[1], args.models, threads)
    print(f"\n## cold launch to first scores (subprocess `cxr-viewer analyze`, installed bundles): {cold:.2f} s")
    no_torch = cold_launch(films[1], args.models, threads, {"CXR_VIEWER_NO_TORCH": "1"})
    print(f"   the same without torch (CXR_VIEWER_NO_TORCH=1, the quick start's and the small CPU build's lane): "
          f"{no_torch:.2f} s")
    user = cold_launch(films[1], cold_root, threads)
    print(f"   a user's copy of the bundles ({lane} lane; exports re-verified against torch): {user:.2f} s")
    note("cold launch to first scores (analyze subprocess)", cold, 3.0, unit=" s")

    # ---- 4 + 5. warm image, full path vs bare forwards ---------------------------------------
    def full(i: int) -> None:
        engine.inputs.clear()
        engine.analyze(read_image(films[2 + i % (len(films) - 2)]))

    def bare(_i: int) -> None:
        backend.logits(x)
        for s, xx, ee in seg_parts:
            s.probabilities(xx, ee)

    m = alternating({"full": full, "bare": bare}, args.repeats)
    ratio = m["full"] / m["bare"]
    res = engine.analyze(read_image(films[3]))
    print(f"\n## warm image (new film, read -> findings): {m['full']:.1f} ms; its bare forwards {m['bare']:.1f} ms; "
          f"full path / bare forwards {ratio:.2f}x")
    print("   one result's timing_ms: " + ", ".join(f"{k} {v:.1f}" for k, v in res.timing_ms.items()))
    note("warm image (read -> findings)", m["full"] / 1e3, 0.5, unit=" s")
    note("full path / bare forwards", ratio, 1.25, unit="x")

    # ---- 6. heatmaps -----------------------------------------------------------------------------
    from cxr_viewer.core.inference.cam import compute_cam

    label = "Abnormal" if "Abnormal" in cls.labels else cls.labels[0]
    idx = cls.labels.index(label)

    def cam_once(method: str) -> Callable[[int], None]:
        def run(_i: int) -> None:
            engine._maps.clear()
            engine.cam(rec, label, method)
        return run

    g = alternating({"forward": lambda _i: backend.logits(x), "gradcam": cam_once("gradcam")}, args.repeats)

    def cam_whole_image(_i: int) -> None:  # the same map without the lung-field constraint (no segmenter run)
        engine._maps.clear()
        engine.lung_constraint = False
        try:
            engine.cam(rec, label, "gradcam")
        finally:
            engine.lung_constraint = True

    lf = alternating({"whole image": cam_whole_image, "lung field": cam_once("gradcam")}, args.repeats)
    print(f"Grad-CAM in the lung field {lf['lung field']:.1f} ms vs whole image {lf['whole image']:.1f} ms "
          f"({lf['lung field'] / lf['whole image']:.2f}x: the segmenter's two lung prompts, once per film)")
    note("Grad-CAM lung field / whole image", lf["lung field"] / lf["whole image"], 2.0, unit="x")
    s = alternating({"forward": lambda _i: backend.logits(x), "scorecam": cam_once("scorecam")}, max(3, args.repeats // 2))
    print(f"\n## heatmaps on {cls.name} / {label} ({engine.backend_for(cls)}), end to end (map restored to {rec.shape[1]}x{rec.shape[0]})")
    print(f"Grad-CAM {g['gradcam']:.1f} ms = {g['gradcam'] / g['forward']:.2f}x a forward ({g['forward']:.1f} ms)")
    print(f"ScoreCAM {s['scorecam']:.1f} ms = {s['scorecam'] / s['forward']:.2f}x a forward ({s['forward']:.1f} ms)")
    note("Grad-CAM / forward", g["gradcam"] / g["forward"], 2.0, unit="x")
    note("ScoreCAM / forward", s["scorecam"] / s["forward"], 10.0, unit="x")
    if not args.no_reference:
        t0 = time.perf_counter()
        with cls.lock:
            ref, _ = compute_cam(cls.model, torch.from_numpy(np.array(x)), idx, method="scorecam",
                                 target_layers=cls.manifest.cam_layers)  # fmt: skip
        t_ref = (time.perf_counter() - t0) * 1e3
        ours = backend.cam(x, idx, "scorecam")[0]
        corr = float(np.corrcoef(ours.ravel(), ref.ravel())[0, 1])
        print(f"baseline: pytorch-grad-cam ScoreCAM (all 512 channels, 224 px) {t_ref:.0f} ms = "
              f"{t_ref / s['forward']:.0f}x a forward; ours is {t_ref / s['scorecam']:.0f}x faster; "
              f"map correlation {corr:.3f}")
    t0 = time.perf_counter()
    heat = engine.faithfulness(rec, engine.cam(rec, label, "gradcam"))
    print(f"ROAD faithfulness on demand ({heat.faithfulness_method}, 224 px): "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms, score {heat.faithfulness:+.3f}")

    # ---- 7. analyze images/s vs torchxrayvision -------------------------------------------------
    from cxr_viewer.headless import analyze_main

    files = [str(f) for f in films[: args.files]]
    from cxr_viewer.core.inference import engine as engine_module

    # one engine for every run (a real run loads its models once): what is timed is the per-film loop
    shared = engine_module.InferenceEngine.from_dirs([cold_root], device="cpu", backend=lane, threads=threads)
    shared.warmup()
    real_from_dirs = engine_module.InferenceEngine.from_dirs
    engine_module.InferenceEngine.from_dirs = classmethod(lambda cls, *a, **k: shared)  # type: ignore[method-assign]
    rates = {}
    try:
        for batch in (8, 1):
            shared.clear_cache()
            out = Path(tempfile.mkdtemp(prefix="cxr-many-")) / "r.json"
            t0 = time.perf_counter()
            analyze_main([*files, "--json", str(out), "--batch", str(batch)])
            rates[batch] = len(files) / (time.perf_counter() - t0)
    finally:
        engine_module.InferenceEngine.from_dirs = real_from_dirs  # type: ignore[method-assign]
    print(f"\n## analyze over {len(files)} films (models loaded once, JSON written): "
          f"--batch 8 with reader thread "
          f"{rates[8]:.1f} images/s; --batch 1 {rates[1]:.1f} images/s")
    try:
        import torchvision
        import torchxrayvision as xrv
    except ImportError:
        print("torchxrayvision is not installed (pip install torchxrayvision); comparison skipped")
        xrv = None
    if xrv is not None:
        import warnings

        import skimage.io

        xmodel = xrv.models.DenseNet(weights=None).eval()
        transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])

        def xrv_one(path: str) -> None:
            img = xrv.datasets.normalize(skimage.io.imread(path), 255)
            img = img.mean(2) if img.ndim == 3 else img
            t = torch.from_numpy(transform(img[None].astype(np.float32)))[None]
            with torch.inference_mode():
                xmodel(t)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xrv_one(files[0])
            t0 = time.perf_counter()
            for f in files:
                xrv_one(f)
            x_rate = len(files) / (time.perf_counter() - t0)
        x_flops = count_flops(xmodel, torch.zeros(1, 1, 224, 224))
        print(f"torchxrayvision DenseNet-121 res224 (weights=None; {x_flops / 1e9:.2f} GFLOP vs our {flops / 1e9:.2f}), "
              f"read + preprocess + forward, one at a time: {x_rate:.1f} images/s; "
              f"ours {rates[8] / x_rate:.2f}x its rate (ours also runs the lesion segmenter, QC and writes JSON)")
        note("analyze images/s / torchxrayvision's", rates[8] / x_rate, 1.0, unit="x", higher_is_better=True)
    note("analyze images/s", rates[8], 4.0, unit="/s", higher_is_better=True, fmt="{:.1f}")

    print("\n## summary (goal per figure; GUI stall p99 and the GUI's cold launch: benchmarks/bench_viewer.py)")
    w = max(len(r[0]) for r in SUMMARY)
    for fig, val, goal, verdict in SUMMARY:
        print(f"{fig:<{w}}  {val:>10}  goal {goal:<10} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
