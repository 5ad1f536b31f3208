"""The reader's workspace without Qt: the current study and its analysis, which models run, the active site
profile, the thresholds, the corrections.

One :class:`Workspace` per window, evented with psygnal (like napari's ``ViewerModel``):
the Qt controllers (the analysis controller, the worklist, the site calibration hook)
read it and listen to it instead of holding their own copies, so setting the site profile
or a threshold once reaches every surface. It holds the :class:`~cxr_viewer.core.session.Session`
(the film shown, its display, overlays and measurements) and the film's
:class:`~cxr_viewer.core.analysis.StudyAnalysis` (its outcome, judged once by :meth:`Workspace.judge`,
its heatmap and masks); a new threshold or site profile judges that outcome again here.
Persistence goes through a :class:`~cxr_viewer.core.analysis.Settings` (the Qt layer passes QSettings).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from psygnal import Signal

from cxr_viewer.core.analysis import Settings, StudyAnalysis, UserThresholds
from cxr_viewer.core.session import Session

if TYPE_CHECKING:
    from cxr_viewer.core.inference.results import AnalysisResult
    from cxr_viewer.core.judging import JudgedResult

__all__ = ["Workspace", "parse_threshold"]


def parse_threshold(spec: str) -> tuple[str | None, str, float]:
    """``[MODEL:]LABEL=VALUE`` (a command line's ``--threshold``) -> ``(model or None, label, value)``.

    Raises ValueError with a message that names the expected form.
    """
    head, sep, value = str(spec).rpartition("=")
    model, _, label = head.rpartition(":") if ":" in head else ("", "", head)
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not sep or not label.strip() or not 0.0 <= v <= 1.0:
        raise ValueError(f"--threshold {spec!r}: write [MODEL:]LABEL=VALUE with a value between 0 and 1, "
                         "e.g. --threshold Effusion=0.3 or --threshold chest-resnet18:Effusion=0.3")
    return (model.strip() or None), label.strip(), v


def _names(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        value = [value] if value else []
    return frozenset(str(v) for v in (value or []) if v)


def _same_label(a: str, b: str) -> bool:
    def norm(text: str) -> str:
        return " ".join(text.replace("_", " ").replace("-", " ").split()).casefold()

    return norm(a) == norm(b)


class Workspace:
    """The current study and its analysis, the enabled models, the active site profile, the user's thresholds
    and the corrections store."""

    #: the enabled set changed (a model switched on or off, a site version used or rolled back)
    models_changed = Signal()
    #: the active site profile (a SiteProfile, or None)
    site_profile_changed = Signal(object)
    #: a threshold was set or reset: (model, label)
    thresholds_changed = Signal(str, str)

    def __init__(self, settings: Settings, *, corrections: Any = None, session: Session | None = None) -> None:
        self.settings = settings
        self.thresholds = UserThresholds(settings)
        self._site_profile: Any = None
        self._corrections = corrections
        #: the film shown: record, display, overlays, measurements, busy work
        self.session = session if session is not None else Session()
        #: that film's analysis: the outcome, its judged state, the heatmap and the masks
        self.analysis = StudyAnalysis()
        self.session.events.record_changed.connect(self._on_record)
        self.thresholds_changed.connect(self._rejudge)
        self.site_profile_changed.connect(self._rejudge)

    # ------------------------------------------------------------------ the current study
    def _on_record(self, _record: Any) -> None:
        self.analysis.clear()  # nothing of the previous film stays

    def _rejudge(self, *_args: Any) -> None:
        self.analysis.rejudge(self.judge)

    # ------------------------------------------------------------------ models
    @property
    def disabled_models(self) -> frozenset[str]:
        """Bundles the reader switched off (by name)."""
        return _names(self.settings.value("models/disabled", []))

    @property
    def enabled_models(self) -> frozenset[str]:
        """Bundles shipped switched off (a site fine-tune) that the reader switched on."""
        return _names(self.settings.value("models/enabled", []))

    def is_enabled(self, name: str, default: bool = True) -> bool:
        """The reader's choice for ``name``; ``default`` (the manifest's ``enabled``) when they made none."""
        if name in self.disabled_models:
            return False
        return True if name in self.enabled_models else bool(default)

    def set_enabled(self, choices: dict[str, bool]) -> None:
        """Switch models on or off by name (persisted); one ``models_changed``."""
        disabled, switched_on = set(self.disabled_models), set(self.enabled_models)
        for name, on in choices.items():
            (disabled.discard if on else disabled.add)(name)
            (switched_on.add if on else switched_on.discard)(name)
        self.settings.set_value("models/disabled", sorted(disabled))
        self.settings.set_value("models/enabled", sorted(switched_on))
        self.models_changed.emit()

    # ------------------------------------------------------------------ site profile
    @property
    def site_profile(self) -> Any:
        """The active :class:`~cxr_viewer.core.site.profile.SiteProfile`, or None."""
        return self._site_profile

    def set_site_profile(self, profile: Any) -> None:
        """Make ``profile`` (or None) the one every surface judges with."""
        self._site_profile = profile
        self.site_profile_changed.emit(profile)

    # ------------------------------------------------------------------ thresholds
    def threshold(self, model: str, sha256: str, label: str) -> float | None:
        """The reader's threshold of one finding of the model with these weights (None: none set)."""
        return self.thresholds.get(model, sha256, label)

    def set_threshold(self, model: str, sha256: str, label: str, value: float | None) -> None:
        """Set (or with ``None`` reset) the reader's threshold; persisted, then ``thresholds_changed``."""
        self.thresholds.set(model, sha256, label, value)
        self.thresholds_changed.emit(model, label)

    def set_thresholds(self, specs: Sequence[str], models: Iterable[tuple[str, str, Sequence[str]]]) -> None:
        """The reader's thresholds from ``[MODEL:]LABEL=VALUE`` texts (:func:`parse_threshold`), for each of
        ``models`` (name, weights sha256, labels) that has the label (any case; ``_``, ``-`` or a space).

        Raises ValueError when a text is malformed or names a finding no model has.
        """
        models = list(models)
        for spec in specs:
            model, label, value = parse_threshold(spec)
            hits = [(name, sha, lab) for name, sha, labels in models if model in (None, name)
                    for lab in labels if _same_label(lab, label)]
            if not hits:
                known = sorted({lab for name, _sha, labels in models if model in (None, name) for lab in labels})
                raise ValueError(f"--threshold {spec!r}: no model{'' if model is None else ' ' + model} has a "
                                 f"finding named {label!r}; the findings are: {', '.join(known) or 'none'}")
            for name, sha, lab in hits:
                self.set_threshold(name, sha, lab, value)

    # ------------------------------------------------------------------ judging
    def judge(self, result: "AnalysisResult") -> "JudgedResult":
        """THE judging step (:func:`cxr_viewer.core.judging.judge`) with this workspace's site profile and the
        reader's thresholds (looked up by each model's weights sha256): what every surface shows."""
        from cxr_viewer.core.judging import by_weights, judge

        return judge(result, site_profile=self.site_profile, user_thresholds=by_weights(result, self.threshold))

    # ------------------------------------------------------------------ corrections
    @property
    def corrections(self) -> Any:
        """The one :class:`~cxr_viewer.core.corrections.CorrectionStore` (the ``corrections/dir`` setting's)."""
        if self._corrections is None:
            from cxr_viewer.core.corrections import CorrectionStore

            folder = str(self.settings.value("corrections/dir", "") or "")
            self._corrections = CorrectionStore(folder or None)
        return self._corrections
