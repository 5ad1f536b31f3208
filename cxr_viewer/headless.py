"""Headless commands: ``cxr-viewer analyze FILE... --json OUT`` and ``cxr-viewer --self-test``.

No Qt. Argument parsing and output over the core use case (:mod:`cxr_viewer.core.usecase`:
each film analysed and judged with one workspace, its record exported). Models load once per
run; every input gets a JSON object, and bad input becomes an ``error`` object (code +
message), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import CXRError
from cxr_viewer.core.jsonio import dumps, finite_or_none, non_finite_paths

if TYPE_CHECKING:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.workspace import Workspace

log = logging.getLogger("cxr_viewer.headless")

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_REJECTED = 2
EXIT_MODELS_REFUSED = 3


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _analyze_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxr-viewer analyze",
        description="Analyse chest X-rays without a window and write one JSON object per input. "
        "Exit status: 0 all inputs analysed, 2 if any input (or a requested heatmap/mask) could not be done, "
        "3 if every model bundle found was refused (so nothing was scored).",
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
    p.add_argument("--batch", type=int, default=8, metavar="N",
                   help="images per batched forward (default 8; 1 analyses one at a time); a reader thread "
                   "decodes and preprocesses the next files meanwhile")
    p.add_argument("--site-profile", metavar="PROFILE", help="site calibration profile (a file, or a name in the "
                   "profiles folder): its calibrated scores and thresholds replace the bundle's")
    threshold_arg(p)
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
    s.add_argument("--mask-out", metavar="DIR", help="write one mask PNG per sentence into this folder "
                   "(without it the masks are only described in the JSON)")
    e = p.add_argument_group("reports and DICOM results")
    e.add_argument("--pdf-out", metavar="DIR", help="write the one-page PDF report of each input here")
    e.add_argument("--dicom-out", metavar="DIR",
                   help="write DICOM results of each DICOM input here: SR (findings), SEG (report masks), "
                        "Secondary Capture of the view and the Encapsulated PDF report, filed under the source study")
    e.add_argument("--anonymised-out", metavar="DIR",
                   help="write each DICOM input and its result objects here, de-identified (DICOM PS3.15 Basic "
                        "profile: names and IDs replaced, dates shifted, UIDs remapped consistently); warnings about "
                        "possible burned-in text are listed in the JSON")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    return p


def site_profile_for(engine: "InferenceEngine", name: str | None) -> Any:
    """The site profile ``name`` (a file or a name in the profiles folder) checked against the engine's
    classifiers; None without a name. Raises the CXRError that says what does not fit."""
    if not name:
        return None
    from cxr_viewer.core.site.profile import load_profile

    profile = load_profile(name)
    profile.check_bundle(b.describe() for b in engine.classifiers)
    return profile


def threshold_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", action="append", default=[], metavar="[MODEL:]LABEL=VALUE",
                   help="the reader's operating threshold for a finding (repeatable); it wins over the model's "
                   "and the site profile's, as a threshold set in the viewer's findings panel does")


def classifier_labels(engine: "InferenceEngine") -> list[tuple[str, str, list[str]]]:
    """(name, weights sha256, labels) of the engine's classifiers: what ``--threshold`` may name."""
    return [(b.name, b.sha256, list(b.manifest.labels)) for b in engine.classifiers]


def manifest_labels(dirs: Any) -> list[tuple[str, str, list[str]]]:
    """(name, weights sha256, labels) of the classifier bundles in ``dirs`` (manifests only, no weights read)."""
    from cxr_viewer.core.models.bundle import find_bundles

    return [(i.manifest.name, str(i.manifest.weights.get("sha256", "")), list(i.manifest.labels))
            for i in find_bundles(dirs) if i.ok and i.manifest is not None and i.manifest.is_classifier]


def cli_workspace(profile: Any, thresholds: list[str], models: Any) -> "Workspace":
    """The command line's workspace: the ``--site-profile`` and the ``--threshold`` values, judged with as the
    viewer judges (:meth:`~cxr_viewer.core.workspace.Workspace.judge`). Raises ValueError on a bad threshold."""
    from cxr_viewer.core.analysis import MemorySettings
    from cxr_viewer.core.workspace import Workspace

    ws = Workspace(MemorySettings())
    ws.set_site_profile(profile)
    ws.set_thresholds(thresholds, models)
    return ws


