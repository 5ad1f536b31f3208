"""The multi-process (DDP) path of ``cxr-train``: 2 CPU processes (gloo) against 1, on real images."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import common_args
from trainer.cli import main

# Final weights of the 2-process run may differ from the 1-process run by float32 rounding only (see below);
# measured: 1.2e-7 (one float32 step at the weights' scale) after 8 steps.
WEIGHT_ATOL = 1e-6


def _val_aurocs(run: Path) -> list[float]:
    with open(run / "logs" / "metrics.csv", newline="") as fh:
        return [float(r["val_auroc"]) for r in csv.DictReader(fh) if r.get("val_auroc")]


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three interpreters start (torch, Lightning, timm): slow on a busy 2-core machine
def test_two_process_ddp_matches_one_process(
    tmp_path: Path, kermany_manifest: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--devices 2 --strategy ddp`` with batch 4 trains the same model as 1 process with batch 8.

    Why they agree: both runs make the same seeded patient split and the same seeded
    initial weights (DDP also broadcasts rank 0's weights). ``SeededOrderSampler`` gives
    every epoch one permutation and rank r takes positions r, r+2, ...: step k's 2x4
    images are exactly the 8 images of the 1-process step k (28 training images: three
    steps of 4+4, a last one of 2+2). No augmentation (it draws per process). The loss is
    a per-batch mean and both ranks hold equally many images, so DDP's average of the two
    gradients is the gradient of the 8-image mean; clipping, AdamW and the warm-up/cosine
    schedule (same step count) act on that same gradient. The backbone (timm
    ``test_convnext``) has LayerNorm only: BatchNorm would normalise each rank's 4 images
    on their own, and torch's SyncBatchNorm does not run on CPU. Validation scores are
    gathered from both ranks and the sampler's padding removed, so AUROC sees each
    validation image once.

    Why not bit-exact: float32 sums in another order (the all-reduce adds two partial
    gradients; kernels see 4 images instead of 8), about 1e-7 relative per step, which
    8 AdamW steps keep below ``WEIGHT_ATOL`` (measured 1.2e-7) while the weights move by
    more than 100 times that.
    """
    runs = tmp_path / "runs"
    flags = ["--manifest", str(kermany_manifest), "--backbone", "test_convnext", "--augment", "none",
             "--max-epochs", "2", "--early-stop", "0", "--warmup-epochs", "0.5"]  # fmt: skip
    one = ["finetune", *flags, *common_args(runs, "one"), "--batch-size", "8", "--devices", "1"]
    two = ["finetune", *flags, *common_args(runs, "two"), "--batch-size", "4", "--devices", "2", "--strategy", "ddp"]

    t0 = time.perf_counter()
    assert main(one) == 0
    res1 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    wall1 = time.perf_counter() - t0

    # Lightning starts the second process by re-running this command line, so the CLI runs in a subprocess.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    t0 = time.perf_counter()
    # own session: on a timeout the rank Lightning started goes too (it holds the pipes)
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", *two], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(tmp_path), start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the 2-process run did not finish in 1500 s:\n{(out + err)[-3000:]}")
    wall2 = time.perf_counter() - t0
    (tmp_path / "ddp.log").write_text(out + err)
    assert proc.returncode == 0, (out + err)[-4000:]
    with capsys.disabled():
        print(f"\nwall time: 1 process {wall1:.1f} s, 2-process DDP (CLI subprocess) {wall2:.1f} s")
    assert err.count("splits (patients)") == 2  # our code ran in two processes
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, lines  # only rank 0 reports (and writes the bundle)
    res2 = json.loads(lines[0])

    # same number of optimiser steps: each rank took 4 of 8 images per step (alone, batch 4 would be 7 steps/epoch)
    assert res1["global_step"] == res2["global_step"] == 8
    assert (runs / "one" / "splits.csv").read_bytes() == (runs / "two" / "splits.csv").read_bytes()
    m2 = json.loads((Path(res2["bundle"]) / "manifest.json").read_text())
    assert m2["provenance"]["config"]["devices"] == "2" and m2["provenance"]["config"]["strategy"] == "ddp"

    w1, w2 = _last_weights(runs / "one"), _last_weights(runs / "two")
    assert w1.keys() == w2.keys()
    diff = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1)
    assert diff <= WEIGHT_ATOL, f"2-process weights differ from 1-process weights by {diff:.3g}"
    # the tolerance is tight against what training changed: rebuild the seeded initial weights
    import lightning as L

    from trainer.tasks.classify import ClassifierTask

    L.seed_everything(0, verbose=False)
    w0 = ClassifierTask(labels=["pneumonia"], task="binary", backbone="test_convnext").state_dict()
    moved = max(float((w1[k].float() - w0[k].float()).abs().max()) for k in w1 if w0[k].is_floating_point())
    assert moved > 100 * WEIGHT_ATOL, moved

    a1, a2 = _val_aurocs(runs / "one"), _val_aurocs(runs / "two")
    assert len(a1) == len(a2) == 2
    assert a1 == pytest.approx(a2, abs=1e-6)  # each validation image counted once, same scores
    assert res2["val_auroc"] == pytest.approx(res1["val_auroc"], abs=1e-6)


