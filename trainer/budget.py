"""One false-alarm budget for every finding's operating threshold, spent where it buys the most.

Per-finding specificity targets add up: 14 findings at specificity 0.95 can put most of a
POSITIVE badge on every normal film. Here the budget is set once, as POSITIVE badges per
normal film in total (``0.5``), separately for each population group (adults, children), and
allocated across the validated findings to maximise the expected number of true findings
badged on the validation films: a greedy walk down every finding's ROC curve that always
takes the step buying the most true findings per unit of budget, while no group overspends.

A film only counts for a finding where the viewer would judge it (``eligible``: inside the
finding's population), so a child's film costs nothing for a finding validated on adults.

With ``confidence`` (e.g. 0.9) the budget must hold with that confidence, not only on the
validation films' average: a step is taken only while the ``confidence`` quantile of the
group's badge rate over patient-bootstrap replicates of its validation normal films stays
within the budget. A group with few validation normals (56 adults) then gets a margin as wide
as its sampling error, so a rate that was at the budget on validation does not overspend it on
new films; a group with many normals keeps almost all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def badge_counts(P: np.ndarray, thresholds: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """(N, L) POSITIVE badges: score at or above the threshold on a film inside the finding's population."""
    return (P >= thresholds[None, :]) & eligible


def allocate_budget(
    P: np.ndarray,
    Y: np.ndarray,
    *,
    normal: np.ndarray,
    group: np.ndarray,
    eligible: np.ndarray,
    candidates: Sequence[int],
    budget: float = 0.5,
    confidence: float = 0.0,
    patients: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[int, dict[str, Any]]:
    """Thresholds for the ``candidates`` (label indices) under ``budget`` badges per normal film per group.

    ``P``/``Y``: (N, L) validation scores and targets (NaN = unknown); ``normal``: (N,) films
    labelled normal; ``group``: (N,) population group of each film (e.g. "adults", "children");
    ``eligible``: (N, L) film inside the finding's population. Returns, per candidate, the
    threshold (without budget: just above every normal film's score, ``funded`` False), the true
    findings it badges and the badges per normal film it spends in each group.

    ``confidence`` > 0: every group's spend must also stay within the budget at that quantile
    of ``n_boot`` patient-bootstrap replicates (``patients``: (N,) patient of each film; default
    one patient per film) of the group's validation normal films.
    """
    if budget <= 0:
        raise ValueError(f"the false-alarm budget must be positive, got {budget}")
    if not 0 <= confidence < 1:
        raise ValueError(f"the budget's confidence must lie in [0, 1), got {confidence}")
    groups = sorted({str(g) for g in group[normal]})
    n_norm = {g: int(((group == g) & normal).sum()) for g in groups}
    spent = {g: 0.0 for g in groups}
    reps = _replicates(normal, group, groups, patients, n_boot, seed) if confidence > 0 else {}
    spent_b = {g: np.zeros(len(r[1])) for g, r in reps.items()}  # each replicate's spend
    state: dict[int, dict[str, Any]] = {}
    for j in candidates:
        pos = (Y[:, j] == 1) & eligible[:, j]
        pos_scores = np.sort(P[pos, j])  # ascending
        norm_scores = {g: np.sort(P[(group == g) & normal & eligible[:, j], j]) for g in groups}
        steps = np.unique(pos_scores)[::-1]  # candidate thresholds: each positive's score, highest first
        tp = len(pos_scores) - np.searchsorted(pos_scores, steps, side="left")
        cost = {g: (len(s) - np.searchsorted(s, steps, side="left")) / max(n_norm[g], 1) for g, s in norm_scores.items()}
        bcost = {}
        for g, (films, w) in reps.items():  # (B, steps): each replicate's badges per normal film at each step
            score = np.where(eligible[films, j], P[films, j], -np.inf)
            order = np.argsort(-score, kind="stable")
            cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w[:, order], axis=1)], axis=1)
            n_above = len(score) - np.searchsorted(np.sort(score), steps, side="left")
            bcost[g] = cum[:, n_above] / np.maximum(w.sum(1, keepdims=True), 1)
        state[j] = {"steps": steps, "tp": tp, "cost": cost, "bcost": bcost, "at": -1, "positives": int(pos.sum())}

    def current(j: int, key: str, g: str | None = None) -> float:
        s = state[j]
        if s["at"] < 0:
            return 0.0
        return float(s[key][s["at"]] if g is None else s[key][g][s["at"]])

    while True:
        best: tuple[float, float, int, int] | None = None  # (ratio, gain, label, step)
        for j, s in state.items():
            nxt = np.arange(s["at"] + 1, len(s["steps"]))
            if not nxt.size:
                continue
            gain = s["tp"][nxt] - current(j, "tp")
            dcost = np.zeros(nxt.size)
            feasible = np.ones(nxt.size, dtype=bool)
            for g in groups:
                d = s["cost"][g][nxt] - current(j, "cost", g)
                feasible &= spent[g] + d <= budget + 1e-12
                dcost = np.maximum(dcost, d / budget)
            for g, bc in s["bcost"].items():  # the bound grows with every step: the feasible steps are a prefix
                base = spent_b[g] - (bc[:, s["at"]] if s["at"] >= 0 else 0.0)
                feasible[_last_within(bc[:, nxt], base, confidence, budget) + 1 :] = False
            ok = feasible & (gain > 0)
            if not ok.any():
                continue
            ratio = np.where(ok, gain / (dcost + 1e-9), -np.inf)
            k = int(np.argmax(ratio))
            cand = (float(ratio[k]), float(gain[k]), j, int(nxt[k]))
            if best is None or cand[:2] > best[:2]:
                best = cand
        if best is None:
            break
        _, _, j, k = best
        for g in groups:
            spent[g] += float(state[j]["cost"][g][k]) - current(j, "cost", g)
        for g, bc in state[j]["bcost"].items():
            spent_b[g] += bc[:, k] - (bc[:, state[j]["at"]] if state[j]["at"] >= 0 else 0.0)
        state[j]["at"] = k
    out: dict[int, dict[str, Any]] = {}
    for j, s in state.items():
        at = s["at"]
        norm = P[normal & eligible[:, j], j]
        # no budget: just above every normal film's score (0 badges on validation), never the 1.0 no score reaches
        unfunded = float(np.nextafter(norm.max(), np.inf)) if norm.size else 1.0
        out[j] = {
            "value": float(s["steps"][at]) if at >= 0 else min(unfunded, float(np.nextafter(1.0, 0.0))),
            "funded": at >= 0,
            "true_badged": int(s["tp"][at]) if at >= 0 else 0,
            "positives": s["positives"],
            "badges_per_normal_film": {g: round(float(s["cost"][g][at]) if at >= 0 else 0.0, 4) for g in groups},
        }
    return out


