"""Plain result objects (no torch): what the engine returns and the UI/CLI show.

Everything here is immutable data with ``to_dict`` for JSON output, so results
can cross threads and be cached safely.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np

from cxr_viewer.core.errors import AnalysisCancelledError

__all__ = ["AnalysisResult", "CancelToken", "Finding", "FindingState", "Heatmap", "QCFlag", "SEVERITIES", "is_cancelled"]

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class QCFlag:
    """An image-quality / suitability flag shown beside the scores (``severity``: info|warning|error)."""

    code: str
    message: str
    severity: str = "warning"

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "severity": self.severity}


class FindingState(str, Enum):
    """THE closed set of verdicts a finding can carry; every surface shows one of these, never another."""

    POSITIVE = "positive"  # above a validated threshold, on an image inside the model's population
    ABOVE_NOT_VALIDATED = "above_not_validated"  # above a threshold that was not validated: no POSITIVE badge
    NEGATIVE = "negative"  # below a validated threshold
    NOT_VALIDATED = "not_validated"  # below a threshold that was not validated: no negative verdict either
    OUTSIDE_POPULATION = "outside_population"  # the image is not the kind the model learned from
    NOT_APPLICABLE = "not_applicable"  # no usable score (not a number)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Finding:
    """One label's score from one model, with the operating threshold it is judged against."""

    label: str
    score: float
    threshold: float
    model: str
    model_version: str = ""
    threshold_method: str = ""
    trained: bool = True
    # Derived findings (e.g. a score read off a segmenter's map) carry what is and is not validated.
    note: str = ""
    validated: bool | None = None
    # Why this image is outside the model's training population ("" = inside, or nothing says otherwise).
    outside: str = ""
    # The model's own score before a site profile recalibrated it (None = no site profile applied).
    raw_score: float | None = None

    @property
    def above_threshold(self) -> bool:
        return self.score >= self.threshold

    @property
    def positive(self) -> bool:
        """A POSITIVE badge: above a validated threshold, on an image inside the model's population."""
        return self.above_threshold and self.validated is not False and not self.outside

    @property
    def state(self) -> FindingState:
        """The one verdict (:class:`FindingState`), in this order: no number, outside the population,
        not validated (above or below its threshold), then positive or negative."""
        try:
            finite = math.isfinite(float(self.score)) and math.isfinite(float(self.threshold))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            return FindingState.NOT_APPLICABLE
        if self.outside:
            return FindingState.OUTSIDE_POPULATION
        if self.validated is False:
            return FindingState.ABOVE_NOT_VALIDATED if self.above_threshold else FindingState.NOT_VALIDATED
        return FindingState.POSITIVE if self.positive else FindingState.NEGATIVE

    def with_threshold(self, threshold: float, method: str = "user") -> "Finding":
        """The same score judged against a user-chosen threshold (the score never changes)."""
        return replace(self, threshold=float(threshold), threshold_method=method)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "score": round(float(self.score), 6),
            "threshold": round(float(self.threshold), 6),
            "positive": self.positive,
            "state": self.state.value,
            "above_threshold": self.above_threshold,
            "model": self.model,
            "model_version": self.model_version,
            "threshold_method": self.threshold_method,
            "trained": self.trained,
        }
        if self.note or self.validated is not None:
            out["note"] = self.note
            out["validated"] = self.validated
        if self.outside:
            out["outside_population"] = self.outside
        if self.raw_score is not None:
            out["raw_score"] = round(float(self.raw_score), 6)
        return out


@dataclass(frozen=True, eq=False)
class Heatmap:
    """A class-activation map at the ORIGINAL image size (float32 HxW, normalised to [0, 1]).

    ``faithfulness`` is the ROAD score of :mod:`cxr_viewer.core.inference.cam`
    (higher = removing the highlighted pixels changes the score more than removing
    the others; near 0 = the map does not explain the score); ``None`` if not computed.
    """

    values: np.ndarray
    label: str
    method: str
    model: str
    target_index: int
    target_layer: str = ""
    faithfulness: float | None = None
    faithfulness_method: str = ""
    score: float | None = None
    timing_ms: float = 0.0
    network_map: np.ndarray | None = field(default=None, repr=False)  # the map on the network's input grid
    # Where the map may point: "lung field (<segmenter>), dilated 4%", or "whole image (why)".
    region: str = ""
    # Where the map's maximum sits on the colour scale: the finding's score for a class map (a map for
    # a score of 0.1 must not look like one for 0.99), the rank among validation normals for a research
    # overlay; None: the values are already on the scale (a lesion probability map).
    colour_peak: float | None = None
    # A research overlay (never a finding) and its scale: the share of validation normals scoring lower.
    research: bool = False
    reference_rank: float | None = None
    reference: str = ""

    def with_faithfulness(self, value: float, method: str) -> "Heatmap":
        return replace(self, faithfulness=float(value), faithfulness_method=method)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.values.shape[0]), int(self.values.shape[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "method": self.method,
            "model": self.model,
            "target_layer": self.target_layer,
            "faithfulness": None if self.faithfulness is None else round(float(self.faithfulness), 6),
            "faithfulness_method": self.faithfulness_method,
            "shape": list(self.shape),
            "region": self.region,
            **({"research_overlay": True, "reference_rank": self.reference_rank, "reference": self.reference}
               if self.research else {}),
        }


@dataclass(frozen=True)
class AnalysisResult:
    """Everything one analysis produced for one image."""

    content_hash: str
    findings: tuple[Finding, ...]
    qc: tuple[QCFlag, ...]
    models: tuple[dict[str, Any], ...]
    timing_ms: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    cached: bool = False
    backend: dict[str, str] = field(default_factory=dict)  # model name -> "torch" | "onnx"
    site_profile: dict[str, Any] | None = None  # the site profile applied (SiteProfile.identity()), if any

    @property
    def positives(self) -> list[Finding]:
        return [f for f in self.findings if f.positive]

    @property
    def reliable(self) -> bool:
        """False when a QC error says the scores should not be read (e.g. a CT image)."""
        return not any(f.severity == "error" for f in self.qc)

    def finding(self, label: str, model: str | None = None) -> Finding | None:
        for f in self.findings:
            if f.label == label and (model is None or f.model == model):
                return f
        return None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "qc": [q.to_dict() for q in self.qc],
            "findings": [f.to_dict() for f in self.findings],
            "models": [dict(m) for m in self.models],
            "timing_ms": {k: round(float(v), 3) for k, v in self.timing_ms.items()},
            "warnings": list(self.warnings),
        }
        if self.site_profile is not None:
            out["site_profile"] = dict(self.site_profile)
        return out


class CancelToken:
    """Thread-safe cancellation flag a Qt worker passes into long engine calls."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise AnalysisCancelledError("The analysis was cancelled.")


def is_cancelled(cancel: Any) -> bool:
    """THE cancel check: a :class:`CancelToken`, a ``threading.Event`` or a callable returning True."""
    if cancel is None:
        return False
    if hasattr(cancel, "cancelled"):
        return bool(cancel.cancelled)
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())
