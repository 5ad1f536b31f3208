"""Current film versus the prior: find the prior, and say which score changes exceed the noise.

The prior is the same patient's most recent earlier study in what was scanned
(folder scan, study browser). A score change only means something when it is
larger than the score's own noise: the spread of the score over small
augmentations of the same film (a shift of a few pixels, a few percent of
brightness and contrast, a slight zoom: what a repeat exposure changes). That
noise is measured once per bundle on its validation films
(``scripts/score_noise.py``) and recorded in the manifest under
:data:`NOISE_KEY`; the viewer only reads it (:func:`recorded_noise`). A finding
whose bundle records no noise gets no arrow: its change is shown as a number.

Beyond the noise is not enough: a finding with a tiny recorded noise would earn
arrows for moves that mean nothing (a Hernia score of 0.08 falling to 0.00, far
below its threshold). An arrow also needs the change to *matter*
(:attr:`ScoreDelta.matters`): the finding changes state (crosses its operating
threshold), or the score moves towards the threshold by at least
:data:`MATTER_FRACTION` of the prior's distance to it.
Qt-free; the viewer runs it off the GUI thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_viewer.core.io.record import ImageRecord

#: How many noise standard deviations a change must exceed to earn an arrow.
NOISE_K = 2.0
#: Floor on the noise: a score never moves less than this between two films of one patient.
MIN_NOISE = 0.02
#: The fraction of the way from the prior score to the threshold a move must cover to matter (without a change of state).
MATTER_FRACTION = 0.5
#: The manifest's top-level key holding the noise measured on validation (scripts/score_noise.py).
NOISE_KEY = "score_noise"


@dataclass(frozen=True)
class PriorMatch:
    path: Path
    study_date: str  # DICOM DA of the prior
    patient_id: str


def find_prior(patients: Sequence[Any], patient_id: str, study_date: str, current: Path | None = None) -> PriorMatch | None:
    """The same patient's latest image from a study dated before ``study_date`` (None when there is none).

    ``patients`` are scanned ``Patient`` objects (core.io.scan). Without a date on the
    current film, the latest other dated study is taken.
    """
    if not patient_id:
        return None
    best: tuple[str, Path] | None = None
    for p in patients:
        if getattr(p, "is_file_group", False) or p.patient_id != patient_id:
            continue
        for study in p.studies:
            date = str(study.date or "")
            if not date or (study_date and date >= study_date):
                continue
            paths = [i.path for i in study.instances if current is None or Path(i.path) != Path(current)]
            if paths and (best is None or date > best[0]):
                best = (date, Path(paths[0]))
    return PriorMatch(best[1], best[0], patient_id) if best is not None else None


# --------------------------------------------------------------------------- noise
def augmentations(record: ImageRecord, n: int = 8, seed: int = 0) -> list[ImageRecord]:
    """``n`` slightly changed copies of the film: shift up to 2% of the size, ±4% contrast/brightness, ±3% zoom."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = record.shape
    base = Image.fromarray(record.pixels, mode="F")
    out = []
    for _ in range(n):
        dy, dx = rng.uniform(-0.02, 0.02, 2) * (h, w)
        zoom = float(rng.uniform(0.97, 1.03))
        gain, bias = float(rng.uniform(0.96, 1.04)), float(rng.uniform(-0.04, 0.04))
        # affine maps output -> input: zoom about the centre, then shift
        a = 1.0 / zoom
        cx, cy = w / 2.0, h / 2.0
        coeffs = (a, 0.0, cx - a * cx - dx, 0.0, a, cy - a * cy - dy)
        img = base.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
        px = np.clip(np.asarray(img, dtype=np.float32) * gain + bias, 0.0, 1.0).astype(np.float32)
        out.append(ImageRecord(pixels=px, source=record.source, format=record.format, spacing_mm=record.spacing_mm,
                               spacing_source=record.spacing_source, default_window=record.default_window,
                               metadata=dict(record.metadata), header=record.header))
    return out


def score_noise(score_fn: Callable[[ImageRecord], dict[tuple[str, str], float]], record: ImageRecord,
                n: int = 8, seed: int = 0) -> dict[tuple[str, str], float]:
    """Standard deviation of each (model, label) score over ``n`` augmentations of one film."""
    runs = [score_fn(r) for r in augmentations(record, n, seed)]
    keys = set().union(*runs) if runs else set()
    return {k: float(np.std([r[k] for r in runs if k in r], ddof=1)) if sum(k in r for r in runs) > 1 else 0.0
            for k in keys}


