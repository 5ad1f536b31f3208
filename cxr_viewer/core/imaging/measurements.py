"""Measurements and annotations that belong to an image, as plain data (no Qt).

Every shape holds ``(row, col)`` image points (pixel centres at integers) so it
follows the image through zoom, rotation and flips. Each kind knows its label
and how to round-trip through JSON; ROI statistics are computed here, in the
file's own units (see :mod:`cxr_viewer.core.imaging.pixel`). The distance kind is
:class:`Measurement` (the session re-exports it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_viewer.core.imaging.geometry import distance_mm, distance_px
from cxr_viewer.core.imaging.pixel import value_scale
from cxr_viewer.core.io.record import ImageRecord

Point = tuple[float, float]
SCHEMA = "cxr-viewer.annotations/1"
ROI_SHAPES = ("ellipse", "rectangle")


def _pt(p: Any) -> Point:
    return float(p[0]), float(p[1])


def _length(record: ImageRecord | None, p0: Point, p1: Point) -> tuple[float, str]:
    spacing = record.spacing_mm if record is not None else None
    if spacing is not None:
        return float(distance_mm(p0, p1, spacing)), "mm"
    return float(distance_px(p0, p1)), "px"


@dataclass(frozen=True)
class Measurement:
    """A distance between two image points, (row, col) with pixel centres at integers."""

    p0: Point
    p1: Point
    length: float
    unit: str  # "mm" when the pixel spacing is known, "px" otherwise
    kind: str = "distance"

    @property
    def label(self) -> str:
        if self.unit == "mm":
            return f"{self.length:.1f} mm"
        return f"{self.length:.0f} px"

    @property
    def points(self) -> tuple[Point, ...]:
        return (self.p0, self.p1)


def make_distance(record: ImageRecord | None, p0: Point, p1: Point) -> Measurement:
    """Distance between (row, col) points, in mm with a known pixel spacing, else px."""
    p0, p1 = _pt(p0), _pt(p1)
    length, unit = _length(record, p0, p1)
    return Measurement(p0, p1, length, unit)


@dataclass(frozen=True)
class AngleMeasurement:
    """The angle at ``vertex`` between the rays to ``a`` and ``b``, in degrees (0-180)."""

    a: Point
    vertex: Point
    b: Point
    degrees: float
    kind: str = "angle"

    @property
    def label(self) -> str:
        return f"{self.degrees:.1f}°"

    @property
    def points(self) -> tuple[Point, ...]:
        return (self.a, self.vertex, self.b)


def angle_degrees(a: Point, vertex: Point, b: Point, spacing_mm: tuple[float, float] | None = None) -> float:
    """Angle at ``vertex`` in degrees; anisotropic spacing is honoured (the angle at the patient)."""
    sr, sc = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    v1 = ((a[0] - vertex[0]) * sr, (a[1] - vertex[1]) * sc)
    v2 = ((b[0] - vertex[0]) * sr, (b[1] - vertex[1]) * sc)
    n1, n2 = math.hypot(*v1), math.hypot(*v2)
    if n1 == 0 or n2 == 0:
        return 0.0
    cos = (v1[0] * v2[0] + v1[1] * v2[1]) / (n1 * n2)
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def make_angle(record: ImageRecord | None, a: Point, vertex: Point, b: Point) -> AngleMeasurement:
    spacing = record.spacing_mm if record is not None else None
    a, vertex, b = _pt(a), _pt(vertex), _pt(b)
    return AngleMeasurement(a, vertex, b, angle_degrees(a, vertex, b, spacing))


@dataclass(frozen=True)
class RoiStats:
    """Statistics of the pixels whose centres fall inside an ROI."""

    mean: float
    sd: float
    minimum: float
    maximum: float
    count: int
    unit: str  # "" (file units without a name), "HU"..., or "0-1" for PNG/JPEG
    area_mm2: float | None
    area_px: float

    def lines(self) -> list[str]:
        unit = f" {self.unit}" if self.unit and self.unit != "0-1" else ""
        fmt = "{:.3f}" if self.unit == "0-1" else "{:.1f}"
        out = [f"mean {fmt.format(self.mean)}{unit}  SD {fmt.format(self.sd)}",
               f"min {fmt.format(self.minimum)}  max {fmt.format(self.maximum)}"]
        out.append(f"area {self.area_mm2:.1f} mm²" if self.area_mm2 is not None else f"area {self.area_px:.0f} px")
        return out


@dataclass(frozen=True)
class RoiMeasurement:
    """An ellipse or rectangle given by two opposite corners of its bounding box."""

    shape: str
    p0: Point
    p1: Point
    stats: RoiStats
    kind: str = "roi"

    @property
    def label(self) -> str:
        return "\n".join(self.stats.lines())

    @property
    def points(self) -> tuple[Point, ...]:
        return (self.p0, self.p1)


def roi_mask(shape: str, p0: Point, p1: Point, image_shape: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Bool mask of pixel centres inside the ROI, cropped to its bounding box, and that box's slices."""
    if shape not in ROI_SHAPES:
        raise ValueError(f"ROI shape must be one of {ROI_SHAPES}")
    h, w = image_shape
    r0, r1 = sorted((float(p0[0]), float(p1[0])))
    c0, c1 = sorted((float(p0[1]), float(p1[1])))
    rs, re = max(0, math.ceil(r0)), min(h, math.floor(r1) + 1)
    cs, ce = max(0, math.ceil(c0)), min(w, math.floor(c1) + 1)
    if re <= rs or ce <= cs:
        return np.zeros((0, 0), dtype=bool), (slice(0, 0), slice(0, 0))
    rows = np.arange(rs, re, dtype=np.float64)[:, None]
    cols = np.arange(cs, ce, dtype=np.float64)[None, :]
    if shape == "rectangle":
        mask = np.ones((re - rs, ce - cs), dtype=bool)
    else:
        cr, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
        ar, ac = max((r1 - r0) / 2.0, 1e-9), max((c1 - c0) / 2.0, 1e-9)
        mask = ((rows - cr) / ar) ** 2 + ((cols - cc) / ac) ** 2 <= 1.0
    return mask, (slice(rs, re), slice(cs, ce))


