"""Window/level to 8-bit: float path and LUT path vs a plain numpy baseline, same run.

A viewer re-windows on every mouse move; this prints milliseconds per frame for the
real 1955 x 1841 RG1 radiograph (or, with --random, noise of --rows x --cols, the worst
case for the lookup table's memory access).

    python benchmarks/bench_window.py [--random --rows 2500 --cols 2048] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def baseline(pixels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The obvious one-liner a first version would write."""
    return (np.clip((pixels - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def _real_pixels() -> np.ndarray | None:
    import os
    from pathlib import Path

    from cxr_viewer.core.io import read_image

    data = Path(os.environ.get("CXR_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    f = data / "dicom" / "pydicom-data_RG1_UNCR.dcm"
    return read_image(f).pixels if f.exists() else None


def timed(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--random", action="store_true", help="random pixels instead of the real radiograph")
    args = parser.parse_args(argv)

    from cxr_viewer.core.imaging import quantize, window_to_uint8

    px = None if args.random else _real_pixels()
    if px is None:
        px = np.random.default_rng(0).random((args.rows, args.cols), dtype=np.float32)
    lo, hi = 0.2, 0.7
    t_quant = timed(lambda: quantize(px), max(1, args.repeat // 4))
    q = quantize(px)
    t_base = timed(lambda: baseline(px, lo, hi), args.repeat)
    t_float = timed(lambda: window_to_uint8(px, lo, hi), args.repeat)
    t_lut = timed(lambda: window_to_uint8(q, lo, hi), args.repeat)
    diff = np.abs(window_to_uint8(q, lo, hi).astype(int) - baseline(px, lo, hi).astype(int)).max()
    print(f"image {px.shape[0]} x {px.shape[1]} ({'random' if args.random else 'radiograph'})")
    print(f"baseline numpy one-liner:        {t_base:7.1f} ms/frame")
    print(f"window_to_uint8 (float32 input): {t_float:7.1f} ms/frame  ({t_base / t_float:.1f}x baseline)")
    print(f"window_to_uint8 (uint16 + LUT):  {t_lut:7.1f} ms/frame  ({t_base / t_lut:.1f}x baseline)")
    print(f"one-off quantize per image:      {t_quant:7.1f} ms")
    print(f"max difference to baseline: {diff} grey level(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
