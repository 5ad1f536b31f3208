"""Reconstruction pre-training: the shared encoder + a light decoder rebuild the radiograph.

The encoder is ``create_model("encoder", backbone=...)`` (the same timm backbone the
classifier and, for ResNets, the segmentation U-Net use); the decoder is a stack of
upsample + 3x3 conv blocks from the last feature map with no skip connections, so
everything the image holds must pass through the encoder. Loss: MSE on the normalised
image, optionally plus ``ssim_weight * (1 - SSIM)``; PSNR and SSIM are logged and a
grid of inputs over reconstructions is saved as PNG after each validation.

Where the encoder goes afterwards:

- into ``CXRClassifier.backbone`` (via an ``ssl_encoder`` bundle, see
  :func:`trainer.tasks.classify.init_classifier_from_bundle`);
- into a segmentation-models-pytorch U-Net encoder with :func:`timm_resnet_to_smp`.
  smp's ResNet encoders are torchvision ResNets, whose parameter names equal timm's
  (``conv1``, ``bn1``, ``layer1.0.conv1`` ...; checked in the tests for resnet18/34),
  so the mapping only strips our ``backbone.`` prefix, drops the classifier ``fc``, and
  adds ``model.`` for smp's timm-universal (``tu-*``) encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.losses import psnr, ssim
from trainer.tasks.base import BaseTask


def timm_resnet_to_smp(state_dict: Mapping[str, torch.Tensor], encoder_name: str = "resnet34") -> dict[str, torch.Tensor]:
    """Our encoder state dict (``backbone.*``, timm names) -> keys of ``smp.Unet(encoder_name).encoder``.

    Use: ``unet.encoder.load_state_dict(timm_resnet_to_smp(bundle.model.state_dict(), "resnet34"))``.
    The backbone must be the same architecture as ``encoder_name`` (resnet34 -> resnet34).
    """
    out: dict[str, torch.Tensor] = {}
    prefix = "model." if encoder_name.startswith("tu-") else ""
    for key, value in state_dict.items():
        k = key[len("backbone.") :] if key.startswith("backbone.") else key
        if k.startswith(("fc.", "head.", "classifier.")):
            continue
        out[prefix + k] = value
    return out


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LightDecoder(nn.Module):
    """Last feature map (B, C, H/r, W/r) -> image (B, 1, H, W) through log2(r) upsampling blocks."""

    def __init__(self, in_chs: int, reduction: int, width: int = 256, out_chans: int = 1) -> None:
        super().__init__()
        steps = max(1, int(round(torch.log2(torch.tensor(float(reduction))).item())))
        chans = [max(16, width >> i) for i in range(steps + 1)]
        layers: list[nn.Module] = [nn.Conv2d(in_chs, chans[0], 1)]
        layers += [_block(chans[i], chans[i + 1]) for i in range(steps)]
        layers.append(nn.Conv2d(chans[-1], out_chans, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)


class ReconTask(BaseTask):
    def __init__(
        self,
        backbone: str = "resnet18",
        decoder_width: int = 256,
        ssim_weight: float = 0.0,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.25,),
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        grid_dir: str | None = None,
    ) -> None:
        super().__init__()
        from cxr_viewer.core.models import create_model

        self.save_hyperparameters(ignore=["grid_dir"])
        self.grid_dir = Path(grid_dir) if grid_dir else None
        self.encoder = create_model("encoder", backbone=backbone, in_chans=1)
        info = self.encoder.backbone.feature_info[-1]
        self.decoder = LightDecoder(int(info["num_chs"]), int(info["reduction"]), decoder_width)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder.backbone.forward_features(x))
        if out.shape[-2:] != x.shape[-2:]:  # sizes not divisible by the encoder's stride
            out = nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean).clamp(0, 1)

    def _step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = batch["image"]
        rec = self(x)
        loss = nn.functional.mse_loss(rec.float(), x.float())
        u_rec, u_x = self._unit(rec.float()), self._unit(x.float())
        s = ssim(u_rec, u_x)
        if self.hparams.ssim_weight:
            loss = loss + float(self.hparams.ssim_weight) * (1 - s)
        n = len(x)
        self.log(f"{stage}_loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}_psnr", psnr(u_rec.detach(), u_x), on_epoch=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}_ssim", s.detach(), on_epoch=True, batch_size=n, sync_dist=True)
        return loss, u_x, u_rec

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, u_x, u_rec = self._step(batch, "val")
        if batch_idx == 0 and self.grid_dir is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            save_grid(u_x[:8], u_rec[:8], self.grid_dir / f"recon_epoch{self.current_epoch:03d}.png")

    def encoder_module(self) -> nn.Module:
        return self.encoder

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights in timm naming under ``backbone.`` (what ``CXRClassifier`` and bundles use)."""
        return {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}


def save_grid(inputs01: torch.Tensor, recons01: torch.Tensor, path: Path) -> Path:
    """Top row inputs, bottom row reconstructions, as one PNG."""
    from torchvision.utils import make_grid, save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(inputs01)
    grid = make_grid(torch.cat([inputs01, recons01]).detach().float().cpu(), nrow=n, padding=2, pad_value=1.0)
    save_image(grid, str(path))
    return path
