"""The typed blocks of a bundle manifest: population, derived findings, calibration, site version, ONNX export.

Each block is a small frozen dataclass read by :meth:`from_dict`, which refuses a bad value with
a :class:`ValueError` naming the field (``population.ood.threshold must be a number``); the
manifest collects those into one :class:`~cxr_viewer.core.errors.BundleError`. Consumers read
the fields, never the JSON.

A block keeps the mapping it was read from (``raw``): :meth:`to_dict` writes the typed fields
over it, so keys this viewer does not know survive, in their order, and a manifest loaded and
saved again is the same JSON. A field at its default that the source did not carry is not
written, and a field set to None is dropped (unless the source held null there).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from cxr_viewer.core.models.ref import ModelRef

__all__ = [
    "DERIVED_ROLES",
    "AgeHead",
    "AgeRange",
    "CalibrationRecord",
    "DerivedFinding",
    "DerivedThreshold",
    "FindingPopulation",
    "LabelCalibration",
    "OnnxRecord",
    "OodStats",
    "Population",
    "ReferenceScale",
    "SiteVersion",
]

#: ``derived_findings[].role`` of a ``text_segmentation`` bundle: a finding row (badge, worklist,
#: report, SR) or an opt-in research overlay that only draws its map and is never a finding.
DERIVED_ROLES: tuple[str, ...] = ("finding", "research_overlay")

B = TypeVar("B", bound="Block")


# ---------------------------------------------------------------------- reading helpers
def _obj(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"'{where}' must be an object (got {type(d).__name__})")
    return d


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


def _num(d: Mapping[str, Any], key: str, where: str, *, required: bool = False, lo: float | None = None,
         hi: float | None = None) -> Any:  # fmt: skip
    """A number kept as written (an int stays an int, so the JSON does not change on saving)."""
    v = d.get(key)
    if v is None:
        if required:
            raise ValueError(f"'{where}.{key}' is missing (a number)")
        return None
    if not _is_num(v):
        raise ValueError(f"'{where}.{key}' must be a number (got {v!r})")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"'{where}.{key}' is {v!r}; it must lie in [{lo:g}, {hi:g}]")
    return v


def _text(d: Mapping[str, Any], key: str, where: str, default: str | None = "") -> Any:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, str):
        raise ValueError(f"'{where}.{key}' must be a text (got {v!r})")
    return v


def _numbers(d: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> tuple[Any, ...]:
    v = d.get(key)
    if v is None and not required:
        return ()
    if not isinstance(v, list) or not all(_is_num(x) for x in v):
        raise ValueError(f"'{where}.{key}' must be a list of numbers")
    return tuple(v)


def _texts(d: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = d.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"'{where}.{key}' must be a list of texts")
    return tuple(v)


def _counts(d: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping) or not all(_is_num(n) for n in v.values()):
        raise ValueError(f"'{where}.{key}' must map names to counts")
    return {str(k): n for k, n in v.items()}


def _bool(d: Mapping[str, Any], key: str, where: str) -> bool | None:
    v = d.get(key)
    if v is not None and not isinstance(v, bool):
        raise ValueError(f"'{where}.{key}' must be true or false (got {v!r})")
    return v


def _encode(v: Any) -> Any:
    if isinstance(v, Block):
        return v.to_dict()
    if isinstance(v, ModelRef):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_encode(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _encode(x) for k, x in v.items()}
    return copy.deepcopy(v)


@dataclass(frozen=True)
class Block:
    """Base of the manifest blocks: ``raw`` is what was read; :meth:`to_dict` writes the fields over it."""

    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(dict(self.raw))
        for f in fields(self):
            if f.name == "raw":
                continue
            key = f.metadata.get("key", f.name)
            value = getattr(self, f.name)
            if value is None:
                if not (key in out and out[key] is None):
                    out.pop(key, None)
                continue
            if key not in out and _is_default(f, value):
                continue
            out[key] = _encode(value)
        return out


def _is_default(f: Any, value: Any) -> bool:
    from dataclasses import MISSING

    if f.default is not MISSING:
        return value == f.default
    if f.default_factory is not MISSING:
        return value == f.default_factory()
    return False


# ---------------------------------------------------------------------- population
@dataclass(frozen=True)
class AgeRange(Block):
    """Ages in years a population spans (``min``/``max``; other keys are descriptive)."""

    min: float | None = None
    max: float | None = None
    recorded_p5: float | None = None  # 5th-95th percentile of the ages films record
    recorded_p95: float | None = None
    documented: Mapping[str, Any] = field(default_factory=dict)  # source -> [min, max] from its publication

    @classmethod
    def from_dict(cls, d: Any, where: str = "age_years") -> "AgeRange | None":
        if d is None:
            return None
        d = _obj(d, where)
        lo, hi = _num(d, "min", where, lo=0.0, hi=200.0), _num(d, "max", where, lo=0.0, hi=200.0)
        if lo is not None and hi is not None and hi < lo:
            raise ValueError(f"'{where}.max' ({hi!r}) is below '{where}.min' ({lo!r})")
        return cls(lo, hi, _num(d, "recorded_p5", where), _num(d, "recorded_p95", where),
                   dict(_obj(d.get("documented") or {}, f"{where}.documented")), raw=d)  # fmt: skip

    @property
    def upper(self) -> float:
        """The upper age (200 when none is recorded)."""
        return float(self.max or 200.0)


@dataclass(frozen=True)
class OodStats(Block):
    """``population.ood``: per-feature mean/std of validation films and the distance threshold."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    threshold: float | None = None
    quantile: float | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "population.ood") -> "OodStats | None":
        if d is None:
            return None
        d = _obj(d, where)
        mean, std = _numbers(d, "mean", where), _numbers(d, "std", where)
        if len(mean) != len(std):
            raise ValueError(f"'{where}.mean' has {len(mean)} values but '{where}.std' has {len(std)}")
        return cls(mean, std, _num(d, "threshold", where, lo=0.0), _num(d, "quantile", where, lo=0.0, hi=1.0), raw=d)

    @property
    def fitted(self) -> bool:
        """Whether the statistics and a threshold are there to judge a film by."""
        return self.threshold is not None and bool(self.mean)


