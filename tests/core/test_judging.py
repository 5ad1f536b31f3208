"""judge(): one order (site profile, user thresholds, validation and population), one closed set of states."""

from __future__ import annotations

import math

import numpy as np

from cxr_viewer.core.inference.results import AnalysisResult, Finding, FindingState, QCFlag
from cxr_viewer.core.judging import (
    REPORT_ORDER,
    STATE_BADGE,
    STATE_FOOTNOTE,
    STATE_TEXT,
    display_name,
    judge,
    judged_from,
)

MODEL = {"name": "chest", "version": "1", "sha256": "ab" * 32}


def _result(*findings: Finding, qc: tuple[QCFlag, ...] = ()) -> AnalysisResult:
    return AnalysisResult("hash", tuple(findings), qc, (MODEL,))


def test_every_state_and_its_texts() -> None:
    r = _result(
        Finding("Effusion", 0.8, 0.5, "chest", validated=True),
        Finding("Pleural_Thickening", 0.2, 0.5, "chest"),
        Finding("Tuberculosis (lesion score)", 0.997, 0.996, "chest", validated=False, note="few positives"),
        Finding("Hernia", 0.1, 0.5, "chest", validated=False),
        Finding("Mass", float("nan"), 0.5, "chest"),
    )
    j = judge(r)
    states = {f.label: f.state for f in j.findings}
    assert states == {"Effusion": FindingState.POSITIVE, "Pleural_Thickening": FindingState.NEGATIVE,
                      "Tuberculosis (lesion score)": FindingState.ABOVE_NOT_VALIDATED,
                      "Hernia": FindingState.NOT_VALIDATED, "Mass": FindingState.NOT_APPLICABLE}
    assert j.get("Tuberculosis (lesion score)").reason == "few positives"
    assert [f.label for f in j.in_report_order()][:3] == ["Effusion", "Tuberculosis (lesion score)", "Pleural_Thickening"]
    assert j.footnotes() == [STATE_FOOTNOTE[s] for s in REPORT_ORDER if s is not FindingState.OUTSIDE_POPULATION]
    assert set(STATE_TEXT) == set(STATE_BADGE) == set(STATE_FOOTNOTE) == set(FindingState)
    assert display_name("Pleural_Thickening") == "Pleural thickening" and display_name("Effusion") == "Effusion"
    d = j.to_dict()["findings"][0]
    assert d["state"] == "positive" and d["threshold_source"] == "model" and d["display_name"] == "Effusion"
    assert judged_from(j) is j and judged_from(r).states() == j.states()


def test_unreliable_qc_puts_every_finding_outside_the_population() -> None:
    for code in ("possibly_inverted", "lateral_view", "not_chest"):
        j = judge(_result(Finding("Effusion", 0.9, 0.5, "chest"), qc=(QCFlag(code, "why", "warning"),)))
        (f,) = j.findings
        assert f.state is FindingState.OUTSIDE_POPULATION and "why" in f.reason and not j.positives
    j = judge(_result(Finding("Effusion", 0.9, 0.5, "chest"), qc=(QCFlag("ap_view", "AP", "info"),)))
    assert j.findings[0].state is FindingState.POSITIVE  # a flag that leaves scores readable changes nothing


def test_user_threshold_wins_over_the_site_profile(tmp_path) -> None:
    from cxr_viewer.core.site.fit import fit_site_finding
    from cxr_viewer.core.site.profile import SiteProfile, save_profile

    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.3, 300)
    y = (rng.random(300) < 1 / (1 + np.exp(-z))).astype(float)
    fp, _ = fit_site_finding("Pneumonia", y, 1 / (1 + np.exp(-3 * z)), np.arange(300), current_threshold=0.5,
                             target="sensitivity:0.9", method="platt", n_boot=50)  # fmt: skip
    profile = save_profile(SiteProfile("ward", MODEL, {"Pneumonia": fp}), tmp_path)
    r = _result(Finding("Pneumonia", 0.6, 0.5, "chest", validated=True), Finding("Effusion", 0.3, 0.5, "chest"))
    site = judge(r, site_profile=profile)
    pneu = site.get("Pneumonia")
    assert pneu.threshold_source == "site_profile" and pneu.finding.raw_score == 0.6
    assert site.get("Effusion").threshold_source == "model" and site.site_profile is not None
    both = judge(r, site_profile=profile, user_thresholds={("chest", "Pneumonia"): 0.99})
    pneu2 = both.get("Pneumonia")
    assert pneu2.threshold_source == "user" and pneu2.threshold == 0.99
    assert math.isclose(pneu2.score, pneu.score)  # the site's calibrated score, judged against the user's threshold
    assert pneu2.state is FindingState.NEGATIVE
    again = judge(site.result, site_profile=profile)  # a result that names its profile is not adjusted twice
    assert math.isclose(again.get("Pneumonia").score, pneu.score)
