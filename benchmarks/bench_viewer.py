"""Viewer responsiveness on the real 1955 x 1841 RG1 radiograph, offscreen.

Prints: window start-up time; file-open-to-shown time through the loader thread;
the cost of one live window/level frame in the canvas (uint16 codes + lookup table,
QImage, QPixmap) against a baseline measured in the same run (the float path on
the same pixels, also turned into a QPixmap); and one wheel-zoom step.

With the shipped models (resources/models) it also prints, against their goals:
cold launch to first scores of the real app in a fresh process (the window started
with a film, until its findings are shown; goal <= 3 s), the warm image in the window
(open a new film -> findings shown; goal <= 0.5 s), and the GUI stall p99 -- the
lateness of a 5 ms timer in the event loop (benchmarks/bench_gui_stall.py) while the
models warm up, analyse, draw a Grad-CAM and score its faithfulness, beside the idle
baseline of the same run (goal <= 50 ms).

    python benchmarks/bench_viewer.py [--repeat 20] [--no-models]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parents[1]
CHILD = r"""
import sys, time
t0 = float(sys.argv[2])
from PySide6.QtCore import QSettings, QTimer
from cxr_viewer.qt.app import _application
app = _application()
from cxr_viewer.qt.app import compose
w = compose(settings=QSettings(sys.argv[3], QSettings.Format.IniFormat), persist=False)
w.resize(1400, 900); w.show(); w.open_paths([sys.argv[1]])
def poll():
    if w.analysis.state.status == "done" and w.analysis.state.findings:
        print(f"FIRST_SCORES {time.time() - t0:.3f} {len(w.analysis.state.findings)}", flush=True)
        app.quit()
    elif w.analysis.state.status == "error":
        print("ERROR " + w.analysis.state.message, flush=True); app.quit()
