"""Prove a frozen build works and measure it: ``python packaging/check_bundle.py dist/cxr-viewer``.

Every run of the frozen executable gets a bare environment (``PATH=/usr/bin:/bin``,
a fresh HOME, no PYTHONPATH/PYTHONHOME, no virtual environment), so nothing from
the build machine's Python can help it. Checks, in order:

1. size on disk, the largest parts, and that no torch/training package slipped in;
2. ``--self-test``: every shipped bundle's checksum, ONNX export hashes and golden scores;
3. ``analyze`` of the shipped samples (JPEG-baseline DICOM, PNG) plus, when the
   shared data is present, a JPEG 2000 DICOM (decoder plugins), with a heatmap; with a
   segmentation bundle shipped, ``analyze --report`` writing one mask per sentence;
4. ``--screenshot`` of the real main window with the sample loaded and analysed;
5. launch-to-usable-window time under Xvfb (``packaging/entry.py``'s probe), against the
   same measurement of the unbundled app (with torch) in this run as the baseline.

Prints a report and exits non-zero when any check fails; ``--json`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torchvision", "timm", "transformers", "lightning", "pytorch_lightning",
             "segmentation_models_pytorch", "pytorch_grad_cam", "nvidia", "triton", "trainer", "cv2")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "XDG_RUNTIME_DIR": str(home / "run"),
           "XDG_CACHE_HOME": str(home / "cache"), "XDG_DATA_HOME": str(home / "data"),
           "XDG_CONFIG_HOME": str(home / "config")}
    (home / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}"
    return {"cmd": " ".join(cmd[1:]), "rc": rc, "seconds": round(time.perf_counter() - t0, 2), "output": out}


def size_report(dist: Path) -> dict[str, Any]:
    parts: dict[str, int] = {}
    total = files = 0
    internal = dist / "_internal"
    for p in dist.rglob("*"):
        if p.is_file() and not p.is_symlink():
            n = p.stat().st_size
            total += n
            files += 1
            rel = p.relative_to(internal) if internal in p.parents else p.relative_to(dist)
            key = "/".join(rel.parts[:3]) if rel.parts[0] == "resources" else rel.parts[0]
            parts[key] = parts.get(key, 0) + n
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:15]
    tops = {p.split("/")[0].split(".")[0].split("-")[0] for p in parts}
    return {"bytes": total, "mb": round(total / 2**20, 1), "files": files,
            "largest_mb": {k: round(v / 2**20, 1) for k, v in top},
            "forbidden_present": sorted(t for t in tops if t in FORBIDDEN)}


def startup(cmd: list[str], env: dict[str, str], cwd: Path, repeats: int) -> dict[str, Any]:
    """Median wall time from process start to the probe's STARTUP_READY line (Xvfb display)."""
    times: list[float] = []
    inner: list[float] = []
    last = ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - t0
        last = p.stdout + p.stderr
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("STARTUP_READY")), None)
        if p.returncode != 0 or line is None:
            return {"ok": False, "output": last[-2000:]}
        times.append(wall)
        inner.append(float(line.split()[1]))
    return {"ok": True, "wall_s_median": round(statistics.median(times), 2), "wall_s": [round(t, 2) for t in times],
            "in_process_s_median": round(statistics.median(inner), 2)}


