"""Viewer responsiveness on the real 1955 x 1841 RG1 radiograph, offscreen.

Prints: window start-up time; file-open-to-shown time through the loader thread;
the cost of one live window/level frame in the canvas (uint16 codes + lookup table,
QImage, QPixmap) against a baseline measured in the same run (the float path on
the same pixels, also turned into a QPixmap); and one wheel-zoom step.

    python benchmarks/bench_viewer.py [--repeat 20]
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


def _rg1() -> Path:
    data = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data"))
    path = data / "dicom" / "pydicom-data_RG1_UNCR.dcm"
    return path if path.exists() else REPO / "resources" / "samples" / "siim_cr_chest.dcm"


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1e3:7.1f} ms  (min {min(samples) * 1e3:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    t0 = time.perf_counter()
    from PySide6.QtCore import QPoint, QSettings
    from PySide6.QtGui import QPixmap

    import numpy as np

    from cxr_viewer.core.imaging.windowing import quantize, window_to_uint8
    from cxr_viewer.qt.app import _application
    from cxr_viewer.qt.main_window import MainWindow
    from cxr_viewer.qt.overlays import gray_to_qimage

    app = _application()
    with tempfile.TemporaryDirectory() as tmp:
        win = MainWindow(settings=QSettings(str(Path(tmp) / "b.ini"), QSettings.Format.IniFormat), persist=False)
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
        win.close()


if __name__ == "__main__":
    main()
