"""Grouped options, YAML defaults that CLI flags override, the resolved config saved with a run.

Order of precedence (lowest first): built-in defaults < ``--config FILE.yaml`` < flags
on the command line. The YAML may be flat (``lr: 3e-4``) or grouped by section
(``optim: {lr: 3e-4}``); keys may use dashes or underscores. An unknown key is an
error that lists the valid ones, because a typo silently ignored trains the wrong model.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_viewer.core.errors import TrainingConfigError

# Section names accepted as YAML groups; options are flat inside argparse.
SECTIONS = ("data", "model", "optim", "loss", "finetune", "simclr", "recon", "scaling", "output", "eval", "experiment")


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def add_data_options(p: argparse.ArgumentParser, *, labels: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--manifest", help="manifest CSV (see `cxr-train data build`)")
    g.add_argument("--split-file", help="reuse a split file (patient -> split); default: make one, seeded")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, fractions, initialisation and sampling")
    g.add_argument("--val-frac", type=float, default=0.15, help="fraction of patients for validation")
    g.add_argument("--test-frac", type=float, default=0.15, help="fraction of patients held out for testing")
    if labels:
        g.add_argument("--labels", type=_csv_list, help="comma-separated label columns (default: all)")
        g.add_argument("--fraction", type=float, default=1.0, help="train on this fraction of labelled patients")
    g.add_argument("--image-size", type=int, default=224, help="square network input size in pixels")
    g.add_argument("--resize", default="letterbox", choices=["letterbox", "stretch", "center_crop"])
    g.add_argument("--mean", type=float, default=0.5, help="normalisation mean of [0, 1] pixels")
    g.add_argument("--std", type=float, default=0.25, help="normalisation std of [0, 1] pixels")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--num-workers", type=int, default=2, help="data loader processes (0 = main process)")
    g.add_argument("--cache", default="memory", choices=["memory", "disk", "both", "none"],
                   help="keep decoded, resized images in memory and/or as .npy files")  # fmt: skip
    g.add_argument("--cache-dir", default=None, help="disk cache folder (default: <runs-dir>/.cache)")
    g.add_argument("--augment", default="light", help="augmentation preset: none | light | ssl")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=False,
                   help="random horizontal flips (off: they move the heart to the right)")  # fmt: skip
    g.add_argument("--clahe-p", type=float, default=0.0, help="probability of a CLAHE augmentation")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="resnet18", help="any timm backbone name (pretrained weights are never downloaded)")
    g.add_argument("--drop-rate", type=float, default=0.0)


def add_optim_options(p: argparse.ArgumentParser, *, lr: float, epochs: int, wd: float) -> None:
    g = p.add_argument_group("optim")
    g.add_argument("--lr", type=float, default=lr, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=wd)
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up, then cosine decay")
    g.add_argument("--max-epochs", type=int, default=epochs)
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0 = off)")
    g.add_argument("--accumulate", type=int, default=1, help="accumulate gradients over N batches")


def add_scaling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scaling", "passed to Lightning; torchrun and SLURM are detected")
    g.add_argument("--accelerator", default="auto", help="auto | cpu | gpu | mps")
    g.add_argument("--devices", default="auto", help="auto, a count, or a list such as 0,1")
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--strategy", default="auto", help="auto | ddp | ddp_find_unused_parameters_true | fsdp ...")
    g.add_argument("--sync-batchnorm", action="store_true",
                   help="BatchNorm statistics over the global batch, not each process's share (GPUs only)")  # fmt: skip
    g.add_argument("--precision", default="auto",
                   help="auto (16-mixed/bf16-mixed on a GPU, 32 on CPU) | 32-true | 16-mixed | bf16-mixed")  # fmt: skip


def add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--runs-dir", default="runs", help="parent folder of every run")
    g.add_argument("--name", default=None, help="run name (folder runs/<name>); default: task + timestamp")
    g.add_argument("--resume", action="store_true", help="continue runs/<name> from its last checkpoint")
    g.add_argument("--ckpt-every-n-steps", type=int, default=0, help="also checkpoint every N steps (0 = per epoch only)")
    g.add_argument("--limit-train-batches", type=float, default=1.0, help="debug: use part of each epoch")
    g.add_argument("--max-time", default=None, help="stop training after this wall time, DD:HH:MM:SS (Lightning max_time)")
    g.add_argument("--progress", default="auto", choices=["auto", "rich", "tqdm", "none"])
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")


def dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest not in ("help", "config")}  # noqa: SLF001


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config and flatten section groups; keys normalised to argparse dests."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TrainingConfigError(f"Config file {path} not found.", path=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise TrainingConfigError(f"Config file {path.name} is not valid YAML: {exc}", path=path) from None
    if not isinstance(raw, Mapping):
        raise TrainingConfigError(f"Config file {path.name} must hold a mapping of option: value.", path=path)
    flat: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        k = str(key).replace("-", "_")
        if k in flat:
            raise TrainingConfigError(f"Option '{k}' is set twice in {path.name}.", path=path)
        flat[k] = value

    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for k, v in value.items():
                put(k, v)
        else:
            put(key, value)
    return flat


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` with ``--config`` YAML values as defaults (CLI flags still win)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(list(argv))
    if known.config:
        values = load_yaml(known.config)
        valid = dests(parser)
        unknown = sorted(set(values) - valid)
        if unknown:
            raise TrainingConfigError(
                f"Unknown option(s) {unknown} in {Path(known.config).name}. Valid options: {', '.join(sorted(valid))}."
            )
        # Run YAML values through the same type conversion as the command line.
        for action in parser._actions:  # noqa: SLF001
            if action.dest in values and action.type is not None and isinstance(values[action.dest], str):
                values[action.dest] = action.type(values[action.dest])
            if action.dest in values and action.choices and values[action.dest] not in action.choices:
                raise TrainingConfigError(
                    f"'{action.dest}: {values[action.dest]}' in {Path(known.config).name} is not one of "
                    f"{', '.join(map(str, action.choices))}."
                )
        parser.set_defaults(**values)
    args = parser.parse_args(list(argv))
    args.config = known.config
    return args


def resolved(args: argparse.Namespace) -> dict[str, Any]:
    """JSON/YAML-safe dict of every option (the run's full recipe)."""
    out: dict[str, Any] = {}
    for k, v in sorted(vars(args).items()):
        if k.startswith("_") or callable(v):
            continue
        out[k] = str(v) if isinstance(v, Path) else v
    return json.loads(json.dumps(out, default=str))


def save_config(cfg: Mapping[str, Any], run_dir: Path, *, command: str) -> Path:
    """Write ``run_dir/config.yaml``: every resolved option, the sub-command and the date.

    In a multi-process run only global rank 0 writes it (every rank resolved the same options).
    """
    import yaml

    from trainer.distributed import is_global_zero_env

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    if not is_global_zero_env():
        return path
    doc = {"command": command, "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **cfg}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path
