"""Training losses, defined once: classification (BCE/focal/CE), NT-Xent, reconstruction.

Unknown labels (NaN targets, e.g. uncertain mentions or an unlabelled finding in a
merged dataset) are masked out of the multi-label losses rather than treated as negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import numpy as np


def _smooth(target: torch.Tensor, eps: float) -> torch.Tensor:
    return target * (1.0 - eps) + 0.5 * eps if eps else target


def _masked_mean(loss: torch.Tensor, known: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``loss`` over known targets; ``weight`` (same shape, mean about 1 over known cells)
    scales each film's share (per-source weighting) without changing the loss's scale."""
    w = known.to(loss.dtype) if weight is None else known * torch.nan_to_num(weight.to(loss.dtype), nan=0.0)
    return (loss * w).sum() / known.sum().clamp_min(1)


SOURCE_WEIGHTINGS = {"none": 0.0, "sqrt": 0.5, "equal": 1.0}


def source_weights(
    sources: "Sequence[str]", targets: "np.ndarray", scheme: str = "sqrt", max_weight: float = 5.0
) -> "tuple[np.ndarray, dict[str, dict[str, float]]]":
    """Per-film, per-label loss weights that keep one large source from dominating a label.

    For label ``l`` with ``n_l`` known targets over ``S_l`` sources, a film of source ``s``
    (``n_sl`` known targets) weighs ``(n_l / (S_l * n_sl)) ** p``: ``p = 1`` (``equal``) gives
    every source the same total weight, ``p = 0.5`` (``sqrt``) goes half way, ``p = 0``
    (``none``) weighs every film alike. Weights are clipped to ``[1/max_weight, max_weight]``
    and rescaled so their mean over the known targets of each label is 1 (the loss keeps its
    scale). Returns the ``(N, L)`` matrix (0 where unknown) and ``{label: {source: weight}}``.
    """
    import numpy as np

    from cxr_viewer.core.errors import TrainingConfigError

    if scheme not in SOURCE_WEIGHTINGS:
        raise TrainingConfigError(f"Unknown source weighting {scheme!r}; use one of {', '.join(SOURCE_WEIGHTINGS)}.")
    p = SOURCE_WEIGHTINGS[scheme]
    src = np.asarray([str(s) for s in sources])
    y = np.asarray(targets, dtype=np.float64)
    known = ~np.isnan(y)
    w = np.zeros_like(y, dtype=np.float32)
    table: dict[str, dict[str, float]] = {}
    for j in range(y.shape[1]):
        names, counts = np.unique(src[known[:, j]], return_counts=True)
        if not len(names):
            table[str(j)] = {}
            continue
        n = counts.sum()
        raw = np.clip((n / (len(names) * counts)) ** p, 1.0 / max_weight, max_weight)
        raw = raw * n / float((raw * counts).sum())
        per = dict(zip(names.tolist(), raw.tolist()))
        for name, val in per.items():
            w[(src == name) & known[:, j], j] = val
        table[str(j)] = {k: round(float(v), 4) for k, v in per.items()}
    return w, table


class MaskedBCE(nn.Module):
    """Binary cross-entropy per label, optional ``pos_weight`` (L,) and label smoothing; NaN targets ignored."""

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None, persistent=False)
        self.eps = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        known = ~torch.isnan(target)
        y = _smooth(torch.nan_to_num(target, nan=0.0), self.eps)
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight, reduction="none")
        return _masked_mean(loss, known, weight)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017): down-weights easy examples so rare findings are heard.

    ``alpha`` balances positives (None = no balancing); NaN targets ignored.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma, self.alpha, self.eps = float(gamma), alpha, float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        known = ~torch.isnan(target)
        y = _smooth(torch.nan_to_num(target, nan=0.0), self.eps)
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        loss = ce * (1 - p_t).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * y + (1 - self.alpha) * (1 - y))
        return _masked_mean(loss, known, weight)


