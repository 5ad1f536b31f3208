"""Regenerate ``tests/data/``: the small committed mirror of the shared data folder's layout.

The tests read this mirror by default (``CXR_DATA_DIR`` points them at the full folder).
Same folder and file names and the same ``labels.csv`` columns as the full set, cut to the
rows kept here; films reduced to a long side of at most 256 px (JPEG quality 90, PNG for
PNG sources) with their masks and boxes reduced with them. The selection is fixed by the
rules below (sorted names, fixed counts), so a rerun on the same full set gives the same
files; ``tests/data/README.md`` lists what each folder holds and its licence.

Usage: python scripts/make_test_data.py --data-dir ../shared/data [--out tests/data]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LONG_SIDE = 256
JPEG_QUALITY = 90
NIH_FINDINGS = (
    "Atelectasis Cardiomegaly Effusion Infiltration Mass Nodule Pneumonia Pneumothorax "
    "Consolidation Edema Emphysema Fibrosis Pleural_Thickening Hernia"
).split()
# COVID-19 collection rows whose licence allows redistribution with attribution
COVID_LICENCES = ("CC BY", "CC BY 3.0", "CC BY 4.0")
RG1_FACTOR = 4  # the NEMA RG1 radiograph: 1955 x 1841 -> 488 x 460 (block mean, 15 bits kept)


# --- reduction ---------------------------------------------------------------------
def _scale_for(size: tuple[int, int]) -> float:
    return min(1.0, LONG_SIDE / max(size))


def reduce_image(src: Path, dst: Path) -> float:
    """Write ``src`` at a long side of at most LONG_SIDE; return the scale applied (1.0: bytes copied)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        scale = _scale_for(im.size)
        if scale == 1.0:
            shutil.copyfile(src, dst)
            return 1.0
        gray = im.convert("L")
        size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
        small = gray.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if dst.suffix.lower() == ".png":
        small.save(dst, optimize=True)
    else:
        small.save(dst, quality=JPEG_QUALITY, optimize=True)
    return scale


def reduce_mask(src: Path, dst: Path, size: tuple[int, int]) -> None:
    """A 0/255 mask resized to ``size`` (its image's new size) and thresholded back to 0/255."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        m = im.convert("L").resize(size, Image.Resampling.BILINEAR)
    Image.fromarray(np.where(np.asarray(m) >= 128, 255, 0).astype(np.uint8)).save(dst, optimize=True)


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


# --- selection helpers ---------------------------------------------------------------
def _first_patients(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first ``n`` distinct patients (by file name), one film each."""
    return frame.sort_values("file").drop_duplicates("patient_id").head(n)


def _held_out_ids(bundle: str, prefix: str) -> list[str]:
    """Patient ids (without the ``prefix:``) in the TEST split of a shipped bundle, in file order."""
    path = REPO / "resources" / "models" / bundle / "splits.csv"
    splits = pd.read_csv(path, dtype=str)
    rows = splits[(splits["split"] == "test") & splits["patient_id"].str.startswith(prefix + ":")]
    return [p.split(":", 1)[1] for p in rows["patient_id"]]


# --- NIH ChestX-ray14 ----------------------------------------------------------------
def select_nih(data: Path) -> dict[str, pd.DataFrame]:
    folders = ("nih14", "nih14_extra")
    labels = {f: pd.read_csv(data / f / "labels.csv") for f in folders}
    both = pd.concat([lab.assign(folder_=f) for f, lab in labels.items()], ignore_index=True)
    keep: dict[str, set[str]] = {f: set() for f in folders}

    def take(rows: pd.DataFrame) -> None:
        for r in rows.itertuples():
            keep[r.folder_].add(r.file)

    # 20 "No Finding" films of patients the shipped chest model held out for its test split
    test_ids = set(_held_out_ids("chest-resnet18", "nih14"))
    normal = both[(both["No_Finding"] == 1) & both["patient_id"].astype(str).isin(test_ids)]
    take(normal.sort_values("file").head(20))
    nih14 = both[both["folder_"] == "nih14"]
    # every finding has positive patients: enough of the rare ones for every split of a patient-level split
    for lab in NIH_FINDINGS:
        n = 14 if lab in ("Effusion", "Infiltration", "Atelectasis") else 7 if lab in ("Hernia", "Edema", "Pneumonia") else 3
        take(_first_patients(nih14[nih14[lab] == 1], n))
    take(_first_patients(nih14[nih14["No_Finding"] == 1], 12))
    # patients with several films in nih14, and patients with films in both folders
    counts = nih14["patient_id"].value_counts()
    multi = sorted(counts[counts > 1].index)[:3]
    take(nih14[nih14["patient_id"].isin(multi)])
    shared_ids = sorted(set(labels["nih14"]["patient_id"]) & set(labels["nih14_extra"]["patient_id"]))[:3]
    take(both[both["patient_id"].isin(shared_ids)])
    # nih14_extra: adult pneumonia against no finding, one film per patient
    extra = both[both["folder_"] == "nih14_extra"]
    single = extra[~extra["patient_id"].duplicated(keep=False)]
    take(_first_patients(single[single["Pneumonia"] == 1], 24))
    take(_first_patients(single[single["No_Finding"] == 1], 24))
    return {f: labels[f][labels[f]["file"].isin(keep[f])].sort_values("file") for f in folders}


