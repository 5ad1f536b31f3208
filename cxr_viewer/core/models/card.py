"""The one model card renderer: a bundle's manifest -> Markdown (Models panel, ``cxr-train export``, model_card.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.models.blocks import AgeHead, AgeRange

if TYPE_CHECKING:
    from cxr_viewer.core.models.blocks import DerivedFinding
    from cxr_viewer.core.models.manifest import Manifest

__all__ = ["model_card_markdown", "write_model_card"]

#: Appended to a card whose bundle carries a full evaluation report.
EVALUATION_NOTE = "\nFull held-out evaluation (ROC, PR, calibration, Grad-CAM of the worst errors): `evaluation/report.md`.\n"


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _ci(ci: Any) -> str:
    return (
        f"{_fmt(ci[0])} - {_fmt(ci[1])}"
        if isinstance(ci, (list, tuple)) and len(ci) == 2
        else "n/a"
    )


def _classifier_tables(
    m: Mapping[str, Any], thresholds: Mapping[str, Any]
) -> list[str]:
    test = m.get("auroc")
    if not test:
        return ["No held-out classification metrics recorded."]
    mac = m.get("auroc_macro", {})
    out = [
        (
            f"Held-out **{m.get('split', 'test')}** split: {m.get('n_images')} images from {m.get('n_patients')} patients, "
            f"never used for training, model selection or thresholds. 95% CIs: {m.get('bootstrap', {}).get('resamples')} "
            "bootstrap resamples of patients (percentile)."
        ),
        "",
    ]
    if len(test) > 1:
        out += [
            f"**Macro AUROC {_fmt(mac.get('value'))}** (95% CI {_ci(mac.get('ci95'))}).",
            "",
        ]
        nih = m.get("auroc_macro_nih14")
        if nih:
            out += [f"**NIH-14 macro AUROC** (every finding but Abnormal, on the {nih.get('n_images')} NIH films): "
                    f"{_fmt(nih.get('value'))} (95% CI {_ci(nih.get('ci95'))}).", ""]  # fmt: skip
    out += [
        "| label | test pos / neg | AUROC | 95% CI | threshold | chosen by | sensitivity | specificity | PPV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lab, a in test.items():
        o = m.get("operating_point", {}).get(lab, {})
        t = thresholds.get(lab, {})
        how = f"{t.get('method', 'default')} on {t.get('source', '?')}"
        out.append(
            f"| {lab} | {a.get('n_pos')} / {a.get('n_neg')} | {_fmt(a.get('value'))} | {_ci(a.get('ci95'))} | "
            f"{_fmt(t.get('value', o.get('threshold')))} | {how} | {_fmt(o.get('sensitivity'))} | "
            f"{_fmt(o.get('specificity'))} | {_fmt(o.get('ppv'))} |"
        )
    return out


def _segmentation_tables(m: Mapping[str, Any]) -> list[str]:
    seg = m.get("segmentation") or {}
    if not seg:
        return ["No held-out segmentation metrics recorded."]
    out = [
        f"Held-out **{m.get('split', 'test')}** split, on the {m.get('grid', 'network grid')}; 95% CIs by patient bootstrap.",
        "",
    ]
    out += [
        "| target | samples | Dice | 95% CI | IoU | 95% CI |",
        "|---|---|---|---|---|---|",
    ]
    for kind, v in seg.items():
        if not isinstance(v, Mapping) or "dice" not in v:
            continue
        d, i = v.get("dice", {}), v.get("iou", {})
        out.append(
            f"| {kind} | {v.get('n', v.get('samples', '?'))} | {_fmt(d.get('value') if isinstance(d, Mapping) else d)} | "
            f"{_ci(d.get('ci95') if isinstance(d, Mapping) else None)} | {_fmt(i.get('value') if isinstance(i, Mapping) else i)} | "
            f"{_ci(i.get('ci95') if isinstance(i, Mapping) else None)} |"
        )
    neg = seg.get("negative")
    if isinstance(neg, Mapping) and "empty_rate" in neg:
        e = neg["empty_rate"]
        out += [
            "",
            (
                f"Sentences that name no region ({neg.get('n')} test samples): the mask is empty "
                f"({e.get('definition', '')}) in {_fmt(e.get('value'))} of them (95% CI {_ci(e.get('ci95'))})."
            ),
        ]
    swap = m.get("swap_test")
    if isinstance(swap, Mapping) and "table" in swap:
        out += [
            "",
            (
                f'Text-sensitivity test on {swap.get("n_images")} test films: prompted "left lung" and "right lung", '
                f"each mask scored (Dice) against both true lungs; the mask lands on the named side in "
                f"{_fmt(swap.get('side_accuracy'))} of prompts (a model ignoring the text would have equal rows)."
            ),
            "",
            "| prompt | Dice vs true left lung | Dice vs true right lung |",
            "|---|---|---|",
        ]
        for prompt, row in swap["table"].items():
            out.append(
                f"| {prompt} | {_fmt(row.get('left lung'))} | {_fmt(row.get('right lung'))} |"
            )
    return out


def _population_sections(manifest: Mapping[str, Any], m: Mapping[str, Any], typed: "Manifest") -> list[str]:
    """Calibration, false alarms on normal films, sub-groups, population, localisation, wall times."""
    out: list[str] = []
    thr = manifest.get("thresholds", {})
    unvalidated = [lab for lab, t in thr.items() if t.get("validated") is False]
    if any("validated" in t for t in thr.values()):
        out += ["", "### Which findings may show a POSITIVE badge", ""]
        out.append(
            "A threshold is validated when it rests on at least "
            f"{max((t.get('min_positives', 0) for t in thr.values()), default=0)} validation positives. "
            + (
                "Shown as a score only, never POSITIVE: "
                + ", ".join(f"{lab} ({thr[lab].get('val_positives')} validation positives)" for lab in unvalidated)
                + "."
                if unvalidated
                else "All are validated."
            )
        )
    cal = typed.calibration
    if cal is not None:
        out += ["", "### Calibration", "", f"Fitted on the {cal.split} split: {cal.method}. "
                "ECE on the held-out test split before (raw scores) and after (what the viewer shows):", "",
                "| label | method | ECE validation before | ECE validation after (5-fold CV) | isotonic (5-fold CV) | ECE test before | ECE test after |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for lab, c in cal.labels.items():
            cv = c.ece_cv
            out.append(
                f"| {lab} | {c.method} | {_fmt(c.ece_before)} | {_fmt(cv.get(c.method))} | "
                f"{_fmt(cv.get('isotonic'))} | {_fmt(m.get('ece_uncalibrated', {}).get(lab))} | {_fmt(m.get('ece', {}).get(lab))} |"
            )
    fab = m.get("false_alarm_burden")
    if fab:
        out += ["", "### False alarms on normal films", "",
                "Mean number of POSITIVE badges per held-out normal film (Abnormal = 0), per source (goal: at most 1):", ""]  # fmt: skip
        for ds, v in fab.items():
            b = v.get("badged", {})
            out.append(
                f"- {ds}: {_fmt(b.get('value'), 2)} (95% CI {_ci(b.get('ci95'))}) on {b.get('n_images')} films; "
                f"{_fmt(v.get('every_threshold'), 2)} if every threshold were badged"
            )
    out += badge_sections(typed, m)
    sub = m.get("subgroups")
    if sub:
        out += ["", "### Sub-groups (held-out test split)", "", "| finding | group | AUROC | 95% CI | pos / neg |", "|---|---|---|---|---|"]
        for lab, groups in sub.items():
            for g, v in groups.items():
                out.append(f"| {lab} | {g} | {_fmt(v.get('value'))} | {_ci(v.get('ci95'))} | {v.get('n_pos')} / {v.get('n_neg')} |")
    pop = typed.population
    if pop is not None:
        ages = pop.age_years or AgeRange()
        out += ["", "### Population", "", f"- {pop.note}",
                f"- Training images per source: {', '.join(f'{k} {v}' for k, v in pop.sources.items())}",
                f"- Ages: {_fmt(ages.min, 0)}-{_fmt(ages.max, 0)} years (recorded ages 5th-95th percentile "
                f"{_fmt(ages.recorded_p5, 0)}-{_fmt(ages.recorded_p95, 0)}; documented: {ages.documented})",
                f"- Views: {', '.join(f'{k} {v}' for k, v in pop.views.items())}",
                "- The viewer compares each image with this population (DICOM PatientAge, ViewPosition) and shows "
                "\"outside the model's population\" instead of a POSITIVE badge when it falls outside."]  # fmt: skip
    loc = m.get("localisation")
    if loc:
        pg = loc.get("pointing_game_tbx11k", {})
        out += ["", "### Heatmaps: localisation and faithfulness (held-out)", ""]
        out.append(
            f"- Pointing game on {pg.get('n')} TBX11K test films (Grad-CAM of {pg.get('finding')}): "
            f"{_fmt(pg.get('value'))} (95% CI {_ci(pg.get('ci95'))}); chance {_fmt(pg.get('chance'))}."
        )
        nih = loc.get("pointing_game_nih", {})
        if nih:
            out.append(f"- NIH boxes (BBox_List_2017) joined to our held-out NIH films by file name: {nih.get('joined_films')} films.")
            for lab, v in nih.get("per_finding", {}).items():
                out.append(f"  - {lab}: {_fmt(v.get('value'))} (95% CI {_ci(v.get('ci95'))}, n={v.get('n')})")
        for lab, v in loc.get("road_true_positives", {}).items():
            g, r = v.get("gradcam", {}), v.get("random_map", {})
            out.append(
                f"- ROAD on {g.get('n')} true positives of {lab}: Grad-CAM {_fmt(g.get('value'))} (95% CI {_ci(g.get('ci95'))}) "
                f"against a random map {_fmt(r.get('value'))} (95% CI {_ci(r.get('ci95'))})."
            )
    out += _noise_section(manifest)
    wall = m.get("wall_time_s")
    if wall:
        out += ["", "### Wall time of every build step", "", "| step | minutes |", "|---|---|"]
        out += [f"| {k} | {float(v) / 60:.1f} |" for k, v in wall.items()]
    return out


def _value_ci(r: Mapping[str, Any] | None, nd: int = 3) -> str:
    if not r:
        return "n/a"
    return f"{_fmt(r.get('value'), nd)} ({_ci(r.get('ci95'))})"


def badge_sections(typed: "Manifest", m: Mapping[str, Any]) -> list[str]:
    """The false-alarm budget, what it buys on held-out films, the age head and each finding's population."""
    out: list[str] = []
    budget = typed.extra.get("false_alarm_budget")
    b = m.get("badges")
    if budget or b:
        out += ["", "### POSITIVE badges: one false-alarm budget (held-out test split, 95% CIs)", ""]
        if budget:
            out.append(
                f"Thresholds spend one budget of at most {_fmt(budget.get('badges_per_normal_film'), 2)} POSITIVE badges "
                f"per normal film in total, for adults and children separately ({budget.get('groups')}), allocated "
                f"across the validated findings to maximise the {budget.get('objective')}; chosen on the "
                f"{budget.get('split')} split only (normal films: "
                + ", ".join(f"{g} {n}" for g, n in (budget.get("normal_films") or {}).items()) + ")."
            )
            if budget.get("rule"):
                q = f"q{budget.get('confidence'):g}"
                held = "; ".join(f"{g} {v.get('rate')} (bound {v.get(q)})" for g, v in (budget.get("validation") or {}).items())
                out.append(f"Margin for small validation sets: {budget['rule']}. Validation badges per normal film: {held}.")
        if b:
            out += ["", "| | value (95% CI) | films or findings |", "|---|---|---|"]
            for g, r in b.get("badges_per_normal_film", {}).items():
                out.append(f"| POSITIVE badges per normal film, {g} | {_value_ci(r)} | {r.get('n_images')} films |")
            for k, r in b.get("true_findings_badged", {}).items():
                out.append(f"| true findings badged, {k} | {_value_ci(r)} | {r.get('n_images')} findings |")
    age = m.get("age_head")
    if age:
        out += ["", "### Age head (held-out test split, 95% CIs)", "",
                "A linear read of the pooled features; the viewer uses it when a film's header records no age."]
        head = (typed.population.age_head if typed.population is not None else None) or AgeHead()
        how = head.chosen_on
        if head.child_below is not None:
            out.append(f"A film it estimates under {_fmt(head.child_below, 2)} years counts as a child's"
                       + (f": chosen on the {how.get('split')} split to {how.get('rule')} ({how.get('children')} children, "
                          f"{how.get('adults')} adults; balanced accuracy {_fmt(how.get('balanced_accuracy'))}, "
                          f"{_fmt(how.get('balanced_accuracy_at_11.5'))} at 11.5 years)." if how.get("split") else "."))  # fmt: skip
        out += ["", "| | value (95% CI) | films |", "|---|---|---|"]
        for k, r in age.items():
            if isinstance(r, Mapping):
                out.append(f"| {k.replace('_', ' ')} | {_value_ci(r, 2)} | {r.get('n_images')} |")
    fp = {} if typed.population is None else typed.population.findings
    if fp:
        out += ["", "### Population each finding's threshold was validated on", "",
                "A film outside it (DICOM PatientAge, else the age head's child/adult call) shows the finding as "
                "\"outside population\", never POSITIVE.", "",
                "| finding | ages | children | views | validation films (positives) per source |", "|---|---|---|---|---|"]  # fmt: skip
        for lab, v in fp.items():
            a = v.age_years or AgeRange()
            src = ", ".join(f"{k} {n} ({v.positives.get(k, 0)})" for k, n in v.sources.items())
            out.append(f"| {lab} | {_fmt(a.min, 0)}-{_fmt(a.max, 0)} | {'yes' if v.children else 'no'} | "
                       f"{', '.join(v.views) or 'unrecorded'} | {src} |")  # fmt: skip
    return out


