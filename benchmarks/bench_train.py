"""Trainer throughput: ``finetune``'s Lightning loop vs a bare PyTorch loop, and the decode cache.

Both loops train the same ``CXRClassifier`` (same loss, AdamW, warm-up + cosine
schedule, gradient clipping) on the same real images, batches and cached DataLoader;
the Lightning side uses the Trainer that ``cxr-train finetune`` builds (CSV logging,
per-epoch checkpoints). The first epoch of each loop is a warm-up and not timed. Goal:
Lightning at >= 0.9x the bare loop's images/s.

Data loading: one pass over the same images without the cache (decode + resize every
epoch, what a cache-less trainer pays each epoch), with a cold cache, a warm in-memory
cache and a warm on-disk cache (.npy).

    python benchmarks/bench_train.py --images 96 --size 128 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _manifest(n: int, out: Path) -> Path:
    import pandas as pd

    from cxr_viewer.core.paths import data_dir
    from trainer.data.adapters import build_manifest
    from trainer.data.manifest import write_manifest

    frame = build_manifest("nih14", data_dir() / "nih14")  # 1024 px originals staged at 512: real decode cost
    frame = frame.drop_duplicates("patient_id").head(n)
    keep = ["Effusion", "Infiltration", "Atelectasis", "Nodule"]
    return write_manifest(pd.concat([frame[["image", "patient_id", *keep]]]), out)


def _epoch_time(loader) -> float:
    t = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t


def bench_data(frame, spec, batch: int, workers: int, cache_dir: Path) -> None:
    from torch.utils.data import DataLoader

    from trainer.data.dataset import CXRDataset, ImageCache

    def loader(cache):
        return DataLoader(CXRDataset(frame, spec, [], cache=cache), batch_size=batch, num_workers=workers)

    base = _epoch_time(loader(None))
    mem = ImageCache(memory=True, disk_dir=cache_dir)
    cold = _epoch_time(loader(mem))
    warm = _epoch_time(loader(mem)) if workers == 0 else float("nan")
    disk = _epoch_time(loader(ImageCache(memory=False, disk_dir=cache_dir)))
    n = len(frame)
    print(f"\n== data loading, one epoch of {n} images at {spec.size[0]} px, workers={workers}")
    print(f"no cache (decode every epoch) : {base:7.3f} s  ({n / base:7.1f} img/s)  baseline")
    print(f"cache cold (fills it)         : {cold:7.3f} s  ({base / cold:5.2f}x)")
    if workers == 0:
        print(f"memory cache warm             : {warm:7.3f} s  ({base / warm:5.2f}x)")
    print(f"disk cache warm (.npy)        : {disk:7.3f} s  ({base / disk:5.2f}x)")


def bench_loops(frame, spec, labels, args) -> None:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from trainer.data.dataset import CXRDataset, ImageCache
    from trainer.run import build_trainer
    from trainer.tasks.base import warmup_cosine
    from trainer.tasks.classify import ClassifierTask
    from trainer.data.manifest import label_matrix

    cache = ImageCache(memory=True)
    ds = CXRDataset(frame, spec, labels, cache=cache)
    for i in range(len(ds)):  # fill the cache: the loops compare training, not decoding
        ds[i]
    import numpy as np

    y = label_matrix(frame, labels)
    counts = [np.nansum(y, axis=0).tolist(), (~np.isnan(y)).sum(axis=0).astype(float).tolist()]

    def make_module() -> ClassifierTask:
        torch.manual_seed(0)
        return ClassifierTask(labels=labels, task="multilabel", backbone=args.backbone, label_counts=counts,
                              lr=1e-3, warmup_epochs=1)  # fmt: skip

    def loader() -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True, generator=g, num_workers=0)

    n_img = (len(ds) // args.batch) * args.batch

    # --- bare PyTorch loop
    module = make_module()
    model, crit = module.model, module.criterion
    model.train()
    opt = torch.optim.AdamW(module.parameter_groups(), lr=1e-3)
    total = args.epochs * (len(ds) // args.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, total // args.epochs))
    times = []
    for epoch in range(args.epochs):
        t = time.perf_counter()
        for batch in loader():
            loss = crit(model(batch["image"]), batch["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        times.append(time.perf_counter() - t)
    bare = n_img / (sum(times[1:]) / len(times[1:]))

    # --- Lightning, with the Trainer `cxr-train finetune` builds
    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        ns = argparse.Namespace(
            accelerator="cpu", devices=1, num_nodes=1, strategy="auto", precision="32-true", max_epochs=args.epochs,
            grad_clip=1.0, accumulate=1, limit_train_batches=1.0, ckpt_every_n_steps=0, progress="none",
            deterministic=False, resume=False,
        )  # fmt: skip
        trainer = build_trainer(ns, Path(tmp), monitor="train_loss", mode="min", steps_per_epoch=len(ds) // args.batch)
        timer = EpochTimer()
        trainer.callbacks.append(timer)
        module = make_module()
        trainer.fit(module, loader())
    lit = n_img / (sum(timer.times[1:]) / len(timer.times[1:]))
    print(f"\n== training throughput, {args.backbone} at {spec.size[0]} px, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, epochs 2..{args.epochs}")  # fmt: skip
    print(f"bare PyTorch loop  : {bare:8.1f} img/s  baseline")
    print(f"Lightning finetune : {lit:8.1f} img/s  ({lit / bare:.2f}x; goal >= 0.90x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    from cxr_viewer.core.models.preprocess import Preprocessing
    from trainer.data.manifest import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        m = read_manifest(_manifest(args.images, Path(tmp) / "m.csv"))
        spec = Preprocessing(size=(args.size, args.size))
        bench_data(m.frame, spec, args.batch, args.workers, Path(tmp) / "cache")
        bench_loops(m.frame, spec, m.labels, args)


if __name__ == "__main__":
    main()
