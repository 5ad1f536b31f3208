"""The triage worklist dock: a folder (or studies arriving over DICOM) analysed in the background, sorted by urgency.

The work is the core :class:`~cxr_viewer.core.worklist.Worklist` (store keyed by
pixel hash and model sha256), run on a one-worker :class:`TaskRunner` of its own
with a private :class:`Session`, so a long analysis never marks the viewer busy and
never delays opening an image. Entries reach the table on the GUI thread as they are
done; the progress bar and Cancel follow the running batch. The C-STORE receiver
runs on pynetdicom's threads and hands each stored file to the GUI thread through a
queued signal; PACS queries, retrievals and sends run on the same worker.

:func:`install_worklist` adds the dock, its shortcuts (next / previous study in the
list order, mark as read) and its menu entries to a :class:`MainWindow`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractTableModel, QEvent, QModelIndex, QObject, QSettings, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.core.errors import AnalysisCancelledError, CXRError
from cxr_viewer.core.inference.results import CancelToken, FindingState
from cxr_viewer.core.judging import STATE_TEXT
from cxr_viewer.core.session import Session
from cxr_viewer.core.worklist import ResultStore, Worklist, WorklistEntry, default_store_path
from cxr_viewer.core.worklist.worklist import column_titles
from cxr_viewer.qt.workers import TaskRunner

if TYPE_CHECKING:
    from cxr_viewer.core.analysis import ModelConfig, ModelService
    from cxr_viewer.core.workspace import Workspace
    from cxr_viewer.core.pacs import ReceivedFile, RemoteNode, StorageReceiver
    from cxr_viewer.qt.main_window import MainWindow

log = logging.getLogger(__name__)

__all__ = ["WorklistController", "WorklistModel", "WorklistPanel", "install_worklist"]

SORT_ROLE = Qt.ItemDataRole.UserRole + 10
PATH_ROLE = Qt.ItemDataRole.UserRole + 11
#: The triage figure first, so it stays in view however wide the finding columns get.
FIXED = ("Abnormality", "Read", "Patient", "Study date", "Modality/View", "QC", "Labels")
COL_ABNORMAL, COL_READ, COL_PATIENT, COL_DATE, COL_MODALITY, COL_QC, COL_LABELS = range(len(FIXED))
#: The reader's labels of a finding on a study, by key (1/2/3 on the table; Alt+1/2/3 anywhere in the window).
LABEL_KEYS = ((Qt.Key.Key_1, 1.0, "positive"), (Qt.Key.Key_2, 0.0, "negative"), (Qt.Key.Key_3, None, "unsure"))
LABEL_MARK = {1.0: "+", 0.0: "−", None: "?"}
MAX_COLUMN_PX = 190
WORKLIST_HEIGHT_PX = 280  # the bottom panel's height when it opens
DEFAULT_AE, DEFAULT_PORT = "CXRVIEWER", 11112


def default_inbox() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "cxr-viewer" / "inbox"


# --------------------------------------------------------------------------- worker functions
def _analyse(worklist: Worklist, folder: Path | None, paths: Sequence[Path], token: CancelToken,
             reconfigure: Any = None) -> Iterator[tuple[str, Any]]:
    """Worker: entries one by one, with ("progress", done, total) between them.

    ``reconfigure(worklist)`` runs first (a new site profile, a new enabled set): on this
    worker, so it never waits for a model being loaded on the GUI thread.
    """
    from cxr_viewer.core.io.scan import iter_image_files

    if reconfigure is not None:
        reconfigure(worklist)
    message, stale = worklist.site_status()
    yield "site", (worklist.site_profile, message, stale)
    files = list(paths)
    if folder is not None:
        files += iter_image_files(folder)[0]
    known = worklist.store.files()
    yield "basis", worklist.basis
    yield "progress", (0, len(files))
    for i, f in enumerate(files, start=1):
        token.raise_if_cancelled()
        try:
            entry = worklist.entry(f, cancel=token, known=known)
        except AnalysisCancelledError:
            raise
        except CXRError as exc:
            entry = WorklistEntry(Path(f), None, error=exc.message)
        if entry is not None:
            yield "entry", entry
        yield "progress", (i, len(files))


def _send_results(worklist: Worklist, remote: "RemoteNode", path: Path, calling_ae: str) -> int:
    from cxr_viewer.core.export.record import annotations_beside
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.pacs import send_results

    record = read_image(path)
    judged = worklist.judge(worklist.analyze(record))  # as the row shows it: the SR names the profile
    try:
        annotations = annotations_beside(path, record)
    except (OSError, ValueError, KeyError, TypeError):
        annotations = []  # a damaged sidecar does not stop the results
    return len(send_results(remote, record, judged, calling_ae=calling_ae, annotations=annotations))


# --------------------------------------------------------------------------- model
class WorklistModel(QAbstractTableModel):
    """Entries as rows; fixed columns then one per finding (model, label) seen."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.entries: list[WorklistEntry] = []
        self._row: dict[Path, int] = {}
        self.findings: list[tuple[str, str]] = []
        self.basis = "max finding score"
        self.site_columns: frozenset[tuple[str, str]] = frozenset()  # (model, label) the active site profile recalibrates
        self.site_profile_id = ""
        self.labels_of: Any = lambda entry: {}  # entry -> {finding: 1.0 | 0.0 | None}, the reader's labels

    def labels_text(self, entry: WorklistEntry) -> str:
        return ", ".join(f"{lab.replace('_', ' ')} {LABEL_MARK[v]}" for lab, v in sorted(self.labels_of(entry).items()))

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(FIXED) + len(self.findings)

    def clear(self) -> None:
        self.beginResetModel()
        self.entries, self._row, self.findings = [], {}, []
        self.endResetModel()

    def upsert(self, entry: WorklistEntry) -> None:
        new = [(f.model, f.label) for f in entry.findings if (f.model, f.label) not in self.findings]
        if new:
            first = len(FIXED) + len(self.findings)
            self.beginInsertColumns(QModelIndex(), first, first + len(new) - 1)
            self.findings.extend(dict.fromkeys(new))
            self.endInsertColumns()
        row = self._row.get(entry.path)
        if row is None:
            row = len(self.entries)
            self.beginInsertRows(QModelIndex(), row, row)
            self.entries.append(entry)
            self._row[entry.path] = row
            self.endInsertRows()
        else:
            self.entries[row] = entry
            self.dataChanged.emit(self.index(row, 0), self.index(row, self.columnCount() - 1))

    def prune_columns(self) -> None:
        """Drop the finding columns no entry has any more (a model switched off)."""
        seen = {(f.model, f.label) for e in self.entries for f in e.findings}
        if all(c in seen for c in self.findings):
            return
        self.beginResetModel()
        self.findings = [c for c in self.findings if c in seen]
        self.endResetModel()

    def set_site(self, profile: Any) -> None:
        """The site profile applied (None: none, or not applied): its recalibrated columns say so in their title."""
        self.site_profile_id = profile.id if profile is not None else ""
        self.site_columns = frozenset((profile.bundle.get("name"), lab) for lab in profile.findings) if profile else frozenset()
        if self.findings:
            self.headerDataChanged.emit(Qt.Orientation.Horizontal, len(FIXED), self.columnCount() - 1)

    def entry_at(self, row: int) -> WorklistEntry:
        return self.entries[row]

    def row_of(self, path: Path) -> int | None:
        return self._row.get(Path(path))

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            if section < len(FIXED):
                return FIXED[section]
            title = column_titles(self.findings)[section - len(FIXED)]
            return f"{title} (site)" if self.findings[section - len(FIXED)] in self.site_columns else title
        if role == Qt.ItemDataRole.ToolTipRole:
            if section == COL_ABNORMAL:
                return (f"Abnormality: {self.basis}" + ("" if self.basis == "Abnormal" else
                        " (no model predicts a finding named 'Abnormal')"))
            if section >= len(FIXED):
                model, label = self.findings[section - len(FIXED)]
                site = (f", recalibrated by site profile {self.site_profile_id} (its scores and threshold)"
                        if (model, label) in self.site_columns else "")  # fmt: skip
                return f"{label} from {model}{site}"
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        e = self.entries[index.row()]
        col = index.column()
        finding = None
        if col >= len(FIXED):
            key = self.findings[col - len(FIXED)]
            finding = next((f for f in e.findings if (f.model, f.label) == key), None)
        if role == PATH_ROLE:
            return str(e.path)
        if role == Qt.ItemDataRole.DisplayRole:
            if col == COL_PATIENT:
                return e.patient or e.path.name
            if col == COL_DATE:
                return e.study_date
            if col == COL_MODALITY:
                return e.modality_view
            if col == COL_QC:
                return e.qc_text if e.ok else "unreadable"
            if col == COL_ABNORMAL:
                return "" if e.abnormality is None else f"{e.abnormality:.2f}"
            if col == COL_READ:
                return "✓" if e.read else ""
            if col == COL_LABELS:
                return self.labels_text(e)
            return "" if finding is None else f"{finding.score:.2f}"
        if role == SORT_ROLE:
            if col == COL_ABNORMAL:
                return -1.0 if e.abnormality is None else float(e.abnormality)
            if col == COL_READ:
                return int(e.read)
            if finding is not None:
                return float(finding.score)
            if col >= len(FIXED):
                return -1.0
            return str(self.data(index, Qt.ItemDataRole.DisplayRole)).lower()
        if role == Qt.ItemDataRole.FontRole and not e.read:
            f = QFont()
            f.setBold(True)
            return f
        if role == Qt.ItemDataRole.ForegroundRole:
            if not e.ok or (col == COL_QC and e.qc_text not in ("ok", "")):
                return QBrush(QColor("#e0a040"))
            if finding is not None and e.state(finding.model, finding.label) is FindingState.POSITIVE:
                return QBrush(QColor("#ff6b6b"))  # the judged state, as the findings panel shows it
        if role == Qt.ItemDataRole.ToolTipRole:
            if not e.ok:
                return e.error
            if col == COL_QC and e.qc:
                return "\n".join(q.message for q in e.qc)
            if col == COL_LABELS:
                return ("Your labels (+ positive, − negative, ? unsure): select the study, choose the finding, "
                        "press 1, 2 or 3")  # fmt: skip
            if finding is not None:
                raw = "" if finding.raw_score is None else f"; the model's own score {finding.raw_score:.3f}"
                state = e.state(finding.model, finding.label)
                return (f"{finding.label}: {finding.score:.3f} (threshold {finding.threshold:.3f}, "
                        f"{finding.threshold_method or 'default'}) from {finding.model}{raw}"
                        + ("" if state is None else f": {STATE_TEXT[state]}"))
            return str(e.path)
        if role == Qt.ItemDataRole.TextAlignmentRole and (col in (COL_ABNORMAL, COL_READ) or col >= len(FIXED)):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