@dataclass(frozen=True)
class AgeHead(Block):
    """``population.age_head``: a linear read of the pooled features, in years."""

    weights: tuple[float, ...] = ()
    bias: float = 0.0
    child_below: float | None = None
    chosen_on: Mapping[str, Any] = field(default_factory=dict)  # how the child/adult cut-off was chosen

    @classmethod
    def from_dict(cls, d: Any, where: str = "population.age_head") -> "AgeHead | None":
        if d is None:
            return None
        d = _obj(d, where)
        bias = _num(d, "bias", where)
        return cls(_numbers(d, "weights", where), 0.0 if bias is None else bias,
                   _num(d, "child_below", where, lo=0.0, hi=120.0),
                   dict(_obj(d.get("chosen_on") or {}, f"{where}.chosen_on")), raw=d)  # fmt: skip


@dataclass(frozen=True)
class FindingPopulation(Block):
    """``population.findings[label]``: the films one finding's threshold was validated on."""

    age_years: AgeRange | None = None
    children: bool | None = None
    views: tuple[str, ...] = ()
    sources: Mapping[str, int] = field(default_factory=dict)
    positives: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "FindingPopulation":
        d = _obj(d, where)
        return cls(AgeRange.from_dict(d.get("age_years"), f"{where}.age_years"), _bool(d, "children", where),
                   _texts(d, "views", where), _counts(d, "sources", where), _counts(d, "positives", where), raw=d)  # fmt: skip


