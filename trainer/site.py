"""``cxr-train calibrate --site``: measure a bundle on a hospital's own labelled films and fit a site profile.

The site gives a folder of films and a CSV of labels (``file`` relative to the folder, one
column per finding named like the bundle's labels, 1/0 or positive/negative, blank or
``unsure`` = unknown, optional ``patient_id``). The films are scored through the bundle
with the viewer's preprocessing; per finding the analysis and the fit are
:func:`cxr_viewer.core.site.fit.fit_site_finding` (the wizard in the viewer calls the
same function), and the profile is saved, versioned, in the profiles folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import TrainingDataError

if TYPE_CHECKING:
    import pandas as pd

    from cxr_viewer.core.site.profile import SiteProfile

log = logging.getLogger(__name__)

def site_frame(folder: str | Path, labels_csv: str | Path, model_labels: list[str]) -> tuple["pd.DataFrame", list[str]]:
    """Rows ``image`` (absolute), ``patient_id`` and the model's labels found in the CSV (NaN = unknown)."""
    import pandas as pd

    from cxr_viewer.core.errors import SiteProfileError
    from cxr_viewer.core.site.labels import read_site_labels

    try:
        rows, found = read_site_labels(folder, labels_csv, model_labels)
    except SiteProfileError as exc:
        raise TrainingDataError(exc.message) from None
    frame = pd.DataFrame({"image": [r["image"] for r in rows], "patient_id": [r["patient_id"] for r in rows]})
    for lab in found:
        frame[lab] = [r["labels"][lab] for r in rows]
    return frame, found


def parse_targets(items: list[str], default: str = "youden") -> tuple[str, dict[str, str]]:
    """``--target sensitivity:0.9`` (every finding) and ``--target Pneumonia=specificity:0.8`` (one)."""
    from cxr_viewer.core.site.profile import parse_target

    per: dict[str, str] = {}
    for item in items:
        lab, sep, rule = item.partition("=")
        if sep:
            parse_target(rule)
            per[lab.strip()] = rule.strip()
        else:
            parse_target(item)
            default = item.strip()
    return default, per


def calibrate_site(
    bundle: str | Path,
    folder: str | Path,
    labels_csv: str | Path,
    *,
    targets: Mapping[str, str] | None = None,
    default_target: str = "youden",
    method: str = "auto",
    holdout: float = 0.5,
    seed: int = 0,
    n_boot: int = 500,
    min_positives: int = 20,
    name: str = "site",
    note: str = "",
    profiles_dir: str | Path | None = None,
    report: str | Path | None = None,
    batch_size: int = 32,
    save: bool = True,
) -> tuple["SiteProfile", dict[str, Any]]:
    """Score the site's films, fit each finding's profile on a calibration part, measure on the held-out part."""
    from cxr_viewer.core.errors import SiteProfileError
    from cxr_viewer.core.models.bundle import load_bundle, sha256_file
    from cxr_viewer.core.site.fit import fit_site_finding
    from cxr_viewer.core.site.profile import SiteProfile, save_profile
    from cxr_viewer.core.site.stats import card_prevalence
    from trainer.evaluate import pick_device, predict

    loaded = load_bundle(bundle, device=pick_device())
    if not loaded.manifest.is_classifier or loaded.task == "multiclass":
        raise TrainingDataError(f"Bundle {loaded.name} is a {loaded.task} model; site profiles need per-finding scores.")
    frame, found = site_frame(folder, labels_csv, loaded.labels)
    P, Y = predict(loaded, frame, batch_size=batch_size)
    groups = frame["patient_id"].astype(str).to_numpy()
    findings, reports, skipped = {}, {}, {}
    for lab in found:
        j = loaded.labels.index(lab)
        known = ~np.isnan(Y[:, j])
        try:
            fp, rep = fit_site_finding(
                lab, Y[known, j], P[known, j], groups[known], current_threshold=loaded.manifest.threshold(lab),
                target=(targets or {}).get(lab, default_target), method=method, holdout=holdout, seed=seed,
                n_boot=n_boot, card_prevalence=card_prevalence(loaded.manifest, lab), min_positives=min_positives,
            )  # fmt: skip
        except SiteProfileError as exc:
            skipped[lab] = exc.message
            log.warning("%s", exc.message)
            continue
        findings[lab], reports[lab] = fp, rep
        for w in rep["warnings"]:
            log.warning("%s: %s", lab, w)
    if not findings:
        raise TrainingDataError("No finding could be calibrated on this site's films: " + "; ".join(skipped.values()))
    data = {
        "n_images": int(len(frame)), "n_patients": int(frame["patient_id"].nunique()),
        "folder": str(Path(folder).resolve()), "labels_file": Path(labels_csv).name,
        "labels_sha256": sha256_file(labels_csv), "holdout": float(holdout), "seed": int(seed),
        "calibration_method": method, "bootstrap": {"resamples": int(n_boot), "unit": "patient"},
        "scored": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    profile = SiteProfile(
        name=name, bundle={"name": loaded.name, "version": loaded.version, "sha256": loaded.sha256},
        findings=findings, note=note, data=data,
    )  # fmt: skip
    if save:
        profile = save_profile(profile, profiles_dir)
    out = {"profile": profile.describe(), "findings": reports, "skipped": skipped, "data": data}
    if report:
        from cxr_viewer.core.jsonio import finite_or_none

        rp = Path(report)
        rp.parent.mkdir(parents=True, exist_ok=True)
        rp.write_text(json.dumps(finite_or_none(out), indent=2, allow_nan=False), encoding="utf-8")
        plot_site_report(reports, rp.with_suffix(".png"))
    return profile, out


def plot_site_report(reports: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """ROC with the bundle's and the site's operating points, and held-out reliability before/after, per finding."""
    from cxr_viewer.core.export.site_figures import draw_site_axes
    from trainer.evaluate import _plt

    plt = _plt()
    fig, axes = plt.subplots(len(reports), 2, figsize=(8, 4 * len(reports)), squeeze=False)
    for (lab, r), (ax_roc, ax_rel) in zip(reports.items(), axes):
        draw_site_axes(ax_roc, ax_rel, lab, r)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
