"""Memory ceilings: peak RSS of opening and of analysing very large accepted inputs.

For each input (10000 x 10000 8-bit PNG, 16-bit PNG, float32 TIFF, and a 200 MB native
16-bit DICOM) a fresh process imports everything first (its RSS is the baseline), then
reads the file (``read_image``) or reads and analyses it (a tiny classifier through the
real engine). Figures are peak RSS above that baseline, and their ratio to the decoded
image (the stored samples at their own bit depth), the figure the reader should keep
within about 3x; any accepted input should stay within 2 GB.

    nice -n 10 python benchmarks/bench_memory.py [--side 10000] [--work DIR] [--skip-analyse]
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

_CHILD = r"""
import json, resource, sys


def peak_kb(reset=False):
    # ru_maxrss of a forked child starts at its parent's high-water mark: use the kernel's VmHWM, reset first
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        with open("/proc/self/status") as fh:
            return int(next(line for line in fh if line.startswith("VmHWM")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


stage, path, models = sys.argv[1], sys.argv[2], sys.argv[3]
from cxr_viewer.core.io import read_image
import numpy, PIL.Image, pydicom, tifffile  # noqa: F401
engine = None
if stage == "analyse":
    from cxr_viewer.core.inference.engine import InferenceEngine
    engine = InferenceEngine.from_dirs([models], device="cpu", backend="torch")
    small = read_image(sys.argv[4]); engine.analyze(small)  # warm every lazy import and buffer
base = peak_kb(reset=True)
rec = read_image(path)
if engine is not None:
    engine.analyze(rec)
peak = peak_kb()
print(json.dumps({"base_kb": base, "peak_kb": peak, "shape": list(rec.shape)}))
"""


def make_inputs(work: Path, side: int) -> dict[str, tuple[Path, int]]:
    """The large inputs (built once, cached in ``work``) and their decoded sizes in bytes."""
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    smooth = (np.sin(xx / 97.0) + np.cos(yy / 131.0) + 2.0) / 4.0  # in [0, 1]; compresses well
    out: dict[str, tuple[Path, int]] = {}
    f = work / f"gray8_{side}.png"
    if not f.exists():
        from PIL import Image

        Image.fromarray((smooth * 255).astype(np.uint8)).save(f, compress_level=1)
    out["PNG 8-bit"] = (f, side * side)
    f = work / f"gray16_{side}.png"
    if not f.exists():
        from PIL import Image

        Image.fromarray((smooth * 4095).astype(np.uint16)).save(f, compress_level=1)
    out["PNG 16-bit"] = (f, side * side * 2)
    f = work / f"float32_{side}.tif"
    if not f.exists():
        import tifffile

        tifffile.imwrite(f, smooth * 1000.0 - 200.0)
    out["TIFF float32"] = (f, side * side * 4)
    f = work / f"native16_{side}.dcm"
    if not f.exists():
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Modality = "CR"
        ds.set_pixel_data((smooth * 4095).astype(np.uint16), "MONOCHROME2", 12, generate_instance_uid=False)
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.save_as(f, enforce_file_format=True)
    out["DICOM 16-bit"] = (f, side * side * 2)
    del smooth, yy, xx
    return out


def _tiny_models(work: Path) -> tuple[Path, Path]:
    from PIL import Image

    from cxr_viewer.core.models.testing import make_untrained_bundle

    models = work / "models"
    if not (models / "tiny" / "manifest.json").exists():
        make_untrained_bundle(models / "tiny", name="tiny", labels=["Effusion"], backbone="resnet10t", size=(64, 64))
    small = work / "small.png"
    if not small.exists():
        Image.new("L", (256, 256), 128).save(small)
    return models, small


def measure(stage: str, path: Path, models: Path, small: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, stage, str(path), str(models), str(small)],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=10000)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench-memory")
    p.add_argument("--skip-analyse", action="store_true")
    args = p.parse_args(argv)
    inputs = make_inputs(args.work, args.side)
    models, small = _tiny_models(args.work)
    print("decoded = the stored samples at their bit depth; the record itself holds float32 pixels (side^2 x 4 B)")
    print(f"{'input':14s} {'file MB':>8s} {'decoded MB':>10s} {'read MB':>8s} {'x decoded':>9s} "
          f"{'analyse MB':>10s} {'x decoded':>9s}")
    for name, (path, decoded) in inputs.items():
        row = [f"{name:14s}", f"{path.stat().st_size / 1e6:8.1f}", f"{decoded / 1e6:10.1f}"]
        for stage in ("read", "analyse"):
            if stage == "analyse" and args.skip_analyse:
                row += [f"{'-':>10s}", f"{'-':>9s}"]
                continue
            r = measure(stage, path, models, small)
            if "error" in r:
                row += [f"{'error':>8s}", f"{r['error'][:40]:>9s}"]
                continue
            grown = max(r["peak_kb"] - r["base_kb"], 0) * 1024
            width = 8 if stage == "read" else 10
            row += [f"{grown / 1e6:{width}.0f}", f"{grown / decoded:9.2f}"]
        print(" ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
