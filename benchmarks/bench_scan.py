"""Folder scan speed: header-only scan vs reading every image's pixels, in the same run.

Builds a temporary folder of N copies of the SIIM CR DICOM (N patients, one study
each), then times ``scan_folder`` (headers only) against ``read_image`` on every file.

    python benchmarks/bench_scan.py [--files 500] [--pixel-files 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _source_dicom() -> Path:
    data = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data"))
    found = sorted((data / "dicom").glob("siim_pneumothorax_*.dcm"))
    return found[0] if found else REPO / "resources" / "samples" / "siim_cr_chest.dcm"


def build_folder(root: Path, n: int) -> None:
    """N distinct instances: patient, study, series and SOP UIDs differ per file."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(_source_dicom())
    for i in range(n):
        ds.PatientID = f"BENCH{i // 2:04d}"  # two studies per patient
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        sub = root / f"batch{i // 100}"
        sub.mkdir(exist_ok=True)
        ds.save_as(sub / f"IM{i:05d}")  # no extension, as PACS exports often are


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--pixel-files", type=int, default=100, help="files fully decoded for the baseline")
    args = parser.parse_args(argv)

    from cxr_viewer.core.io import read_header, read_image, scan_folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_folder(root, args.files)
        print(f"built {args.files} DICOM files ({sum(f.stat().st_size for f in root.rglob('*')) / 1e6:.1f} MB) "
              f"in {time.perf_counter() - t0:.1f} s")

        scan_folder(root)  # warm the OS file cache and imports so both sides read from memory
        t0 = time.perf_counter()
        result = scan_folder(root)
        t_scan = time.perf_counter() - t0
        assert result.instance_count == args.files, (result.instance_count, result.skipped[:3])

        files = sorted(p for p in root.rglob("IM*"))
        t0 = time.perf_counter()
        for f in files:
            read_header(f)
        t_header_full = time.perf_counter() - t0

        subset = files[: args.pixel_files]
        t0 = time.perf_counter()
        for f in subset:
            read_image(f)
        t_pixels = time.perf_counter() - t0

    scan_rate = args.files / t_scan
    header_rate = args.files / t_header_full
    pixel_rate = len(subset) / t_pixels
    print(f"scan_folder (headers only, grouped):     {scan_rate:8.0f} files/s  ({t_scan:.2f} s for {args.files}, "
          f"{len(result)} patients)")
    print(f"read_header (headers only, no grouping): {header_rate:8.0f} files/s")
    print(f"read_image (pixels decoded, baseline):   {pixel_rate:8.0f} files/s  ({len(subset)} files)")
    print(f"ratio scan / full read: {scan_rate / pixel_rate:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