def _noise_section(manifest: Mapping[str, Any]) -> list[str]:
    """The score noise measured on validation (``score_noise``, scripts/score_noise.py)."""
    noise = manifest.get("score_noise")
    if not isinstance(noise, Mapping) or not isinstance(noise.get("labels"), Mapping):
        return []
    by_source = ", ".join(f"{k} {v}" for k, v in (noise.get("films_by_source") or {}).items())
    out = ["", "### Score noise (current | prior arrows)", "",
           f"Measured on {noise.get('n_films')} {noise.get('split', 'val')} films ({by_source}), "
           f"{noise.get('augmentations_per_film')} augmented copies each: {noise.get('what')}. "
           f"Statistic: {noise.get('statistic')}. Rule: {noise.get('rule')}.", "",
           "| finding | noise (median SD) | 95% CI | 90th percentile |", "|---|---|---|---|"]  # fmt: skip
    for lab, v in noise["labels"].items():
        if isinstance(v, Mapping):
            out.append(f"| {lab} | {_fmt(v.get('value'))} | {_ci(v.get('ci95'))} | {_fmt(v.get('p90'))} |")
    return out


def _derived_line(d: "DerivedFinding") -> str:
    """What the viewer does with a derived finding: a finding row, or a research overlay (and why)."""
    thr = _fmt(d.threshold.value)
    if d.is_finding:
        return (f"- Shown in the viewer as the finding \"{d.label}\" (threshold {thr}, validated: "
                f"{str(bool(d.validated)).lower()}): {d.note}")
    line = (f"- **Research overlay, not a finding**: the viewer offers only the opt-in map \"{d.label}\"; "
            f"it has no row among the findings, no badge, and no place in the worklist, the PDF report or the "
            f"DICOM SR. Why: {d.note}")
    ref = d.reference
    q = () if ref is None else ref.quantiles
    if ref is not None and len(q) >= 2:
        mid, p95 = q[len(q) // 2], q[min(len(q) - 1, round(0.95 * (len(q) - 1)))]
        line += (f" Its scale: {ref.reads_as or 'the share of validation normals scoring lower'}, from "
                 f"{ref.what} (median {_fmt(mid, 4)}, 95th percentile {_fmt(p95, 4)}); the map's colours "
                 "reach that share, never an alarm colour.")
    return line


def _lung_field_section(lf: Mapping[str, Any] | None) -> list[str]:
    """Heatmap pointing on TBX11K lesion boxes, unconstrained and constrained to the lung field (scripts/localisation.py)."""
    test = (lf or {}).get("test")
    if not test:
        return []
    chance = test.get("chance", {})
    lines = [
        "",
        "### Where the heatmaps point (TBX11K lesion boxes)",
        "",
        f"Peak of the map inside a TB lesion box on {test.get('films')} held-out TBX11K test films (patients of the "
        f"`splits.csv` test split; the dilation, {_fmt(test.get('dilation'), 2)} of the image's longer side, was chosen on "
        f"the validation films). Chance, a uniformly random peak: {_fmt(chance.get('image'))} of the image, "
        f"{_fmt(chance.get('lung_field'))} inside the lung field. 95% CIs: patient bootstrap.",
        "",
        "| map | whole image | lung field (viewer default) |",
        "|---|---|---|",
    ]
    for name, per in test.get("pointing", {}).items():
        u, c = per.get("unconstrained", {}), per.get("lung_field", {})
        lines.append(f"| {name} | {_fmt(u.get('value'))} ({_ci(u.get('ci95'))}) | {_fmt(c.get('value'))} ({_ci(c.get('ci95'))}) |")
    cov = ((lf or {}).get("validation") or {}).get("scorecam_coverage")
    if cov:
        u, c = cov.get("unconstrained", {}), cov.get("constrained", {})
        lines += ["", f"ScoreCAM coverage, {cov.get('what')}: {_fmt(u.get('value'))} unconstrained, "
                      f"{_fmt(c.get('value'))} in the lung field."]
    return lines


def write_model_card(bundle_dir: Any, notes: Mapping[str, Any] | None = None) -> Any:
    """Render ``model_card.md`` of a bundle folder from its manifest (plus ``notes``); returns its path."""
    from pathlib import Path

    bundle = Path(bundle_dir)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    card = model_card_markdown(manifest, notes)
    if (bundle / "evaluation" / "report.md").is_file():
        card += EVALUATION_NOTE
    out = bundle / "model_card.md"
    from cxr_viewer.core.staging import write_atomic

    return write_atomic(out, card)


def model_card_markdown(manifest: "Manifest | Mapping[str, Any]", notes: Mapping[str, Any] | None = None) -> str:
    """THE model card: from the manifest alone (plus optional human ``notes``), so it cannot disagree with it.

    ``notes`` (scripts/model_card.py reads them from YAML): ``use_note``, ``data``, ``recipe``,
    ``results``, ``citations``. The Models panel, ``cxr-train export`` and the shipped
    ``model_card.md`` files all come from here.
    """
    from cxr_viewer.core.models.manifest import Manifest

    typed = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    manifest = typed.to_dict()
    notes = notes or {}
    prov = manifest.get("provenance", {})
    cfg = prov.get("config", {})
    pre = manifest.get("preprocessing", {})
    metrics = manifest.get("metrics", {})
    lines = [f"# Model card: {manifest['name']} {manifest['version']}", ""]
    if not manifest.get("trained"):
        lines += ["> **UNTRAINED — random weights.** Scores from this model mean nothing; it exists for testing.", ""]
    lines += [
        f"**{manifest.get('intended_use', '')}** {notes.get('use_note', '')}".rstrip(),
        "",
        manifest.get("description", ""),
        "",
        "## What it is",
        "",
        f"- Task: `{manifest['task']}`; labels: {', '.join(manifest.get('labels', [])) or 'none (encoder only)'}",
        f"- Architecture: `{manifest['architecture'].get('name')}` {json.dumps(manifest['architecture'].get('kwargs', {}))}",
        f"- Initialisation: {prov.get('init', 'random')}",
        f"- Weights: `{manifest['weights'].get('file')}` ({manifest['weights'].get('dtype')}), sha256 `{manifest['weights'].get('sha256')}`",
        (
            f"- Preprocessing (the viewer applies exactly this): {pre.get('size')} px, {pre.get('resize')}, "
            f"window {pre.get('window')}, mean {pre.get('mean')} std {pre.get('std')}, {pre.get('channels')} channel"
        ),
    ]
    if manifest.get("text_encoder"):
        lines.append(f"- Text encoder (frozen): {json.dumps(manifest['text_encoder'])}")
    lines += ["", "## Training data and splits", ""]
    lines += [f"- {d}" for d in notes.get("data", [])]
    lines += [
        f"- Datasets in the manifest: {', '.join(prov.get('datasets', [])) or 'see above'}",
        f"- Patient-level split file: `splits.csv` in this folder, sha256 `{prov.get('split_sha256', '')}`",
    ]
    for k in ("train_images", "train_patients", "train_samples", "label_fraction"):
        if k in prov:
            lines.append(f"- {k.replace('_', ' ')}: {prov[k]}")
    lines += ["", "## Recipe", ""]
    keys = (
        "backbone",
        "image_size",
        "batch_size",
        "lr",
        "weight_decay",
        "max_epochs",
        "max_time",
        "loss",
        "mode",
        "augment",
        "seed",
    )
    lines.append(
        "- "
        + ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg and cfg[k] is not None)
    )
    lines += [f"- {r}" for r in notes.get("recipe", [])]
    lines.append(
        f"- Code: {prov.get('code_version', '')}; created {prov.get('created', '')}"
    )
    lines.append("- Rebuild: `scripts/build_default_models.sh` (see docs/models.md)")
    lines += ["", "## Thresholds", ""]
    thr = manifest.get("thresholds", {})
    if thr:
        for lab, t in thr.items():
            lines.append(
                f"- {lab}: {_fmt(t.get('value'))} ({t.get('method')}, {t.get('source')})"
            )
    else:
        lines.append("- none (no decisions are made by this model)")
    lines += ["", "## Held-out results", ""]
    if manifest["task"] in ("multilabel", "binary", "multiclass"):
        lines += _classifier_tables(metrics, thr)
    elif manifest["task"] in ("text_segmentation", "detection_heatmap"):
        lines += _segmentation_tables(metrics)
    elif metrics.get("validation"):
        v = metrics["validation"]
        lines.append(
            "No findings to score. Reconstruction on the pre-training validation split: "
            + ", ".join(f"{k.removeprefix('val_')} {_fmt(x)}" for k, x in v.items())
            + "."
        )
    cmp_ = metrics.get("ssl_vs_random")
    if cmp_:
        lines += ["", "### What self-supervised pre-training gained", ""]
        lines.append(
            f"Kermany pneumonia fine-tune on 10% of the training patients for 3 epochs (`configs/recipes/compare.yaml`), run twice with "
            f"the same split, seed and batches; only the initial weights differ. Test split, {cmp_.get('n_images')} images; paired patient bootstrap "
            f"({cmp_.get('bootstrap', {}).get('resamples')} resamples) of the AUROC difference."
        )
        lines += [
            "",
            "| label | AUROC from SSL encoder | AUROC from random init | difference | 95% CI |",
            "|---|---|---|---|---|",
        ]
        for lab, v in cmp_.get("labels", {}).items():
            lines.append(
                f"| {lab} | {_fmt(v.get('auroc_a'))} | {_fmt(v.get('auroc_b'))} | {_fmt(v.get('difference'))} | "
                f"{_ci(v.get('difference_ci95'))} |"
            )
    tb = metrics.get("tuberculosis_lesion_score")
    if tb:
        t, thr = tb.get("test", {}), tb.get("threshold", {})
        lines += [
            "",
            "### Tuberculosis lesion score (localisation, not screening)",
            "",
            f"{tb.get('what')}.",
            "",
        ]
        lines.append(
            f"- Threshold {_fmt(thr.get('value'))}: {thr.get('method')} on the {thr.get('source')}."
        )
        lines.append(
            f"- Held-out TBX11K test films ({t.get('n_images')}, all TB-positive): "
            f"sensitivity {_fmt(t.get('sensitivity', {}).get('value'))} (95% CI {_ci(t.get('sensitivity', {}).get('ci95'))}); "
            f"pointing game (map peak inside a lesion box) {_fmt(t.get('pointing_game', {}).get('value'))} "
            f"(95% CI {_ci(t.get('pointing_game', {}).get('ci95'))}); lesion Dice {_fmt(t.get('lesion_dice', {}).get('value'))} "
            f"(95% CI {_ci(t.get('lesion_dice', {}).get('ci95'))}); box coverage {_fmt(t.get('box_coverage', {}).get('value'))} "
            f"(95% CI {_ci(t.get('box_coverage', {}).get('ci95'))})."
        )
        lines.append(f"- Specificity: {tb.get('specificity')}")
        lines += [_derived_line(d) for d in typed.derived_findings]
        for name, o in tb.get("other_sources", {}).items():
            lines.append(
                f"- Exploratory flag rate on {o.get('n_images')} {name} test films: {_fmt(o.get('flag_rate'))} "
                f"(95% CI {_ci(o.get('ci95'))}); on the {o.get('n_no_finding')} with no finding marked: "
                f"{_fmt(o.get('flag_rate_no_finding'))}. {o.get('note')}."
            )
    tbn = (tb or {}).get("normals")
    if tbn:
        pooled = tbn.get("pooled", {})
        lines.append(
            f"- Flag rate on {pooled.get('n_images')} held-out normal films of other sources ({tbn.get('what')}): "
            f"{_fmt(pooled.get('flag_rate'))} (95% CI {_ci(pooled.get('ci95'))}); goal {tbn.get('goal')}: "
            f"{'met' if tbn.get('goal_met') else 'NOT met'}."
        )
        for name, o in tbn.get("per_source", {}).items():
            lines.append(f"  - {name}: {_fmt(o.get('flag_rate'))} of {o.get('n_images')} (95% CI {_ci(o.get('ci95'))})")
    lines += _lung_field_section(metrics.get("lung_field"))
    lines += _population_sections(manifest, metrics, typed)
    for sec in notes.get("results", []):
        lines += ["", sec]
    lines += ["", "## Limitations", ""]
    lines += [f"- {lim}" for lim in manifest.get("limitations", [])]
    lines += ["", "## Licences and citations", ""]
    lines += [f"- {c}" for c in notes.get("citations", [])]
    return "\n".join(lines).rstrip() + "\n"
