"""Report-conditioned segmentation speed, against the bare U-Net measured in the same run.

Figures (median of ``--repeat`` runs after warm-up, on one real radiograph):

- bare U-Net forward: the plain smp U-Net (same encoder and decoder, no text fusion)
  on an already preprocessed tensor - the floor any segmentation costs;
- mask for one sentence: ``Segmenter.segment(record, [sentence])`` end to end with the
  sentence embedding already cached (preprocess, encoder, fusion, decoder, sigmoid,
  ``restore_map`` to the original size, threshold, region reading). Goal: <= 1.3x the bare forward;
- N sentences in one call vs N single calls (the encoder runs once per image);
- text encoder per sentence: cold (a sentence never seen, batch of one) and cached.

    python benchmarks/bench_segment.py [--size 256] [--arch text_unet] [--bundle DIR] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "Right lower lobe opacity.",
    "The left lung is clear.",
    "Left upper zone cavitation.",
    "Both lungs are clear.",
    "No acute cardiopulmonary abnormality.",
]


def _image() -> Path:
    data = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data"))
    return data / "shenzhen_sample" / "images" / "CHNCXR_0001_0.png"


def _timeit(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _paired(fns: list[Callable[[], object]], repeat: int, sync: Callable[[], None]) -> list[float]:
    """Median times of several functions run interleaved (a, b, c, a, b, c ...).

    Interleaving gives each function the same share of a busy machine's slow and fast
    moments, so the ratios between them are stable even when absolute times are not.
    """
    for fn in fns:
        fn()
        fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _random_bundle(out: Path, arch: str, size: int, backbone: str) -> Path:
    import torch

    import cxr_viewer.core.models.segmenter  # noqa: F401
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    torch.manual_seed(0)
    kwargs = {"encoder": backbone, "text_dim": 384, "fusion": "concat"}
    model = create_model(arch, **kwargs)
    manifest = {
        "name": "bench-seg", "version": "0.0.0", "task": "text_segmentation", "trained": False,
        "architecture": {"name": arch, "kwargs": kwargs}, "labels": ["region"],
        "preprocessing": {"size": [size, size]}, "text_encoder": {"name": "all-MiniLM-L6-v2", "dim": 384},
    }  # fmt: skip
    return save_bundle(model, manifest, out, dtype="float32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a trained text_segmentation bundle (default: random weights, same cost)")
    parser.add_argument("--arch", default="text_unet", choices=["text_unet", "text_unet_tiny"])
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--size", type=int, default=256, help="network input size of the random bundle")
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from cxr_viewer.core.inference.segment import load_segmenter
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.text import CachedTextEncoder, EmbeddingCache, MiniLMEncoder

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.bundle) if args.bundle else _random_bundle(Path(tmp) / "b", args.arch, args.size, args.backbone)
        text = MiniLMEncoder(device=args.device)
        cached = CachedTextEncoder(text, EmbeddingCache())
        seg = load_segmenter(path, device=args.device, text_encoder=cached)
    dev = seg.bundle.device
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    record = read_image(_image())
    model = seg.model
    x = seg.image_tensor(record)
    emb = torch.from_numpy(seg.embed([SENTENCES[0]])).to(dev)  # also fills the cache
    print(f"device {dev}, torch threads {torch.get_num_threads()}, image {record.shape[1]}x{record.shape[0]}, "
          f"network {tuple(x.shape[-2:])}, model {seg.bundle.manifest.architecture['name']} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")

    def bare() -> None:
        with torch.inference_mode():
            model.unet(x)

    def fused_net() -> None:
        with torch.inference_mode():
            model(x, emb)

    t_bare, t_net, t_one = _paired(
        [bare, fused_net, lambda: seg.segment(record, [SENTENCES[0]])], args.repeat, sync
    )
    n = len(SENTENCES)
    seg.embed(SENTENCES)
    t_many = _timeit(lambda: seg.segment(record, SENTENCES), max(3, args.repeat // 2), sync)
    t_many_single = _timeit(lambda: [seg.segment(record, [s]) for s in SENTENCES], max(3, args.repeat // 2), sync)

    counter = iter(range(10**9))
    t_cold = _timeit(lambda: text.encode([f"opacity number {next(counter)} in the left lower zone"]), args.repeat, sync)
    t_cached = _timeit(lambda: cached.encode([SENTENCES[0]]), args.repeat, sync)

    print(f"bare U-Net forward (no text)        {t_bare * 1e3:8.2f} ms   (baseline)")
    print(f"U-Net + text fusion forward          {t_net * 1e3:8.2f} ms   {t_net / t_bare:5.2f}x")
    print(f"mask for one sentence (cached text)  {t_one * 1e3:8.2f} ms   {t_one / t_bare:5.2f}x  (goal <= 1.30x)")
    print(f"{n} sentences in one call             {t_many * 1e3:8.2f} ms   {t_many / t_bare:5.2f}x")
    print(f"{n} sentences, one call each          {t_many_single * 1e3:8.2f} ms   "
          f"{t_many_single / t_many:5.2f}x the batched call")
    print(f"text encoder per sentence, cold      {t_cold * 1e3:8.2f} ms")
    print(f"text encoder per sentence, cached    {t_cached * 1e3:8.3f} ms   {t_cold / max(t_cached, 1e-9):7.0f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
