"""Annotations as a DICOM Grayscale Softcopy Presentation State (PS3.3 A.33.1), written with highdicom.

Other viewers (Weasis, OHIF, RadiAnt, a PACS) show a GSPS over the image it
references: lines, ellipses and text in the image's pixel space, and the window
the radiologist left. Coordinates follow PS3.3 C.10.5.1.2: PIXEL units, column
then row, with (0, 0) at the top-left corner of the top-left pixel, so a pixel
centre at our integer ``(row, col)`` is ``(col + 0.5, row + 0.5)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_viewer.core.errors import CXRError
from cxr_viewer.core.io.record import ImageRecord

LAYER = "CXR_VIEWER"


def _xy(points: Sequence[tuple[float, float]]) -> np.ndarray:
    return np.array([[float(c) + 0.5, float(r) + 0.5] for r, c in points], dtype=np.float32)


def _objects(ann: Any) -> tuple[list[Any], list[Any]]:
    """(graphic objects, text objects) for one annotation."""
    from highdicom.pr import GraphicObject, GraphicTypeValues, TextObject

    kind = getattr(ann, "kind", "distance")
    poly, text = GraphicTypeValues.POLYLINE, []
    graphics: list[Any] = []

    def label_at(point: tuple[float, float], value: str) -> None:
        if value:
            x, y = _xy([point])[0]
            text.append(TextObject(value, units="PIXEL", anchor_point=(float(x), float(y)), anchor_point_visible=True))

    if kind == "distance":
        graphics.append(GraphicObject(poly, _xy([ann.p0, ann.p1]), units="PIXEL"))
        label_at(((ann.p0[0] + ann.p1[0]) / 2, (ann.p0[1] + ann.p1[1]) / 2), ann.label)
    elif kind == "angle":
        graphics.append(GraphicObject(poly, _xy([ann.a, ann.vertex, ann.b]), units="PIXEL"))
        label_at(ann.vertex, ann.label)
    elif kind == "roi":
        (r0, c0), (r1, c1) = ann.p0, ann.p1
        r0, r1 = sorted((r0, r1))
        c0, c1 = sorted((c0, c1))
        if ann.shape == "ellipse":
            rm, cm = (r0 + r1) / 2, (c0 + c1) / 2
            # PS3.3 C.10.5.1.2: major axis end points, then minor axis end points
            horiz, vert = [(rm, c0), (rm, c1)], [(r0, cm), (r1, cm)]
            axes = horiz + vert if (c1 - c0) >= (r1 - r0) else vert + horiz
            graphics.append(GraphicObject(GraphicTypeValues.ELLIPSE, _xy(axes), units="PIXEL"))
        else:
            graphics.append(GraphicObject(poly, _xy([(r0, c0), (r0, c1), (r1, c1), (r1, c0), (r0, c0)]), units="PIXEL"))
        label_at((r1, c1), ann.label.replace("\n", "; "))
    elif kind == "ctr":
        for seg in (ann.cardiac, ann.thoracic):
            graphics.append(GraphicObject(poly, _xy(list(seg)), units="PIXEL"))
        label_at(ann.thoracic[1], f"{ann.label} ({ann.detail})")
    elif kind == "arrow":
        (rt, ct), (rh, ch) = ann.tail, ann.head
        graphics.append(GraphicObject(poly, _xy([ann.tail, ann.head]), units="PIXEL"))
        length = math.hypot(rh - rt, ch - ct) or 1.0
        ur, uc = (rh - rt) / length, (ch - ct) / length
        s = max(6.0, min(40.0, length * 0.15))
        left = (rh - ur * s + uc * s * 0.45, ch - uc * s - ur * s * 0.45)
        right = (rh - ur * s - uc * s * 0.45, ch - uc * s + ur * s * 0.45)
        graphics.append(GraphicObject(poly, _xy([left, ann.head, right]), units="PIXEL"))
        label_at(ann.tail, ann.text)
    elif kind == "text":
        label_at(ann.pos, ann.text)
    else:
        raise ValueError(f"cannot write annotation kind {kind!r}")
    return graphics, text


def build_gsps(record: ImageRecord, annotations: Sequence[Any], *,
               window: tuple[float, float] | None = None, series_number: int = 990, instance_number: int = 1) -> Any:
    """A highdicom GSPS referencing ``record``'s DICOM image, holding every annotation.

    ``window`` is a (centre, width) in the file's own values (what the display showed).
    """
    from highdicom import UID
    from highdicom.pr import (
        GraphicAnnotation,
        GraphicLayer,
        SoftcopyVOILUTTransformation,
    )

    from cxr_viewer import __version__

    ds = record.header
    if record.format != "dicom" or ds is None or not getattr(ds, "SOPInstanceUID", None):
        raise CXRError("A presentation state can only reference a DICOM image; this image was not read from DICOM. "
                       "Its annotations are kept in the JSON file beside it.")
    ref = ds.copy()
    ref.Rows, ref.Columns = record.shape  # the header was kept without pixel data; these identify the frame
    graphics: list[Any] = []
    texts: list[Any] = []
    for ann in annotations:
        g, t = _objects(ann)
        graphics += g
        texts += t
    layer = GraphicLayer(layer_name=LAYER, order=1, description="cxr-viewer measurements and annotations")
    kwargs: dict[str, Any] = {}
    if window is not None:
        kwargs["voi_lut_transformations"] = [SoftcopyVOILUTTransformation(
            window_center=float(window[0]), window_width=max(float(window[1]), 1.0))]
    with warnings.catch_warnings():
        # highdicom warns about single-component patient names, common in anonymised films; the name is copied as is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        gsps = _gsps(
        referenced_images=[ref],
        series_instance_uid=UID(),
        series_number=series_number,
        sop_instance_uid=UID(),
        instance_number=instance_number,
        manufacturer="cxr-viewer",
        manufacturer_model_name="cxr-viewer",
        software_versions=str(__version__),
        device_serial_number="0",
        content_label="ANNOTATIONS",
        content_description="Measurements and annotations",
        graphic_layers=[layer],
        graphic_annotations=[GraphicAnnotation(
            referenced_images=[ref], graphic_layer=layer,
            graphic_objects=graphics or None, text_objects=texts or None)] if (graphics or texts) else None,
        **kwargs,
        )
    return gsps


def _gsps(**kwargs: Any) -> Any:
    from highdicom.pr import GrayscaleSoftcopyPresentationState

    return GrayscaleSoftcopyPresentationState(**kwargs)


def write_gsps(path: str | Path, record: ImageRecord, annotations: Sequence[Any], **kwargs: Any) -> Path:
    """Write the presentation state beside the study (``NAME.gsps.dcm`` by convention)."""
    from cxr_viewer.core.staging import staged_file

    path = Path(path)
    ds = build_gsps(record, annotations, **kwargs)
    with staged_file(path) as part:
        ds.save_as(part, enforce_file_format=True)
    return path


def gsps_path(image_path: str | Path) -> Path:
    p = Path(image_path)
    return p.with_name(p.stem + ".gsps.dcm")
