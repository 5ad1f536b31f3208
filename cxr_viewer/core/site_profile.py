"""Site profiles: a model's scores recalibrated, and its thresholds chosen, on one hospital's own films.

A profile is bound to one bundle's weights (sha256). Per finding it holds the fitted
calibration (:mod:`cxr_viewer.core.models.calibration`), the site threshold and the rule
that chose it (Youden, a target sensitivity such as the WHO TB 0.90, or a target
specificity), what the site data showed (counts, AUROC with CI, ECE and the effect of the
recalibration measured on a held-out part of the site's films) and the reference score
distribution that drift is measured against. Profiles are versioned JSON files in the
user's profiles folder (:func:`cxr_viewer.core.paths.user_profiles_dir`).

``fit_site_finding`` is the one place the site analysis is done: ``cxr-train calibrate
--site`` and the viewer's wizard both call it with scores they computed.
``apply_site_profile`` is the one place findings are adjusted: ``analyze`` and the
viewer call it on an engine result; a bundle whose weights changed is refused.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import SiteProfileError, SiteProfileMismatchError
from cxr_viewer.core.models.calibration import (
    Calibration,
    choose_calibration,
    expected_calibration_error,
    fit_calibration,
)
from cxr_viewer.core.models.metrics import (
    auroc,
    bootstrap_auroc,
    bootstrap_stat,
    choose_threshold,
    operating_point,
    roc_curve,
)

if TYPE_CHECKING:
    from cxr_viewer.core.inference.results import AnalysisResult, Finding

__all__ = [
    "DriftMonitor",
    "DriftResult",
    "FindingProfile",
    "SiteProfile",
    "apply_site_profile",
    "adjust_findings",
    "card_prevalence",
    "check_drift",
    "draw_site_axes",
    "finite_json",
    "fit_site_finding",
    "list_profiles",
    "load_profile",
    "parse_target",
    "profile_text",
    "read_site_labels",
    "save_profile",
    "score_drift",
    "split_patients",
]

PROFILE_SCHEMA = 1
MIN_POSITIVES = 20  # fewer site positives: the threshold is shown as not validated
PSI_LIMIT = 0.25  # population stability index beyond which scores have shifted (0.1 = moderate)
KS_ALPHA = 0.01
DRIFT_MIN_IMAGES = 50
CAL_METHODS = ("auto", "none", "temperature", "platt", "isotonic")


# ---------------------------------------------------------------------- targets
def parse_target(text: str) -> tuple[str, float | None]:
    """``youden`` | ``sensitivity:0.9`` | ``specificity:0.8`` -> (rule, target)."""
    rule, _, value = str(text).strip().partition(":")
    rule = rule.strip().lower()
    if rule == "youden" and not value:
        return "youden", None
    if rule in ("sensitivity", "specificity"):
        try:
            t = float(value)
        except ValueError:
            t = math.nan
        if 0 < t < 1:
            return rule, t
        raise SiteProfileError(f"Target {text!r}: give the {rule} as a number between 0 and 1, e.g. {rule}:0.9.")
    raise SiteProfileError(f"Unknown target {text!r}; use youden, sensitivity:0.9 or specificity:0.8.")


def _target_text(rule: str, target: float | None) -> str:
    return "youden" if rule == "youden" else f"target {rule} {target:g}"


# ---------------------------------------------------------------------- the profile
@dataclass(frozen=True)
class FindingProfile:
    """One finding's site calibration, threshold and what the site data showed."""

    label: str
    calibration: Calibration
    threshold: float
    target: str  # "youden" | "sensitivity:0.9" | "specificity:0.8"
    validated: bool
    summary: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)  # raw-score distribution for drift

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibration": self.calibration.to_dict(),
            "threshold": round(float(self.threshold), 6),
            "target": self.target,
            "validated": bool(self.validated),
            "summary": finite_json(self.summary),
            "reference": finite_json(self.reference),
        }


