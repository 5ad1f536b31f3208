"""Report-conditioned segmentation: an smp U-Net whose bottleneck hears a sentence.

The image goes through a segmentation-models-pytorch U-Net encoder (ResNet-34 by
default, one input channel, never downloaded weights). At the deepest feature map
the frozen sentence embedding is fused in, then the ordinary U-Net decoder draws
the region:

- ``fusion="concat"``: Linear(text -> width) -> broadcast over HxW -> concatenate
  with the bottleneck -> 1x1 conv back to the encoder width;
- ``fusion="film"``: Linear(text -> 2 x width) gives a per-channel scale and shift
  (``x * (1 + gamma) + beta``), initialised to the identity;
- ``text_dim=None``: image-only mode (a plain U-Net, ``text_emb`` is ignored).

The encoder runs once per image: :meth:`TextUNet.forward` accepts one image with N
sentence embeddings, so every sentence of a report costs one fusion + decoder pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cxr_viewer.core.models.registry import register_model

__all__ = ["TextUNet", "FUSIONS"]

log = logging.getLogger(__name__)

FUSIONS = ("concat", "film")


class _ConcatFusion(nn.Module):
    def __init__(self, width: int, text_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or width
        # LayerNorm puts the sentence features on the scale of the image features: unit-norm
        # embeddings projected by a freshly initialised Linear are ~30x smaller, and the
        # network then learns to ignore the text.
        self.text = nn.Sequential(nn.Linear(text_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True))
        self.mix = nn.Sequential(
            nn.Conv2d(width + hidden, width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )

    def forward(self, feat: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = self.text(text)[:, :, None, None].expand(-1, -1, feat.shape[2], feat.shape[3])
        return self.mix(torch.cat([feat, t], dim=1))


class _FiLMFusion(nn.Module):
    def __init__(self, width: int, text_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        self.film = nn.Linear(text_dim, 2 * width)
        # start as the identity so the image path trains as a plain U-Net first
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, feat: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # unit-norm embeddings have ~1/sqrt(dim) components; rescale to unit variance so the
        # zero-initialised FiLM weights receive useful gradients
        gamma, beta = self.film(text * math.sqrt(text.shape[1])).chunk(2, dim=1)
        return feat * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]


@register_model("text_unet")
class TextUNet(nn.Module):
    """smp U-Net with text fusion at the bottleneck. ``forward(x, text_emb) -> logits (N, 1, H, W)``."""

    def __init__(
        self,
        encoder: str = "resnet34",
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        text_dim: int | None = 384,
        fusion: str = "concat",
        text_hidden: int | None = None,
        in_channels: int = 1,
        decoder_attention: str | None = None,
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != encoder_depth:
            raise ValueError(
                f"decoder_channels needs one entry per encoder stage ({encoder_depth}), got {len(decoder_channels)}"
            )
        self.encoder_name = encoder
        self.text_dim = None if text_dim in (None, 0) else int(text_dim)
        self.fusion_kind = fusion
        self.unet = smp.Unet(
            encoder_name=encoder,
            encoder_weights=None,  # weights only ever come from our bundles
            encoder_depth=encoder_depth,
            decoder_channels=decoder_channels,
            decoder_attention_type=decoder_attention,
            in_channels=in_channels,
            classes=1,
        )
        self.width = int(self.unet.encoder.out_channels[-1])
        self.output_stride = 2**encoder_depth
        if self.text_dim is None:
            self.fusion: nn.Module | None = None
        elif fusion == "concat":
            self.fusion = _ConcatFusion(self.width, self.text_dim, text_hidden)
        else:
            self.fusion = _FiLMFusion(self.width, self.text_dim, text_hidden)

    @property
    def conditioned(self) -> bool:
        return self.fusion is not None

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features (shallow -> deep) for images ``x`` (B, C, H, W)."""
        h, w = x.shape[-2:]
        if h % self.output_stride or w % self.output_stride:
            raise ValueError(
                f"input size {h}x{w} must be a multiple of {self.output_stride} for this U-Net; "
                "fix the bundle's preprocessing size"
            )
        return list(self.unet.encoder(x))

    def decode(self, features: list[torch.Tensor], text_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse the text into the deepest map, then decode to logits (N, 1, H, W).

        ``features`` of B images and ``text_emb`` of N sentences pair up as follows:
        B == N pairs image i with sentence i; B == 1 broadcasts one image over N
        sentences (the encoder ran once).
        """
        feats = list(features)
        if self.fusion is not None:
            if text_emb is None:
                raise ValueError("this segmentation model needs a sentence embedding (text_emb)")
            text_emb = text_emb.to(dtype=feats[-1].dtype, device=feats[-1].device)
            if text_emb.ndim == 1:
                text_emb = text_emb[None]
            if text_emb.shape[-1] != self.text_dim:
                raise ValueError(f"text embedding has {text_emb.shape[-1]} values, the model expects {self.text_dim}")
            b, n = feats[-1].shape[0], text_emb.shape[0]
            if b != n:
                if b != 1:
                    raise ValueError(f"{b} images cannot pair with {n} sentences (use 1 image or one per sentence)")
                feats = [f.expand(n, *f.shape[1:]) for f in feats]
            feats[-1] = self.fusion(feats[-1], text_emb)
        out = self.unet.decoder(feats)
        return self.unet.segmentation_head(out)

    def forward(self, x: torch.Tensor, text_emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x), text_emb)

    # --- initialisation from a self-supervised encoder ------------------------------
    def load_encoder_state(self, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load encoder weights named as smp's encoder names them (``conv1.weight``, ``layer1.0...``).

        Other bundles' encoders are renamed to these keys by the trainer
        (``trainer.tasks.recon.timm_resnet_to_smp``, the one mapping). Tensors whose
        name or shape does not fit are skipped; if none fit, the backbones differ and
        a :class:`ValueError` says so. Returns (loaded keys, encoder keys left as initialised).
        """
        target = self.unet.encoder.state_dict()
        usable = {k: v for k, v in state.items() if k in target and tuple(target[k].shape) == tuple(v.shape)}
        if not usable:
            raise ValueError(
                f"none of the {len(state)} encoder weights fit the U-Net encoder {self.encoder_name!r}; "
                "the pre-trained encoder must use the same backbone"
            )
        self.unet.encoder.load_state_dict(usable, strict=False)
        missing = sorted(set(target) - set(usable))
        log.info("encoder init: %d tensors loaded, %d left as initialised", len(usable), len(missing))
        return sorted(usable), missing


# --- tiny configurations for tests and CPU smoke runs -----------------------------------
@register_model("text_unet_tiny")
def text_unet_tiny(
    text_dim: int | None = 384, fusion: str = "concat", encoder: str = "resnet18", **kwargs: Any
) -> TextUNet:
    """ResNet-18 encoder, depth 3, 32/16/8 decoder: forward-tests at 64x64 on CPU in milliseconds."""
    kwargs.setdefault("encoder_depth", 3)
    kwargs.setdefault("decoder_channels", (32, 16, 8))
    kwargs.setdefault("text_hidden", 64)
    return TextUNet(encoder=encoder, text_dim=text_dim, fusion=fusion, **kwargs)
