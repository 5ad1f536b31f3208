"""Site profiles: fit on a calibration part, measured on a held-out part, bound to the weights' sha256, drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.errors import SiteProfileError, SiteProfileMismatchError
from cxr_viewer.core.inference.results import AnalysisResult, Finding
from cxr_viewer.core.site.drift import check_drift
from cxr_viewer.core.site.fit import fit_site_finding
from cxr_viewer.core.site.profile import (
    SiteProfile,
    apply_site_profile,
    list_profiles,
    load_profile,
    parse_target,
    save_profile,
)
from cxr_viewer.core.site.stats import split_patients

SHA = "ab" * 32


def _site(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model that is overconfident at this site (true logit z, reported 3 z - 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.3, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    p = 1 / (1 + np.exp(-(3 * z - 1)))
    return y, p, np.array([f"P{i // 2}" for i in range(n)])  # two films per patient


def _profile(tmp_path: Path | None = None, target: str = "sensitivity:0.9") -> tuple[SiteProfile, dict]:
    y, p, g = _site()
    fp, report = fit_site_finding("Pneumonia", y, p, g, current_threshold=0.5, target=target, n_boot=200)
    prof = SiteProfile("st-elsewhere", {"name": "pneu", "version": "1.0", "sha256": SHA}, {"Pneumonia": fp},
                       note="winter 2026 films", data={"n_images": len(y)})  # fmt: skip
    return prof, report


def test_fit_measures_recalibration_on_held_out_patients() -> None:
    prof, r = _profile()
    ho = r["held_out"]
    assert ho["ece_before"]["value"] > 0.08 and ho["ece_after"]["value"] < 0.05, (ho["ece_before"], ho["ece_after"])
    assert ho["ece_after"]["ci95"][0] <= ho["ece_after"]["value"] <= ho["ece_after"]["ci95"][1]
    # the bundle's 0.5 misses many positives here; the site threshold aims at sensitivity 0.9
    assert ho["before"]["sensitivity"] < 0.8 and ho["after"]["sensitivity"] == pytest.approx(0.9, abs=0.06)
    assert r["fit"]["calibration_part"]["n_images"] + r["fit"]["held_out_part"]["n_images"] == 2000
    assert r["auroc"]["ci95"][0] < r["auroc"]["value"] < r["auroc"]["ci95"][1]
    assert sum(b["n"] for b in r["reliability"]) == 2000 and r["roc"]["fpr"][0] == 0.0
    assert prof.findings["Pneumonia"].validated  # hundreds of positives in the calibration part


def test_patients_never_straddle_the_parts() -> None:
    y, _, g = _site()
    held = split_patients(y, g, holdout=0.5, seed=3)
    assert not set(g[held]) & set(g[~held]) and 0.4 < held.mean() < 0.6


def test_few_positives_warn_and_leave_the_threshold_unvalidated() -> None:
    y, p, g = _site()
    keep = (y == 0) | (np.cumsum(y) <= 16)
    fp, r = fit_site_finding("TB", y[keep], p[keep], g[keep], current_threshold=0.5, target="youden", n_boot=100)
    assert not fp.validated and any("fewer than 20" in w for w in r["warnings"])


def test_save_load_versions_and_validation(tmp_path: Path) -> None:
    prof, _ = _profile()
    a = save_profile(prof, tmp_path)
    b = save_profile(prof, tmp_path)
    assert (a.version, b.version) == (1, 2) and b.path.name == "st-elsewhere-v2.json"
    back = load_profile("st-elsewhere", tmp_path)  # by name: the newest version
    assert back.version == 2 and back.note == "winter 2026 films" and back.bundle["sha256"] == SHA
    x = np.linspace(0.01, 0.99, 7)
    assert back.findings["Pneumonia"].calibration(x) == pytest.approx(prof.findings["Pneumonia"].calibration(x), abs=1e-5)
    assert [p.version for p in list_profiles(tmp_path)] == [1, 2]
    bad = json.loads(a.path.read_text())
    bad["bundle"]["sha256"] = "nope"
    bad["findings"]["Pneumonia"]["threshold"] = 1.5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SiteProfileError, match="sha256.*threshold.*\\[0, 1\\]"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(SiteProfileError, match="No site profile 'other'"):
        load_profile("other", tmp_path)
    with pytest.raises(SiteProfileError, match="youden, sensitivity:0.9"):
        parse_target("sensitivity-0.9")


def _result(sha: str = SHA) -> AnalysisResult:
    f = Finding("Pneumonia", 0.30, 0.5, "pneu", "1.0", "youden", validated=True)
    other = Finding("Effusion", 0.7, 0.5, "nih", "1.0", "youden")
    return AnalysisResult("h", (f, other), (), ({"name": "pneu", "version": "1.0", "sha256": sha},
                                                {"name": "nih", "version": "1", "sha256": "cd" * 32}))  # fmt: skip


def test_apply_recalibrates_and_names_the_profile(tmp_path: Path) -> None:
    prof = save_profile(_profile()[0], tmp_path)
    fp = prof.findings["Pneumonia"]
    out = apply_site_profile(prof, _result())
    f = out.finding("Pneumonia")
    assert f.raw_score == 0.30 and f.score == pytest.approx(float(fp.calibration(np.array([0.30]))[0]))
    assert f.score != 0.30 and f.threshold == pytest.approx(fp.threshold)
    assert f.threshold_method == "site profile st-elsewhere v1: target sensitivity 0.9"
    assert f.to_dict()["raw_score"] == 0.3 and f.positive == (f.score >= f.threshold)
    assert out.finding("Effusion") == _result().finding("Effusion")  # other models untouched


def test_bundle_update_invalidates_the_profile() -> None:
    prof, _ = _profile()
    with pytest.raises(SiteProfileMismatchError, match="model was updated.*Recalibrate"):
        apply_site_profile(prof, _result(sha="ef" * 32))


def test_drift_psi_and_ks() -> None:
    prof, _ = _profile()
    rng = np.random.default_rng(9)
    same = 1 / (1 + np.exp(-(3 * rng.normal(0, 1.3, 300) - 1)))
    shifted = 1 / (1 + np.exp(-(3 * rng.normal(1.0, 1.3, 300) - 1)))
    ok, = check_drift(prof, {"Pneumonia": same})
    bad, = check_drift(prof, {"Pneumonia": shifted})
    few, = check_drift(prof, {"Pneumonia": shifted[:10]})
    assert not ok.drifted and ok.psi < 0.1 and ok.ks_p > 0.01
    assert bad.drifted and bad.psi > 0.25 and bad.ks_p < 1e-6 and "recalibrate" in bad.message
    assert not few.drifted and "judged from 50" in few.message
