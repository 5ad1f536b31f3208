"""Fuzzing the one front door for files, :func:`cxr_viewer.core.io.read_image`.

The property every input must keep: ``read_image`` returns an :class:`ImageRecord` whose
pixels are finite, in [0, 1] and no larger than the pixel limit, or raises an
:class:`ImageReadError` with a message (and the file's path). Anything else (another
exception type, NaN in a record) is a bug, and the input is saved to reproduce it.

Two engines over one corpus, seeded from the real DICOM files in ``$CXR_DATA_DIR/dicom``
(default ``../shared/data/dicom``) plus small built files (native, JPEG, float, PNG):

- ``atheris`` (coverage-guided, libFuzzer) when ``pip install atheris`` works;
- ``mutate``: a dependency-free mutational fuzzer (byte flips, boundary values, cuts,
  splices) weighted towards the header, for machines where atheris does not build.

Short runs are part of the test suite (``tests/core/test_io_fuzz.py``); a long one:

    python benchmarks/fuzz_reader.py --seconds 3600                 # best engine available
    python benchmarks/fuzz_reader.py --engine mutate --seconds 600 --out fuzz-out
    python benchmarks/fuzz_reader.py --engine atheris -- -max_len=65536 -jobs=2

Crashing inputs are written to ``--out/crashes/`` (mutate) or by libFuzzer (atheris).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Seeds larger than this are cut (their header and the start of the pixel data are what fuzzing reaches).
SEED_MAX_BYTES = 256 * 1024
#: Values that break size arithmetic, written over random positions (little endian, as DICOM stores them).
_BOUNDARY = [b"\x00\x00", b"\xff\xff", b"\x00\x80", b"\xff\x7f", b"\x01\x00", b"\x00\x00\x00\x00",
             b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x10\x00", b"\x08\x00", b"\x0c\x00", b"\x20\x00"]


def data_dir() -> Path:
    return Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data"))


def _built_seeds() -> dict[str, bytes]:
    """Small files of each kind the reader handles, built here (no data needed)."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    def base(arr: np.ndarray | None) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality = "CR"
        ds.PixelSpacing = [0.2, 0.2]
        ds.WindowCenter, ds.WindowWidth = 2000, 1000
        if arr is not None:
            ds.set_pixel_data(arr, "MONOCHROME2", 12 if arr.dtype == np.uint16 else 8, generate_instance_uid=False)
        return ds

    def save(ds: Dataset) -> bytes:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    out: dict[str, bytes] = {}
    ramp = (np.arange(16 * 16).reshape(16, 16) * 16).astype(np.uint16)
    out["native16.dcm"] = save(base(ramp))
    gray = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
    ds = base(gray)
    jpg = io.BytesIO()
    Image.fromarray(gray).save(jpg, format="JPEG", quality=90)
    ds.PixelData = encapsulate([jpg.getvalue()])
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out["jpeg8.dcm"] = save(ds)
    ds = base(None)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 8, 8, 1, 32
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FloatPixelData = np.linspace(0, 1, 64, dtype=np.float32).tobytes()
    out["float32.dcm"] = save(ds)
    png = io.BytesIO()
    Image.fromarray(gray).save(png, format="PNG")
    out["gray8.png"] = png.getvalue()
    del pydicom
    return out


