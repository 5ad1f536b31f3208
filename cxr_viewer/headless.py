"""Headless commands: ``cxr-viewer analyze FILE... --json OUT`` and ``cxr-viewer --self-test``.

No Qt. Models load once per run; every input gets a JSON object, and bad input
becomes an ``error`` object (code + message), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import CXRError, NoSegmentationModelError

if TYPE_CHECKING:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io.record import ImageRecord

log = logging.getLogger("cxr_viewer.headless")

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_REJECTED = 2


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _analyze_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxr-viewer analyze",
        description="Analyse chest X-rays without a window and write one JSON object per input. "
        "Exit status: 0 all inputs analysed, 2 if any input (or a requested heatmap/mask) could not be done.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="DICOM, PNG, JPEG or TIFF files")
    p.add_argument("--json", default="-", metavar="OUT", help="output file, or - for standard output (default)")
    p.add_argument("--models", action="append", metavar="DIR", help="add a folder of model bundles (repeatable) "
                   "to the bundled models and the user models folder")
    p.add_argument("--no-default-models", action="store_true",
                   help="use only the --models folders, not the bundled and user models")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="CPU backend for scores: ONNX Runtime when verified (auto), or force one")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    g = p.add_argument_group("heatmaps")
    g.add_argument("--cam", metavar="LABEL", help="write a heatmap for this finding; case, punctuation and a "
                   "unique prefix are forgiven (e.g. 'tuberculosis', 'pleural')")
    g.add_argument("--cam-out", metavar="DIR", help="folder for heatmaps (default: beside --json, or ./)")
    g.add_argument("--cam-method", default="gradcam", metavar="M",
                   help="gradcam (default), gradcam++, xgradcam, hirescam, layercam, eigencam, scorecam")
    g.add_argument("--cam-format", choices=["png", "npy"], default="png",
                   help="png: 8-bit grey at the input's size; npy: float32 in [0, 1]")
    g.add_argument("--cam-model", metavar="NAME", help="model to explain when several predict the label")
    g.add_argument("--no-faithfulness", action="store_true", help="skip the ROAD faithfulness score (faster)")
    s = p.add_argument_group("report-conditioned segmentation")
    s.add_argument("--report", metavar="TEXT", help="report text whose findings to segment")
    s.add_argument("--mask-out", metavar="DIR", help="folder for segmentation masks")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    return p


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "x"


def _write_cam(values: Any, out_dir: Path, stem: str, label: str, method: str, fmt: str) -> Path:
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_safe_name(stem)}_{_safe_name(label)}_{_safe_name(method)}.{fmt}"
    if fmt == "npy":
        np.save(path, values.astype(np.float32), allow_pickle=False)
    else:
        from PIL import Image

        Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8), mode="L").save(path)
    return path


def model_dirs(args: argparse.Namespace) -> list[Path]:
    """``--models`` folders added to the bundled and user folders (or alone with --no-default-models)."""
    from cxr_viewer.core.paths import default_models_dir, user_models_dir

    extra = [Path(d) for d in (args.models or [])]
    if args.no_default_models:
        return extra
    return [*extra, *(d for d in (default_models_dir(), user_models_dir()) if d not in extra)]


_SEGMENTERS: dict[int, Any] = {}


def _segmenter_for(bundle: Any) -> Any:
    """One Segmenter (and so one text encoder and embedding cache) per loaded bundle."""
    from cxr_viewer.core.inference.segment import Segmenter

    seg = _SEGMENTERS.get(id(bundle))
    if seg is None or seg.bundle is not bundle:
        seg = _SEGMENTERS[id(bundle)] = Segmenter(bundle)
    return seg


def segment_request(
    engine: "InferenceEngine", record: "ImageRecord", report: str, mask_out: Path | None, stem: str
) -> dict[str, Any]:
    """Report-conditioned masks: one 0/255 PNG per report sentence, at the input's size."""
    from cxr_viewer.core.inference.segment import write_report_masks

    bundles = engine.bundles_for_task("text_segmentation")
    if not bundles:
        raise NoSegmentationModelError(
            "No segmentation model is installed, so the report text cannot be turned into masks. "
            "Install a text-segmentation model bundle or drop --report."
        )
    bundle = bundles[0]
    masks = write_report_masks(_segmenter_for(bundle), record, report, mask_out or Path("."), stem)
    return {"model": bundle.describe(), "masks": masks}