def write_nih(data: Path, out: Path) -> list[str]:
    names = []
    for folder, rows in select_nih(data).items():
        for f in rows["file"]:
            reduce_image(data / folder / f, out / folder / f)
            names.append(Path(f).stem + ".png")
        _write_csv(rows, out / folder / "labels.csv")
    # one untouched full-size NIH PNG
    _copy(data / "nih14" / "originals" / "00000075_000.png", out / "nih14" / "originals" / "00000075_000.png")
    return names


def write_data_entry(data: Path, out: Path, names: list[str]) -> None:
    """The rows of NIH's Data_Entry_2017_v2020 for the films kept (same header, same row order)."""
    wanted = set(names)
    with gzip.open(data / "labels_only" / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as fh:
        lines = fh.read().splitlines(keepends=True)
    rows = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] in wanted]
    dst = out / "labels_only" / "Data_Entry_2017_v2020.csv.gz"
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write("".join(rows).encode())


def write_rsna(data: Path, out: Path, per_class: int = 6) -> None:
    """Every row of the first ``per_class`` positive and negative RSNA patients (stage 2 train labels)."""
    src = data / "labels_only" / "kaggle_stage_2_train_labels.csv.zip"
    with zipfile.ZipFile(src) as z:
        text = z.read("stage_2_train_labels.csv").decode()
    lines = text.splitlines(keepends=True)
    pos: list[str] = []
    neg: list[str] = []
    for ln in lines[1:]:
        pid, *_, target = ln.rstrip("\r\n").split(",")
        bucket = pos if target == "1" else neg
        if pid not in bucket and len(bucket) < per_class:
            bucket.append(pid)
    wanted = set(pos + neg)
    rows = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] in wanted]
    dst = out / "labels_only" / src.name
    info = zipfile.ZipInfo("stage_2_train_labels.csv", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr(info, "".join(rows))


# --- Kermany --------------------------------------------------------------------------
def write_kermany(data: Path, out: Path) -> None:
    """35 normal and 35 pneumonia children (18 bacterial, 17 viral: 70 patients), one film each; already 224 px."""
    root = data / "pneumonia_kermany"
    labels = pd.read_csv(root / "labels.csv")
    bacterial = _first_patients(labels[labels["subtype"] == "bacteria"], 18)
    viral = labels[(labels["subtype"] == "virus") & ~labels["patient_id"].isin(bacterial["patient_id"])]
    pick = pd.concat([
        _first_patients(labels[labels["subtype"] == "none"], 35), bacterial, _first_patients(viral, 17),
    ]).sort_values("file")  # fmt: skip
    for f in pick["file"]:
        reduce_image(root / f, out / "pneumonia_kermany" / f)
    _write_csv(pick, out / "pneumonia_kermany" / "labels.csv")


# --- TBX11K -----------------------------------------------------------------------------
def write_tbx11k(data: Path, out: Path) -> None:
    """The first 20 TB films by name and the first 3 the shipped segmenter held out; boxes scaled with them."""
    root, dst = data / "tbx11k", out / "tbx11k"
    labels = pd.read_csv(root / "labels.csv")
    held = _held_out_ids("report-segmenter-resnet18", "tbx11k")[:3]
    first = sorted(labels["file"])[:20]
    pick = labels[labels["file"].isin(first) | labels["tbx11k_id"].isin(held)].sort_values("file").copy()
    boxes = pd.read_csv(root / "boxes.csv")
    boxes = boxes[boxes["file"].isin(pick["file"])].copy()
    for i, f in zip(pick.index, pick["file"]):
        scale = reduce_image(root / f, dst / f)
        w, h = _image_size(dst / f)
        pick.loc[i, ["repo_width", "repo_height"]] = (w, h)
        sel = boxes["file"] == f
        for c in ("xmin", "ymin", "xmax", "ymax"):
            boxes.loc[sel, c] = (boxes.loc[sel, c] * scale).round(1)
    _write_csv(pick, dst / "labels.csv")
    _write_csv(boxes, dst / "boxes.csv")
    stems = set(pick["tbx11k_id"])
    for lst in sorted((root / "official_lists").glob("*.txt")):
        kept = [ln for ln in lst.read_text().splitlines() if Path(ln).stem in stems]
        (dst / "official_lists").mkdir(parents=True, exist_ok=True)
        (dst / "official_lists" / lst.name).write_text("".join(k + "\n" for k in kept))
    for name in ("TBX11K_README.md", "LICENSE_repo_code_MIT.txt"):
        _copy(root / name, dst / name)


def write_tbx11k_sample(data: Path, out: Path) -> None:
    """The three-image TBX11K sample with its COCO json, boxes and sizes scaled with the films."""
    root, dst = data / "tbx11k_sample", out / "tbx11k_sample"
    labels = pd.read_csv(root / "labels.csv")
    scales = {}
    for f in labels["file"]:
        scales[Path(f).stem] = reduce_image(root / f, dst / f)
    _write_csv(labels, dst / "labels.csv")
    for js in sorted((root / "annotations" / "json").glob("*.json")):
        coco = json.loads(js.read_text())
        ids = {}
        for im in coco["images"]:
            s = scales.get(Path(im["file_name"]).stem, 1.0)
            ids[im["id"]] = s
            im["width"], im["height"] = round(im["width"] * s), round(im["height"] * s)
        for a in coco.get("annotations", []):
            s = ids.get(a["image_id"], 1.0)
            a["bbox"] = [round(v * s, 1) for v in a["bbox"]]
            if "area" in a:
                a["area"] = round(a["area"] * s * s, 1)
            a.pop("segmentation", None)
        target = dst / "annotations" / "json" / js.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(coco))


