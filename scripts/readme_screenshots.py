"""Take the README screenshots from the real main window (run under a display, e.g. Xvfb).

``xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/readme_screenshots.py --out docs``

Writes, at the default 1400x900 window with the shipped default models:

- ``screenshot.png``: the sample study analysed, the Abnormal heatmap shown (asked for);
- ``screenshot-tools.png``: distance, angle, ROI ellipse and rectangle, cardiothoracic ratio,
  arrow and text drawn, the heatmap as contours, and the magnifier held over the film;
- ``screenshot-compare.png``: current | prior (the DICOM sample and the NIH sample film put in
  the same patient's DICOM header a year earlier), scores prior → now, a report's sentences
  masked on both films.
- ``screenshot-worklist.png``: a folder of films (``--films``, by default twelve NIH films from
  ``$CXR_DATA_DIR/nih14/images``) analysed as a worklist in the bottom panel, most abnormal first,
  the first study open.

Annotations are added through the canvas's own tool code (``add_annotation``: what a drag
or click finishes), the magnifier by a real key press with the cursor over the film.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "resources" / "samples" / "siim_cr_chest.dcm"
PRIOR_IMAGE = REPO / "resources" / "samples" / "nih_chest.png"
REPORT = "FINDINGS: Opacity in the right lower zone. The left lung is clear. IMPRESSION: No pneumothorax."
SIZE = (1400, 900)


def wait(app, pred, timeout: float = 600.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()


def settle(app, seconds: float = 0.5) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def make_window(app, tmp: Path, name: str):
    from PySide6.QtCore import QSettings

    from cxr_viewer.qt.app import compose

    settings = QSettings(str(tmp / f"{name}.ini"), QSettings.Format.IniFormat)
    win = compose(settings=settings, interactive=False, persist=False)
    win.session.set_preference("show_demographics", False)
    win.resize(*SIZE)
    win.show()
    wait(app, lambda: win.isVisible(), 30, "the window")
    settle(app)
    return win


def analysed(app, win, path: Path) -> None:
    win.open_file(path)
    wait(app, lambda: win.session.record is not None and Path(win.session.record.source) == path
         and win.analysis.state.status == "done" and not win.session.busy, what=f"the analysis of {path.name}")


def main_shot(app, tmp: Path, out: Path) -> None:
    win = make_window(app, tmp, "main")
    win.analysis.set_shown_cam("Abnormal", None)
    analysed(app, win, SAMPLE)
    wait(app, lambda: win.analysis.heatmap is not None and win.analysis.heatmap.label == "Abnormal", what="the heatmap")
    settle(app)
    win.grab().save(str(out / "screenshot.png"), "PNG")
    win.close()


def tools_shot(app, tmp: Path, out: Path) -> None:
    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QCursor, QKeyEvent, QMouseEvent

    study = tmp / "tools"
    study.mkdir()
    film = study / "chest.dcm"
    shutil.copy(SAMPLE, film)
    win = make_window(app, tmp, "tools")
    win.analysis.set_shown_cam("Abnormal", None)
    analysed(app, win, film)
    wait(app, lambda: win.analysis.heatmap is not None, what="the heatmap")
    win.action_map["heatmap_style"].trigger()  # Shift+G: iso-lines at the cut-off
    c = win.canvas
    c.add_annotation("measure", [(210, 250), (610, 250)])
    c.add_annotation("angle", [(720, 150), (905, 120), (760, 300)])
    c.add_annotation("roi_ellipse", [(330, 650), (470, 820)])
    c.add_annotation("roi_rect", [(330, 200), (440, 330)])
    c.add_annotation("ctr", [(640, 395), (640, 730), (760, 110), (760, 935)])
    c.add_annotation("arrow", [(160, 620), (300, 520)], text="line tip")
    c.add_annotation("text", [(95, 420)], text="compare with prior")
    settle(app)
    # the magnifier: cursor over the left costophrenic region, clear of the labels, Z held
    target = c.image_to_viewport(930, 830).toPoint()
    QCursor.setPos(c.viewport().mapToGlobal(target))
    move = QMouseEvent(QEvent.Type.MouseMove, QPointF(target), QPointF(c.viewport().mapToGlobal(target)),
                       Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    app.sendEvent(c.viewport(), move)
    c.setFocus()
    app.sendEvent(c, QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Z, Qt.KeyboardModifier.NoModifier, "z"))
    settle(app)
    if c.loupe is None or not c.loupe.isVisible():
        raise SystemExit("the magnifier did not show")
    win.grab().save(str(out / "screenshot-tools.png"), "PNG")
    app.sendEvent(c, QKeyEvent(QEvent.Type.KeyRelease, Qt.Key.Key_Z, Qt.KeyboardModifier.NoModifier, "z"))
    win.close()


def compare_shot(app, tmp: Path, out: Path) -> None:
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = tmp / "pair"
    folder.mkdir()
    cur = pydicom.dcmread(SAMPLE)
    cur.PatientID, cur.StudyDate = "DEMO-1", "20240301"
    cur.save_as(folder / "current.dcm")
    # the prior: another chest film (the NIH sample) in the sample's DICOM header, dated a year earlier
    prior = pydicom.dcmread(SAMPLE)
    px = np.ascontiguousarray(np.asarray(Image.open(PRIOR_IMAGE).convert("L"), dtype=np.uint8))
    prior.PixelData, (prior.Rows, prior.Columns) = px.tobytes(), px.shape
    prior.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    prior.PixelSpacing = [0.143, 0.143]  # NIH ChestX-ray14's nominal pixel size
    prior.PatientID, prior.StudyDate = "DEMO-1", "20230115"
    prior.StudyInstanceUID, prior.SeriesInstanceUID, prior.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    prior.file_meta.MediaStorageSOPInstanceUID = prior.SOPInstanceUID
    prior.save_as(folder / "prior.dcm")
    win = make_window(app, tmp, "compare")
    win.open_paths([folder])
    wait(app, lambda: len(win.study_browser.image_paths()) == 2, what="the folder scan")
    analysed(app, win, folder / "current.dcm")
    win.report_panel.editor.setPlainText(REPORT)
    win.report_panel.draw_button.click()
    wait(app, lambda: len(win.session.masks) >= 2 and not win.session.busy, what="the report masks")
    win.reading.toggle_compare(True)
    compare = win.reading.compare
    wait(app, lambda: compare.prior.session.record is not None and bool(compare.deltas)
         and len(compare.prior.session.masks) == len(win.session.masks), what="the prior's scores and masks")
    win.report_dock.raise_()
    win.findings_panel.tree.scrollToTop()
    settle(app, 1.0)
    win.grab().save(str(out / "screenshot-compare.png"), "PNG")
    win.close()


def worklist_shot(app, tmp: Path, out: Path, films: Path) -> None:
    import os

    folder = tmp / "worklist"
    folder.mkdir()
    for f in sorted(p for p in films.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))[:12]:
        shutil.copy(f, folder / f.name)
    os.environ["CXR_VIEWER_WORKLIST_DB"] = str(tmp / "worklist.sqlite")  # a fresh store: every film analysed
    win = make_window(app, tmp, "worklist")
    panel = win.worklist_panel
    panel.open_folder(folder)
    wait(app, lambda: panel.model.rowCount() >= 1 and not panel.controller.running, what="the worklist")
    panel.select_row(0)
    wait(app, lambda: win.session.record is not None and win.analysis.state.status == "done"
         and not win.session.busy, what="the first study")
    win.activateWindow()
    panel.table.setFocus()  # the labelling line says what 1 / 2 / 3 do now
    panel._show_label_mode(True)
    settle(app, 1.0)
    win.grab().save(str(out / "screenshot-worklist.png"), "PNG")
    win.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs")
    p.add_argument("--only", choices=("main", "tools", "compare", "worklist"), action="append")
    p.add_argument("--films", type=Path, help="folder of films for the worklist screenshot "
                   "(default: $CXR_DATA_DIR/nih14/images)")
    args = p.parse_args(argv)
    from cxr_viewer.qt.app import _application

    app = _application()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        import os

        films = args.films or Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data")) / "nih14" / "images"
        for name in args.only or ("main", "tools", "compare", "worklist"):
            started = time.monotonic()
            if name == "main":
                main_shot(app, tmp, args.out)
            elif name == "tools":
                tools_shot(app, tmp, args.out)
            elif name == "compare":
                compare_shot(app, tmp, args.out)
            else:
                worklist_shot(app, tmp, args.out, films)
            print(f"{name}: {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