def _unique_stem(path_text: str, used: set[str], kind: str = "mask") -> str:
    """A file-name stem per input that two inputs with the same name never share."""
    stem = Path(path_text).stem
    while (kind, stem) in used:
        stem = stem + "_"
    used.add((kind, stem))  # type: ignore[arg-type]
    return stem


def _analyze_one(
    engine: "InferenceEngine", path_text: str, args: argparse.Namespace, cam_dir: Path | None, used_stems: set[str]
) -> tuple[dict[str, Any], bool]:
    """One input -> (JSON object, fully done?)."""
    from cxr_viewer.core.io import read_image

    obj: dict[str, Any] = {"file": path_text}
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        record = read_image(Path(path_text))
    except CXRError as exc:
        obj.update(status="error", error=exc.to_dict())
        return obj, False
    timing["read"] = (time.perf_counter() - t0) * 1e3
    result = engine.analyze(record)
    d = result.to_dict()
    timing.update(d.pop("timing_ms"))
    obj.update(status="ok")
    obj["image"] = {"rows": record.shape[0], "columns": record.shape[1], "format": record.format,
                    "notices": list(record.notices)}
    obj.update(d)
    obj["backend"] = dict(result.backend)
    done = True
    if args.cam:
        t0 = time.perf_counter()
        try:
            from cxr_viewer.core.labels import match_label

            names = [f["label"] for f in d.get("findings", [])
                     if args.cam_model is None or f.get("model") == args.cam_model]
            label = match_label(args.cam, names) if names else args.cam
            heat = engine.cam(record, label, args.cam_method, model=args.cam_model,
                              faithfulness=not args.no_faithfulness)
            stem = _unique_stem(path_text, used_stems, "cam")
            out = _write_cam(heat.values, cam_dir or Path("."), stem, heat.label, heat.method, args.cam_format)
            obj["cam"] = {**heat.to_dict(), "path": str(out)}
        except CXRError as exc:
            obj["cam"] = {"label": args.cam, "method": args.cam_method, "error": exc.to_dict()}
            done = False
        timing["cam"] = (time.perf_counter() - t0) * 1e3
    if args.report is not None:
        try:
            t0 = time.perf_counter()
            seg = segment_request(engine, record, args.report,
                                  Path(args.mask_out) if args.mask_out else None, _unique_stem(path_text, used_stems))
            obj["masks"] = seg.pop("masks")
            obj["segmentation"] = seg
            timing["segment"] = (time.perf_counter() - t0) * 1e3
        except CXRError as exc:
            obj["segmentation"] = {"error": exc.to_dict()}
            done = False
    obj["timing_ms"] = {k: round(v, 3) for k, v in timing.items()}
    return obj, done


