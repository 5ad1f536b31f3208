"""Turning resolved options into a Lightning run: data, splits, Trainer, checkpoints, draft bundle.

Every run lives in ``<runs-dir>/<name>/``: ``config.yaml`` (resolved options),
``splits.csv`` (+ its sha256 in the bundle), ``checkpoints/last.ckpt`` (Lightning
training state after every epoch, whatever the monitored metric did; trainer-internal),
``logs/metrics.csv``, ``bundle/`` (the safetensors bundle the viewer loads) and, once the
run has ended and its bundle is written, ``finished.json`` (so ``--resume`` leaves it alone).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import TrainingConfigError, TrainingDataError

if TYPE_CHECKING:
    import lightning as L
    import pandas as pd

    from cxr_viewer.core.models.preprocess import Preprocessing

log = logging.getLogger(__name__)

STANDARD_FRACTIONS = (0.01, 0.1, 1.0)


@dataclass
class RunResult:
    run_dir: Path
    bundle_dir: Path | None
    best_score: float | None = None
    best_checkpoint: str | None = None
    global_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


FINISHED_FILE = "finished.json"


class RunFinished(Exception):
    """``--resume`` of a run that already ended and wrote its bundle: nothing to do (not an error)."""

    def __init__(self, run_dir: Path, info: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.info = info
        epochs = info.get("epochs")
        done = f" after {epochs} epoch(s)" if epochs is not None else ""
        self.message = (
            f"Run {run_dir} already finished{done}; nothing was trained and its bundle "
            f"({info.get('bundle') or run_dir / 'bundle'}) was left as it is. To train further, resume it with a "
            f"larger --max-epochs (it ran to {info.get('max_epochs', '?')})."
        )
        super().__init__(self.message)


# ------------------------------------------------------------------ run folder
def run_dir_for(args: argparse.Namespace, task: str) -> Path:
    if not args.name:
        if args.resume:
            raise TrainingConfigError("--resume needs --name: the run folder to continue.")
        from trainer.distributed import default_run_name

        args.name = default_run_name(task)  # the same folder on every rank
    run_dir = Path(args.runs_dir) / args.name
    if args.resume and not run_dir.is_dir():
        raise TrainingConfigError(f"Cannot resume: run folder {run_dir} does not exist.")
    marker = run_dir / FINISHED_FILE
    if args.resume and marker.is_file():
        import json

        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        info = info if isinstance(info, dict) else {}
        wanted, ran_to = getattr(args, "max_epochs", None), info.get("max_epochs")
        if wanted is None or ran_to is None or int(wanted) <= int(ran_to):
            raise RunFinished(run_dir, info)
        log.info("extending finished run %s from %s to %s epochs", run_dir.name, ran_to, wanted)
    marker.unlink(missing_ok=True)  # a fresh (or extended) run is not finished until it says so
    return run_dir


def mark_finished(run_dir: Path, trainer: "L.Trainer", bundle_dir: Path | None) -> None:
    """Record that the run ended (epochs done, bundle written), unless it stopped at ``--max-time``."""
    from lightning.pytorch.callbacks import Timer

    from cxr_viewer.core.jsonio import dumps

    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is not None and timer.time_remaining() is not None and timer.time_remaining() <= 0:
        return  # stopped by the wall-time budget: --resume continues it
    info = {
        "epochs": int(trainer.current_epoch),
        "max_epochs": int(trainer.max_epochs) if trainer.max_epochs is not None else None,
        "global_step": int(trainer.global_step),
        "bundle": str(bundle_dir) if bundle_dir else None,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = run_dir / (FINISHED_FILE + ".tmp")
    tmp.write_text(dumps(info, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / FINISHED_FILE)


def resume_checkpoint(run_dir: Path) -> str:
    """The newest of ``last.ckpt`` (per epoch) and ``last-step.ckpt`` (per N steps)."""
    cands = [p for p in (run_dir / "checkpoints").glob("last*.ckpt") if p.is_file()]
    if not cands:
        raise TrainingConfigError(f"Cannot resume: no last.ckpt in {run_dir / 'checkpoints'}.")
    return str(max(cands, key=lambda p: p.stat().st_mtime_ns))


# ------------------------------------------------------------------ data
def preprocessing_from(args: argparse.Namespace) -> "Preprocessing":
    from cxr_viewer.core.models.preprocess import Preprocessing

    try:
        return Preprocessing(
            size=(args.image_size, args.image_size), resize=args.resize, mean=(args.mean,), std=(args.std,)
        )
    except ValueError as exc:
        raise TrainingConfigError(str(exc)) from None


def prepare_frame(args: argparse.Namespace, run_dir: Path, labels: list[str] | None) -> tuple["pd.DataFrame", dict[str, str]]:
    """Read the manifest, assign (or reuse) patient-level splits and label fractions, write splits.csv."""
    from trainer.data.manifest import read_manifest
    from trainer.data.splits import apply_split_file, check_patient_level, label_fractions, make_splits, write_split_file

    if not args.manifest:
        raise TrainingConfigError("No --manifest given (on the command line or in the --config YAML).")
    manifest = read_manifest(args.manifest)
    frame = manifest.frame
    split_path = run_dir / "splits.csv"
    source = args.split_file or (str(split_path) if args.resume and split_path.is_file() else None)
    if source:
        frame = apply_split_file(frame, source)
    else:
        frame = make_splits(frame, seed=args.seed, val=args.val_frac, test=args.test_frac, labels=labels)
    check_patient_level(frame)
    from trainer.data.splits import fraction_column

    wanted = float(getattr(args, "fraction", 1.0))
    if labels and fraction_column(wanted) not in frame.columns:
        fractions = tuple(sorted(set(STANDARD_FRACTIONS) | {wanted}))
        frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("frac_")])
        frame = label_fractions(frame, fractions, seed=args.seed, labels=labels)
    from trainer.distributed import is_global_zero_env

    sha = write_split_file(frame, split_path, write=is_global_zero_env())  # one writer; every rank knows the hash
    info = {"split_file": str(split_path.resolve()), "split_sha256": sha, "datasets": ",".join(manifest.datasets)}
    return frame, info


def make_cache(args: argparse.Namespace) -> Any:
    from trainer.data.dataset import ImageCache

    if args.cache == "none":
        return None
    disk = None
    if args.cache in ("disk", "both"):
        disk = Path(args.cache_dir) if args.cache_dir else Path(args.runs_dir) / ".cache"
    return ImageCache(memory=args.cache in ("memory", "both"), disk_dir=disk)


def make_loader(
    frame: "pd.DataFrame",
    spec: "Preprocessing",
    labels: list[str],
    args: argparse.Namespace,
    *,
    train: bool,
    views: int = 1,
    augment: str | None = None,
    cache: Any = None,
    shuffle: bool | None = None,
    weights: Any = None,
) -> Any:
    import torch
    from torch.utils.data import DataLoader

    from trainer.data.augment import RadiographAugment, augment_config
    from trainer.data.dataset import CXRDataset

    transform = None
    if train and augment and augment != "none":
        cfg = augment_config(augment)
        overrides = {"hflip": bool(args.hflip)}
        if args.clahe_p:
            overrides["clahe_p"] = float(args.clahe_p)
        from dataclasses import replace

        transform = RadiographAugment(replace(cfg, **overrides), spec)
    from trainer.distributed import SeededOrderSampler

    ds = CXRDataset(frame, spec, labels, transform=transform, cache=cache, views=views, weights=weights)
    batch = min(int(args.batch_size), len(ds))
    order = train if shuffle is None else shuffle
    return DataLoader(
        ds,
        batch_size=batch,
        sampler=SeededOrderSampler(ds, args.seed) if order else None,  # same global batches on 1 or N processes
        drop_last=train and views == 2 and len(ds) > batch,  # BatchNorm in the projector needs >1 sample
        num_workers=int(args.num_workers),
        persistent_workers=int(args.num_workers) > 0,
        pin_memory=torch.cuda.is_available(),
    )


# ------------------------------------------------------------------ Lightning
def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: mixed precision on a CUDA GPU (bf16 where supported), full precision elsewhere."""
    import torch

    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _devices(value: Any) -> Any:
    if isinstance(value, int) or value in ("auto", None):
        return value or "auto"
    s = str(value)
    if s.isdigit():
        return int(s)
    if "," in s:
        return [int(v) for v in s.split(",") if v.strip()]
    return s