def seed_corpus(out_dir: Path, *, with_real: bool = True, real_dir: Path | None = None) -> list[Path]:
    """Write the seed corpus into ``out_dir``: built files, then the real DICOMs (cut to SEED_MAX_BYTES)
    of ``real_dir`` (default: the data folder's ``dicom/``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = []
    for name, data in _built_seeds().items():
        (out_dir / name).write_bytes(data)
        seeds.append(out_dir / name)
    real = real_dir if real_dir is not None else data_dir() / "dicom"
    if with_real and real.is_dir():
        for f in sorted(real.glob("*.dcm")):
            with open(f, "rb") as fh:
                data = fh.read(SEED_MAX_BYTES)
            (out_dir / f"real_{f.name[:60]}").write_bytes(data)
            seeds.append(out_dir / f"real_{f.name[:60]}")
    return seeds


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits, mostly inside the first 4 KB where the header lives."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf = bytearray(b"\x00")
        head = min(len(buf), 4096) if rng.random() < 0.8 else len(buf)
        pos = rng.randrange(head)
        op = rng.random()
        if op < 0.35:
            buf[pos] = rng.randrange(256)
        elif op < 0.6:
            val = rng.choice(_BOUNDARY)
            buf[pos : pos + len(val)] = val
        elif op < 0.7:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op < 0.8:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op < 0.9:
            cut = rng.randrange(1, len(buf) + 1)
            del buf[cut:]
        else:
            start = rng.randrange(len(buf))
            chunk = buf[start : start + rng.randint(1, 256)]
            buf[pos:pos] = chunk
    return bytes(buf)


def check_file(path: Path) -> str:
    """The property: a clean record or a domain error. Returns the outcome; raises AssertionError on a bug."""
    import numpy as np

    from cxr_viewer.core.errors import ImageReadError
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.io.reader import DEFAULT_MAX_PIXELS

    try:
        rec = read_image(path)
    except ImageReadError as exc:
        assert exc.message and isinstance(exc.message, str), "empty refusal message"
        assert exc.path is not None, f"refusal without the file's path: {exc.message}"
        return type(exc).__name__
    px = rec.pixels
    assert px.ndim == 2 and px.dtype == np.float32 and 0 < px.size <= DEFAULT_MAX_PIXELS
    assert np.isfinite(px).all() and float(px.min()) >= 0.0 and float(px.max()) <= 1.0, "pixels outside [0, 1]"
    if rec.default_window is not None:
        assert all(math.isfinite(v) for v in rec.default_window), "non-finite default window"
    assert np.isfinite(rec.model_pixels()).all()
    if rec.spacing_mm is not None:
        assert all(math.isfinite(v) and v > 0 for v in rec.spacing_mm)
    assert all(isinstance(n, str) and len(n) < 1000 for n in rec.notices)
    return "ok"


def run_mutate(seeds: list[Path], *, seconds: float, iterations: int | None, out: Path, seed: int) -> dict[str, int]:
    """Mutational fuzzing until the time or iteration budget is spent; crashing inputs go to ``out/crashes``."""
    rng = random.Random(seed)
    corpus = [p.read_bytes() for p in seeds]
    work = Path(tempfile.mkdtemp(prefix="fuzz-", dir=out))
    stats: dict[str, int] = {}
    crashes = out / "crashes"
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < deadline and (iterations is None or n < iterations):
            data = mutate(rng.choice(corpus), rng)
            f = work / "input"
            f.write_bytes(data)
            try:
                outcome = check_file(f)
            except Exception as exc:  # noqa: BLE001 - any bug: keep the input, carry on
                crashes.mkdir(parents=True, exist_ok=True)
                keep = crashes / f"crash-{n:06d}.bin"
                keep.write_bytes(data)
                (crashes / f"crash-{n:06d}.txt").write_text(traceback.format_exc())
                outcome = f"BUG {type(exc).__name__}"
            stats[outcome] = stats.get(outcome, 0) + 1
            n += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stats


def run_atheris(seeds_dir: Path, libfuzzer_args: list[str]) -> None:  # pragma: no cover - long runs only
    import atheris

    with atheris.instrument_imports():
        from cxr_viewer.core.io import reader  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="fuzz-atheris-"))

    def one(data: bytes) -> None:
        f = work / "input"
        f.write_bytes(data)
        check_file(f)

    atheris.Setup([sys.argv[0], str(seeds_dir), *libfuzzer_args], one)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=["auto", "atheris", "mutate"], default="auto")
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("fuzz-out"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("libfuzzer", nargs="*", help="after --: options passed to libFuzzer (atheris)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = seed_corpus(args.out / "corpus")
    print(f"seed corpus: {len(seeds)} files in {args.out / 'corpus'}")
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "mutate"
            print("atheris is not installed (pip install atheris): using the mutational engine")
    if engine == "atheris":
        run_atheris(args.out / "corpus", [f"-max_total_time={int(args.seconds)}", "-rss_limit_mb=4096",
                                          "-timeout=60", *args.libfuzzer])
        return 0
    t0 = time.monotonic()
    stats = run_mutate(seeds, seconds=args.seconds, iterations=args.iterations, out=args.out, seed=args.seed)
    total = sum(stats.values())
    print(f"{total} inputs in {time.monotonic() - t0:.0f} s ({total / max(time.monotonic() - t0, 1e-9):.1f}/s)")
    for outcome, count in sorted(stats.items(), key=lambda kv: -kv[1]):
        print(f"  {count:7d}  {outcome}")
    bugs = sum(c for o, c in stats.items() if o.startswith("BUG"))
    print(f"{bugs} bug(s); inputs in {args.out / 'crashes'}" if bugs else "no bugs found")
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
