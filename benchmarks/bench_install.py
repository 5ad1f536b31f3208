"""What the README's quick start costs on a fresh machine: install time and size, then first run.

``python benchmarks/bench_install.py [--baseline] [--keep]``

Creates a new virtual environment, times ``pip install -e .`` (no pip cache: downloads count) (the README's first command,
torch-free), measures the environment's size on disk, checks that no torch or CUDA wheel came
in, then times the viewer's headless run on the bundled sample (screenshot + JSON). With
``--baseline`` it does the same in a second environment for ``pip install -e ".[torch]"`` (what
every install pulled before torch became an extra), so both appear side by side in one run.
Goals (issue 11): quick start <= 90 s and <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "resources" / "samples" / "siim_cr_chest.dcm"


def _size_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 2**20


def measure(target: str, work: Path) -> dict[str, object]:
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    t0 = time.perf_counter()
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-cache-dir", "-e", target], cwd=REPO, capture_output=True, text=True)
    install_s = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"pip install -e {target} failed:\n{p.stderr[-3000:]}")
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            check=True).stdout
    names = sorted(d["name"].lower() for d in json.loads(listed))
    heavy = [n for n in names if n in ("torch", "torchvision", "triton") or n.startswith("nvidia-")]
    run_dir = work / "run"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", HOME=str(work))
    t0 = time.perf_counter()
    r = subprocess.run([str(env_dir / "bin" / "cxr-viewer"), str(SAMPLE)], cwd=run_dir, env=env,
                       capture_output=True, text=True)
    run_s = time.perf_counter() - t0
    out = run_dir / "cxr-viewer-output" / "analysis.json"
    ok = r.returncode == 0 and out.is_file()
    findings = 0
    if ok:
        res = json.loads(out.read_text())
        res = res[0] if isinstance(res, list) else res
        findings = len(res.get("findings", []))
    return {"target": target, "install_s": round(install_s, 1), "size_mb": round(_size_mb(env_dir)),
            "packages": len(names), "torch_or_cuda": heavy, "first_run_s": round(run_s, 1),
            "first_run_ok": ok, "findings": findings}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", action="store_true", help='also measure pip install -e ".[torch]"')
    ap.add_argument("--keep", action="store_true", help="keep the environments (printed)")
    args = ap.parse_args(argv)
    rows = []
    for target in ["."] + ([".[torch]"] if args.baseline else []):
        work = Path(tempfile.mkdtemp(prefix="cxr-install-"))
        try:
            rows.append(measure(target, work))
        finally:
            if args.keep:
                print("kept", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    print(f"{'install':<24}{'time s':>8}{'size MB':>9}{'pkgs':>6}{'first run s':>13}  torch/CUDA wheels")
    for r in rows:
        print(f"pip install -e {r['target']:<9}{r['install_s']:>8}{r['size_mb']:>9}{r['packages']:>6}"
              f"{r['first_run_s']:>13}  {', '.join(r['torch_or_cuda']) or 'none'}"
              f"{'' if r['first_run_ok'] else '  (first run FAILED)'}")
    q = rows[0]
    print(f"goal: quick start <= 90 s and <= 1536 MB -> {q['install_s']} s, {q['size_mb']} MB: "
          f"{'met' if q['install_s'] <= 90 and q['size_mb'] <= 1536 and not q['torch_or_cuda'] else 'NOT met'}")
    if len(rows) > 1:
        b = rows[1]
        print(f"ratio vs the torch install: time {q['install_s'] / max(b['install_s'], 1e-9):.2f}x, "
              f"size {q['size_mb'] / max(b['size_mb'], 1):.2f}x")
    print(json.dumps(rows))
    return 0 if all(r["first_run_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
