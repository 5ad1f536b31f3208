"""A site profile: its schema, its files, and applying it to a result.

A profile is bound to one bundle's weights (sha256). Per finding it holds the fitted
calibration (:mod:`cxr_viewer.core.models.calibration`), the site threshold and the rule
that chose it (Youden, a target sensitivity such as the WHO TB 0.90, or a target
specificity), what the site data showed (counts, AUROC with CI, ECE and the effect of the
recalibration measured on a held-out part of the site's films) and the reference score
distribution that drift is measured against. Profiles are versioned JSON files in the
user's profiles folder (:func:`cxr_viewer.core.paths.user_profiles_dir`).

``apply_site_profile`` is the one place findings are adjusted: the judging step
(:func:`cxr_viewer.core.judging.judge`) calls it; a bundle whose weights changed is refused.
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
from cxr_viewer.core.jsonio import finite_or_none
from cxr_viewer.core.models.calibration import Calibration

if TYPE_CHECKING:
    from cxr_viewer.core.inference.results import AnalysisResult, Finding

__all__ = [
    "FindingProfile",
    "SiteProfile",
    "adjust_findings",
    "apply_site_profile",
    "list_profiles",
    "load_profile",
    "parse_target",
    "profile_text",
    "save_profile",
]

PROFILE_SCHEMA = 1


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
            "summary": finite_or_none(self.summary),
            "reference": finite_or_none(self.reference),
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
            "data": finite_or_none(self.data),
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