def build_trainer(
    args: argparse.Namespace, run_dir: Path, *, monitor: str, mode: str, early_stop: int = 0, steps_per_epoch: int = 1
) -> "L.Trainer":
    import lightning as L
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        RichProgressBar,
        TQDMProgressBar,
    )
    from lightning.pytorch.loggers import CSVLogger

    ckpt_dir = run_dir / "checkpoints"
    logs = run_dir / "logs"
    from trainer.distributed import check_sync_batchnorm, is_global_zero_env

    if args.resume and logs.is_dir() and is_global_zero_env():
        # CSVLogger empties its folder: keep the interrupted run's logs as logs.partN/
        n = len(list(run_dir.glob("logs.part*")))
        logs.rename(run_dir / f"logs.part{n}")
    callbacks: list[Any] = [
        ModelCheckpoint(  # first: trainer.checkpoint_callback, whose best checkpoint becomes the bundle
            dirpath=ckpt_dir,
            filename="best-epoch{epoch:03d}",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            every_n_epochs=1,
            auto_insert_metric_name=False,
        ),
        # last.ckpt after every epoch, whatever the monitor did: save_last on a monitored top-k refreshes only
        # when the metric improves, so a killed run would resume epochs behind and train them again
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                        enable_version_counter=False),  # fmt: skip
        LearningRateMonitor(logging_interval="step"),
    ]
    if args.ckpt_every_n_steps:
        callbacks.append(
            ModelCheckpoint(dirpath=ckpt_dir, filename="last-step", every_n_train_steps=int(args.ckpt_every_n_steps),
                            save_top_k=1, enable_version_counter=False)  # fmt: skip
        )
    if early_stop:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=int(early_stop)))
    progress = args.progress
    if progress == "auto":
        progress = "rich" if sys.stdout.isatty() else "tqdm"
    if progress == "rich":
        callbacks.append(RichProgressBar())
    elif progress == "tqdm":
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, steps_per_epoch // 20)))
    precision = resolve_precision(args.precision, args.accelerator)
    sync_bn = bool(getattr(args, "sync_batchnorm", False))
    check_sync_batchnorm(sync_bn, args.accelerator)
    return L.Trainer(
        default_root_dir=str(run_dir),
        accelerator=args.accelerator,
        devices=_devices(args.devices),
        num_nodes=int(args.num_nodes),
        strategy=args.strategy,
        sync_batchnorm=sync_bn,
        precision=precision,
        max_epochs=int(args.max_epochs),
        max_time=getattr(args, "max_time", None) or None,
        gradient_clip_val=float(args.grad_clip) or None,
        accumulate_grad_batches=int(args.accumulate),
        limit_train_batches=args.limit_train_batches,
        callbacks=callbacks,
        logger=CSVLogger(save_dir=str(run_dir), name="", version="logs"),
        log_every_n_steps=max(1, min(20, steps_per_epoch)),
        enable_progress_bar=progress != "none",
        enable_model_summary=False,
        deterministic=bool(args.deterministic),
        num_sanity_val_steps=0,
    )


