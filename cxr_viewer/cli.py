"""Command line front door: ``cxr-viewer [FILES]``, ``--screenshot``, ``analyze``, ``--self-test``.

Heavy imports (Qt, torch) happen inside the sub-commands so ``--help`` is instant.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "analyze":
        from cxr_viewer.headless import analyze_main

        return analyze_main(argv[1:])
    if "--self-test" in argv:
        from cxr_viewer.headless import self_test_main

        return self_test_main([a for a in argv if a != "--self-test"])
    from cxr_viewer.qt.app import gui_main

    return gui_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
