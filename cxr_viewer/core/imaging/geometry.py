"""Measurements and display orientation, as pure functions on (row, col) points.

Points are ``(row, col)`` floats with pixel centres at integer coordinates, so
pixel ``[r, c]`` of an array sits at point ``(r, c)``. The display may rotate the
image in 90-degree steps and mirror it; overlays (heatmaps, masks, rulers) are
stored in image coordinates and mapped through the same :class:`DisplayTransform`
as the pixels, so they can never drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cxr_viewer.core.io.record import ImageRecord

Point = tuple[float, float]

_SOURCE_NOTES = {
    "PixelSpacing": "PixelSpacing, at the patient as stated by the file",
    "ImagerPixelSpacing": "ImagerPixelSpacing, not calibrated at the patient",
    "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor": (
        "ImagerPixelSpacing corrected by the estimated magnification"
    ),
}


def distance_px(p0: Point, p1: Point) -> float:
    """Distance in pixels between two (row, col) points."""
    return math.hypot(float(p1[0]) - float(p0[0]), float(p1[1]) - float(p0[1]))


def distance_mm(p0: Point, p1: Point, spacing_mm: tuple[float, float]) -> float:
    """Distance in mm between two (row, col) points; rows and columns may differ in spacing."""
    if spacing_mm is None:
        raise ValueError("this image has no pixel spacing; measure in pixels instead")
    dr = (float(p1[0]) - float(p0[0])) * float(spacing_mm[0])
    dc = (float(p1[1]) - float(p0[1])) * float(spacing_mm[1])
    return math.hypot(dr, dc)


def describe_spacing(record: ImageRecord) -> str:
    """One line for the status bar: the spacing and how far it can be trusted."""
    if record.spacing_mm is None:
        return "No pixel spacing in the file: measurements in pixels"
    r, c = record.spacing_mm
    value = f"{r:.3f} mm/px" if math.isclose(r, c, rel_tol=1e-6) else f"{r:.3f} x {c:.3f} mm/px (row x column)"
    source = record.spacing_source or "unknown source"
    return f"{value} ({_SOURCE_NOTES.get(source, source)})"


#: The film's longer side (cm) a chest radiograph's pixel spacing may give: outside it the spacing is doubted.
CHEST_FIELD_CM = (24.0, 60.0)
_PLANE = {
    "PixelSpacing": "the header gives it at the patient (PixelSpacing)",
    "ImagerPixelSpacing": "the header gives it at the imager (detector) plane, not at the patient (ImagerPixelSpacing)",
    "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor": (
        "the header gives it at the imager (detector) plane, corrected by its estimated magnification"
    ),
}


def spacing_problem(record: ImageRecord | None) -> str | None:
    """Why the header's pixel spacing is implausible for a chest film (None when it is plausible or absent).

    The spacing times the image size is the film's field of view: a chest radiograph's longer side is
    about 35-43 cm (smaller for children), so a spacing that makes it under 24 cm or over 60 cm is doubted,
    and the message says at which plane the header gives it.
    """
    if record is None or record.spacing_mm is None:
        return None
    r, c = record.spacing_mm
    h, w = record.shape
    height_cm, width_cm = h * r / 10.0, w * c / 10.0
    longest = max(height_cm, width_cm)
    if CHEST_FIELD_CM[0] <= longest <= CHEST_FIELD_CM[1]:
        return None
    size = "small for an adult" if longest < CHEST_FIELD_CM[0] else "large for a"
    plane = _PLANE.get(record.spacing_source or "", "the header does not say at which plane")
    return (f"Pixel spacing implausible for a chest film: it makes the film {width_cm:.0f} × {height_cm:.0f} cm, "
            f"too {size} chest ({plane}). Distances and areas in mm may be wrong.")


# --------------------------------------------------------------------------- orientation
def rotate_points_cw(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Map (row, col) points of an image of ``shape`` to the image rotated 90 degrees clockwise."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h = shape[0]
    return np.stack([pts[:, 1], (h - 1) - pts[:, 0]], axis=1)


def flip_points_lr(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Map (row, col) points to the left-right mirrored image."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.stack([pts[:, 0], (shape[1] - 1) - pts[:, 1]], axis=1)


@dataclass(frozen=True)
class DisplayTransform:
    """Display = rotate ``quarter_turns`` x 90 degrees clockwise after an optional left-right mirror.

    Build it with :meth:`rotated` / :meth:`flipped_horizontal` / :meth:`flipped_vertical`
    as the user clicks; apply it to arrays with :meth:`apply` and to points with
    :meth:`image_to_display` / :meth:`display_to_image`.
    """

    quarter_turns: int = 0
    mirror: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "quarter_turns", int(self.quarter_turns) % 4)

    # ---- composition (what the toolbar buttons do)
    def rotated(self, degrees_cw: int = 90) -> "DisplayTransform":
        if degrees_cw % 90:
            raise ValueError("rotation must be a multiple of 90 degrees")
        return DisplayTransform(self.quarter_turns + degrees_cw // 90, self.mirror)

    def flipped_horizontal(self) -> "DisplayTransform":
        # mirror_lr . rot^k = rot^-k . mirror_lr
        return DisplayTransform(-self.quarter_turns, not self.mirror)

    def flipped_vertical(self) -> "DisplayTransform":
        # mirror_ud = rot^2 . mirror_lr
        return DisplayTransform(2 - self.quarter_turns, not self.mirror)

    @property
    def is_identity(self) -> bool:
        return self.quarter_turns == 0 and not self.mirror

    # ---- arrays
    def display_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        h, w = int(shape[0]), int(shape[1])
        return (w, h) if self.quarter_turns % 2 else (h, w)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The array as displayed (a view where numpy allows; leading two axes are rows, cols)."""
        out = array[:, ::-1] if self.mirror else array
        return np.rot90(out, k=-self.quarter_turns, axes=(0, 1))

    # ---- points
    def image_to_display(self, points: Sequence[Point] | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(row, col) points in the image -> the same anatomy's points on the display."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        cur = (int(shape[0]), int(shape[1]))
        if self.mirror:
            pts = flip_points_lr(pts, cur)
        for _ in range(self.quarter_turns):
            pts = rotate_points_cw(pts, cur)
            cur = (cur[1], cur[0])
        return pts

    def display_to_image(self, points: Sequence[Point] | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Display (row, col) points -> image points; ``shape`` is the *image* shape."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        shapes = [(int(shape[0]), int(shape[1]))]
        for _ in range(self.quarter_turns):
            shapes.append((shapes[-1][1], shapes[-1][0]))
        for k in range(self.quarter_turns, 0, -1):
            # inverse of a clockwise turn of an image of shapes[k-1]
            h_prev = shapes[k - 1][0]
            pts = np.stack([(h_prev - 1) - pts[:, 1], pts[:, 0]], axis=1)
        if self.mirror:
            pts = flip_points_lr(pts, shapes[0])
        return pts
