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