def checkpoint_state(path: str) -> dict[str, Any]:
    """Model weights of a Lightning checkpoint, read without unpickling arbitrary objects."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ------------------------------------------------------------------ tasks
def _fit(trainer: "L.Trainer", module: Any, train_loader: Any, val_loader: Any, args: argparse.Namespace, run_dir: Path) -> None:
    ckpt = resume_checkpoint(run_dir) if args.resume else None
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt)


def run_pretrain(args: argparse.Namespace, method: str) -> RunResult:
    """SimCLR or reconstruction pre-training on a manifest; writes an ``ssl_encoder`` bundle."""
    import lightning as L

    from trainer.config import resolved, save_config
    from trainer.export import base_provenance, write_bundle

    run_dir = run_dir_for(args, f"pretrain-{method}")
    cfg = resolved(args)
    save_config(cfg, run_dir, command=f"pretrain {method}")
    L.seed_everything(args.seed, workers=True)
    frame, split_info = prepare_frame(args, run_dir, labels=[])
    spec = preprocessing_from(args)
    cache = make_cache(args)
    train = frame[frame["split"] == "train"]
    val = frame[frame["split"] == "val"]
    if len(val) == 0:
        raise TrainingDataError("The validation split is empty; raise --val-frac or add images.")
    if method == "simclr":
        from trainer.tasks.simclr import SimCLRTask

        module = SimCLRTask(
            backbone=args.backbone, proj_hidden=args.proj_hidden, proj_dim=args.proj_dim,
            temperature=args.temperature, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        )  # fmt: skip
        aug = "ssl" if args.augment == "light" else args.augment
        tl = make_loader(train, spec, [], args, train=True, views=2, augment=aug, cache=cache)
        vl = make_loader(val, spec, [], args, train=True, views=2, augment=aug, cache=cache, shuffle=False)
    elif method == "recon":
        from trainer.tasks.recon import ReconTask

        module = ReconTask(
            backbone=args.backbone, decoder_width=args.decoder_width, ssim_weight=args.ssim_weight,
            mean=spec.mean, std=spec.std, lr=args.lr, weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs, grid_dir=str(run_dir / "recon"),
        )  # fmt: skip
        tl = make_loader(train, spec, [], args, train=True, augment=args.augment, cache=cache)
        vl = make_loader(val, spec, [], args, train=False, cache=cache)
    else:
        raise TrainingConfigError(f"Unknown pre-training method {method!r}; use simclr or recon.")
    trainer = build_trainer(args, run_dir, monitor="val_loss", mode="min", steps_per_epoch=len(tl))
    _fit(trainer, module, tl, vl, args, run_dir)
    result = RunResult(run_dir=run_dir, bundle_dir=None, global_step=int(trainer.global_step))
    if trainer.is_global_zero:
        encoder = module.encoder_module().cpu().eval()
        manifest = {
            "name": args.name,
            "version": "0.1.0",
            "task": "ssl_encoder",
            "trained": True,
            "description": f"{method} pre-trained {args.backbone} encoder",
            "architecture": {"name": "encoder", "kwargs": {"backbone": args.backbone, "in_chans": 1}},
            "labels": [],
            "preprocessing": spec.to_dict(),
            "provenance": base_provenance(cfg, split_info, extra={"method": method, "train_images": int(len(train))}),
            "metrics": {"validation": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}},
            "limitations": [
                "Self-supervised encoder only: it produces no findings. Fine-tune it with `cxr-train finetune --init`."
            ],
        }
        result.bundle_dir = write_bundle(encoder, manifest, run_dir / "bundle", dtype="float32")
        mark_finished(run_dir, trainer, result.bundle_dir)
    return result


def infer_task(frame: "pd.DataFrame", labels: list[str], requested: str) -> str:
    """``auto``: one label -> binary; complete one-hot rows -> multiclass; else multilabel."""
    import numpy as np

    from trainer.data.manifest import label_matrix

    if requested != "auto":
        return requested
    if len(labels) == 1:
        return "binary"
    y = label_matrix(frame, labels)
    if not np.isnan(y).any() and np.all(y.sum(1) == 1):
        return "multiclass"
    return "multilabel"


def run_finetune(args: argparse.Namespace) -> RunResult:
    """Fine-tune a classifier; the best checkpoint (validation macro AUROC) becomes ``bundle/``."""
    import lightning as L
    import numpy as np

    from trainer.config import resolved, save_config
    from trainer.data.manifest import label_columns, read_manifest
    from trainer.data.splits import fraction_column
    from trainer.export import base_provenance, write_bundle
    from trainer.tasks.classify import ClassifierTask, init_classifier_from_bundle

    run_dir = run_dir_for(args, "finetune")
    L.seed_everything(args.seed, workers=True)
    all_labels = label_columns(read_manifest(args.manifest, check_files=False).frame) if args.manifest else []
    labels = list(args.labels or all_labels)
    if not labels:
        raise TrainingDataError("The manifest has no label columns to fine-tune on.")
    args.labels = labels
    cfg = resolved(args)
    save_config(cfg, run_dir, command="finetune")
    frame, split_info = prepare_frame(args, run_dir, labels=labels)
    from trainer.data.manifest import label_matrix

    known = ~np.isnan(label_matrix(frame, labels)).all(axis=1)
    frame = frame[known]
    task = infer_task(frame, labels, args.task)
    spec = preprocessing_from(args)
    frac_col = fraction_column(float(args.fraction))
    train = frame[(frame["split"] == "train") & (frame[frac_col] if frac_col in frame else True)]
    val = frame[frame["split"] == "val"]
    if len(val) == 0 or len(train) == 0:
        raise TrainingDataError("The train or validation split is empty; check --val-frac and the manifest.")
    y_train = label_matrix(train, labels)
    counts = [np.nansum(y_train, axis=0).tolist(), (~np.isnan(y_train)).sum(axis=0).astype(float).tolist()]
    module = ClassifierTask(
        labels=labels, task=task, backbone=args.backbone, drop_rate=args.drop_rate, mode=args.mode,
        unfreeze_every=args.unfreeze_every, loss=args.loss, label_counts=counts,
        label_smoothing=args.label_smoothing, focal_gamma=args.focal_gamma, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
    )  # fmt: skip
    init = "random"
    if args.init and args.init != "random":
        init = init_classifier_from_bundle(module.model, args.init, labels)
    cache = make_cache(args)
    weights, weight_table = None, None
    scheme = str(getattr(args, "source_weighting", "none") or "none")
    if scheme != "none":
        from trainer.losses import source_weights

        weights, table = source_weights(train["dataset"].astype(str).to_numpy(), y_train, scheme)
        weight_table = {labels[int(j)]: v for j, v in table.items()}
        log.info("per-source loss weights (%s): %s", scheme, weight_table)
    tl = make_loader(train, spec, labels, args, train=True, augment=args.augment, cache=cache, weights=weights)
    vl = make_loader(val, spec, labels, args, train=False, cache=cache)
    trainer = build_trainer(
        args, run_dir, monitor="val_auroc", mode="max", early_stop=args.early_stop, steps_per_epoch=len(tl)
    )
    _fit(trainer, module, tl, vl, args, run_dir)
    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") or ""
    best = getattr(ckpt_cb, "best_model_score", None)
    result = RunResult(
        run_dir=run_dir, bundle_dir=None, best_score=None if best is None else float(best),
        best_checkpoint=best_path or None, global_step=int(trainer.global_step),
    )  # fmt: skip
    if trainer.is_global_zero:
        if best_path:
            state = checkpoint_state(best_path)
            module.load_state_dict(state)
        model = module.model.cpu().eval()
        provenance = base_provenance(
            cfg,
            split_info,
            extra={
                "init": init,
                "init_bundle": args.init if init != "random" else None,
                "label_fraction": float(args.fraction),
                "train_images": int(len(train)),
                "train_patients": int(train["patient_id"].nunique()),
                "best_checkpoint_epoch_metric": result.best_score,
                "source_weighting": scheme,
                "source_weights": weight_table,
            },
        )
        manifest = {
            "name": args.name,
            "version": "0.1.0",
            "task": task,
            "trained": True,
            "architecture": module.bundle_architecture(),
            "labels": labels,
            "thresholds": {lab: {"value": 0.5, "method": "default", "source": "not calibrated"} for lab in labels},
            "preprocessing": spec.to_dict(),
            "provenance": provenance,
            "metrics": {"validation": {"auroc_macro": result.best_score}},
        }
        result.bundle_dir = write_bundle(model, manifest, run_dir / "bundle", dtype="float32")
        mark_finished(run_dir, trainer, result.bundle_dir)
    return result
