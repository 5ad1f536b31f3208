"""One judged result per film: :func:`judge` and :class:`JudgedResult` (no Qt).

The engine returns scores already passed through each model's own calibration (the
bundle's ``calibration`` block). :func:`judge` then applies, always in this order:

1. the site profile (its recalibrated score and site threshold replace the model's),
2. the user's thresholds (a threshold the reader set for a finding wins over both),
3. validation and population: a QC flag that makes scores unreliable (not a chest
   radiograph, lateral view, possibly inverted grey scale, blank image) or a header
   outside the model's training population puts the finding in "outside population";
   a threshold that was not validated never gives POSITIVE or negative.

Every surface (findings panel, worklist, current | prior, ``analyze`` JSON, SR, SEG,
PDF, PACS send) takes the :class:`JudgedResult` and shows its states as they are: the
texts and footnotes of each state live here, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cxr_viewer.core.inference.population import OUTSIDE_CODES
from cxr_viewer.core.inference.results import AnalysisResult, Finding, FindingState

__all__ = [
    "FindingState", "JudgedFinding", "JudgedResult", "REPORT_ORDER", "STATE_BADGE", "STATE_FOOTNOTE", "STATE_TEXT",
    "apply_site_profile_safely", "by_weights", "display_name", "judge", "judged_from", "threshold_source",
]

#: Plain text of each state (PDF, CSV, SR text); the viewer's badge adds a symbol.
STATE_TEXT: dict[FindingState, str] = {
    FindingState.POSITIVE: "POSITIVE",
    FindingState.ABOVE_NOT_VALIDATED: "above · not validated",
    FindingState.NEGATIVE: "negative",
    FindingState.NOT_VALIDATED: "not validated",
    FindingState.OUTSIDE_POPULATION: "outside population",
    FindingState.NOT_APPLICABLE: "not applicable",
}
_SYMBOL = {
    FindingState.POSITIVE: "●", FindingState.ABOVE_NOT_VALIDATED: "◌", FindingState.NEGATIVE: "○",
    FindingState.NOT_VALIDATED: "◌", FindingState.OUTSIDE_POPULATION: "⊘", FindingState.NOT_APPLICABLE: "⚠",
}
#: The viewer's badge of each state (symbol + text).
STATE_BADGE: dict[FindingState, str] = {s: f"{_SYMBOL[s]} {t}" for s, t in STATE_TEXT.items()}
STATE_BADGE[FindingState.NOT_APPLICABLE] = "⚠ not a number"
#: One plain-language footnote per state.
STATE_FOOTNOTE: dict[FindingState, str] = {
    FindingState.POSITIVE: "POSITIVE: the score is at or above a validated operating threshold, on an image "
                           "inside the model's training population.",
    FindingState.ABOVE_NOT_VALIDATED: "above · not validated: the score is above its threshold, but that threshold "
                                      "was not validated, so it is not called positive; read the score.",
    FindingState.NEGATIVE: "negative: the score is below a validated operating threshold.",
    FindingState.NOT_VALIDATED: "not validated: the score is below a threshold that was not validated, so it is not "
                                "called negative either; read the score.",
    FindingState.OUTSIDE_POPULATION: "outside population: this image is not the kind the model was trained on "
                                     "(view, age, image type or quality), so no verdict is given.",
    FindingState.NOT_APPLICABLE: "not applicable: the model gave no usable score for this image.",
}
#: Report order: POSITIVE first, then above-not-validated, then the rest.
REPORT_ORDER = (FindingState.POSITIVE, FindingState.ABOVE_NOT_VALIDATED, FindingState.NEGATIVE,
                FindingState.NOT_VALIDATED, FindingState.OUTSIDE_POPULATION, FindingState.NOT_APPLICABLE)

_NAMES = {"pleural thickening": "Pleural thickening", "no finding": "No finding", "tb": "Tuberculosis"}


def display_name(label: str) -> str:
    """A finding label as a reader writes it: ``Pleural_Thickening`` -> ``Pleural thickening``."""
    words = " ".join(str(label).replace("_", " ").replace("-", " ").split())
    if not words:
        return str(label)
    return _NAMES.get(words.lower(), words[0].upper() + words[1:].lower() if words.isascii() else words)


def threshold_source(f: Finding) -> str:
    """Where the threshold in force came from: ``user``, ``site_profile`` or ``model``."""
    if f.threshold_method == "user":
        return "user"
    if f.threshold_method.startswith("site profile "):
        return "site_profile"
    return "model"


_SOURCE_TEXT = {"user": "user", "site_profile": "site profile", "model": "model"}


@dataclass(frozen=True)
class JudgedFinding:
    """One finding as every surface shows it."""

    finding: Finding
    state: FindingState
    threshold_source: str  # model | site_profile | user
    display_name: str
    reason: str = ""  # why there is no POSITIVE/negative verdict ("" when there is one)

    @property
    def label(self) -> str:
        return self.finding.label

    @property
    def model(self) -> str:
        return self.finding.model

    @property
    def score(self) -> float:
        return self.finding.score

    @property
    def threshold(self) -> float:
        return self.finding.threshold

    @property
    def validated(self) -> bool:
        """May this finding be asserted present or absent (a validated verdict)?"""
        return self.state in (FindingState.POSITIVE, FindingState.NEGATIVE)

    @property
    def state_text(self) -> str:
        return STATE_TEXT[self.state]

    @property
    def source_text(self) -> str:
        return _SOURCE_TEXT.get(self.threshold_source, self.threshold_source)

    def to_dict(self) -> dict[str, Any]:
        out = self.finding.to_dict()
        out.update(state=self.state.value, threshold_source=self.threshold_source, display_name=self.display_name)
        out["positive"] = self.state is FindingState.POSITIVE
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class JudgedResult:
    """An :class:`AnalysisResult` judged once: per finding its threshold in force, source and state."""

    result: AnalysisResult
    findings: tuple[JudgedFinding, ...]
    site_profile_message: str = ""  # why the active site profile was not applied ("" when it was, or none)
    site_profile_stale: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return self.result.content_hash

    @property
    def qc(self) -> tuple[Any, ...]:
        return self.result.qc

    @property
    def models(self) -> tuple[dict[str, Any], ...]:
        return self.result.models

    @property
    def site_profile(self) -> dict[str, Any] | None:
        return self.result.site_profile

    def finding(self, label: str, model: str | None = None) -> Finding | None:
        """The judged :class:`Finding` (threshold in force), as :meth:`AnalysisResult.finding` gives it."""
        j = self.get(label, model)
        return None if j is None else j.finding

    @property
    def positives(self) -> list[JudgedFinding]:
        return [j for j in self.findings if j.state is FindingState.POSITIVE]

    def get(self, label: str, model: str | None = None) -> JudgedFinding | None:
        for j in self.findings:
            if j.label == label and (model is None or j.model == model):
                return j
        return None

    def states(self) -> dict[tuple[str, str], FindingState]:
        """(model, label) -> state: what a test compares across surfaces."""
        return {(j.model, j.label): j.state for j in self.findings}

    def in_report_order(self) -> list[JudgedFinding]:
        """POSITIVE first, then above-not-validated, then the rest; by score within a state."""
        rank = {s: i for i, s in enumerate(REPORT_ORDER)}

        def score(j: JudgedFinding) -> float:
            v = float(j.score)
            return -v if math.isfinite(v) else math.inf

        return sorted(self.findings, key=lambda j: (rank[j.state], score(j)))

    def footnotes(self) -> list[str]:
        """One footnote per state present, in report order."""
        present = {j.state for j in self.findings}
        return [STATE_FOOTNOTE[s] for s in REPORT_ORDER if s in present]

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["findings"] = [j.to_dict() for j in self.findings]
        if self.site_profile_message:
            out["site_profile_message"] = self.site_profile_message
        return out


def apply_site_profile_safely(profile: Any, result: AnalysisResult) -> tuple[AnalysisResult, str, bool]:
    """``result`` with ``profile`` applied, or unchanged with why not: ``(result, message, stale)``.

    ``stale``: the profile's bundle is installed with other weights (refit the profile), as
    opposed to its bundle being absent or switched off. Nothing is raised.
    """
    from cxr_viewer.core.errors import SiteProfileError, SiteProfileMismatchError
    from cxr_viewer.core.site.profile import apply_site_profile

    if profile is None or not result.models:
        return result, "", False
    try:
        return apply_site_profile(profile, result), "", False
    except SiteProfileMismatchError as exc:
        return result, exc.message, True
    except SiteProfileError as exc:
        return result, exc.message, False


UserThreshold = Callable[[str, str], "float | None"] | Mapping[tuple[str, str], float]


def _user_lookup(user: UserThreshold | None) -> Callable[[str, str], float | None]:
    if user is None:
        return lambda model, label: None
    if isinstance(user, Mapping):
        return lambda model, label: user.get((model, label))  # type: ignore[union-attr]
    return user


def by_weights(result: AnalysisResult, lookup: Callable[[str, str, str], "float | None"]) -> Callable[[str, str], "float | None"]:
    """The reader's thresholds, kept per model name + weights sha256 (``lookup(model, sha256, label)``), as
    ``judge`` asks for them: ``(model, label) -> threshold or None`` for the models that made ``result``."""
    sha = {str(m.get("name")): str(m.get("sha256", "")).lower() for m in result.models}
    return lambda model, label: lookup(model, sha.get(model, ""), label)


def _unreliable_qc(result: AnalysisResult) -> str:
    for q in result.qc:
        if q.code in OUTSIDE_CODES:
            return f"outside the model's population: {q.message}"
    return ""


def judge(result: AnalysisResult, *, site_profile: Any = None, user_thresholds: UserThreshold | None = None) -> JudgedResult:
    """THE judging step: site profile, then the user's thresholds, then validation and population.

    ``site_profile``: a :class:`~cxr_viewer.core.site.profile.SiteProfile` (None: none active);
    ``user_thresholds``: ``(model, label) -> threshold or None`` (a callable or a mapping). A
    result that already carries a site profile (``result.site_profile``) is not adjusted twice.
    """
    message, stale = "", False
    if site_profile is not None and result.site_profile is None:
        result, message, stale = apply_site_profile_safely(site_profile, result)
    lookup = _user_lookup(user_thresholds)
    qc_reason = _unreliable_qc(result)
    findings: list[Finding] = []
    judged: list[JudgedFinding] = []
    for f in result.findings:
        user = lookup(f.model, f.label)
        if user is not None:
            f = f.with_threshold(float(user), "user")
        if qc_reason and not f.outside:
            f = replace(f, outside=qc_reason)
        state = f.state
        reason = ""
        if state is FindingState.OUTSIDE_POPULATION:
            reason = f.outside
        elif state in (FindingState.NOT_VALIDATED, FindingState.ABOVE_NOT_VALIDATED):
            reason = f.note or "the operating threshold was not validated"
        elif state is FindingState.NOT_APPLICABLE:
            reason = "the score is not a number"
        findings.append(f)
        judged.append(JudgedFinding(f, state, threshold_source(f), display_name(f.label), reason))
    return JudgedResult(replace(result, findings=tuple(findings)), tuple(judged), message, stale)


def judged_from(result: "AnalysisResult | JudgedResult") -> JudgedResult:
    """A :class:`JudgedResult` as is; an :class:`AnalysisResult` whose thresholds are already in force, judged."""
    return result if isinstance(result, JudgedResult) else judge(result)