def _xvfb() -> tuple[subprocess.Popen[bytes] | None, str]:
    if not shutil.which("Xvfb"):
        return None, ""
    for n in range(91, 120):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(50):
                if Path(f"/tmp/.X11-unix/X{n}").exists():
                    return proc, f":{n}"
                time.sleep(0.1)
            proc.terminate()
    return None, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Check and measure a frozen cxr-viewer build.")
    ap.add_argument("dist", type=Path, help="the one-folder build, e.g. dist/cxr-viewer")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--repeats", type=int, default=3, help="start-up measurements per variant (median)")
    ap.add_argument("--no-baseline", action="store_true", help="skip timing the unbundled app")
    args = ap.parse_args(argv)
    dist = args.dist.resolve()
    exe = dist / "cxr-viewer"
    if not exe.is_file():
        print(f"no executable at {exe}; build first (packaging/build.sh)")
        return 2
    res = dist / "_internal" / "resources"
    report: dict[str, Any] = {"dist": str(dist)}
    ok = True
    with tempfile.TemporaryDirectory(prefix="cxr-check-") as tmp_s:
        tmp = Path(tmp_s)
        env = _env(tmp / "home", QT_QPA_PLATFORM="offscreen")
        report["size"] = size = size_report(dist)
        print(f"size: {size['mb']} MB in {size['files']} files; largest: "
              + ", ".join(f"{k} {v}" for k, v in list(size["largest_mb"].items())[:8]))
        if size["forbidden_present"]:
            ok = False
            print(f"FAIL  training/torch packages inside the app: {size['forbidden_present']}")

        st = _run([str(exe), "--self-test"], env, 900, tmp)
        report["self_test"] = st
        print(f"\n$ cxr-viewer --self-test   (rc {st['rc']}, {st['seconds']} s)\n{st['output'].strip()}")
        ok &= st["rc"] == 0

        inputs = [res / "samples" / "siim_cr_chest.dcm", res / "samples" / "nih_chest.png"]
        j2k = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data")) / "dicom" / "pydicom-data_RG1_J2KI.dcm"
        if j2k.is_file():
            inputs.append(j2k)
        label = None
        has_segmenter = False
        for mdir in sorted((res / "models").iterdir()) if (res / "models").is_dir() else []:
            man = json.loads((mdir / "manifest.json").read_text())
            has_segmenter |= man.get("task") == "text_segmentation"
            if label is None and man.get("labels") and man.get("task") in ("multilabel", "binary", "multiclass"):
                label = man["labels"][0]
        cmd = [str(exe), "analyze", *map(str, inputs), "--json", str(tmp / "analysis.json"), "--cam-out", str(tmp)]
        if label:
            cmd += ["--cam", label]
        an = _run(cmd, env, 900, tmp)
        results = json.loads((tmp / "analysis.json").read_text()) if (tmp / "analysis.json").is_file() else []
        summary = []
        for r in results:
            top = sorted(r.get("findings", []), key=lambda f: -f["score"])[:3]
            summary.append({"file": Path(r["file"]).name, "status": r.get("status"),
                            "backend": r.get("backend"), "top": [(f["label"], f["score"]) for f in top],
                            "cam": (r.get("cam") or {}).get("path") or (r.get("cam") or {}).get("error")})
        an_ok = an["rc"] == 0 and len(results) == len(inputs) and all(
            r.get("status") == "ok" and r.get("findings") for r in results)
        report["analyze"] = {"rc": an["rc"], "seconds": an["seconds"], "results": summary,
                             "output": an["output"][-3000:]}
        print(f"\n$ cxr-viewer analyze {' '.join(p.name for p in inputs)} --cam {label}   "
              f"(rc {an['rc']}, {an['seconds']} s)")
        for s in summary:
            print(f"  {s['file']}: {s['status']} via {s['backend']}; top {s['top']}; heatmap {s['cam']}")
        if not an_ok:
            print(an["output"][-3000:])
        ok &= an_ok

        if has_segmenter:
            report_text = "FINDINGS: Opacity in the right lower lobe. Small left pleural effusion. No pneumothorax."
            mcmd = [str(exe), "analyze", str(inputs[1]), "--json", str(tmp / "masks.json"),
                    "--report", report_text, "--mask-out", str(tmp / "masks")]
            ma = _run(mcmd, env, 900, tmp)
            mres = json.loads((tmp / "masks.json").read_text()) if (tmp / "masks.json").is_file() else [{}]
            masks = mres[0].get("masks") or []
            m_ok = ma["rc"] == 0 and len(masks) == 3 and all(Path(m["path"]).is_file() for m in masks)
            report["report_masks"] = {"rc": ma["rc"], "seconds": ma["seconds"],
                                      "masks": [{k: m.get(k) for k in ("text", "area_fraction")} for m in masks]}
            print(f"\n$ cxr-viewer analyze {inputs[1].name} --report '{report_text}' --mask-out DIR   "
                  f"(rc {ma['rc']}, {ma['seconds']} s)")
            for m in masks:
                print(f"  mask {Path(m['path']).name}: {m['area_fraction']:.3f} of the image for {m['text']!r}")
            if not m_ok:
                print(ma["output"][-3000:])
            ok &= m_ok

        shot = tmp / "screenshot.png"
        genv = dict(env, CXR_VIEWER_GUI_CHECK="1")
        sc = _run([str(exe), "--screenshot", str(shot), str(inputs[0])], genv, 900, tmp)
        gui = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in sc["output"].splitlines()
               if ln.startswith(("GUI_FINDINGS ", "GUI_ERROR "))}
        n_findings = int(gui.get("GUI_FINDINGS", "0").split()[0] or 0)
        report["screenshot"] = {"rc": sc["rc"], "seconds": sc["seconds"], "gui": gui,
                                "bytes": shot.stat().st_size if shot.exists() else 0}
        print(f"\n$ cxr-viewer --screenshot shot.png {inputs[0].name}   (rc {sc['rc']}, {sc['seconds']} s, "
              f"{report['screenshot']['bytes']} bytes)\n  window findings: {gui.get('GUI_FINDINGS')}; "
              f"window error: {gui.get('GUI_ERROR')}")
        gui_ok = sc["rc"] == 0 and shot.exists() and (n_findings > 0 or label is None) and gui.get("GUI_ERROR") == "None"
        if not gui_ok:
            print(sc["output"][-3000:])
        if args.json and shot.exists():
            shutil.copyfile(shot, args.json.with_suffix(".png"))
        ok &= gui_ok

        xvfb, display = _xvfb()
        if xvfb is None:
            print("\nstart-up: Xvfb not available, not measured")
        else:
            try:
                genv = _env(tmp / "home", DISPLAY=display, CXR_VIEWER_STARTUP_PROBE="1")
                frozen = startup([str(exe)], genv, tmp, args.repeats)
                report["startup_frozen"] = frozen
                line = f"\nstart-up to usable window (Xvfb, median of {args.repeats}): frozen "
                line += f"{frozen.get('wall_s_median')} s" if frozen["ok"] else f"FAILED\n{frozen['output']}"
                ok &= frozen["ok"]
                if not args.no_baseline:
                    benv = dict(os.environ, DISPLAY=display, CXR_VIEWER_STARTUP_PROBE="1", HOME=str(tmp / "home"))
                    benv.pop("QT_QPA_PLATFORM", None)
                    base = startup([sys.executable, str(REPO / "packaging" / "entry.py")], benv, tmp, args.repeats)
                    report["startup_unbundled"] = base
                    if base["ok"] and frozen["ok"]:
                        line += (f"; unbundled python (torch installed) {base['wall_s_median']} s; "
                                 f"ratio frozen/unbundled {frozen['wall_s_median'] / base['wall_s_median']:.2f}")
                print(line)
            finally:
                xvfb.terminate()
                xvfb.wait(10)
    report["ok"] = bool(ok)
    print(f"\n{'ALL CHECKS PASSED' if ok else 'SOME CHECKS FAILED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
