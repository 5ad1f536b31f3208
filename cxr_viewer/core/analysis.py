"""The analysis service without Qt: requests, generations, cancellation, per-image results, user thresholds.

Shaped like napari's layer slicer: an immutable request is built on the caller's thread (the
record, the model folders, the disabled models, the device); the one executor of long work
(:class:`cxr_viewer.core.executor.Executor`) runs it (the ``run_*`` generators below, which
yield ``(kind, value)`` items); a newer request of the same kind supersedes the older one
(its :class:`CancelToken` fires and its generation is no longer current), and whatever an
old request still returns is dropped. The Qt layer (:mod:`cxr_viewer.qt.analysis`) only
adapts this to signals and fills :class:`Settings` with QSettings.

Models (and the text encoder) load lazily, in the worker, on first use. The
:class:`ModelPool` that owns them is touched by the worker thread only.

A process has ONE :class:`ModelService`: one pool, one engine, one model thread that
runs every model call in the order asked (the viewer, the worklist, current | prior and
the site wizard all queue on it). The window's composition root builds it and passes
it to each feature. With a :class:`ResultCache` (the worklist's result store), a film
whose results are stored is shown from the store instead of being scored again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from psygnal import Signal

from cxr_viewer.core.errors import CXRError, NoSegmentationModelError
from cxr_viewer.core.inference.results import AnalysisResult, CancelToken, Finding, Heatmap, QCFlag
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.models.ref import ModelRef

if TYPE_CHECKING:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.judging import JudgedResult
    from cxr_viewer.core.inference.segment import Segmenter

log = logging.getLogger(__name__)

__all__ = [
    "DEVICES",
    "AnalysisOutcome",
    "AnalysisRequest",
    "AnalysisState",
    "BundleSummary",
    "ModelConfig",
    "ModelPool",
    "ModelService",
    "ResultCache",
    "Settings",
    "StudyAnalysis",
    "UserThresholds",
    "default_model_dirs",
    "model_enabled",
    "site_adjusted",
    "run_analysis",
    "run_cam",
    "run_segment",
    "threshold_key",
    "validate_bundle",
]

DEVICES = ("auto", "cpu", "cuda", "mps")


class Settings(Protocol):
    """Where the user's choices persist: the Qt layer passes QSettings (see ``qt.analysis.QtSettings``)."""

    def value(self, key: str, default: Any = None) -> Any: ...

    def set_value(self, key: str, value: Any) -> None: ...

    def remove(self, key: str) -> None: ...


class MemorySettings:
    """A :class:`Settings` in a dict (headless use and tests)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set_value(self, key: str, value: Any) -> None:
        self.data[key] = value

    def remove(self, key: str) -> None:
        self.data.pop(key, None)


def default_model_dirs(models_dir: Path | None = None) -> tuple[Path, ...]:
    """Folders scanned for bundles: ``--models DIR`` (else the shipped models) and the user's folder."""
    from cxr_viewer.core.paths import default_models_dir, user_models_dir

    first = Path(models_dir) if models_dir is not None else default_models_dir()
    user = user_models_dir()
    return (first,) if first.resolve() == user.resolve() else (first, user)