timer = QTimer(); timer.timeout.connect(poll); timer.start(5)
app.exec()
"""


def _rg1() -> Path:
    data = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data"))
    path = data / "dicom" / "pydicom-data_RG1_UNCR.dcm"
    return path if path.exists() else REPO / "resources" / "samples" / "siim_cr_chest.dcm"


def _film(i: int) -> Path:
    data = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data"))
    films = sorted((data / "nih14" / "images").glob("*.jpg"))
    return films[i] if len(films) > i else REPO / "resources" / "samples" / "nih_chest.png"


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1e3:7.1f} ms  (min {min(samples) * 1e3:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--no-models", action="store_true", help="skip the model figures")
    args = parser.parse_args()
    summary: list[tuple[str, str, str]] = []
    if not args.no_models:
        import subprocess
        import sys

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            proc = subprocess.run([sys.executable, "-c", CHILD, str(_film(1)), f"{t0:.6f}", str(Path(tmp) / "c.ini")],
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(("FIRST_SCORES", "ERROR"))), "")
        cold = float(line.split()[1]) if line.startswith("FIRST_SCORES") else float("nan")
        print(f"cold launch to first scores (app in a new process, film given): {cold:.2f} s  {line[:80]}")
        summary.append(("cold launch to first scores (GUI)", f"{cold:.2f} s", "<= 3 s"))

    t0 = time.perf_counter()
    from PySide6.QtCore import QPoint, QSettings
    from PySide6.QtGui import QPixmap

    import numpy as np

    from cxr_viewer.core.imaging.windowing import quantize, window_to_uint8
    from cxr_viewer.qt.app import _application
    from cxr_viewer.qt.app import compose
    from cxr_viewer.qt.overlays import gray_to_qimage

    app = _application()
    with tempfile.TemporaryDirectory() as tmp:
        win = compose(settings=QSettings(str(Path(tmp) / "b.ini"), QSettings.Format.IniFormat), persist=False)
        win.resize(1440, 900)
        win.show()
        app.processEvents()
        t_start = time.perf_counter() - t0

        path = _rg1()
        opens = []
        for _ in range(3):
            t = time.perf_counter()
            win.open_file(path)
            win.wait_idle(120)
            opens.append(time.perf_counter() - t)
        rec = win.session.record
        print(f"image: {path.name} {rec.shape[1]} x {rec.shape[0]} px")
        print(f"window start-up (imports + build + show): {t_start * 1e3:.0f} ms")
        print(f"open file -> shown (loader thread):      {_ms(opens)}")

        canvas = win.canvas
        codes = quantize(rec.pixels)
        frames: dict[str, list[float]] = {"canvas": [], "baseline": [], "lut": []}
        c, w = win.session.display.center_width
        for i in range(args.repeat):
            t = time.perf_counter()
            win.session.set_center_width(c + 0.001 * (i + 1), w * (1 + 0.01 * (i + 1)))  # one drag step
            canvas.flush()
            frames["canvas"].append(time.perf_counter() - t)
            lo, hi = win.session.display.window
            t = time.perf_counter()
            u8 = (np.clip((rec.pixels - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
            QPixmap.fromImage(gray_to_qimage(u8))
            frames["baseline"].append(time.perf_counter() - t)
            t = time.perf_counter()
            QPixmap.fromImage(gray_to_qimage(window_to_uint8(codes, lo, hi)))
            frames["lut"].append(time.perf_counter() - t)
        base = statistics.median(frames["baseline"])
        print(f"window/level frame, canvas (float path): {_ms(frames['canvas'])}  "
              f"{base / statistics.median(frames['canvas']):.2f}x baseline")
        print(f"window/level frame, uint16 LUT path:     {_ms(frames['lut'])}  "
              f"{base / statistics.median(frames['lut']):.2f}x baseline")
        print(f"window/level frame, baseline one-liner:  {_ms(frames['baseline'])}")

        zooms = []
        anchor = QPoint(700, 400)
        for i in range(args.repeat):
            t = time.perf_counter()
            canvas.zoom_by(1.25 if i % 2 == 0 else 0.8, anchor)
            canvas.viewport().repaint()
            zooms.append(time.perf_counter() - t)
        print(f"wheel zoom step incl. repaint:           {_ms(zooms)}")
        if not args.no_models:
            _model_figures(app, win, summary)
        win.close()
    if summary:
        print("\n## summary")
        for fig, val, goal in summary:
            print(f"{fig:<40} {val:>10}  goal {goal}")


def _model_figures(app, win, summary: list[tuple[str, str, str]]) -> None:
    """Warm image in the window and the GUI stall p99 while the models work, beside the idle baseline."""
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gui_stall import measure

    win.wait_idle(600)
    idle = measure(app, lambda: True, min_s=2.0, max_s=2.0)
    lat = []
    warm = []
    for i in range(3):
        film = _film(3 + i)
        old = win.session.record
        t = time.perf_counter()
        win.open_file(film)
        lat.append(measure(app, lambda: win.session.record is not old and bool(win.analysis.state.findings)
                           and win.analysis.state.status in ("done", "error"), min_s=0.0, max_s=120))  # fmt: skip
        warm.append(time.perf_counter() - t)
        label = max(win.analysis.state.findings, key=lambda f: f.score)
        win.analysis.faithfulness = True
        win.analysis.request_cam(label.label, label.model, "gradcam", remember=False)
        lat.append(measure(app, lambda: not win.session.busy, min_s=0.2, max_s=120))
    busy = np.concatenate(lat)
    p99, idle99 = float(np.percentile(busy, 99)), float(np.percentile(idle, 99))
    print(f"warm image in the window (open film -> findings shown): median {statistics.median(warm) * 1e3:.0f} ms")
    print(f"GUI stall while analysing + Grad-CAM + ROAD: p99 {p99:.1f} ms, max {busy.max():.1f} ms over "
          f"{busy.size} ticks; idle baseline p99 {idle99:.1f} ms")
    summary.append(("warm image (GUI, open -> findings)", f"{statistics.median(warm):.2f} s", "<= 0.5 s"))
    summary.append(("GUI stall p99 while models run", f"{p99:.1f} ms", f"<= 50 ms (idle {idle99:.1f} ms)"))


if __name__ == "__main__":
    main()
