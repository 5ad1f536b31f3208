"""Evented viewer state, free of Qt, so the display logic is testable headless.

The Qt layer (canvas, panels, status bar) only listens to :class:`Session` events
and calls its methods; the analysis controller draws heatmap and mask layers here
(the findings themselves are the workspace's study analysis, held once there:
:class:`cxr_viewer.core.analysis.StudyAnalysis`) and never touches a widget. It is
part of the :class:`~cxr_viewer.core.workspace.Workspace`. Everything is meant to be
mutated from one thread (the GUI thread): background work hands its results back
to that thread before they reach the session.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from psygnal import Signal, SignalGroup

from cxr_viewer.core.executor import BusyCounter
from cxr_viewer.core.imaging.geometry import DisplayTransform
from cxr_viewer.core.imaging.measurements import Measurement, make_distance

if TYPE_CHECKING:
    from cxr_viewer.core.io.record import ImageRecord

log = logging.getLogger(__name__)

ZOOM_MODES = ("fit", "actual", "free")
MASK_STYLES = ("contour", "fill")
MIN_WINDOW_WIDTH = 1e-4
MIN_ZOOM, MAX_ZOOM = 0.02, 64.0

#: Preferences every front end understands; the Qt layer persists them.
DEFAULT_PREFERENCES: dict[str, Any] = {
    "show_demographics": True,
    "heatmap_colormap": "jet",
    "heatmap_opacity": 0.45,
    "mask_style": "contour",
    "mask_opacity": 0.5,
    "zoom_step": 1.25,
    "measure_color": "#ffd400",
}


class WindowPreset(Protocol):
    """What the session needs from a window/level preset (see core.imaging.windowing)."""

    def get_limits(self, record: "ImageRecord") -> tuple[float, float]: ...


@dataclass(frozen=True)
class DisplayState:
    """How the current image is shown. Display only: models never see any of it."""

    window: tuple[float, float] = (0.0, 1.0)  # (lo, hi) in the record's [0, 1] pixel units
    invert: bool = False
    orientation: DisplayTransform = DisplayTransform()  # rotation + mirror, image -> screen
    zoom_mode: str = "fit"  # fit | actual (1 screen px = 1 image px) | free
    zoom: float = 1.0  # screen pixels per image pixel, reported by the canvas
    preset: str | None = "Default"  # name of the preset that set ``window``; None once edited

    @property
    def center_width(self) -> tuple[float, float]:
        lo, hi = self.window
        return (lo + hi) / 2.0, hi - lo

    @property
    def rotation(self) -> int:
        """Clockwise screen rotation in degrees, applied after the mirror."""
        return self.orientation.quarter_turns * 90

    @property
    def mirrored(self) -> bool:
        return self.orientation.mirror


@dataclass(frozen=True, eq=False)
class HeatmapLayer:
    """A saliency map over the image (e.g. Grad-CAM), in image pixel space.

    ``data`` is float HxW in [0, 1]; if its shape differs from the image it is
    stretched over the whole image. Values below ``threshold`` (a fraction of the map's
    maximum) are transparent. ``peak`` is where the map's maximum sits on the colour scale:
    the finding's score, so a map for a score of 0.1 is drawn in the scale's low colours and
    one for 0.99 reaches its top.
    """

    data: np.ndarray
    label: str = ""
    method: str = ""
    faithfulness: float | None = None
    peak: float = 1.0
    colormap: str = "jet"
    opacity: float = 0.45
    threshold: float | None = None
    visible: bool = True

    def __post_init__(self) -> None:
        arr = np.asarray(self.data)
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError("a heatmap must be a non-empty 2-D array")
        arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
        object.__setattr__(self, "data", np.clip(arr, 0.0, 1.0))
        object.__setattr__(self, "opacity", float(min(max(self.opacity, 0.0), 1.0)))
        peak = float(self.peak) if np.isfinite(self.peak) else 1.0
        object.__setattr__(self, "peak", float(min(max(peak, 0.0), 1.0)))

    @property
    def colour_values(self) -> np.ndarray:
        """The values the colour map is read at: the map scaled so its maximum sits at ``peak``."""
        return self.data * np.float32(self.peak)


@dataclass(frozen=True, eq=False)
class MaskLayer:
    """A segmentation for one phrase of the report: float probabilities or bool, HxW."""

    text: str
    mask: np.ndarray
    color: tuple[int, int, int] = (0, 200, 255)
    visible: bool = True
    style: str = "contour"  # contour | fill
    opacity: float = 0.5
    threshold: float = 0.5  # float masks are cut here for contour / fill

    def __post_init__(self) -> None:
        arr = np.asarray(self.mask)
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError("a mask must be a non-empty 2-D array")
        if self.style not in MASK_STYLES:
            raise ValueError(f"mask style must be one of {MASK_STYLES}")
        if len(self.color) != 3:
            raise ValueError("mask colour must be an (r, g, b) triple")
        object.__setattr__(self, "mask", arr)
        object.__setattr__(self, "opacity", float(min(max(self.opacity, 0.0), 1.0)))

    def binary(self) -> np.ndarray:
        """The mask as bool, cutting float probabilities at ``threshold``."""
        if self.mask.dtype == bool:
            return self.mask
        return np.asarray(self.mask, dtype=np.float32) >= self.threshold


class SessionEvents(SignalGroup):
    """Everything a front end may want to redraw on."""

    record_changed = Signal(object)  # ImageRecord | None
    display_changed = Signal(object)  # DisplayState
    studies_changed = Signal(object)  # list of scanned Patients
    open_files_changed = Signal(object)  # list[Path]
    heatmap_changed = Signal(object)  # HeatmapLayer | None
    masks_changed = Signal(object)  # list[MaskLayer]
    measurements_changed = Signal(object)  # list of Measurement and other core.imaging.measurements
    preferences_changed = Signal(str, object)  # key, value
    busy_changed = Signal(bool)
    error = Signal(object)  # an exception (CXRError or other) meant for the user


class Session:
    """The viewer's state: open studies, the current image, its display and drawn layers, busy work."""

    def __init__(self, preferences: dict[str, Any] | None = None) -> None:
        self.events = SessionEvents()
        self._record: ImageRecord | None = None
        self._display = DisplayState()
        self._studies: list[Any] = []
        self._open_files: list[Path] = []
        self._heatmap: HeatmapLayer | None = None
        self._masks: list[MaskLayer] = []
        self._measurements: list[Measurement] = []
        self._preferences: dict[str, Any] = dict(DEFAULT_PREFERENCES)
        if preferences:
            self._preferences.update(preferences)
        #: long work running for this viewer (reading, scanning, analysis): the executor counts it here
        self.work = BusyCounter()
        self.work.changed.connect(self.events.busy_changed.emit)

    # --- image -------------------------------------------------------------
    @property
    def record(self) -> "ImageRecord | None":
        return self._record

    def set_record(self, record: "ImageRecord | None") -> None:
        """Show a new image: results and measurements of the previous one are dropped."""
        self._record = record
        self._heatmap, self._masks, self._measurements = None, [], []
        if record is not None and record.source is not None:
            self.add_open_file(record.source)
        self._display = self._initial_display(record)
        self.events.record_changed.emit(record)
        self.events.display_changed.emit(self._display)
        self.events.heatmap_changed.emit(None)
        self.events.masks_changed.emit([])
        self.events.measurements_changed.emit([])

    def _initial_display(self, record: "ImageRecord | None") -> DisplayState:
        if record is None:
            return DisplayState()
        return DisplayState(window=default_window(record), preset="Default")

    # --- display -----------------------------------------------------------
    @property
    def display(self) -> DisplayState:
        return self._display

    def _set_display(self, **changes: Any) -> None:
        new = replace(self._display, **changes)
        if new != self._display:
            self._display = new
            self.events.display_changed.emit(new)

    def set_window(self, lo: float, hi: float, *, preset: str | None = None) -> None:
        """Set the displayed pixel range; a degenerate range is widened, never rejected."""
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return
        if hi < lo:
            lo, hi = hi, lo
        if hi - lo < MIN_WINDOW_WIDTH:
            mid = (lo + hi) / 2.0
            lo, hi = mid - MIN_WINDOW_WIDTH / 2.0, mid + MIN_WINDOW_WIDTH / 2.0
        self._set_display(window=(lo, hi), preset=preset)

    def set_center_width(self, center: float, width: float) -> None:
        width = max(float(width), MIN_WINDOW_WIDTH)
        self.set_window(center - width / 2.0, center + width / 2.0)

    def apply_preset(self, name: str, preset: WindowPreset | None = None) -> None:
        """Apply a window preset by name (looked up in core.imaging.windowing) or object."""
        if self._record is None:
            return
        preset = preset if preset is not None else window_presets()[name]
        lo, hi = preset.get_limits(self._record)
        self.set_window(lo, hi, preset=name)

    def set_invert(self, invert: bool) -> None:
        self._set_display(invert=bool(invert))

    def toggle_invert(self) -> None:
        self.set_invert(not self._display.invert)

    def rotate(self, degrees: int = 90) -> None:
        """Rotate clockwise on screen by a multiple of 90 degrees."""
        self._set_display(orientation=self._display.orientation.rotated(degrees))

    def flip_horizontal(self) -> None:
        """Mirror left-right as seen on screen (whatever the current rotation)."""
        self._set_display(orientation=self._display.orientation.flipped_horizontal())

    def flip_vertical(self) -> None:
        self._set_display(orientation=self._display.orientation.flipped_vertical())

    def set_orientation(self, orientation: DisplayTransform) -> None:
        self._set_display(orientation=orientation)

    def set_zoom(self, zoom: float, mode: str = "free") -> None:
        if mode not in ZOOM_MODES:
            raise ValueError(f"zoom mode must be one of {ZOOM_MODES}")
        zoom = float(min(max(zoom, MIN_ZOOM), MAX_ZOOM))
        self._set_display(zoom=zoom, zoom_mode=mode)

    def set_zoom_mode(self, mode: str) -> None:
        if mode not in ZOOM_MODES:
            raise ValueError(f"zoom mode must be one of {ZOOM_MODES}")
        self._set_display(zoom_mode=mode)

    def reset_display(self) -> None:
        """Back to how the image opened: default window, no rotation/flip/inversion, fitted."""
        new = self._initial_display(self._record)
        if new != self._display:
            self._display = new
            self.events.display_changed.emit(new)

    # --- studies and files -------------------------------------------------
    @property
    def studies(self) -> list[Any]:
        return list(self._studies)

    def set_studies(self, patients: Sequence[Any]) -> None:
        self._studies = list(patients)
        self.events.studies_changed.emit(self.studies)

    def add_studies(self, patients: Sequence[Any]) -> None:
        self._studies.extend(patients)
        self.events.studies_changed.emit(self.studies)

    @property
    def open_files(self) -> list[Path]:
        return list(self._open_files)

    def add_open_file(self, path: str | Path) -> None:
        path = Path(path)
        if path not in self._open_files:
            self._open_files.append(path)
            self.events.open_files_changed.emit(self.open_files)

    # --- analysis results --------------------------------------------------
    @property
    def heatmap(self) -> HeatmapLayer | None:
        return self._heatmap

    def set_heatmap(self, heatmap: HeatmapLayer | None) -> None:
        self._heatmap = heatmap
        self.events.heatmap_changed.emit(heatmap)

    def update_heatmap(self, **changes: Any) -> None:
        """Change how the heatmap is drawn (colormap, opacity, threshold, visible)."""
        if self._heatmap is not None:
            self.set_heatmap(replace(self._heatmap, **changes))

    @property
    def masks(self) -> list[MaskLayer]:
        return list(self._masks)

    def set_masks(self, masks: Sequence[MaskLayer]) -> None:
        self._masks = list(masks)
        self.events.masks_changed.emit(self.masks)

    def update_mask(self, index: int, **changes: Any) -> None:
        self._masks[index] = replace(self._masks[index], **changes)
        self.events.masks_changed.emit(self.masks)

    # --- measurements ------------------------------------------------------
    @property
    def measurements(self) -> list[Measurement]:
        return list(self._measurements)

    def measure(self, p0: tuple[float, float], p1: tuple[float, float]) -> Measurement:
        """Measure between two (row, col) points; mm when spacing is known, else px."""
        return make_measurement(self._record, p0, p1)

    def add_measurement(self, p0: tuple[float, float], p1: tuple[float, float]) -> Measurement:
        m = self.measure(p0, p1)
        self._measurements.append(m)
        self.events.measurements_changed.emit(self.measurements)
        return m

    def add_annotation(self, annotation: Any) -> Any:
        """Add any measurement or annotation of core.imaging.measurements (angle, ROI, CTR, arrow, text)."""
        self._measurements.append(annotation)
        self.events.measurements_changed.emit(self.measurements)
        return annotation

    def set_measurements(self, annotations: Sequence[Any]) -> None:
        """Replace every measurement and annotation of the current image (e.g. read from its sidecar)."""
        self._measurements = list(annotations)
        self.events.measurements_changed.emit(self.measurements)

    def undo_measurement(self) -> Any | None:
        """Remove the most recent measurement or annotation."""
        if not self._measurements:
            return None
        last = self._measurements.pop()
        self.events.measurements_changed.emit(self.measurements)
        return last

    def clear_measurements(self) -> None:
        self._measurements = []
        self.events.measurements_changed.emit([])

    # --- preferences -------------------------------------------------------
    @property
    def preferences(self) -> dict[str, Any]:
        return dict(self._preferences)

    def preference(self, key: str) -> Any:
        return self._preferences.get(key, DEFAULT_PREFERENCES.get(key))

    def set_preference(self, key: str, value: Any) -> None:
        if self._preferences.get(key) != value:
            self._preferences[key] = value
            self.events.preferences_changed.emit(key, value)

    # --- background work ---------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.work.busy

    def begin_work(self) -> None:
        """Count a running background task (loading, scanning, analysis)."""
        self.work.begin()

    def end_work(self) -> None:
        self.work.end()

    def report_error(self, exc: BaseException) -> None:
        """Hand an error to whatever front end listens; the session itself stays usable."""
        self.events.error.emit(exc)


# --- helpers shared with the Qt layer ----------------------------------------
def window_presets() -> dict[str, WindowPreset]:
    """Window presets by display name, in menu order (from core.imaging.windowing)."""
    from cxr_viewer.core.imaging import windowing

    return dict(windowing.PRESETS)


def default_window(record: "ImageRecord") -> tuple[float, float]:
    """The window an image opens with: the file's own (DICOM VOI) window, else its full range."""
    lo, hi = window_presets()["Default"].get_limits(record)
    return float(lo), float(hi)


def make_measurement(
    record: "ImageRecord | None", p0: tuple[float, float], p1: tuple[float, float]
) -> Measurement:
    """Distance between (row, col) points, in mm with a known pixel spacing, else px."""
    return make_distance(record, p0, p1)


__all__ = [
    "DEFAULT_PREFERENCES",
    "DisplayState",
    "HeatmapLayer",
    "MaskLayer",
    "Measurement",
    "Session",
    "SessionEvents",
    "default_window",
    "make_measurement",
    "window_presets",
]
