"""One model service per window: peak RSS of the window after opening a worklist of N films.

Each figure comes from a fresh process running the real main window offscreen, on the
shipped models (or ``--models``):

1. baseline: the window with one film opened and analysed by the viewer (its models loaded);
   the kernel's high-water mark (VmHWM) is reset here;
2. the worklist opens a folder of N films (half 64x64 PNG, half CR DICOM), every film is
   scored into its result store, and one listed study is opened in the viewer again;
3. peak: VmHWM after that. The figure is peak RSS over the baseline, and the ratio.

Two modes, run in the same invocation so the comparison holds on this machine:

- ``shared`` (the window as built): the worklist scores on the window's one model service;
- ``separate`` (the window as it was before the model service): the worklist builds and keeps
  its own engine holding the same models, as each feature used to.

Engine constructions in the process are counted too.

    nice -n 10 python benchmarks/bench_model_service.py [--studies 200] [--models DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_CHILD = r"""
import json, os, sys, time
from pathlib import Path

os.environ["QT_QPA_PLATFORM"] = "offscreen"
mode, folder, models, first, ini = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]


def hwm_kb(reset=False):
    if reset:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith("VmHWM")).split()[1])


from cxr_viewer.core.inference.engine import InferenceEngine

built = []
_init = InferenceEngine.__init__


def spy(self, *a, **k):
    built.append(1)
    _init(self, *a, **k)


InferenceEngine.__init__ = spy
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from cxr_viewer.qt.app import compose

app = QApplication.instance() or QApplication([])
win = compose(settings=QSettings(ini, QSettings.Format.IniFormat), interactive=False, persist=False,
             models_dir=models)
win.show()


def wait(cond, timeout=3600.0):
    end = time.monotonic() + timeout
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() > end:
            raise SystemExit("timed out")


win.open_file(first)
wait(lambda: win.session.record is not None and win.analysis.state.status == "done" and not win.session.busy)
controller = win.worklist_panel.controller
if mode == "separate":  # the worklist with its own engine, as before the model service
    wl = controller.worklist
    wl.service, wl._own_engine, wl._config_source = None, True, None
    win.models.use_results(None)
base = hwm_kb(reset=True)
t0 = time.perf_counter()
controller.open_folder(folder)
wait(lambda: controller.running)
wait(lambda: not controller.running)
listed = win.worklist_panel.model.rowCount()
seconds = time.perf_counter() - t0
entry = win.worklist_panel.model.entry_at(listed // 2)
win.open_file(entry.path)
wait(lambda: win.session.record is not None and win.session.record.source == entry.path
     and win.analysis.state.status == "done" and not win.session.busy)
peak = hwm_kb()
print(json.dumps({"mode": mode, "base_kb": base, "peak_kb": peak, "listed": listed, "engines": len(built),
                  "worklist_s": seconds, "row_from_store": bool(win.analysis.state.judged.result.cached)}))
win.close()
os._exit(0)
"""


def run(mode: str, folder: Path, models: Path, first: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CXR_VIEWER_WORKLIST_DB": str(work / f"{mode}.sqlite"), "XDG_DATA_HOME": str(work / "data")}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(folder), str(models), str(first),
                          str(work / f"{mode}.ini")], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_worklist import build_studies
    from cxr_viewer.core.paths import default_models_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--models", type=Path, default=default_models_dir())
    a = p.parse_args(argv)
    first = REPO / "resources" / "samples" / "nih_chest.png"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "studies"
        folder.mkdir()
        build_studies(folder, a.studies)
        rows = {mode: run(mode, folder, a.models, first, work) for mode in ("shared", "separate")}
    print(f"window peak RSS after a worklist of {a.studies} films ({a.models.name}), over the window before it:")
    for mode, r in rows.items():
        base, peak = r["base_kb"] / 1024, r["peak_kb"] / 1024
        print(f"  {mode:8s}: baseline {base:7.0f} MB  peak {peak:7.0f} MB  (+{peak - base:6.0f} MB, "
              f"x{peak / base:.2f})  engines built {r['engines']}  listed {r['listed']} in {r['worklist_s']:.0f} s  "
              f"row opened from the store: {r['row_from_store']}")
    s, o = rows["shared"], rows["separate"]
    grow_s, grow_o = (s["peak_kb"] - s["base_kb"]) / 1024, (o["peak_kb"] - o["base_kb"]) / 1024
    print(f"shared / separate peak: {s['peak_kb'] / o['peak_kb']:.2f}; "
          f"growth over baseline {grow_s:.0f} MB vs {grow_o:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
