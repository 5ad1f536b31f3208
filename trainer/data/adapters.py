"""Adapters: the folder layouts users actually have -> the one manifest format.

Each adapter is ``fn(root: Path, **options) -> pandas.DataFrame`` with absolute image
paths, registered in :data:`ADAPTERS` under the name ``cxr-train data build --adapter``
takes. Each recognises both the dataset's official layout and the reduced layout of
the project's shared data folder (``labels.csv`` with a ``file`` column).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import TrainingDataError
from trainer.data.manifest import BOXES, DATASET, IMAGE, MASK, PATIENT, REPORT, SPLIT, validate

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP semi erect", "AP Erect")

Adapter = Callable[..., "pd.DataFrame"]
ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str) -> Callable[[Adapter], Adapter]:
    def deco(fn: Adapter) -> Adapter:
        ADAPTERS[name] = fn
        return fn

    return deco


def build_manifest(adapter: str, root: str | Path, **options: Any) -> "pd.DataFrame":
    """Run adapter ``adapter`` on ``root`` and validate the result (files must exist)."""
    if adapter not in ADAPTERS:
        raise TrainingDataError(f"Unknown adapter {adapter!r}. Available adapters: {', '.join(sorted(ADAPTERS))}.")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise TrainingDataError(f"Data folder {root} does not exist.", path=root)
    frame = ADAPTERS[adapter](root, **{k: v for k, v in options.items() if v is not None})
    frame = frame.reset_index(drop=True)
    validate(frame, check_files=True, where=f"'{adapter}' data in {root}")
    log.info("adapter %s: %d images, %d patients", adapter, len(frame), frame[PATIENT].nunique())
    return frame


# --- helpers ----------------------------------------------------------------------
def _read_csv(path: Path, **kw: Any) -> "pd.DataFrame":
    import pandas as pd

    try:
        return pd.read_csv(path, **kw)
    except Exception as exc:  # noqa: BLE001 - any parser failure becomes one clear message
        raise TrainingDataError(f"Could not read {path.name} as CSV ({exc}).", path=path) from None


def _require(frame: "pd.DataFrame", cols: tuple[str, ...], name: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise TrainingDataError(f"{name} lacks column(s) {missing}; is this the right file?")


def _index_images(root: Path) -> dict[str, Path]:
    """File name -> path for every image under ``root`` (NIH ships images in 12 folders)."""
    index: dict[str, Path] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            index.setdefault(p.name, p)
    return index


def _pseudonym(value: str) -> str:
    """A stable non-identifying patient key for identifiers read from DICOM headers."""
    return "h" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def _with_file_column(root: Path, frame: "pd.DataFrame") -> "pd.DataFrame":
    frame = frame.copy()
    frame[IMAGE] = [str((root / f).resolve()) for f in frame["file"]]
    return frame


def _meta(frame: "pd.DataFrame", out: "pd.DataFrame", cols: dict[str, str]) -> None:
    for src, dst in cols.items():
        if src in frame.columns:
            out[f"meta_{dst}"] = frame[src].to_numpy()


# --- NIH ChestX-ray14 -------------------------------------------------------------
@register_adapter("nih14")
def nih14(root: Path, frontal_only: bool = False, keep_no_finding: bool = False) -> "pd.DataFrame":
    """NIH ChestX-ray14: ``Data_Entry_2017*.csv`` (+ image folders anywhere below ``root``)
    or the shared-data ``labels.csv``. Labels: the 14 findings (``No Finding`` = all zero).

    Rows whose image is not on disk are dropped with one log line (users often download
    only some of the 12 archives); the official ``train_val_list.txt``/``test_list.txt``
    become the ``test`` split when present.
    """
    import pandas as pd

    entries = sorted(root.glob("Data_Entry_2017*.csv*"))
    if entries:
        raw = _read_csv(entries[0])
        _require(raw, ("Image Index", "Finding Labels", "Patient ID"), entries[0].name)
        index = _index_images(root)
        found = raw["Image Index"].map(index.get)
        if found.isna().all():
            raise TrainingDataError(
                f"None of the {len(raw)} images named in {entries[0].name} were found under {root}. "
                "Unpack the image archives (images_001 ... images_012) into this folder."
            )
        if found.isna().any():
            log.info("nih14: %d of %d listed images are not on disk; skipped", int(found.isna().sum()), len(raw))
        raw = raw[found.notna()].reset_index(drop=True)
        found = found[found.notna()].reset_index(drop=True)
        out = pd.DataFrame({IMAGE: [str(p.resolve()) for p in found], PATIENT: raw["Patient ID"].astype(str)})
        findings = raw["Finding Labels"].fillna("").str.split("|")
        for label in NIH_FINDINGS:
            out[label] = findings.map(lambda f, lab=label: int(lab.replace("_", " ") in f or lab in f))
        if keep_no_finding:
            out["No_Finding"] = findings.map(lambda f: int("No Finding" in f))
        _meta(raw, out, {"View Position": "view", "Patient Age": "age", "Patient Gender": "sex"})
        test_list = root / "test_list.txt"
        if test_list.is_file():
            test = set(test_list.read_text().split())
            out[SPLIT] = ["test" if Path(p).name in test else "" for p in out[IMAGE]]
    else:
        labels = root / "labels.csv"
        if not labels.is_file():
            raise TrainingDataError(
                f"No Data_Entry_2017*.csv or labels.csv in {root}: not an NIH ChestX-ray14 folder.", path=root
            )
        raw = _read_csv(labels)
        _require(raw, ("file", "patient_id", *NIH_FINDINGS), "labels.csv")
        out = _with_file_column(root, raw)[[IMAGE]]
        out[PATIENT] = raw["patient_id"].astype(str)
        for label in NIH_FINDINGS:
            out[label] = raw[label].astype(int)
        if keep_no_finding and "No_Finding" in raw:
            out["No_Finding"] = raw["No_Finding"].astype(int)
        _meta(raw, out, {"view": "view", "age": "age", "sex": "sex"})
    out[DATASET] = "nih14"
    if frontal_only and "meta_view" in out:
        out = out[out["meta_view"].isin(FRONTAL_VIEWS)]
    return out


# --- Kermany pediatric pneumonia --------------------------------------------------
_KERMANY_PATIENT = (
    (re.compile(r"^NORMAL2-IM-(\d+)-"), "N2-{}"),
    (re.compile(r"^IM-(\d+)-"), "N-{}"),
    (re.compile(r"^person(\d+)_"), "P{}"),
)


def kermany_patient(file_name: str) -> str:
    """Patient key from a Kermany file name (``person12_virus_3.jpeg`` -> ``P12``)."""
    for pattern, fmt in _KERMANY_PATIENT:
        m = pattern.match(file_name)
        if m:
            return fmt.format(m.group(1))
    return Path(file_name).stem  # unknown naming: one image per patient


@register_adapter("kermany")
def kermany(root: Path, multiclass: bool = False) -> "pd.DataFrame":
    """Kermany pneumonia: ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` or the shared ``labels.csv``.

    Binary label ``pneumonia``; with ``multiclass`` one-hot ``normal``/``bacterial``/``viral``
    (from the file names). Official train/val/test folders become the split.
    """
    import pandas as pd

    labels = root / "labels.csv"
    if labels.is_file():
        raw = _read_csv(labels)
        _require(raw, ("file", "pneumonia"), "labels.csv")
        out = _with_file_column(root, raw)[[IMAGE]]
        names = raw["file"].map(lambda f: Path(f).name)
        out[PATIENT] = raw["patient_id"].astype(str) if "patient_id" in raw else names.map(kermany_patient)
        out["pneumonia"] = raw["pneumonia"].astype(int)
    else:
        rows = []
        for split_dir in ("train", "val", "test"):
            for cls in ("NORMAL", "PNEUMONIA"):
                folder = root / split_dir / cls
                for p in sorted(folder.glob("*")) if folder.is_dir() else []:
                    if p.suffix.lower() in IMAGE_SUFFIXES:
                        rows.append((str(p.resolve()), kermany_patient(p.name), int(cls == "PNEUMONIA"), split_dir))
        if not rows:
            raise TrainingDataError(
                f"No labels.csv and no train/NORMAL, train/PNEUMONIA folders in {root}: not a Kermany folder.",
                path=root,
            )
        out = pd.DataFrame(rows, columns=[IMAGE, PATIENT, "pneumonia", SPLIT])
        names = out[IMAGE].map(lambda f: Path(f).name)
    if multiclass:
        lower = names.str.lower()
        out["normal"] = (out["pneumonia"] == 0).astype(int)
        out["bacterial"] = ((out["pneumonia"] == 1) & lower.str.contains("bacteria")).astype(int)
        out["viral"] = ((out["pneumonia"] == 1) & lower.str.contains("virus")).astype(int)
        out = out.drop(columns=["pneumonia"])
    out[DATASET] = "kermany"
    return out


# --- TBX11K -----------------------------------------------------------------------
def _boxes_json(items: list[tuple[str, float, float, float, float]]) -> str:
    return json.dumps([[c, round(a, 1), round(b, 1), round(x, 1), round(y, 1)] for c, a, b, x, y in items])


def _voc_boxes(xml_path: Path) -> list[tuple[str, float, float, float, float]]:
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        raise TrainingDataError(f"Annotation {xml_path.name} is not valid XML ({exc}).", path=xml_path) from None
    out = []
    for obj in tree.getroot().iter("object"):
        name = obj.findtext("name", default="")
        bb = obj.find("bndbox")
        if bb is None:
            continue
        vals = [float(bb.findtext(k, default="nan")) for k in ("xmin", "ymin", "xmax", "ymax")]
        out.append((name, *vals))
    return out


@register_adapter("tbx11k")
def tbx11k(root: Path, list_name: str = "all_trainval") -> "pd.DataFrame":
    """TBX11K: official ``imgs/`` + ``lists/*.txt`` + ``annotations/xml`` (Pascal VOC), or the
    shared ``labels.csv`` (+ ``boxes.csv`` or a COCO json under ``annotations/json``).

    Label ``tuberculosis`` (tb/ = 1, health/ and sick/ = 0). TBX11K has no patient ids:
    each image is its own patient (documented limitation of the source).
    """
    import pandas as pd

    labels = root / "labels.csv"
    if labels.is_file():
        raw = _read_csv(labels)
        _require(raw, ("file", "tuberculosis"), "labels.csv")
        out = _with_file_column(root, raw)[[IMAGE]]
        stems = raw["file"].map(lambda f: Path(f).stem)
        pid = raw["patient_id"] if "patient_id" in raw else pd.Series([None] * len(raw))
        out[PATIENT] = [str(p) if isinstance(p, str) and p else s for p, s in zip(pid, stems)]
        out["tuberculosis"] = raw["tuberculosis"].astype(int)
        boxes: dict[str, list] = {}
        if (root / "boxes.csv").is_file():
            b = _read_csv(root / "boxes.csv")
            _require(b, ("file", "category", "xmin", "ymin", "xmax", "ymax"), "boxes.csv")
            for r in b.itertuples(index=False):
                boxes.setdefault(r.file, []).append((r.category, r.xmin, r.ymin, r.xmax, r.ymax))
        else:
            for js in sorted((root / "annotations" / "json").glob("*.json")):
                coco = json.loads(js.read_text())
                cats = {c["id"]: c["name"] for c in coco.get("categories", [])}
                by_id = {im["id"]: Path(im["file_name"]).stem for im in coco.get("images", [])}
                stem_to_file = dict(zip(stems, raw["file"]))
                for a in coco.get("annotations", []):
                    f = stem_to_file.get(by_id.get(a["image_id"], ""))
                    if f is not None:
                        x, y, w, h = a["bbox"]
                        boxes.setdefault(f, []).append((cats.get(a["category_id"], "?"), x, y, x + w, y + h))
        if boxes:
            out[BOXES] = [_boxes_json(boxes.get(f, [])) for f in raw["file"]]
        if "official_split" in raw:  # train/val only (the official test labels are not public)
            out["meta_official_split"] = raw["official_split"].fillna("").to_numpy()
    else:
        lst = root / "lists" / f"{list_name}.txt"
        if not lst.is_file():
            raise TrainingDataError(
                f"No labels.csv and no lists/{list_name}.txt in {root}: not a TBX11K folder.", path=root
            )
        rows = []
        for rel in lst.read_text().split():
            img = root / "imgs" / rel
            xml = root / "annotations" / "xml" / (Path(rel).stem + ".xml")
            bx = _voc_boxes(xml) if xml.is_file() else []
            rows.append((str(img.resolve()), Path(rel).stem, int(rel.startswith("tb/")), _boxes_json(bx)))
        out = pd.DataFrame(rows, columns=[IMAGE, PATIENT, "tuberculosis", BOXES])
        out["meta_category"] = [Path(p).parent.name for p in out[IMAGE]]
    out[DATASET] = "tbx11k"
    return out


# --- COVID-19 image data collection ------------------------------------------------
@register_adapter("covid")
def covid(root: Path, include_lateral: bool = False, mask: str = "v7labs") -> "pd.DataFrame":
    """COVID-19 image collection: official ``metadata.csv`` + ``images/`` or the shared ``labels.csv``.

    Labels ``covid19`` and ``pneumonia_infectious``; ``clinical_notes`` becomes ``report``;
    lateral views are left out unless ``include_lateral`` (the classifiers are frontal).
    """
    import pandas as pd

    meta_csv, labels = root / "metadata.csv", root / "labels.csv"
    if labels.is_file():
        raw = _read_csv(labels)
        _require(raw, ("file", "finding", "patient_id"), "labels.csv")
        out = _with_file_column(root, raw)[[IMAGE]]
        finding = raw["finding"].fillna("").astype(str)
        view = raw.get("view", pd.Series([""] * len(raw))).fillna("").astype(str)
        out[PATIENT] = raw["patient_id"].astype(str)
        out["covid19"] = raw["covid19"].astype(int) if "covid19" in raw else finding.str.contains("COVID").astype(int)
        if "pneumonia_infectious" in raw:
            out["pneumonia_infectious"] = raw["pneumonia_infectious"]
        mcol = {"v7labs": "mask_lung_v7labs", "predicted": "mask_lungVAE_predicted"}.get(mask, mask)
        if mcol in raw:
            out[MASK] = [str((root / m).resolve()) if isinstance(m, str) and m else "" for m in raw[mcol]]
    elif meta_csv.is_file():
        raw = _read_csv(meta_csv)
        _require(raw, ("patientid", "finding", "filename"), "metadata.csv")
        if "modality" in raw:
            raw = raw[raw["modality"].fillna("X-ray") == "X-ray"].reset_index(drop=True)
        folder = raw["folder"].fillna("images") if "folder" in raw else pd.Series(["images"] * len(raw))
        out = pd.DataFrame({IMAGE: [str((root / d / f).resolve()) for d, f in zip(folder, raw["filename"])]})
        finding = raw["finding"].fillna("").astype(str)
        view = raw.get("view", pd.Series([""] * len(raw))).fillna("").astype(str)
        out[PATIENT] = raw["patientid"].astype(str)
        out["covid19"] = finding.str.contains("COVID").astype(int)
        # "todo" = not yet labelled: unknown rather than negative
        unknown = finding.str.lower().isin(["todo", ""])
        infectious = ~finding.str.contains("No Finding|ARDS|Lipoid", regex=True) & ~unknown
        out["pneumonia_infectious"] = infectious.astype(float).where(~unknown)
        out.loc[unknown & (out["covid19"] == 0), "covid19"] = pd.NA
    else:
        raise TrainingDataError(f"No metadata.csv or labels.csv in {root}: not the COVID-19 collection.", path=root)
    notes = raw["clinical_notes"] if "clinical_notes" in raw else None
    if notes is not None:
        out[REPORT] = notes.fillna("").astype(str).to_numpy()
    out["meta_finding"] = finding.to_numpy()
    out["meta_view"] = view.to_numpy()
    _meta(raw, out, {"age": "age", "sex": "sex"})
    out[DATASET] = "covid"
    dup = out[IMAGE].duplicated()
    if dup.any():  # the collection lists a few images twice under two patient ids
        log.info("covid: %d images listed twice; keeping the first listing", int(dup.sum()))
        out = out[~dup]
    if not include_lateral:
        out = out[~out["meta_view"].str.upper().isin(["L", "LATERAL"])]
    return out


# --- RSNA pneumonia detection ------------------------------------------------------
@register_adapter("rsna")
def rsna(root: Path, images: str = "stage_2_train_images") -> "pd.DataFrame":
    """RSNA pneumonia: ``stage_2_train_labels.csv`` (one row per box) + ``<images>/<patientId>.dcm``.

    Label ``lung_opacity`` (the challenge's Target); boxes in DICOM pixel coordinates.
    RSNA's ``patientId`` names one image; it is the best patient key the set offers.
    """
    import pandas as pd

    csv = next(iter(sorted(root.glob("stage_2_train_labels.csv*"))), None) or next(
        iter(sorted(root.glob("stage_1_train_labels.csv*"))), None
    )
    if csv is None:
        raise TrainingDataError(f"No stage_2_train_labels.csv in {root}: not an RSNA pneumonia folder.", path=root)
    raw = _read_csv(csv)
    _require(raw, ("patientId", "Target"), csv.name)
    folder = root / images
    if not folder.is_dir():
        raise TrainingDataError(f"RSNA image folder {folder} not found; pass --images FOLDER.", path=folder)
    rows = []
    for pid, grp in raw.groupby("patientId", sort=False):
        dcm = folder / f"{pid}.dcm"
        if not dcm.is_file():
            continue
        target = int(grp["Target"].max())
        bx = [
            ("Lung Opacity", r.x, r.y, r.x + r.width, r.y + r.height)
            for r in grp.itertuples(index=False)
            if r.Target == 1 and pd.notna(r.x)
        ]
        rows.append((str(dcm.resolve()), str(pid), target, _boxes_json(bx)))
    if not rows:
        raise TrainingDataError(f"None of the patientIds in {csv.name} have a DICOM file in {folder}.", path=folder)
    skipped = raw["patientId"].nunique() - len(rows)
    if skipped:
        log.info("rsna: %d listed images are not on disk; skipped", skipped)
    out = pd.DataFrame(rows, columns=[IMAGE, PATIENT, "lung_opacity", BOXES])
    out[DATASET] = "rsna"
    return out


# --- Shenzhen / Montgomery (NLM) ---------------------------------------------------
_NLM_NAME = re.compile(r"^(CHNCXR|MCUCXR)_(\d+)_([01])$")


@register_adapter("shenzhen")
def shenzhen(root: Path) -> "pd.DataFrame":
    """Shenzhen / Montgomery folders: ``CHNCXR_0001_0.png`` / ``MCUCXR_0001_1.png`` (last digit = TB).

    Masks are picked up from ``masks/<stem>_mask.png`` (Shenzhen) or ``ManualMask/leftMask``
    (Montgomery, left lung only is linked; right lung masks sit beside it), and the
    ``ClinicalReadings/<stem>.txt`` text becomes ``report``.
    """
    import pandas as pd

    rows = []
    for p in sorted(root.rglob("*")):
        m = _NLM_NAME.match(p.stem)
        if not m or p.suffix.lower() not in IMAGE_SUFFIXES or "mask" in str(p.parent).lower():
            continue
        if "originals" in p.relative_to(root).parts:
            continue
        prefix, number, tb = m.groups()
        mask = ""
        for cand in (root / "masks" / f"{p.stem}_mask.png", root / "ManualMask" / "leftMask" / p.name):
            if cand.is_file():
                mask = str(cand.resolve())
                break
        report = ""
        reading = root / "ClinicalReadings" / f"{p.stem}.txt"
        if reading.is_file():
            report = " ".join(reading.read_text(errors="replace").split())
        site = "shenzhen" if prefix == "CHNCXR" else "montgomery"
        rows.append((str(p.resolve()), f"{prefix}_{number}", int(tb), mask, report, site))
    if not rows:
        raise TrainingDataError(
            f"No CHNCXR_xxxx_0/1 or MCUCXR_xxxx_0/1 images under {root}: not a Shenzhen/Montgomery folder.",
            path=root,
        )
    out = pd.DataFrame(rows, columns=[IMAGE, PATIENT, "tuberculosis", MASK, REPORT, DATASET])
    if not out[REPORT].any():
        out = out.drop(columns=[REPORT])
    return out


# --- generic CSV and bare folders ------------------------------------------------------
@register_adapter("csv")
def generic_csv(
    root: Path,
    csv: str = "labels.csv",
    image_col: str = "file",
    patient_col: str | None = "patient_id",
    label_cols: str | list[str] | None = None,
    split_col: str | None = None,
    dataset: str | None = None,
) -> "pd.DataFrame":
    """Any CSV with an image path column (relative to ``root``) and 0/1 label columns.

    ``label_cols`` (comma-separated) defaults to every 0/1 numeric column; a missing patient
    column means one image per patient.
    """
    import pandas as pd

    path = Path(csv) if Path(csv).is_absolute() else root / csv
    if not path.is_file():
        raise TrainingDataError(f"CSV file {path} not found.", path=path)
    raw = _read_csv(path)
    _require(raw, (image_col,), path.name)
    out = pd.DataFrame({IMAGE: [str((root / f).resolve()) for f in raw[image_col].astype(str)]})
    if patient_col and patient_col in raw and raw[patient_col].notna().all():
        out[PATIENT] = raw[patient_col].astype(str)
    else:
        out[PATIENT] = raw[image_col].map(lambda f: Path(str(f)).stem)
    if isinstance(label_cols, str):
        label_cols = [c.strip() for c in label_cols.split(",") if c.strip()]
    if not label_cols:
        skip = {image_col, patient_col, split_col}
        label_cols = [
            c
            for c in raw.columns
            if c not in skip
            and pd.api.types.is_numeric_dtype(raw[c])
            and set(raw[c].dropna().unique()) <= {0, 1}
            and raw[c].notna().any()
        ]
    _require(raw, tuple(label_cols), path.name)
    for c in label_cols:
        out[c] = raw[c].to_numpy()
    if split_col:
        _require(raw, (split_col,), path.name)
        out[SPLIT] = raw[split_col].fillna("").astype(str).to_numpy()
    out[DATASET] = dataset or root.name
    return out


@register_adapter("folder")
def folder(root: Path) -> "pd.DataFrame":
    """Every image under ``root`` without labels (self-supervised pre-training, DICOM folders).

    DICOM patient identifiers are replaced by a one-way hash so no identifier lands in
    the manifest; other files are one image per patient.
    """
    import pandas as pd

    rows = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if any("mask" in part.lower() for part in p.relative_to(root).parts):  # segmentation masks, not images
            continue
        patient = p.stem
        if p.suffix.lower() in (".dcm", ".dicom"):
            import pydicom

            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
                patient = _pseudonym(str(ds.get("PatientID", "") or p.stem))
            except Exception:  # noqa: BLE001 - unreadable header: still one patient per file
                patient = _pseudonym(p.stem)
        rows.append((str(p.resolve()), patient))
    if not rows:
        raise TrainingDataError(f"No images (PNG, JPEG, TIFF, DICOM) under {root}.", path=root)
    out = pd.DataFrame(rows, columns=[IMAGE, PATIENT])
    out[DATASET] = root.name
    return out
