"""``cxr-train``: the headless trainer that builds every bundle the viewer loads.

Sub-commands::

    cxr-train data build --adapter nih14 --root ../shared/data/nih14 --out nih14.csv
    cxr-train data split --manifest nih14.csv --out splits.csv
    cxr-train pretrain simclr|recon --manifest all.csv --name ssl
    cxr-train finetune --manifest nih14.csv --init runs/ssl/bundle --name nih
    cxr-train finetune --site --init BUNDLE --manifest site.csv --fraction 0.5 --original-manifest M --install
    cxr-train calibrate --bundle runs/nih/bundle --manifest nih14.csv --method youden
    cxr-train calibrate --site --bundle B --folder DIR --labels site.csv --target Pneumonia=sensitivity:0.9
    cxr-train evaluate --bundle runs/nih/bundle --manifest nih14.csv --out runs/nih/eval
    cxr-train export --bundle runs/nih/bundle --metrics runs/nih/eval/metrics.json --out models/nih
    cxr-train experiment fractions --manifest nih14.csv --simclr runs/ssl/bundle --name frac
    cxr-train segment ...   (text-conditioned segmentation, trainer.tasks.segment)

Every training command takes ``--config FILE.yaml`` (defaults) and flags (overrides);
the resolved options are saved as ``runs/<name>/config.yaml``. Heavy imports happen
inside the sub-commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from cxr_viewer.core.errors import CXRError
from cxr_viewer.core.jsonio import dumps, finite_or_none

log = logging.getLogger("trainer")

HELP = __doc__.split("Sub-commands::")[1].split("Every training")[0]


# ------------------------------------------------------------------ parsers
def _base(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file whose values become defaults; flags override them")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def pretrain_parser(method: str) -> argparse.ArgumentParser:
    from trainer import config as c

    p = _base(f"cxr-train pretrain {method}", f"Self-supervised {method} pre-training of an encoder.")
    c.add_data_options(p, labels=False)
    c.add_model_options(p)
    c.add_optim_options(p, lr=1e-3, epochs=100, wd=1e-4)
    if method == "simclr":
        g = p.add_argument_group("simclr")
        g.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature")
        g.add_argument("--proj-dim", type=int, default=128)
        g.add_argument("--proj-hidden", type=int, default=512)
    else:
        g = p.add_argument_group("recon")
        g.add_argument("--ssim-weight", type=float, default=0.0, help="loss = MSE + w * (1 - SSIM)")
        g.add_argument("--decoder-width", type=int, default=256)
    c.add_scaling_options(p)
    c.add_output_options(p)
    return p


def add_finetune_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("finetune")
    g.add_argument("--task", default="auto", choices=["auto", "multilabel", "binary", "multiclass"])
    g.add_argument("--mode", default="full", choices=["full", "linear", "progressive"],
                   help="full fine-tune, linear probe, or progressive unfreezing")  # fmt: skip
    g.add_argument("--unfreeze-every", type=int, default=2, help="progressive: epochs between unfreezing stages")
    g.add_argument("--init", default="random", help="random, or an encoder/classifier bundle folder")
    g.add_argument("--early-stop", type=int, default=5, help="patience in epochs on validation macro AUROC (0 = off)")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="bce_posweight", help="bce | bce_posweight | focal | ce | ce_weighted")
    g.add_argument("--focal-gamma", type=float, default=2.0)
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--source-weighting", default="none", choices=["none", "sqrt", "equal"],
                   help="per-source loss weights per label: equal = every source the same total weight, sqrt = half way")  # fmt: skip
    g = p.add_argument_group("site (few-shot fine-tuning of an installed bundle on a site's films)")
    g.add_argument("--site", action="store_true",
                   help="take the --init bundle's input contract, compare with it on the same held-out split, apply the gates")  # fmt: skip
    g.add_argument("--original-manifest", help="the data the --init bundle was trained on (gate: no drop on its held-out split)")
    g.add_argument("--golden", nargs="*", default=[], help="golden images for the candidate (default: the bundle's own)")
    g.add_argument("--site-bootstrap", type=int, default=500, help="patient bootstrap resamples for the comparison CIs")
    g.add_argument("--install", action="store_true", help="install the candidate (switched off) when every gate passes")
    g.add_argument("--install-dir", help="default: the user's models folder")


def finetune_parser() -> argparse.ArgumentParser:
    from trainer import config as c

    p = _base("cxr-train finetune", "Fine-tune a classifier (multi-label, binary or multi-class).")
    c.add_data_options(p)
    c.add_model_options(p)
    c.add_optim_options(p, lr=1e-3, epochs=30, wd=0.05)
    add_finetune_options(p)
    c.add_scaling_options(p)
    c.add_output_options(p)
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    p = _base("cxr-train evaluate", "Held-out metrics, plots and report.md for a bundle.")
    g = p.add_argument_group("eval")
    g.add_argument("--bundle", required=True, help="bundle folder or zip")
    g.add_argument("--manifest", required=True)
    g.add_argument("--split-file", help="default: the split file recorded in the bundle's provenance")
    g.add_argument("--split", default="test", help="train | val | test | all")
    g.add_argument("--out", required=True, help="output folder (report.md, metrics.json, PNGs)")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--gallery", type=int, default=4, help="Grad-CAM gallery size per error type (0 = none)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--num-workers", type=int, default=0)
    g.add_argument("--cache-dir", help="read preprocessed images from this training decode cache")
    return p


def calibrate_parser() -> argparse.ArgumentParser:
    p = _base("cxr-train calibrate", "Choose per-label operating thresholds on a validation split.")
    g = p.add_argument_group("eval")
    g.add_argument("--bundle", required=True)
    g.add_argument("--manifest", required=True)
    g.add_argument("--split-file")
    g.add_argument("--split", default="val")
    g.add_argument("--method", default="youden", choices=["youden", "sensitivity", "specificity", "budget"],
                   help="budget: one false-alarm budget (--budget badges per normal film, adults and children "
                        "separately) allocated across the validated findings")  # fmt: skip
    g.add_argument("--target", type=float, default=0.9, help="target sensitivity/specificity (e.g. WHO TB: 0.90)")
    g.add_argument("--budget", type=float, default=0.5, help="--method budget: POSITIVE badges per normal film in total")
    g.add_argument("--budget-confidence", type=float, default=0.9,
                   help="--method budget: the budget must hold at this quantile of patient-bootstrap replicates of "
                        "each group's validation normal films (a margin for small validation sets; 0: on their mean)")
    g.add_argument("--age-head", action="store_true",
                   help="fit the age head and each finding's validated population (always with --method budget)")  # fmt: skip
    g.add_argument("--cache-dir", help="read preprocessed images from this training decode cache")
    g.add_argument("--out", help="write a calibrated copy here (default: update the bundle in place)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--num-workers", type=int, default=0)
    g.add_argument("--scaling", default="none", choices=["none", "auto", "temperature", "platt"],
                   help="fit score calibration on the split first (folded into the head; auto = best cross-validated ECE)")  # fmt: skip
    g.add_argument("--label-method", action="append", default=[], metavar="LABEL=METHOD[:TARGET]",
                   help="per-label rule, e.g. Abnormal=youden or Pneumothorax=sensitivity:0.9 (repeatable)")  # fmt: skip
    g.add_argument("--min-positives", type=int, default=0,
                   help="thresholds resting on fewer validation positives are marked validated: false (no POSITIVE badge)")  # fmt: skip
    return p


def site_calibrate_parser() -> argparse.ArgumentParser:
    p = _base("cxr-train calibrate --site", "Measure a bundle on a site's own labelled films and fit a site profile.")
    g = p.add_argument_group("site")
    g.add_argument("--site", action="store_true", help="site calibration (this form)")
    g.add_argument("--bundle", required=True, help="the installed bundle to calibrate for this site")
    g.add_argument("--folder", required=True, help="folder of the site's films")
    g.add_argument("--labels", required=True, help="CSV: file (relative to --folder), one 1/0 column per finding, optional patient_id")
    g.add_argument("--target", action="append", default=[], metavar="[FINDING=]RULE",
                   help="youden, sensitivity:0.9 or specificity:0.8, for every finding or one (repeatable)")  # fmt: skip
    g.add_argument("--method", default="auto", choices=["auto", "none", "temperature", "platt", "isotonic"],
                   help="recalibration (auto = lowest cross-validated ECE on the calibration part)")  # fmt: skip
    g.add_argument("--holdout", type=float, default=0.5, help="fraction of the site's patients kept to measure the effect")
    g.add_argument("--min-positives", type=int, default=20, help="fewer positives: a warning, and the threshold is not validated")
    g.add_argument("--bootstrap", type=int, default=500, help="patient bootstrap resamples for the 95%% CIs")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--name", default="site", help="profile name (versions are numbered)")
    g.add_argument("--note", default="", help="your note, kept in the profile")
    g.add_argument("--profiles-dir", help="default: the user's profiles folder")
    g.add_argument("--report", help="write the full analysis as JSON here (and the figures beside it as PNG)")
    g.add_argument("--batch-size", type=int, default=32)
    return p


def export_parser() -> argparse.ArgumentParser:
    p = _base("cxr-train export", "Write the final bundle: metrics, provenance, golden images.")
    g = p.add_argument_group("output")
    g.add_argument("--bundle", required=True, help="trained (and calibrated) bundle")
    g.add_argument("--out", required=True)
    g.add_argument("--metrics", help="metrics.json from `cxr-train evaluate`")
    g.add_argument("--name")
    g.add_argument("--version")
    g.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    g.add_argument("--golden", nargs="*", default=[], help="up to 2 images recorded for the viewer's --self-test")
    g.add_argument("--onnx", action="store_true", help="also write the verified ONNX export (onnx/, recorded in the manifest)")
    return p


def fractions_parser() -> argparse.ArgumentParser:
    p = finetune_parser()
    p.prog = "cxr-train experiment fractions"
    p.description = "Label-efficiency: label fractions x initialisations, AUROC with 95% CI."
    g = p.add_argument_group("experiment")
    g.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    g.add_argument("--inits", nargs="+", default=["random", "simclr", "recon"],
                   help="random, simclr, recon, or bundle (start from --init, e.g. a site's installed bundle)")
    g.add_argument("--simclr", help="SimCLR encoder bundle")
    g.add_argument("--recon", help="reconstruction encoder bundle")
    g.add_argument("--bootstrap", type=int, default=1000)
    g.add_argument("--target-auroc", type=float, help="estimate the labelled patients needed for this AUROC (learning curve)")
    return p


def data_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-train data", description="Build manifests and splits.")
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="dataset folder -> manifest CSV")
    b.add_argument("--adapter", required=True, help="nih14 | kermany | tbx11k | covid | rsna | shenzhen | csv | folder")
    b.add_argument("--root", required=True, help="the dataset's folder")
    b.add_argument("--out", required=True, help="manifest CSV to write")
    b.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter option, e.g. multiclass=true, csv=meta.csv, label_cols=a,b")  # fmt: skip
    s = sub.add_parser("split", help="patient-level seeded splits (+ label fractions) -> split file")
    s.add_argument("--manifest", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-frac", type=float, default=0.15)
    s.add_argument("--test-frac", type=float, default=0.15)
    s.add_argument("--fractions", type=float, nargs="*", default=[0.01, 0.1, 1.0])
    return p


# ------------------------------------------------------------------ commands
def _options(pairs: Sequence[str]) -> dict[str, object]:
    from cxr_viewer.core.errors import TrainingConfigError

    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise TrainingConfigError(f"Adapter option {pair!r} must look like KEY=VALUE.")
        k, v = pair.split("=", 1)
        out[k.strip()] = {"true": True, "false": False}.get(v.strip().lower(), v.strip())
    return out


def cmd_data(argv: Sequence[str]) -> int:
    args = data_parser().parse_args(list(argv))
    if args.action == "build":
        from trainer.data.adapters import build_manifest
        from trainer.data.manifest import label_columns, write_manifest

        frame = build_manifest(args.adapter, args.root, **_options(args.option))
        write_manifest(frame, args.out)
        print(json.dumps({"manifest": args.out, "images": len(frame), "patients": int(frame["patient_id"].nunique()),
                          "labels": label_columns(frame)}))  # fmt: skip
        return 0
    from trainer.data.manifest import read_manifest
    from trainer.data.splits import label_fractions, make_splits, write_split_file

    m = read_manifest(args.manifest)
    frame = make_splits(m.frame, seed=args.seed, val=args.val_frac, test=args.test_frac)
    if args.fractions and m.labels:
        frame = label_fractions(frame, tuple(args.fractions), seed=args.seed)
    sha = write_split_file(frame, args.out)
    print(json.dumps({"split_file": args.out, "sha256": sha, "patients": frame.groupby("split")["patient_id"].nunique().to_dict()}))
    return 0


def cmd_pretrain(argv: Sequence[str]) -> int:
    from cxr_viewer.core.errors import TrainingConfigError
    from trainer.config import parse_with_config
    from trainer.distributed import is_global_zero_env
    from trainer.run import run_pretrain

    if not argv or argv[0] not in ("simclr", "recon"):
        raise TrainingConfigError("Choose a pre-training method: `cxr-train pretrain simclr` or `cxr-train pretrain recon`.")
    args = parse_with_config(pretrain_parser(argv[0]), argv[1:])
    _logging(args.verbose)
    res = run_pretrain(args, argv[0])
    if is_global_zero_env():  # one summary line, not one per DDP process
        print(json.dumps({"run": str(res.run_dir), "bundle": str(res.bundle_dir), "global_step": res.global_step}))
    return 0


def cmd_finetune(argv: Sequence[str]) -> int:
    from trainer.config import parse_with_config
    from trainer.distributed import is_global_zero_env
    from trainer.run import run_finetune

    args = parse_with_config(finetune_parser(), argv)
    _logging(args.verbose)
    if args.site:
        from trainer.site_finetune import run_site_finetune

        report = run_site_finetune(args)
        print(json.dumps(finite_or_none({k: report[k] for k in ("run", "candidate", "passed", "installed", "gates", "site_test")}),
                         allow_nan=False))  # fmt: skip
        return 0 if report["passed"] or not args.install else 3
    res = run_finetune(args)
    if is_global_zero_env():  # one summary line, not one per DDP process
        print(dumps(finite_or_none({"run": str(res.run_dir), "bundle": str(res.bundle_dir), "val_auroc": res.best_score,
                                    "global_step": res.global_step})))  # fmt: skip
    return 0


def cmd_evaluate(argv: Sequence[str]) -> int:
    from trainer.config import parse_with_config
    from trainer.evaluate import evaluate

    args = parse_with_config(evaluate_parser(), argv)
    _logging(args.verbose)
    out = evaluate(
        args.bundle, args.manifest, args.out, split=args.split, split_file=args.split_file,
        n_boot=args.bootstrap, seed=args.seed, gallery=args.gallery, batch_size=args.batch_size,
        num_workers=args.num_workers, cache_dir=args.cache_dir,
    )  # fmt: skip
    print(json.dumps({"report": str(out / "report.md"), "metrics": str(out / "metrics.json")}))
    return 0


def cmd_calibrate(argv: Sequence[str]) -> int:
    from trainer.calibrate import calibrate
    from trainer.config import parse_with_config

    if "--site" in argv:
        return cmd_calibrate_site(argv)

    args = parse_with_config(calibrate_parser(), argv)
    _logging(args.verbose)
    out, thresholds = calibrate(
        args.bundle, args.manifest, method=args.method, target=args.target, split=args.split,
        split_file=args.split_file, out=args.out, batch_size=args.batch_size, num_workers=args.num_workers,
        scaling=args.scaling, min_positives=args.min_positives,
        label_methods=dict(r.split("=", 1) for r in args.label_method if "=" in r),
        budget=args.budget, budget_confidence=args.budget_confidence, age_head=args.age_head, cache_dir=args.cache_dir,
    )  # fmt: skip
    print(dumps(finite_or_none({"bundle": str(out), "thresholds": thresholds})))
    return 0


def cmd_calibrate_site(argv: Sequence[str]) -> int:
    from trainer.config import parse_with_config
    from trainer.site import calibrate_site, parse_targets

    args = parse_with_config(site_calibrate_parser(), argv)
    _logging(args.verbose)
    default, per = parse_targets(args.target)
    profile, out = calibrate_site(
        args.bundle, args.folder, args.labels, targets=per, default_target=default, method=args.method,
        holdout=args.holdout, seed=args.seed, n_boot=args.bootstrap, min_positives=args.min_positives,
        name=args.name, note=args.note, profiles_dir=args.profiles_dir, report=args.report, batch_size=args.batch_size,
    )  # fmt: skip

    summary = {lab: {k: f.summary.get(k) for k in ("n_pos", "n_neg", "auroc", "ece_before", "ece_after", "sensitivity_before",
                                                  "sensitivity_after", "specificity_before", "specificity_after")}
               | {"threshold": f.threshold, "target": f.target, "calibration": f.calibration.method,
                  "validated": f.validated, "warnings": out["findings"][lab]["warnings"]}
               for lab, f in profile.findings.items()}  # fmt: skip
    print(json.dumps(finite_or_none({"profile": str(profile.path), "id": profile.id, "findings": summary,
                                  "skipped": out["skipped"]}), allow_nan=False))  # fmt: skip
    return 0


def cmd_export(argv: Sequence[str]) -> int:
    from trainer.config import parse_with_config
    from trainer.export import export_bundle

    args = parse_with_config(export_parser(), argv)
    _logging(args.verbose)
    out = export_bundle(
        args.bundle, args.out, metrics=args.metrics, name=args.name, version=args.version, dtype=args.dtype,
        golden_images=list(args.golden)[:2], onnx=args.onnx,
    )  # fmt: skip
    print(json.dumps({"bundle": str(out)}))
    return 0


def cmd_experiment(argv: Sequence[str]) -> int:
    from cxr_viewer.core.errors import TrainingConfigError
    from trainer.config import parse_with_config
    from trainer.experiments import run_fractions

    if not argv or argv[0] != "fractions":
        raise TrainingConfigError("Available experiments: `cxr-train experiment fractions`.")
    args = parse_with_config(fractions_parser(), argv[1:])
    _logging(args.verbose)
    table = run_fractions(args)
    print(json.dumps({"results": str(table)}))
    return 0


def cmd_segment(argv: Sequence[str]) -> int:
    """Text-conditioned segmentation lives in ``trainer.tasks.segment`` (imported only when used)."""
    from trainer.tasks import segment

    return int(segment.main(list(argv)) or 0)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "data": cmd_data,
    "pretrain": cmd_pretrain,
    "finetune": cmd_finetune,
    "evaluate": cmd_evaluate,
    "calibrate": cmd_calibrate,
    "export": cmd_export,
    "experiment": cmd_experiment,
    "segment": cmd_segment,
}


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):  # they print through their own handler already
        logging.getLogger(name).propagate = False


def missing_extra(exc: ModuleNotFoundError) -> str:
    """A one-line message for a trainer package the viewer's own install lacks (pandas, Lightning, torch...)."""
    name = (exc.name or str(exc)).split(".")[0]
    return (f"cxr-train: the trainer needs the package {name!r}, which is not installed (the viewer's quick start "
            "leaves the trainer out). Install it with: python -m pip install -r requirements/dev.txt "
            "&& python -m pip install --no-deps -e .   (or: python -m pip install -e \".[train]\")")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: cxr-train COMMAND [options]   (COMMAND --help for its options)\n" + HELP)
        return 0 if argv else 2
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        print(f"cxr-train: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        from trainer.run import RunFinished
    except ModuleNotFoundError as exc:
        print(missing_extra(exc), file=sys.stderr)
        return 2

    try:
        return cmd(argv[1:])
    except ModuleNotFoundError as exc:
        print(missing_extra(exc), file=sys.stderr)
        return 2
    except RunFinished as exc:  # --resume of a finished run: say so, change nothing
        print(f"cxr-train {argv[0]}: {exc.message}", file=sys.stderr)
        print(dumps({"run": str(exc.run_dir), "bundle": exc.info.get("bundle"), "already_finished": True}))
        return 0
    except CXRError as exc:
        print(f"cxr-train {argv[0]}: error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