class MulticlassLoss(nn.Module):
    """Cross-entropy (or softmax focal) over one-hot targets with class weights and label smoothing."""

    def __init__(
        self, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0, focal_gamma: float = 0.0
    ) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.eps, self.gamma = float(label_smoothing), float(focal_gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is not None:
            raise ValueError("per-source weights apply to multi-label and binary losses only")
        idx = torch.nan_to_num(target, nan=0.0).argmax(dim=1)
        if not self.gamma:
            return F.cross_entropy(logits, idx, weight=self.class_weights, label_smoothing=self.eps)
        ce = F.cross_entropy(logits, idx, weight=self.class_weights, label_smoothing=self.eps, reduction="none")
        p_t = torch.softmax(logits, dim=1).gather(1, idx[:, None])[:, 0]
        return ((1 - p_t).pow(self.gamma) * ce).mean()


def label_counts(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, known) per label of a (N, L) target matrix with NaN = unknown."""
    known = ~torch.isnan(targets)
    pos = (torch.nan_to_num(targets, nan=0.0) * known).sum(0)
    return pos, known.sum(0).to(pos.dtype)


def pos_weight_from_counts(pos: torch.Tensor, known: torch.Tensor, max_weight: float = 50.0) -> torch.Tensor:
    """negatives / positives per label, capped so a label with 1 positive cannot dominate."""
    return ((known - pos) / pos.clamp_min(1.0)).clamp(1.0 / max_weight, max_weight)


def pos_weight_from_targets(targets: torch.Tensor, max_weight: float = 50.0) -> torch.Tensor:
    return pos_weight_from_counts(*label_counts(targets), max_weight=max_weight)


def class_weights_from_counts(pos: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency class weights (mean 1) from per-class counts."""
    counts = pos.clamp_min(1.0)
    w = counts.sum() / (len(counts) * counts)
    return w / w.mean()


def build_classification_loss(
    task: str,
    name: str,
    targets: torch.Tensor | None = None,
    *,
    counts: tuple[torch.Tensor, torch.Tensor] | None = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
) -> nn.Module:
    """``name``: ``bce`` | ``bce_posweight`` | ``focal`` (multilabel/binary); ``ce`` | ``ce_weighted`` | ``focal`` (multiclass).

    Class balance comes from ``counts`` (positives, known per label) or a ``targets`` matrix.
    """
    from cxr_viewer.core.errors import TrainingConfigError

    if counts is None:
        if targets is None:
            raise ValueError("build_classification_loss needs targets or counts")
        counts = label_counts(targets)
    pos, known = (torch.as_tensor(c, dtype=torch.float32) for c in counts)

    if task == "multiclass":
        if name in ("ce", "bce"):
            return MulticlassLoss(label_smoothing=label_smoothing)
        if name in ("ce_weighted", "bce_posweight"):
            return MulticlassLoss(class_weights_from_counts(pos), label_smoothing=label_smoothing)
        if name == "focal":
            return MulticlassLoss(label_smoothing=label_smoothing, focal_gamma=focal_gamma)
    else:
        if name == "bce":
            return MaskedBCE(label_smoothing=label_smoothing)
        if name == "bce_posweight":
            return MaskedBCE(pos_weight_from_counts(pos, known), label_smoothing=label_smoothing)
        if name == "focal":
            return FocalLoss(gamma=focal_gamma, label_smoothing=label_smoothing)
    raise TrainingConfigError(
        f"Unknown loss {name!r} for a {task} task; use bce, bce_posweight or focal "
        "(multiclass: ce, ce_weighted or focal)."
    )


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over the 2N views of a batch.

    Each view's positive is the other view of the same image; the other 2N - 2 views
    are its negatives.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def psnr(pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) of [0, 1] images, averaged over the batch."""
    mse = F.mse_loss(pred01, target01, reduction="none").flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean()


def ssim(pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    """Structural similarity of [0, 1] images (torchmetrics' Gaussian-window SSIM, differentiable)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    k = 7 if min(pred01.shape[-2:]) < 64 else 11
    return structural_similarity_index_measure(pred01.float(), target01.float(), data_range=1.0, kernel_size=k)
