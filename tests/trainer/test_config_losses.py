"""YAML < CLI precedence, unknown keys refused; losses behave as their papers say."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr_viewer.core.errors import TrainingConfigError
from trainer.cli import finetune_parser, pretrain_parser
from trainer.config import parse_with_config, resolved, save_config


def test_yaml_defaults_cli_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  batch-size: 7\n  image_size: 96\noptim:\n  lr: 0.01\n  max_epochs: 3\nloss: focal\n")
    args = parse_with_config(finetune_parser(), ["--config", str(cfg), "--lr", "0.5"])
    assert args.batch_size == 7 and args.image_size == 96 and args.max_epochs == 3 and args.loss == "focal"
    assert args.lr == 0.5  # the flag wins over the YAML
    assert args.weight_decay == 0.05  # untouched default
    out = save_config(resolved(args), tmp_path / "run", command="finetune")
    import yaml

    saved = yaml.safe_load(out.read_text())
    assert saved["lr"] == 0.5 and saved["batch_size"] == 7 and saved["command"] == "finetune"


def test_yaml_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(TrainingConfigError, match="learning_rate"):
        parse_with_config(finetune_parser(), ["--config", str(bad)])
    bad.write_text("mode: sideways\n")
    with pytest.raises(TrainingConfigError, match="sideways"):
        parse_with_config(finetune_parser(), ["--config", str(bad)])
    with pytest.raises(TrainingConfigError, match="not found"):
        parse_with_config(finetune_parser(), ["--config", str(tmp_path / "none.yaml")])


def test_shipped_configs_parse(repo_root: Path) -> None:
    files = sorted((repo_root / "configs").glob("*.yaml"))
    assert files
    for f in files:
        parser = pretrain_parser(f.stem.split("_")[1]) if f.stem.startswith("pretrain_") else finetune_parser()
        parse_with_config(parser, ["--config", str(f)])


def test_nt_xent_prefers_matching_views() -> None:
    from trainer.losses import nt_xent

    torch.manual_seed(0)
    z = torch.randn(16, 32)
    same = nt_xent(z, z + 0.01 * torch.randn_like(z))
    shuffled = nt_xent(z, z[torch.randperm(16)])
    assert same < shuffled
    assert same > 0


def test_classification_losses() -> None:
    from trainer.losses import FocalLoss, MaskedBCE, build_classification_loss, pos_weight_from_targets

    logits = torch.tensor([[3.0, -2.0], [0.1, 0.2]])
    target = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    bce = MaskedBCE()(logits, target)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([3.0, 0.1, 0.2]), torch.tensor([1.0, 0.0, 1.0])
    )
    assert torch.allclose(bce, ref)  # the unknown label is ignored, not counted as negative
    assert FocalLoss(alpha=None)(logits, target) < bce  # focal down-weights the easy example
    pw = pos_weight_from_targets(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(pw, torch.tensor([3.0, 3.0]))
    smooth = MaskedBCE(label_smoothing=0.2)(torch.tensor([[20.0]]), torch.tensor([[1.0]]))
    assert smooth > 1.0  # a confident correct logit is still penalised when smoothing
    mc = build_classification_loss("multiclass", "ce_weighted", torch.tensor([[1.0, 0, 0]] * 3 + [[0, 1.0, 0]]))
    assert mc(torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 0.0]])) > 0
    with pytest.raises(TrainingConfigError):
        build_classification_loss("binary", "hinge", torch.zeros(1, 1))


def test_warmup_cosine_schedule() -> None:
    from trainer.tasks.base import warmup_cosine

    vals = [warmup_cosine(s, 100, 10) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert max(vals) == pytest.approx(1.0) and vals[-1] < 0.05
    assert all(a >= b for a, b in zip(vals[10:], vals[11:]))