@dataclass(frozen=True)
class SiteProfile:
    """A versioned site profile bound to one bundle's weights."""

    name: str
    bundle: dict[str, str]  # name, version, sha256
    findings: dict[str, FindingProfile]
    version: int = 0  # 0 = not saved yet; save_profile numbers it
    created: str = ""
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return f"{self.name} v{self.version}"

    def identity(self) -> dict[str, Any]:
        """Which profile this is, in short: what a result carries (and the SR and the PDF name)."""
        return {"name": self.name, "version": self.version, "id": self.id, "created": self.created,
                "note": self.note, "bundle": dict(self.bundle)}  # fmt: skip

    @property
    def title(self) -> str:
        """One line naming the profile: ``ward-3 v1 (2026-01-12)``."""
        return f"{self.id}" + (f" ({self.created[:10]})" if self.created else "")

    def describe(self) -> dict[str, Any]:
        """What a result names as its active profile (JSON, SR, the viewer's status)."""
        return {
            "name": self.name,
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "note": self.note,
            "bundle": dict(self.bundle),
            "findings": {lab: {"threshold": round(f.threshold, 6), "target": f.target, "calibration": f.calibration.method,
                               "validated": f.validated} for lab, f in self.findings.items()},  # fmt: skip
            "path": str(self.path) if self.path else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PROFILE_SCHEMA,
            "kind": "cxr-viewer site profile",
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "note": self.note,
            "bundle": dict(self.bundle),
            "data": finite_json(self.data),
            "findings": {lab: f.to_dict() for lab, f in self.findings.items()},
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str | Path | None = None) -> "SiteProfile":
        """Validate a profile; every problem is listed in one :class:`SiteProfileError`."""
        where = f" {source}" if source else ""
        if not isinstance(d, Mapping):
            raise SiteProfileError(f"The site profile{where} is not a JSON object.", path=source)
        problems: list[str] = []
        sv = d.get("schema_version")
        if not isinstance(sv, int) or sv < 1:
            problems.append("'schema_version' must be a positive integer")
        elif sv > PROFILE_SCHEMA:
            problems.append(f"schema_version {sv} is newer than this viewer understands ({PROFILE_SCHEMA}); update cxr-viewer")
        name = d.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append("'name' must be a non-empty text")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            problems.append("'version' must be a whole number")
        bundle = d.get("bundle")
        if not isinstance(bundle, Mapping) or not isinstance(bundle.get("name"), str):
            problems.append("'bundle' must name the model bundle it was fitted to")
            bundle = {}
        elif not re.fullmatch(r"[0-9a-f]{64}", str(bundle.get("sha256", ""))):
            problems.append("'bundle.sha256' must be the 64-digit sha256 of the bundle's weights")
        findings: dict[str, FindingProfile] = {}
        raw = d.get("findings")
        if not isinstance(raw, Mapping) or not raw:
            problems.append("'findings' must map each finding to its calibration and threshold")
            raw = {}
        for lab, f in raw.items():
            if not isinstance(f, Mapping):
                problems.append(f"finding {lab!r} must be an object")
                continue
            thr = f.get("threshold")
            if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not 0.0 <= float(thr) <= 1.0:
                problems.append(f"finding {lab!r}: 'threshold' must be a number in [0, 1]")
                continue
            try:
                cal = Calibration.from_dict(f.get("calibration"))  # checks every coefficient and knot
                parse_target(str(f.get("target", "youden")))
            except (TypeError, ValueError, SiteProfileError) as exc:
                problems.append(f"finding {lab!r}: {getattr(exc, 'message', exc)}")
                continue
            extra = {k: f.get(k) or {} for k in ("summary", "reference")}
            if not all(isinstance(v, Mapping) for v in extra.values()) or not isinstance(f.get("target", ""), str):
                problems.append(f"finding {lab!r}: 'summary' and 'reference' must be objects, 'target' a text")
                continue
            findings[str(lab)] = FindingProfile(
                label=str(lab), calibration=cal, threshold=float(thr), target=str(f.get("target", "youden")),
                validated=bool(f.get("validated", False)), summary=dict(extra["summary"]),
                reference=dict(extra["reference"]),
            )  # fmt: skip
        if not isinstance(d.get("data") or {}, Mapping):
            problems.append("'data' must be an object")
        for key in ("created", "note"):
            if not isinstance(d.get(key, ""), str):
                problems.append(f"'{key}' must be a text")
        if problems:
            short = [" ".join(str(x).split())[:200] for x in problems[:8]]  # one line, however hostile the values
            raise SiteProfileError(f"The site profile{where} is invalid: " + "; ".join(short) + ".", path=source)
        return cls(
            name=str(name), bundle={k: str(v) for k, v in bundle.items()}, findings=findings, version=int(version),
            created=str(d.get("created", "")), note=str(d.get("note", "")), data=dict(d.get("data") or {}),
            path=Path(source) if source else None,
        )  # fmt: skip

    # ------------------------------------------------------------------ binding to weights
    def check_bundle(self, models: Iterable[Mapping[str, Any]]) -> None:
        """Raise unless the bundle this profile was fitted to is among ``models`` with the same weights."""
        want = self.bundle.get("name")
        found = [m for m in models if m.get("name") == want]
        if not found:
            raise SiteProfileError(
                f"Site profile {self.id} is for the model {want!r}, which is not installed or not enabled; "
                "enable that model or choose another profile."
            )
        sha = str(found[0].get("sha256", ""))
        if sha != self.bundle.get("sha256"):
            raise SiteProfileMismatchError(
                f"Site profile {self.id} was fitted to {want} {self.bundle.get('version', '')} "
                f"(weights {self.bundle.get('sha256', '')[:12]}); the installed {want} "
                f"{found[0].get('version', '')} has other weights ({sha[:12]}): the model was updated, so the "
                "profile no longer applies. Recalibrate on your site's films (cxr-train calibrate --site, or the "
                "viewer's site calibration wizard)."
            )