# --- Shenzhen ---------------------------------------------------------------------------
def write_shenzhen(data: Path, out: Path, n: int = 6) -> None:
    root, dst = data / "shenzhen_sample", out / "shenzhen_sample"
    labels = pd.read_csv(root / "labels.csv", dtype={"patient_id": str}).sort_values("file").head(n)
    for f, m in zip(labels["file"], labels["mask"]):
        reduce_image(root / f, dst / f)
        reduce_mask(root / m, dst / m, _image_size(dst / f))
    _write_csv(labels, dst / "labels.csv")
    _copy(root / "LICENSE_arcus_ml_code_MIT.txt", dst / "LICENSE_arcus_ml_code_MIT.txt")


# --- COVID-19 image data collection -------------------------------------------------------
def write_covid(data: Path, out: Path) -> None:
    """CC BY rows only: every CC BY 4.0 and CC BY film, the CC BY 3.0 "No Finding" films, and
    the first CC BY 3.0 COVID-19 films of eight more patients with hand-drawn lung masks."""
    root, dst = data / "covid_ieee8023", out / "covid_ieee8023"
    labels = pd.read_csv(root / "labels.csv", dtype={"patient_id": str})
    ok = labels[labels["license"].isin(COVID_LICENCES)]
    v3 = ok[ok["license"] == "CC BY 3.0"]
    covid_v3 = v3[(v3["finding"] == "COVID-19") & v3["mask_lung_v7labs"].notna()]
    pick = pd.concat([
        ok[ok["license"].isin(["CC BY", "CC BY 4.0"])],
        v3[v3["finding"] == "No Finding"].sort_values("file").head(4),
        covid_v3.sort_values("file").drop_duplicates("patient_id").head(8),
    ])  # fmt: skip
    pick = labels.loc[sorted(set(pick.index))]  # the collection's own row order
    for r in pick.itertuples():
        reduce_image(root / r.file, dst / r.file)
        size = _image_size(dst / r.file)
        for m in (r.mask_lung_v7labs, r.mask_lungVAE_predicted):
            if isinstance(m, str) and m:
                reduce_mask(root / m, dst / m, size)
    _write_csv(pick, dst / "labels.csv")


