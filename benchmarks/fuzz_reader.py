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

``--target`` fuzzes the other parsers of files someone else may have written, with the
mutational engine over JSON seeds (each with its own property, see :data:`TARGETS`):
``site-profile`` (:func:`~cxr_viewer.core.site.profile.load_profile`: a profile or a
``SiteProfileError``), ``corrections`` (the corrections store read back and exported: valid
corrections or skipped lines, never an exception), ``annotations`` (the annotation sidecar
beside an image, and the GSPS made from it: annotations or ``ValueError``) and
``worklist-rows`` (rows of a real SQLite worklist store read back: validated findings and QC,
or treated as missing)::

    python benchmarks/fuzz_reader.py --target site-profile --seconds 300
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
from collections.abc import Callable
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


def run_mutate(seeds: list[Path], *, seconds: float, iterations: int | None, out: Path, seed: int,
               check: Callable[[Path], str] | None = None, mutator: Callable[[bytes, random.Random], bytes] | None = None,
               corpus: list[bytes] | None = None, crash_dir: str = "crashes") -> dict[str, int]:
    """Mutational fuzzing until the time or iteration budget is spent; crashing inputs go to ``out/crashes``.

    ``check``/``mutator``/``corpus``: another target's property, edits and seeds (default: the reader's).
    """
    check = check or check_file
    mutator = mutator or mutate
    rng = random.Random(seed)
    corpus = corpus if corpus is not None else [p.read_bytes() for p in seeds]
    work = Path(tempfile.mkdtemp(prefix="fuzz-", dir=out))
    stats: dict[str, int] = {}
    crashes = out / crash_dir
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < deadline and (iterations is None or n < iterations):
            data = mutator(rng.choice(corpus), rng)
            f = work / "input"
            f.write_bytes(data)
            try:
                outcome = check(f)
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


# --------------------------------------------------------------------------- the other parsers
def _json_seeds(target: str) -> list[bytes]:
    import json

    sha = "ab" * 32
    if target == "site-profile":
        docs = [{"schema_version": 1, "kind": "cxr-viewer site profile", "name": "ward", "version": 1,
                 "bundle": {"name": "nih", "version": "1", "sha256": sha},
                 "findings": {"Effusion": {"calibration": cal, "threshold": 0.4, "target": "sensitivity:0.9",
                                           "validated": True, "summary": {"n": 10}, "reference": {"bins": [0, 1]}}}}
                for cal in ({"method": "platt", "a": 1.2, "b": -0.3},
                            {"method": "isotonic", "knots_x": [0.0, 0.5, 1.0], "knots_y": [0.0, 0.4, 1.0]},
                            {"method": "temperature", "a": 0.8}, {"method": "none"})]
        return [json.dumps(d, indent=1).encode() for d in docs]
    if target == "corrections":
        line = {"image": "@STUDY@/film.png", "label": "Effusion", "value": 1.0, "kind": "label", "patient_id": "P1",
                "content_hash": "f" * 64, "model": {"name": "nih", "version": "1", "sha256": sha},
                "model_score": 0.7, "model_state": "positive", "mask": "", "time": "2026-01-01T00:00:00+00:00"}
        return [(json.dumps(line) + "\n" + json.dumps({**line, "value": None, "label": "Nodule"}) + "\n").encode(),
                (json.dumps({**line, "kind": "mask_edit", "mask": "masks/x.png"}) + "\n").encode()]
    if target == "annotations":
        doc = {"schema": "cxr-viewer.annotations/1", "image": {"file": "x.dcm", "shape": [64, 64]},
               "annotations": [{"kind": "distance", "p0": [1, 2], "p1": [30, 40]},
                               {"kind": "angle", "a": [1, 1], "vertex": [10, 10], "b": [20, 1]},
                               {"kind": "roi", "shape": "ellipse", "p0": [5, 5], "p1": [20, 25]},
                               {"kind": "arrow", "tail": [1, 1], "head": [9, 9], "text": "here"},
                               {"kind": "text", "pos": [3, 3], "text": "note"},
                               {"kind": "ctr", "cardiac": [[10, 30], [40, 30]], "thoracic": [[2, 32], [60, 32]]}]}
        return [json.dumps(doc).encode()]
    if target == "worklist-rows":
        f = {"label": "Effusion", "score": 0.3, "threshold": 0.5, "model": "nih", "model_version": "1",
             "threshold_method": "youden", "trained": True, "note": "", "validated": True}
        return [json.dumps([f, {**f, "label": "Nodule", "score": 0.9}]).encode(),
                json.dumps([{"code": "ap_view", "message": "AP view", "severity": "info"}]).encode(),
                json.dumps({"modality": "CR", "patient_age_years": 40, "format": "dicom"}).encode()]
    raise ValueError(f"unknown target {target!r}")