def profile_text(profile: Mapping[str, Any]) -> str:
    """One line naming a site profile: name, version, date, the bundle it was fitted to, the note."""
    b = profile.get("bundle") or {}
    text = f"{profile.get('name', '?')} v{profile.get('version', '?')}"
    if profile.get("created"):
        text += f", created {str(profile['created'])[:10]}"
    text += f", fitted to {b.get('name', '?')} {b.get('version', '')} (weights sha256 {str(b.get('sha256', ''))[:16]})"
    if profile.get("note"):
        text += f"; note: {profile['note']}"
    return text



# ---------------------------------------------------------------------- files
def _folder(folder: str | Path | None) -> Path:
    from cxr_viewer.core.paths import user_profiles_dir

    return Path(folder) if folder is not None else user_profiles_dir()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "site"


def list_profiles(folder: str | Path | None = None) -> list[SiteProfile]:
    """Every readable profile in ``folder`` (default: the user's profiles folder), newest version last."""
    out = []
    root = _folder(folder)
    if not root.is_dir():
        return []
    for p in sorted(root.glob("*.json")):
        try:
            out.append(load_profile(p))
        except SiteProfileError:
            continue
    return sorted(out, key=lambda pr: (pr.name, pr.version))


def save_profile(profile: SiteProfile, folder: str | Path | None = None) -> SiteProfile:
    """Write ``profile`` as the next version of its name; returns it with ``version`` and ``path`` set."""
    root = _folder(folder)
    root.mkdir(parents=True, exist_ok=True)
    versions = [int(m.group(1)) for p in root.glob(f"{_safe(profile.name)}-v*.json")
                if (m := re.fullmatch(rf"{re.escape(_safe(profile.name))}-v(\d+)\.json", p.name))]  # fmt: skip
    version = max(versions, default=0) + 1
    created = profile.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    saved = replace(profile, version=version, created=created)
    path = root / f"{_safe(profile.name)}-v{version}.json"
    from cxr_viewer.core.staging import write_atomic

    write_atomic(path, json.dumps(saved.to_dict(), indent=2, allow_nan=False) + "\n")
    return replace(saved, path=path)


#: A site profile is a few kilobytes of JSON; anything far beyond these is refused before it is parsed.
MAX_PROFILE_BYTES = 4 << 20
MAX_PROFILE_DEPTH = 16


def load_profile(path_or_name: str | Path, folder: str | Path | None = None) -> SiteProfile:
    """A profile from a file path, or the newest version of a profile name in the profiles folder."""
    p = Path(path_or_name)
    if not p.is_file():
        matches = [pr for pr in list_profiles(folder) if pr.name == str(path_or_name) or pr.id == str(path_or_name)]
        if not matches:
            raise SiteProfileError(
                f"No site profile {str(path_or_name)!r} (looked for a file, and in {_folder(folder)}); "
                "create one with `cxr-train calibrate --site` or the viewer's site calibration wizard.",
                path=path_or_name,
            )
        return matches[-1]
    from cxr_viewer.core.jsonio import read_json_limited

    try:
        data = read_json_limited(p, max_bytes=MAX_PROFILE_BYTES, max_depth=MAX_PROFILE_DEPTH)
    except OSError as exc:
        raise SiteProfileError(f"The site profile {p} could not be read ({exc.strerror or exc}).", path=p) from None
    except ValueError as exc:
        raise SiteProfileError(f"The site profile {p} was refused: {exc}.", path=p) from None
    return SiteProfile.from_dict(data, source=p)


