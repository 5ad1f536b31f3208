"""Tiny but real trainer fixtures: a few dozen shared-data images, 64 px, resnet18 or smaller."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def kermany_manifest(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real Kermany images (20 normal, 20 pneumonia, 40 patients), binary label ``pneumonia``."""
    from trainer.data.adapters import build_manifest
    from trainer.data.manifest import write_manifest

    frame = build_manifest("kermany", data_dir / "pneumonia_kermany")
    frame = frame.drop_duplicates("patient_id")
    pick = [frame[frame["pneumonia"] == v].sample(20, random_state=0) for v in (0, 1)]
    import pandas as pd

    out = tmp_path_factory.mktemp("kermany") / "kermany40.csv"
    write_manifest(pd.concat(pick), out)
    return out


@pytest.fixture(scope="session")
def nih_manifest(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real NIH images with three findings (multi-label)."""
    import pandas as pd

    from trainer.data.adapters import build_manifest
    from trainer.data.manifest import write_manifest

    frame = build_manifest("nih14", data_dir / "nih14")
    keep = ["Effusion", "Infiltration", "Atelectasis"]
    pos = frame[frame[keep].sum(axis=1) > 0].head(40)
    neg = frame[frame[keep].sum(axis=1) == 0].head(20)
    frame = pd.concat([pos, neg])[["image", "patient_id", "dataset", *keep]]
    out = tmp_path_factory.mktemp("nih") / "nih60.csv"
    write_manifest(frame, out)
    return out


def common_args(runs: Path, name: str, *extra: str) -> list[str]:
    """Options every tiny run shares: 64 px, in-process loaders, no progress bar, one decode cache on disk."""
    return [
        "--runs-dir", str(runs), "--name", name, "--image-size", "64", "--batch-size", "8",
        "--num-workers", "0", "--progress", "none", "--accelerator", "cpu", "--devices", "1",
        "--cache", "both", "--cache-dir", str(runs.parent / ".decode-cache"), *extra,
    ]  # fmt: skip
