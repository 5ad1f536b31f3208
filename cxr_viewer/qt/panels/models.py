"""Tools › Models…: the installed bundles, their model cards, enable/disable, and adding new ones.

A bundle is added from a folder or a .zip (file dialog or drag-and-drop). It is
loaded once (hash check, safetensors only, network rebuilt) before it is copied
into the user models folder, so a tampered or pickled bundle never gets installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.qt.analysis import AnalysisController

log = logging.getLogger(__name__)

ROLE_PATH = Qt.ItemDataRole.UserRole
ROLE_NAME = Qt.ItemDataRole.UserRole + 1


class ModelManagerDialog(QDialog):
    """Lists bundles from the app and user model folders with their cards; add, enable, disable."""

    def __init__(self, controller: AnalysisController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.setWindowTitle("Models")
        self.setAcceptDrops(True)
        self.resize(900, 600)
        self._cards: dict[str, str] = {}
        self._updating = False

        self.list = QListWidget(self)
        self.list.setObjectName("bundleList")
        self.list.setMinimumWidth(320)
        self.card = QTextBrowser(self)
        self.card.setObjectName("modelCard")
        self.card.setOpenExternalLinks(False)
        split = QSplitter(self)
        split.addWidget(self.list)
        split.addWidget(self.card)
        split.setStretchFactor(1, 1)
        self.message = QLabel("Drop a bundle folder or .zip here to add it.", self)
        self.message.setObjectName("modelMessage")
        self.message.setWordWrap(True)
        self.folders_label = QLabel(self)
        self.folders_label.setStyleSheet("color:#9aa0a6;")
        self.folders_label.setWordWrap(True)
        self.add_folder_button = QPushButton("Add bundle folder…", self)
        self.add_zip_button = QPushButton("Add bundle .zip…", self)
        self.open_folder_button = QPushButton("Open models folder", self)
        self.close_button = QPushButton("Close", self)
        buttons = QHBoxLayout()
        for b in (self.add_folder_button, self.add_zip_button, self.open_folder_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addWidget(split, 1)
        layout.addWidget(self.message)
        layout.addWidget(self.folders_label)
        layout.addLayout(buttons)

        self.add_folder_button.clicked.connect(self._add_folder_dialog)
        self.add_zip_button.clicked.connect(self._add_zip_dialog)
        self.open_folder_button.clicked.connect(self._open_user_folder)
        self.close_button.clicked.connect(self.close)
        self.list.currentItemChanged.connect(self._show_card)
        self.list.itemChanged.connect(self._on_item_changed)
        controller.error.connect(self._on_error)
        controller.bundle_added.connect(self._on_added)
        controller.models_changed.connect(self._on_models_changed)
        self.refresh()

    # ------------------------------------------------------------------ public
    def refresh(self) -> None:
        """Rescan the model folders (manifests only) and list what is there."""
        from cxr_viewer.core.models.bundle import find_bundles, model_card_markdown

        dirs = self.controller.model_dirs()
        self.folders_label.setText("Folders: " + "  ·  ".join(str(d) for d in dirs))
        current = self.list.currentItem().data(ROLE_PATH) if self.list.currentItem() is not None else None
        loaded = {(b.name, b.sha256.lower()) for b in self.controller.bundles if b.loaded}
        failed = {str(b.path): b.error for b in self.controller.bundles if b.error}
        self._updating = True
        self.list.clear()
        self._cards = {}
        for info in find_bundles(dirs):
            m = info.manifest
            if m is None:
                item = QListWidgetItem(f"⚠ {info.path.name} — unusable")
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                item.setToolTip(info.error or "")
                self._cards[str(info.path)] = f"# {info.path.name}\n\n**This bundle cannot be used:** {info.error}\n"
            else:
                tags = [m.task]
                if not m.trained:
                    tags.append("UNTRAINED")
                if (m.name, str(m.weights.get("sha256", "")).lower()) in loaded:
                    tags.append("loaded")
                error = failed.get(str(info.path))
                if error:
                    tags.append("NOT LOADED")
                item = QListWidgetItem(f"{'⚠ ' if error else ''}{m.name} {m.version}  ({', '.join(tags)})")
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if self.controller.is_enabled(m.name) else Qt.CheckState.Unchecked)
                item.setData(ROLE_NAME, m.name)
                item.setToolTip(f"{info.path}\nTick to use this model, untick to switch it off.")
                card = model_card_markdown(m)
                if error:
                    card = f"> **Not loaded:** {error}\n\n" + card
                self._cards[str(info.path)] = card
            item.setData(ROLE_PATH, str(info.path))
            self.list.addItem(item)
        self._updating = False
        if self.list.count() == 0:
            self.card.setMarkdown("# No models installed\n\nAdd a model bundle (a folder or .zip with "
                                  "`manifest.json` and `model.safetensors`) with the buttons below, or drop it here.")
            return
        row = 0
        for i in range(self.list.count()):
            if self.list.item(i).data(ROLE_PATH) == current:
                row = i
        self.list.setCurrentRow(row)
        self._show_card(self.list.currentItem())

    def names(self) -> list[str]:
        return [str(self.list.item(i).data(ROLE_NAME) or "") for i in range(self.list.count())]

    def set_enabled(self, name: str, enabled: bool) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(ROLE_NAME) == name:
                item.setCheckState(Qt.CheckState.Checked if enabled else Qt.CheckState.Unchecked)

    def add_bundle(self, path: str | Path) -> None:
        self.message.setStyleSheet("")
        self.message.setText(f"Checking {Path(path).name}…")
        self.controller.add_bundle(path)

    # ------------------------------------------------------------------ internals
    def _show_card(self, item: QListWidgetItem | None) -> None:
        if item is None:
            return
        self.card.setMarkdown(self._cards.get(str(item.data(ROLE_PATH)), ""))

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        name = item.data(ROLE_NAME)
        if self._updating or not name:
            return
        on = item.checkState() == Qt.CheckState.Checked
        if on != self.controller.is_enabled(name):
            self.controller.set_enabled(name, on)
            self.message.setStyleSheet("")
            self.message.setText(f"{name} {'enabled' if on else 'switched off'}.")

    def _on_models_changed(self, _summaries: object) -> None:
        self.refresh()

    def _on_error(self, title: str, message: str) -> None:
        if title == "Model not added":
            self.message.setStyleSheet("color:#ff8a80;")
            self.message.setText(f"Not added: {message}")

    def _on_added(self, path: Path) -> None:
        self.message.setStyleSheet("color:#9ccc9c;")
        self.message.setText(f"Added {Path(path).name} to your models folder.")
        self.refresh()

    def _add_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model bundle folder")
        if folder:
            self.add_bundle(folder)

    def _add_zip_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model bundle", "", "Model bundle (*.zip);;All files (*)")
        if path:
            self.add_bundle(path)

    def _open_user_folder(self) -> None:
        from cxr_viewer.core.paths import user_models_dir

        folder = user_models_dir()
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            for p in paths:
                self.add_bundle(p)

    def closeEvent(self, event: object) -> None:  # noqa: N802 - Qt override
        for sig, slot in ((self.controller.error, self._on_error), (self.controller.bundle_added, self._on_added),
                          (self.controller.models_changed, self._on_models_changed)):
            try:
                sig.disconnect(slot)
            except (RuntimeError, TypeError):
                pass
        super().closeEvent(event)  # type: ignore[arg-type]