# --- DICOM ------------------------------------------------------------------------------
def write_dicom(data: Path, out: Path) -> None:
    """SIIM files copied as they are; the NEMA RG1 trio rebuilt from one reduced pixel array:
    uncompressed, JPEG 2000 lossless and JPEG 2000 lossy (ratio 10, as the original), headers kept."""
    import pydicom
    from pydicom.uid import JPEG2000, JPEG2000Lossless

    src, dst = data / "dicom", out / "dicom"
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.dcm")):
        if "RG1" not in f.name:
            _copy(f, dst / f.name)
    unc = pydicom.dcmread(src / "pydicom-data_RG1_UNCR.dcm")
    full = unc.pixel_array.astype(np.float64)
    k = RG1_FACTOR
    h, w = (full.shape[0] // k) * k, (full.shape[1] // k) * k
    small = full[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    arr = np.clip(np.rint(small), 0, 2**unc.BitsStored - 1).astype(np.uint16)
    comment = f"reduced for tests: {unc.Columns}x{unc.Rows} -> {arr.shape[1]}x{arr.shape[0]} ({k}x{k} block mean)"

    def _resized(ds: pydicom.Dataset) -> pydicom.Dataset:
        ds.Rows, ds.Columns = arr.shape
        ds.ImageComments = comment
        if "DataSetTrailingPadding" in ds:
            del ds.DataSetTrailingPadding
        return ds

    ds = _resized(unc)
    ds.PixelData = arr.tobytes()
    ds.save_as(dst / "pydicom-data_RG1_UNCR.dcm", enforce_file_format=True)
    for name, syntax, kw in (
        ("pydicom-data_RG1_J2KR.dcm", JPEG2000Lossless, {}),
        ("pydicom-data_RG1_J2KI.dcm", JPEG2000, {"j2k_cr": [10]}),
    ):
        ds = _resized(pydicom.dcmread(src / name))
        ds.compress(syntax, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False, **kw)
        ds.save_as(dst / name, enforce_file_format=True)


# --- IU reports ---------------------------------------------------------------------------
def write_reports(data: Path, out: Path, n: int = 400, extra: tuple[str, ...] = ("2415", "3611")) -> None:
    """The first ``n`` Indiana University reports and a few named ones the tests quote, verbatim."""
    root, dst = data / "reports_iu", out / "reports_iu"
    dst.mkdir(parents=True, exist_ok=True)
    with (root / "indiana_reports.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    keep = [rows[0]] + [r for i, r in enumerate(rows[1:]) if i < n or r[0] in extra]
    uids = {r[0] for r in keep[1:]}
    with (dst / "indiana_reports.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(keep)
    with (root / "indiana_projections.csv").open(newline="", encoding="utf-8") as fh:
        proj = list(csv.reader(fh))
    with (dst / "indiana_projections.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([proj[0]] + [r for r in proj[1:] if r[0] in uids])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="the full shared data folder")
    p.add_argument("--out", default=str(REPO / "tests" / "data"))
    args = p.parse_args(argv)
    data, out = Path(args.data_dir).resolve(), Path(args.out).resolve()
    if not (data / "nih14" / "labels.csv").is_file():
        print(f"{data} is not the shared data folder (no nih14/labels.csv)", file=sys.stderr)
        return 1
    readme = out / "README.md"
    kept = readme.read_text(encoding="utf-8") if readme.is_file() else None
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if kept is not None:
        readme.write_text(kept, encoding="utf-8")
    names = write_nih(data, out)
    write_data_entry(data, out, names)
    write_rsna(data, out)
    write_kermany(data, out)
    write_tbx11k(data, out)
    write_tbx11k_sample(data, out)
    write_shenzhen(data, out)
    write_covid(data, out)
    write_dicom(data, out)
    write_reports(data, out)
    files = [f for f in out.rglob("*") if f.is_file()]
    print(json.dumps({"files": len(files), "bytes": sum(f.stat().st_size for f in files)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
