"""Text encoders: the packaged MiniLM offline, a local CLIP folder, the embedding cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.models.text import (
    CachedTextEncoder,
    CLIPTextEncoder,
    EmbeddingCache,
    MiniLMEncoder,
    TextEncoder,
    TextEncoderError,
    get_text_encoder,
    minilm_model_dir,
)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    import torch

    torch.set_num_threads(1)
    return MiniLMEncoder(device="cpu")


def test_minilm_offline_shapes_and_norm(minilm: MiniLMEncoder) -> None:
    texts = ["left lung", "the left hemithorax", "right lower lobe", "left lung"]
    emb = minilm.encode(texts)
    assert isinstance(minilm, TextEncoder)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # identical strings -> identical vectors (also across batches), different strings -> different ones
    np.testing.assert_allclose(emb[0], emb[3], atol=1e-6)
    np.testing.assert_allclose(minilm.encode(["left lung"])[0], emb[0], atol=1e-5)
    assert float(emb[0] @ emb[1]) < 0.99 and float(emb[0] @ emb[2]) < 0.99
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_similarity_that_holds(minilm: MiniLMEncoder) -> None:
    """What the frozen encoder really gives: lung phrasings cluster, a no-region sentence is far.

    (It does NOT separate left from right well: "left lung" vs "right lung" is ~0.9,
    which is why the fusion layer is trained rather than relying on raw similarity.)
    """
    e = minilm.encode(["lungs", "both lungs", "bilateral lung fields", "no acute cardiopulmonary abnormality"])
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 3] + 0.3
    assert sim[0, 2] > sim[0, 3] + 0.2


def test_embedding_cache_reuses_and_evicts(minilm: MiniLMEncoder) -> None:
    calls: list[list[str]] = []

    class Counting:
        name, dim = minilm.name, minilm.dim

        def encode(self, texts: list[str]) -> np.ndarray:
            calls.append(list(texts))
            return minilm.encode(texts)

    cache = EmbeddingCache(maxsize=2)
    enc = CachedTextEncoder(Counting(), cache)
    a = enc.encode(["left lung", "right lung", "left lung"])
    assert calls == [["left lung", "right lung"]]  # duplicates encoded once
    b = enc.encode(["right lung"])
    assert calls == [["left lung", "right lung"]] and cache.hits >= 1
    np.testing.assert_array_equal(a[1], b[0])
    enc.encode(["heart"])  # evicts the least recently used ("left lung")
    assert len(cache) == 2
    enc.encode(["left lung"])
    assert calls[-1] == ["left lung"]


def test_get_text_encoder_from_manifest_block() -> None:
    enc = get_text_encoder({"name": "all-MiniLM-L6-v2", "dim": 384}, device="cpu")
    assert enc.name == "all-MiniLM-L6-v2" and enc.dim == 384
    assert get_text_encoder({"name": "all-MiniLM-L6-v2", "dim": 384}, device="cpu").encoder is enc.encoder
    with pytest.raises(TextEncoderError, match="384"):
        get_text_encoder({"name": "all-MiniLM-L6-v2", "dim": 512}, device="cpu")
    with pytest.raises(TextEncoderError, match="does not know"):
        get_text_encoder({"name": "bio-bert-unknown", "dim": 768})
    with pytest.raises(TextEncoderError, match="folder"):
        get_text_encoder({"name": "clip:mine", "dim": 512})


def _tiny_clip_folder(root: Path) -> tuple[Path, object]:
    """A real (random-weight) CLIP text tower saved locally, with the MiniLM WordPiece tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 102,
                     "pad_token_id": 0, "bos_token_id": 101},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        projection_dim=24,
    )
    folder = root / "tiny-clip"
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    src = minilm_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / name, folder / name)
    assert json.loads((folder / "config.json").read_text())["projection_dim"] == 24
    return folder, model


def test_clip_text_encoder_from_local_folder(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    folder, clip = _tiny_clip_folder(tmp_path)
    enc = CLIPTextEncoder(folder, device="cpu")
    assert enc.dim == 24 and enc.name == "clip:tiny-clip"
    e = enc.encode(["left lung", "right lower lobe", "left lung"])
    assert e.shape == (3, 24)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e[0], e[2], atol=1e-6)
    assert not np.allclose(e[0], e[1])
    # the saved projection really is used: same as the full CLIP model's text features
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    with torch.no_grad():
        ref = clip.get_text_features(**tok(["left lung"], return_tensors="pt"))
    ref = getattr(ref, "pooler_output", ref)
    ref = torch.nn.functional.normalize(ref, dim=-1)[0].numpy()
    np.testing.assert_allclose(e[0], ref, atol=1e-5)
    via_spec = get_text_encoder({"name": "clip:tiny-clip", "dim": 24, "path": str(folder)}, device="cpu")
    np.testing.assert_allclose(via_spec.encode(["left lung"])[0], e[0], atol=1e-5)
    with pytest.raises(TextEncoderError, match="does not exist"):
        CLIPTextEncoder(tmp_path / "nowhere")
