"""Tools › Models…: the installed bundles, their model cards, enable/disable, and adding new ones.

A site fine-tune (``cxr-train finetune --site --install``) arrives switched off beside the
bundle it was fine-tuned from. Selecting it offers "Use this site version": it is switched on
and the original off (both stay installed); selecting the original then offers "Roll back".

A bundle is added from a folder or a .zip (file dialog or drag-and-drop). It is
loaded once (hash check, safetensors only, network rebuilt) before it is copied
into the user models folder, so a tampered or pickled bundle never gets installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from cxr_viewer.core.models.manifest import Manifest

log = logging.getLogger(__name__)

ROLE_PATH = Qt.ItemDataRole.UserRole
ROLE_NAME = Qt.ItemDataRole.UserRole + 1
ROLE_DEFAULT = Qt.ItemDataRole.UserRole + 2  # the manifest's own enabled flag


class ModelManagerDialog(QDialog):
    """Lists bundles from the app and user model folders with their cards; add, enable, disable."""

    def __init__(self, controller: AnalysisController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.setWindowTitle("Models")
        self.setAcceptDrops(True)
        self.resize(900, 600)
        self._cards: dict[str, str] = {}
        self._manifests: dict[str, object] = {}  # path -> Manifest
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
        self.version_button = QPushButton(self)  # "Use this site version" / "Roll back to this version"
        self.version_button.setObjectName("versionButton")
        self.version_button.hide()
        self.version_button.clicked.connect(self._switch_version)
        self._switch: tuple[str, str] | None = None  # (use, instead_of) offered by the button
        buttons = QHBoxLayout()
        buttons.addWidget(self.version_button)
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
        self._manifests = {}
        infos = find_bundles(dirs)
        names = {i.manifest.name for i in infos if i.manifest is not None}
        for info in infos:
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
                original = m.replaces
                if original:
                    tags.append(f"site version of {original}" + ("" if original in names else ", original missing"))
                if (m.name, str(m.weights.get("sha256", "")).lower()) in loaded:
                    tags.append("loaded")
                error = failed.get(str(info.path))
                if error:
                    tags.append("NOT LOADED")
                item = QListWidgetItem(f"{'⚠ ' if error else ''}{m.name} {m.version}  ({', '.join(tags)})")
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if self.controller.is_enabled(m.name, m.enabled)
                                   else Qt.CheckState.Unchecked)  # fmt: skip
                item.setData(ROLE_NAME, m.name)
                item.setData(ROLE_DEFAULT, bool(m.enabled))
                self._manifests[str(info.path)] = m
                item.setToolTip(f"{info.path}\nTick to use this model, untick to switch it off.")
                card = model_card_markdown(m)
                if original:
                    card = _site_version_card(m) + card
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
        self._offer_switch(item)

    def _offer_switch(self, item: QListWidgetItem) -> None:
        """A site version and its original: offer to use the selected one instead of the other."""
        self._switch = None
        self.version_button.hide()
        m = self._manifests.get(str(item.data(ROLE_PATH)))
        if m is None:
            return
        mine = {str(x.name): x for x in self._manifests.values()}  # type: ignore[attr-defined]
        on = self.controller.is_enabled(m.name, m.enabled)  # type: ignore[attr-defined]
        original = m.replaces
        if original and original in mine:
            other = mine[original]
            if not on or self.controller.is_enabled(other.name, other.enabled):  # type: ignore[attr-defined]
                self._switch = (m.name, original)  # type: ignore[attr-defined]
                self.version_button.setText(f"Use this site version (switch {original} off, kept for rollback)")
        else:
            site = [x for x in mine.values() if x.replaces == m.name]  # type: ignore[attr-defined]
            active = [x for x in site if self.controller.is_enabled(x.name, x.enabled)]  # type: ignore[attr-defined]
            if active:
                self._switch = (m.name, active[0].name)  # type: ignore[attr-defined]
                self.version_button.setText(f"Roll back to this version (switch {active[0].name} off)")
        if self._switch is not None:
            self.version_button.show()

    def switch_version(self, use: str, instead_of: str) -> None:
        """Use bundle ``use`` instead of ``instead_of``; both stay installed (rollback is the same call reversed)."""
        self.controller.switch_version(use, instead_of)
        self.message.setStyleSheet("color:#9ccc9c;")
        self.message.setText(f"Using {use}; {instead_of} is switched off and stays installed for rollback.")
        self.refresh()

    def _switch_version(self) -> None:
        if self._switch is not None:
            self.switch_version(*self._switch)

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        name = item.data(ROLE_NAME)
        if self._updating or not name:
            return
        on = item.checkState() == Qt.CheckState.Checked
        if on != self.controller.is_enabled(name, bool(item.data(ROLE_DEFAULT))):
            self.controller.set_enabled(name, on)
            self.message.setStyleSheet("")
            self.message.setText(f"{name} {'enabled' if on else 'switched off'}.")
            self._offer_switch(item)

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


def _site_version_card(m: "Manifest") -> str:
    """What the site fine-tune's gates said, above its model card."""
    sv = m.site_version
    if sv is None:
        return ""
    rep = sv.replaces
    lines = [f"> **Site version** of {rep.name if rep else '?'} {rep.version if rep else ''} "
             f"(weights {(rep.sha256 if rep else '')[:12]}), installed {sv.installed[:10]}.", ">"]
    for gate, g in sv.gates.items():
        lines.append(f"> - gate `{gate}`: {'passed' if g.get('passed') else 'FAILED'}")
    if sv.rollback:
        lines += [">", f"> {sv.rollback}."]
    return "\n".join(lines) + "\n\n"
