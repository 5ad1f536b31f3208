"""How long does the viewer take to go away after Ctrl+Q?

Runs the real main window (under the current display; use ``xvfb-run -a`` on a
server) in a child process, opens IMAGE, waits WAIT seconds (so a heatmap or a
warm-up may still be running), triggers the Quit action and measures, from the
parent, the time until the process has exited. Two ways out, in the same run:

- join:      ``sys.exit`` after the event loop: Python and Qt's thread pool wait for
             any model call still in flight (the baseline, the old behaviour);
- exit_now:  what ``cxr-viewer`` does now (``cxr_viewer.qt.app.exit_now``): settings are
             written in closeEvent, logs flushed, the process ends at once.

    xvfb-run -a python benchmarks/bench_quit.py [IMAGE] [--wait 2 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import sys, time
from PySide6.QtCore import QTimer
from cxr_viewer.qt.app import _application, exit_now
app = _application()
from cxr_viewer.qt.app import compose
w = compose(persist=False)
w.resize(1400, 900); w.show(); w.open_paths([sys.argv[1]])
def quit_now():
    print(f"QUIT {time.time():.4f}", flush=True)
    w.action_map["quit"].trigger()
QTimer.singleShot(int(float(sys.argv[2]) * 1000), quit_now)
rc = app.exec()
if sys.argv[3] == "join":
    sys.exit(rc)
exit_now(rc)
"""


def run(image: Path, wait: float, how: str) -> float:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(image), str(wait), how],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    quit_at = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("QUIT "):
            quit_at = float(line.split()[1])
    proc.wait()
    end = time.time()
    return float("nan") if quit_at is None else end - quit_at


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", nargs="?", default=str(root / "resources" / "samples" / "siim_cr_chest.dcm"))
    p.add_argument("--wait", nargs="+", type=float, default=[2.0, 20.0], help="seconds after opening before Ctrl+Q")
    args = p.parse_args()
    print(f"{'wait s':>7} {'join s':>8} {'exit_now s':>11} {'ratio':>7}")
    for wait in args.wait:
        joined = run(Path(args.image), wait, "join")
        now = run(Path(args.image), wait, "exit_now")
        print(f"{wait:7.1f} {joined:8.2f} {now:11.2f} {joined / now if now else float('nan'):7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