def roi_stats(record: ImageRecord, shape: str, p0: Point, p1: Point) -> RoiStats:
    """Mean/SD/min/max inside the ROI in modality units (DICOM) or 0-1 (PNG/JPEG); area in mm² with spacing."""
    mask, (rsl, csl) = roi_mask(shape, p0, p1, record.shape)
    values = record.pixels[rsl, csl][mask].astype(np.float64) if mask.size else np.zeros(0)
    scale = value_scale(record)
    unit = "0-1"
    if scale is not None:
        values = scale.modality(values)
        stored = scale.stored(values)
        if stored is not None:  # stored values are integers: undo float32 rounding before the statistics
            values = np.round(stored) * scale.slope + scale.intercept
        unit = scale.unit
    r0, r1 = sorted((float(p0[0]), float(p1[0])))
    c0, c1 = sorted((float(p0[1]), float(p1[1])))
    area_px = (r1 - r0) * (c1 - c0) * (math.pi / 4.0 if shape == "ellipse" else 1.0)
    area_mm2 = None
    if record.spacing_mm is not None:
        area_mm2 = area_px * float(record.spacing_mm[0]) * float(record.spacing_mm[1])
    if values.size == 0:
        return RoiStats(float("nan"), float("nan"), float("nan"), float("nan"), 0, unit, area_mm2, area_px)
    return RoiStats(float(values.mean()), float(values.std()), float(values.min()), float(values.max()),
                    int(values.size), unit, area_mm2, area_px)


def make_roi(record: ImageRecord, shape: str, p0: Point, p1: Point) -> RoiMeasurement:
    p0, p1 = _pt(p0), _pt(p1)
    return RoiMeasurement(shape, p0, p1, roi_stats(record, shape, p0, p1))


