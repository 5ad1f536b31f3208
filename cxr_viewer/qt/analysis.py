"""The Qt adapter of the analysis service (:mod:`cxr_viewer.core.analysis`): signals, QSettings, the worker.

The requests, generations, cancellation (the core executor, bridged by a one-worker
:class:`TaskRunner`), model pool, runners and user thresholds are the core's; this module
turns viewer events into those requests, drops what a request still returns for a film no
longer shown, and publishes results to the :class:`Session` on the GUI thread only.
:meth:`AnalysisController.set_sync` runs everything inline for tests.

User thresholds and the enabled state of each model live in QSettings (through
:class:`QtSettings`); scores are never recomputed for a threshold change, the findings
are just judged again.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QSettings, Signal

from cxr_viewer.core.analysis import (  # noqa: F401  (re-exported: older imports name them here)
    DEVICES,
    AnalysisOutcome,
    AnalysisRequest,
    AnalysisState,
    BundleSummary,
    ModelConfig,
    ModelPool,
    ModelService,
    UserThresholds,
    default_model_dirs,
    run_analysis,
    run_cam,
    run_segment,
    threshold_key,
    validate_bundle,
)
from cxr_viewer.core.errors import AnalysisCancelledError, CXRError, NoSegmentationModelError
from cxr_viewer.core.inference.results import Heatmap
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.session import HeatmapLayer, MaskLayer, Session
from cxr_viewer.qt.workers import Task, TaskRunner

if TYPE_CHECKING:
    from cxr_viewer.core.inference.results import AnalysisResult
    from cxr_viewer.core.inference.segment import Mask
    from cxr_viewer.core.judging import JudgedResult
    from cxr_viewer.core.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = [
    "AnalysisController",
    "AnalysisState",
    "BundleSummary",
    "DEVICES",
    "ModelConfig",
    "ModelPool",
    "default_model_dirs",
    "threshold_key",
]

#: The CAM methods offered in the viewer: display name -> engine name.
CAM_CHOICES: dict[str, str] = {
    "GradCAM": "gradcam",
    "GradCAM++": "gradcam++",
    "EigenCAM": "eigencam",
    "LayerCAM": "layercam",
    "ScoreCAM": "scorecam",
    "XGradCAM": "xgradcam",
    "HiResCAM": "hirescam",
}
#: A research overlay is drawn in a calm sequential colour map, never in alarm colours (jet's red).
RESEARCH_COLORMAP = "cividis"
#: Heatmap values under this fraction of the maximum are not drawn, so the hot regions stand out.
DEFAULT_CUTOFF = 0.2
UNTRAINED_MESSAGE = (
    "UNTRAINED model (random weights): its scores are meaningless and must not be read as findings."
)


# --------------------------------------------------------------------------- GUI side
class QtSettings:
    """The core's :class:`~cxr_viewer.core.analysis.Settings` over QSettings."""

    def __init__(self, settings: QSettings) -> None:
        self.settings = settings

    def value(self, key: str, default: Any = None) -> Any:
        return self.settings.value(key, default)

    def set_value(self, key: str, value: Any) -> None:
        self.settings.setValue(key, value)

    def remove(self, key: str) -> None:
        self.settings.remove(key)


