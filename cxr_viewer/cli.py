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


def _pop_option(argv: list[str], name: str, default: str) -> str:
    if name in argv:
        i = argv.index(name)
        if i + 1 >= len(argv):
            raise SystemExit(f"cxr-viewer: {name} needs a value")
        value = argv[i + 1]
        del argv[i : i + 2]
        return value
    return default


def headless_main(argv: list[str]) -> int:
    """No display: screenshot of the real window plus the analysis JSON, for each run."""
    from cxr_viewer.core.paths import resources_dir

    out = Path(_pop_option(argv, "--out", "cxr-viewer-output"))
    files = [a for a in argv if not a.startswith("-")]
    passthrough = [a for a in argv if a.startswith("-")]
    if not files:
        sample = resources_dir() / "samples" / "siim_cr_chest.dcm"
        files = [str(sample)]
        print(f"No file given: using the bundled sample study {sample}")
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "screenshot.png"
    report = out / "analysis.json"
    print("No display found: running headless (use a desktop session to open the window).")

    from cxr_viewer.headless import analyze_main
    from cxr_viewer.qt.app import gui_main

    rc_analyze = analyze_main([*files, "--json", str(report)])
    rc_shot = gui_main([*passthrough, "--screenshot", str(shot), files[0]])
    print(f"Screenshot: {shot}\nAnalysis JSON: {report}")
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
    wants_help = any(a in {"-h", "--help"} for a in argv)
    if not wants_help and "--screenshot" not in argv and not has_display():
        return headless_main(argv)
    from cxr_viewer.qt.app import gui_main

    return gui_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
