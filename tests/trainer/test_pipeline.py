"""End to end on real images, tiny: pretrain -> finetune -> calibrate -> evaluate -> export -> viewer loads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import common_args
from trainer.cli import main

pytestmark = pytest.mark.slow


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    return json.loads(out.out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def simclr_bundle(runs: Path, kermany_manifest: Path) -> Path:
    rc = main(["pretrain", "simclr", "--manifest", str(kermany_manifest), "--max-epochs", "1", "--backbone", "resnet18",
               *common_args(runs, "ssl")])  # fmt: skip
    assert rc == 0
    return runs / "ssl" / "bundle"


@pytest.fixture(scope="module")
def recon_bundle(runs: Path, kermany_manifest: Path) -> Path:
    rc = main(["pretrain", "recon", "--manifest", str(kermany_manifest), "--max-epochs", "1", "--backbone", "resnet18",
               "--ssim-weight", "0.5", *common_args(runs, "recon")])  # fmt: skip
    assert rc == 0
    return runs / "recon" / "bundle"


def test_simclr_writes_encoder_bundle(simclr_bundle: Path, runs: Path) -> None:
    from cxr_viewer.core.models.bundle import load_bundle

    b = load_bundle(simclr_bundle)
    assert b.task == "ssl_encoder" and b.manifest.trained
    assert b.manifest.preprocessing.size == (64, 64)
    assert b.manifest.provenance["split_sha256"] and b.manifest.provenance["config"]["temperature"] == 0.2
    assert (runs / "ssl" / "config.yaml").is_file() and (runs / "ssl" / "checkpoints" / "last.ckpt").is_file()
    metrics = (runs / "ssl" / "logs" / "metrics.csv").read_text()
    assert "train_loss" in metrics and "val_loss" in metrics
    assert torch.isfinite(b.model(torch.zeros(2, 1, 64, 64))).all()


def test_recon_encoder_fits_classifier_and_unet(recon_bundle: Path, runs: Path) -> None:
    import segmentation_models_pytorch as smp

    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.tasks.recon import timm_resnet_to_smp

    b = load_bundle(recon_bundle)
    grids = sorted((runs / "recon" / "recon").glob("recon_epoch*.png"))
    assert grids, "reconstruction grid PNG missing"
    metrics = (runs / "recon" / "logs" / "metrics.csv").read_text()
    assert "val_psnr" in metrics and "val_ssim" in metrics
    clf = create_model("classifier", backbone="resnet18", num_classes=2, in_chans=1)
    missing, unexpected = clf.load_state_dict(b.model.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"head.weight", "head.bias"}
    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)
    unet.encoder.load_state_dict(timm_resnet_to_smp(b.model.state_dict(), "resnet18"), strict=True)
    assert torch.equal(unet.encoder.conv1.weight, b.model.backbone.conv1.weight)


def test_timm_resnet34_maps_onto_smp_unet_encoders() -> None:
    import segmentation_models_pytorch as smp

    from cxr_viewer.core.models import create_model
    from trainer.tasks.recon import timm_resnet_to_smp

    enc = create_model("encoder", backbone="resnet34", in_chans=1)
    sd = enc.state_dict()
    smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1).encoder.load_state_dict(
        timm_resnet_to_smp(sd, "resnet34"), strict=True
    )
    tu = smp.Unet("tu-resnet34", encoder_weights=None, in_channels=1, classes=1)
    missing, unexpected = tu.encoder.load_state_dict(timm_resnet_to_smp(sd, "tu-resnet34"), strict=False)
    assert not unexpected and not [k for k in missing if "fc" not in k]


def test_finetune_calibrate_evaluate_export_viewer(
    simclr_bundle: Path, runs: Path, kermany_manifest: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import load_bundle

    res = _run(["finetune", "--manifest", str(kermany_manifest), "--init", str(simclr_bundle), "--max-epochs", "2",
                "--loss", "focal", "--backbone", "resnet18", *common_args(runs, "ft")], capsys)  # fmt: skip
    bundle = Path(res["bundle"])
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["task"] == "binary" and m["labels"] == ["pneumonia"]
    assert m["provenance"]["init"] == "ssl_encoder backbone"
    assert m["preprocessing"]["size"] == [64, 64]

    cal = _run(["calibrate", "--bundle", str(bundle), "--manifest", str(kermany_manifest), "--method", "youden"], capsys)
    t = cal["thresholds"]["pneumonia"]
    m2 = json.loads((bundle / "manifest.json").read_text())
    assert m2["thresholds"]["pneumonia"]["method"] == "youden" and 0 <= t["value"] <= 1
    assert m2["weights"]["sha256"] == m["weights"]["sha256"]  # thresholds only: same weights, same hash

    ev = runs / "ft" / "eval"
    _run(["evaluate", "--bundle", str(bundle), "--manifest", str(kermany_manifest), "--out", str(ev),
          "--bootstrap", "1000", "--gallery", "2"], capsys)  # fmt: skip
    metrics = json.loads((ev / "metrics.json").read_text())
    report = (ev / "report.md").read_text()
    for png in ("roc.png", "pr.png", "confusion.png", "calibration.png"):
        assert (ev / png).stat().st_size > 1000 and f"]({png})" in report
    a = metrics["auroc"]["pneumonia"]
    assert a["ci95"] is not None and a["ci95"][0] <= a["value"] <= a["ci95"][1]
    assert metrics["bootstrap"]["resamples"] == 1000 and metrics["bootstrap"]["unit"] == "patient"
    op = metrics["operating_point"]["pneumonia"]
    assert op["threshold"] == pytest.approx(t["value"]) and op["tp"] + op["fn"] == a["n_pos"]
    assert metrics["n_patients"] == metrics["n_images"]  # one image per patient in this manifest

    golden = [str(data_dir / "pneumonia_kermany" / "images" / "NORMAL" / "IM-0115-0001.jpeg")]
    out = runs / "export"
    _run(["export", "--bundle", str(bundle), "--metrics", str(ev / "metrics.json"), "--out", str(out),
          "--name", "pneumonia-tiny", "--version", "0.0.1", "--golden", *golden], capsys)  # fmt: skip
    final = load_bundle(out)
    mf = final.manifest
    assert mf.name == "pneumonia-tiny" and mf.weights["dtype"] == "float16"
    assert mf.intended_use.startswith("Research use only")
    assert mf.metrics["auroc"]["pneumonia"]["value"] == pytest.approx(a["value"])
    assert mf.thresholds["pneumonia"]["method"] == "youden"
    assert mf.provenance["split_sha256"] and mf.provenance["code_version"]
    assert mf.cam_layers == ["backbone.layer4"]
    # the viewer's engine scores a real image with it, and reproduces the golden score
    engine = InferenceEngine([final], device="cpu", backend="torch")
    g = mf.golden[0]
    result = engine.analyze(read_image(out / g["image"]))
    score = next(f.score for f in result.findings if f.label == "pneumonia")
    assert score == pytest.approx(g["scores"]["pneumonia"], abs=1e-4)
    assert engine.threshold(final, "pneumonia")[0] == pytest.approx(t["value"])

    # the viewer loads it without importing the trainer (or Lightning)
    code = (
        "import sys; from cxr_viewer.core.models.bundle import load_bundle; "
        f"b = load_bundle({str(out)!r}); "
        "bad = [m for m in sys.modules if m == 'trainer' or m.startswith(('trainer.', 'lightning'))]; "
        "print(b.manifest.name, bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("pneumonia-tiny []")


def test_resume_continues_step_and_optimizer(runs: Path, nih_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["finetune", "--manifest", str(nih_manifest), "--backbone", "resnet18", "--early-stop", "0",
            *common_args(runs, "resume")]  # fmt: skip
    first = _run([*base, "--max-epochs", "1"], capsys)
    ckpt_dir = runs / "resume" / "checkpoints"
    c1 = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    steps_per_epoch = first["global_step"]
    assert c1["global_step"] == steps_per_epoch > 0
    second = _run([*base, "--max-epochs", "2", "--resume"], capsys)
    assert second["global_step"] == 2 * steps_per_epoch  # continued, not restarted
    c2 = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert c2["epoch"] == 1
    adam1 = c1["optimizer_states"][0]["state"]
    adam2 = c2["optimizer_states"][0]["state"]
    k = next(iter(adam1))
    assert float(adam1[k]["step"]) == steps_per_epoch and float(adam2[k]["step"]) == 2 * steps_per_epoch
    assert c2["lr_schedulers"][0]["last_epoch"] == 2 * steps_per_epoch  # warm-up/cosine continued too
    assert (runs / "resume" / "logs.part0" / "metrics.csv").is_file()  # the first part's log is kept
    # the resumed run reused the first run's split file
    cfg = (runs / "resume" / "config.yaml").read_text()
    assert "resume: true" in cfg and "max_epochs: 2" in cfg
    bundle = json.loads((Path(second["bundle"]) / "manifest.json").read_text())
    assert bundle["task"] == "multilabel" and bundle["labels"] == ["Effusion", "Infiltration", "Atelectasis"]


def test_linear_probe_freezes_backbone(runs: Path, kermany_manifest: Path, simclr_bundle: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from cxr_viewer.core.models.bundle import load_bundle

    res = _run(["finetune", "--manifest", str(kermany_manifest), "--init", str(simclr_bundle), "--mode", "linear",
                "--max-epochs", "1", *common_args(runs, "linear")], capsys)  # fmt: skip
    enc = load_bundle(simclr_bundle).model.state_dict()
    clf = load_bundle(res["bundle"]).model.state_dict()
    for key, value in enc.items():
        assert torch.equal(clf[key], value), key  # weights and BatchNorm statistics untouched


def test_progressive_unfreezing_schedule(kermany_manifest: Path) -> None:
    from trainer.tasks.classify import ClassifierTask

    t = ClassifierTask(labels=["pneumonia"], task="binary", backbone="resnet18", mode="progressive", unfreeze_every=2)
    n = len(t.backbone_groups())
    assert [t.trainable_groups(e) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    assert t.trainable_groups(100) == n


def test_fractions_experiment(runs: Path, kermany_manifest: Path, simclr_bundle: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    res = _run(["experiment", "fractions", "--manifest", str(kermany_manifest), "--fractions", "0.1", "1.0",
                "--inits", "random", "simclr", "--simclr", str(simclr_bundle), "--max-epochs", "1",
                "--bootstrap", "200", *common_args(runs, "fractions")], capsys)  # fmt: skip
    table = Path(res["results"]).read_text()
    rows = json.loads((runs / "fractions" / "results.json").read_text())
    assert len(rows) == 4 and (runs / "fractions" / "results.png").is_file()
    assert "| 0.1 |" in table and "simclr" in table
    small = {r["train_patients"] for r in rows if r["fraction"] == 0.1}
    full = {r["train_patients"] for r in rows if r["fraction"] == 1.0}
    assert max(small) < min(full)
