"""A triage worklist: every image of a folder (or arriving over DICOM) analysed once, sorted by urgency.

Results come from the :class:`~cxr_viewer.core.worklist.store.ResultStore`, keyed by
(analysis key, model sha256), the analysis key being the pixels, the default window and the header
fields the analysis reads (:func:`~cxr_viewer.core.inference.inputs.analysis_key`): an unchanged file is not even decoded again, a copied
file finds its results by content, and a changed model recomputes only its own
findings. The engine is created only when something is missing, so reopening a
folder that is fully analysed loads no model at all.

The abnormality score that sorts the list is the score of a finding named
``Abnormal`` when a model predicts one; otherwise the highest finding score
(of trained, validated findings when there are any). :attr:`Worklist.basis`
says which, and the CSV header carries it.

With a site profile (:attr:`Worklist.site_profile`) the findings of its bundle carry the
profile's calibrated score and site threshold, by the same rule the viewer and ``analyze``
use (:func:`cxr_viewer.core.analysis.site_adjusted`); the abnormality, the order and the
CSV follow them. The store keeps the model's own scores, so a profile changed or dropped
recomputes nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import AnalysisCancelledError, CXRError
from cxr_viewer.core.inference.results import CancelToken, Finding, QCFlag
from cxr_viewer.core.models.ref import ModelRef
from cxr_viewer.core.worklist.store import ResultStore

if TYPE_CHECKING:
    from cxr_viewer.core.analysis import ModelConfig, ModelService
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.results import AnalysisResult
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.judging import JudgedResult

log = logging.getLogger(__name__)

__all__ = [
    "ABNORMAL_LABEL",
    "Worklist",
    "WorklistEntry",
    "abnormality",
    "default_store_path",
    "worklist_table",
    "write_csv",
]

#: A model finding with this label is the abnormality score when one exists.
ABNORMAL_LABEL = "Abnormal"
#: Read errors that mean "a DICOM object that is no image" (an SR or a PDF beside the films): left out, not listed.
_NOT_AN_IMAGE = {"no_pixel_data", "result_object"}
_RESULT_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.104.1")  # SEG, Encapsulated PDF


def _is_result_object(record: Any) -> bool:
    """A SEG, SR or PDF, or a Secondary Capture this viewer wrote: results, not films to triage."""
    ds = record.header
    if ds is None:
        return False
    sop = str(ds.get("SOPClassUID", ""))
    if sop in _RESULT_CLASSES or sop.startswith("1.2.840.10008.5.1.4.1.1.88."):
        return True
    from cxr_viewer.core.export.dicom_results import MANUFACTURER

    return str(ds.get("Manufacturer", "")) == MANUFACTURER


def default_store_path() -> Path:
    """The per-user store: ``CXR_VIEWER_WORKLIST_DB``, else the user cache folder."""
    env = os.environ.get("CXR_VIEWER_WORKLIST_DB")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cxr-viewer" / "worklist.sqlite"


@dataclass(frozen=True)
class WorklistEntry:
    """One image in the worklist. ``computed`` lists the models that ran for it in this call."""

    path: Path
    content_hash: str | None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    qc: tuple[QCFlag, ...] = ()
    findings: tuple[Finding, ...] = ()
    read: bool = False
    error: str | None = None
    computed: tuple[str, ...] = ()
    site_profile: dict[str, Any] | None = None  # the site profile applied to ``findings`` (identity), if any
    analysis_key: str | None = None  # what its findings and QC are stored under (pixels, window and header)
    judged: "JudgedResult | None" = field(default=None, repr=False, compare=False)  # what ``findings`` come from

    def state(self, model: str, label: str) -> Any:
        """The :class:`~cxr_viewer.core.inference.results.FindingState` of one finding (None when not scored)."""
        if self.judged is not None:
            j = self.judged.get(label, model)
            return None if j is None else j.state
        f = next((f for f in self.findings if f.model == model and f.label == label), None)
        return None if f is None else f.state

    @property
    def ok(self) -> bool:
        return self.error is None

    @cached_property  # read on every sort comparison of the worklist view
    def abnormality(self) -> float | None:
        return abnormality(self.findings)[0]

    @property
    def patient(self) -> str:
        name = str(self.metadata.get("patient_name") or "").replace("^", " ").strip()
        return name or str(self.metadata.get("patient_id") or "")

    @property
    def study_date(self) -> str:
        da = str(self.metadata.get("study_date") or "")
        return f"{da[:4]}-{da[4:6]}-{da[6:]}" if len(da) == 8 and da.isdigit() else da

    @property
    def modality_view(self) -> str:
        parts = [str(self.metadata.get(k) or "") for k in ("modality", "view_position")]
        return " ".join(p for p in parts if p) or str(self.metadata.get("format") or "").upper()

    @property
    def qc_text(self) -> str:
        bad = [q.code for q in self.qc if q.severity in ("warning", "error")]
        return ", ".join(bad) if bad else ("ok" if self.ok else "")

    def sort_key(self) -> tuple[float, str]:
        """Highest abnormality first; failed and unscored images last."""
        score = self.abnormality
        return (-(score if score is not None else -1.0), str(self.path))


def abnormality(findings: Sequence[Finding]) -> tuple[float | None, str]:
    """(score, basis): the ``Abnormal`` finding's score if any, else the highest finding score.

    A derived score that is not validated (``validated is False``) or an untrained
    model's score counts only when nothing else was scored.
    """
    for f in findings:
        if f.label == ABNORMAL_LABEL:
            return float(f.score), ABNORMAL_LABEL
    if not findings:
        return None, "max finding score"
    solid = [f for f in findings if f.trained and f.validated is not False]
    return max(float(f.score) for f in (solid or findings)), "max finding score"


def _is_scoring(manifest: Any) -> bool:
    return bool(manifest.is_classifier or manifest.derived("finding"))


class Worklist:
    """Analyses images through the store; thread-safe (one analysis at a time).

    ``engine``: use this engine's classifiers (and derived-finding bundles). Without it,
    the bundles of ``model_dirs`` (default: the app's and the user's) are read by
    manifest only, and an engine is built from them the first time a result is missing.
    Models named in ``disabled`` (switched off in the viewer) are left out.

    ``service``: the process's one :class:`~cxr_viewer.core.analysis.ModelService` (the window's);
    missing results are then scored on its engine and queue, and no engine is built here.
    ``user_thresholds``: ``(model, sha256, label) -> threshold or None``, the reader's thresholds,
    the same source the viewer's findings panel judges with. ``config``: the viewer's current
    :class:`~cxr_viewer.core.analysis.ModelConfig` (device, backend, folders, enabled set).
    """

    def __init__(
        self,
        store: ResultStore,
        *,
        model_dirs: Sequence[str | Path] | None = None,
        engine: "InferenceEngine | None" = None,
        device: str = "auto",
        backend: str = "auto",
        disabled: Iterable[str] = (),
        enabled: Iterable[str] = (),
        site_profile: Any = None,
        service: "ModelService | None" = None,
        user_thresholds: Callable[[str, str, str], float | None] | None = None,
        config: "Callable[[], ModelConfig] | None" = None,
    ) -> None:
        self.store = store
        self.service = service
        self.user_thresholds = user_thresholds
        self._config_source = config  # the viewer's model configuration, so both ask the service for one engine
        self.disabled = frozenset(disabled)
        self.enabled = frozenset(enabled)  # switched on by the user although the bundle ships switched off
        self.model_dirs = None if model_dirs is None else [Path(d) for d in model_dirs]
        self.site_profile = site_profile  # a SiteProfile applied to every entry's findings, or None
        self._engine = engine if service is None else None
        # built here from model_dirs (no engine, no service): rebuilt when the enabled set changes
        self._own_engine = engine is None and service is None
        self._device, self._backend = device, backend
        self._lock = threading.RLock()
        self._models: list[ModelRef] | None = None
        self.load_errors: list[str] = []

    # ------------------------------------------------------------------ models
    @property
    def models(self) -> list[ModelRef]:
        """The scoring models every image should have results from."""
        with self._lock:
            if self._models is None:
                self._models = self._expected_models()
            return list(self._models)

    def _expected_models(self) -> list[ModelRef]:
        if self._engine is not None:
            from cxr_viewer.core.inference.engine import finding_specs

            return [b.ref for b in self._engine.bundles
                    if (b.manifest.is_classifier or finding_specs(b)) and b.name not in self.disabled]
        from cxr_viewer.core.analysis import model_enabled
        from cxr_viewer.core.models.bundle import find_bundles

        out = []
        for info in find_bundles(self.model_dirs):
            m = info.manifest
            if info.ok and m is not None and _is_scoring(m) and model_enabled(m, self.disabled, self.enabled):
                out.append(m.ref)
        return out

    def set_models(self, disabled: Iterable[str], enabled: Iterable[str]) -> bool:
        """Follow the user's enabled set (the viewer's model manager); True when it changed.

        The next entries have results from exactly the models now enabled: a newly enabled
        model is computed where the store lacks it, a disabled one's findings are left out.
        An engine built here is dropped and built again on the next missing result.
        """
        disabled, enabled = frozenset(disabled), frozenset(enabled)
        with self._lock:
            if (disabled, enabled) == (self.disabled, self.enabled):
                return False
            self.disabled, self.enabled = disabled, enabled
            self._models = None
            if self._own_engine:
                self._engine = None
            return True

    def site_status(self) -> tuple[str, bool]:
        """Whether :attr:`site_profile` applies to the enabled models: ``(message, stale)``.

        ``message`` is "" when it applies (or there is none); ``stale`` says its bundle is
        installed with other weights (recalibrate). The same rule as every result's.
        """
        judged = self.judged(())
        return judged.site_profile_message, judged.site_profile_stale

    def judged(self, findings: Sequence[Finding], qc: Sequence[Any] = ()) -> "JudgedResult":
        """The stored ``findings`` judged as the viewer's findings panel judges them (:meth:`judge`)."""
        from cxr_viewer.core.inference.results import AnalysisResult

        models = tuple(k.to_dict() for k in self.models)
        return self.judge(AnalysisResult("", tuple(findings), tuple(qc), models))

    def judge(self, result: "AnalysisResult") -> "JudgedResult":
        """THE judging step (:func:`cxr_viewer.core.judging.judge`) with this worklist's site profile and
        the reader's thresholds: the same source the viewer's findings panel uses."""
        from cxr_viewer.core.judging import JudgedResult, by_weights, judge

        lookup = None if self.user_thresholds is None else by_weights(result, self.user_thresholds)
        profile = self.site_profile
        if profile is not None and not result.models:  # nothing enabled: say why rather than nothing
            from cxr_viewer.core.errors import SiteProfileError

            try:
                profile.check_bundle(())
            except SiteProfileError as exc:
                judged = judge(result, user_thresholds=lookup)
                return JudgedResult(judged.result, judged.findings, exc.message, False)
        return judge(result, site_profile=profile, user_thresholds=lookup)

    def config(self) -> "ModelConfig":
        """The models this worklist asks of the model service (the viewer's, when it gave its own)."""
        from cxr_viewer.core.analysis import ModelConfig, default_model_dirs

        if self._config_source is not None:
            return self._config_source()
        dirs = tuple(self.model_dirs) if self.model_dirs is not None else default_model_dirs()
        return ModelConfig(dirs, self.disabled, self._device, self._backend, self.enabled)

    def analyze(self, record: "ImageRecord", *, cancel: CancelToken | None = None,
                models: Sequence[str] | None = None) -> "AnalysisResult":
        """``record`` scored by the enabled models (or those named), on the model service's queue when there is one;
        for every model, with a service, the stored result when there is one (the film is not scored again)."""
        if self.service is not None:
            config = self.config()

            def work(pool: Any) -> "AnalysisResult":
                engine = pool.sync(config)
                if models is None:
                    return pool.result(engine, record, cancel=cancel)
                return engine.analyze(record, cancel=cancel, models=models)

            return self.service.call(work)
        return self.engine().analyze(record, cancel=cancel, models=models)

    def engine(self) -> "InferenceEngine":
        """The engine, built on first need (only when some result is missing).

        With a model service the service's engine is synced to :meth:`config` (on its thread) and given.
        """
        if self.service is not None:
            config = self.config()
            engine = self.service.call(lambda pool: pool.sync(config))
            loaded = {b.sha256.lower() for b in engine.bundles}
            with self._lock:  # a bundle that failed to load is not waited for on every film
                self._models = [k for k in self.models if k.sha256 in loaded]
            return engine
        with self._lock:
            if self._engine is None:
                from cxr_viewer.core.inference.engine import InferenceEngine

                self._engine = InferenceEngine.from_dirs(self.model_dirs, device=self._device, backend=self._backend,
                                                         enabled=self.enabled)
                self.load_errors = [f"{p.name}: {msg}" for p, msg in self._engine.load_errors]
                loaded = {b.sha256.lower() for b in self._engine.bundles}
                self._models = [k for k in self.models if k.sha256 in loaded]
            return self._engine

    @property
    def basis(self) -> str:
        """What the abnormality column is: ``Abnormal`` or ``max finding score``."""
        return self.basis_for(self.models_labels())

    def models_labels(self) -> set[str]:
        with self._lock:
            if self._engine is not None and self.service is None:
                return {lab for b in self._engine.classifiers for lab in b.labels}
        from cxr_viewer.core.models.bundle import find_bundles

        wanted = {k.sha256 for k in self.models}
        return {lab for i in find_bundles(self.model_dirs) if i.manifest is not None
                and str(i.manifest.weights.get("sha256", "")).lower() in wanted for lab in i.manifest.labels}

    @staticmethod
    def basis_for(labels: Iterable[str]) -> str:
        return ABNORMAL_LABEL if ABNORMAL_LABEL in set(labels) else "max finding score"

    # ------------------------------------------------------------------ entries
    def entry(self, path: str | Path, *, cancel: CancelToken | None = None,
              known: dict[str, Any] | None = None) -> WorklistEntry | None:
        """The entry of one file, computing only what the store lacks; None for a non-image file.

        ``known`` is the store's ``files()`` map, when the caller read it once for a whole folder.
        """
        from cxr_viewer.core.io import read_image

        path = Path(path).resolve()
        try:
            st = path.stat()
        except OSError as exc:
            return WorklistEntry(path, None, error=f"cannot be read ({exc.strerror or type(exc).__name__})")
        row = (known.get(str(path)) if known is not None else None) or self.store.file(path)
        record = None
        if row is not None and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns and (
                row.error is not None or row.analysis_key):
            content_hash, metadata, error, key = row.content_hash, row.metadata, row.error, row.analysis_key
        else:
            try:
                record = read_image(path)
            except CXRError as exc:
                self.store.put_file(path, st.st_size, st.st_mtime_ns, None, {}, f"{exc.code}: {exc.message}")
                return None if exc.code in _NOT_AN_IMAGE else WorklistEntry(path, None, error=exc.message)
            if _is_result_object(record):
                self.store.put_file(path, st.st_size, st.st_mtime_ns, None, {}, "result_object: written by an analysis")
                return None
            from cxr_viewer.core.inference.inputs import analysis_key

            content_hash, key = record.content_hash, analysis_key(record)
            metadata = {k: v for k, v in record.metadata.items() if isinstance(v, (str, int, float, type(None)))}
            metadata["format"] = record.format
            error = None
            self.store.put_file(path, st.st_size, st.st_mtime_ns, content_hash, metadata, analysis_key=key)
        if error is not None:
            code, _, message = error.partition(": ")
            return None if code in _NOT_AN_IMAGE else WorklistEntry(path, None, metadata, error=message or error)
        assert content_hash is not None and key is not None
        models = self.models
        have = self.store.findings(key, [k.sha256 for k in models])
        qc = self.store.qc(key)
        missing = [k for k in models if k.sha256 not in have]
        computed: tuple[str, ...] = ()
        if missing or qc is None:
            if record is None:
                try:
                    record = read_image(path)
                except CXRError as exc:
                    return WorklistEntry(path, content_hash, metadata, error=exc.message)
            computed, qc = self._compute(record, key, missing, cancel)
            have = self.store.findings(key, [k.sha256 for k in self.models])
        order = {k.sha256: i for i, k in enumerate(self.models)}
        findings = tuple(f for sha in sorted(have, key=lambda s: order.get(s, 1 << 30)) for f in have[sha])
        judged = self.judged(findings, qc or ())
        return WorklistEntry(path, content_hash, metadata, tuple(qc or ()), judged.result.findings,
                             self.store.is_read(content_hash), None, computed, judged.result.site_profile, key, judged)

    def _compute(self, record: Any, key: str, missing: list[ModelRef],
                 cancel: CancelToken | None) -> tuple[tuple[str, ...], tuple[QCFlag, ...]]:
        def score(engine: "InferenceEngine") -> tuple[set[str], list[str], "AnalysisResult"]:
            loaded = {b.sha256.lower(): b.name for b in engine.bundles}
            names = [loaded[k.sha256] for k in missing if k.sha256 in loaded]
            return set(loaded), names, engine.analyze(record, cancel=cancel, models=names)

        if self.service is not None:  # one turn on the model queue: the engine synced once, then the film scored
            config = self.config()
            loaded, names, result = self.service.call(lambda pool: score(pool.sync(config)))
            with self._lock:  # a bundle that failed to load is not waited for on every film
                self._models = [k for k in self.models if k.sha256 in loaded]
        else:
            _loaded, names, result = score(self.engine())
        self._put(key, result, names)
        return tuple(names), tuple(result.qc)

    def _put(self, key: str, result: "AnalysisResult", names: Iterable[str] | None = None) -> None:
        keep = None if names is None else set(names)
        for m in result.models:
            if keep is None or m["name"] in keep:
                self.store.put_findings(key, m, [f for f in result.findings if f.model == m["name"]])
        self.store.put_qc(key, result.qc)

    # ------------------------------------------------------------------ the model service's result cache
    def stored_result(self, record: "ImageRecord", engine: "InferenceEngine") -> "AnalysisResult | None":
        """The result ``engine`` gives ``record``, read from the store when every scoring model's findings
        are there (None otherwise): opening a worklist study shows what the worklist scored."""
        from cxr_viewer.core.inference.engine import model_warnings
        from cxr_viewer.core.inference.inputs import analysis_key
        from cxr_viewer.core.inference.results import AnalysisResult

        used = [*engine.classifiers, *engine.derived_bundles]
        if not used:
            return None
        key = analysis_key(record)  # the pixels and every header field the analysis reads, as the worklist keys it
        have = self.store.findings(key, [b.sha256.lower() for b in used])
        qc = self.store.qc(key)
        if qc is None or any(b.sha256.lower() not in have for b in used):
            return None
        findings = tuple(f for b in used for f in have[b.sha256.lower()])
        return AnalysisResult(record.content_hash, findings, tuple(qc), tuple(b.describe() for b in used),
                              warnings=model_warnings(used), cached=True,
                              backend={b.name: engine.backend_for(b) for b in used})

    def keep_result(self, record: "ImageRecord", result: "AnalysisResult") -> None:
        """Store what the viewer scored, so the worklist (and the next visit) finds it."""
        if result.models:
            from cxr_viewer.core.inference.inputs import analysis_key

            self._put(analysis_key(record), result)

    def iter_folder(self, folder: str | Path, *, cancel: CancelToken | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Iterator[WorklistEntry]:
        """Every image under ``folder``, in file order, computed through the store."""
        from cxr_viewer.core.io.scan import iter_image_files

        files, _skipped = iter_image_files(folder)
        known = self.store.files()
        for i, f in enumerate(files):
            if cancel is not None and cancel.cancelled:
                raise AnalysisCancelledError("The worklist analysis was cancelled.")
            e = self.entry(f, cancel=cancel, known=known)
            if progress is not None:
                progress(i + 1, len(files))
            if e is not None:
                yield e

    def open_folder(self, folder: str | Path, *, cancel: CancelToken | None = None) -> list[WorklistEntry]:
        """The folder's entries, sorted highest abnormality first."""
        return sorted(self.iter_folder(folder, cancel=cancel), key=WorklistEntry.sort_key)

    def mark_read(self, entry: WorklistEntry, read: bool = True) -> WorklistEntry:
        if entry.content_hash is None:
            return entry
        self.store.set_read(entry.content_hash, read)
        from dataclasses import replace

        return replace(entry, read=read)


# --------------------------------------------------------------------------- the table
def finding_columns(entries: Iterable[WorklistEntry]) -> list[tuple[str, str]]:
    """(model, label) of every finding seen, in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for e in entries:
        for f in e.findings:
            seen.setdefault((f.model, f.label), None)
    return list(seen)


def site_column_titles(entries: Iterable[WorklistEntry], columns: Sequence[tuple[str, str]]) -> list[str]:
    """:func:`column_titles`, a recalibrated column naming its site profile: ``Effusion (site profile ward-3 v1)``."""
    site: dict[tuple[str, str], str] = {}
    for e in entries:
        if e.site_profile:
            for f in e.findings:
                if f.raw_score is not None:
                    site.setdefault((f.model, f.label), str(e.site_profile.get("id", "")))
    return [t if c not in site else f"{t} (site profile {site[c]})" for c, t in zip(columns, column_titles(columns))]


def column_titles(columns: Sequence[tuple[str, str]]) -> list[str]:
    """A finding column is titled by its label, with the model added when two models share it."""
    labels = [lab for _m, lab in columns]
    return [lab if labels.count(lab) == 1 else f"{lab} ({model})" for model, lab in columns]


def worklist_table(entries: Sequence[WorklistEntry], *, basis: str, hide_patient: bool = False
                   ) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the worklist, sorted highest abnormality first (what the CSV and the view show).

    Each finding has its score column, then (after all scores) its state column: the one judged state
    (:class:`~cxr_viewer.core.judging.JudgedResult`) the viewer's findings panel shows for the film.
    """
    from cxr_viewer.core.judging import STATE_TEXT

    cols = finding_columns(entries)
    profiles = sorted({str(e.site_profile.get("id", "")) for e in entries if e.site_profile})
    basis_text = basis + "".join(f"; site profile {p}" for p in profiles)
    header = ["file"] + ([] if hide_patient else ["patient"]) + [
        "study date", "modality/view", "QC", f"abnormality ({basis_text})", "read"] + site_column_titles(entries, cols)
    header += [f"{t} state" for t in column_titles(cols)]  # the judged state, as the findings panel shows it
    rows = []
    for e in sorted(entries, key=WorklistEntry.sort_key):
        by = {(f.model, f.label): f for f in e.findings}
        score = e.abnormality
        row: list[Any] = [str(e.path)] + ([] if hide_patient else [e.patient]) + [
            e.study_date, e.modality_view, e.qc_text if e.ok else f"error: {e.error}",
            "" if score is None else f"{score:.4f}", "yes" if e.read else ""]
        row += [f"{by[c].score:.4f}" if c in by else "" for c in cols]
        states = [e.state(*c) for c in cols]
        row += [STATE_TEXT[st] if st is not None else "" for st in states]
        rows.append(row)
    return header, rows


def write_csv(path: str | Path, entries: Sequence[WorklistEntry], *, basis: str, hide_patient: bool = False) -> Path:
    from cxr_viewer.core.csvio import write_csv_rows

    header, rows = worklist_table(entries, basis=basis, hide_patient=hide_patient)
    return write_csv_rows(path, header, rows)
