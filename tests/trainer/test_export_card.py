"""``cxr-train export`` writes the one model card and, with --onnx, the verified ONNX export recorded in the manifest."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.core.test_manifest_blocks import assert_written_back

torch.set_num_threads(1)


def test_export_writes_card_and_recorded_onnx(tmp_path: Path) -> None:
    from cxr_viewer.core.models.bundle import load_bundle, read_manifest
    from cxr_viewer.core.models.card import model_card_markdown
    from cxr_viewer.core.models.testing import make_untrained_bundle
    from trainer.export import export_bundle

    src = make_untrained_bundle(tmp_path / "src", name="tiny", labels=["A", "B"], size=(64, 64))
    out = export_bundle(src, tmp_path / "out", name="tiny-final", version="1.0.0", onnx=True)
    m = read_manifest(out)
    assert_written_back(out)  # with the ONNX record the export added
    card = (out / "model_card.md").read_text(encoding="utf-8")
    assert card == model_card_markdown(m)  # the one renderer, from the final manifest
    assert card.startswith("# Model card: tiny-final 1.0.0") and m.weights["sha256"] in card
    rec = m.onnx
    assert rec.weights_sha256 == m.weights["sha256"] and (out / rec.file).is_file()
    b = load_bundle(out)
    assert b.onnx is not None and b.onnx.sha256 == rec.sha256