def threshold_key(name: str, sha256: str, label: str) -> str:
    """QSettings key of a user threshold: per bundle name + weights hash, so new weights start fresh."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return f"thresholds/{name}@{str(sha256).lower()[:16]}/{safe}"


# --------------------------------------------------------------------------- requests and results
@dataclass(frozen=True)
class ModelConfig:
    """Which models to use and where: part of every request, so the worker never reads settings."""

    dirs: tuple[Path, ...]
    disabled: frozenset[str] = frozenset()
    device: str = "auto"
    backend: str = "auto"
    enabled: frozenset[str] = frozenset()  # switched on by the user although the bundle ships switched off


def model_enabled(manifest: Any, disabled: frozenset[str] | set[str] = frozenset(),
                  enabled: frozenset[str] | set[str] = frozenset()) -> bool:  # fmt: skip
    """Whether a bundle runs: the user's choice (switched off / on by name) over the manifest's ``enabled``.

    A site fine-tune is installed switched off (``enabled: false``) until the user enables it.
    """
    if manifest.name in disabled:
        return False
    return True if manifest.name in enabled else bool(manifest.enabled)


@dataclass(frozen=True)
class BundleSummary:
    """What the GUI needs to know about an available bundle (no weights, no torch): its identity
    (:class:`~cxr_viewer.core.models.ref.ModelRef`; an unusable bundle is named by its folder) and its state."""

    ref: ModelRef
    path: Path
    enabled: bool = True
    loaded: bool = False
    error: str | None = None
    replaces: str = ""  # a site version: the name of the bundle it was fine-tuned from (kept for rollback)

    name = property(lambda self: self.ref.name)
    version = property(lambda self: self.ref.version)
    task = property(lambda self: self.ref.task)
    trained = property(lambda self: self.ref.trained)
    sha256 = property(lambda self: self.ref.sha256)
    display_name = property(lambda self: self.ref.display_name)


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
    overlays: tuple[tuple[str, str], ...] = ()  # (label, model) of research overlays: maps on request, not findings


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
    overlays: tuple[tuple[str, str], ...] = ()  # (label, model) of research overlays: maps on request, not findings
    site_profile: dict[str, Any] | None = None  # the site profile applied to these findings (identity)
    site_profile_message: str = ""  # why the active site profile was not applied ("" when it was, or none is active)
    site_profile_stale: bool = False  # not applied because the bundle's weights changed since it was fitted
    judged: Any = None  # the JudgedResult these findings come from (cxr_viewer.core.judging): what exports file

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


NO_MODELS_MESSAGE = "No models installed — add a bundle in Tools › Models…"
NO_ENABLED_MESSAGE = "All finding models are switched off — enable one in Tools › Models…"
NOT_LOADED_MESSAGE = "No finding model could be loaded — see Tools › Models… for the reason"


def analysis_state(outcome: AnalysisOutcome, judged: "JudgedResult") -> AnalysisState:
    """What the findings panel shows for ``outcome`` as ``judged``; a message says why no finding model ran."""
    r = judged.result
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
    return AnalysisState(
        status="done", findings=r.findings, qc=r.qc, models=r.models, warnings=r.warnings,
        load_errors=load_errors, message=message, device=outcome.device,
        unavailable_cam=dict(outcome.unavailable_cam), overlays=outcome.overlays, site_profile=r.site_profile,
        site_profile_message=judged.site_profile_message, site_profile_stale=judged.site_profile_stale, judged=judged,
    )


class StudyAnalysis:
    """The current film's analysis state, held once: the outcome, its judged state, the heatmap and the masks.

    Part of the :class:`~cxr_viewer.core.workspace.Workspace`; the findings panel, the canvas,
    the exports and current | prior read it, and the Qt controller only adapts its events.
    Mutated from one thread (the GUI thread), like the session.
    """

    state_changed = Signal(object)  # AnalysisState
    heatmap_changed = Signal(object)  # core Heatmap | None
    masks_changed = Signal(object)  # list[Mask] of the current report phrases
    models_changed = Signal(object)  # tuple[BundleSummary, ...]

    def __init__(self) -> None:
        self.outcome: AnalysisOutcome | None = None  # the model outputs, kept to judge again (never rescored)
        self._state = AnalysisState()
        self._heatmap: Heatmap | None = None
        self.faithfulness_pending = False  # a score for the heatmap shown is still being computed
        self._masks: list[Any] = []
        self._bundles: tuple[BundleSummary, ...] = ()

    @property
    def state(self) -> AnalysisState:
        return self._state

    @property
    def heatmap(self) -> Heatmap | None:
        return self._heatmap

    @property
    def masks(self) -> list[Any]:
        return list(self._masks)

    @property
    def bundles(self) -> tuple[BundleSummary, ...]:
        return self._bundles

    def set_state(self, state: AnalysisState) -> None:
        self._state = state
        self.state_changed.emit(state)

    def clear(self) -> None:
        """A new film: nothing of the previous one stays."""
        self.outcome, self._heatmap, self._masks, self.faithfulness_pending = None, None, [], False
        self.heatmap_changed.emit(None)
        self.masks_changed.emit([])
        self.set_state(AnalysisState())

    def start(self, message: str = "Analysing…") -> None:
        self.outcome = None
        self.set_state(AnalysisState(status="running", message=message))

    def progress(self, message: str) -> None:
        self.set_state(replace(self._state, message=message))

    def fail(self, message: str) -> None:
        self.set_state(AnalysisState(status="error", message=message))

    def set_outcome(self, outcome: AnalysisOutcome, judged: "JudgedResult") -> None:
        """The worker's outcome for the current film, as judged now (and again with :meth:`rejudge`)."""
        self.set_bundles(outcome.bundles)
        self.outcome = outcome
        self.set_state(analysis_state(outcome, judged))

    def rejudge(self, judge: Callable[[AnalysisResult], "JudgedResult"]) -> None:
        """Judge the kept outcome again (a threshold or the site profile changed): nothing is scored."""
        if self.outcome is not None:
            self.set_state(analysis_state(self.outcome, judge(self.outcome.result)))

    def model_threshold(self, model: str, label: str) -> float | None:
        """The threshold the model itself ships for ``label`` (None before any result)."""
        raw = None if self.outcome is None else self.outcome.result.finding(label, model)
        return None if raw is None else raw.threshold

    def set_bundles(self, bundles: Sequence[BundleSummary]) -> None:
        self._bundles = tuple(bundles)
        self.models_changed.emit(self._bundles)

    def set_heatmap(self, heatmap: Heatmap | None, *, pending: bool = False) -> None:
        """The heatmap shown (``pending``: its faithfulness score is still being computed)."""
        self._heatmap, self.faithfulness_pending = heatmap, bool(pending and heatmap is not None)
        self.heatmap_changed.emit(heatmap)

    def set_masks(self, masks: Sequence[Any]) -> None:
        self._masks = list(masks)
        self.masks_changed.emit(list(self._masks))