# --------------------------------------------------------------------------- controller
class WorklistController(QObject):
    """Owns the core worklist, its worker and the DICOM receiver; the panel only draws."""

    entry_ready = Signal(object)  # WorklistEntry
    progress = Signal(int, int)  # done, total of the running batches (0, 0: nothing runs)
    message = Signal(str)  # a status line
    error = Signal(str, str)  # title, message
    receiving_changed = Signal(bool)
    studies_found = Signal(object)  # list[StudyHit]
    basis_changed = Signal(str)  # what the abnormality column is ("Abnormal" or "max finding score")
    site_changed = Signal(object)  # (SiteProfile | None, message, stale): the profile applied, or why not
    refreshed = Signal()  # the listed studies were listed again (a new profile or enabled set)
    _received = Signal(object)  # ReceivedFile, emitted on a receiver thread

    def __init__(self, settings: QSettings, model_dirs: Sequence[Path] | None = None, *,
                 disabled: Sequence[str] = (), device: str = "auto", backend: str = "auto",
                 store_path: Path | None = None, parent: QObject | None = None, enabled: Sequence[str] = (),
                 models: "ModelService | None" = None,
                 user_thresholds: "Callable[[str, str, str], float | None] | None" = None,
                 config: "Callable[[], ModelConfig] | None" = None, workspace: "Workspace | None" = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.runner = TaskRunner(Session(), self, max_threads=1)  # private session: the viewer stays un-busy
        path = store_path or Path(str(settings.value("worklist/db", "") or default_store_path()))
        from cxr_viewer.core.worklist.store import StoreError

        self.store_problem = ""  # why the user's store could not be used (the worklist then keeps results in memory)
        try:
            self.store = ResultStore(path)
        except StoreError as exc:
            log.warning("worklist store refused: %s", exc.message)
            self.store_problem = exc.message
            self.store = ResultStore(":memory:")
            from PySide6.QtCore import QTimer

            text = f"{exc.message} Results are kept in memory until the viewer closes."
            QTimer.singleShot(0, lambda: self.error.emit("Worklist store", text))  # once the panel listens
        # ``models``: the process's one model service (its engine and queue); ``user_thresholds``: the
        # reader's, as the findings panel judges with them
        # ``workspace``: the reader's (enabled models, site profile, thresholds, corrections), followed, not copied
        self.workspace = workspace
        if workspace is not None:
            disabled, enabled = sorted(workspace.disabled_models), sorted(workspace.enabled_models)
            user_thresholds = workspace.thresholds.get
        self.worklist = Worklist(self.store, model_dirs=model_dirs, disabled=disabled, device=device, backend=backend,
                                 enabled=enabled, service=models, user_thresholds=user_thresholds, config=config,
                                 site_profile=None if workspace is None else workspace.site_profile)
        self.receiver: StorageReceiver | None = None
        if workspace is not None:
            self.corrections = workspace.corrections  # the reader's labels, with their provenance
            workspace.site_profile_changed.connect(self.set_site_profile)
            workspace.models_changed.connect(self._follow_models)
            workspace.thresholds_changed.connect(self._rejudge)
        else:
            from cxr_viewer.core.corrections import CorrectionStore

            folder = str(settings.value("corrections/dir", "") or "")
            self.corrections = CorrectionStore(folder or None)
        self._site_profile: Any = None if workspace is None else workspace.site_profile
        self._labels: dict[str, dict[str, float | None]] = {}
        for c in self.corrections.all():
            if c.kind != "mask_edit":
                self._labels.setdefault(c.image, {})[c.label] = c.value
        self._token = CancelToken()
        self._done = self._total = 0
        self._folder: Path | None = None  # what is listed: the folder opened and the files added since
        self._added: list[Path] = []
        self._received.connect(self._on_received)

    # ------------------------------------------------------------------ analysis
    @property
    def running(self) -> bool:
        return self.runner.pending > 0

    def open_folder(self, folder: str | Path) -> None:
        self._folder, self._added = Path(folder), []
        self._start(Path(folder), [])

    def add_paths(self, paths: Sequence[str | Path]) -> None:
        self._added += [Path(p) for p in paths]
        self._start(None, [Path(p) for p in paths])

    def set_site_profile(self, profile: Any) -> None:
        """Apply ``profile`` (or None) to the listed studies and every one after: the same rule as the viewer's.

        The store keeps the models' own scores, so nothing is computed again; the dock says which
        profile is active, or why it is not applied.
        """
        self._site_profile = profile

        def apply(worklist: Worklist) -> None:
            worklist.site_profile = profile

        self.refresh(apply)

    @property
    def site_profile(self) -> Any:
        """The active site profile (the workspace's when there is one), named in each label's provenance."""
        return self.workspace.site_profile if self.workspace is not None else self._site_profile

    def _follow_models(self) -> None:
        ws = self.workspace
        if ws is not None:
            self.set_models(sorted(ws.disabled_models), sorted(ws.enabled_models))

    def _rejudge(self, _model: str = "", _label: str = "") -> None:
        """A threshold changed: the listed studies are judged again from the store (nothing is scored)."""
        self.refresh()

    def set_models(self, disabled: Sequence[str], enabled: Sequence[str]) -> None:
        """Follow the model manager's enabled set now: the listed studies get the enabled models' results."""
        disabled, enabled = sorted(disabled), sorted(enabled)

        def apply(worklist: Worklist) -> None:
            worklist.set_models(disabled, enabled)

        self.refresh(apply)

    def refresh(self, reconfigure: Any = None) -> None:
        """List what is listed again (after ``reconfigure(worklist)`` on the worker), superseding a running batch."""
        self._token.cancel()
        self.runner.cancel_all()
        self._token = CancelToken()
        self._done = self._total = 0
        self._start(self._folder, list(self._added), reconfigure=reconfigure, refresh=True)

    def _start(self, folder: Path | None, paths: list[Path], *, reconfigure: Any = None, refresh: bool = False) -> None:
        if not self.running:
            self._token = CancelToken()
            self._done = self._total = 0
        token = self._token
        seen = [0, 0]

        def on_item(item: tuple[str, Any]) -> None:
            kind, value = item
            if kind == "entry":
                self.entry_ready.emit(value)
            elif kind == "basis":
                self.basis_changed.emit(value)
            elif kind == "site":
                self.site_changed.emit(value)
            else:
                done, total = value
                self._total += total - seen[1]
                self._done += done - seen[0]
                seen[:] = [done, total]
                self.progress.emit(self._done, self._total)

        def on_error(exc: BaseException) -> None:
            if isinstance(exc, AnalysisCancelledError):
                if token is self._token:  # not when a refresh superseded it
                    self.message.emit("Worklist analysis cancelled")
                return
            self.error.emit("Worklist", exc.message if isinstance(exc, CXRError) else f"{type(exc).__name__}: {exc}")

        self.runner.submit(_analyse, self.worklist, folder, paths, token, reconfigure, on_progress=on_item,
                           on_error=on_error, on_result=lambda _r: self._batch_done(refresh))

    def _batch_done(self, refresh: bool = False) -> None:
        if self.runner.pending <= 1:
            self.progress.emit(0, 0)
        if refresh:
            self.refreshed.emit()

    def cancel(self) -> None:
        self._token.cancel()
        self.runner.cancel_all()
        self.progress.emit(0, 0)

    def mark_read(self, entry: WorklistEntry, read: bool = True) -> WorklistEntry:
        new = self.worklist.mark_read(entry, read)
        self.entry_ready.emit(new)
        return new

    # ------------------------------------------------------------------ the reader's labels
    def labels_of(self, entry: WorklistEntry) -> dict[str, float | None]:
        """The reader's latest label of each finding on this study (1 present, 0 absent, None unsure)."""
        return dict(self._labels.get(str(Path(entry.path).resolve()), {}))

    def label(self, entry: WorklistEntry, model: str, label: str, value: float | None) -> Any:
        """Store the reader's label of ``label`` on ``entry`` (with what ``model`` said about it) and show it."""
        import getpass

        finding = next((f for f in entry.findings if f.model == model and f.label == label), None)
        sha = next((k.sha256 for k in self.worklist.models if k.name == model), "")
        prof = self.site_profile
        profile_id = prof.id if prof is not None and prof.bundle.get("name") == model else ""
        try:
            reader = str(self.settings.value("corrections/reader", "") or getpass.getuser())
        except (KeyError, OSError):
            reader = ""
        c = self.corrections.add_label(entry.path, label, value, patient_id=str(entry.metadata.get("patient_id") or ""),
                                       content_hash=entry.content_hash or "", finding=finding, model_sha256=sha,
                                       site_profile=profile_id, reader=reader)  # fmt: skip
        self._labels.setdefault(c.image, {})[label] = value
        self.entry_ready.emit(entry)  # the row shows the new label
        self.message.emit(f"{label.replace('_', ' ')} labelled {'unsure' if value is None else ('positive' if value else 'negative')}"
                          f" on {entry.path.name}")  # fmt: skip
        return c

    # ------------------------------------------------------------------ network
    def local_node(self) -> tuple[str, int]:
        return (str(self.settings.value("pacs/ae_title", DEFAULT_AE)),
                int(self.settings.value("pacs/port", DEFAULT_PORT)))

    def inbox(self) -> Path:
        return Path(str(self.settings.value("pacs/inbox", "") or default_inbox()))

    def remote(self) -> "RemoteNode":
        from cxr_viewer.core.pacs import RemoteNode

        return RemoteNode(str(self.settings.value("pacs/remote_host", "")),
                          int(self.settings.value("pacs/remote_port", 4242)),
                          str(self.settings.value("pacs/remote_ae", "ORTHANC")))

    def set_receiving(self, on: bool) -> bool:
        """Start or stop the C-STORE receiver (the Preferences toggle); returns whether it runs."""
        from cxr_viewer.core.pacs import LocalNode, StorageReceiver

        self.settings.setValue("pacs/receive", bool(on))
        if not on:
            if self.receiver is not None:
                self.receiver.stop()
                self.receiver = None
                self.message.emit("DICOM receiver stopped")
            self.receiving_changed.emit(False)
            return False
        if self.receiver is not None:
            return True
        ae, port = self.local_node()
        host = str(self.settings.value("pacs/listen_host", "127.0.0.1") or "127.0.0.1")  # loopback unless set
        rx = StorageReceiver(LocalNode(ae, port, host), self.inbox(), on_stored=self._received.emit)
        try:
            rx.start()  # binding a socket: quick, no network wait
        except CXRError as exc:
            self.settings.setValue("pacs/receive", False)
            self.error.emit("DICOM receiver", exc.message)
            self.receiving_changed.emit(False)
            return False
        self.receiver = rx
        self.message.emit(f"Receiving as {ae} on port {rx.port}")
        self.receiving_changed.emit(True)
        return True

    def _on_received(self, item: "ReceivedFile") -> None:
        self.message.emit(f"Received an image from {item.calling_ae or 'a DICOM sender'}")
        self.add_paths([item.path])

    def find_studies(self, query: Any) -> None:
        from cxr_viewer.core.pacs import find_studies

        ae = self.local_node()[0]
        self.message.emit("Querying the PACS…")
        remote = self.remote()
        self.runner.submit(lambda: find_studies(remote, query, calling_ae=ae), on_result=self.studies_found.emit,
                           on_error=lambda exc: self._net_error("Query failed", exc))

    def retrieve(self, study_uid: str) -> None:
        """C-MOVE to our receiver when it runs, else C-GET; the files then join the worklist."""
        from cxr_viewer.core.pacs import get_study, move_study

        remote, ae = self.remote(), self.local_node()[0]
        self.message.emit("Retrieving the study…")
        if self.receiver is not None:
            # files arrive through the receiver, which adds them as they come
            self.runner.submit(lambda: move_study(remote, study_uid, receiver=self.receiver, calling_ae=ae),
                               on_result=lambda got: self.message.emit(f"Retrieved {len(got)} image(s)"),
                               on_error=lambda exc: self._net_error("Retrieve failed", exc))
        else:
            self.runner.submit(lambda: get_study(remote, study_uid, self.inbox(), calling_ae=ae),
                               on_result=lambda got: (self.message.emit(f"Retrieved {len(got)} image(s)"),
                                                      self.add_paths(got)),
                               on_error=lambda exc: self._net_error("Retrieve failed", exc))

    def send_results(self, entry: WorklistEntry) -> None:
        if entry.metadata.get("format") != "dicom":
            self.error.emit("Send results", "Only a DICOM study's results can be sent to a PACS.")
            return
        self.message.emit(f"Sending the results of {entry.path.name}…")
        self.runner.submit(_send_results, self.worklist, self.remote(), entry.path, self.local_node()[0],
                           on_result=lambda n: self.message.emit(f"{n} result object(s) stored on the PACS"),
                           on_error=lambda exc: self._net_error("Send failed", exc))

    def _net_error(self, title: str, exc: BaseException) -> None:
        text = exc.message if isinstance(exc, CXRError) else f"{type(exc).__name__}: {exc}"
        self.message.emit("")
        self.error.emit(title, text)

    def shutdown(self, msecs: int = 3000) -> None:
        self.cancel()
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        ws = self.workspace
        if ws is not None:
            for sig, slot in ((ws.site_profile_changed, self.set_site_profile), (ws.models_changed, self._follow_models),
                              (ws.thresholds_changed, self._rejudge)):
                try:
                    sig.disconnect(slot)
                except (RuntimeError, TypeError, ValueError):
                    pass
        self.runner.wait(msecs)
        self.store.close()


# --------------------------------------------------------------------------- view
class WorklistPanel(QWidget):
    """Toolbar, progress with Cancel, and the sortable table."""

    open_requested = Signal(object)  # Path
    shown_requested = Signal()  # a folder is being analysed: the panel should be on screen
    labelled = Signal(str)  # the confirmation of a label, for the status bar

    def __init__(self, controller: WorklistController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.model = WorklistModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setDynamicSortFilter(True)

        self.open_button = QPushButton("Open folder…")
        self.open_button.clicked.connect(self._choose_folder)
        self.query_button = QPushButton("Query PACS…")
        self.query_button.clicked.connect(self.show_query)
        self.send_button = QPushButton("Send results")
        self.send_button.setToolTip("C-STORE the SR, SEG, SC and PDF of the selected study to the PACS")
        self.send_button.clicked.connect(self._send_selected)
        self.receive_box = QCheckBox("Receive")
        self.receive_box.setToolTip("Accept studies pushed over DICOM (C-STORE); they join the worklist as they arrive")
        self.receive_box.toggled.connect(self._toggle_receive)
        self.hide_patient = QCheckBox("Hide patient")
        self.hide_patient.toggled.connect(self.set_patient_hidden)
        self.settings_button = QToolButton()
        self.settings_button.setText("⚙")
        self.settings_button.setToolTip("DICOM network settings: our AE title and port, the PACS")
        self.settings_button.clicked.connect(self.show_settings)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("%v / %m")
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(controller.cancel)
        self.cancel_button.hide()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.site_label = QLabel("")  # the active site profile, or why it is not applied
        self.site_label.setObjectName("worklistSiteProfile")
        self.site_label.setWordWrap(True)
        self.site_label.setTextFormat(Qt.TextFormat.PlainText)
        self.site_label.hide()
        self.label_box = QComboBox()
        self.label_box.setToolTip("The finding your labels are about (clicking a finding's column chooses it too)")
        self.label_mode = QLabel("")  # which keys label, and what: shown so 1 / 2 / 3 never surprise
        self.label_mode.setObjectName("worklistLabelMode")
        self.label_mode.setWordWrap(True)
        self.label_buttons = []
        for key, value, word in LABEL_KEYS:
            b = QPushButton(f"{word.capitalize()} ({QKeySequence(key).toString()})")
            b.setMinimumWidth(b.sizeHint().width())  # the whole word, never "sitive"
            b.setToolTip(f"Label the chosen finding {word} on the selected study (key {QKeySequence(key).toString()})")
            b.clicked.connect(lambda _=False, v=value: self.label_selected(v))
            self.label_buttons.append(b)

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        # Interactive, sized once per finished batch: ResizeToContents would measure every row on every insert
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setResizeContentsPrecision(60)  # widths from 60 rows, not all of them
        self._last_progress = 0.0
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.setAlternatingRowColors(True)
        self.table.sortByColumn(COL_ABNORMAL, Qt.SortOrder.DescendingOrder)
        # the proxy forgets its sort column when the source resets or gains finding columns
        self.model.modelReset.connect(self._resort)
        self.model.columnsInserted.connect(self._resort)
        self.table.activated.connect(self._open_index)
        self.table.clicked.connect(self._open_index)
        self.table.clicked.connect(self._choose_label_column)
        self.table.installEventFilter(self)  # 1 / 2 / 3 label the chosen finding while the table has the focus
        self.label_box.currentIndexChanged.connect(lambda _i: self._show_label_mode())
        self.model.labels_of = controller.labels_of
        self.model.columnsInserted.connect(self._update_label_box)
        self.model.modelReset.connect(self._update_label_box)

        # compact rows: the table keeps the height of the bottom panel
        top = QHBoxLayout()
        for w in (self.open_button, self.query_button, self.send_button, self.receive_box, self.hide_patient):
            top.addWidget(w)
        top.addWidget(self.status, 1)
        top.addWidget(self.progress, 1)
        top.addWidget(self.cancel_button)
        top.addWidget(self.settings_button)
        self.status.setWordWrap(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.setSpacing(2)
        lay.addLayout(top)
        lay.addWidget(self.site_label)
        label_row = QHBoxLayout()
        label_row.addWidget(QLabel("Label"))
        self.label_box.setMinimumContentsLength(16)
        label_row.addWidget(self.label_box)
        for b in self.label_buttons:
            label_row.addWidget(b)
        self.label_mode.setWordWrap(False)
        self.label_mode.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # never widens the panel
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        label_row.addWidget(self.label_mode, 1)
        lay.addLayout(label_row)
        lay.addWidget(self.table, 1)
        self._show_label_mode()

        controller.entry_ready.connect(self.model.upsert)
        controller.basis_changed.connect(self._set_basis)
        controller.site_changed.connect(self._on_site)
        controller.refreshed.connect(self._on_refreshed)
        controller.progress.connect(self._on_progress)
        controller.message.connect(self.status.setText)
        controller.receiving_changed.connect(self._on_receiving)
        self.set_patient_hidden(str(controller.settings.value("worklist/hide_patient", "false")).lower() == "true")

    # ------------------------------------------------------------------ actions
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of studies")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> None:
        self.shown_requested.emit()  # the progress is in this panel: bring it to the front
        self.model.clear()
        self.status.setText(f"Analysing {Path(folder).name}…")
        self.controller.open_folder(folder)

    def set_patient_hidden(self, hidden: bool) -> None:
        if self.hide_patient.isChecked() != hidden:
            self.hide_patient.setChecked(hidden)
        self.table.setColumnHidden(COL_PATIENT, hidden)
        self.controller.settings.setValue("worklist/hide_patient", bool(hidden))

    def _toggle_receive(self, on: bool) -> None:
        running = self.controller.set_receiving(on)
        if running != on:
            self.receive_box.blockSignals(True)
            self.receive_box.setChecked(running)
            self.receive_box.blockSignals(False)

    def _on_receiving(self, on: bool) -> None:
        self.receive_box.blockSignals(True)
        self.receive_box.setChecked(on)
        self.receive_box.blockSignals(False)
        ae, port = self.controller.local_node()
        self.receive_box.setText(f"Receive ({ae}:{port})" if on else "Receive")

    def _on_progress(self, done: int, total: int) -> None:
        active = total > 0 and done < total
        self.progress.setVisible(active)
        self.cancel_button.setVisible(active)
        now = time.monotonic()
        # QProgressBar repaints on every setValue (tens of ms): at most ten updates a second
        if total > 0 and (now - self._last_progress >= 0.1 or done >= total):
            self._last_progress = now
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        if total > 0 and done >= total:
            self.table.resizeColumnsToContents()
            for c in range(self.model.columnCount()):
                self.table.setColumnWidth(c, min(self.table.columnWidth(c), MAX_COLUMN_PX))
            n = self.model.rowCount()
            self.status.setText(f"{n} stud{'y' if n == 1 else 'ies'}, most abnormal first ({self.model.basis})")

    def _resort(self, *_args: Any) -> None:
        header = self.table.horizontalHeader()
        self.proxy.sort(header.sortIndicatorSection(), header.sortIndicatorOrder())

    def _on_site(self, value: tuple[Any, str, bool]) -> None:
        from cxr_viewer.core.site_profile import profile_text

        profile, message, _stale = value
        self.model.set_site(profile if profile is not None and not message else None)
        if profile is None:
            self.site_label.hide()
            self.site_label.setText("")
            return
        if message:
            self.site_label.setText(f"⚠ Site profile {profile.id} not applied: {message}")
            self.site_label.setStyleSheet("color:#ffb070;")
        else:
            self.site_label.setText(f"Site profile {profile.title}: calibrated scores and site thresholds of "
                                    f"{profile.bundle.get('name')} ({', '.join(sorted(profile.findings))})")  # fmt: skip
            self.site_label.setStyleSheet("color:#8fe0b0;")
        self.site_label.setToolTip(profile_text(profile.identity()) if not message else message)
        self.site_label.show()

    def _on_refreshed(self) -> None:
        """The studies were listed again: columns of models switched off go, the selection stays."""
        current = self.current_entry()
        self.model.prune_columns()
        if current is not None:
            row = self.model.row_of(current.path)
            if row is not None:
                self.table.selectRow(self.proxy.mapFromSource(self.model.index(row, 0)).row())

    def _set_basis(self, basis: str) -> None:
        self.model.basis = basis
        self.model.headerDataChanged.emit(Qt.Orientation.Horizontal, COL_ABNORMAL, COL_ABNORMAL)

    def _open_index(self, index: QModelIndex) -> None:
        if index.isValid():
            self.open_requested.emit(Path(self.proxy.data(index, PATH_ROLE)))

    # ------------------------------------------------------------------ list order
    def current_row(self) -> int:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].row() if rows else -1

    def current_entry(self) -> WorklistEntry | None:
        row = self.current_row()
        if row < 0:
            return None
        return self.model.entry_at(self.proxy.mapToSource(self.proxy.index(row, 0)).row())

    def select_row(self, row: int, *, open_it: bool = True) -> WorklistEntry | None:
        if not 0 <= row < self.proxy.rowCount():
            return None
        index = self.proxy.index(row, 0)
        self.table.selectRow(row)
        self.table.scrollTo(index)
        if open_it:
            self._open_index(index)
        return self.current_entry()

    def next_study(self) -> WorklistEntry | None:
        return self.select_row(self.current_row() + 1)

    def row_of_path(self, path: Path | None) -> int:
        """The row (in the shown, sorted order) of ``path``, or -1."""
        src = self.model.row_of(Path(path)) if path is not None else None
        if src is None:
            return -1
        return self.proxy.mapFromSource(self.model.index(src, 0)).row()

    def step(self, delta: int, current: Path | None = None) -> WorklistEntry | None:
        """Open the study ``delta`` rows from ``current`` (else from the selection) in the list order.

        None at either end of the list (nothing is opened) or when the list is empty.
        """
        n = self.proxy.rowCount()
        if n == 0:
            return None
        row = self.row_of_path(current)
        if row < 0:
            row = self.current_row()
        target = (0 if delta > 0 else n - 1) if row < 0 else row + delta
        if not 0 <= target < n:
            return None
        return self.select_row(target)

    def previous_study(self) -> WorklistEntry | None:
        return self.select_row(max(0, self.current_row() - 1))

    def mark_read(self) -> WorklistEntry | None:
        e = self.current_entry()
        if e is None:
            return None
        return self.controller.mark_read(e, not e.read)

    # ------------------------------------------------------------------ the reader's labels
    def _update_label_box(self, *_args: Any) -> None:
        current = self.label_box.currentData()
        self.label_box.blockSignals(True)
        self.label_box.clear()
        for key, title in zip(self.model.findings, column_titles(self.model.findings)):
            self.label_box.addItem(title, key)
        i = self.label_box.findData(current) if current is not None else -1
        self.label_box.setCurrentIndex(max(i, 0))
        self.label_box.blockSignals(False)

    def _choose_label_column(self, index: QModelIndex) -> None:
        col = index.column() - len(FIXED)
        if 0 <= col < len(self.model.findings):
            self.label_box.setCurrentIndex(self.label_box.findData(self.model.findings[col]))

    def choose_label_finding(self, label: str, model: str | None = None) -> bool:
        """Make ``label`` (from ``model``) the finding that 1 / 2 / 3 label; False when no column has it."""
        for i in range(self.label_box.count()):
            m, lab = self.label_box.itemData(i)
            if lab == label and model in (None, m):
                self.label_box.setCurrentIndex(i)
                return True
        return False

    def label_selected(self, value: float | None) -> Any:
        """Label the chosen finding on the selected study: 1.0 positive, 0.0 negative, None unsure."""
        e = self.current_entry()
        key = self.label_box.currentData()
        if e is None or key is None:
            self.status.setText("Select a study and choose the finding to label first")
            return None
        if not e.ok:
            self.status.setText(f"{e.path.name} could not be read: nothing to label")
            return None
        result = self.controller.label(e, key[0], key[1], value)
        word = next(w for _k, v, w in LABEL_KEYS if v == value)
        title = self.label_box.currentText()
        self.labelled.emit(f"Labelled {title} {word} on {e.path.name}")
        return result

    def _show_label_mode(self, focused: bool | None = None) -> None:
        """Say what 1 / 2 / 3 do now: label the chosen finding (the table has the keyboard) or window presets."""
        focused = self.table.hasFocus() if focused is None else focused
        finding = self.label_box.currentText() or "a finding"
        if focused:
            self.label_mode.setText(f"Labelling {finding}: 1 positive · 2 negative · 3 unsure")
            self.label_mode.setStyleSheet("background:#2b3a1f; color:#d8f5b8; padding:2px 4px;")
        else:
            self.label_mode.setText("Table: 1 / 2 / 3 label · Alt+1 / 2 / 3 anywhere · image: presets")
            self.label_mode.setStyleSheet("color:#9aa4ae; padding:2px 4px;")
        self.label_mode.setToolTip(f"While the worklist table has the keyboard, 1 / 2 / 3 label {finding} positive, "
                                   "negative or unsure on the selected study (Alt+1 / 2 / 3 do it from anywhere); "
                                   "elsewhere 1 / 2 / 3 switch window presets. Each label is confirmed in the "
                                   "status bar.")

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if obj is self.table and event.type() in (QEvent.Type.FocusIn, QEvent.Type.FocusOut):
            self._show_label_mode(event.type() == QEvent.Type.FocusIn)
        if obj is self.table and event.type() in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress):
            key = event.key()  # type: ignore[attr-defined]
            plain = event.modifiers() in (Qt.KeyboardModifier.NoModifier, Qt.KeyboardModifier.KeypadModifier)  # type: ignore[attr-defined]
            for k, value, _word in LABEL_KEYS:
                if key == k and plain:
                    event.accept()  # the window's 1 / 2 / 3 (window presets) wait while the worklist has the focus
                    if event.type() == QEvent.Type.KeyPress:
                        self.label_selected(value)
                    return True
        return super().eventFilter(obj, event)

    def _send_selected(self) -> None:
        e = self.current_entry()
        if e is None:
            self.status.setText("Select a study first")
            return
        self.controller.send_results(e)

    # ------------------------------------------------------------------ dialogs
    def show_settings(self) -> QDialog:
        dlg = NetworkSettingsDialog(self.controller.settings, self)
        dlg.open()
        return dlg

    def show_query(self) -> QDialog:
        dlg = QueryDialog(self.controller, self)
        dlg.open()
        return dlg


class NetworkSettingsDialog(QDialog):
    """Our AE title, port and inbox; the PACS host, port and AE title."""

    FIELDS = (("pacs/ae_title", "Our AE title", DEFAULT_AE), ("pacs/inbox", "Received studies folder", ""),
              ("pacs/remote_host", "PACS host", ""), ("pacs/remote_ae", "PACS AE title", "ORTHANC"))

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("DICOM network")
        self.settings = settings
        form = QFormLayout(self)
        self.edits: dict[str, QLineEdit] = {}
        for key, label, default in self.FIELDS:
            e = QLineEdit(str(settings.value(key, default) or ""))
            if key == "pacs/inbox":
                e.setPlaceholderText(str(default_inbox()))
            self.edits[key] = e
            form.addRow(label, e)
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(int(settings.value("pacs/port", DEFAULT_PORT)))
        form.insertRow(1, "Our port", self.port)
        self.remote_port = QSpinBox()
        self.remote_port.setRange(1, 65535)
        self.remote_port.setValue(int(settings.value("pacs/remote_port", 4242)))
        form.addRow("PACS port", self.remote_port)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def save(self) -> None:
        from cxr_viewer.core.pacs.errors import PacsError
        from cxr_viewer.core.pacs.nodes import check_ae_title

        try:
            check_ae_title(self.edits["pacs/ae_title"].text(), "our AE title")
            check_ae_title(self.edits["pacs/remote_ae"].text(), "PACS AE title")
        except PacsError as exc:
            self.edits["pacs/ae_title"].setToolTip(exc.message)
            self.setWindowTitle(f"DICOM network: {exc.message}")
            return
        for key, e in self.edits.items():
            self.settings.setValue(key, e.text().strip())
        self.settings.setValue("pacs/port", self.port.value())
        self.settings.setValue("pacs/remote_port", self.remote_port.value())
        self.settings.sync()
        self.accept()


class QueryDialog(QDialog):
    """Study-level C-FIND on the configured PACS; Retrieve brings the chosen study into the worklist."""

    def __init__(self, controller: WorklistController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from cxr_viewer.core.pacs import StudyQuery

        self._query_type = StudyQuery
        self.controller = controller
        self.setWindowTitle("Query the PACS")
        self.resize(640, 360)
        self.patient = QLineEdit()
        self.patient.setPlaceholderText("patient ID")
        self.date = QLineEdit()
        self.date.setPlaceholderText("YYYYMMDD or YYYYMMDD-YYYYMMDD")
        self.modality = QLineEdit()
        self.modality.setPlaceholderText("CR, DX…")
        self.search = QPushButton("Search")
        self.search.clicked.connect(self.run_query)
        row = QHBoxLayout()
        for w in (self.patient, self.date, self.modality, self.search):
            row.addWidget(w)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Date", "Modalities", "Images", "Description"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.retrieve = QPushButton("Retrieve")
        self.retrieve.clicked.connect(self.retrieve_selected)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.note)
        lay.addWidget(self.retrieve)
        self.hits: list[Any] = []
        controller.studies_found.connect(self.show_hits)
        controller.error.connect(lambda title, msg: self.note.setText(f"{title}: {msg}"))

    def run_query(self) -> None:
        self.note.setText("Searching…")
        self.controller.find_studies(self._query_type(patient_id=self.patient.text().strip(),
                                                      study_date=self.date.text().strip(),
                                                      modality=self.modality.text().strip()))

    def show_hits(self, hits: list[Any]) -> None:
        self.hits = list(hits)
        self.table.setRowCount(len(self.hits))
        for r, h in enumerate(self.hits):
            for c, text in enumerate((h.study_date, h.modalities, "" if h.instances is None else str(h.instances),
                                      h.description)):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.note.setText(f"{len(self.hits)} stud{'y' if len(self.hits) == 1 else 'ies'} found")

    def retrieve_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        for r in rows:
            self.controller.retrieve(self.hits[r].study_uid)
        self.note.setText(f"Retrieving {len(rows)} stud{'y' if len(rows) == 1 else 'ies'}…" if rows
                          else "Select a study first")


# --------------------------------------------------------------------------- wiring
class _CloseWatcher(QObject):
    def __init__(self, controller: WorklistController, parent: QObject) -> None:
        super().__init__(parent)
        self.controller = controller

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Close:
            self.controller.shutdown()
        return False


def install_worklist(window: "MainWindow", *, models: "ModelService | None" = None,
                     workspace: "Workspace | None" = None) -> WorklistPanel:
    """Add the worklist dock, its shortcuts and menu entries to ``window``; returns the panel.

    ``models``: the process's one model service; the worklist scores on its engine and queue, and its
    result store becomes the service's cache (opening a listed study shows the stored result).
    ``workspace``: the reader's; the worklist follows its site profile, thresholds, models and corrections.
    """
    analysis = window.analysis
    cfg = analysis.config()
    # a window that keeps nothing (a headless screenshot run) writes no result store into the user's cache
    controller = WorklistController(window.settings, list(cfg.dirs), disabled=sorted(cfg.disabled),
                                    device=cfg.device, backend=cfg.backend, parent=window, enabled=sorted(cfg.enabled),
                                    store_path=None if window.persist else Path(":memory:"), models=models,
                                    config=analysis.config if models is not None else None,
                                    workspace=workspace if workspace is not None else analysis.workspace)
    if models is not None:
        models.use_results(controller.worklist)
    panel = WorklistPanel(controller, window)
    panel.open_requested.connect(window.open_file)
    controller.error.connect(lambda title, message: window.show_error(message, title))
    # A full-width panel under the film (the findings keep the right edge whole): room for the patient, date and
    # view columns at 1400x900. Hidden until a folder is analysed or it is asked for (View > Panels, Ctrl+Shift+K).
    window.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.BottomDockWidgetArea)
    window.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
    dock = window.add_panel(panel, "Worklist", Qt.DockWidgetArea.BottomDockWidgetArea)
    dock.toggleViewAction().setShortcut("Ctrl+Shift+K")
    dock.hide()  # a saved layout that showed it brings it back

    def bring_forward() -> None:
        if dock.isHidden():
            dock.show()
            window.resizeDocks([dock], [WORKLIST_HEIGHT_PX], Qt.Orientation.Vertical)
        dock.raise_()

    panel.shown_requested.connect(bring_forward)
    panel.labelled.connect(lambda text: window.statusBar().showMessage(text, 6000))
    a = window._act
    a("worklist_next", "&Next Study in Worklist", panel.next_study, "Ctrl+PgDown", tip="Open the next study in the list order")
    a("worklist_previous", "&Previous Study in Worklist", panel.previous_study, "Ctrl+PgUp",
      tip="Open the previous study in the list order")
    a("worklist_mark_read", "&Mark Study as Read", panel.mark_read, "Ctrl+Return",
      tip="Mark the selected worklist study as read (again to unmark)")
    a("worklist_open", "Open Folder as &Worklist…", panel._choose_folder, "Ctrl+Shift+L",
      tip="Analyse every study of a folder in the background, most abnormal first")
    for (_key, value, word), n in zip(LABEL_KEYS, (1, 2, 3)):
        a(f"worklist_label_{word}", f"Label Finding {word.capitalize()}", lambda _=False, v=value: panel.label_selected(v),
          f"Alt+{n}", tip=f"Label the chosen finding {word} on the selected worklist study ({n} in the worklist)")
    menu = window.menuBar().addMenu("&Worklist")
    for key in ("worklist_open", "worklist_next", "worklist_previous", "worklist_mark_read", None,
                "worklist_label_positive", "worklist_label_negative", "worklist_label_unsure"):
        if key is None:
            menu.addSeparator()
            continue
        menu.addAction(window.action_map[key])
    menu.addSeparator()
    menu.addAction("&Query PACS…", panel.show_query)
    menu.addAction("DICOM &Network Settings…", panel.show_settings)
    recv = menu.addAction("&Receive Studies over DICOM")
    recv.setCheckable(True)
    recv.toggled.connect(panel.receive_box.setChecked)
    controller.receiving_changed.connect(recv.setChecked)
    window.worklist_panel = panel
    window.worklist_dock = dock
    window.installEventFilter(_CloseWatcher(controller, window))
    if str(window.settings.value("pacs/receive", "false")).lower() == "true" and window.interactive:
        panel.receive_box.setChecked(True)
    return panel