# ---------------------------------------------------------------- the pieces, without processes
_RANKS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


@pytest.mark.parametrize(
    ("env", "zero"),
    [
        ({}, True),  # nothing launched this process
        ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),  # Lightning's launcher, first process
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, False),  # ... and the one it started
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # node 1's first process
        ({"RANK": "3", "LOCAL_RANK": "1"}, False),  # torchrun
        ({"SLURM_PROCID": "4"}, False),  # srun, one task per GPU
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # Lightning's launcher inside a one-task allocation
    ],
)
def test_rank_zero_from_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], zero: bool) -> None:
    from trainer.distributed import is_global_zero_env

    for k in _RANKS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_global_zero_env() is zero


def test_run_name_is_shared_or_required(monkeypatch: pytest.MonkeyPatch) -> None:
    from cxr_viewer.core.errors import TrainingConfigError
    from trainer.distributed import RUN_NAME_ENV, default_run_name

    for k in (*_RANKS, RUN_NAME_ENV):
        monkeypatch.delenv(k, raising=False)
    name = default_run_name("finetune")  # rank 0 picks it and leaves it for the processes it starts
    assert name.startswith("finetune-") and os.environ[RUN_NAME_ENV] == name
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert default_run_name("finetune") == name
    monkeypatch.delenv(RUN_NAME_ENV)
    monkeypatch.setenv("RANK", "1")  # started by torchrun: rank 0's clock is unknown here
    with pytest.raises(TrainingConfigError, match="--name"):
        default_run_name("finetune")


def test_sync_batchnorm_refused_on_cpu() -> None:
    from cxr_viewer.core.errors import TrainingConfigError
    from trainer.distributed import check_sync_batchnorm

    check_sync_batchnorm(False, "cpu")
    with pytest.raises(TrainingConfigError, match="GPUs"):
        check_sync_batchnorm(True, "cpu")


def test_seeded_order_gives_one_process_batches_to_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks with batch 4 draw, step by step, the 8 indices one process with batch 8 draws."""
    import torch.distributed as dist

    from trainer.distributed import SeededOrderSampler

    data = list(range(28))
    single = SeededOrderSampler(data, seed=7)
    single.set_epoch(1)
    one = list(single)
    assert sorted(one) == data and one != data
    single.set_epoch(2)
    assert list(single) != one  # a new order every epoch
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
        s = SeededOrderSampler(data, seed=7)
        s.set_epoch(1)
        shards.append(list(s))
        assert len(s) == 14
    for k in range(0, 28, 8):
        assert sorted(shards[0][k // 2 : k // 2 + 4] + shards[1][k // 2 : k // 2 + 4]) == sorted(one[k : k + 8])


def test_gathered_padding_counted_once() -> None:
    from trainer.distributed import unique_by_index

    # 5 validation images on 2 ranks: rank 0 holds 0, 2, 4; rank 1 holds 1, 3 and 0 again (padding)
    index = torch.tensor([0, 2, 4, 1, 3, 0])
    scores = torch.tensor([0.0, 0.2, 0.4, 0.1, 0.3, 0.0])
    (kept,) = unique_by_index(index, scores)
    assert kept.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_split_file_hash_without_writing(tmp_path: Path) -> None:
    import pandas as pd

    from trainer.data.splits import file_sha256, write_split_file

    frame = pd.DataFrame({"patient_id": ["a", "b", "b"], "split": ["train", "val", "val"], "image": ["1", "2", "3"]})
    path = tmp_path / "splits.csv"
    assert write_split_file(frame, path, write=False) and not path.exists()
    assert write_split_file(frame, path) == write_split_file(frame, path, write=False) == file_sha256(path)
    assert [p.name for p in tmp_path.iterdir()] == ["splits.csv"]  # no temporary file left behind
