"""Runs the models for the viewer: findings, Grad-CAM and report masks, off the GUI thread.

Shaped like napari's layer slicer: on the GUI thread an immutable request is built
(the record, the model folders, the disabled models, the device); a one-worker
executor runs it; a newer request of the same kind cancels the older one (its
:class:`CancelToken` fires and its generation is superseded), and whatever an old
request still returns is dropped. Results reach the :class:`Session` on the GUI
thread only. :meth:`AnalysisController.set_sync` runs everything inline for tests.

Models (and the MiniLM text encoder) load lazily, in the worker, on first use, so
the window opens without importing torch. The :class:`ModelPool` that owns them is
touched by the worker thread only.

User thresholds and the enabled state of each model live in QSettings; scores are
never recomputed for a threshold change, the findings are just judged again.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QSettings, Signal

from cxr_viewer.core.errors import AnalysisCancelledError, CXRError, NoSegmentationModelError
from cxr_viewer.core.inference.results import AnalysisResult, CancelToken, Finding, Heatmap, QCFlag
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.session import HeatmapLayer, MaskLayer, Session
from cxr_viewer.qt.workers import TaskRunner

if TYPE_CHECKING:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.segment import Mask, Segmenter

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

DEVICES = ("auto", "cpu", "cuda", "mps")
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
#: Heatmap values under this fraction of the maximum are not drawn, so the hot regions stand out.
DEFAULT_CUTOFF = 0.2
NO_MODELS_MESSAGE = "No models installed — add a bundle in Tools › Models…"
NO_ENABLED_MESSAGE = "All finding models are switched off — enable one in Tools › Models…"
NOT_LOADED_MESSAGE = "No finding model could be loaded — see Tools › Models… for the reason"
UNTRAINED_MESSAGE = (
    "UNTRAINED model (random weights): its scores are meaningless and must not be read as findings."
)


def default_model_dirs(models_dir: Path | None = None) -> tuple[Path, ...]:
    """Folders scanned for bundles: ``--models DIR`` (else the shipped models) and the user's folder."""
    from cxr_viewer.core.paths import default_models_dir, user_models_dir

    first = Path(models_dir) if models_dir is not None else default_models_dir()
    user = user_models_dir()
    return (first,) if first.resolve() == user.resolve() else (first, user)