def _replicates(normal: np.ndarray, group: np.ndarray, groups: list[str], patients: np.ndarray | None,
                n_boot: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Per group: its normal films' row indices and (n_boot, films) bootstrap counts, patients drawn
    with replacement (every film of a drawn patient counts once per draw)."""
    rng = np.random.default_rng(seed)
    pid = np.arange(len(normal)) if patients is None else np.asarray(patients)
    out = {}
    for g in groups:
        films = np.flatnonzero(normal & (group == g))
        uniq, inv = np.unique(pid[films], return_inverse=True)
        draws = rng.integers(0, len(uniq), size=(int(n_boot), len(uniq)))
        per_patient = np.stack([np.bincount(d, minlength=len(uniq)) for d in draws])  # (B, patients)
        out[g] = (films, per_patient[:, inv].astype(np.float64))
    return out


def _last_within(bcost: np.ndarray, base: np.ndarray, confidence: float, budget: float) -> int:
    """The last column k of ``bcost`` (B, K), nondecreasing along K in every row, whose spend
    ``base + bcost[:, k]`` keeps its ``confidence`` quantile within ``budget`` (-1: none)."""
    lo, hi = -1, bcost.shape[1] - 1
    while lo < hi:  # binary search: the quantile of a row-wise nondecreasing sequence is nondecreasing
        mid = (lo + hi + 1) // 2
        if np.quantile(base + bcost[:, mid], confidence) <= budget + 1e-12:
            lo = mid
        else:
            hi = mid - 1
    return lo


def budget_bound(badges: np.ndarray, normal: np.ndarray, group: np.ndarray, *, confidence: float,
                 patients: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per group: the badges per normal film (``badges``: (N,) per film) and its ``confidence``
    quantile over the same patient-bootstrap replicates :func:`allocate_budget` spends against."""
    groups = sorted({str(g) for g in group[normal]})
    out = {}
    for g, (films, w) in _replicates(normal, group, groups, patients, n_boot, seed).items():
        rates = (w @ badges[films].astype(float)) / np.maximum(w.sum(1), 1)
        out[g] = {"rate": round(float(badges[films].mean()), 4),
                  f"q{confidence:g}": round(float(np.quantile(rates, confidence)), 4), "normal_films": int(len(films))}
    return out


def badge_figures(
    P: np.ndarray, Y: np.ndarray, thresholds: np.ndarray, eligible: np.ndarray, *, normal: np.ndarray,
    group: np.ndarray, counted: np.ndarray, labels: Sequence[str], patients: np.ndarray, n_boot: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """What the budget buys on held-out films, with patient-bootstrap 95% CIs: POSITIVE badges per
    normal film per group, and the fraction of true findings badged, per finding and overall
    (``counted``: (L,) the labels that can wear a badge; a finding outside a film's population
    counts as not badged)."""
    from trainer.evaluate import _mean_ci

    badges = badge_counts(P, thresholds, eligible) & counted[None, :]
    out: dict[str, Any] = {"badges_per_normal_film": {}, "true_findings_badged": {}}
    for g in sorted({str(x) for x in group[normal]}):
        m = normal & (group == g)
        out["badges_per_normal_film"][g] = _mean_ci(badges[m].sum(1).astype(float), patients[m], n_boot=n_boot, seed=seed)
    pos = (Y == 1) & counted[None, :]
    rows, cols = np.nonzero(pos)
    if rows.size:
        hit = badges[rows, cols].astype(float)
        out["true_findings_badged"]["overall"] = _mean_ci(hit, patients[rows], n_boot=n_boot, seed=seed)
        findings = np.isin(cols, [j for j, lab in enumerate(labels) if lab != "Abnormal"])
        if findings.any() and not findings.all():
            out["true_findings_badged"]["overall (findings, without Abnormal)"] = _mean_ci(
                hit[findings], patients[rows[findings]], n_boot=n_boot, seed=seed
            )
        for g in sorted({str(x) for x in group}):
            m = group[rows] == g
            if m.any():
                out["true_findings_badged"][f"overall ({g})"] = _mean_ci(hit[m], patients[rows[m]], n_boot=n_boot, seed=seed)
        for j, lab in enumerate(labels):
            m = cols == j
            if m.any():
                out["true_findings_badged"][lab] = _mean_ci(hit[m], patients[rows[m]], n_boot=n_boot, seed=seed)
    return out
