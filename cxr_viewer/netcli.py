"""Headless worklist and DICOM network commands (no Qt).

``cxr-viewer worklist DIR --csv OUT``          analyse a folder through the result store, write the sorted table
``cxr-viewer listen --port N --ae-title T --out DIR``   receive studies by C-STORE (Ctrl+C stops)
``cxr-viewer pacs echo|find|retrieve|send ...``          talk to a configured PACS

Bad input and network failures print one clear line and return a non-zero status.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cxr_viewer.core.errors import CXRError

log = logging.getLogger("cxr_viewer.netcli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", action="append", metavar="DIR", help="add a folder of model bundles (repeatable)")
    p.add_argument("--no-default-models", action="store_true", help="use only the --models folders")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])


# --------------------------------------------------------------------------- worklist
def worklist_main(argv: list[str]) -> int:
    from cxr_viewer.headless import model_dirs, threshold_arg

    p = argparse.ArgumentParser(
        prog="cxr-viewer worklist",
        description="Analyse every image under DIR (results kept in a local store keyed by the image's analysis key (its pixels, window "
        "and the header fields the analysis reads) and model sha256, so a second run recomputes nothing) and write the worklist, highest abnormality first. "
        "The abnormality is the score of a finding named 'Abnormal' when a model has one, otherwise the "
        "highest finding score; the CSV header says which. With --site-profile the profile's model's findings "
        "carry its calibrated scores (and thresholds), the order follows them, and the header names the profile.",
    )
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--csv", required=True, metavar="OUT", help="CSV file to write, or - for standard output")
    p.add_argument("--db", metavar="FILE", help="result store (default: CXR_VIEWER_WORKLIST_DB or the user cache)")
    p.add_argument("--hide-patient", action="store_true", help="leave the patient column out")
    p.add_argument("--site-profile", metavar="PROFILE", help="site calibration profile (a file, or a name in the "
                   "profiles folder): its calibrated scores and thresholds replace the bundle's, as in analyze")
    threshold_arg(p)
    _model_args(p)
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"cxr-viewer worklist: {folder} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    from cxr_viewer.core.worklist import ResultStore, Worklist, default_store_path, worklist_table

    t0 = time.perf_counter()
    try:
        store = ResultStore(args.db or default_store_path())
    except CXRError as exc:  # another schema, another program's database, no database at all
        print(f"cxr-viewer worklist: {exc.message} (pass --db FILE)", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - sqlite3 raises several kinds
        print(f"cxr-viewer worklist: the result store cannot be opened ({exc}); pass --db FILE", file=sys.stderr)
        return EXIT_USAGE
    wl = Worklist(store, model_dirs=model_dirs(args), device=args.device, backend=args.backend)
    try:  # the reader's thresholds, judged with as analyze and the viewer judge
        from cxr_viewer.headless import cli_workspace, manifest_labels

        wl.user_thresholds = cli_workspace(None, args.threshold, manifest_labels(wl.model_dirs)).threshold
    except ValueError as exc:
        print(f"cxr-viewer worklist: {exc}", file=sys.stderr)
        store.close()
        return EXIT_USAGE
    if args.site_profile:
        from cxr_viewer.core.site.profile import load_profile

        try:
            wl.site_profile = load_profile(args.site_profile)
        except CXRError as exc:
            print(f"cxr-viewer worklist: {exc.message}", file=sys.stderr)
            store.close()
            return EXIT_USAGE
        problem, _stale = wl.site_status()  # refused like analyze: fitted to other weights, or its model is absent
        if problem:
            print(f"cxr-viewer worklist: {problem}", file=sys.stderr)
            store.close()
            return EXIT_USAGE
    try:
        entries = wl.open_folder(folder)
    except CXRError as exc:
        print(f"cxr-viewer worklist: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    header, rows = worklist_table(entries, basis=wl.basis, hide_patient=args.hide_patient)
    from cxr_viewer.core.csvio import write_csv_rows, write_csv_to

    if args.csv == "-":
        write_csv_to(sys.stdout, header, rows)
    else:
        write_csv_rows(args.csv, header, rows)
    computed = sum(1 for e in entries if e.computed)
    failed = sum(1 for e in entries if not e.ok)
    print(f"{len(entries)} image(s): {computed} analysed now, {len(entries) - computed - failed} from the store, "
          f"{failed} unreadable; sorted by abnormality ({wl.basis}) in {time.perf_counter() - t0:.2f} s",
          file=sys.stderr)
    if wl.site_profile is not None:
        print(f"site profile {wl.site_profile.id} applied to {wl.site_profile.bundle.get('name')}'s findings",
              file=sys.stderr)
    for msg in wl.load_errors:
        print(f"warning: model bundle skipped: {msg}", file=sys.stderr)
    store.close()
    return EXIT_OK if failed == 0 else EXIT_USAGE


# --------------------------------------------------------------------------- listen
def listen_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cxr-viewer listen",
                                description="Receive studies pushed by a modality or PACS (DICOM C-STORE SCP).")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default 11112)")
    p.add_argument("--ae-title", default="CXRVIEWER", help="our AE title (default CXRVIEWER)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder the received files are written to")
    p.add_argument("--bind", "--host", dest="host", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default 127.0.0.1, this computer only; 0.0.0.0 for every network)")
    p.add_argument("--allowed-ae", action="append", metavar="TITLE",
                   help="accept only these calling AE titles (repeatable or comma separated; default any)")
    p.add_argument("--max-size", type=float, default=256, metavar="MB",
                   help="refuse a dataset larger than this many megabytes (default 256)")
    p.add_argument("--max-associations", type=int, default=16, metavar="N",
                   help="associations served at once; more are refused until one ends (default 16)")
    p.add_argument("--acse-timeout", type=float, default=10.0, metavar="S",
                   help="close a connection that sends no association request within S seconds (default 10)")
    p.add_argument("--dimse-timeout", type=float, default=30.0, metavar="S", help="DIMSE timeout (default 30)")
    p.add_argument("--network-timeout", type=float, default=30.0, metavar="S",
                   help="close an association idle for S seconds (default 30)")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds (default: Ctrl+C)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    from cxr_viewer.core.pacs import LocalNode, StorageReceiver
    from cxr_viewer.core.pacs.receiver import ReceiverLimits, allowed_titles

    def stored(item) -> None:  # no patient data on the console: the UIDs and the path only
        print(f"received {item.path}", flush=True)

    if args.max_size <= 0 or args.max_associations < 1 or min(args.acse_timeout, args.dimse_timeout,
                                                                  args.network_timeout) <= 0:
        print("cxr-viewer listen: --max-size, --max-associations and the timeouts must be positive", file=sys.stderr)
        return EXIT_USAGE
    limits = ReceiverLimits(max_bytes=int(args.max_size * (1 << 20)), max_associations=args.max_associations,
                            acse_timeout=args.acse_timeout, dimse_timeout=args.dimse_timeout,
                            network_timeout=args.network_timeout, allowed_ae=allowed_titles(args.allowed_ae))
    try:
        rx = StorageReceiver(LocalNode(args.ae_title, args.port, args.host), args.out, on_stored=stored, limits=limits)
        rx.start()
    except CXRError as exc:
        print(f"cxr-viewer listen: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"listening as {rx.node.ae_title} on {args.host}:{rx.port}; files go to {Path(args.out).resolve()}",
          flush=True)
    try:
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        rx.stop()
    print(f"stopped; {rx.count} file(s) received, {rx.refused} refused", flush=True)
    return EXIT_OK


# --------------------------------------------------------------------------- pacs
def _send_results(args: argparse.Namespace, remote) -> int:
    """The headless analysis (same engine and models as ``analyze``), then the result objects to the PACS."""
    from cxr_viewer.core import pacs
    from cxr_viewer.core.export.record import annotations_beside
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.usecase import analyse
    from cxr_viewer.headless import command_workspace, model_dirs

    files = pacs.dicom_files(args.files)
    if not files:
        print("cxr-viewer pacs send-results: no DICOM files given", file=sys.stderr)
        return EXIT_USAGE
    engine = InferenceEngine.from_dirs(model_dirs(args), device=args.device, backend=args.backend)
    # the same judging as analyze and the viewer: the site profile, then the reader's thresholds
    workspace = command_workspace(engine, args, "pacs send-results")
    if workspace is None:
        return EXIT_USAGE
    segs = engine.bundles_for_task("text_segmentation")
    if args.report and not segs:
        print("cxr-viewer pacs send-results: --report needs a segmentation model; none is installed",
              file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    for i, f in enumerate(files, start=1):
        try:
            record = read_image(f)
            analysed = analyse(record, workspace, engine, report=args.report or None)  # the use case analyze runs
            if analysed.segmentation_error is not None:
                raise analysed.segmentation_error
            out = Path(args.out) / f"{i:03d}" if args.out else None
            try:
                annotations = annotations_beside(f, record)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                annotations = []
                print(f"{f.name}: the annotations saved beside it were not read ({exc})", file=sys.stderr)
            sent = pacs.send_results(remote, record, analysed.judged, masks=analysed.masks, out_dir=out,
                                     calling_ae=args.ae_title, timeout=args.timeout, annotations=annotations,
                                     report_text=args.report or "")
            print(f"{f.name}: {len(sent)} result object(s) stored on {remote.ae_title}")
        except (pacs.PacsConnectionLostError, pacs.PacsUnreachableError, pacs.PacsRefusedError):
            raise  # the PACS, not this file: stop here
        except CXRError as exc:
            failed += 1
            print(f"{f.name}: {exc.message}", file=sys.stderr)
    return EXIT_OK if failed == 0 else EXIT_FAILED


def _remote(args: argparse.Namespace):
    from cxr_viewer.core.pacs import RemoteNode

    return RemoteNode(args.host, args.port, args.called_ae)


def pacs_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cxr-viewer pacs", description="Query, retrieve from and send to a PACS.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", required=True)
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--called-ae", default="ORTHANC", help="the PACS's AE title")
        sp.add_argument("--ae-title", default="CXRVIEWER", help="our AE title")
        sp.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
        sp.add_argument("-v", "--verbose", action="count", default=0)

    common(sub.add_parser("echo", help="C-ECHO: is the PACS there and does it accept us?"))
    f = sub.add_parser("find", help="C-FIND at study level; prints one line per study")
    common(f)
    f.add_argument("--patient-id", default="")
    f.add_argument("--study-date", default="", help="YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    f.add_argument("--modality", default="", help="e.g. CR or DX (ModalitiesInStudy)")
    f.add_argument("--study-uid", default="")
    r = sub.add_parser("retrieve", help="C-MOVE a study to our receiver (or C-GET it with --get)")
    common(r)
    r.add_argument("study_uid")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--get", action="store_true", help="C-GET over the same association instead of C-MOVE")
    r.add_argument("--listen-port", type=int, default=0, help="port of our receiver for C-MOVE (0: any free)")
    s = sub.add_parser("send", help="C-STORE DICOM files (e.g. SR/SEG/SC results) to the PACS")
    common(s)
    s.add_argument("files", nargs="+", metavar="FILE_OR_DIR")
    sr = sub.add_parser("send-results", help="analyse DICOM images and C-STORE their SR, SEG, SC and PDF "
                        "to the PACS, filed under each image's own study")
    common(sr)
    sr.add_argument("files", nargs="+", metavar="FILE_OR_DIR")
    sr.add_argument("--report", metavar="TEXT", help="report text whose sentences become SEG segments")
    sr.add_argument("--out", metavar="DIR", help="also keep the written objects in this folder")
    sr.add_argument("--site-profile", metavar="PROFILE", help="site calibration profile (a file, or a name in the "
                    "profiles folder): findings are judged as analyze and the viewer judge them")
    from cxr_viewer.headless import threshold_arg

    threshold_arg(sr)
    _model_args(sr)
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    from cxr_viewer.core import pacs

    remote = _remote(args)
    try:
        if args.cmd == "echo":
            pacs.echo(remote, calling_ae=args.ae_title, timeout=args.timeout)
            print(f"{remote.ae_title} at {remote.host}:{remote.port} answered C-ECHO")
        elif args.cmd == "find":
            query = pacs.StudyQuery(patient_id=args.patient_id, study_date=args.study_date,
                                    modality=args.modality, study_uid=args.study_uid)
            for st in pacs.find_studies(remote, query, calling_ae=args.ae_title, timeout=args.timeout):
                print("\t".join([st.study_uid, st.study_date, st.modalities, str(st.instances or ""),
                                 st.description]))
        elif args.cmd == "retrieve":
            if args.get:
                got = pacs.get_study(remote, args.study_uid, args.out, calling_ae=args.ae_title, timeout=args.timeout)
            else:
                got = pacs.move_study(remote, args.study_uid, args.out, calling_ae=args.ae_title,
                                      listen_port=args.listen_port, timeout=args.timeout)
            print(f"{len(got)} file(s) retrieved into {args.out}")
        elif args.cmd == "send":
            files = pacs.dicom_files(args.files)
            sent = pacs.send_files(remote, files, calling_ae=args.ae_title, timeout=args.timeout)
            print(f"{len(sent)} of {len(files)} file(s) stored on {remote.ae_title}")
            if len(sent) != len(files):
                return EXIT_FAILED
        elif args.cmd == "send-results":
            return _send_results(args, remote)
    except CXRError as exc:
        print(f"cxr-viewer pacs {args.cmd}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
