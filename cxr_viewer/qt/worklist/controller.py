"""The worklist's controller: the core worklist, its one-worker runner, the DICOM receiver and the PACS calls.

The work is the core :class:`~cxr_viewer.core.worklist.Worklist` (store keyed by pixel hash
and model sha256), listed by :func:`~cxr_viewer.core.worklist.intake.intake` on a one-worker
:class:`TaskRunner` of its own with a private busy counter, so a long analysis never marks
the viewer busy and never delays opening an image. The C-STORE receiver runs on pynetdicom's
threads and hands each stored file to the GUI thread through a queued signal; PACS queries,
retrievals and sends run on the same worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QSettings, Signal

from cxr_viewer.core.errors import AnalysisCancelledError, CXRError
from cxr_viewer.core.worklist import ResultStore, Worklist, WorklistEntry, default_store_path
from cxr_viewer.core.worklist.intake import default_inbox, intake
from cxr_viewer.core.worklist.intake import send_results as send_study_results
from cxr_viewer.qt.workers import TaskRunner

if TYPE_CHECKING:
    from cxr_viewer.core.analysis import ModelConfig, ModelService
    from cxr_viewer.core.pacs import ReceivedFile, RemoteNode, StorageReceiver
    from cxr_viewer.core.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_AE, DEFAULT_PORT = "CXRVIEWER", 11112


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
        self.runner = TaskRunner(None, self, max_threads=1)  # a private busy counter: the viewer stays un-busy
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
        self.runner.cancel_all()  # the running batch stops at its next film; what it still hands back is dropped
        self._done = self._total = 0
        self._start(self._folder, list(self._added), reconfigure=reconfigure, refresh=True)

    def _start(self, folder: Path | None, paths: list[Path], *, reconfigure: Any = None, refresh: bool = False) -> None:
        if not self.running:
            self._done = self._total = 0
        job = self.runner.request()  # its token stops the batch between films (Cancel, a refresh)
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
                return
            self.error.emit("Worklist", exc.message if isinstance(exc, CXRError) else f"{type(exc).__name__}: {exc}")

        self.runner.submit(intake, self.worklist, folder, paths, job.token, reconfigure, job=job, on_progress=on_item,
                           on_error=on_error, on_result=lambda _r: self._batch_done(refresh))

    def _batch_done(self, refresh: bool = False) -> None:
        if self.runner.pending <= 1:
            self.progress.emit(0, 0)
        if refresh:
            self.refreshed.emit()

    def cancel(self) -> None:
        if self.running:
            self.message.emit("Worklist analysis cancelled")
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
        self.runner.submit(send_study_results, self.worklist, self.remote(), entry.path, self.local_node()[0],
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

