"""Quality-control flags shown with every result (in the spirit of CAD4TB's input checks).

The models were trained on adult frontal chest radiographs; images outside that
domain still get scores, but always with a flag explaining why the scores may not
apply. Flags are data (:class:`QCFlag`) so the UI, the JSON output and reports
render them the same way.
"""

from __future__ import annotations

import numpy as np

from cxr_viewer.core.inference.results import QCFlag
from cxr_viewer.core.io.record import ImageRecord

__all__ = ["check_quality", "inversion_score", "RADIOGRAPH_MODALITIES", "MIN_SHORT_SIDE", "PAEDIATRIC_AGE"]

# DICOM Modality values of projection radiographs (CR computed, DX digital, DR/RG legacy/vendor).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "PX"})
# Secondary capture / other: may be a scanned film or a screenshot of one.
MAYBE_RADIOGRAPH = frozenset({"SC", "OT", "DOC", ""})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "L"})
CHEST_PARTS = frozenset({"", "CHEST", "THORAX", "LUNG", "CHEST_TO_PELVIS", "TORSO"})
# The networks see about 224-512 px; below 256 px the source was already heavily
# reduced and small findings (nodules, thin pneumothorax lines) may be lost.
MIN_SHORT_SIDE = 256
PAEDIATRIC_AGE = 16.0
# Lungs brighter than the mediastinum by more than this (in [0, 1] units) reads as inverted.
# On 150 NIH frontal images the mediastinum-minus-lungs contrast is >= 0.03 (median ~0.2).
INVERSION_MARGIN = -0.02
MIN_CONTRAST_STD = 0.01


def inversion_score(pixels: np.ndarray) -> float:
    """Mediastinum minus lung-field mean brightness on a frontal view.

    With bright = dense, the central mediastinum/spine strip is brighter than the two
    lung fields (positive score). A clearly negative score means the grey scale is
    probably inverted (e.g. a MONOCHROME1 file tagged wrongly, or a negative export).
    """
    h, w = pixels.shape

    def box(y0: float, y1: float, x0: float, x1: float) -> float:
        return float(pixels[int(h * y0) : max(int(h * y1), int(h * y0) + 1), int(w * x0) : max(int(w * x1), int(w * x0) + 1)].mean())

    lungs = (box(0.3, 0.6, 0.15, 0.35) + box(0.3, 0.6, 0.65, 0.85)) / 2.0
    mediastinum = box(0.25, 0.7, 0.45, 0.55)
    return mediastinum - lungs


def check_quality(record: ImageRecord, model_pixels: np.ndarray | None = None) -> list[QCFlag]:
    """All flags that apply to ``record`` (empty list: nothing noticed).

    ``model_pixels``: the record's windowed pixels when the caller already has them.
    """
    meta = record.metadata or {}
    flags: list[QCFlag] = []
    modality = str(meta.get("modality") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        if modality in MAYBE_RADIOGRAPH:
            flags.append(QCFlag(
                "secondary_capture",
                f"The image is a secondary capture ({modality}), possibly a scanned film or screenshot; "
                "scores may be less reliable than on an original radiograph.",
                "warning",
            ))
        else:
            flags.append(QCFlag(
                "not_radiograph",
                f"This is a {modality} image, not a chest radiograph (CR/DX). The models were not made for it; "
                "do not use these scores.",
                "error",
            ))
    body = str(meta.get("body_part") or "").upper().replace(" ", "_")
    if body and body not in CHEST_PARTS:
        flags.append(QCFlag(
            "not_chest",
            f"The body part is recorded as {body}, not chest; the models were made for chest radiographs.",
            "error",
        ))
    view = str(meta.get("view_position") or "").upper()
    lateral = view in LATERAL_VIEWS
    if lateral:
        flags.append(QCFlag(
            "lateral_view",
            f"Lateral view ({view}). The models were trained on frontal (PA/AP) views; scores may not apply.",
            "warning",
        ))
    elif view == "AP":
        flags.append(QCFlag(
            "ap_view",
            "AP view: the heart looks larger and positioning differs from PA; read cardiomegaly scores with care.",
            "info",
        ))
    age = meta.get("patient_age_years")
    if isinstance(age, (int, float)) and age < PAEDIATRIC_AGE:
        flags.append(QCFlag(
            "paediatric",
            f"Patient age {age:g} years: the models were trained mostly on adults; scores may not apply to children.",
            "warning",
        ))
    h, w = record.shape
    if min(h, w) < MIN_SHORT_SIDE:
        flags.append(QCFlag(
            "low_resolution",
            f"Very low resolution ({w}×{h} px, short side under {MIN_SHORT_SIDE} px): small findings may be missed.",
            "warning",
        ))
    px = record.model_pixels() if model_pixels is None else model_pixels
    step = max(1, min(h, w) // 512)  # statistics on a <= ~512 px subsample: same answer, less time
    px = px[::step, ::step]
    if float(px.std()) < MIN_CONTRAST_STD:
        flags.append(QCFlag(
            "blank_image",
            "The image is almost uniform (no visible anatomy after windowing); scores are meaningless.",
            "error",
        ))
    elif not lateral and min(h, w) >= 16 and inversion_score(px) < INVERSION_MARGIN:
        flags.append(QCFlag(
            "possibly_inverted",
            "The lungs look brighter than the mediastinum: the grey scale may be inverted "
            "(check the photometric interpretation). Scores on an inverted image are unreliable.",
            "warning",
        ))
    frames = meta.get("frames")
    if isinstance(frames, int) and frames > 1:
        flags.append(QCFlag("multi_frame", f"The file holds {frames} frames; only the first was analysed.", "info"))
    return flags