def recorded_noise(manifest: Any) -> dict[str, float]:
    """label -> score noise recorded in a bundle manifest ({} when none, or not for these weights).

    ``manifest`` is a :class:`~cxr_viewer.core.models.manifest.Manifest` or its dict. The
    record is ``{"labels": {label: {"value": sd, ...}}, "weights_sha256": ...}``; it is only
    believed for the weights it was measured on, and only finite, non-negative values count.
    """
    if isinstance(manifest, Mapping):
        block, weights = manifest.get(NOISE_KEY), manifest.get("weights") or {}
    else:
        block, weights = getattr(manifest, "extra", {}).get(NOISE_KEY), getattr(manifest, "weights", {}) or {}
    if not isinstance(block, Mapping) or not isinstance(block.get("labels"), Mapping):
        return {}
    measured_on = str(block.get("weights_sha256") or "").lower()
    if measured_on and measured_on != str(weights.get("sha256") if isinstance(weights, Mapping) else "").lower():
        return {}  # measured on other weights: says nothing about these
    out: dict[str, float] = {}
    for label, entry in block["labels"].items():
        value = entry.get("value") if isinstance(entry, Mapping) else entry
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            out[str(label)] = float(value)
    return out


# --------------------------------------------------------------------------- deltas
@dataclass(frozen=True)
class ScoreDelta:
    model: str
    label: str
    prior: float
    current: float
    noise: float | None  # the score's SD under augmentation, measured on validation; None: not measured
    threshold: float | None = None  # the current operating threshold; None: unknown (noise alone decides)

    @property
    def change(self) -> float:
        return self.current - self.prior

    @property
    def measured(self) -> bool:
        return self.noise is not None

    @property
    def limit(self) -> float | None:
        """How far the score must move for an arrow (None: no noise recorded, so never)."""
        return None if self.noise is None else NOISE_K * max(self.noise, MIN_NOISE)

    @property
    def beyond_noise(self) -> bool:
        return self.limit is not None and abs(self.change) > self.limit

    @property
    def changes_state(self) -> bool:
        """The finding crossed its threshold (either way)."""
        t = self.threshold
        return t is not None and (self.prior >= t) != (self.current >= t)

    @property
    def matters(self) -> bool:
        """A change of state, or a move towards the threshold of at least MATTER_FRACTION of the way there."""
        t = self.threshold
        if t is None or not math.isfinite(t):
            return True
        if self.changes_state:
            return True
        gap = t - self.prior
        return gap * self.change > 0 and abs(self.change) >= MATTER_FRACTION * abs(gap)

    @property
    def significant(self) -> bool:
        """Earns an arrow: beyond the recorded noise, and a change that matters."""
        return self.beyond_noise and self.matters

    @property
    def arrow(self) -> str:
        if not self.significant:
            return ""
        return "↑" if self.change > 0 else "↓"

    def text(self) -> str:
        return f"{self.prior:.2f} → {self.current:.2f}" + (f" {self.arrow}" if self.arrow else "")

    def tooltip(self) -> str:
        head = f"Prior {self.prior:.3f} → current {self.current:.3f} ({self.change:+.3f})"
        if self.noise is None:
            return (f"{head}. No arrow: this model records no score noise, so whether the change is real is "
                    "unknown (measure it with scripts/score_noise.py).")
        verdict = ("beyond" if self.beyond_noise else "within") + \
            f" this score's noise (±{NOISE_K:g}×{max(self.noise, MIN_NOISE):.3f})"
        if self.beyond_noise and not self.matters:
            verdict += (f", but no arrow: it neither crosses the threshold {self.threshold:.3f} nor moves "
                        f"{MATTER_FRACTION:.0%} of the way towards it")
        elif self.significant and self.changes_state:
            verdict += f", crossing the threshold {self.threshold:.3f}"
        return (f"{head}, {verdict}. Noise: the score's spread over small shifts, zoom and contrast changes of "
                "the same film, measured on the model's validation films. An arrow needs a change beyond the "
                f"noise that also changes the finding's state or covers {MATTER_FRACTION:.0%} of the way to "
                "its threshold.")


def score_deltas(current: Iterable[Any], prior: Iterable[Any],
                 noise: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], ScoreDelta]:
    """(model, label) -> delta for findings present on both films (objects with model, label, score and,
    optionally, the operating ``threshold`` the current finding is judged against).

    A finding missing from ``noise`` gets ``noise=None``: its change is shown, never an arrow.
    """
    before = {(f.model, f.label): float(f.score) for f in prior}
    out = {}
    for f in current:
        key = (f.model, f.label)
        if key in before and math.isfinite(before[key]):
            n = noise.get(key)
            t = getattr(f, "threshold", None)
            out[key] = ScoreDelta(f.model, f.label, before[key], float(f.score), None if n is None else float(n),
                                  None if t is None else float(t))
    return out
