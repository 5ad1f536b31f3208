"""Tools › Models…: listing with model cards, enable/disable, adding bundles (and refusing bad ones)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDropEvent

from tests.qt.bundles import build_classifier, tiny_models, open_and_wait  # noqa: F401  (fixture)

WAIT_MS = 180_000


def _open(qtbot, make_window, models: Path, path: Path):
    return open_and_wait(qtbot, make_window, models, path, timeout_ms=WAIT_MS)


def _models_in_findings(win) -> set[str]:
    return {m for m, *_ in win.findings_panel.rows()}


def test_lists_bundles_with_model_cards(qtbot, make_window, tiny_models, nih_png) -> None:
    win = _open(qtbot, make_window, tiny_models, nih_png)
    dlg = win.show_models()
    qtbot.waitExposed(dlg)
    assert dlg.names() == ["nih-tiny", "tb-tiny"]
    dlg.list.setCurrentRow(0)
    card = dlg.card.toPlainText()
    assert "nih-tiny 0.0.1" in card and "auroc" in card.lower() and "Cardiomegaly" in card
    assert "loaded" in dlg.list.item(0).text()
    dlg.list.setCurrentRow(1)
    assert "UNTRAINED" in dlg.card.toPlainText() and "UNTRAINED" in dlg.list.item(1).text()
    assert str(tiny_models) in dlg.folders_label.text()


def test_disabling_a_model_removes_its_findings_and_persists(qtbot, make_window, tiny_models, nih_png,
                                                             settings_path) -> None:
    win = _open(qtbot, make_window, tiny_models, nih_png)
    assert _models_in_findings(win) == {"nih-tiny", "tb-tiny"}
    dlg = win.show_models()
    dlg.set_enabled("tb-tiny", False)  # what unticking the box does
    assert win.wait_idle(WAIT_MS / 1000)
    assert _models_in_findings(win) == {"nih-tiny"}
    assert all(f.model == "nih-tiny" for f in list(win.analysis.state.findings))
    assert not win.findings_panel.banner.isVisible(), "no untrained model is in use any more"
    assert QSettings(str(settings_path), QSettings.Format.IniFormat).value("models/disabled", [], type=list) == ["tb-tiny"]
    win.close()
    win2 = _open(qtbot, make_window, tiny_models, nih_png)
    assert _models_in_findings(win2) == {"nih-tiny"}
    dlg2 = win2.show_models()
    states = {dlg2.list.item(i).data(Qt.ItemDataRole.UserRole + 1): dlg2.list.item(i).checkState()
              for i in range(dlg2.list.count())}
    assert states == {"nih-tiny": Qt.CheckState.Checked, "tb-tiny": Qt.CheckState.Unchecked}
    dlg2.set_enabled("tb-tiny", True)
    assert win2.wait_idle(WAIT_MS / 1000)
    assert _models_in_findings(win2) == {"nih-tiny", "tb-tiny"}


def test_tampered_or_pickled_bundles_are_refused(qtbot, make_window, tiny_models, nih_png, tmp_path) -> None:
    win = _open(qtbot, make_window, tiny_models, nih_png)
    dlg = win.show_models()
    user = Path(win.analysis.model_dirs()[-1])
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_models / "nih", tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    dlg.add_bundle(tampered)
    assert win.wait_idle(WAIT_MS / 1000)
    assert "checksum" in dlg.message.text() and dlg.message.text().startswith("Not added")
    assert "checksum" in (win.last_error or "")
    assert not user.exists() or not any(user.iterdir())

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_models / "nih" / "manifest.json", pickled / "manifest.json")
    (pickled / "model.pt").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    dlg.add_bundle(pickled)
    assert win.wait_idle(WAIT_MS / 1000)
    assert "pickle" in dlg.message.text().lower() and "not loaded" in dlg.message.text()
    assert not user.exists() or not any(user.iterdir())


def test_dropping_a_bundle_zip_and_folder_installs_both(qtbot, make_window, tiny_models, nih_png, tmp_path) -> None:
    src = build_classifier(tmp_path / "extra", "extra-tiny", ("Pneumonia",), trained=True, seed=5, task="binary")
    folder = build_classifier(tmp_path / "more", "more-tiny", ("Edema",), trained=True, seed=6, task="binary")
    archive = tmp_path / "extra-tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"extra/{f.name}")
    win = _open(qtbot, make_window, tiny_models, nih_png)
    dlg = win.show_models()
    qtbot.waitExposed(dlg)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(archive)), QUrl.fromLocalFile(str(folder))])
    event = QDropEvent(QPointF(QPoint(50, 50)), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    dlg.dropEvent(event)
    assert win.wait_idle(WAIT_MS / 1000)
    user = Path(win.analysis.model_dirs()[-1])
    assert (user / "extra-tiny-0.0.1.zip").is_file()
    assert (user / "more-tiny-0.0.1" / "model.safetensors").is_file()
    assert dlg.message.text().startswith("Added")
    assert {"extra-tiny", "more-tiny"} <= set(dlg.names())
    assert _models_in_findings(win) == {"nih-tiny", "tb-tiny", "extra-tiny", "more-tiny"}


def test_a_damaged_installed_bundle_is_reported_and_the_others_still_run(qtbot, make_window, tiny_models, nih_png,
                                                                          tmp_path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "nih", models / "nih")
    shutil.copytree(tiny_models / "tb", models / "tb")
    weights = models / "tb" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    win = _open(qtbot, make_window, models, nih_png)
    assert _models_in_findings(win) == {"nih-tiny"}
    banner = win.findings_panel.banner
    assert banner.isVisible() and "Not loaded: tb-tiny" in banner.text() and "checksum" in banner.text()
    dlg = win.show_models()
    tb_row = dlg.names().index("tb-tiny")
    assert "NOT LOADED" in dlg.list.item(tb_row).text()
    dlg.list.setCurrentRow(tb_row)
    assert "Not loaded" in dlg.card.toPlainText()
