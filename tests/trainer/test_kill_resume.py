"""A real tiny `cxr-train finetune` killed with SIGKILL mid-epoch resumes without losing or repeating an epoch,
and `--resume` of a finished run changes nothing."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    """64 synthetic 32 px radiograph-like images, one per patient, half with a bright blob (the 'finding')."""
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "img").mkdir()
    for i in range(64):
        arr = rng.normal(100, 20, (32, 32))
        label = i % 2
        if label:
            arr[8:20, 8:20] += 80
        f = tmp_path / "img" / f"{i:03d}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(f)
        rows.append({"image": f"img/{f.name}", "patient_id": f"p{i}", "finding": label})
    out = tmp_path / "manifest.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "patient_id", "finding"])
        w.writeheader()
        w.writerows(rows)
    return out


def _cmd(manifest: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer.cli", "finetune", "--manifest", str(manifest), "--runs-dir", str(runs),
            "--name", "killed", "--backbone", "resnet10t", "--image-size", "32", "--batch-size", "2",
            "--num-workers", "0", "--progress", "none", "--accelerator", "cpu", "--devices", "1", "--cache", "memory",
            "--max-epochs", str(EPOCHS), "--early-stop", "0", "--augment", "none", "--val-frac", "0.25",
            "--test-frac", "0", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _epoch(ckpt: Path) -> int | None:
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - absent, or being written
        return None


def _val_epochs(metrics_csv: Path) -> list[int]:
    with open(metrics_csv, newline="") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh) if r.get("val_auroc")]


def test_sigkill_mid_epoch_then_resume(manifest: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    last = runs / "killed" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_cmd(manifest, runs), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 480  # generous: CI machines may be loaded
    try:
        while 1 not in seen:  # wait for the checkpoint after the second epoch (index 1)
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no per-epoch checkpoint appeared"
            e = _epoch(last) if last.is_file() else None
            if e is not None and e not in seen:
                seen[e] = time.monotonic()
            time.sleep(0.02)
        epoch_s = seen[1] - seen[0] if 0 in seen else 0.5
        time.sleep(0.4 * epoch_s)  # well inside the third epoch
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _epoch(last)
    assert killed_at is not None and killed_at >= 1  # every epoch finished before the kill is in last.ckpt
    assert not (runs / "killed" / "finished.json").exists()

    resumed = subprocess.run([*_cmd(manifest, runs), "--resume"], cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the resumed part trained exactly the epochs after the checkpoint: none lost, none repeated
    assert _val_epochs(runs / "killed" / "logs" / "metrics.csv") == list(range(killed_at + 1, EPOCHS))
    import torch

    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["epoch"] == EPOCHS - 1
    steps = 48 // 2  # 48 training images (64 less a quarter for validation), batches of 2
    assert final["global_step"] == EPOCHS * steps
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["global_step"] == EPOCHS * steps
    done = json.loads((runs / "killed" / "finished.json").read_text())
    assert done["epochs"] == EPOCHS and done["bundle"] == out["bundle"]

    # --resume of the finished run: nothing trained, nothing overwritten, and it says so
    bundle = Path(out["bundle"])
    before = {p.name: p.stat().st_mtime_ns for p in bundle.iterdir()}
    ckpt_before = last.stat().st_mtime_ns
    again = subprocess.run([*_cmd(manifest, runs), "--resume"], cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished" in again.stderr and "nothing was trained" in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["already_finished"] is True
    assert {p.name: p.stat().st_mtime_ns for p in bundle.iterdir()} == before
    assert last.stat().st_mtime_ns == ckpt_before
    assert len(list((runs / "killed").glob("logs.part*"))) == 1  # only the killed part's logs were set aside
    assert "larger --max-epochs" in again.stderr  # and how to train further
