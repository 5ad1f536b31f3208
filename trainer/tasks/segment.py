"""``cxr-train segment``: train the report-conditioned U-Net and export a ``text_segmentation`` bundle.

Recipe: targets and phrasings from :mod:`trainer.data.segmentation`; the frozen text
encoder embeds every phrase (and its left/right swap) ONCE before training; the
network is ``create_model("text_unet", ...)`` (optionally with its encoder started
from a reconstruction / SimCLR encoder bundle, ``--encoder BUNDLE``); loss = Dice +
BCE with a positive-class weight (lungs fill ~25 % of a film, lesions a few %).

Evaluation on the held-out split, on the network grid: Dice, IoU and pixel accuracy
per target type (left lung, right lung, both lungs, zones, TB lesions), with
patient-bootstrap 95 % CIs; for negative sentences, how often the mask is empty;
and the text-sensitivity test: the same image prompted with "left lung" and
"right lung", each mask scored against both true lungs (a 2x2 table - a model that
ignores the text has equal rows).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from cxr_viewer.core.errors import TrainingConfigError, TrainingDataError
from trainer.data.segmentation import KINDS, swap_sides
from trainer.tasks.base import BaseTask

if TYPE_CHECKING:
    from trainer.run import RunResult

log = logging.getLogger(__name__)

__all__ = [
    "SegmentTask",
    "add_segment_parser",
    "dice_bce_loss",
    "evaluate_segmentation",
    "main",
    "run_segment",
    "segment_parser",
    "swap_sides",
    "swap_test",
]

SWAP_PROMPTS = ("left lung", "right lung")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EMPTY_AREA = 0.005  # a predicted mask under 0.5 % of the grid counts as "nothing drawn"


# ------------------------------------------------------------------ loss and metrics
def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged; an empty target is satisfied by an empty prediction."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    dice = (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - dice).mean()


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, *, pos_weight: float = 1.0, dice_weight: float = 1.0, bce_weight: float = 1.0
) -> torch.Tensor:
    """``dice_weight * (1 - soft Dice) + bce_weight * BCE(pos_weight)``."""
    pw = torch.tensor(float(pos_weight), device=logits.device, dtype=torch.float32)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pw)
    return dice_weight * soft_dice_loss(logits, target) + bce_weight * bce


def mask_scores(pred: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """(Dice, IoU, pixel accuracy) of boolean masks; Dice/IoU are NaN when both are empty."""
    p, t = pred.astype(bool), target.astype(bool)
    inter = float(np.logical_and(p, t).sum())
    ps, ts = float(p.sum()), float(t.sum())
    union = ps + ts - inter
    dice = 2 * inter / (ps + ts) if ps + ts > 0 else math.nan
    iou = inter / union if union > 0 else math.nan
    acc = float((p == t).mean())
    return dice, iou, acc


def bootstrap_mean_ci(
    values: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` (NaN ignored) with a percentile 95 % CI resampling ``groups`` (patients)."""
    ok = ~np.isnan(values)
    values, groups = values[ok], groups[ok]
    if values.size == 0:
        return math.nan, math.nan, math.nan
    point = float(values.mean())
    uniq, inverse = np.unique(groups, return_inverse=True)
    if len(uniq) < 2 or n_boot <= 0:
        return point, math.nan, math.nan
    sums = np.bincount(inverse, weights=values, minlength=len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq)).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(uniq), size=(int(n_boot), len(uniq)))
    stats = sums[picks].sum(1) / counts[picks].sum(1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


# ------------------------------------------------------------------ Lightning module
class SegmentTask(BaseTask):
    """TextUNet + a frozen table of phrase embeddings (a non-persistent buffer, never in the bundle)."""

    def __init__(
        self,
        architecture: str = "text_unet",
        arch_kwargs: Mapping[str, Any] | None = None,
        embeddings: np.ndarray | torch.Tensor | None = None,
        pos_weight: float = 1.0,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
    ) -> None:
        super().__init__()
        import cxr_viewer.core.models.segmenter  # noqa: F401  (registers text_unet)
        from cxr_viewer.core.models import create_model

        self.save_hyperparameters(ignore=["embeddings"])
        self.model = create_model(architecture, **dict(arch_kwargs or {}))
        emb = torch.zeros(1, 1) if embeddings is None else torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        self.register_buffer("embeddings", emb, persistent=False)
        self._val: list[tuple[np.ndarray, np.ndarray]] = []

    def text(self, phrase_idx: torch.Tensor) -> torch.Tensor | None:
        return self.embeddings[phrase_idx] if self.model.conditioned else None

    def forward(self, x: torch.Tensor, phrase_idx: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.text(phrase_idx))

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.hparams
        return dice_bce_loss(logits, y, pos_weight=h.pos_weight, dice_weight=h.dice_weight, bce_weight=h.bce_weight)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"], batch["phrase"])
        loss = self._loss(logits, batch["mask"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits), sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"], batch["phrase"])
        loss = self._loss(logits, batch["mask"])
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=len(logits), sync_dist=True)
        pred = (torch.sigmoid(logits.float()) >= 0.5).flatten(1)
        t = batch["mask"].bool().flatten(1)
        inter = (pred & t).sum(1).float()
        denom = (pred.sum(1) + t.sum(1)).float()
        dice = torch.where(t.sum(1) > 0, 2 * inter / denom.clamp_min(1), torch.full_like(inter, float("nan")))
        self._val.append((dice.cpu().numpy(), batch["kind"].cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        dice = np.concatenate([d for d, _ in self._val])
        self._val.clear()
        ok = ~np.isnan(dice)
        value = float(dice[ok].mean()) if ok.any() else 0.0
        self.log("val_dice", value, prog_bar=True, sync_dist=True)


# ------------------------------------------------------------------ evaluation
@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module, dataset: Any, embeddings: torch.Tensor, *, device: str = "cpu", batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, targets and kinds for every sample of ``dataset`` (no augmentation), on the network grid."""
    from torch.utils.data import DataLoader

    model = model.to(device).eval()
    emb = embeddings.to(device)
    probs, targets, kinds = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        x = batch["image"].to(device)
        t = emb[batch["phrase"].to(device)] if model.conditioned else None
        probs.append(torch.sigmoid(model(x, t).float())[:, 0].cpu().numpy().astype(np.float16))
        targets.append(batch["mask"][:, 0].numpy().astype(bool))
        kinds.append(batch["kind"].numpy())
    return np.concatenate(probs), np.concatenate(targets), np.concatenate(kinds)


def choose_threshold(probs: np.ndarray, targets: np.ndarray, kinds: np.ndarray) -> tuple[float, dict[str, float]]:
    """Threshold from :data:`THRESHOLDS` with the best mean Dice on positive targets (validation)."""
    pos = kinds != KINDS.index("negative")
    table: dict[str, float] = {}
    for t in THRESHOLDS:
        d = [mask_scores(p >= t, y)[0] for p, y in zip(probs[pos], targets[pos])]
        d = [v for v in d if not math.isnan(v)]
        table[f"{t:.1f}"] = float(np.mean(d)) if d else math.nan
    valid = {k: v for k, v in table.items() if not math.isnan(v)}
    best = max(valid, key=valid.get) if valid else "0.5"  # type: ignore[arg-type]
    return float(best), table


def evaluate_segmentation(
    probs: np.ndarray,
    targets: np.ndarray,
    kinds: np.ndarray,
    patients: Sequence[str],
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per target type: Dice, IoU, pixel accuracy (mean with patient-bootstrap 95 % CI) and counts."""
    patients = np.asarray([str(p) for p in patients])
    scores = np.array([mask_scores(p >= threshold, y) for p, y in zip(probs, targets)], dtype=float).reshape(-1, 3)
    areas = np.array([(p >= threshold).mean() for p in probs], dtype=float)
    out: dict[str, Any] = {}
    for k, kind in enumerate(KINDS):
        sel = kinds == k
        if not sel.any():
            continue
        entry: dict[str, Any] = {"n": int(sel.sum()), "patients": int(len(set(patients[sel])))}
        for j, name in enumerate(("dice", "iou", "pixel_accuracy")):
            if kind == "negative" and name != "pixel_accuracy":
                continue
            v, lo, hi = bootstrap_mean_ci(scores[sel, j], patients[sel], n_boot=n_boot, seed=seed + 7 * k + j)
            entry[name] = {"value": v, "ci95": [lo, hi]}
        if kind == "negative":
            empty = (areas[sel] < EMPTY_AREA).astype(float)
            v, lo, hi = bootstrap_mean_ci(empty, patients[sel], n_boot=n_boot, seed=seed + 7 * k + 5)
            entry["empty_rate"] = {"value": v, "ci95": [lo, hi], "definition": f"mask area < {EMPTY_AREA:.1%} of the image"}
        out[kind] = entry
    pos = kinds != KINDS.index("negative")
    if pos.any():
        for j, name in enumerate(("dice", "iou")):
            v, lo, hi = bootstrap_mean_ci(scores[pos, j], patients[pos], n_boot=n_boot, seed=seed + 100 + j)
            out.setdefault("all_regions", {"n": int(pos.sum())})[name] = {"value": v, "ci95": [lo, hi]}
    return out


@torch.inference_mode()
def swap_test(
    model: torch.nn.Module,
    dataset: Any,
    prompt_embeddings: Mapping[str, torch.Tensor],
    threshold: float,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """Text-sensitivity: prompts "left lung" and "right lung" on the same images, Dice against both true lungs.

    Uses the images of ``dataset`` that carry both ``lung:left`` and ``lung:right``
    targets. Returns ``{"table": {prompt: {"left lung": dice, "right lung": dice}}, "n_images": n,
    "side_accuracy": fraction of (image, prompt) pairs whose mask overlaps the named lung more}``.
    """
    if not model.conditioned:
        return {"table": {}, "n_images": 0, "note": "image-only model: no text to swap"}
    model = model.to(device).eval()
    by_image: dict[str, dict[str, int]] = {}
    for i, r in enumerate(dataset.rows):
        if r["target"] in ("lung:left", "lung:right"):
            by_image.setdefault(r["image"], {})[r["target"].split(":")[1]] = i
    pairs = [(v["left"], v["right"]) for v in by_image.values() if "left" in v and "right" in v]
    table = {p: {"left lung": [], "right lung": []} for p in SWAP_PROMPTS}
    correct = []
    emb = torch.stack([prompt_embeddings[p] for p in SWAP_PROMPTS]).to(device)
    for li, ri in pairs:
        x = dataset.image(li)[None].to(device)
        truth = {"left lung": dataset.mask(li)[0].numpy() > 0.5, "right lung": dataset.mask(ri)[0].numpy() > 0.5}
        probs = torch.sigmoid(model(x, emb).float())[:, 0].cpu().numpy()
        for prompt, p in zip(SWAP_PROMPTS, probs):
            pred = p >= threshold
            d = {name: mask_scores(pred, t)[0] for name, t in truth.items()}
            for name, v in d.items():
                table[prompt][name].append(0.0 if math.isnan(v) else v)
            other = "right lung" if prompt == "left lung" else "left lung"
            correct.append(float(d[prompt] > d[other]) if not math.isnan(d[prompt]) else 0.0)
    summary = {p: {k: (float(np.mean(v)) if v else math.nan) for k, v in row.items()} for p, row in table.items()}
    return {
        "table": summary,
        "n_images": len(pairs),
        "side_accuracy": float(np.mean(correct)) if correct else math.nan,
        "rows": "prompt",
        "columns": "true lung the mask is scored against (Dice)",
    }


# ------------------------------------------------------------------ CLI
def _csv(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _add_options(p: argparse.ArgumentParser) -> None:
    from cxr_viewer.core.paths import data_dir
    from trainer import config as c

    c.add_data_options(p, labels=False)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=str(data_dir()), help="shared data folder holding covid_ieee8023, shenzhen_sample, tbx11k, reports_iu")
    g.add_argument("--sources", type=_csv, default=["covid", "shenzhen", "tbx11k"], help="image sources to build targets from")
    g.add_argument("--reports", default=None, help="IU reports CSV for negative sentences (default: <data-root>/reports_iu/indiana_reports.csv; 'none' = off)")
    g.add_argument("--max-images-per-source", type=int, default=0, help="keep the first N images of each source (0 = all)")
    g.add_argument("--samples", default=None, help="reuse a segmentation_samples.csv instead of building one")
    g.add_argument("--negatives-per-image", type=int, default=1)
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="text_unet", choices=["text_unet", "text_unet_tiny"])
    g.add_argument("--backbone", default="resnet34", help="smp encoder name (resnet18/34/50 ...); never downloaded")
    g.add_argument("--fusion", default="concat", choices=["concat", "film"])
    g.add_argument("--no-text", action="store_true", help="image-only U-Net (ablation: the text is ignored)")
    g.add_argument("--text-encoder", default="all-MiniLM-L6-v2", help="all-MiniLM-L6-v2, or a name for --clip-path")
    g.add_argument("--clip-path", default=None, help="local CLIP model folder whose text tower embeds the phrases")
    g.add_argument("--encoder", default=None, help="start the U-Net encoder from this encoder bundle (recon / SimCLR pre-training)")
    g.add_argument("--init", default=None,
                   help="start the whole network from this text_segmentation bundle (same architecture and text encoder), "
                        "e.g. to finish at a larger --image-size")  # fmt: skip
    c.add_optim_options(p, lr=3e-4, epochs=40, wd=1e-4)
    g = p.add_argument_group("loss")
    g.add_argument("--dice-weight", type=float, default=1.0)
    g.add_argument("--bce-weight", type=float, default=1.0)
    g.add_argument("--pos-weight", default="auto", help="BCE positive-class weight, or auto (background/foreground ratio, capped at 10)")
    g = p.add_argument_group("eval")
    g.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples for 95%% CIs")
    g.add_argument("--early-stop", type=int, default=8, help="patience in epochs on validation Dice (0 = off)")
    c.add_scaling_options(p)
    c.add_output_options(p)
    # Flips are on here: the phrase's left/right is swapped with the image (see swap_sides).
    p.set_defaults(image_size=256, batch_size=16, hflip=True)


def segment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxr-train segment",
        description="Train the report-conditioned segmentation U-Net and export a text_segmentation bundle.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="YAML file whose values become defaults; flags override them")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_options(p)
    return p


def add_segment_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``segment`` on an ``argparse`` sub-parser action; ``func`` is :func:`run_segment`."""
    p = subparsers.add_parser(
        "segment", help="report-conditioned segmentation", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--config", help="YAML file whose values become defaults; flags override them")
    _add_options(p)
    p.set_defaults(func=run_segment)
    return p


def main(argv: Sequence[str]) -> int:
    """``cxr-train segment ARGS`` (dispatched by ``trainer.cli``)."""
    import json

    from trainer.config import parse_with_config

    args = parse_with_config(segment_parser(), list(argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run_segment(args)
    print(json.dumps({"run_dir": str(result.run_dir), "bundle": str(result.bundle_dir), "val_dice": result.best_score}))
    return 0


# ------------------------------------------------------------------ the run
def _text_spec(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.no_text:
        return None
    if args.clip_path:
        name = args.text_encoder if args.text_encoder.startswith("clip") else f"clip:{Path(args.clip_path).name}"
        return {"name": name, "path": str(args.clip_path)}
    return {"name": args.text_encoder}


def _pos_weight(value: str, dataset: Any, n: int = 200) -> float:
    if str(value) != "auto":
        try:
            return float(value)
        except ValueError:
            raise TrainingConfigError(f"--pos-weight must be a number or 'auto', got {value!r}.") from None
    idx = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).astype(int)
    fg = float(np.mean([dataset.mask(int(i)).mean().item() for i in idx]))
    return float(min(10.0, max(1.0, (1.0 - fg) / max(fg, 1e-6))))


def _json_safe(value: Any) -> Any:
    """NaN (an undefined metric, e.g. a CI from one patient) becomes null: manifests are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _init_encoder(model: Any, bundle: str) -> str:
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.tasks.recon import timm_resnet_to_smp

    loaded = load_bundle(bundle)
    src = loaded.manifest.architecture.get("kwargs", {}).get("backbone")
    if src and src != model.encoder_name:
        raise TrainingConfigError(
            f"Encoder bundle {Path(bundle).name} holds a {src} backbone but the U-Net uses {model.encoder_name}; "
            f"pass --backbone {src}."
        )
    loaded_keys, missing = model.load_encoder_state(timm_resnet_to_smp(loaded.model.state_dict(), model.encoder_name))
    log.info("U-Net encoder initialised from %s: %d tensors (%d left as initialised)", bundle, len(loaded_keys), len(missing))
    return f"{loaded.manifest.task} bundle {loaded.manifest.name} ({loaded.sha256[:12]})"


def _init_segmenter(model: Any, bundle: str, arch: str, arch_kwargs: Mapping[str, Any], text_spec: Any) -> str:
    """Load every weight of a text_segmentation bundle whose architecture and text encoder match this run's."""
    from cxr_viewer.core.models.bundle import load_bundle

    loaded = load_bundle(bundle)
    m = loaded.manifest
    if m.task != "text_segmentation":
        raise TrainingConfigError(f"--init {Path(bundle).name} is a {m.task} bundle; it needs a text_segmentation bundle "
                                  "(use --encoder for an encoder bundle).")  # fmt: skip
    theirs = {"name": m.architecture.get("name"), "kwargs": dict(m.architecture.get("kwargs", {}))}
    ours = {"name": arch, "kwargs": dict(arch_kwargs)}
    if theirs != ours:
        raise TrainingConfigError(f"--init {Path(bundle).name} holds {theirs} but this run builds {ours}; "
                                  "pass the matching --arch/--backbone/--fusion.")  # fmt: skip
    their_text = m.text_encoder or {}
    if text_spec is not None and their_text.get("name") not in (None, text_spec.get("name")):
        raise TrainingConfigError(f"--init {Path(bundle).name} was trained with the {their_text.get('name')} text encoder, "
                                  f"this run uses {text_spec.get('name')}.")  # fmt: skip
    model.load_state_dict(loaded.model.state_dict())
    log.info("segmenter initialised from %s (every weight)", bundle)
    return f"{m.task} bundle {m.name} {m.version} ({loaded.sha256[:12]})"


def run_segment(args: argparse.Namespace) -> "RunResult":
    """Build targets, train, pick the threshold on validation, evaluate on test, export the bundle."""
    import lightning as L
    from torch.utils.data import DataLoader

    from cxr_viewer.core.models.text import get_text_encoder
    from trainer.config import resolved, save_config
    from trainer.data.manifest import write_manifest
    from trainer.data.segmentation import SegmentationDataset, build_image_manifest, build_samples, read_samples, write_samples
    from trainer.export import base_provenance, write_bundle
    from trainer.run import (
        RunResult,
        build_trainer,
        checkpoint_state,
        make_cache,
        mark_finished,
        prepare_frame,
        preprocessing_from,
        run_dir_for,
    )

    run_dir = run_dir_for(args, "segment")
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(args.seed, workers=True)
    data_root = Path(args.data_root)
    if not args.manifest:
        images = build_image_manifest(
            data_root, sources=args.sources, max_images=args.max_images_per_source or None,
            seed=args.seed, val=args.val_frac, test=args.test_frac,
        )  # fmt: skip
        args.manifest = str(write_manifest(images, run_dir / "images.csv"))
    cfg = resolved(args)
    save_config(cfg, run_dir, command="segment")
    frame, split_info = prepare_frame(args, run_dir, labels=[])
    split_of = dict(zip(frame["image"].astype(str), frame["split"].astype(str)))
    if args.samples:
        samples = read_samples(args.samples)
    else:
        reports = args.reports or str(data_root / "reports_iu" / "indiana_reports.csv")
        reports = None if reports == "none" or not Path(reports).is_file() else reports
        samples = build_samples(frame, reports_csv=reports, seed=args.seed, negatives_per_image=args.negatives_per_image)
    samples = samples.copy()
    samples["split"] = samples["image"].map(split_of)
    samples = samples[samples["split"].notna()].reset_index(drop=True)
    write_samples(samples, run_dir / "segmentation_samples.csv")
    parts = {s: samples[samples["split"] == s] for s in ("train", "val", "test")}
    if len(parts["train"]) == 0 or len(parts["val"]) == 0:
        raise TrainingDataError("The train or validation split has no segmentation samples; add images or change --val-frac.")

    # text: every phrase and its left/right swap, embedded once
    text_spec = _text_spec(args)
    vocab = sorted(set(samples["phrase"]) | {swap_sides(p) for p in samples["phrase"]} | set(SWAP_PROMPTS))
    index = {p: i for i, p in enumerate(vocab)}
    if text_spec is not None:
        encoder = get_text_encoder(text_spec, cached=False)
        text_spec = {"name": encoder.name, "dim": int(encoder.dim), **({"path": text_spec["path"]} if "path" in text_spec else {})}
        table = encoder.encode(vocab)
    else:
        table = np.zeros((len(vocab), 1), dtype=np.float32)
    log.info("embedded %d phrases", len(vocab))

    spec = preprocessing_from(args)
    cache = make_cache(args)
    aug = args.augment if args.augment != "none" else None
    ds_train = SegmentationDataset(parts["train"], spec, index, augment=aug, hflip_p=0.5 if args.hflip else 0.0, cache=cache)
    ds_val = SegmentationDataset(parts["val"], spec, index, cache=cache)
    arch_kwargs: dict[str, Any] = {
        "encoder": args.backbone,
        "text_dim": None if text_spec is None else int(text_spec["dim"]),
        "fusion": args.fusion,
    }
    module = SegmentTask(
        architecture=args.arch, arch_kwargs=arch_kwargs, embeddings=table, pos_weight=_pos_weight(args.pos_weight, ds_train),
        dice_weight=args.dice_weight, bce_weight=args.bce_weight, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
    )  # fmt: skip
    init = "random"
    if args.init and args.encoder:
        raise TrainingConfigError("Give --init (a whole segmenter) or --encoder (an encoder bundle), not both.")
    if args.init:
        init = _init_segmenter(module.model, args.init, args.arch, arch_kwargs, text_spec)
    elif args.encoder:
        init = _init_encoder(module.model, args.encoder)
    batch = min(int(args.batch_size), len(ds_train))
    workers = int(args.num_workers)
    tl = DataLoader(ds_train, batch_size=batch, shuffle=True, drop_last=len(ds_train) > batch, num_workers=workers,
                    persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())  # fmt: skip
    vl = DataLoader(ds_val, batch_size=min(int(args.batch_size), len(ds_val)), shuffle=False, num_workers=workers,
                    persistent_workers=workers > 0)  # fmt: skip
    trainer = build_trainer(args, run_dir, monitor="val_dice", mode="max", early_stop=args.early_stop, steps_per_epoch=len(tl))
    ckpt = None
    if args.resume:
        from trainer.run import resume_checkpoint

        ckpt = resume_checkpoint(run_dir)
    trainer.fit(module, tl, vl, ckpt_path=ckpt)
    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") or ""
    best = getattr(ckpt_cb, "best_model_score", None)
    result = RunResult(run_dir=run_dir, bundle_dir=None, best_score=None if best is None else float(best),
                       best_checkpoint=best_path or None, global_step=int(trainer.global_step))  # fmt: skip
    if not trainer.is_global_zero:
        return result
    if best_path:
        module.load_state_dict(checkpoint_state(best_path))
    model = module.model.cpu().eval()
    from trainer.evaluate import pick_device

    device = pick_device()
    emb = torch.as_tensor(table)
    # threshold on validation, metrics on test (validation if the run has no test split)
    vp, vt, vk = predict_probs(model, ds_val, emb, device=device, batch_size=int(args.batch_size))
    threshold, thr_table = choose_threshold(vp, vt, vk)
    eval_split = "test" if len(parts["test"]) else "val"
    ds_eval = SegmentationDataset(parts[eval_split], spec, index, cache=cache) if eval_split == "test" else ds_val
    ep, et, ek = (vp, vt, vk) if eval_split == "val" else predict_probs(model, ds_eval, emb, device=device, batch_size=int(args.batch_size))
    metrics = evaluate_segmentation(ep, et, ek, [r["patient_id"] for r in ds_eval.rows], threshold,
                                    n_boot=int(args.bootstrap), seed=int(args.seed))  # fmt: skip
    prompts = {p: emb[index[p]] for p in SWAP_PROMPTS}
    swap = swap_test(model, ds_eval, prompts, threshold, device=device)
    model = model.cpu().eval()
    kinds_count = {k: int(v) for k, v in parts["train"]["kind"].value_counts().items()}
    manifest = {
        "name": args.name,
        "version": "0.1.0",
        "task": "text_segmentation",
        "trained": True,
        "description": "Draws the region a report sentence names (lungs, sides, zones, TB lesions) on a frontal radiograph.",
        "architecture": {"name": args.arch, "kwargs": arch_kwargs},
        "labels": ["region"],
        "thresholds": {"region": {"value": threshold, "method": "max mean Dice", "source": "validation split", "grid": thr_table}},
        "preprocessing": spec.to_dict(),
        "text_encoder": text_spec,
        "provenance": base_provenance(cfg, split_info, extra={
            "init": init, "train_samples": int(len(parts["train"])), "train_images": int(parts["train"]["image"].nunique()),
            "train_patients": int(parts["train"]["patient_id"].nunique()), "train_targets": kinds_count,
            "samples_file": str((run_dir / "segmentation_samples.csv").resolve()), "pos_weight": module.hparams.pos_weight,
        }),  # fmt: skip
        "metrics": {
            "split": eval_split,
            "grid": "network input grid",
            "segmentation": metrics,
            "swap_test": swap,
            "validation": {"dice_at_0.5": result.best_score, "threshold_grid": thr_table},
            "bootstrap": {"resamples": int(args.bootstrap), "unit": "patient", "seed": int(args.seed)},
        },
        "limitations": [
            "Research use only; not validated for clinical use.",
            "Zones are upper/middle/lower thirds of each lung's height, not anatomical lobes.",
            "TB lesion targets are TBX11K bounding boxes (rectangles), not outlines.",
            "Lung targets come from one COVID-19 collection and a small Shenzhen sample; heart, pleura and "
            "mediastinum are never drawn.",
            "Frontal (PA/AP) views only: lateral views were excluded from training.",
            "Report sentences used as negatives come from IU reports without paired images.",
        ],
    }
    manifest = _json_safe(manifest)
    result.bundle_dir = write_bundle(model, manifest, run_dir / "bundle", dtype="float32")
    mark_finished(run_dir, trainer, result.bundle_dir)
    result.extra = {"metrics": manifest["metrics"], "threshold": threshold}
    log.info("segmentation bundle written to %s (threshold %.2f, %s Dice %s)", result.bundle_dir, threshold, eval_split,
             metrics.get("all_regions", {}).get("dice"))  # fmt: skip
    return result