def command_workspace(engine: "InferenceEngine", args: argparse.Namespace, command: str) -> "Workspace | None":
    """:func:`cli_workspace` from ``--site-profile`` and ``--threshold`` for ``engine``; None after saying on
    stderr, as ``cxr-viewer COMMAND: ...``, why the profile or a threshold was refused."""
    try:
        return cli_workspace(site_profile_for(engine, args.site_profile), args.threshold, classifier_labels(engine))
    except CXRError as exc:
        print(f"cxr-viewer {command}: {exc.message}", file=sys.stderr)
    except ValueError as exc:
        print(f"cxr-viewer {command}: {exc}", file=sys.stderr)
    return None


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "x"


def method_file_part(method: str) -> str:
    """A CAM method as a file-name part that no other method shares (``gradcam++`` -> ``gradcampp``)."""
    return _safe_name(method.replace("+", "p"))


def _write_cam(values: Any, out_dir: Path, stem: str, label: str, method: str, fmt: str) -> Path:
    import numpy as np

    from cxr_viewer.core.staging import staged_file

    path = out_dir / f"{_safe_name(stem)}_{_safe_name(label)}_{method_file_part(method)}.{fmt}"
    with staged_file(path) as part:
        if fmt == "npy":
            with part.open("wb") as fh:
                np.save(fh, values.astype(np.float32), allow_pickle=False)
        else:
            from PIL import Image

            Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8), mode="L").save(part, format="PNG")
    return path


def model_dirs(args: argparse.Namespace) -> list[Path]:
    """``--models`` folders added to the bundled and user folders (or alone with --no-default-models)."""
    from cxr_viewer.core.paths import default_models_dir, user_models_dir

    extra = [Path(d) for d in (args.models or [])]
    if args.no_default_models:
        return extra
    return [*extra, *(d for d in (default_models_dir(), user_models_dir()) if d not in extra)]


def _unique_stem(path_text: str, used: set[str], kind: str = "mask") -> str:
    """A file-name stem per input that two inputs with the same name never share."""
    stem = Path(path_text).stem
    while (kind, stem) in used:
        stem = stem + "_"
    used.add((kind, stem))  # type: ignore[arg-type]
    return stem


def _analyze_one(
    engine: "InferenceEngine", path_text: str, args: argparse.Namespace, cam_dir: Path | None, used_stems: set[str],
    workspace: "Workspace | None" = None, read: "tuple[Any, float] | None" = None, result: Any = None,
) -> tuple[dict[str, Any], bool]:
    """One input -> (JSON object, fully done?). ``read``: the reader thread's (record or error, ms);
    ``result``: its analysis when a batch already ran it."""
    from cxr_viewer.core.usecase import CamRequest, analyse, export_record, read_ahead

    obj: dict[str, Any] = {"file": path_text}
    timing: dict[str, float] = {}
    record, read_ms = read if read is not None else read_ahead(engine, path_text)
    if isinstance(record, CXRError):
        obj.update(status="error", error=record.to_dict())
        return obj, False
    if isinstance(record, BaseException):
        raise record
    timing["read"] = read_ms
    if workspace is None:
        workspace = cli_workspace(None, [], ())
    cam = CamRequest(args.cam, args.cam_method, args.cam_model, not args.no_faithfulness) if args.cam else None
    # THE use case: scored, judged by the workspace (site profile, the reader's thresholds, validation,
    # population), with the heatmap and masks asked for
    analysed = analyse(record, workspace, engine, result=result, cam=cam, report=args.report)
    judged = analysed.judged
    d = judged.to_dict()
    timing.update(d.pop("timing_ms"))
    obj.update(status="ok")
    obj["image"] = {"rows": record.shape[0], "columns": record.shape[1], "format": record.format,
                    "notices": list(record.notices)}
    obj.update(d)
    if workspace.site_profile is not None:
        obj["site_profile"] = workspace.site_profile.describe()
    obj["backend"] = dict(judged.result.backend)
    done = True
    if cam is not None:
        t0 = time.perf_counter()
        heat = analysed.heatmap
        try:
            if analysed.cam_error is not None:
                raise analysed.cam_error
            out = _write_cam(heat.values, cam_dir or Path("."), _unique_stem(path_text, used_stems, "cam"), heat.label,
                             heat.method, args.cam_format)
            obj["cam"] = {**heat.to_dict(), "path": str(out)}
        except CXRError as exc:
            obj["cam"] = {"label": args.cam, "method": args.cam_method, "error": exc.to_dict()}
            done = False
        timing["cam"] = analysed.timing_ms["cam"] + (time.perf_counter() - t0) * 1e3
    if args.report is not None:
        t0 = time.perf_counter()
        stem = _unique_stem(path_text, used_stems)
        try:
            if analysed.segmentation_error is not None:
                raise analysed.segmentation_error
            obj["masks"] = _mask_rows(analysed, args, stem)
            obj["segmentation"] = {"model": analysed.segmentation_model}
            timing["segment"] = analysed.timing_ms["segment"] + (time.perf_counter() - t0) * 1e3
        except CXRError as exc:
            obj["segmentation"] = {"error": exc.to_dict()}
            done = False
    if args.pdf_out or args.dicom_out or args.anonymised_out:
        t0 = time.perf_counter()
        stem = _safe_name(_unique_stem(path_text, used_stems, "report"))
        exported = export_record(analysed, path_text,
                                 pdf_path=Path(args.pdf_out) / f"{stem}_report.pdf" if args.pdf_out else None,
                                 dicom_dir=args.dicom_out, anonymised_dir=args.anonymised_out,
                                 report_text=args.report or "")
        if exported.warnings:
            obj.setdefault("warnings", []).extend(exported.warnings)
        obj.update(exported.outputs)
        done &= exported.done
        timing["export"] = (time.perf_counter() - t0) * 1e3
    obj["timing_ms"] = {k: round(v, 3) for k, v in timing.items()}
    return obj, done