def analyze_main(argv: list[str]) -> int:
    """``cxr-viewer analyze``: see ``--help``. Returns the process exit status."""
    args = _analyze_parser().parse_args(argv)
    _setup_logging(args.verbose)
    if args.mask_out and args.report is None:
        print("cxr-viewer analyze: --mask-out needs --report TEXT", file=sys.stderr)
        return EXIT_REJECTED
    from cxr_viewer.core.inference.engine import InferenceEngine

    try:
        engine = InferenceEngine.from_dirs(model_dirs(args), device=args.device, backend=args.backend, threads=args.threads)
    except CXRError as exc:
        print(f"cxr-viewer analyze: {exc.message}", file=sys.stderr)
        return EXIT_REJECTED
    run_warnings = [f"model bundle {p.name} was skipped: {msg}" for p, msg in engine.load_errors]
    cam_dir: Path | None = None
    if args.cam:
        cam_dir = Path(args.cam_out) if args.cam_out else (Path(args.json).parent if args.json != "-" else Path("."))
    results: list[dict[str, Any]] = []
    all_done = True
    used_stems: set[str] = set()
    for path_text in args.files:
        try:
            obj, done = _analyze_one(engine, path_text, args, cam_dir, used_stems)
        except CXRError as exc:
            obj, done = {"file": path_text, "status": "error", "error": exc.to_dict()}, False
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            log.error("internal error on input %d: %s: %s", len(results) + 1, type(exc).__name__, exc)
            log.debug("details", exc_info=True)
            obj = {"file": path_text, "status": "error",
                   "error": {"code": "internal_error", "message": f"Unexpected error ({type(exc).__name__}); see the log."}}
            done = False
        if run_warnings:
            obj["warnings"] = list(obj.get("warnings", [])) + run_warnings
        results.append(obj)
        all_done &= done
    text = json.dumps(results, indent=2)
    if args.json == "-":
        sys.stdout.write(text + "\n")
    else:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    return EXIT_OK if all_done else EXIT_REJECTED


def self_test_main(argv: list[str]) -> int:
    """``cxr-viewer --self-test``: hash-check every enabled bundle and re-score its golden images."""
    p = argparse.ArgumentParser(prog="cxr-viewer --self-test",
                                description="Verify installed model bundles: weights checksum and golden-image scores.")
    p.add_argument("--models", action="append", metavar="DIR", help="add a folder of model bundles (repeatable)")
    p.add_argument("--no-default-models", action="store_true",
                   help="check only the --models folders, not the bundled and user models")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--tolerance", type=float, default=None, help="largest allowed score difference (default 1e-3)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.golden import GOLDEN_TOLERANCE, check_golden
    from cxr_viewer.core.models.bundle import find_bundles, load_bundle

    tol = GOLDEN_TOLERANCE if args.tolerance is None else args.tolerance
    infos = find_bundles(model_dirs(args))
    lines = ["cxr-viewer self-test", ""]
    failed = 0
    checked = 0
    try:
        engine = InferenceEngine(None, device=args.device, backend=args.backend)
    except CXRError as exc:
        print(f"FAIL  {exc.message}")
        return EXIT_FAILURES
    for info in infos:
        label = info.path.name
        if not info.ok:
            lines.append(f"FAIL  {label}: {info.error}")
            failed += 1
            continue
        m = info.manifest
        assert m is not None
        if not info.enabled:
            lines.append(f"SKIP  {m.display_name}: disabled")
            continue
        try:
            bundle = load_bundle(info.path, device=engine.device)
        except CXRError as exc:
            lines.append(f"FAIL  {m.display_name}: {exc.message}")
            failed += 1
            continue
        checked += 1
        tag = "" if m.trained else " [UNTRAINED]"
        if not m.is_classifier:
            lines.append(f"OK    {m.display_name}{tag}: checksum verified; golden scores not defined for task {m.task}")
            continue
        if not m.golden:
            lines.append(f"WARN  {m.display_name}{tag}: checksum verified; no golden images recorded")
            continue
        engine.add_bundle(bundle)
        check = check_golden(bundle, tolerance=tol, engine=engine)
        if check.ok:
            lines.append(f"OK    {m.display_name}{tag}: checksum verified; {check.images} golden image(s) "
                         f"match (max diff {check.max_diff:.1e}, backend {engine.backend_for(bundle)})")
        else:
            failed += 1
            lines.append(f"FAIL  {m.display_name}{tag}: " + "; ".join(check.failures))
    if not infos:
        lines.append("FAIL  no model bundles found (looked in: "
                     + ", ".join(str(d) for d in model_dirs(args)) + ")")
        failed += 1
    lines += ["", f"{checked} bundle(s) checked, {failed} problem(s)."]
    print("\n".join(lines))
    return EXIT_OK if failed == 0 else EXIT_FAILURES
