"""SimCLR pre-training (Chen et al. 2020) on any registered backbone.

Two strongly augmented views of each radiograph pass through the shared ``encoder``
(``CXREncoder``) and a 2-layer projection head; NT-Xent pulls the two views together
and pushes the other images of the batch away. Only the encoder is exported (an
``ssl_encoder`` bundle); the projection head is discarded, as in the paper. Under DDP
the negatives are those of each device's batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.losses import nt_xent
from trainer.tasks.base import BaseTask


class SimCLRTask(BaseTask):
    def __init__(
        self,
        backbone: str = "resnet18",
        proj_hidden: int = 512,
        proj_dim: int = 128,
        temperature: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
    ) -> None:
        super().__init__()
        from cxr_viewer.core.models import create_model

        self.save_hyperparameters()
        self.encoder = create_model("encoder", backbone=backbone, in_chans=1)
        dim = int(self.encoder.num_features)
        self.projector = nn.Sequential(
            nn.Linear(dim, proj_hidden), nn.BatchNorm1d(proj_hidden), nn.ReLU(inplace=True), nn.Linear(proj_hidden, proj_dim)
        )

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        z1 = self.projector(self.encoder(batch["view1"]))
        z2 = self.projector(self.encoder(batch["view2"]))
        loss = nt_xent(z1, z2, float(self.hparams.temperature))
        with torch.no_grad():  # how often a view's nearest neighbour is its twin
            a, b = nn.functional.normalize(z1.float(), dim=1), nn.functional.normalize(z2.float(), dim=1)
            acc = ((a @ b.t()).argmax(1) == torch.arange(len(a), device=a.device)).float().mean()
        return loss, acc

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, acc = self._loss(batch)
        n = len(batch["view1"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train_top1", acc, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, acc = self._loss(batch)
        n = len(batch["view1"])
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val_top1", acc, on_epoch=True, batch_size=n, sync_dist=True)

    def encoder_module(self) -> nn.Module:
        return self.encoder
