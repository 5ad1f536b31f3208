"""A reading soak in the real main window: PgDn through N films with a heatmap in contour mode and
N / Shift+N between findings, as a radiologist reads a day's list.

The soak runs in a child process, so a crash (an abort such as "none_dealloc", a segfault) is seen and
reported rather than taking the benchmark down. Reported, measured in the same run:

- crashes: the child's exit status (a signal means a crash), and the step it reached;
- RSS: after the first 10 films (the baseline, models warm) and at the end, and the growth per 100 films;
- stalls: lateness of a 5 ms GUI timer while reading, against the idle window's lateness (the baseline);
- sys.getrefcount(None) at the start and the end (a falling count is a binding leak that ends in an abort).

    python benchmarks/bench_gui_soak.py [--films 300] [--folder DIR] [--models DIR]

Films come from --folder, else ``$CXR_DATA_DIR/nih14/images`` (../shared/data), else tests/data's NIH
films repeated. With no display it runs offscreen; under ``xvfb-run`` it drives a real window.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def film_folder(args: argparse.Namespace, tmp: Path) -> Path:
    """A folder of ``args.films`` films (links to the sources, repeated when there are fewer)."""
    if args.folder is not None:
        sources = sorted(p for p in Path(args.folder).iterdir() if p.is_file())
    else:
        data = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data"))
        if not (data / "nih14" / "images").is_dir():
            data = REPO / "tests" / "data"
        sources = sorted((data / "nih14" / "images").glob("*.*"))
    if not sources:
        raise SystemExit("no films found: pass --folder DIR")
    out = tmp / "films"
    out.mkdir()
    for i in range(args.films):
        src = sources[i % len(sources)]
        os.symlink(src.resolve(), out / f"{i:04d}_{src.name}")
    return out


def child(args: argparse.Namespace) -> int:
    """The soak itself, in the window's own process."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen" if not os.environ.get("DISPLAY") else "xcb")
    from PySide6.QtCore import QSettings, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    sys.path.insert(0, str(REPO))
    from benchmarks.bench_gui_stall import measure

    app = QApplication.instance() or QApplication([sys.argv[0]])
    tmp = Path(tempfile.mkdtemp(prefix="bench_gui_soak_"))
    os.environ["CXR_VIEWER_CACHE"] = str(tmp / "cache")
    os.environ["CXR_VIEWER_MODELS"] = str(tmp / "user_models")
    os.environ["CXR_VIEWER_WORKLIST_DB"] = str(tmp / "worklist.sqlite")
    folder = film_folder(args, tmp)
    from cxr_viewer.qt.app import compose

    win = compose(settings=QSettings(str(tmp / "soak.ini"), QSettings.Format.IniFormat), interactive=False,
                  persist=False, models_dir=args.models or REPO / "resources" / "models")
    win.analysis.faithfulness = False
    win.resize(1400, 900)
    win.show()
    app.processEvents()
    win.session.set_preference("heatmap_style", "contour")
    win.open_paths([folder])

    def idle() -> bool:
        return win.session.record is not None and not win.session.busy and win.analysis.state.status != "running"

    measure(app, idle, min_s=0.5, max_s=600)
    paths = win.study_browser.image_paths()
    print(json.dumps({"event": "start", "films": len(paths), "rss_mb": rss_mb(),
                      "none_refs": sys.getrefcount(None)}), flush=True)
    idle_lat = measure(app, lambda: True, min_s=2.0, max_s=2.0)
    lateness: list[np.ndarray] = []
    rss: list[float] = []
    t0 = time.perf_counter()
    for step in range(len(paths) - 1):
        QTest.keyClick(win, Qt.Key.Key_PageDown)
        lateness.append(measure(app, idle, min_s=0.05, max_s=120))
        for key, mod in ((Qt.Key.Key_N, Qt.KeyboardModifier.NoModifier),
                         (Qt.Key.Key_N, Qt.KeyboardModifier.NoModifier),
                         (Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)):
            QTest.keyClick(win, key, mod)
            lateness.append(measure(app, idle, min_s=0.02, max_s=120))
        rss.append(rss_mb())
        if step % 25 == 0:
            print(json.dumps({"event": "step", "step": step + 1, "rss_mb": rss[-1],
                              "none_refs": sys.getrefcount(None)}), flush=True)
    lat = np.concatenate(lateness) if lateness else np.zeros(1)
    print(json.dumps({
        "event": "end", "steps": len(paths) - 1, "seconds": time.perf_counter() - t0,
        "rss_after_10_mb": rss[min(9, len(rss) - 1)] if rss else rss_mb(), "rss_end_mb": rss_mb(),
        "none_refs": sys.getrefcount(None),
        "idle_p99_ms": float(np.percentile(idle_lat, 99)) if idle_lat.size else 0.0,
        "read_p99_ms": float(np.percentile(lat, 99)), "read_max_ms": float(lat.max()),
        "stalls_over_200ms": int((lat > 200).sum()),
    }), flush=True)
    win.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--films", type=int, default=300)
    p.add_argument("--folder", type=Path, default=None)
    p.add_argument("--models", type=Path, default=None, help="bundle folder (default: resources/models)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    cmd = [sys.executable, __file__, "--child", "--films", str(args.films)]
    if args.folder:
        cmd += ["--folder", str(args.folder)]
    if args.models:
        cmd += ["--models", str(args.models)]
    import PySide6

    print(f"PySide6 {PySide6.__version__}, Python {sys.version.split()[0]}, {args.films} films")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    start = next((e for e in events if e["event"] == "start"), None)
    end = next((e for e in events if e["event"] == "end"), None)
    last = events[-1] if events else {}
    if proc.returncode < 0 or end is None:
        reached = last.get("step", 0)
        print(f"CRASH: exit status {proc.returncode} after about {reached} films")
        print("\n".join(proc.stderr.splitlines()[-15:]))
        return 1
    growth = (end["rss_end_mb"] - end["rss_after_10_mb"]) / max(1, end["steps"] - 10) * 100
    print(f"crashes: 0 ({end['steps']} PgDn steps, {3 * end['steps']} N/Shift+N steps in {end['seconds']:.0f} s)")
    print(f"RSS: {end['rss_after_10_mb']:.0f} MB after 10 films (baseline), {end['rss_end_mb']:.0f} MB at the end: "
          f"{growth:+.1f} MB per 100 films")
    print(f"GUI timer lateness: idle p99 {end['idle_p99_ms']:.1f} ms (baseline); reading p99 {end['read_p99_ms']:.1f} ms "
          f"({end['read_p99_ms'] / max(end['idle_p99_ms'], 1e-3):.1f}x idle), max {end['read_max_ms']:.0f} ms, "
          f"{end['stalls_over_200ms']} stalls over 200 ms")
    drift = end["none_refs"] - start["none_refs"] if start else 0
    print(f"sys.getrefcount(None): {start['none_refs'] if start else '?'} -> {end['none_refs']} ({drift:+d})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