@dataclass(frozen=True)
class Population(Block):
    """The manifest's ``population``: what the model was trained on, the OOD check, the age head and
    each finding's validated population."""

    sources: Mapping[str, int] = field(default_factory=dict)
    images: int | None = None
    age_years: AgeRange | None = None
    views: Mapping[str, int] = field(default_factory=dict)
    accepted_views: tuple[str, ...] = ()
    note: str = ""
    ood: OodStats | None = None
    age_head: AgeHead | None = None
    findings: Mapping[str, FindingPopulation] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "population") -> "Population":
        d = _obj(d, where)
        raw_f = d.get("findings") or {}
        findings = {str(k): FindingPopulation.from_dict(v, f"{where}.findings.{k}")
                    for k, v in _obj(raw_f, f"{where}.findings").items()}  # fmt: skip
        images = _num(d, "images", where, lo=0.0)
        return cls(
            sources=_counts(d, "sources", where), images=images, age_years=AgeRange.from_dict(d.get("age_years"), f"{where}.age_years"),
            views=_counts(d, "views", where), accepted_views=_texts(d, "accepted_views", where), note=_text(d, "note", where),
            ood=OodStats.from_dict(d.get("ood"), f"{where}.ood"), age_head=AgeHead.from_dict(d.get("age_head"), f"{where}.age_head"),
            findings=findings, raw=d,
        )  # fmt: skip

    @property
    def wants_features(self) -> bool:
        """Whether judging a film needs the model's pooled features (a fitted OOD check or an age head)."""
        return bool(self.ood and self.ood.fitted) or bool(self.age_head and self.age_head.weights)


# ---------------------------------------------------------------------- derived findings
@dataclass(frozen=True)
class DerivedThreshold(Block):
    value: float
    method: str = ""
    source: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DerivedThreshold":
        d = _obj(d, where)
        return cls(_num(d, "value", where, required=True, lo=0.0, hi=1.0), _text(d, "method", where),
                   _text(d, "source", where), raw=d)  # fmt: skip


@dataclass(frozen=True)
class ReferenceScale(Block):
    """A derived finding's ``reference``: evenly spaced quantiles of validation normals' scores."""

    quantiles: tuple[float, ...] = ()
    what: str = ""
    reads_as: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ReferenceScale | None":
        if d is None:
            return None
        d = _obj(d, where)
        q = _numbers(d, "quantiles", where, required=True)
        if len(q) < 2 or not all(0.0 <= v <= 1.0 for v in q) or any(a > b for a, b in zip(q, q[1:])):
            raise ValueError(f"'{where}.quantiles' must be at least two increasing numbers between 0 and 1")
        return cls(q, _text(d, "what", where), _text(d, "reads_as", where), raw=d)

    def rank(self, score: float) -> float:
        """The share of the reference films scoring lower than ``score`` (linear between quantiles)."""
        import numpy as np

        q = np.asarray(self.quantiles, dtype=np.float64)
        return float(np.clip(np.interp(float(score), q, np.linspace(0.0, 1.0, q.size)), 0.0, 1.0))