def check_site_profile(path: Path) -> str:
    """A valid profile (every calibrated score in [0, 1]) or a ``SiteProfileError`` with a one-line message."""
    import numpy as np

    from cxr_viewer.core.errors import SiteProfileError
    from cxr_viewer.core.site.profile import load_profile

    try:
        prof = load_profile(path)
    except SiteProfileError as exc:
        assert exc.message and "\n" not in exc.message and len(exc.message) < 2000, "unclear refusal"
        return "refused"
    for fp in prof.findings.values():
        q = fp.calibration(np.array([0.0, 1e-9, 0.3, 0.5, 0.99, 1.0]))
        assert np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all(), "a calibrated score left [0, 1]"
        assert 0.0 <= fp.threshold <= 1.0
    return "ok"


def check_corrections(path: Path) -> str:
    """The store reads back valid corrections (or skips lines) and exports, or says there is nothing to export."""
    from cxr_viewer.core.corrections import CorrectionError, CorrectionStore

    folder, study = path.parent / "corr", path.parent / "study"
    folder.mkdir(exist_ok=True)
    if not (study / "film.png").is_file():
        import numpy as np
        from PIL import Image

        study.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(study / "film.png")
    (folder / "corrections.jsonl").write_bytes(path.read_bytes().replace(b"@STUDY@", str(study).encode()))
    store = CorrectionStore(folder)
    items = store.all()
    try:
        summary = store.export_manifest(path.parent / "m.csv", roots=[study])
    except CorrectionError as exc:
        assert exc.message
        return "read, none exported" if items else "nothing readable"
    text = (path.parent / "m.csv").read_text(encoding="utf-8")
    assert "/etc/" not in text and ".." not in text, "a path outside the study folders was exported"
    return "exported" if summary["images"] else "none exported"