def _mask_rows(analysed: Any, args: argparse.Namespace, stem: str) -> list[dict[str, Any]]:
    """The report's masks as the JSON lists them: one 0/255 PNG per report sentence, at the input's size,
    written into ``--mask-out`` (without it the masks are only described)."""
    if not args.mask_out:
        return [m.summary() for m in analysed.masks]
    from cxr_viewer.core.inference.segment import write_report_masks

    return write_report_masks(analysed.segmenter, analysed.record, args.report, Path(args.mask_out), stem,
                              masks=analysed.masks)


def _finite_result(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A result holding NaN/Inf (a damaged model's output) becomes an error naming the values; never NaN in JSON."""
    bad = non_finite_paths(obj)
    if not bad:
        return obj, True
    log.error("input %s: non-finite values at %s", obj.get("file", "?"), ", ".join(bad[:5]))
    clean = finite_or_none(obj)
    clean["status"] = "error"
    clean["error"] = {
        "code": "non_finite_result",
        "message": "Some results are not numbers (NaN or infinite) and are written as null: "
        + ", ".join(bad[:5]) + ". A model bundle may be damaged; run cxr-viewer --self-test.",
    }
    return clean, False


def analyze_main(argv: list[str]) -> int:
    """``cxr-viewer analyze``: see ``--help``. Returns the process exit status."""
    args = _analyze_parser().parse_args(argv)
    _setup_logging(args.verbose)
    if args.mask_out and args.report is None:
        print("cxr-viewer analyze: --mask-out needs --report TEXT", file=sys.stderr)
        return EXIT_REJECTED
    from cxr_viewer.core.inference import engine as engine_module
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.usecase import scored_files

    no_models_warning = getattr(engine_module, "NO_MODELS_WARNING", None)
    try:
        engine = InferenceEngine.from_dirs(model_dirs(args), device=args.device, backend=args.backend, threads=args.threads)
    except CXRError as exc:
        print(f"cxr-viewer analyze: {exc.message}", file=sys.stderr)
        return EXIT_REJECTED
    run_warnings = [f"model bundle {p.name} was refused: {msg}" for p, msg in engine.load_errors]
    refused_all = refusal_error(engine)
    if refused_all is None:
        engine.prepare()  # every model's session at once, while nothing else runs
    if refused_all is not None:
        print(f"cxr-viewer analyze: {refused_all['message']}", file=sys.stderr)
    workspace = command_workspace(engine, args, "analyze")
    if workspace is None:
        return EXIT_REJECTED
    cam_dir: Path | None = None
    if args.cam:
        cam_dir = Path(args.cam_out) if args.cam_out else (Path(args.json).parent if args.json != "-" else Path("."))
    results: list[dict[str, Any]] = []
    all_done = True
    used_stems: set[str] = set()
    for path_text, read, result in scored_files(engine, args.files, batch=args.batch):
        obj, done = _one_safely(engine, path_text, args, cam_dir, used_stems, workspace, read, result,
                                len(results), run_warnings, refused_all, no_models_warning)
        results.append(obj)
        all_done &= done
    text = dumps(results, indent=2)
    if args.json == "-":
        sys.stdout.write(text + "\n")
    else:
        from cxr_viewer.core.staging import write_atomic

        write_atomic(args.json, text + "\n")
    if refused_all is not None:
        return EXIT_MODELS_REFUSED
    return EXIT_OK if all_done else EXIT_REJECTED


def _one_safely(
    engine: "InferenceEngine", path_text: str, args: argparse.Namespace, cam_dir: Path | None, used_stems: set[str],
    workspace: Any, read: Any, result: Any, position: int, run_warnings: list[str], refused_all: Any,
    no_models_warning: Any,
) -> tuple[dict[str, Any], bool]:
    """One input's finished JSON object (errors become objects) and whether it was fully done."""
    try:
        obj, done = _analyze_one(engine, path_text, args, cam_dir, used_stems, workspace, read, result)
    except CXRError as exc:
        obj, done = {"file": path_text, "status": "error", "error": exc.to_dict()}, False
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        log.error("internal error on input %d: %s: %s", position + 1, type(exc).__name__, exc)
        log.debug("details", exc_info=True)
        obj = {"file": path_text, "status": "error",
               "error": {"code": "internal_error", "message": f"Unexpected error ({type(exc).__name__}); see the log."}}
        done = False
    if run_warnings:  # refusals first: they explain any "no models" warning after them
        kept = [w for w in obj.get("warnings", []) if refused_all is None or w != no_models_warning]
        obj["warnings"] = run_warnings + kept
    if refused_all is not None and obj.get("status") == "ok":
        obj["status"] = "error"
        obj["error"] = dict(refused_all)
    obj, finite = _finite_result(obj)
    return obj, done and finite


def refusal_error(engine: "InferenceEngine") -> dict[str, str] | None:
    """The error every result carries when bundles were found but every one was refused; else ``None``."""
    if engine.bundles or not engine.load_errors:
        return None
    reasons = "; ".join(f"{path.name}: {msg}" for path, msg in engine.load_errors)
    n = len(engine.load_errors)
    return {
        "code": "models_refused",
        "message": f"Every model bundle found ({n}) was refused, so no finding was scored "
        f"(only the image checks ran). {reasons}",
    }


def export_corrections_main(argv: list[str]) -> int:
    """``cxr-viewer export-corrections --out site.csv``: the stored corrections as a trainer manifest."""
    p = argparse.ArgumentParser(prog="cxr-viewer export-corrections",
                                description="Write the reader's stored corrections as a cxr-train manifest "
                                "(image, patient_id, one column per finding; blank = unknown).")
    p.add_argument("--out", required=True, metavar="CSV")
    p.add_argument("--store", metavar="DIR", help="corrections folder (default: the user's)")
    p.add_argument("--label", action="append", metavar="FINDING", help="only these findings (repeatable)")
    p.add_argument("--dataset", default="site", help="value of the manifest's dataset column")
    p.add_argument("--study-root", action="append", metavar="DIR",
                   help="the study folders the corrected films lie in (repeatable): a correction naming a file "
                   "outside them is left out")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    from cxr_viewer.core.corrections import CorrectionStore

    try:
        summary = CorrectionStore(args.store).export_manifest(args.out, dataset=args.dataset, labels=args.label,
                                                              roots=args.study_root or ())
    except CXRError as exc:
        print(f"cxr-viewer export-corrections: {exc.message}", file=sys.stderr)
        return EXIT_FAILURES
    print(dumps(summary))
    return EXIT_OK


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
    from cxr_viewer.core.models.bundle import find_bundles

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
            bundle = engine.load(info.path)
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