def threshold_key(name: str, sha256: str, label: str) -> str:
    """QSettings key of a user threshold: per bundle name + weights hash, so new weights start fresh."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return f"thresholds/{name}@{sha256[:16]}/{safe}"


# --------------------------------------------------------------------------- requests and results
@dataclass(frozen=True)
class ModelConfig:
    """Which models to use and where: part of every request, so the worker never reads settings."""

    dirs: tuple[Path, ...]
    disabled: frozenset[str] = frozenset()
    device: str = "auto"
    backend: str = "auto"


@dataclass(frozen=True)
class BundleSummary:
    """What the GUI needs to know about an available bundle (no weights, no torch)."""

    name: str
    version: str
    task: str
    trained: bool
    sha256: str
    path: Path
    enabled: bool = True
    loaded: bool = False
    error: str | None = None

    @property
    def display_name(self) -> str:
        return f"{self.name} {self.version}".strip()


@dataclass(frozen=True, eq=False)
class AnalysisRequest:
    generation: int
    record: ImageRecord
    config: ModelConfig
    token: CancelToken = field(default_factory=CancelToken)


@dataclass(frozen=True, eq=False)
class AnalysisOutcome:
    """What the worker hands back for one analysis request."""

    generation: int
    record: ImageRecord
    result: AnalysisResult
    bundles: tuple[BundleSummary, ...]
    device: str
    unavailable_cam: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> {method: why}


@dataclass(frozen=True)
class AnalysisState:
    """What the findings panel shows; ``findings`` carry the thresholds in force (user's or model's)."""

    status: str = "idle"  # idle | running | done | error
    findings: tuple[Finding, ...] = ()
    qc: tuple[QCFlag, ...] = ()
    models: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    load_errors: tuple[str, ...] = ()
    message: str = ""
    device: str = ""
    unavailable_cam: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> {method: why}

    @property
    def untrained_models(self) -> list[str]:
        return [f"{m['name']} {m.get('version', '')}".strip() for m in self.models if not m.get("trained", False)]

    @property
    def no_models(self) -> bool:
        return self.status == "done" and not self.models

    def model_sha(self, name: str) -> str:
        for m in self.models:
            if m["name"] == name:
                return str(m.get("sha256", ""))
        return ""


# --------------------------------------------------------------------------- worker side
class ModelPool:
    """Bundles found on disk and loaded on first use. Only the worker thread calls it."""

    def __init__(self) -> None:
        self._engine: InferenceEngine | None = None
        self._config: ModelConfig | None = None
        self._segmenters: dict[str, Segmenter] = {}
        self.summaries: tuple[BundleSummary, ...] = ()

    @property
    def engine(self) -> "InferenceEngine | None":
        return self._engine

    def sync(self, config: ModelConfig, progress: Callable[[str], None] | None = None) -> "InferenceEngine":
        """Make the engine hold exactly the enabled, loadable bundles of ``config`` (loading lazily).

        Without torch (the small CPU app) the engine and bundles are the ONNX lane's; same calls.
        """
        from cxr_viewer.core.inference.engine import InferenceEngine
        from cxr_viewer.core.models.bundle import find_bundles, load_bundle

        old = self._config
        if self._engine is None or old is None or (old.device, old.backend) != (config.device, config.backend):
            if progress:
                progress("Preparing the models…")
            self._engine = InferenceEngine(None, device=config.device, backend=config.backend)
            self._segmenters.clear()
        self._config = config
        engine = self._engine
        infos = find_bundles(config.dirs)
        wanted: list[Any] = []
        summaries: list[BundleSummary] = []
        for info in infos:
            m = info.manifest
            if m is None:
                summaries.append(BundleSummary(info.path.name, "", "", False, "", info.path, False, False, info.error))
                continue
            enabled = m.name not in config.disabled
            summaries.append(BundleSummary(m.name, m.version, m.task, m.trained, str(m.weights.get("sha256", "")),
                                           info.path, enabled))
            if enabled:
                wanted.append(info)
        wanted_keys = {(i.manifest.name, str(i.manifest.weights.get("sha256", "")).lower()) for i in wanted}
        for b in engine.bundles:
            if (b.name, b.sha256) not in wanted_keys:
                engine.remove_bundle(b.name)
                self._segmenters.pop(b.sha256, None)
        loaded = {(b.name, b.sha256) for b in engine.bundles}
        errors: dict[Path, str] = {}
        for info in wanted:
            m = info.manifest
            if (m.name, str(m.weights.get("sha256", "")).lower()) in loaded:
                continue
            if progress:
                progress(f"Loading model {m.display_name}…")
            try:
                engine.add_bundle(load_bundle(info.path, device=engine.device))
            except CXRError as exc:
                log.warning("model bundle %s not loaded: %s", info.path.name, exc.message)
                errors[info.path] = exc.message
        names = {(b.name, b.sha256) for b in engine.bundles}
        self.summaries = tuple(
            replace(s, loaded=(s.name, s.sha256.lower()) in names, error=errors.get(s.path, s.error)) for s in summaries
        )
        return engine

    def segmenter(self, config: ModelConfig, progress: Callable[[str], None] | None = None) -> "Segmenter":
        """The first enabled report-conditioned segmentation model, with its text encoder."""
        engine = self.sync(config, progress)
        bundles = engine.bundles_for_task("text_segmentation")
        if not bundles:
            raise NoSegmentationModelError(
                "No report-segmentation model is installed, so sentences cannot be drawn. "
                "Add a text-segmentation bundle in Tools › Models…"
            )
        b = bundles[0]
        seg = self._segmenters.get(b.sha256)
        if seg is None:
            from cxr_viewer.core.inference.segment import Segmenter
            from cxr_viewer.core.models.text import get_text_encoder

            if progress:
                progress(f"Loading the text encoder for {b.manifest.display_name}…")
            from cxr_viewer.core.runtime import torch_available

            encoder = None  # None: the segmenter picks its own (the ONNX one without torch)
            if b.manifest.text_encoder and torch_available():
                encoder = get_text_encoder(b.manifest.text_encoder, device=str(engine.device))
            seg = Segmenter(b, text_encoder=encoder)
            self._segmenters[b.sha256] = seg
        return seg


def _run_analysis(pool: ModelPool, req: AnalysisRequest) -> Iterator[tuple[str, Any]]:
    """Worker: load what is needed, then score the image. Yields ("progress", text) then ("outcome", ...)."""
    msgs: list[str] = []
    req.token.raise_if_cancelled()
    engine = pool.sync(req.config, msgs.append)
    yield from (("progress", m) for m in msgs)
    req.token.raise_if_cancelled()
    names = [b.name for b in engine.classifiers]
    if names:
        yield "progress", "Analysing with " + ", ".join(names) + "…"
    result = engine.analyze(req.record, cancel=req.token)
    yield "outcome", AnalysisOutcome(req.generation, req.record, result, pool.summaries, str(engine.device),
                                     _unavailable_cam(engine))


def _unavailable_cam(engine: "InferenceEngine") -> dict[str, dict[str, str]]:
    """Per classifier, the heatmap methods this process cannot draw and why (torch-free app: the gradient ones)."""
    try:
        from cxr_viewer.core.inference.onnx_lane import unavailable_cam_methods
    except ImportError:  # pragma: no cover - the lane ships with the package
        return {}
    return {b.name: dict(unavailable_cam_methods(b)) for b in engine.classifiers}


def _run_cam(
    pool: ModelPool, config: ModelConfig, record: ImageRecord, label: str, model: str | None, method: str,
    faithfulness: bool, token: CancelToken,
) -> Iterator[tuple[str, Any]]:
    """Worker: the heatmap first (fast), then the same map with its faithfulness score.

    The last item is ("heatmap_final", ...): after it nothing more comes for this map
    (the torch-free engine leaves faithfulness at None).
    """
    token.raise_if_cancelled()
    engine = pool.sync(config)
    yield "progress", f"Heatmap ({method}) for {label}…"
    heat = engine.cam(record, label, method, model=model, faithfulness=False, cancel=token)
    if not faithfulness:
        yield "heatmap_final", heat
        return
    yield "heatmap", heat
    token.raise_if_cancelled()
    yield "progress", f"Checking how faithful the {method} map is…"
    yield "heatmap_final", engine.cam(record, label, method, model=model, faithfulness=True, cancel=token)


def _run_segment(
    pool: ModelPool, config: ModelConfig, record: ImageRecord, phrases: tuple[str, ...], token: CancelToken
) -> Iterator[tuple[str, Any]]:
    token.raise_if_cancelled()
    msgs: list[str] = []
    seg = pool.segmenter(config, msgs.append)
    yield from (("progress", m) for m in msgs)
    yield "progress", f"Drawing {len(phrases)} phrase(s)…"
    yield "masks", seg.segment(record, list(phrases), cancel=lambda: token.cancelled)


def _validate_bundle(path: Path) -> Any:
    """Worker: hash-check and rebuild a bundle before it is copied (returns its manifest)."""
    from cxr_viewer.core.models.bundle import load_bundle

    return load_bundle(path, device="cpu").manifest


# --------------------------------------------------------------------------- GUI side
class AnalysisController(QObject):
    """Turns viewer events into engine requests and engine results into session state."""

    state_changed = Signal(object)  # AnalysisState
    heatmap_changed = Signal(object)  # core Heatmap | None (the session holds the drawn layer)
    masks_changed = Signal(object)  # list[Mask] of the current report phrases
    progress = Signal(str)  # a line for the status bar; "" when nothing runs
    models_changed = Signal(object)  # tuple[BundleSummary, ...]
    segment_failed = Signal(str)
    bundle_added = Signal(object)  # Path of the copied bundle
    error = Signal(str, str)  # title, message: for a non-blocking dialog

    def __init__(
        self,
        session: Session,
        settings: QSettings,
        *,
        models_dir: Path | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.session = session
        self.settings = settings
        self.models_dir = models_dir
        self.runner = TaskRunner(session, self, max_threads=1)  # one worker: requests run in order
        self.runner.idle.connect(lambda: self.progress.emit(""))
        self.pool = ModelPool()
        self.backend = str(settings.value("analysis/backend", "auto"))
        self.faithfulness = str(settings.value("heatmap/faithfulness", "true")).lower() in ("true", "1")
        self.auto_cam = True
        self._sync = False
        self._gen = itertools.count(1)
        self._tokens: dict[str, CancelToken] = {}
        self._generation: dict[str, int] = {}
        self._outcome: AnalysisOutcome | None = None
        self._state = AnalysisState()
        self._heatmap: Heatmap | None = None
        self.faithfulness_pending = False  # a score for the heatmap shown is still being computed
        self._masks: list[Mask] = []
        self._cam_label: str | None = None
        self._cam_model: str | None = None
        self._cam_method = str(settings.value("analysis/cam_method", "gradcam"))
        self._summaries: tuple[BundleSummary, ...] = ()
        session.events.record_changed.connect(self._on_record_changed)

    # ------------------------------------------------------------------ configuration
    def set_sync(self, sync: bool = True) -> None:
        """Run requests inline on the calling thread (tests), like napari's ``force_sync``."""
        self._sync = bool(sync)

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
        value = self.settings.value("models/disabled", [], type=list) or []
        return frozenset(str(v) for v in value if v)

    def is_enabled(self, name: str) -> bool:
        return name not in self.disabled_models()

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a model by name (persisted); the current image is analysed again."""
        disabled = set(self.disabled_models())
        (disabled.discard if enabled else disabled.add)(name)
        self.settings.setValue("models/disabled", sorted(disabled))
        self.rerun()

    def config(self) -> ModelConfig:
        return ModelConfig(self.model_dirs(), self.disabled_models(), self.device, self.backend)

    @property
    def state(self) -> AnalysisState:
        return self._state

    @property
    def heatmap(self) -> Heatmap | None:
        return self._heatmap

    @property
    def masks(self) -> list["Mask"]:
        return list(self._masks)

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
        table = self._state.unavailable_cam
        if model is None:
            return {m: why for per in table.values() for m, why in per.items()}
        return dict(table.get(model, {}))

    def usable_method(self, model: str | None, method: str) -> str:
        """``method``, or Grad-CAM / the first drawable method when this model cannot draw it."""
        missing = self.unavailable_methods(model)
        if method not in missing:
            return method
        from cxr_viewer.core.inference.cam import CAM_METHODS

        return next((m for m in ("gradcam", *CAM_METHODS) if m not in missing), method)

    @property
    def cam_target(self) -> tuple[str | None, str | None]:
        """(label, model) of the heatmap asked for last."""
        return self._cam_label, self._cam_model

    @property
    def bundles(self) -> tuple[BundleSummary, ...]:
        return self._summaries

    # ------------------------------------------------------------------ thresholds
    def threshold_override(self, model: str, label: str) -> float | None:
        sha = self._state.model_sha(model)
        value = self.settings.value(threshold_key(model, sha, label))
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    def model_threshold(self, model: str, label: str) -> float | None:
        """The threshold the model itself ships for ``label`` (None before any result)."""
        if self._outcome is None:
            return None
        raw = self._outcome.result.finding(label, model)
        return None if raw is None else raw.threshold

    def set_threshold(self, model: str, label: str, value: float | None) -> None:
        """Set (or with ``None`` reset to the model's) the threshold of one finding; persisted."""
        sha = self._state.model_sha(model)
        key = threshold_key(model, sha, label)
        if value is None:
            self.settings.remove(key)
        else:
            v = float(value)
            if not 0.0 <= v <= 1.0:
                raise ValueError("a threshold lies between 0 and 1")
            self.settings.setValue(key, v)
        self.settings.sync()
        if self._outcome is not None:
            self._publish(self._outcome)

    def _judged(self, findings: Sequence[Finding]) -> tuple[Finding, ...]:
        out = []
        for f in findings:
            user = self.threshold_override(f.model, f.label)
            out.append(f.with_threshold(user, "user") if user is not None else f)
        return tuple(out)

    # ------------------------------------------------------------------ requests
    def _cancel(self, channel: str) -> int:
        old = self._tokens.pop(channel, None)
        if old is not None:
            old.cancel()
        gen = next(self._gen)
        self._generation[channel] = gen
        return gen

    def _is_current(self, channel: str, gen: int, record: ImageRecord) -> bool:
        return self._generation.get(channel) == gen and self.session.record is record

    def _submit(self, channel: str | None, fn: Callable[..., Iterator[tuple[str, Any]]], args: tuple[Any, ...],
                on_item: Callable[[tuple[str, Any]], None], on_error: Callable[[BaseException], None]) -> None:
        if self._sync:
            self.session.begin_work()
            try:
                for item in fn(*args):
                    on_item(item)
            except BaseException as exc:  # noqa: BLE001 - same contract as the worker path
                on_error(exc)
            finally:
                self.session.end_work()
                self.progress.emit("")
            return
        self.runner.submit(fn, *args, channel=channel, on_progress=on_item, on_error=on_error)

    def analyze(self, record: ImageRecord | None = None) -> None:
        """Score ``record`` (default: the session's image) with every enabled classifier."""
        record = record if record is not None else self.session.record
        if record is None:
            return
        gen = self._cancel("analysis")
        self._cancel("cam")
        req = AnalysisRequest(gen, record, self.config())
        self._tokens["analysis"] = req.token
        self._outcome = None
        self._set_state(AnalysisState(status="running", message="Analysing…"))
        self._submit("analysis", _run_analysis, (self.pool, req),
                     lambda item: self._on_analysis_item(req, item),
                     lambda exc: self._on_worker_error("analysis", gen, record, exc))

    def rerun(self) -> None:
        """Analyse the current image again (models or device changed)."""
        if self.session.record is not None:
            self.analyze(self.session.record)
        else:
            self.refresh_models()

    def refresh_models(self) -> None:
        """Rescan the model folders (and load enabled bundles) without an image."""
        def scan(pool: ModelPool, config: ModelConfig) -> Iterator[tuple[str, Any]]:
            pool.sync(config)
            yield "models", pool.summaries

        self._submit("models", scan, (self.pool, self.config()),
                     lambda item: self._set_summaries(item[1]) if item[0] == "models" else None,
                     lambda exc: self._report(exc, "Models"))

    def request_cam(self, label: str, model: str | None = None, method: str | None = None) -> None:
        """Compute the heatmap of ``label`` (from ``model``) with ``method`` for the current image."""
        record = self.session.record
        if record is None:
            return
        if method is not None:
            from cxr_viewer.core.inference.cam import canonical_method

            self._cam_method = canonical_method(method)
            self.settings.setValue("analysis/cam_method", self._cam_method)
        self._cam_label, self._cam_model = label, model
        method_now = self.usable_method(model, self._cam_method)
        gen = self._cancel("cam")
        token = CancelToken()
        self._tokens["cam"] = token
        self._submit("cam", _run_cam,
                     (self.pool, self.config(), record, label, model, method_now, self.faithfulness, token),
                     lambda item: self._on_cam_item(gen, record, item),
                     lambda exc: self._on_worker_error("cam", gen, record, exc))

    def segment(self, phrases: Sequence[str]) -> None:
        """Masks for ``phrases`` on the current image (replacing the previous set)."""
        record = self.session.record
        phrases = tuple(p.strip() for p in phrases if p and p.strip())
        gen = self._cancel("segment")
        if record is None:
            return
        if not phrases:
            self._masks = []
            self.masks_changed.emit([])
            return
        token = CancelToken()
        self._tokens["segment"] = token
        self._submit("segment", _run_segment, (self.pool, self.config(), record, phrases, token),
                     lambda item: self._on_segment_item(gen, record, item),
                     lambda exc: self._on_worker_error("segment", gen, record, exc))

    def add_bundle(self, path: str | Path) -> None:
        """Validate a bundle (hash, no pickle) off-thread, then copy it into the user models folder."""
        path = Path(path)

        def job(p: Path) -> Iterator[tuple[str, Any]]:
            yield "progress", f"Checking model bundle {p.name}…"
            yield "manifest", _validate_bundle(p)

        def on_item(item: tuple[str, Any]) -> None:
            if item[0] == "progress":
                self.progress.emit(item[1])
            else:
                self._install_bundle(path, item[1])

        # no channel: two bundles dropped together must both be installed, not supersede each other
        self._submit(None, job, (path,), on_item, lambda exc: self._report(exc, "Model not added"))

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
        for channel in list(self._tokens):
            self._cancel(channel)
        self.runner.cancel_all()

    def shutdown(self, msecs: int = 3000) -> None:
        self.cancel_all()
        self.runner.wait(msecs)
        try:
            self.session.events.record_changed.disconnect(self._on_record_changed)
        except (RuntimeError, TypeError, ValueError):
            pass

    # ------------------------------------------------------------------ results (GUI thread)
    def _set_state(self, state: AnalysisState) -> None:
        self._state = state
        self.state_changed.emit(state)

    def _set_summaries(self, summaries: tuple[BundleSummary, ...]) -> None:
        self._summaries = tuple(summaries)
        self.models_changed.emit(self._summaries)

    def _on_record_changed(self, record: ImageRecord | None) -> None:
        # Nothing of the previous image may land on this one.
        for channel in ("analysis", "cam", "segment"):
            self._cancel(channel)
        self._outcome = None
        self._heatmap = None
        self._masks = []
        self.heatmap_changed.emit(None)
        self.masks_changed.emit([])
        self._set_state(AnalysisState())

    def _on_analysis_item(self, req: AnalysisRequest, item: tuple[str, Any]) -> None:
        kind, value = item
        if not self._is_current("analysis", req.generation, req.record):
            return
        if kind == "progress":
            self.progress.emit(value)
            self._set_state(replace(self._state, message=value))
            return
        outcome: AnalysisOutcome = value
        self._set_summaries(outcome.bundles)
        self._outcome = outcome
        self._publish(outcome)
        if self.auto_cam:
            label, model = self._auto_cam_target(self._state)
            if label is not None:
                self.request_cam(label, model)

    def _publish(self, outcome: AnalysisOutcome) -> None:
        r = outcome.result
        load_errors = tuple(f"{s.display_name or s.path.name}: {s.error}" for s in outcome.bundles if s.error)
        message = ""
        if not r.models:
            classifiers = [s for s in outcome.bundles if s.task in ("multilabel", "binary", "multiclass")]
            if any(s.enabled and s.error for s in outcome.bundles) and not any(s.loaded for s in classifiers):
                message = NOT_LOADED_MESSAGE
            elif classifiers and not any(s.enabled for s in classifiers):
                message = NO_ENABLED_MESSAGE
            elif outcome.bundles:
                others = ", ".join(s.display_name for s in outcome.bundles)
                message = f"No finding model installed (only {others}) — add one in Tools › Models…"
            else:
                message = NO_MODELS_MESSAGE
        state = AnalysisState(
            status="done", findings=(), qc=r.qc, models=r.models, warnings=r.warnings,
            load_errors=load_errors, message=message, device=outcome.device,
            unavailable_cam=dict(outcome.unavailable_cam),
        )
        self._state = state  # model_sha() needs the models before thresholds are read
        state = replace(state, findings=self._judged(r.findings))
        self.session.set_findings(state.findings)
        self._set_state(state)

    def _auto_cam_target(self, state: AnalysisState) -> tuple[str | None, str | None]:
        findings = list(state.findings)
        if not findings:
            return None, None
        if self._cam_label is not None:
            for f in findings:
                if f.label == self._cam_label and (self._cam_model in (None, f.model)):
                    return f.label, f.model
        # validated classifier findings first: a derived score (validated False) is shown only when asked for
        best = max(findings, key=lambda f: (f.trained, f.validated is not False, f.positive, f.score))
        return best.label, best.model

    def _on_cam_item(self, gen: int, record: ImageRecord, item: tuple[str, Any]) -> None:
        kind, value = item
        if not self._is_current("cam", gen, record):
            return
        if kind == "progress":
            self.progress.emit(value)
            return
        heat: Heatmap = value
        self._heatmap = heat
        self.faithfulness_pending = kind == "heatmap"
        old = self.session.heatmap
        prefs = self.session
        layer = HeatmapLayer(
            data=heat.values,
            label=heat.label,
            method=heat.method,
            faithfulness=heat.faithfulness,
            colormap=old.colormap if old is not None else str(prefs.preference("heatmap_colormap")),
            opacity=old.opacity if old is not None else float(prefs.preference("heatmap_opacity")),
            threshold=old.threshold if old is not None else self.heatmap_cutoff,
            visible=old.visible if old is not None else True,
        )
        self.session.set_heatmap(layer)
        self.heatmap_changed.emit(heat)

    def _on_segment_item(self, gen: int, record: ImageRecord, item: tuple[str, Any]) -> None:
        kind, value = item
        if not self._is_current("segment", gen, record):
            return
        if kind == "progress":
            self.progress.emit(value)
            return
        self._masks = list(value)
        self.masks_changed.emit(list(self._masks))

    def _on_worker_error(self, channel: str, gen: int, record: ImageRecord, exc: BaseException) -> None:
        if isinstance(exc, AnalysisCancelledError) or not self._is_current(channel, gen, record):
            return
        self.progress.emit("")
        if channel == "segment" and isinstance(exc, NoSegmentationModelError):
            self.segment_failed.emit(exc.message)
            return
        if channel == "analysis":
            self._set_state(AnalysisState(status="error", message=_message(exc)))
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