# ---------------------------------------------------------------------- applying
def adjust_findings(
    profile: SiteProfile, findings: Sequence["Finding"], models: Iterable[Mapping[str, Any]]
) -> tuple["Finding", ...]:
    """Findings of the profile's bundle with the site-calibrated score and the site threshold.

    ``models``: the identities (name, version, sha256) of the bundles that produced the
    findings; a profile fitted to other weights raises :class:`SiteProfileMismatchError`.
    Findings of other models, or labels the profile does not cover, are returned unchanged.
    """
    profile.check_bundle(models)
    out = []
    for f in findings:
        fp = profile.findings.get(f.label) if f.model == profile.bundle["name"] else None
        if fp is None:
            out.append(f)
            continue
        rule, target = parse_target(fp.target)
        out.append(
            replace(
                f,
                score=float(fp.calibration(np.array([f.score]))[0]),
                raw_score=float(f.score),
                threshold=float(fp.threshold),
                threshold_method=f"site profile {profile.id}: {_target_text(rule, target)}",
                validated=bool(fp.validated) and f.validated is not False,
            )
        )
    return tuple(out)


def apply_site_profile(profile: SiteProfile, result: "AnalysisResult") -> "AnalysisResult":
    """``result`` with the profile's bundle's findings recalibrated (see :func:`adjust_findings`).

    The result then names the profile (``site_profile``): its JSON, SR and PDF say which one is active.
    """
    return replace(result, findings=adjust_findings(profile, result.findings, result.models),
                   site_profile=profile.identity())


# ---------------------------------------------------------------------- drift
@dataclass(frozen=True)
class DriftResult:
    label: str
    n: int
    psi: float
    ks: float
    ks_p: float
    drifted: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return finite_json({"label": self.label, "n": self.n, "psi": round(self.psi, 4), "ks": round(self.ks, 4),
                        "ks_p": self.ks_p, "drifted": self.drifted, "message": self.message})  # fmt: skip


def reference_distribution(p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """What drift is measured against: 101 quantiles and a decile histogram of raw scores."""
    p = np.asarray(p, dtype=np.float64)
    q = np.quantile(p, np.linspace(0, 1, 101))
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1))[1:-1])
    counts = np.bincount(np.searchsorted(edges, p, side="right"), minlength=len(edges) + 1)
    return {"n": int(p.size), "quantiles": [round(float(v), 6) for v in q], "edges": [round(float(v), 6) for v in edges],
            "fractions": [round(float(c) / p.size, 6) for c in counts]}  # fmt: skip


def score_drift(
    label: str, reference: Mapping[str, Any], scores: Sequence[float], *, psi_limit: float = PSI_LIMIT,
    ks_alpha: float = KS_ALPHA, min_n: int = DRIFT_MIN_IMAGES,
) -> DriftResult:  # fmt: skip
    """PSI over the reference deciles and a two-sample KS test (against the reference quantiles).

    Drift is flagged when both agree: the KS test says the distributions differ (p below
    ``ks_alpha``) and the PSI says by enough to matter (above ``psi_limit``); PSI alone is
    noisy on a few dozen images, and KS alone flags trivial shifts on thousands.

    Feed raw model scores (``Finding.raw_score`` when a profile was applied, else ``score``).
    """
    from scipy.stats import kstwobign

    s = np.asarray([v for v in scores if v is not None and math.isfinite(v)], dtype=np.float64)
    n_ref = int(reference.get("n", 0))
    if s.size == 0 or n_ref == 0:
        return DriftResult(label, int(s.size), math.nan, math.nan, math.nan, False, f"{label}: no scores to compare yet.")
    edges = np.asarray(reference["edges"], dtype=np.float64)
    expected = np.maximum(np.asarray(reference["fractions"], dtype=np.float64), 1e-4)
    actual = np.maximum(np.bincount(np.searchsorted(edges, s, side="right"), minlength=len(expected)) / s.size, 1e-4)
    psi = float(np.sum((actual - expected) * np.log(actual / expected)))
    qs = np.maximum.accumulate(np.asarray(reference["quantiles"], dtype=np.float64))
    grid = np.linspace(0, 1, qs.size)
    xs = np.sort(s)
    ref_cdf = np.interp(xs, qs, grid)
    ecdf_hi = np.arange(1, xs.size + 1) / xs.size
    ecdf_lo = np.arange(0, xs.size) / xs.size
    ks = float(max(np.max(ecdf_hi - ref_cdf), np.max(ref_cdf - ecdf_lo)))
    ne = s.size * n_ref / (s.size + n_ref)
    ks_p = float(kstwobign.sf(ks * math.sqrt(ne)))
    enough = s.size >= min_n
    drifted = enough and psi > psi_limit and ks_p < ks_alpha  # a real shift (KS) that is large enough (PSI)
    if not enough:
        msg = f"{label}: {s.size} recent images; drift is judged from {min_n}."
    elif drifted:
        msg = (f"{label}: recent scores have drifted from the site profile's reference (PSI {psi:.2f}, "
               f"KS {ks:.2f}, p = {ks_p:.1g}, {s.size} images); the site calibration may no longer hold: recalibrate.")  # fmt: skip
    else:
        msg = f"{label}: scores match the site profile's reference (PSI {psi:.2f}, KS p = {ks_p:.2f})."
    return DriftResult(label, int(s.size), psi, ks, ks_p, drifted, msg)


