"""The evented Session, without Qt: display state, overlays, measurements, events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.imaging.geometry import DisplayTransform
from cxr_viewer.core.imaging.windowing import PRESETS
from cxr_viewer.core.io import read_image
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.session import HeatmapLayer, MaskLayer, Session


class Recorder:
    def __init__(self, session: Session) -> None:
        self.events: list[tuple[str, object]] = []
        for name in ("record_changed", "display_changed", "heatmap_changed", "masks_changed",
                     "measurements_changed", "busy_changed", "error", "open_files_changed"):
            getattr(session.events, name).connect(lambda *a, n=name: self.events.append((n, a[0] if len(a) == 1 else a)))
        session.events.preferences_changed.connect(lambda k, v: self.events.append(("preferences_changed", (k, v))))

    def names(self) -> list[str]:
        return [n for n, _ in self.events]


@pytest.fixture
def gradient() -> ImageRecord:
    arr = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (100, 1))
    return ImageRecord(pixels=arr, source=Path("/tmp/gradient.png"), format="png", default_window=(0.5, 0.5))


def test_new_record_resets_display_and_drops_old_results(gradient):
    s = Session()
    rec = Recorder(s)
    s.set_record(gradient)
    assert s.display.window == pytest.approx((0.25, 0.75)), "opens in the file's own window"
    s.set_heatmap(HeatmapLayer(np.ones((10, 10), np.float32)))
    s.add_measurement((0, 0), (3, 4))
    s.rotate(90)
    s.set_record(ImageRecord.from_array(np.eye(8), source=Path("/tmp/other.png")))
    assert s.heatmap is None and s.measurements == []
    assert s.display.rotation == 0 and s.display.window == pytest.approx((0.0, 1.0))
    assert s.open_files == [Path("/tmp/gradient.png"), Path("/tmp/other.png")]
    assert rec.names().count("record_changed") == 2
    assert "heatmap_changed" in rec.names() and "measurements_changed" in rec.names()


def test_window_is_ordered_and_never_degenerate(gradient):
    s = Session()
    s.set_record(gradient)
    s.set_window(0.8, 0.2)
    assert s.display.window == (0.2, 0.8) and s.display.preset is None
    s.set_window(0.5, 0.5)
    lo, hi = s.display.window
    assert hi > lo and (lo + hi) / 2 == pytest.approx(0.5)
    s.set_center_width(0.4, -3)
    assert s.display.window[1] > s.display.window[0]
    before = s.display
    s.set_window(float("nan"), 1.0)
    assert s.display == before


def test_presets_come_from_core_windowing(gradient):
    s = Session()
    s.set_record(gradient)
    for name, preset in PRESETS.items():
        s.apply_preset(name)
        assert s.display.window == pytest.approx(preset.get_limits(gradient))
        assert s.display.preset == name
    s.set_window(0.1, 0.2)
    s.reset_display()
    assert s.display.window == pytest.approx((0.25, 0.75)) and s.display.preset == "Default"


def test_rotation_and_flips_compose_like_the_core_geometry(gradient):
    s = Session()
    s.set_record(gradient)
    for _ in range(4):
        s.rotate(90)
    assert s.display.orientation == DisplayTransform()
    s.flip_horizontal()
    s.flip_vertical()
    assert s.display.orientation == DisplayTransform(2, False), "two mirrors make a half turn"
    s.rotate(-90)
    assert s.display.rotation == 90
    with pytest.raises(ValueError):
        s.rotate(45)
    events = Recorder(s)
    s.flip_horizontal()
    s.flip_horizontal()
    assert events.names() == ["display_changed", "display_changed"]


def test_zoom_is_clamped_and_mode_checked(gradient):
    s = Session()
    s.set_zoom(1e9)
    assert s.display.zoom == 64.0 and s.display.zoom_mode == "free"
    s.set_zoom(0.5, "actual")
    assert s.display.zoom_mode == "actual"
    with pytest.raises(ValueError):
        s.set_zoom(1.0, "sideways")


def test_measurements_in_mm_with_spacing_and_px_without(repo_root):
    s = Session()
    siim = read_image(repo_root / "resources" / "samples" / "siim_cr_chest.dcm")
    s.set_record(siim)
    m = s.add_measurement((100, 100), (100, 700))
    assert m.unit == "mm" and m.length == pytest.approx(600 * 0.168)
    assert m.label == "100.8 mm"
    png = read_image(repo_root / "resources" / "samples" / "nih_chest.png")
    s.set_record(png)
    m = s.add_measurement((0, 0), (30, 40))
    assert m.unit == "px" and m.length == pytest.approx(50) and m.label == "50 px"
    s.clear_measurements()
    assert s.measurements == []


def test_heatmap_and_mask_layers_validate_their_arrays():
    with pytest.raises(ValueError):
        HeatmapLayer(np.zeros((2, 3, 3)))
    h = HeatmapLayer(np.array([[np.nan, 2.0], [-1.0, 0.5]]), opacity=3)
    assert h.data.dtype == np.float32 and h.data.tolist() == [[0.0, 1.0], [0.0, 0.5]]
    assert h.opacity == 1.0
    m = MaskLayer("effusion", np.array([[0.2, 0.7]], dtype=np.float32))
    assert m.binary().tolist() == [[False, True]]
    with pytest.raises(ValueError):
        MaskLayer("x", np.zeros((4, 4)), style="glow")
    s = Session()
    s.set_masks([m, MaskLayer("b", np.ones((2, 2), bool))])
    s.update_mask(1, visible=False, color=(255, 0, 0))
    assert [x.visible for x in s.masks] == [True, False] and s.masks[1].color == (255, 0, 0)
    s.set_heatmap(h)
    s.update_heatmap(colormap="viridis", threshold=0.4)
    assert s.heatmap.colormap == "viridis" and s.heatmap.threshold == 0.4


def test_busy_counting_and_preferences():
    s = Session(preferences={"zoom_step": 1.5})
    rec = Recorder(s)
    assert s.preference("zoom_step") == 1.5 and s.preference("show_demographics") is True
    s.begin_work()
    s.begin_work()
    s.end_work()
    assert s.busy
    s.end_work()
    assert not s.busy
    s.end_work()  # extra end is ignored, not negative
    assert not s.busy
    s.set_preference("show_demographics", False)
    s.set_preference("show_demographics", False)
    assert [e for e in rec.events if e[0] in ("busy_changed", "preferences_changed")] == [
        ("busy_changed", True), ("busy_changed", False), ("preferences_changed", ("show_demographics", False))]
    err = ValueError("boom")
    s.report_error(err)
    assert rec.events[-1] == ("error", err)
