"""The lung field: where a chest finding's heatmap may point.

A class-activation map of a small chest model is a coarse 7x7 picture of what moved the
score; on held-out TBX11K films the Abnormal map peaked inside a lesion box on 13% of
films (chance about 9%), often over the stomach or the neck. Lung disease lies in the
lungs, so the maps of lung findings are constrained to the lung field: the report
segmenter's masks for "right lung" and "left lung" (pixel-wise maximum, cut at the
segmenter's own threshold), dilated by :data:`DILATION` of the image's longer side so the
pleura, the costophrenic angles and a little of the hila stay in. Outside it the map is
zero; inside it is rescaled so its maximum is 1 again.

Both backends' maps (and the segmenter's lesion maps) go through :func:`constrain_map`,
called once by the engine above the backends. Findings whose disease lies outside the lungs
by definition (:data:`UNCONSTRAINED`) keep the whole map. When no lung is found (a lateral
view, a film the segmenter cannot read) the map is left as it was and says so.

Measured (scripts/localisation.py, docs/models.md): the dilation was chosen on the
validation films; the pointing figures are those of the held-out test films.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DILATION",
    "LUNG_PROMPTS",
    "MIN_LUNG_FRACTION",
    "UNCONSTRAINED",
    "LungField",
    "constrain_map",
    "lung_field_from_probabilities",
]

#: Segmenter prompts whose union is the lung field (phrasings the report segmenter was trained on).
LUNG_PROMPTS: tuple[str, ...] = ("right lung", "left lung")
#: Dilation radius as a fraction of the image's longer side. Chosen on the 105 validation TBX11K films
#: (scripts/localisation.py --lung-field): 0, 0.02, 0.04 and 0.08 differed by at most one film for
#: Abnormal's Grad-CAM and not at all for the TB lesion map; ties go to the wider field (more pleura kept).
DILATION = 0.02
#: A field covering less of the image than this is "no lung found": the map is left whole.
MIN_LUNG_FRACTION = 0.05
#: Findings whose disease lies outside the lung field by definition: their maps are not constrained.
UNCONSTRAINED: frozenset[str] = frozenset({"Cardiomegaly", "Hernia"})


@dataclass(frozen=True, eq=False)
class LungField:
    """A boolean lung field at the original image size, and where it came from (for the heatmap's caption)."""

    mask: np.ndarray  # bool HxW
    source: str  # e.g. "lung field (report-segmenter-resnet18), dilated 4%"

    @property
    def found(self) -> bool:
        return bool(self.mask.size) and float(self.mask.mean()) >= MIN_LUNG_FRACTION


def lung_field_from_probabilities(probs: list[np.ndarray], threshold: float, *, dilation: float = DILATION,
                                  source: str = "") -> LungField:  # fmt: skip
    """The dilated lung field from the segmenter's per-lung probability maps (original size)."""
    from scipy import ndimage

    union = np.maximum.reduce([np.asarray(p, dtype=np.float32) for p in probs]) >= float(threshold)
    radius = float(dilation) * max(union.shape)
    if radius >= 0.5 and union.any():
        # every pixel within ``radius`` of the lungs: a disc-shaped dilation, cost independent of the radius
        union = ndimage.distance_transform_edt(~union) <= radius
    label = source or "lung field"
    return LungField(mask=union, source=f"{label}, dilated {dilation:.0%}" if dilation > 0 else label)


def constrain_map(values: np.ndarray, field: np.ndarray | None) -> np.ndarray:
    """``values`` (HxW, >= 0) zeroed outside ``field`` (bool, the same shape) and rescaled to a maximum of 1.

    A missing or empty field, or a map with nothing inside the field, leaves the map as it is
    (the caller says that the constraint was not applied).
    """
    out = np.asarray(values, dtype=np.float32)
    if field is None or not field.any() or field.shape != out.shape:
        return out
    inside = np.where(field, out, np.float32(0.0))
    hi = float(inside.max()) if inside.size else 0.0
    if hi <= 0.0:
        return out
    return (inside / hi).astype(np.float32, copy=False)