# --------------------------------------------------------------------------- worker side
class ResultCache(Protocol):
    """Results kept across requests and runs (the worklist's SQLite store), read before a film is scored."""

    def stored_result(self, record: ImageRecord, engine: "InferenceEngine") -> AnalysisResult | None:
        """The result ``engine`` would give ``record``, when every model's findings are stored; else None."""
        ...

    def keep_result(self, record: ImageRecord, result: AnalysisResult) -> None: ...


class ModelPool:
    """Bundles found on disk and loaded on first use. Only the worker thread calls it."""

    def __init__(self) -> None:
        self._engine: InferenceEngine | None = None
        self._config: ModelConfig | None = None
        self.summaries: tuple[BundleSummary, ...] = ()
        self.results: ResultCache | None = None  # stored results, read before scoring a film

    @property
    def engine(self) -> "InferenceEngine | None":
        return self._engine

    def sync(self, config: ModelConfig, progress: Callable[[str], None] | None = None) -> "InferenceEngine":
        """Make the engine hold exactly the enabled, loadable bundles of ``config`` (loading lazily).

        Without torch (the small CPU app) the engine and bundles are the ONNX lane's; same calls.
        """
        from cxr_viewer.core.inference.engine import InferenceEngine
        from cxr_viewer.core.models.bundle import find_bundles

        old = self._config
        if self._engine is None or old is None or (old.device, old.backend) != (config.device, config.backend):
            if progress:
                progress("Preparing the models…")
            self._engine = InferenceEngine(None, device=config.device, backend=config.backend)
        self._config = config
        engine = self._engine
        infos = find_bundles(config.dirs)
        wanted: list[Any] = []
        summaries: list[BundleSummary] = []
        for info in infos:
            m = info.manifest
            if m is None:
                summaries.append(BundleSummary(ModelRef(info.path.name, "", "", trained=False), info.path, False, False,
                                               info.error))  # fmt: skip
                continue
            enabled = model_enabled(m, config.disabled, config.enabled)
            summaries.append(BundleSummary(m.ref, info.path, enabled, replaces=m.replaces))
            if enabled:
                wanted.append(info)
        wanted_keys = {(i.manifest.name, str(i.manifest.weights.get("sha256", "")).lower()) for i in wanted}
        for b in engine.bundles:
            if (b.name, b.sha256) not in wanted_keys:
                engine.remove_bundle(b.name)
        loaded = {(b.name, b.sha256) for b in engine.bundles}
        errors: dict[Path, str] = {}
        for info in wanted:
            m = info.manifest
            if (m.name, str(m.weights.get("sha256", "")).lower()) in loaded:
                continue
            if progress:
                progress(f"Loading model {m.display_name}…")
            try:
                engine.add_bundle(engine.load(info.path))
            except CXRError as exc:
                log.warning("model bundle %s not loaded: %s", info.path.name, exc.message)
                errors[info.path] = exc.message
        if len(engine.bundles) > len(loaded):
            engine.prepare()  # the new models' sessions side by side, before the first image needs them
        names = {(b.name, b.sha256) for b in engine.bundles}
        self.summaries = tuple(
            replace(s, loaded=(s.name, s.sha256) in names, error=errors.get(s.path, s.error)) for s in summaries
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
        if progress:
            progress(f"Loading the text encoder for {b.manifest.display_name}…")
        return engine.segmenter(b)  # one segmenter per bundle, held by the engine

    def stored(self, engine: "InferenceEngine", record: ImageRecord) -> AnalysisResult | None:
        """``record``'s result as kept in :attr:`results` for the models ``engine`` holds, or None."""
        return self.results.stored_result(record, engine) if self.results is not None else None

    def result(self, engine: "InferenceEngine", record: ImageRecord, *,
               cancel: CancelToken | None = None) -> AnalysisResult:  # fmt: skip
        """``record``'s result: the stored one when every model's findings are kept, else scored (and kept)."""
        stored = self.stored(engine, record)
        if stored is not None:  # scored before (the worklist, an earlier visit): shown from the store
            return stored
        result = engine.analyze(record, cancel=cancel)
        if self.results is not None:
            self.results.keep_result(record, result)
        return result

    def engine_with(self, bundle_path: Path, config: ModelConfig | None = None) -> tuple["InferenceEngine", Any]:
        """The pool's engine holding the bundle at ``bundle_path`` (loaded into it when it is not), and that bundle.

        For a model the reader may have switched off (the site wizard measures any installed bundle):
        it joins the same engine and leaves it at the next :meth:`sync` that does not want it.
        """
        from cxr_viewer.core.models.bundle import read_manifest

        engine = self._engine
        if engine is None:
            engine = self.sync(config or ModelConfig(()))  # an empty engine on the default device
        sha = str(read_manifest(bundle_path).weights.get("sha256", "")).lower()
        for b in engine.bundles:
            if b.sha256.lower() == sha:
                return engine, b
        bundle = engine.load(bundle_path)
        engine.add_bundle(bundle)
        return engine, bundle


class ModelService:
    """The process's one model pool and engine behind one worker queue (a single model thread).

    :meth:`call` runs ``fn(pool, ...)`` on the model thread and waits for it; :meth:`iterate`
    runs a ``run_*`` generator there one step at a time, so a long worklist batch and the
    viewer's next film take turns, in the order asked, instead of running side by side.
    Called from the model thread itself, both run inline.
    """

    def __init__(self, pool: ModelPool | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = pool if pool is not None else ModelPool()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-models",
                                            initializer=self._mark_thread)
        self._thread: int | None = None

    def _mark_thread(self) -> None:
        self._thread = threading.get_ident()

    @property
    def on_model_thread(self) -> bool:
        return threading.get_ident() == self._thread

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(pool, *args, **kwargs)`` on the model thread, after what was asked before it; its result."""
        if self.on_model_thread:
            return fn(self.pool, *args, **kwargs)
        return self._executor.submit(fn, self.pool, *args, **kwargs).result()

    def iterate(self, fn: Callable[..., Iterator[Any]], *args: Any) -> Iterator[Any]:
        """The items of the generator ``fn(pool, *args)``, each step run on the model thread."""
        gen = fn(self.pool, *args)
        done = object()
        try:
            while True:
                item = self.call(lambda _pool: next(gen, done))
                if item is done:
                    return
                yield item
        finally:
            gen.close()

    def use_results(self, cache: ResultCache | None) -> None:
        """Read (and keep) results in ``cache`` before scoring a film (the worklist's store)."""
        self.pool.results = cache

    def shutdown(self) -> None:
        """Drop what is queued; a model call already running finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def run_analysis(pool: ModelPool, req: AnalysisRequest) -> Iterator[tuple[str, Any]]:
    """Worker: load what is needed, then score the image. Yields ("progress", text) then ("outcome", ...)."""
    msgs: list[str] = []
    req.token.raise_if_cancelled()
    engine = pool.sync(req.config, msgs.append)
    yield from (("progress", m) for m in msgs)
    req.token.raise_if_cancelled()
    stored = pool.stored(engine, req.record)
    if stored is None:
        names = [b.name for b in engine.classifiers]
        if names:
            yield "progress", "Analysing with " + ", ".join(names) + "…"
    result = stored or pool.result(engine, req.record, cancel=req.token)
    yield "outcome", AnalysisOutcome(req.generation, req.record, result, pool.summaries, str(engine.device),
                                     unavailable_cam(engine), tuple(engine.research_overlays()))


def unavailable_cam(engine: "InferenceEngine") -> dict[str, dict[str, str]]:
    """Per classifier, the heatmap methods this process cannot draw and why (torch-free app: the gradient ones)."""
    return {b.name: engine.unavailable_cam_methods(b) for b in engine.classifiers}


def run_cam(
    pool: ModelPool, config: ModelConfig, record: ImageRecord, label: str, model: str | None, method: str,
    faithfulness: bool, token: CancelToken,
) -> Iterator[tuple[str, Any]]:
    """Worker: the heatmap first (fast), then, when asked, the same map with its faithfulness score.

    The last item is ("heatmap_final", ...): after it nothing more comes for this map
    (the torch-free engine leaves faithfulness at None). ROAD runs at model resolution on the
    cached model input and checks ``token`` between its steps, so a newer request (the next
    image) waits at most one imputation for the worker.
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
    yield "heatmap_final", engine.faithfulness(record, heat, cancel=token)


def run_segment(
    pool: ModelPool, config: ModelConfig, record: ImageRecord, phrases: tuple[str, ...], token: CancelToken
) -> Iterator[tuple[str, Any]]:
    token.raise_if_cancelled()
    msgs: list[str] = []
    seg = pool.segmenter(config, msgs.append)
    yield from (("progress", m) for m in msgs)
    yield "progress", f"Drawing {len(phrases)} phrase(s)…"
    yield "masks", seg.segment(record, list(phrases), cancel=lambda: token.cancelled)


def validate_bundle(path: Path) -> Any:
    """Worker: hash-check and rebuild a bundle before it is copied (returns its manifest)."""
    from cxr_viewer.core.models.bundle import load_bundle

    return load_bundle(path, device="cpu").manifest


def site_adjusted(profile: Any, result: AnalysisResult) -> tuple[AnalysisResult, str, bool]:
    """``result`` with the active site profile applied, or unchanged with the reason it is not.

    The judging step's own site-profile stage (:func:`cxr_viewer.core.judging.apply_site_profile_safely`).
    """
    from cxr_viewer.core.judging import apply_site_profile_safely

    return apply_site_profile_safely(profile, result)


class UserThresholds:
    """The user's operating thresholds, persisted per bundle name + weights hash (new weights start fresh).

    Scores are never recomputed for a threshold change: findings are judged again.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get(self, model: str, sha256: str, label: str) -> float | None:
        value = self.settings.value(threshold_key(model, sha256, label))
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    def set(self, model: str, sha256: str, label: str, value: float | None) -> None:
        key = threshold_key(model, sha256, label)
        if value is None:
            self.settings.remove(key)
            return
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise ValueError("a threshold lies between 0 and 1")
        self.settings.set_value(key, v)

    def judged(self, findings: Sequence[Finding], sha_of: Callable[[str], str]) -> tuple[Finding, ...]:
        """``findings`` with the user's threshold in force where one is set."""
        out = []
        for f in findings:
            user = self.get(f.model, sha_of(f.model), f.label)
            out.append(f.with_threshold(user, "user") if user is not None else f)
        return tuple(out)
