"""Worklist: time to a sorted list when reopening analysed studies, against the first pass; and a memory soak.

Builds N small studies in a temp folder (half 64x64 PNG, half 64x64 CR DICOM with
their own UIDs), a tiny real classifier bundle, and then:

1. first pass: every study analysed by the model, results into a fresh SQLite store;
2. reopen: a new store object and worklist on the same file, as after a restart;
   the figure is the time to the sorted list, and the pass must recompute nothing
   (no engine is even built);
3. soak (``--soak``): the Qt worklist panel (offscreen) reopens the folder several
   times and steps through studies, with the process RSS sampled at intervals.

    python benchmarks/bench_worklist.py [--studies 1000] [--soak] [--cycles 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_studies(root: Path, n: int, size: int = 64) -> None:
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"batch{i // 100:02d}"
        sub.mkdir(exist_ok=True)
        img = rng.integers(0, 4096, (size, size), dtype=np.uint16)
        if i % 2:
            Image.fromarray((img >> 4).astype(np.uint8), mode="L").save(sub / f"film{i:05d}.png")
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(sub / f"IM{i:05d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientName, ds.PatientID = f"Bench^Patient{i:05d}", f"B{i:05d}"
        ds.Modality, ds.ViewPosition, ds.StudyDate = "CR", "PA", f"2024{1 + i % 12:02d}{1 + i % 28:02d}"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = img.tobytes()
        pydicom.dcmwrite(ds.filename, ds, enforce_file_format=True)


def timed_pass(db: Path, folder: Path, models: Path, backend: str) -> tuple[float, list, object]:
    from cxr_viewer.core.worklist import ResultStore, Worklist

    wl = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend=backend)
    t0 = time.perf_counter()
    entries = wl.open_folder(folder)
    return time.perf_counter() - t0, entries, wl


def soak(folder: Path, models: Path, db: Path, cycles: int, every: int) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from cxr_viewer.qt.worklist import WorklistController, WorklistPanel

    app = QApplication.instance() or QApplication([])
    settings = QSettings(str(db.with_suffix(".ini")), QSettings.Format.IniFormat)
    ctl = WorklistController(settings, [models], device="cpu", store_path=db)
    panel = WorklistPanel(ctl)
    panel.resize(1000, 700)
    panel.show()
    opened: list[Path] = []
    panel.open_requested.connect(opened.append)
    samples: list[tuple[str, int, float]] = []
    cycle = ["", 0]

    def on_entry(_entry: object) -> None:  # RSS every ``every`` rows, as they reach the view
        cycle[1] += 1
        if cycle[1] % every == 0:
            samples.append((str(cycle[0]), cycle[1], rss_mb()))

    ctl.entry_ready.connect(on_entry)

    def run_cycle(c: int) -> float:
        cycle[:] = [f"cycle {c}", 0]
        panel.open_folder(folder)
        t0 = time.perf_counter()
        while ctl.running or panel.model.rowCount() == 0:
            app.processEvents()
            time.sleep(0.001)
        app.processEvents()
        return time.perf_counter() - t0

    print(f"\nsoak: Qt worklist panel, {cycles} reopen cycles; RSS at start {rss_mb():.1f} MB")
    for c in range(1, cycles + 1):
        dt = run_cycle(c)
        for _ in range(200):  # step through the list in order, marking every other study read
            e = panel.next_study()
            if e is not None and len(opened) % 2:
                panel.mark_read()
            app.processEvents()
        print(f"  cycle {c}: {panel.model.rowCount()} rows sorted in {dt:.2f} s, stepped 200, RSS {rss_mb():.1f} MB")
    first = [r for name, _n, r in samples if name == "cycle 1"]
    last = [r for name, _n, r in samples if name == f"cycle {cycles}"]
    print("  RSS samples (MB) every", every, "rows:")
    for name in dict.fromkeys(n for n, _r, _m in samples):
        print(f"    {name}: " + " ".join(f"{m:.0f}" for n, _r, m in samples if n == name))
    if first and last:
        print(f"  RSS end of cycle 1 {first[-1]:.1f} MB -> end of cycle {cycles} {last[-1]:.1f} MB "
              f"(growth {last[-1] - first[-1]:+.1f} MB over {cycles - 1} more cycles of {panel.model.rowCount()} studies)")
    ctl.shutdown()
    panel.close()
    panel.deleteLater()
    app.processEvents()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=1000)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--soak", action="store_true", help="also run the Qt worklist memory soak")
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--every", type=int, default=100, help="RSS sample interval in rows")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cxr_viewer.core.models.testing import make_untrained_bundle

    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("XDG_CACHE_HOME", str(root / "cache"))
        folder, models, db = root / "studies", root / "models", root / "worklist.sqlite"
        folder.mkdir()
        t0 = time.perf_counter()
        build_studies(folder, args.studies)
        make_untrained_bundle(models / "tiny", name="tiny", labels=["Effusion", "Nodule", "Pneumothorax"],
                              size=(64, 64), backbone="resnet10t", seed=0)
        print(f"built {args.studies} studies (64x64, half PNG, half CR DICOM) and a tiny resnet10t bundle "
              f"in {time.perf_counter() - t0:.1f} s")

        t1, first, _wl = timed_pass(db, folder, models, args.backend)
        computed = sum(1 for e in first if e.computed)
        print(f"first pass : {t1:8.2f} s to a sorted list of {len(first)} ({computed} analysed, "
              f"{t1 / max(1, len(first)) * 1e3:.1f} ms/study, includes loading the model)")
        t2, second, wl2 = timed_pass(db, folder, models, args.backend)
        recomputed = sum(1 for e in second if e.computed)
        print(f"reopen     : {t2:8.2f} s to a sorted list of {len(second)} ({recomputed} recomputed, "
              f"engine built: {wl2._engine is not None}, {t2 / max(1, len(second)) * 1e3:.2f} ms/study)")
        same = [(e.path, e.abnormality) for e in first] == [(e.path, e.abnormality) for e in second]
        print(f"ratio      : reopen is {t1 / t2:.1f}x faster than the first pass; same order and scores: {same}")
        if recomputed:
            print("FAIL: the reopen recomputed studies")
            return 1
        if args.soak:
            soak(folder, models, db, args.cycles, args.every)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown: PySide6 can crash collecting Qt objects at exit
