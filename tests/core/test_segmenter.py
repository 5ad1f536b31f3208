"""TextUNet: forward at 64 px for every fusion mode, text really conditions, encoder init."""

from __future__ import annotations

import pytest
import torch

from cxr_viewer.core.models import create_model
from cxr_viewer.core.models.segmenter import TextUNet

torch.set_num_threads(1)


@pytest.mark.parametrize("fusion", ["concat", "film"])
def test_forward_conditioned(fusion: str) -> None:
    torch.manual_seed(0)
    m = create_model("text_unet_tiny", fusion=fusion, text_dim=384).eval()
    assert isinstance(m, TextUNet) and m.conditioned
    x = torch.randn(2, 1, 64, 64)
    t = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
    with torch.no_grad():
        out = m(x, t)
        assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()
        # one image, many sentences: the encoder runs once and results equal the paired call
        many = m(x[:1], t)
        paired = m(x[:1].expand(2, -1, -1, -1), t)
    torch.testing.assert_close(many, paired)


def test_text_changes_the_mask() -> None:
    torch.manual_seed(0)
    for fusion in ("concat", "film"):
        m = create_model("text_unet_tiny", fusion=fusion).eval()
        if fusion == "film":  # FiLM starts as the identity; give it a non-trivial map as training would
            torch.nn.init.normal_(m.fusion.film.weight, std=0.5)
        x = torch.randn(1, 1, 64, 64)
        t = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
        with torch.no_grad():
            out = m(x, t)
        assert (out[0] - out[1]).abs().max() > 1e-3, fusion


def test_film_starts_as_identity() -> None:
    torch.manual_seed(0)
    film = create_model("text_unet_tiny", fusion="film").eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a = film(x, torch.randn(1, 384))
        b = film(x, torch.randn(1, 384))
    torch.testing.assert_close(a, b)


def test_image_only_mode() -> None:
    m = create_model("text_unet_tiny", text_dim=None).eval()
    assert not m.conditioned and m.fusion is None
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        out = m(x)
        ignored = m(x, torch.randn(1, 384))  # a sentence given to an image-only model changes nothing
    assert out.shape == (1, 1, 64, 64)
    torch.testing.assert_close(out, ignored)
    assert not any("fusion" in k for k in m.state_dict())


def test_full_size_default_is_resnet34() -> None:
    m = create_model("text_unet")
    assert m.encoder_name == "resnet34" and m.width == 512 and m.output_stride == 32
    assert m.unet.encoder.conv1.in_channels == 1


def test_bad_inputs_are_refused() -> None:
    m = create_model("text_unet_tiny").eval()
    with pytest.raises(ValueError, match="multiple of 8"):
        m(torch.randn(1, 1, 60, 64), torch.randn(1, 384))
    with pytest.raises(ValueError, match="384"):
        m(torch.randn(1, 1, 64, 64), torch.randn(1, 128))
    with pytest.raises(ValueError, match="needs a sentence"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="fusion"):
        create_model("text_unet_tiny", fusion="cross-attention")


def test_encoder_state_loads_into_unet_encoder() -> None:
    """Weights named as smp names them load; a different backbone is refused clearly."""
    torch.manual_seed(1)
    donor = create_model("text_unet_tiny")
    seg = create_model("text_unet_tiny")
    loaded, missing = seg.load_encoder_state(donor.unet.encoder.state_dict())
    assert "conv1.weight" in loaded and "layer2.0.conv1.weight" in loaded and not missing
    torch.testing.assert_close(seg.unet.encoder.conv1.weight, donor.unet.encoder.conv1.weight)
    torch.testing.assert_close(seg.unet.encoder.layer1[0].bn1.running_var, donor.unet.encoder.layer1[0].bn1.running_var)
    with pytest.raises(ValueError, match="same backbone"):
        seg.load_encoder_state({"stem.weight": torch.zeros(3)})


@pytest.mark.parametrize("fusion", ["concat", "film"])
def test_fusion_learns_sides_from_real_sentence_embeddings(fusion: str) -> None:
    """A short real optimisation: the same image, prompted "left lung" or "right lung" (MiniLM
    embeddings, cosine ~0.92 to each other), must learn to draw the named side.
    Guards against a fusion whose text signal is too weak to be used."""
    from cxr_viewer.core.models.text import MiniLMEncoder

    emb = torch.as_tensor(MiniLMEncoder(device="cpu").encode(["left lung", "right lung"]))
    torch.manual_seed(0)
    m = create_model("text_unet_tiny", fusion=fusion)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    h = w = 32
    left = torch.zeros(1, h, w)
    left[:, 4:28, 18:28] = 1  # patient's left lung: image right
    right = torch.zeros(1, h, w)
    right[:, 4:28, 4:14] = 1
    for _ in range(70):
        x = torch.randn(8, 1, h, w) * 0.3 + left + right  # both lungs visible in every image
        side = torch.randint(0, 2, (8,))
        y = torch.stack([left if s == 0 else right for s in side])
        logits = m(x, emb[side])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + (
            1 - (2 * (torch.sigmoid(logits) * y).sum() + 1) / (torch.sigmoid(logits).sum() + y.sum() + 1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        x = torch.randn(1, 1, h, w) * 0.3 + left + right
        p = torch.sigmoid(m(x, emb))[:, 0]  # one image, both prompts
    inside = lambda prob, region: float((prob * region[0]).sum() / region.sum())  # noqa: E731
    assert inside(p[0], left) > 0.7 and inside(p[0], right) < 0.3
    assert inside(p[1], right) > 0.7 and inside(p[1], left) < 0.3