def check_annotations(path: Path) -> str:
    """A sidecar beside an image gives annotations (and a GSPS), or a ``ValueError``."""
    import numpy as np

    from cxr_viewer.core.imaging import measurements as marks
    from cxr_viewer.core.io.record import ImageRecord

    record = ImageRecord.from_array(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    try:
        anns = marks.load_annotations(path, record)
    except ValueError as exc:
        assert str(exc), "empty refusal"
        return "refused"
    return "annotations" if anns else "no annotations"


_ROW_STORE: dict[str, object] = {}


def check_worklist_row(path: Path) -> str:
    """A row of a real SQLite store, read back: validated findings, QC and metadata, or treated as missing."""
    import math
    import sqlite3

    from cxr_viewer.core.worklist.store import ResultStore

    db = path.parent / "rows.sqlite"
    store = ResultStore(db)
    try:
        text = path.read_bytes().decode("utf-8", "replace")
        con = sqlite3.connect(db)
        con.execute("INSERT OR REPLACE INTO results VALUES ('k', 'aa', 'nih', '1', ?, 0)", (text,))
        con.execute("INSERT OR REPLACE INTO analyses VALUES ('k', ?)", (text,))
        con.execute("INSERT OR REPLACE INTO files VALUES ('/x', 1, 1, 'h', ?, NULL, 'k')", (text,))
        con.commit()
        con.close()
        found = store.findings("k", ["aa"]).get("aa", ())
        assert all(math.isfinite(f.score) and 0 <= f.score <= 1 and 0 <= f.threshold <= 1 for f in found)
        qc = store.qc("k")
        assert qc is None or all(q.severity in ("info", "warning", "error") for q in qc)
        row = store.file("/x")
        assert row is None or isinstance(row.metadata, dict)
        return "valid" if found or qc or row else "treated as missing"
    finally:
        store.close()


#: Parser targets: name -> (seed builder, property check over a file holding the input).
TARGETS = {
    "site-profile": check_site_profile,
    "corrections": check_corrections,
    "annotations": check_annotations,
    "worklist-rows": check_worklist_row,
}


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    """:func:`mutate`, plus edits that reach a JSON parser's limits: huge numbers, deep nesting, NaN, wrong types."""
    if rng.random() < 0.5:
        return mutate(data, rng)
    text = data.decode("utf-8", "replace")
    op = rng.randrange(7)
    pos = rng.randrange(len(text) + 1)
    if op == 0:
        piece = rng.choice(["9" * rng.choice([20, 400, 5000]), "1e999", "-1e308", "NaN", "Infinity", "-0", "1e-400"])
    elif op == 1:
        depth = rng.choice([10, 100, 10_000, 100_000])
        piece = "[" * depth + "]" * depth
    elif op == 2:
        piece = rng.choice(['"../../../../etc/shadow"', '"/etc/passwd"', '"\\u0000"', '"=HYPERLINK(1)"', "null",
                            "[]", "{}", "true", '""'])
    elif op == 3:  # a number replaced by another
        import re

        nums = list(re.finditer(r"-?\d+(\.\d+)?([eE][+-]?\d+)?", text))
        if nums:
            m = rng.choice(nums)
            return (text[: m.start()] + rng.choice(["1e308", "-5", "2", "0.5", "1e300", "-1e-300", "7"])
                    + text[m.end():]).encode()
        piece = "0"
    elif op == 4:
        return (text * rng.randint(2, 50)).encode()
    elif op == 5:
        return text[: pos].encode()
    else:
        piece = '{"a": ' * 50 + "1" + "}" * 50
    return (text[:pos] + piece + text[pos:]).encode()


def run_target(target: str, *, seconds: float, iterations: int | None, out: Path, seed: int) -> dict[str, int]:
    """Mutational fuzzing of one parser target; crashing inputs go to ``out/crashes-<target>``."""
    return run_mutate([], seconds=seconds, iterations=iterations, out=out, seed=seed, check=TARGETS[target],
                      mutator=mutate_json, corpus=_json_seeds(target), crash_dir=f"crashes-{target}")


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
    p.add_argument("--target", choices=["reader", *TARGETS], default="reader",
                   help="what to fuzz: the image reader (default) or another parser")
    p.add_argument("libfuzzer", nargs="*", help="after --: options passed to libFuzzer (atheris)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.target != "reader":
        t0 = time.monotonic()
        stats = run_target(args.target, seconds=args.seconds, iterations=args.iterations, out=args.out, seed=args.seed)
        return _report(stats, t0, args.out / f"crashes-{args.target}")
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
    return _report(stats, t0, args.out / "crashes")


def _report(stats: dict[str, int], t0: float, crashes: Path) -> int:
    total = sum(stats.values())
    print(f"{total} inputs in {time.monotonic() - t0:.0f} s ({total / max(time.monotonic() - t0, 1e-9):.1f}/s)")
    for outcome, count in sorted(stats.items(), key=lambda kv: -kv[1]):
        print(f"  {count:7d}  {outcome}")
    bugs = sum(c for o, c in stats.items() if o.startswith("BUG"))
    print(f"{bugs} bug(s); inputs in {crashes}" if bugs else "no bugs found")
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