def check_drift(profile: SiteProfile, recent: Mapping[str, Sequence[float]], **kwargs: Any) -> list[DriftResult]:
    """One :class:`DriftResult` per profile finding with recent raw scores."""
    return [score_drift(lab, fp.reference, recent[lab], **kwargs)
            for lab, fp in profile.findings.items() if lab in recent and fp.reference]  # fmt: skip


class DriftMonitor:
    """Recent raw scores per finding of the profile's model, checked against the profile's reference.

    Fed with each analysed image's findings (a worklist feeds its stored scores the same
    way); ``check`` returns the drift of every finding with enough recent images.
    """

    def __init__(self, profile: SiteProfile, window: int = 500, **limits: Any) -> None:
        from collections import deque

        self.profile = profile
        self.limits = limits
        self.recent: dict[str, Any] = {lab: deque(maxlen=int(window)) for lab in profile.findings}

    def add(self, findings: Iterable["Finding"]) -> None:
        for f in findings:
            if f.model == self.profile.bundle.get("name") and f.label in self.recent:
                self.recent[f.label].append(float(f.raw_score if f.raw_score is not None else f.score))

    def check(self) -> list[DriftResult]:
        return check_drift(self.profile, {lab: list(v) for lab, v in self.recent.items()}, **self.limits)


# ---------------------------------------------------------------------- site data
_LABEL_VALUES = {"1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "positive": 1.0, "negative": 0.0, "pos": 1.0, "neg": 0.0,
                 "yes": 1.0, "no": 0.0, "true": 1.0, "false": 0.0, "": math.nan, "unsure": math.nan, "nan": math.nan}  # fmt: skip


