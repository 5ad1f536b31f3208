"""Shared Lightning plumbing: AdamW with linear warm-up then cosine decay, per optimiser step."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.01) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class BaseTask(L.LightningModule):
    """Subclasses set ``self.hparams`` with ``lr``, ``weight_decay`` and ``warmup_epochs``."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """No weight decay on norms and biases (they are scale/offset, not capacity)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        wd = float(self.hparams.get("weight_decay", 0.05))
        return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.parameter_groups(), lr=float(self.hparams.get("lr", 1e-3)))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.trainer.max_epochs or 1))
        warmup = int(round(float(self.hparams.get("warmup_epochs", 0.0)) * total / epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
