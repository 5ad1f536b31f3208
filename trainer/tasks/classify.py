"""Fine-tuning: multi-label, binary and multi-class heads on the shared ``CXRClassifier``.

Modes: ``full`` (everything trains), ``linear`` (linear probe: frozen backbone, BN
statistics frozen too), ``progressive`` (head first, then one backbone stage more every
``unfreeze_every`` epochs, top stage first). The state follows ``current_epoch``, so a
resumed run freezes exactly what the killed run had frozen. Under DDP, progressive
unfreezing needs ``--strategy ddp_find_unused_parameters_true``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_viewer.core.errors import TrainingConfigError
from trainer.tasks.base import BaseTask

log = logging.getLogger(__name__)

TASKS = ("multilabel", "binary", "multiclass")
MODES = ("full", "linear", "progressive")


def macro_auroc(probs: np.ndarray, targets: np.ndarray) -> tuple[float, dict[int, float]]:
    """Mean AUROC over labels that have both classes among the known targets (NaN if none)."""
    from sklearn.metrics import roc_auc_score

    per: dict[int, float] = {}
    for j in range(targets.shape[1]):
        known = ~np.isnan(targets[:, j])
        y = targets[known, j]
        if y.size and 0 < y.sum() < y.size:
            per[j] = float(roc_auc_score(y, probs[known, j]))
    return (float(np.mean(list(per.values()))) if per else float("nan")), per


def scores_from_logits(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities the viewer shows: softmax for multiclass, sigmoid otherwise."""
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


class ClassifierTask(BaseTask):
    def __init__(
        self,
        labels: list[str],
        task: str = "multilabel",
        backbone: str = "resnet18",
        drop_rate: float = 0.0,
        mode: str = "full",
        unfreeze_every: int = 1,
        loss: str = "bce_posweight",
        label_counts: list[list[float]] | None = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
    ) -> None:
        super().__init__()
        from cxr_viewer.core.models import create_model
        from trainer.losses import build_classification_loss

        if task not in TASKS:
            raise TrainingConfigError(f"Unknown task {task!r}; use one of {', '.join(TASKS)}.")
        if mode not in MODES:
            raise TrainingConfigError(f"Unknown fine-tuning mode {mode!r}; use one of {', '.join(MODES)}.")
        if task == "binary" and len(labels) != 1:
            raise TrainingConfigError(f"A binary task needs exactly one label, got {labels}.")
        if task == "multiclass" and len(labels) < 2:
            raise TrainingConfigError("A multiclass task needs at least two one-hot label columns.")
        self.save_hyperparameters()
        self.model = create_model("classifier", backbone=backbone, num_classes=len(labels), in_chans=1, drop_rate=drop_rate)
        # [[positives per label], [known per label]] of the training set: small enough for hparams
        counts = label_counts or [[1.0] * len(labels), [2.0] * len(labels)]
        self.criterion = build_classification_loss(
            task, loss, counts=(torch.tensor(counts[0]), torch.tensor(counts[1])),
            label_smoothing=label_smoothing, focal_gamma=focal_gamma,
        )  # fmt: skip
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -------------------------------------------------------------- freezing
    def backbone_groups(self) -> list[nn.Module]:
        """Top-level backbone children that hold parameters, input side first."""
        return [m for m in self.model.backbone.children() if any(True for _ in m.parameters())]

    def trainable_groups(self, epoch: int) -> int:
        """How many backbone groups (from the top) train in ``epoch``."""
        n = len(self.backbone_groups())
        if self.hparams.mode == "full":
            return n
        if self.hparams.mode == "linear":
            return 0
        return min(n, epoch // max(1, int(self.hparams.unfreeze_every)))

    def _apply_freezing(self) -> None:
        groups = self.backbone_groups()
        k = self.trainable_groups(self.current_epoch)
        for i, g in enumerate(groups):
            train = i >= len(groups) - k
            for p in g.parameters():
                p.requires_grad_(train)
            if not train:
                g.eval()  # frozen stages keep their BatchNorm statistics

    def on_fit_start(self) -> None:
        self._apply_freezing()

    def on_train_epoch_start(self) -> None:
        self._apply_freezing()
        self.log("trainable_groups", float(self.trainable_groups(self.current_epoch)), sync_dist=True)

    # -------------------------------------------------------------- steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        weight = batch.get("weight")
        loss = self.criterion(logits, batch["target"]) if weight is None else self.criterion(logits, batch["target"], weight)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits), sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.model(batch["image"])
        loss = self.criterion(logits, batch["target"])
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=len(logits), sync_dist=True)
        scores = scores_from_logits(self.hparams.task, logits.float()).detach()
        self._val.append((scores, batch["target"].detach(), torch.as_tensor(batch["index"], device=logits.device)))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs = torch.cat([p for p, _, _ in self._val])
        targets = torch.cat([t for _, t, _ in self._val])
        index = torch.cat([i for _, _, i in self._val])
        self._val.clear()
        if self.trainer.world_size > 1:
            from trainer.distributed import unique_by_index

            # every rank holds the same number of rows (the sampler pads), so all_gather stacks them
            gathered = [self.all_gather(t).flatten(0, 1) for t in (probs, targets, index)]
            probs, targets = unique_by_index(gathered[2], gathered[0], gathered[1])
        auc, per = macro_auroc(probs.cpu().numpy(), targets.cpu().numpy())
        # NaN would break "max" monitoring: a split with no positives scores 0.5 (chance) instead.
        # The value is the same on every rank (gathered scores); sync_dist averages equal numbers.
        self.log("val_auroc", auc if np.isfinite(auc) else 0.5, prog_bar=True, sync_dist=True)
        for j, v in per.items():
            self.log(f"val_auroc/{self.hparams.labels[j]}", v, sync_dist=True)

    # -------------------------------------------------------------- export
    def bundle_architecture(self) -> dict[str, Any]:
        return {
            "name": "classifier",
            "kwargs": {
                "backbone": self.hparams.backbone,
                "num_classes": len(self.hparams.labels),
                "in_chans": 1,
                "drop_rate": float(self.hparams.drop_rate),
            },
        }


def init_classifier_from_bundle(model: nn.Module, bundle: str | Path, labels: list[str]) -> str:
    """Load an encoder (``ssl_encoder``) or classifier bundle into ``model``; returns what was loaded.

    Encoders fill ``model.backbone``; a classifier with the same labels fills everything,
    otherwise only its backbone is reused (the head starts fresh).
    """
    from cxr_viewer.core.models.bundle import load_bundle

    loaded = load_bundle(bundle)
    src_kwargs = loaded.manifest.architecture.get("kwargs", {})
    want = getattr(model, "backbone_name", None)
    if want and src_kwargs.get("backbone") and src_kwargs["backbone"] != want:
        raise TrainingConfigError(
            f"Bundle {Path(bundle).name} holds a {src_kwargs['backbone']} backbone but the run uses {want}; "
            f"pass --backbone {src_kwargs['backbone']}."
        )
    state = loaded.model.state_dict()
    if loaded.manifest.task in ("multilabel", "binary", "multiclass") and loaded.manifest.labels == labels:
        model.load_state_dict(state, strict=True)
        what = "classifier (all weights)"
    else:
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone:
            raise TrainingConfigError(f"Bundle {Path(bundle).name} has no backbone weights to start from.")
        model.backbone.load_state_dict(backbone, strict=True)
        what = f"{loaded.manifest.task} backbone"
    log.info("initialised from %s (%s)", Path(bundle).name, what)
    return what