@dataclass(frozen=True)
class CtrMeasurement:
    """Cardiothoracic ratio: the widest cardiac width over the widest thoracic width (both horizontal)."""

    cardiac: tuple[Point, Point]
    thoracic: tuple[Point, Point]
    cardiac_width: float
    thoracic_width: float
    unit: str
    kind: str = "ctr"

    @property
    def ratio(self) -> float:
        return self.cardiac_width / self.thoracic_width if self.thoracic_width > 0 else float("nan")

    @property
    def label(self) -> str:
        return f"CTR {self.ratio:.2f}"

    @property
    def detail(self) -> str:
        f = "{:.1f}" if self.unit == "mm" else "{:.0f}"
        return f"cardiac {f.format(self.cardiac_width)} / thoracic {f.format(self.thoracic_width)} {self.unit}"

    @property
    def points(self) -> tuple[Point, ...]:
        return (*self.cardiac, *self.thoracic)


def horizontal(p0: Point, p1: Point) -> tuple[Point, Point]:
    """The second point moved onto the first one's row: a width is measured across the film."""
    return _pt(p0), (float(p0[0]), float(p1[1]))


def make_ctr(record: ImageRecord | None, c0: Point, c1: Point, t0: Point, t1: Point) -> CtrMeasurement:
    cardiac, thoracic = horizontal(c0, c1), horizontal(t0, t1)
    cw, unit = _length(record, *cardiac)
    tw, _ = _length(record, *thoracic)
    return CtrMeasurement(cardiac, thoracic, cw, tw, unit)


@dataclass(frozen=True)
class ArrowAnnotation:
    """An arrow from ``tail`` to ``head`` (the head points at the finding), with optional text."""

    tail: Point
    head: Point
    text: str = ""
    kind: str = "arrow"

    @property
    def label(self) -> str:
        return self.text

    @property
    def points(self) -> tuple[Point, ...]:
        return (self.tail, self.head)


@dataclass(frozen=True)
class TextAnnotation:
    """Free text pinned to an image point."""

    pos: Point
    text: str
    kind: str = "text"

    @property
    def label(self) -> str:
        return self.text

    @property
    def points(self) -> tuple[Point, ...]:
        return (self.pos,)


# --------------------------------------------------------------------------- JSON
def annotation_to_dict(ann: Any) -> dict[str, Any]:
    """One annotation as JSON-ready data; measured values are included for readers of the file."""
    kind = getattr(ann, "kind", "distance")
    if kind == "distance":
        return {"kind": "distance", "p0": list(ann.p0), "p1": list(ann.p1), "length": ann.length, "unit": ann.unit}
    if kind == "angle":
        return {"kind": "angle", "a": list(ann.a), "vertex": list(ann.vertex), "b": list(ann.b),
                "degrees": ann.degrees}
    if kind == "roi":
        s = ann.stats
        return {"kind": "roi", "shape": ann.shape, "p0": list(ann.p0), "p1": list(ann.p1),
                "stats": {"mean": s.mean, "sd": s.sd, "min": s.minimum, "max": s.maximum, "count": s.count,
                          "unit": s.unit, "area_mm2": s.area_mm2, "area_px": s.area_px}}
    if kind == "ctr":
        return {"kind": "ctr", "cardiac": [list(p) for p in ann.cardiac], "thoracic": [list(p) for p in ann.thoracic],
                "cardiac_width": ann.cardiac_width, "thoracic_width": ann.thoracic_width, "unit": ann.unit,
                "ratio": ann.ratio}
    if kind == "arrow":
        return {"kind": "arrow", "tail": list(ann.tail), "head": list(ann.head), "text": ann.text}
    if kind == "text":
        return {"kind": "text", "pos": list(ann.pos), "text": ann.text}
    raise ValueError(f"unknown annotation kind {kind!r}")


def annotation_from_dict(d: dict[str, Any], record: ImageRecord | None) -> Any:
    """Rebuild an annotation; measured values are recomputed from the image, not trusted from the file."""
    kind = d.get("kind")
    if kind == "distance":
        return make_distance(record, _pt(d["p0"]), _pt(d["p1"]))
    if kind == "angle":
        return make_angle(record, _pt(d["a"]), _pt(d["vertex"]), _pt(d["b"]))
    if kind == "roi":
        if record is None:
            raise ValueError("an ROI needs its image to compute statistics")
        return make_roi(record, str(d["shape"]), _pt(d["p0"]), _pt(d["p1"]))
    if kind == "ctr":
        (c0, c1), (t0, t1) = d["cardiac"], d["thoracic"]
        return make_ctr(record, _pt(c0), _pt(c1), _pt(t0), _pt(t1))
    if kind == "arrow":
        return ArrowAnnotation(_pt(d["tail"]), _pt(d["head"]), str(d.get("text", "")))
    if kind == "text":
        return TextAnnotation(_pt(d["pos"]), str(d["text"]))
    raise ValueError(f"unknown annotation kind {kind!r}")