def read_site_labels(
    folder: str | Path, labels_csv: str | Path, model_labels: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The site's labelled films: ``[{image, patient_id, labels: {finding: 1.0 | 0.0 | nan}}]`` and the findings found.

    The CSV has a ``file`` (or ``image``) column relative to ``folder``, one column per
    finding named like the model's labels (any case; 1/0, positive/negative, yes/no; blank
    or ``unsure`` = unknown) and optionally ``patient_id`` (else each film is its own patient).
    """
    import csv

    folder, labels_csv = Path(folder), Path(labels_csv)
    if not folder.is_dir():
        raise SiteProfileError(f"The site folder {folder} does not exist.", path=folder)
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
            table = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SiteProfileError(f"The site labels {labels_csv} could not be read as CSV ({exc}).", path=labels_csv) from None
    header = list(table[0].keys()) if table else []
    cols = {str(c).strip().lower(): c for c in header}
    file_col = cols.get("file") or cols.get("image")
    if file_col is None:
        raise SiteProfileError(f"The site labels {labels_csv.name} need a 'file' column (paths relative to the folder).")
    found = [lab for lab in model_labels if lab.lower() in cols]
    if not found:
        raise SiteProfileError(f"The site labels {labels_csv.name} have no column for the model's findings "
                               f"({', '.join(model_labels)}); name a column after the finding.")  # fmt: skip
    pid_col = cols.get("patient_id")
    rows, missing = [], []
    for n, r in enumerate(table, 2):
        image = folder / str(r[file_col]).strip()
        if not image.is_file():
            missing.append(image.name)
        labels = {}
        for lab in found:
            v = str(r.get(cols[lab.lower()]) or "").strip().lower()
            if v not in _LABEL_VALUES:
                raise SiteProfileError(f"{labels_csv.name} line {n}: {lab} is {v!r}; use 1/0 (or positive/negative), "
                                       "blank = unknown.")  # fmt: skip
            labels[lab] = _LABEL_VALUES[v]
        pid = str(r.get(pid_col) or "").strip() if pid_col else ""
        rows.append({"image": str(image.resolve()), "patient_id": pid or str(r[file_col]), "labels": labels})
    if missing:
        raise SiteProfileError(f"{len(missing)} film(s) listed in {labels_csv.name} are not in {folder} "
                               f"(first: {missing[0]}).")  # fmt: skip
    if not rows:
        raise SiteProfileError(f"The site labels {labels_csv.name} list no films.")
    return rows, found


def card_prevalence(manifest: Any, label: str) -> float | None:
    """The held-out prevalence the model card reports for ``label`` (None when it reports none)."""
    a = (manifest.metrics.get("auroc") or {}).get(label) or {}
    n_pos, n_neg = a.get("n_pos"), a.get("n_neg")
    return None if not n_pos or n_neg is None else float(n_pos) / (n_pos + n_neg)


def draw_site_axes(ax_roc: Any, ax_rel: Any, label: str, r: Mapping[str, Any]) -> None:
    """ROC on the site films with the bundle's and the site's operating points; held-out reliability before/after.

    Takes matplotlib axes (the trainer's report figure and the viewer's wizard draw the same).
    """
    roc = r.get("roc")
    if roc:
        ax_roc.plot(roc["fpr"], roc["tpr"], label=f"site ROC (AUROC {r['auroc']['value']:.2f})")
    for key, mark, text in (("before", "o", "model threshold"), ("after", "s", "site threshold")):
        op = r["held_out"][key]
        if op["specificity"] is not None and op["sensitivity"] is not None:
            ax_roc.plot(1 - op["specificity"], op["sensitivity"], mark, ms=8, label=f"{text} {op['threshold']:.2f}")
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax_roc.set(title=f"{label}: ROC on site films", xlabel="1 - specificity", ylabel="sensitivity",
               xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    ax_roc.legend(fontsize=7, loc="lower right")
    for key, text in (("reliability_before", "before"), ("reliability_after", "after")):
        pts = [(b["mean_score"], b["observed"]) for b in r["held_out"][key] if b["n"]]
        ece = r["held_out"]["ece_" + text]["value"]
        if pts:
            ax_rel.plot(*zip(*pts), marker="o", ms=3, label=f"{text} (ECE {ece:.3f})")
    ax_rel.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax_rel.set(title=f"{label}: reliability, held-out films", xlabel="mean score", ylabel="observed frequency",
               xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    ax_rel.legend(fontsize=7, loc="upper left")


# ---------------------------------------------------------------------- fitting on site data
def split_patients(y: np.ndarray, groups: np.ndarray, *, holdout: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out rows: patients dealt at random, stratified by whether they have a positive."""
    if not 0 < holdout < 1:
        raise SiteProfileError(f"The held-out part must be a fraction between 0 and 1, got {holdout}.")
    groups = np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(groups), dtype=bool)
    pos_patients = set(groups[np.asarray(y) == 1])
    uniq = np.unique(groups)
    for stratum in ([g for g in uniq if g in pos_patients], [g for g in uniq if g not in pos_patients]):
        stratum = list(rng.permutation(stratum))
        k = int(round(len(stratum) * holdout))
        held |= np.isin(groups, stratum[:k])
    return held


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """Reliability-diagram data: per equal-width score bin, the count, mean score and observed frequency."""
    bins = np.clip((np.asarray(p) * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for k in range(n_bins):
        m = bins == k
        out.append({"bin": [k / n_bins, (k + 1) / n_bins], "n": int(m.sum()),
                    "mean_score": float(p[m].mean()) if m.any() else None,
                    "observed": float(y[m].mean()) if m.any() else None})  # fmt: skip
    return out


def _ci(stat: Any, y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> list[float] | None:
    lo, hi, _ = bootstrap_stat(stat, groups, n_boot=n_boot, seed=seed)
    return None if math.isnan(lo) else [lo, hi]


def _rates(y: np.ndarray, q: np.ndarray, thr: float, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Operating point at ``thr`` with patient-bootstrap CIs of sensitivity and specificity."""
    op = operating_point(y, q, thr)

    def sens(idx: np.ndarray) -> float:
        pos = y[idx] == 1
        return float(np.mean(q[idx][pos] >= thr)) if pos.any() else math.nan

    def spec(idx: np.ndarray) -> float:
        neg = y[idx] == 0
        return float(np.mean(q[idx][neg] < thr)) if neg.any() else math.nan

    op["sensitivity_ci95"] = _ci(sens, y, groups, n_boot, seed)
    op["specificity_ci95"] = _ci(spec, y, groups, n_boot, seed + 1)
    return op


def _ece_ci(y: np.ndarray, q: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    return {"value": expected_calibration_error(y, q),
            "ci95": _ci(lambda idx: expected_calibration_error(y[idx], q[idx]), y, groups, n_boot, seed)}  # fmt: skip


def describe_site_scores(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float, *, card_prevalence: float | None = None,
    n_boot: int = 500, seed: int = 0, min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:  # fmt: skip
    """How the model behaves on the site's films, before any recalibration."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    a = auroc(y, p)
    lo, hi, _ = bootstrap_auroc(y, p, groups, n_boot=n_boot, seed=seed) if not math.isnan(a) else (math.nan, 0, 0)
    out: dict[str, Any] = {
        "n_images": int(y.size), "n_patients": int(len(set(np.asarray(groups).astype(str)))),
        "n_pos": n_pos, "n_neg": n_neg, "prevalence": n_pos / y.size if y.size else None,
        "card_prevalence": card_prevalence,
        "auroc": {"value": a, "ci95": None if math.isnan(lo) else [lo, hi]},
        "current_threshold": _rates(y, p, threshold, groups, n_boot, seed + 2),
        "ece": _ece_ci(y, p, groups, n_boot, seed + 4),
        "reliability": reliability(y, p),
        "warnings": [],
    }  # fmt: skip
    if n_pos and n_neg:
        fpr, tpr, thr = roc_curve(y, p)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 101)).astype(int))
        out["roc"] = {"fpr": [round(float(v), 4) for v in fpr[keep]], "tpr": [round(float(v), 4) for v in tpr[keep]],
                      "threshold": [round(float(min(v, 1.0)), 4) for v in thr[keep]]}  # fmt: skip
    if n_pos < min_positives:
        out["warnings"].append(f"only {n_pos} positive film{'' if n_pos == 1 else 's'} (fewer than {min_positives}): "
                               "the intervals are wide "
                               "and the site threshold is not validated")  # fmt: skip
    if not math.isnan(lo) and hi < 0.7:
        out["warnings"].append(f"the model ranks these films poorly (AUROC {a:.2f}, CI {lo:.2f}-{hi:.2f}): "
                               "recalibration cannot repair the ranking; do not rely on this model at this site")  # fmt: skip
    if card_prevalence is not None and y.size and abs(out["prevalence"] - card_prevalence) > 0.1:
        out["warnings"].append(f"prevalence at this site {out['prevalence']:.2f} differs from the model card's "
                               f"{card_prevalence:.2f}: predictive values will differ")  # fmt: skip
    return out


def fit_site_finding(
    label: str, y: np.ndarray, p: np.ndarray, groups: np.ndarray, *, current_threshold: float,
    target: str = "youden", method: str = "auto", holdout: float = 0.5, seed: int = 0, n_boot: int = 500,
    card_prevalence: float | None = None, min_positives: int = MIN_POSITIVES,
) -> tuple[FindingProfile, dict[str, Any]]:  # fmt: skip
    """Fit one finding's site calibration and threshold on a calibration part; measure on the held-out part.

    The patients are dealt into a calibration part and a held-out part (``holdout``).
    The calibration (``method``, or the lowest cross-validated ECE for ``auto``) and the
    threshold (``target``) are fitted on the calibration part only; ECE and the operating
    point before (the bundle's score and threshold) and after (the site profile) are
    measured on the held-out part, with patient-bootstrap CIs. The profile saved is the
    one measured (it is not refitted on the held-out films).
    """
    if method not in CAL_METHODS:
        raise SiteProfileError(f"Unknown calibration method {method!r}; use one of {', '.join(CAL_METHODS)}.")
    rule, tval = parse_target(target)
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    groups = np.asarray(groups).astype(str)
    report = describe_site_scores(y, p, groups, current_threshold, card_prevalence=card_prevalence, n_boot=n_boot,
                                  seed=seed, min_positives=min_positives)  # fmt: skip
    held = split_patients(y, groups, holdout=holdout, seed=seed)
    cal = ~held
    yc, pc, yh, ph, gh = y[cal], p[cal], y[held], p[held], groups[held]
    for part, yy in (("calibration", yc), ("held-out", yh)):
        if yy.size == 0 or yy.min() == yy.max():
            raise SiteProfileError(
                f"{label}: the site's {part} part has only {'positive' if yy.size and yy.min() == 1 else 'negative'} "
                "films; label more films of both kinds (or change --holdout)."
            )
    import importlib.util

    has_sklearn = importlib.util.find_spec("sklearn") is not None  # isotonic fits need scikit-learn
    if method == "isotonic" and not has_sklearn:
        raise SiteProfileError("Isotonic recalibration needs scikit-learn, which this installation lacks; "
                               "choose temperature or Platt scaling.")  # fmt: skip
    if method == "auto":
        methods = ("none", "temperature", "platt", *(("isotonic",) if has_sklearn else ()))
        calib, cv = choose_calibration(yc, pc, methods)
    else:
        calib, cv = fit_calibration(yc, pc, method), {}
    qc = calib(pc)
    t = choose_threshold(yc, qc, rule, tval if tval is not None else 0.9)
    qh = calib(ph)
    cal_pos = int(yc.sum())
    report["fit"] = {
        "calibration": calib.to_dict(), "ece_cv": {k: round(v, 4) for k, v in cv.items()},
        "target": target, "threshold": t["value"], "calibration_part": {"n_images": int(yc.size), "n_pos": cal_pos},
        "held_out_part": {"n_images": int(yh.size), "n_pos": int(yh.sum()), "n_patients": int(len(set(gh)))},
    }  # fmt: skip
    report["held_out"] = {
        "auroc": {"value": auroc(yh, qh)},
        "ece_before": _ece_ci(yh, ph, gh, n_boot, seed + 5),
        "ece_after": _ece_ci(yh, qh, gh, n_boot, seed + 5),
        "before": _rates(yh, ph, current_threshold, gh, n_boot, seed + 6),
        "after": _rates(yh, qh, t["value"], gh, n_boot, seed + 6),
        "reliability_before": reliability(yh, ph),
        "reliability_after": reliability(yh, qh),
    }  # fmt: skip
    validated = cal_pos >= min_positives
    if not validated:
        report["warnings"].append(f"the threshold rests on {cal_pos} positive{'' if cal_pos == 1 else 's'} of the "
                                  "calibration part "
                                  f"(fewer than {min_positives}): marked not validated")  # fmt: skip
    summary = {
        "n_pos": report["n_pos"], "n_neg": report["n_neg"], "prevalence": report["prevalence"],
        "auroc": report["auroc"], "ece_before": report["held_out"]["ece_before"], "ece_after": report["held_out"]["ece_after"],
        "sensitivity_before": report["held_out"]["before"]["sensitivity"],
        "sensitivity_after": report["held_out"]["after"]["sensitivity"],
        "specificity_before": report["held_out"]["before"]["specificity"],
        "specificity_after": report["held_out"]["after"]["specificity"],
        "bundle_threshold": float(current_threshold),
    }  # fmt: skip
    fp = FindingProfile(label, calib, t["value"], target, validated, summary, reference_distribution(p))
    return fp, report


def operating_point_problem(report: dict[str, Any]) -> str | None:
    """Why a fitted site threshold is not a usable operating point (None when it is).

    ``report`` is :func:`fit_site_finding`'s. Unusable: a threshold at either end of the score range (it flags
    no film, or every film), no positive film found on the held-out part (sensitivity 0), every negative
    film flagged (specificity 0), or a held-out part with no positive (or no negative) film to check it on.
    """
    fit, held = report.get("fit") or {}, report.get("held_out") or {}
    t = fit.get("threshold")
    if t is None or not math.isfinite(float(t)):
        return "no threshold could be chosen"
    t = float(t)
    if t >= 0.995 or t <= 0.005:
        flags = "no film" if t >= 0.995 else "every film"
        return f"the proposed threshold {t:.2f} sits at the end of the score range: it flags {flags}"
    part = fit.get("held_out_part") or {}
    n_img, n_pos = int(part.get("n_images") or 0), int(part.get("n_pos") or 0)
    if n_pos == 0 or n_pos == n_img:
        kind = "positive" if n_pos == 0 else "negative"
        return f"the held-out films hold no {kind} film, so the threshold cannot be checked: label more films"
    after = held.get("after") or {}
    sens, spec = after.get("sensitivity"), after.get("specificity")
    if sens is not None and math.isfinite(float(sens)) and float(sens) == 0.0:
        return f"at the proposed threshold {t:.2f} no held-out positive film is found (sensitivity 0.00)"
    if spec is not None and math.isfinite(float(spec)) and float(spec) == 0.0:
        return f"at the proposed threshold {t:.2f} every held-out negative film is flagged (specificity 0.00)"
    return None


def finite_json(obj: Any) -> Any:
    """NaN/inf -> None and NumPy scalars -> Python, recursively, so profiles stay strict JSON."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Mapping):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
