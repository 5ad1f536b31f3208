"""Normal means normal, per-source loss weights, the age head, each finding's population and
the one false-alarm budget: the pieces of the chest recipe, on small real arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch


def test_a_film_any_source_calls_normal_is_negative_for_every_finding() -> None:
    from scripts.make_chest_manifest import LABELS, NIH, _labels_for, _normal_films

    kermany = pd.DataFrame({"pneumonia": [0, 1]})
    lab = _labels_for("kermany", kermany, pd, np)
    assert (lab.iloc[0] == 0).all()  # a normal child: 0 for all 15, not unknown
    assert lab.iloc[1]["Pneumonia"] == 1 and lab.iloc[1]["Abnormal"] == 1 and lab.iloc[1][NIH].drop("Pneumonia").isna().all()
    shenzhen = _labels_for("shenzhen", pd.DataFrame({"tuberculosis": [0]}), pd, np)
    assert (shenzhen.iloc[0] == 0).all()
    covid = pd.DataFrame({"meta_finding": ["No Finding", "COVID-19", "todo"], "pneumonia_infectious": [0.0, 1.0, np.nan]})
    c = _labels_for("covid", covid, pd, np)
    assert (c.iloc[0] == 0).all()
    assert c.iloc[1]["Pneumonia"] == 1 and np.isnan(c.iloc[1]["Effusion"])
    assert c.iloc[2].isna().all()  # not yet labelled stays unknown
    nih = pd.DataFrame({k: [0, 1 if k == "Effusion" else 0] for k in NIH})
    n = _labels_for("nih14", nih, pd, np)
    assert (n.iloc[0] == 0).all() and n.iloc[1]["Abnormal"] == 1 and n.iloc[1]["Effusion"] == 1
    tb = _labels_for("tbx11k", pd.DataFrame({"x": [1]}), pd, np)
    assert tb.iloc[0]["Abnormal"] == 1 and tb.iloc[0][NIH].isna().all()  # TB films are not normal: no guess about the rest
    assert list(_normal_films("covid", covid, pd)) == [True, False, False]
    assert list(n.columns) == LABELS


def test_source_weights_stop_one_large_source_dominating_a_label() -> None:
    from trainer.losses import MaskedBCE, source_weights

    src = np.array(["kermany"] * 90 + ["nih14"] * 10)
    y = np.zeros((100, 2), np.float32)
    y[95:, 1] = np.nan  # label 1 unknown on half of NIH
    w, table = source_weights(src, y, "equal")
    for j in range(2):
        known = ~np.isnan(y[:, j])
        assert w[known, j].mean() == pytest.approx(1.0, rel=1e-5)  # the loss keeps its scale
        assert (w[~known, j] == 0).all()
    # equal: each source carries the same total weight of label 0
    assert w[src == "kermany", 0].sum() == pytest.approx(w[src == "nih14", 0].sum(), rel=1e-5)
    ws, _ = source_weights(src, y, "sqrt")
    share = ws[src == "kermany", 0].sum() / ws[:, 0].sum()
    assert 0.5 < share < 0.9  # half way between "equal" (0.5) and none (0.9)
    wn, _ = source_weights(src, y, "none")
    assert np.allclose(wn[:, 0], 1.0)
    assert set(table["0"]) == {"kermany", "nih14"} and table["0"]["nih14"] > table["0"]["kermany"]
    # the weighted loss really follows the weights: a film with weight 0 no longer counts
    loss = MaskedBCE()
    logits, target = torch.tensor([[5.0], [-5.0]]), torch.tensor([[0.0], [0.0]])
    assert loss(logits, target, torch.tensor([[0.0], [2.0]])) < loss(logits, target) / 10


def test_budget_is_spent_where_it_buys_the_most_true_findings_and_never_overspent() -> None:
    from trainer.budget import allocate_budget, badge_counts

    rng = np.random.default_rng(0)
    n = 400
    group = np.where(np.arange(n) < 300, "adults", "children")
    Y = np.zeros((n, 3))
    Y[:, 0] = rng.random(n) < 0.2  # an easy finding
    Y[:, 1] = rng.random(n) < 0.2  # a hard one (scores barely separate)
    Y[:, 2] = np.where(group == "adults", rng.random(n) < 0.1, np.nan)  # an adults-only finding
    P = np.stack([0.6 * Y[:, 0] + 0.5 * rng.random(n), 0.05 * Y[:, 1] + rng.random(n),
                  0.3 * np.nan_to_num(Y[:, 2]) + 0.7 * rng.random(n)], axis=1)  # fmt: skip
    normal = (np.nan_to_num(Y) == 0).all(1)
    eligible = np.ones_like(P, dtype=bool)
    eligible[group == "children", 2] = False  # a child's film is outside finding 2's population
    out = allocate_budget(P, Y, normal=normal, group=group, eligible=eligible, candidates=[0, 1, 2], budget=0.5)
    thr = np.array([out[j]["value"] for j in range(3)])
    badges = badge_counts(P, thr, eligible)
    for g in ("adults", "children"):
        per_film = badges[normal & (group == g)].sum(1).mean()
        assert per_film <= 0.5 + 1e-9
        assert per_film == pytest.approx(sum(out[j]["badges_per_normal_film"][g] for j in range(3)), abs=1e-3)
    assert out[0]["true_badged"] == out[0]["positives"]  # the easy finding gets all its positives
    sens = {j: out[j]["true_badged"] / out[j]["positives"] for j in range(3)}
    assert sens[0] > sens[1]
    assert out[2]["badges_per_normal_film"]["children"] == 0.0
    # a budget of almost nothing buys only free steps (no normal film above the threshold)
    tiny = allocate_budget(P, Y, normal=normal, group=group, eligible=eligible, candidates=[0, 1, 2], budget=1e-6)
    assert all(v["badges_per_normal_film"]["adults"] == 0.0 for v in tiny.values())
    for j, v in tiny.items():  # unfunded: just above every eligible normal film, still a score below 1
        assert v["value"] < 1.0 and (P[normal & eligible[:, j], j] < v["value"]).all()
    with pytest.raises(ValueError):
        allocate_budget(P, Y, normal=normal, group=group, eligible=eligible, candidates=[0], budget=0.0)


def test_finding_populations_and_the_age_head_from_recorded_ages() -> None:
    from trainer.population import finding_populations, fit_age_head, is_child

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "dataset": ["nih14"] * 60 + ["kermany"] * 60,
        "meta_age": list(rng.integers(20, 80, 60).astype(float)) + [np.nan] * 60,
        "meta_view": ["PA"] * 30 + ["AP"] * 30 + [""] * 60,
    })  # fmt: skip
    assert is_child(frame).sum() == 60
    Y = np.full((120, 2), np.nan)
    Y[:60, 0] = rng.random(60) < 0.3  # an NIH finding: adults only
    Y[:, 1] = rng.random(120) < 0.5  # pneumonia in both
    pops = finding_populations(frame, ["Effusion", "Pneumonia"], Y, min_positives=10)
    assert pops["Effusion"]["children"] is False and pops["Effusion"]["age_years"]["min"] >= 18
    assert set(pops["Effusion"]["sources"]) == {"nih14"} and pops["Effusion"]["views"] == ["AP", "PA"]
    assert pops["Pneumonia"]["children"] is True and pops["Pneumonia"]["age_years"]["min"] == 1.0
    # features that carry age: the head reads it back, children far below its cut-off
    age = np.where(frame["dataset"] == "kermany", 3.0, frame["meta_age"])
    F = np.stack([age / 10 + rng.normal(0, 0.1, 120), rng.normal(0, 1, 120), rng.normal(0, 1, 120)], axis=1)
    head = fit_age_head(F, frame)
    est = F @ np.asarray(head["weights"]) + head["bias"]
    assert np.mean(np.abs(est - age)) < 5
    assert ((est < head["child_below"]) == (age < 18)).mean() > 0.95
    assert head["fitted_on"] == {"kermany": 60, "nih14": 60}


def _budget_case(rng: np.random.Generator, n_adult_normal: int) -> tuple[np.ndarray, ...]:
    """Validation-like films: few adult normals, many children; two adult findings, one shared."""
    na, nc = n_adult_normal + 120, 400
    group = np.array(["adults"] * na + ["children"] * nc)
    Y = np.zeros((na + nc, 3))
    Y[n_adult_normal:na, 0] = rng.random(120) < 0.5
    Y[n_adult_normal:na, 1] = Y[n_adult_normal:na, 0] == 0
    Y[na:, 2] = rng.random(nc) < 0.6
    Y[:na, 2] = np.where(rng.random(na) < 0.2, 1, 0) * (np.arange(na) >= n_adult_normal)
    Y[na:, :2] = np.nan  # adult findings are unknown on children
    P = np.clip(0.25 * np.nan_to_num(Y) + rng.normal(0.4, 0.15, Y.shape), 0, 1)
    normal = np.nan_to_num(Y).sum(1) == 0
    eligible = np.ones_like(P, dtype=bool)
    eligible[group == "children", :2] = False
    return P, Y, normal, group, eligible


def test_the_budget_holds_with_confidence_on_few_validation_normals() -> None:
    """With --budget-confidence the budget's bootstrap upper quantile stays within it, so a small
    adult validation set gets a margin and new normal films are overspent far less often."""
    from trainer.budget import allocate_budget, badge_counts, budget_bound

    rng = np.random.default_rng(3)
    P, Y, normal, group, eligible = _budget_case(rng, 40)
    patients = np.arange(len(P)) // 2  # two films per patient: the bootstrap draws patients
    kw = dict(normal=normal, group=group, eligible=eligible, candidates=[0, 1, 2], budget=0.5)
    plain = allocate_budget(P, Y, **kw)
    sure = allocate_budget(P, Y, **kw, confidence=0.9, patients=patients, n_boot=400, seed=0)
    thr = {name: np.array([a[j]["value"] for j in range(3)]) for name, a in (("plain", plain), ("sure", sure))}
    per_film = {k: badge_counts(P, t, eligible).sum(1) for k, t in thr.items()}
    bound = budget_bound(per_film["sure"], normal, group, confidence=0.9, patients=patients, n_boot=400, seed=0)
    assert bound["adults"]["q0.9"] <= 0.5 + 1e-9 and bound["adults"]["normal_films"] == 40
    loose = budget_bound(per_film["plain"], normal, group, confidence=0.9, patients=patients, n_boot=400, seed=0)
    assert loose["adults"]["q0.9"] > 0.5  # spending it all on the mean leaves no margin
    spent = {k: sum(a[j]["badges_per_normal_film"]["adults"] for j in range(3)) for k, a in (("plain", plain), ("sure", sure))}
    assert spent["sure"] < spent["plain"] - 0.05
    # the margin follows the group's size: 400 children lose far less of their budget than 40 adults
    kids = {k: sum(a[j]["badges_per_normal_film"]["children"] for j in range(3)) for k, a in (("plain", plain), ("sure", sure))}
    assert spent["plain"] - spent["sure"] > kids["plain"] - kids["sure"]
    # on fresh normal adults from the same distribution, the confident thresholds overspend less often
    over = {"plain": 0, "sure": 0}
    for rep in range(30):
        r = np.random.default_rng(100 + rep)
        Pv, Yv, nv, gv, ev = _budget_case(r, 40)
        a_p = allocate_budget(Pv, Yv, normal=nv, group=gv, eligible=ev, candidates=[0, 1, 2], budget=0.5)
        a_s = allocate_budget(Pv, Yv, normal=nv, group=gv, eligible=ev, candidates=[0, 1, 2], budget=0.5,
                              confidence=0.9, n_boot=200, seed=rep)  # fmt: skip
        fresh = np.clip(r.normal(0.4, 0.15, (4000, 3)), 0, 1)  # normal adults, seen by findings 0-2
        for k, a in (("plain", a_p), ("sure", a_s)):
            t = np.array([a[j]["value"] for j in range(3)])
            over[k] += (fresh >= t).sum(1).mean() > 0.5
    assert over["plain"] >= 20 and over["sure"] <= over["plain"] // 2  # 27 and 9 of 30 here
    with pytest.raises(ValueError):
        allocate_budget(P, Y, **kw, confidence=1.0)


def test_the_child_adult_cut_off_is_chosen_on_validation_films() -> None:
    from trainer.population import choose_child_cutoff

    rng = np.random.default_rng(4)
    # a head that reads children too old (about 13) and adults around 45: 11.5 misses most children
    frame = pd.DataFrame({
        "dataset": ["kermany"] * 300 + ["nih14"] * 100 + ["tbx11k"] * 50,
        "meta_age": [np.nan] * 300 + list(rng.integers(20, 80, 100).astype(float)) + [np.nan] * 50,
    })  # fmt: skip
    est = np.concatenate([rng.normal(13, 2, 300), rng.normal(45, 12, 100), rng.normal(3, 1, 50)])
    out = choose_child_cutoff(est, frame)
    cut, how = out["child_below"], out["chosen_on"]
    assert 15 <= cut <= 18 and how["split"] == "val"
    assert how["children"] == 300 and how["adults"] == 100  # TBX11K records no age: not counted
    assert how["balanced_accuracy"] > how["balanced_accuracy_at_11.5"] + 0.2
    child = np.arange(400) < 300
    assert how["accuracy_children"] == pytest.approx(((est[:400] < cut) & child).sum() / 300, abs=1e-4)
    with pytest.raises(ValueError):
        choose_child_cutoff(est[:300], frame.iloc[:300])  # children only: nothing to balance