#: An annotations sidecar is small; larger or deeper files are refused before they are parsed.
MAX_SIDECAR_BYTES = 8 << 20
MAX_SIDECAR_DEPTH = 8
MAX_ANNOTATIONS = 10_000


def sidecar_path(image_path: str | Path) -> Path:
    """Where an image's annotations live: ``NAME.annotations.json`` beside it."""
    p = Path(image_path)
    return p.with_name(p.name + ".annotations.json")


def _existing_report(path: Path) -> str | None:
    try:
        return load_report(path)
    except (OSError, ValueError):
        return None


def save_annotations(path: str | Path, annotations: list[Any], record: ImageRecord | None,
                     report: str | None = None) -> Path:
    """Write the annotations of one image as JSON (schema, image identity, shapes, and the reader's report text:
    ``report``, else the one the file already holds)."""
    path = Path(path)
    if report is None and path.is_file():
        report = _existing_report(path)
    md = (record.metadata or {}) if record is not None else {}
    doc = {
        "schema": SCHEMA,
        "image": {
            "file": record.source.name if record is not None and record.source is not None else None,
            "sop_instance_uid": md.get("sop_instance_uid") or None,
            "shape": list(record.shape) if record is not None else None,
            "content_sha256": record.content_hash if record is not None else None,
        },
        "annotations": [annotation_to_dict(a) for a in annotations],
    }
    if report and report.strip():
        doc["report"] = report
    from cxr_viewer.core.staging import write_atomic

    return write_atomic(path, json.dumps(doc, indent=1))


def save_report(path: str | Path, report: str, record: ImageRecord | None) -> Path:
    """Store a pasted report with the image's annotations, keeping the annotations already saved there."""
    path = Path(path)
    annotations: list[Any] = []
    if path.is_file():
        try:
            annotations = load_annotations(path, record)
        except (OSError, ValueError, KeyError, TypeError):
            annotations = []  # an unreadable sidecar is replaced: the report is what the reader just gave
    return save_annotations(path, annotations, record, report=report)


def load_report(path: str | Path) -> str | None:
    """The report text stored with an image's annotations (None when there is none)."""
    from cxr_viewer.core.jsonio import read_json_limited

    doc = read_json_limited(path, max_bytes=MAX_SIDECAR_BYTES, max_depth=MAX_SIDECAR_DEPTH)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{Path(path).name} is not a cxr-viewer annotations file")
    text = doc.get("report")
    return text if isinstance(text, str) and text.strip() else None


def load_annotations(path: str | Path, record: ImageRecord | None) -> list[Any]:
    """Read a sidecar written by :func:`save_annotations`; a sidecar of another image is refused."""
    from cxr_viewer.core.jsonio import read_json_limited

    doc = read_json_limited(path, max_bytes=MAX_SIDECAR_BYTES, max_depth=MAX_SIDECAR_DEPTH)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{Path(path).name} is not a cxr-viewer annotations file")
    image = doc.get("image") or {}
    image = image if isinstance(image, dict) else {}
    shape = image.get("shape")
    if record is not None and shape and (not isinstance(shape, list) or tuple(shape) != record.shape):
        raise ValueError(f"{Path(path).name} belongs to an image of another size")
    items = doc.get("annotations", [])
    if not isinstance(items, list) or len(items) > MAX_ANNOTATIONS:
        raise ValueError(f"{Path(path).name} holds no list of at most {MAX_ANNOTATIONS} annotations")
    out = []
    for d in items:
        if not isinstance(d, dict):
            raise ValueError(f"{Path(path).name}: an annotation is not an object")
        try:
            out.append(annotation_from_dict(d, record))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{Path(path).name}: an annotation is incomplete ({type(exc).__name__})") from None
    return out
