"""A tiny real `cxr-train segment` run: a dozen real images at 64 px, one epoch, ResNet-18 tiny U-Net.

The bundle it writes must load in the viewer's Segmenter (no trainer import needed) and
draw masks at the original image size; its metrics carry the per-target table and the
left/right swap table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_viewer.core.errors import TrainingConfigError

torch.set_num_threads(2)
pytestmark = pytest.mark.slow


def _encoder_bundle(out: Path, backbone: str = "resnet18") -> Path:
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    torch.manual_seed(3)
    enc = create_model("encoder", backbone=backbone, in_chans=1)
    manifest = {
        "name": "recon-test", "version": "0.1.0", "task": "ssl_encoder", "trained": False,
        "architecture": {"name": "encoder", "kwargs": {"backbone": backbone, "in_chans": 1}},
        "preprocessing": {"size": [64, 64]},
    }  # fmt: skip
    return save_bundle(enc, manifest, out, dtype="float32")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    from trainer.cli import main

    tmp = tmp_path_factory.mktemp("seg")
    enc = _encoder_bundle(tmp / "encoder")
    rc = main([
        "segment", "--data-root", str(data_dir), "--runs-dir", str(tmp / "runs"), "--name", "tiny",
        "--arch", "text_unet_tiny", "--backbone", "resnet18", "--image-size", "64",
        "--max-images-per-source", "4", "--max-epochs", "1", "--batch-size", "8", "--num-workers", "0",
        "--bootstrap", "50", "--progress", "none", "--accelerator", "cpu", "--encoder", str(enc),
        "--cache", "memory",
    ])  # fmt: skip
    assert rc == 0
    run_dir = tmp / "runs" / "tiny"
    return {"run_dir": run_dir, "bundle": run_dir / "bundle", "data_dir": data_dir, "tmp": tmp}


def test_run_writes_a_text_segmentation_bundle(run: dict) -> None:
    manifest = json.loads((run["bundle"] / "manifest.json").read_text())
    assert manifest["task"] == "text_segmentation" and manifest["trained"] is True
    assert manifest["text_encoder"] == {"name": "all-MiniLM-L6-v2", "dim": 384}
    assert manifest["architecture"]["name"] == "text_unet_tiny"
    assert manifest["preprocessing"]["size"] == [64, 64]
    thr = manifest["thresholds"]["region"]
    assert 0 < thr["value"] < 1 and thr["source"] == "validation split"
    prov = manifest["provenance"]
    assert prov["split_sha256"] and Path(prov["split_file"]).is_file()
    assert prov["init"].startswith("ssl_encoder bundle recon-test")
    metrics = manifest["metrics"]
    seg = metrics["segmentation"]
    for kind in ("left_lung", "right_lung", "both_lungs", "zone"):
        d = seg[kind]["dice"]
        assert 0.0 <= d["value"] <= 1.0 and len(d["ci95"]) == 2
        assert 0.0 <= seg[kind]["pixel_accuracy"]["value"] <= 1.0
    assert "empty_rate" in seg["negative"]
    swap = metrics["swap_test"]
    assert swap["n_images"] >= 1
    table = swap["table"]
    assert set(table) == {"left lung", "right lung"}
    for row in table.values():
        assert set(row) == {"left lung", "right lung"} and all(0.0 <= v <= 1.0 for v in row.values())
    # the samples table and the image manifest travel with the run
    assert (run["run_dir"] / "segmentation_samples.csv").is_file()
    assert (run["run_dir"] / "images.csv").is_file()


def test_viewer_segmenter_loads_bundle_and_masks_at_original_size(run: dict, tmp_path: Path) -> None:
    from cxr_viewer.core.inference.segment import load_segmenter
    from cxr_viewer.core.io import read_image

    seg = load_segmenter(run["bundle"], device="cpu")
    rec = read_image(run["data_dir"] / "shenzhen_sample" / "images" / "CHNCXR_0001_0.png")
    assert rec.shape != (64, 64)
    masks = seg.segment(rec, ["left lung", "right lower lobe opacity", "No acute cardiopulmonary abnormality.", "  "])
    assert [m.text for m in masks] == ["left lung", "right lower lobe opacity", "No acute cardiopulmonary abnormality."]
    for m in masks:
        assert m.prob.shape == rec.shape and m.prob.dtype == np.float32
        assert m.mask.shape == rec.shape and m.mask.dtype == bool
        assert 0.0 <= float(m.prob.min()) and float(m.prob.max()) <= 1.0
        assert m.area_fraction == pytest.approx(m.mask.mean())
        np.testing.assert_array_equal(m.mask, m.prob >= m.threshold)
    assert masks[2].negative and not masks[0].negative
    # different sentences give different maps (the text is used)
    assert np.abs(masks[0].prob - masks[1].prob).max() > 1e-4
    png = masks[0].to_png(tmp_path / "m.png")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (rec.shape[1], rec.shape[0]) and im.mode == "L"
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
    # a report: one mask per FINDINGS/IMPRESSION sentence
    report = "INDICATION: cough.\nFINDINGS: Right lower lobe opacity. The left lung is clear.\nIMPRESSION: Pneumonia."
    assert [m.text for m in seg.segment_report(rec, report)] == [
        "Right lower lobe opacity.", "The left lung is clear.", "Pneumonia."
    ]


def test_encoder_init_from_bundle_copies_weights(run: dict) -> None:
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.tasks.segment import _init_encoder

    import cxr_viewer.core.models.segmenter  # noqa: F401

    model = create_model("text_unet_tiny", encoder="resnet18")
    what = _init_encoder(model, str(run["tmp"] / "encoder"))
    assert "recon-test" in what
    src = load_bundle(run["tmp"] / "encoder").model
    torch.testing.assert_close(model.unet.encoder.conv1.weight, src.backbone.conv1.weight)
    torch.testing.assert_close(model.unet.encoder.layer2[0].conv1.weight, src.backbone.layer2[0].conv1.weight)
    other = create_model("text_unet_tiny", encoder="resnet34")
    with pytest.raises(TrainingConfigError, match="--backbone resnet18"):
        _init_encoder(other, str(run["tmp"] / "encoder"))


def _tiny_args(run: dict, name: str, *extra: str) -> list[str]:
    return [
        "segment", "--data-root", str(run["data_dir"]), "--runs-dir", str(run["tmp"] / "runs"), "--name", name,
        "--arch", "text_unet_tiny", "--max-images-per-source", "4", "--max-epochs", "1", "--batch-size", "8",
        "--num-workers", "0", "--bootstrap", "20", "--progress", "none", "--accelerator", "cpu", "--cache", "memory",
        *extra,
    ]  # fmt: skip


def test_init_from_a_segmenter_bundle_finishes_at_another_size(run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """--init BUNDLE: a second stage starts every weight from the first stage's segmenter (at 80 px
    where the first ran at 64), says so in its provenance, and refuses a bundle of another build."""
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.cli import main
    from trainer.tasks.segment import _init_segmenter

    first = load_bundle(run["bundle"])
    assert main(_tiny_args(run, "stage2", "--backbone", "resnet18", "--image-size", "80", "--init", str(run["bundle"]))) == 0
    manifest = json.loads((run["tmp"] / "runs" / "stage2" / "bundle" / "manifest.json").read_text())
    assert manifest["preprocessing"]["size"] == [80, 80]
    assert manifest["architecture"] == json.loads((run["bundle"] / "manifest.json").read_text())["architecture"]
    assert manifest["provenance"]["init"] == f"text_segmentation bundle {first.name} {first.manifest.version} ({first.sha256[:12]})"
    # every weight, the text projection and the decoder too, comes from the bundle
    fresh = create_model("text_unet_tiny", **first.manifest.architecture["kwargs"])
    _init_segmenter(fresh, str(run["bundle"]), "text_unet_tiny", first.manifest.architecture["kwargs"], first.manifest.text_encoder)
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    # another backbone (or architecture) than the bundle's is refused before any training
    capsys.readouterr()
    assert main(_tiny_args(run, "wrong", "--backbone", "resnet34", "--image-size", "64", "--init", str(run["bundle"]))) == 1
    assert "pass the matching --arch/--backbone/--fusion" in capsys.readouterr().err
    assert not (run["tmp"] / "runs" / "wrong" / "bundle").exists()
    with pytest.raises(TrainingConfigError, match="matching --arch"):
        _init_segmenter(fresh, str(run["bundle"]), "text_unet", first.manifest.architecture["kwargs"], None)
    with pytest.raises(TrainingConfigError, match="needs a text_segmentation bundle"):  # an encoder is no segmenter
        _init_segmenter(fresh, str(run["tmp"] / "encoder"), "text_unet_tiny", first.manifest.architecture["kwargs"], None)