@dataclass(frozen=True)
class DerivedFinding(Block):
    """One ``derived_findings`` entry of a ``text_segmentation`` bundle (see docs/bundle-format.md).

    The image score is the maximum of the prompts' pixel-wise maximum map, judged against
    ``threshold``; ``role`` says whether it is a finding or a research overlay.
    """

    label: str
    prompts: tuple[str, ...]
    threshold: DerivedThreshold
    score: str = "max"
    role: str = "finding"
    validated: bool | None = None
    note: str = ""
    reference: ReferenceScale | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DerivedFinding":
        d = _obj(d, where)
        label = d.get("label")
        if not isinstance(label, str) or not label:
            raise ValueError(f"'{where}.label' must be a non-empty text")
        prompts = d.get("prompts")
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"'{where}.prompts' must be a non-empty list of prompt texts")
        score = d.get("score", "max")
        if score != "max":
            raise ValueError(f"'{where}.score' is {score!r}; only 'max' is understood")
        role = d.get("role", "finding")
        if role not in DERIVED_ROLES:
            raise ValueError(f"'{where}.role' is {role!r}; expected one of {', '.join(DERIVED_ROLES)}")
        if "threshold" not in d:
            raise ValueError(f"'{where}.threshold' is missing (an object with a 'value' between 0 and 1)")
        return cls(label, tuple(prompts), DerivedThreshold.from_dict(d["threshold"], f"{where}.threshold"), score, role,
                   _bool(d, "validated", where), _text(d, "note", where),
                   ReferenceScale.from_dict(d.get("reference"), f"{where}.reference"), raw=d)  # fmt: skip

    @classmethod
    def list_from(cls, raw: Any, where: str = "derived_findings") -> tuple["DerivedFinding", ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ValueError(f"'{where}' must be a list of derived findings")
        return tuple(cls.from_dict(d, f"{where}[{i}]") for i, d in enumerate(raw))

    @property
    def is_finding(self) -> bool:
        return self.role == "finding"

    def reference_rank(self, score: float) -> float | None:
        """The share of the reference films (validation normals) scoring lower than ``score``, or None."""
        return None if self.reference is None else self.reference.rank(score)


# ---------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class LabelCalibration(Block):
    """One label's entry of ``calibration.labels``: the fitted method and its cross-validated ECEs."""

    method: str = "none"
    ece_before: float | None = None
    ece_cv: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "LabelCalibration":
        from cxr_viewer.core.models.calibration import Calibration

        d = _obj(d, where)
        try:
            Calibration.from_dict(dict(d))  # checks the method and every coefficient
        except (TypeError, ValueError) as exc:
            raise ValueError(f"'{where}': {exc}") from exc
        return cls(str(d.get("method", "none")), _num(d, "ece_before", where), _counts(d, "ece_cv", where), raw=d)

    @property
    def calibration(self) -> Any:
        """The fitted :class:`~cxr_viewer.core.models.calibration.Calibration`."""
        from cxr_viewer.core.models.calibration import Calibration

        return Calibration.from_dict(dict(self.raw) or {"method": self.method})


@dataclass(frozen=True)
class CalibrationRecord(Block):
    """The manifest's ``calibration``: how each label's scores were calibrated (already folded into the head)."""

    split: str = ""
    method: str = ""
    labels: Mapping[str, LabelCalibration] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "calibration") -> "CalibrationRecord":
        d = _obj(d, where)
        labels = {str(k): LabelCalibration.from_dict(v, f"{where}.labels.{k}")
                  for k, v in _obj(d.get("labels") or {}, f"{where}.labels").items()}  # fmt: skip
        return cls(_text(d, "split", where), _text(d, "method", where), labels, raw=d)


# ---------------------------------------------------------------------- site version
@dataclass(frozen=True)
class SiteVersion(Block):
    """The manifest's ``site_version``: a site fine-tune, the bundle it replaces and its gates."""

    replaces: ModelRef | None = None
    installed: str = ""
    gates: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    rollback: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str = "site_version") -> "SiteVersion":
        d = _obj(d, where)
        rep = d.get("replaces")
        try:
            ref = None if rep is None else ModelRef.from_dict(_obj(rep, f"{where}.replaces"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"'{where}.replaces': {exc}") from exc
        gates = _obj(d.get("gates") or {}, f"{where}.gates")
        for g, v in gates.items():
            _bool(_obj(v, f"{where}.gates.{g}"), "passed", f"{where}.gates.{g}")
        return cls(ref, _text(d, "installed", where), {str(k): v for k, v in gates.items()},
                   _text(d, "rollback", where), raw=d)  # fmt: skip

    @property
    def replaces_name(self) -> str:
        return "" if self.replaces is None else self.replaces.name


# ---------------------------------------------------------------------- ONNX export
@dataclass(frozen=True)
class OnnxRecord(Block):
    """The manifest's ``onnx``: the verified export (``core.inference.onnx_export``) and its hashes.

    Only a record of the current ``schema`` is read further; an older one is kept and ignored.
    """

    schema: int
    kind: str
    file: str
    sha256: str
    weights_sha256: str = ""
    cam: Mapping[str, Any] = field(default_factory=dict)
    conditioned: bool | None = None
    source: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str = "onnx") -> "OnnxRecord":
        d = _obj(d, where)
        schema = d.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise ValueError(f"'{where}.schema' must be an integer (got {schema!r})")
        for key in ("kind", "file", "sha256", "weights_sha256", "source"):
            _text(d, key, where)
        cam = _obj(d.get("cam") or {}, f"{where}.cam")
        return cls(schema, _text(d, "kind", where), _text(d, "file", where), _text(d, "sha256", where),
                   _text(d, "weights_sha256", where), cam, _bool(d, "conditioned", where), _text(d, "source", where),
                   raw=d)  # fmt: skip

    @property
    def cam_layer(self) -> str | None:
        return str(self.cam.get("layer") or "") or None

    @property
    def exact_cam(self) -> bool:
        return bool(self.cam.get("exact"))
