"""A score that is not a number (a damaged model's output) is shown as such and never breaks painting."""

from __future__ import annotations

import math

from cxr_viewer.core.inference.results import Finding
from cxr_viewer.qt.analysis import AnalysisState
from cxr_viewer.qt.panels.findings import NOT_A_NUMBER_TEXT, sort_findings


def test_nan_and_inf_scores_paint_and_read_as_not_a_number(qtbot, make_window) -> None:
    win = make_window()
    panel = win.findings_panel
    findings = (
        Finding("Effusion", math.nan, 0.5, "m", "1"),
        Finding("Nodule", 0.7, 0.5, "m", "1"),
        Finding("Mass", math.inf, math.nan, "m", "1"),
    )
    state = AnalysisState(status="done", findings=findings,
                          models=({"name": "m", "version": "1", "trained": True, "sha256": "0" * 64},))
    panel.set_state(state)
    panel.show()
    for mode in ("Score", "Positive first", "Model order"):
        panel.sort_combo.setCurrentText(mode)
        panel.grab()  # paints every row through the score delegate: an exception there fails the test
        qtbot.wait(10)
    rows = {r[1]: r for r in panel.rows()}
    assert rows["Effusion"][4] == NOT_A_NUMBER_TEXT and rows["Mass"][4] == NOT_A_NUMBER_TEXT
    assert rows["Nodule"][4].endswith("POSITIVE")
    item = panel.item_for("m", "Effusion")
    assert "not a number" in item.toolTip(0) and item.text(1) == "n/a"
    assert [f.label for f in sort_findings(findings, "Score")] == ["Nodule", "Effusion", "Mass"]
    assert win.isVisible()
