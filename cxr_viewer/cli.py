"""Command line front door.

``cxr-viewer [FILES]``            open the viewer (or, with no display, run headless: see below)
``cxr-viewer --screenshot OUT FILE``  render the real main window offscreen and exit
``cxr-viewer analyze FILES --json OUT``  headless analysis as JSON
``cxr-viewer --self-test``        check every enabled model bundle against its golden images
``cxr-viewer worklist DIR --csv OUT``  analyse a folder through the result store, sorted by abnormality
``cxr-viewer listen --port N --ae-title T --out DIR``  receive studies by DICOM C-STORE
``cxr-viewer pacs echo|find|retrieve|send``  query, retrieve from and send results to a PACS
``cxr-viewer export-corrections --out site.csv``  the reader's corrections as a trainer manifest

With no display (Linux without DISPLAY/WAYLAND_DISPLAY, or ``QT_QPA_PLATFORM=offscreen``)
the plain form does not try to open a window: it writes ``screenshot.png`` and
``analysis.json`` for the given files (the bundled sample study when none are given)
into ``--out`` (default ``cxr-viewer-output``).

Heavy imports (Qt, torch) happen inside the sub-commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def has_display() -> bool:
    """True when a real window can be shown."""
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in {"offscreen", "minimal", "vnc"}:
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _expand(paths: list[str]) -> list[str]:
    """The image files to analyse: files as given, a folder's readable images in the order it lists them."""
    from cxr_viewer.core.io.scan import iter_image_files

    files: list[str] = []
    for p in paths:
        if Path(p).is_dir():
            found, _skipped = iter_image_files(p)
            files += [str(f) for f in sorted(found)]
        else:
            files.append(p)
    return files


def headless_main(args: argparse.Namespace) -> int:
    """No display: screenshot of the real window plus the analysis JSON, for the same arguments the
    window takes (parsed by the one parser, :func:`cxr_viewer.qt.app.build_parser`)."""
    from cxr_viewer.core.paths import resources_dir

    out = args.out or Path("cxr-viewer-output")
    if not args.paths:
        sample = resources_dir() / "samples" / "siim_cr_chest.dcm"
        args.paths = [str(sample)]
        print(f"No file given: using the bundled sample study {sample}")
    files = _expand(args.paths)
    if not files:
        print(f"cxr-viewer: no images found in {', '.join(args.paths)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "screenshot.png"
    report = out / "analysis.json"
    print("No display found: running headless (use a desktop session to open the window).")

    from cxr_viewer.headless import analyze_main
    from cxr_viewer.qt.app import gui_main

    models = ["--models", str(args.models)] if args.models else []
    rc_analyze = analyze_main([*files, "--json", str(report), *models])
    args.screenshot = shot
    rc_shot = gui_main(args)
    print(f"Screenshot: {shot}\nAnalysis JSON: {report} ({len(files)} image(s))")
    return max(rc_analyze, rc_shot)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if argv and argv[0] == "analyze":
        from cxr_viewer.headless import analyze_main

        return analyze_main(argv[1:])
    if argv and argv[0] in ("worklist", "listen", "pacs"):
        from cxr_viewer import netcli

        return {"worklist": netcli.worklist_main, "listen": netcli.listen_main, "pacs": netcli.pacs_main}[argv[0]](argv[1:])

    if argv and argv[0] == "export-corrections":
        from cxr_viewer.headless import export_corrections_main

        return export_corrections_main(argv[1:])
    if "--self-test" in argv:
        from cxr_viewer.headless import self_test_main

        return self_test_main([a for a in argv if a != "--self-test"])
    from cxr_viewer.qt.app import build_parser, gui_main

    args = build_parser().parse_args(argv)  # one parser for the window, --screenshot and the headless form
    if args.screenshot is None and not has_display():
        return headless_main(args)
    return gui_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