class AnalysisController(QObject):
    """Turns viewer events into engine requests and engine results into the workspace's study analysis.

    The film's outcome, judged state, heatmap and masks are the workspace's
    (:class:`~cxr_viewer.core.analysis.StudyAnalysis`); this controller relays their events as Qt signals.
    """

    state_changed = Signal(object)  # AnalysisState
    heatmap_changed = Signal(object)  # core Heatmap | None (the session holds the drawn layer)
    masks_changed = Signal(object)  # list[Mask] of the current report phrases
    progress = Signal(str)  # a line for the status bar; "" when nothing runs
    models_changed = Signal(object)  # tuple[BundleSummary, ...]
    enabled_changed = Signal()  # the user switched a model on or off (the worklist follows)
    thresholds_changed = Signal()  # the reader set or reset a threshold (the worklist judges again)
    segment_failed = Signal(str)
    bundle_added = Signal(object)  # Path of the copied bundle
    error = Signal(str, str)  # title, message: for a non-blocking dialog

    def __init__(
        self,
        session: Session,
        settings: QSettings,
        *,
        models_dir: Path | None = None,
        models: ModelService | None = None,
        workspace: "Workspace | None" = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.session = session
        self.settings = settings
        self.models_dir = models_dir
        # one worker: requests run in order; a newer request of a channel (analysis, cam, segment, models)
        # supersedes the last, whose results are dropped
        self.runner = TaskRunner(session.work, self, max_threads=1)
        self.runner.idle.connect(lambda: self.progress.emit(""))
        self.runner.error.connect(lambda exc: self._report(exc, "Analysis failed"))
        # the process's one model service (built by the composition root); its queue runs every model call
        self.models = models if models is not None else ModelService()
        self.pool = self.models.pool
        self.backend = str(settings.value("analysis/backend", "auto"))
        self.faithfulness = str(settings.value("heatmap/faithfulness", "true")).lower() in ("true", "1")
        # Heatmaps are opt-in: none is drawn until the reader asks for one. The finding they chose
        # ("Show") is remembered for the next films of the SAME patient only, in memory (never across
        # a restart, never onto another patient's film), and is drawn there only where that finding
        # is POSITIVE or above its threshold. Hiding the heatmap forgets it.
        self.auto_cam = True
        self.shown_cam: tuple[str, str | None] | None = None
        self._shown_patient: str | None = None  # the patient the "Show" choice was made on
        self._asked_before_film = False  # chosen with no film open (--heatmap): drawn on the next film as asked
        self._asked_for: ImageRecord | None = None  # that next film
        settings.remove("heatmap/show")  # older versions persisted the choice across restarts
        # the reader's workspace (the film and its analysis, enabled models, site profile, thresholds): read
        # here, never copied
        from cxr_viewer.core.workspace import Workspace

        self.workspace = workspace if workspace is not None else Workspace(QtSettings(settings), session=session)
        if self.workspace.session is not session:
            raise ValueError("the analysis controller follows its workspace's session")
        self.thresholds = self.workspace.thresholds
        self.study = self.workspace.analysis
        self.workspace.models_changed.connect(self._on_models_changed)
        self.workspace.thresholds_changed.connect(self._on_threshold)
        self._relays = ((self.study.state_changed, self.state_changed.emit),
                        (self.study.heatmap_changed, self.heatmap_changed.emit),
                        (self.study.masks_changed, self.masks_changed.emit),
                        (self.study.models_changed, self.models_changed.emit))
        for event, relay in self._relays:
            event.connect(relay)
        self._cam_label: str | None = None
        self._cam_model: str | None = None
        self._cam_method = str(settings.value("analysis/cam_method", "gradcam"))
        session.events.record_changed.connect(self._on_record_changed)

    # ------------------------------------------------------------------ configuration
    def set_sync(self, sync: bool = True) -> None:
        """Run requests inline on the calling thread (tests), like napari's ``force_sync``."""
        self.runner.set_sync(sync)

    @property
    def device(self) -> str:
        value = str(self.settings.value("analysis/device", "auto"))
        return value if value in DEVICES else "auto"

    def set_device(self, device: str) -> None:
        """Persist the device preference (auto/cpu/cuda/mps) and re-run on the current image."""
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}")
        if device != self.device:
            self.settings.setValue("analysis/device", device)
            self.rerun()

    def model_dirs(self) -> tuple[Path, ...]:
        return default_model_dirs(self.models_dir)

    def disabled_models(self) -> frozenset[str]:
        return self.workspace.disabled_models

    def enabled_models(self) -> frozenset[str]:
        """Bundles shipped switched off (a site fine-tune) that the user switched on."""
        return self.workspace.enabled_models

    def is_enabled(self, name: str, default: bool = True) -> bool:
        """The user's choice for ``name``; ``default`` (the manifest's ``enabled``) when they made none."""
        return self.workspace.is_enabled(name, default)

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a model by name (persisted); the current image is analysed again."""
        self._set_enabled_many({name: enabled})
        self.rerun()

    def _set_enabled_many(self, choices: dict[str, bool]) -> None:
        self.workspace.set_enabled(choices)
        self.settings.sync()

    def _on_models_changed(self) -> None:
        self.enabled_changed.emit()

    def switch_version(self, use: str, instead_of: str) -> None:
        """Use bundle ``use`` instead of ``instead_of`` (a site version and its original, either way round).

        Both stay installed: enabling a site version switches the original off, and rolling back
        switches the site version off and the original on. One re-analysis of the current image.
        """
        self._set_enabled_many({use: True, instead_of: False})
        self.rerun()

    def config(self) -> ModelConfig:
        return ModelConfig(self.model_dirs(), self.disabled_models(), self.device, self.backend, self.enabled_models())

    @property
    def state(self) -> AnalysisState:
        return self.study.state

    @property
    def heatmap(self) -> Heatmap | None:
        return self.study.heatmap

    @property
    def masks(self) -> list["Mask"]:
        return self.study.masks

    @property
    def faithfulness_pending(self) -> bool:
        """A score for the heatmap shown is still being computed."""
        return self.study.faithfulness_pending

    @property
    def heatmap_cutoff(self) -> float | None:
        """Fraction of the map's maximum below which it is transparent (None: show it all); persisted."""
        try:
            value = float(self.settings.value("heatmap/cutoff", DEFAULT_CUTOFF))
        except (TypeError, ValueError):
            value = DEFAULT_CUTOFF
        return value if 0.0 < value < 1.0 else None

    def set_faithfulness(self, on: bool) -> None:
        """Score each heatmap's faithfulness (ROAD: seconds of CPU per map); persisted."""
        self.faithfulness = bool(on)
        self.settings.setValue("heatmap/faithfulness", "true" if on else "false")

    def set_heatmap_cutoff(self, value: float | None) -> None:
        self.settings.setValue("heatmap/cutoff", 0.0 if value is None else float(value))

    @property
    def cam_method(self) -> str:
        return self._cam_method

    def unavailable_methods(self, model: str | None) -> dict[str, str]:
        """Heatmap methods ``model`` cannot draw in this process, with the reason (empty with torch)."""
        table = self.state.unavailable_cam
        if model is None:
            return {m: why for per in table.values() for m, why in per.items()}
        return dict(table.get(model, {}))

    def usable_method(self, model: str | None, method: str) -> str:
        """``method``, or Grad-CAM / the first drawable method when this model cannot draw it."""
        missing = self.unavailable_methods(model)
        if method not in missing:
            return method
        from cxr_viewer.core.inference.cam_methods import CAM_METHODS

        return next((m for m in ("gradcam", *CAM_METHODS) if m not in missing), method)

    @property
    def cam_target(self) -> tuple[str | None, str | None]:
        """(label, model) of the heatmap asked for last."""
        return self._cam_label, self._cam_model

    @property
    def bundles(self) -> tuple[BundleSummary, ...]:
        return self.study.bundles

    # ------------------------------------------------------------------ thresholds
    def threshold_override(self, model: str, label: str) -> float | None:
        return self.thresholds.get(model, self.state.model_sha(model), label)

    def model_threshold(self, model: str, label: str) -> float | None:
        """The threshold the model itself ships for ``label`` (None before any result)."""
        return self.study.model_threshold(model, label)

    def set_threshold(self, model: str, label: str, value: float | None) -> None:
        """Set (or with ``None`` reset to the model's) the threshold of one finding; persisted."""
        self.workspace.set_threshold(model, self.state.model_sha(model), label, value)
        self.settings.sync()

    def _on_threshold(self, _model: str = "", _label: str = "") -> None:
        self.thresholds_changed.emit()  # the workspace has judged the film again already

    @property
    def site_profile(self) -> Any:
        """The active SiteProfile: the workspace's."""
        return self.workspace.site_profile

    def set_site_profile(self, profile: Any) -> None:
        """Make ``profile`` (a :class:`~cxr_viewer.core.site.profile.SiteProfile`, or None) the one applied.

        Its calibrated scores and site thresholds replace the bundle's on every image from now
        on, the current one included (judged again, not recomputed). A profile that does not
        fit the loaded weights is not applied; the state says why.
        """
        self.workspace.set_site_profile(profile)

    # ------------------------------------------------------------------ requests
    def _is_current(self, job: Task, record: ImageRecord) -> bool:
        return self.runner.is_current(job) and self.session.record is record

    def _submit(self, job: Task, fn: Callable[..., Iterator[tuple[str, Any]]], args: tuple[Any, ...],
                on_item: Callable[[tuple[str, Any]], None], on_error: Callable[[BaseException], None]) -> None:
        self.runner.submit(fn, *args, job=job, on_progress=on_item, on_error=on_error)

    def analyze(self, record: ImageRecord | None = None) -> None:
        """Score ``record`` (default: the session's image) with every enabled classifier."""
        record = record if record is not None else self.session.record
        if record is None:
            return
        job = self.runner.request("analysis")
        self.runner.cancel("cam")
        req = AnalysisRequest(job.generation, record, self.config(), job.token)
        self.study.start("Analysing…")
        self._submit(job, self.models.iterate, (run_analysis, req),
                     lambda item: self._on_analysis_item(job, req, item),
                     lambda exc: self._on_worker_error(job, record, exc))

    def rerun(self) -> None:
        """Analyse the current image again (models or device changed)."""
        if self.session.record is not None:
            self.analyze(self.session.record)
        else:
            self.refresh_models()

    def refresh_models(self) -> None:
        """Rescan the model folders, load the enabled bundles and warm them up, without an image.

        On the model worker: bundles loaded, backends chosen and sessions built, one forward per
        model, the segmenter's text encoder loaded and the stock prompts encoded, so the first
        image waits for none of it. A newer refresh cancels this one between steps; quitting
        never waits for it (see ``cxr_viewer.qt.app.exit_now``).
        """
        job = self.runner.request("models")
        token = job.token

        def scan(pool: ModelPool, config: ModelConfig) -> Iterator[tuple[str, Any]]:
            token.raise_if_cancelled()
            engine = pool.sync(config)
            yield "models", pool.summaries
            yield "progress", "Preparing the models…"
            engine.warmup(cancel=token)

        def on_item(item: tuple[str, Any]) -> None:
            if item[0] == "models":
                self.study.set_bundles(item[1])
            elif item[0] == "progress" and self.session.record is None:
                self.progress.emit(item[1])

        self._submit(job, self.models.iterate, (scan, self.config()), on_item,
                     lambda exc: self._report(exc, "Models"))

    def warm_up(self) -> None:
        """Start-up: load and warm the models in the background before any image is opened."""
        if self.session.record is None:
            self.refresh_models()

    def set_shown_cam(self, label: str | None, model: str | None = None) -> None:
        """Remember (or, with ``None``, forget) the finding whose heatmap is shown on this patient's films.

        In memory only, tied to the current patient: a film of another patient (or one whose
        patient is unknown) starts without it, and so does the next start of the viewer.
        A choice made with no film open (``--heatmap``, a script) is the reader's request for the
        next film: it is drawn there whatever the finding's state, then follows that film's patient.
        """
        self.shown_cam = None if label is None else (label, model)
        self._asked_before_film = label is not None and self.session.record is None
        self._shown_patient = _patient_key(self.session.record) if label is not None else None

    def request_cam(self, label: str, model: str | None = None, method: str | None = None, *,
                    remember: bool = True) -> None:  # fmt: skip
        """Compute the heatmap of ``label`` (from ``model``) with ``method`` for the current image.

        A request from the reader (``remember``) becomes the "Show" choice for the next images too.
        """
        record = self.session.record
        if record is None:
            return
        if remember:
            self.set_shown_cam(label, model)
        if method is not None:
            from cxr_viewer.core.inference.cam_methods import canonical_method

            self._cam_method = canonical_method(method)
            self.settings.setValue("analysis/cam_method", self._cam_method)
        self._cam_label, self._cam_model = label, model
        method_now = self.usable_method(model, self._cam_method)
        job = self.runner.request("cam")
        self._submit(job, self.models.iterate,
                     (run_cam, self.config(), record, label, model, method_now, self.faithfulness, job.token),
                     lambda item: self._on_cam_item(job, record, item),
                     lambda exc: self._on_worker_error(job, record, exc))

    def segment(self, phrases: Sequence[str]) -> None:
        """Masks for ``phrases`` on the current image (replacing the previous set)."""
        record = self.session.record
        phrases = tuple(p.strip() for p in phrases if p and p.strip())
        job = self.runner.request("segment")
        if record is None:
            return
        if not phrases:
            self.runner.cancel("segment")
            self.study.set_masks([])
            return
        self._submit(job, self.models.iterate, (run_segment, self.config(), record, phrases, job.token),
                     lambda item: self._on_segment_item(job, record, item),
                     lambda exc: self._on_worker_error(job, record, exc))

    def add_bundle(self, path: str | Path) -> None:
        """Validate a bundle (hash, no pickle) off-thread, then copy it into the user models folder."""
        path = Path(path)

        def job(p: Path) -> Iterator[tuple[str, Any]]:
            yield "progress", f"Checking model bundle {p.name}…"
            yield "manifest", validate_bundle(p)

        def on_item(item: tuple[str, Any]) -> None:
            if item[0] == "progress":
                self.progress.emit(item[1])
            else:
                self._install_bundle(path, item[1])

        # no channel: two bundles dropped together must both be installed, not supersede each other
        self._submit(self.runner.request(None), job, (path,), on_item, lambda exc: self._report(exc, "Model not added"))

    def _install_bundle(self, src: Path, manifest: Any) -> None:
        from cxr_viewer.core.paths import user_models_dir

        dest_root = user_models_dir()
        dest_root.mkdir(parents=True, exist_ok=True)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{manifest.name}-{manifest.version}")
        from cxr_viewer.core.staging import staged_dir, staged_file

        try:  # copied into a staging place and swapped in whole: a failed copy keeps the installed version
            if src.is_dir() or src.name == "manifest.json":
                folder = src if src.is_dir() else src.parent
                dest = dest_root / stem
                with staged_dir(dest) as stage:
                    shutil.copytree(folder, stage, dirs_exist_ok=True)
            else:
                dest = dest_root / f"{stem}.zip"
                with staged_file(dest) as part:
                    shutil.copy2(src, part)
        except OSError as exc:
            self.error.emit("Model not added", f"Could not copy the model into {dest_root}: {exc.strerror or exc}.")
            return
        log.info("installed model bundle %s into the user models folder", manifest.name)
        self.bundle_added.emit(dest)
        self.progress.emit(f"Added model {manifest.name} {manifest.version}")
        self.rerun()

    def cancel_all(self) -> None:
        self.runner.cancel_all()

    def shutdown(self, msecs: int = 3000) -> None:
        self.cancel_all()
        self.runner.wait(msecs)
        ws = self.workspace
        for sig, slot in ((self.session.events.record_changed, self._on_record_changed),
                          (ws.models_changed, self._on_models_changed), (ws.thresholds_changed, self._on_threshold),
                          *self._relays):
            try:
                sig.disconnect(slot)
            except (RuntimeError, TypeError, ValueError):
                pass

    # ------------------------------------------------------------------ results (GUI thread)
    def _on_record_changed(self, record: ImageRecord | None) -> None:
        # Nothing of the previous image may land on this one.
        for channel in ("analysis", "cam", "segment"):
            self.runner.cancel(channel)
        self._asked_for = None
        if self.shown_cam is not None and self._asked_before_film:
            self._asked_before_film, self._asked_for = False, record  # the film the choice was made for
            self._shown_patient = _patient_key(record)
        elif self.shown_cam is not None and (self._shown_patient is None or _patient_key(record) != self._shown_patient):
            self.shown_cam, self._shown_patient = None, None  # another patient: no map is carried over
        # the workspace has cleared the film's analysis (its own listener of the same event)

    def _on_analysis_item(self, job: Task, req: AnalysisRequest, item: tuple[str, Any]) -> None:
        kind, value = item
        if not self._is_current(job, req.record):
            return
        if kind == "progress":
            self.progress.emit(value)
            self.study.progress(value)
            return
        outcome: AnalysisOutcome = value
        self.study.set_outcome(outcome, self.judge(outcome.result))
        if self.auto_cam and self.shown_cam is not None:
            label, model = self._auto_cam_target(self.state)
            if label is not None:
                self.request_cam(label, model, remember=False)

    def judge(self, result: AnalysisResult) -> "JudgedResult":
        """THE judging step (the workspace's): the site profile, then any threshold the reader set;
        current | prior judges the prior film with it too."""
        return self.workspace.judge(result)

    def _auto_cam_target(self, state: AnalysisState) -> tuple[str | None, str | None]:
        """The finding the reader chose to show, if this image has it POSITIVE or above its threshold.

        No guessing: a finding below its threshold on this film gets no map unless the reader asks.
        """
        if self.shown_cam is None:
            return None, None
        label, model = self.shown_cam
        asked = self._asked_for is not None and self._asked_for is self.session.record
        same = [f for f in state.findings if f.label == label and model in (None, f.model)]
        for f in same or [f for f in state.findings if f.label == label]:  # or from another (updated) model
            return (f.label, f.model) if asked or f.positive or f.above_threshold else (None, None)
        return None, None

    def _on_cam_item(self, job: Task, record: ImageRecord, item: tuple[str, Any]) -> None:
        kind, value = item
        if not self._is_current(job, record):
            return
        if kind == "progress":
            self.progress.emit(value)
            return
        heat: Heatmap = value
        old = self.session.heatmap
        prefs = self.session
        colormap = old.colormap if old is not None else str(prefs.preference("heatmap_colormap"))
        layer = HeatmapLayer(
            data=heat.values,
            label=heat.label,
            method=heat.method,
            faithfulness=heat.faithfulness,
            peak=1.0 if heat.colour_peak is None else float(heat.colour_peak),
            colormap=RESEARCH_COLORMAP if heat.research else colormap,
            opacity=old.opacity if old is not None else float(prefs.preference("heatmap_opacity")),
            threshold=old.threshold if old is not None else self.heatmap_cutoff,
            visible=old.visible if old is not None else True,
        )
        self.session.set_heatmap(layer)
        self.study.set_heatmap(heat, pending=kind == "heatmap")

    def _on_segment_item(self, job: Task, record: ImageRecord, item: tuple[str, Any]) -> None:
        kind, value = item
        if not self._is_current(job, record):
            return
        if kind == "progress":
            self.progress.emit(value)
            return
        self.study.set_masks(value)

    def _on_worker_error(self, job: Task, record: ImageRecord, exc: BaseException) -> None:
        channel = job.channel
        if isinstance(exc, AnalysisCancelledError) or not self._is_current(job, record):
            return
        self.progress.emit("")
        if channel == "segment" and isinstance(exc, NoSegmentationModelError):
            self.segment_failed.emit(exc.message)
            return
        if channel == "analysis":
            self.study.fail(_message(exc))
        if channel == "segment":
            self.segment_failed.emit(_message(exc))
        self._report(exc, {"analysis": "Analysis failed", "cam": "Heatmap failed"}.get(channel, "Report masks failed"))

    def _report(self, exc: BaseException, title: str) -> None:
        if isinstance(exc, AnalysisCancelledError):
            return
        if not isinstance(exc, CXRError):
            log.error("unexpected error in a model request", exc_info=exc)
        self.progress.emit("")
        self.error.emit(title, _message(exc))


def _patient_key(record: ImageRecord | None) -> str | None:
    """The patient a film belongs to (its DICOM PatientID), or None when the file does not say."""
    if record is None:
        return None
    pid = str((record.metadata or {}).get("patient_id") or "").strip()
    return pid or None


def _message(exc: BaseException) -> str:
    if isinstance(exc, CXRError):
        return exc.message
    if isinstance(exc, MemoryError):
        return "Not enough memory to run the model. Close other programs or choose a smaller model."
    return f"The model could not run because of an unexpected error ({type(exc).__name__}: {exc}). Details are in the log."


def mask_layers(masks: Sequence["Mask"], *, visible: Sequence[bool] | None = None, style: str = "contour",
                opacity: float = 0.5) -> list[MaskLayer]:
    """Session mask layers for segmenter masks (probabilities cut at each mask's threshold)."""
    out = []
    for i, m in enumerate(masks):
        out.append(MaskLayer(text=m.text, mask=m.prob, color=tuple(m.colour), threshold=float(m.threshold),
                             visible=True if visible is None else bool(visible[i]), style=style, opacity=opacity))
    return out

