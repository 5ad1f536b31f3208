"""Training samples for report-conditioned segmentation, built from the data we have.

Two tables:

1. an **image manifest** (the trainer's one manifest format, one row per image, with
   ``mask`` / ``boxes`` columns and patient-level ``split``), built with the trainer's
   adapters from the COVID-19 collection (hand-drawn v7labs lung masks, VAE-predicted
   masks as lower-quality extra), the Shenzhen sample (lung masks) and TBX11K
   (tuberculosis lesion boxes);
2. a **sample table** (``segmentation_samples.csv``): one row per (image, target,
   phrase). The manifest format forbids listing an image twice, so the phrase rows
   live in this second CSV, keyed to the manifest's images and splits.

Targets (column ``target``) are recipes rasterised at load time, not new files:

- ``lung:left|right|both``: one lung or both, from the lung mask split into
  connected components. The PATIENT's left lung is on the IMAGE's right in a PA/AP
  view (lateral views are skipped).
- ``zone:<side>:<upper|middle|lower>``: upper/middle/lower thirds of a lung's height.
  These are radiographic ZONES, not anatomical lobes; "right lower lobe" phrases are
  paired with the right lower zone because a frontal film cannot show fissures.
- ``boxes:[[x0, y0, x1, y1], ...]``: TBX11K lesion boxes (image pixels), filled as
  rectangles, paired with tuberculosis phrasings naming the boxes' side and zone.
- ``empty``: an empty mask, paired with report sentences that name no region
  ("No acute cardiopulmonary abnormality.") taken from the IU reports.

Negative sentences that name a lung region ("The lungs are clear.") are paired with
that region: the model draws what a sentence names whatever its polarity (see
``cxr_viewer.core.report.regions``).

Horizontal flips are consistent with the text: a flipped sample swaps "left" and
"right" in its phrase (:func:`swap_sides`) and its target.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import TrainingDataError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from cxr_viewer.core.models.preprocess import Preprocessing

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "SAMPLE_COLUMNS",
    "SegmentationDataset",
    "build_image_manifest",
    "build_samples",
    "lung_zones",
    "read_samples",
    "split_lungs",
    "swap_sides",
    "target_mask",
    "write_samples",
]

#: Target types evaluated separately.
KINDS = ("left_lung", "right_lung", "both_lungs", "zone", "tb_lesion", "negative")
SAMPLE_COLUMNS = ("image", "patient_id", "split", "dataset", "mask", "target", "phrase", "side", "zone", "kind", "source")
FRONTAL = ("PA", "AP", "AP SUPINE", "AP SEMI ERECT", "AP ERECT")

# --- phrasings ------------------------------------------------------------------------
LUNG_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left lung", "the left lung", "left hemithorax", "the left hemithorax", "left lung field",
             "left-sided lung", "the left lung field", "left chest"),
    "right": ("right lung", "the right lung", "right hemithorax", "the right hemithorax", "right lung field",
              "right-sided lung", "the right lung field", "right chest"),
    "both": ("both lungs", "lungs", "the lungs", "bilateral lung fields", "both lung fields", "bilateral lungs",
             "both hemithoraces", "the lung fields"),
}  # fmt: skip
_ZONE_WORDS = {"upper": ("upper",), "middle": ("middle", "mid"), "lower": ("lower",)}


def zone_phrases(side: str, zone: str) -> tuple[str, ...]:
    """Phrasings of a zone target; lobes and bases map to zones (see module docstring)."""
    out: list[str] = []
    if side == "both":
        for z in _ZONE_WORDS[zone]:
            out += [f"bilateral {z} zones", f"both {z} zones", f"bilateral {z} lobes", f"{z} zones of both lungs"]
        if zone == "lower":
            out += ["both lung bases", "bibasilar", "bibasilar opacities", "the lung bases"]
        if zone == "upper":
            out += ["both lung apices", "biapical", "the lung apices"]
        return tuple(out)
    for z in _ZONE_WORDS[zone]:
        out += [f"{side} {z} zone", f"the {side} {z} zone", f"{side} {z} lung zone", f"opacity in the {side} {z} zone"]
        if z != "mid":
            out += [f"{side} {z} lobe", f"{side} {z} lobe opacity"]
    if zone == "lower":
        out += [f"{side} lung base", f"{side} basilar", f"{side} base", f"the {side} lung base"]
    if zone == "upper":
        out += [f"{side} lung apex", f"{side} apical", f"the {side} apex"]
    if zone == "middle":
        out += [f"{side} mid lung", f"{side} midlung"]
    return tuple(out)


TB_FINDINGS = {
    "ActiveTuberculosis": ("cavitation", "active tuberculosis", "tuberculous consolidation", "tuberculosis",
                           "tuberculous infiltrate", "cavitary lesion"),
    "ObsoletePulmonaryTuberculosis": ("old tuberculosis", "healed tuberculosis", "calcified granuloma",
                                      "fibrotic scarring", "fibrocalcific change", "obsolete tuberculosis"),
}  # fmt: skip


def tb_phrases(side: str, zone: str, category: str) -> tuple[str, ...]:
    finds = TB_FINDINGS.get(category, TB_FINDINGS["ActiveTuberculosis"])
    if side == "both":
        return tuple([f"bilateral {f}" for f in finds] + ["tuberculosis in both lungs", "bilateral tuberculosis"])
    out = []
    for f in finds:
        out += [f"{side} {zone} zone {f}", f"{f} in the {side} {zone} zone", f"{f} in the {side} lung"]
    out += [f"tuberculosis in the {side} lung", f"{side} {zone} zone tuberculosis"]
    return tuple(out)


# --- swapping sides for flips ------------------------------------------------------------
_SWAP_WORDS = {"left": "right", "right": "left"}
_SWAP_ABBR = {"RUL": "LUL", "LUL": "RUL", "RLL": "LLL", "LLL": "RLL"}
_SWAP_RE = re.compile(r"\b(left|right|RUL|LUL|RLL|LLL)\b", re.IGNORECASE)


def swap_sides(text: str) -> str:
    """Exchange left and right in a phrase, keeping case ("Left" -> "Right", "LLL" -> "RLL").

    Used with horizontal flips: after a flip the patient's left lung sits where the
    right one was, so the phrase must say the other side to stay true. Words like
    "bilateral" or "both" are unchanged. The right middle lobe has no left twin; on
    a flip "right middle lobe" becomes "left middle lobe", read as the left middle zone.
    """

    def repl(m: re.Match[str]) -> str:
        w = m.group(0)
        up = w.upper()
        if up in _SWAP_ABBR and w == up:
            return _SWAP_ABBR[up]
        new = _SWAP_WORDS[w.lower()]
        if w.isupper():
            return new.upper()
        if w[0].isupper():
            return new.capitalize()
        return new

    return _SWAP_RE.sub(repl, str(text))


def swap_target(target: str, width: int | None = None) -> str:
    """The target after a horizontal flip (boxes need the image width)."""
    if target.startswith(("lung:", "zone:")):
        parts = target.split(":")
        parts[1] = {"left": "right", "right": "left"}.get(parts[1], parts[1])
        return ":".join(parts)
    if target.startswith("boxes:"):
        if width is None:
            raise ValueError("flipping boxes needs the image width")
        boxes = json.loads(target[len("boxes:") :])
        return "boxes:" + json.dumps([[width - x1, y0, width - x0, y1] for x0, y0, x1, y1 in boxes])
    return target


# --- lung masks --------------------------------------------------------------------------
def _binary(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.dtype == np.bool_:
        return m
    if np.issubdtype(m.dtype, np.integer):
        return m > (127 if m.max() > 1 else 0)
    return m > 0.5


def split_lungs(mask: np.ndarray, *, min_ratio: float = 0.25) -> dict[str, np.ndarray]:
    """Split a two-lung mask of a frontal (PA/AP) view into the patient's ``right`` and ``left`` lung.

    The two largest connected components are the lungs; the one on the IMAGE's left
    is the patient's RIGHT lung. Smaller fragments join the lung whose centroid is
    nearer. Raises :class:`TrainingDataError` when the mask does not hold two lungs
    (empty, one blob, or a second component under ``min_ratio`` of the first).
    """
    from scipy import ndimage

    m = _binary(mask)
    lab, n = ndimage.label(m)
    if n < 2:
        raise TrainingDataError("The lung mask does not hold two separate lungs; it cannot be split into sides.")
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    a, b = int(order[0]) + 1, int(order[1]) + 1
    if sizes[b - 1] < min_ratio * sizes[a - 1]:
        raise TrainingDataError("The lung mask's second lung is too small to be a lung; it cannot be split into sides.")
    centroids = ndimage.center_of_mass(m, lab, index=np.arange(1, n + 1))
    cx = np.array([c[1] for c in centroids])
    img_left, img_right = (a, b) if cx[a - 1] < cx[b - 1] else (b, a)
    right = lab == img_left  # patient's right lung on the image's left
    left = lab == img_right
    for comp in range(1, n + 1):
        if comp in (a, b):
            continue
        near_left_of_image = abs(cx[comp - 1] - cx[img_left - 1]) <= abs(cx[comp - 1] - cx[img_right - 1])
        (right if near_left_of_image else left)[lab == comp] = True
    return {"right": right, "left": left}


def lung_zones(lung: np.ndarray) -> dict[str, np.ndarray]:
    """Upper / middle / lower thirds of one lung's height (radiographic zones, not lobes)."""
    lung = _binary(lung)
    rows = np.flatnonzero(lung.any(axis=1))
    if rows.size == 0:
        return {z: np.zeros_like(lung) for z in ("upper", "middle", "lower")}
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    cuts = [top + round((bottom - top) * f) for f in (0.0, 1 / 3, 2 / 3, 1.0)]
    out = {}
    for name, (r0, r1) in zip(("upper", "middle", "lower"), zip(cuts[:-1], cuts[1:])):
        z = np.zeros_like(lung)
        z[r0:r1] = lung[r0:r1]
        out[name] = z
    return out


def _read_gray(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header (DICOM through the core reader)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except (UnidentifiedImageError, OSError):
        from cxr_viewer.core.io import read_image

        return read_image(path).shape


def lung_sides(mask_path: str | Path, shape: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Read a lung mask (resized to ``shape`` if given, nearest) and split it into sides."""
    m = _read_gray(mask_path)
    if shape is not None and m.shape != tuple(shape):
        from PIL import Image

        m = np.asarray(Image.fromarray(m).resize((shape[1], shape[0]), Image.NEAREST))
    return split_lungs(m)


def target_mask(target: str, shape: tuple[int, int], mask_path: str | None = None) -> np.ndarray:
    """Rasterise a target recipe at ``shape`` (the image's own size) as a bool HxW mask."""
    h, w = int(shape[0]), int(shape[1])
    if target == "empty":
        return np.zeros((h, w), dtype=bool)
    if target.startswith("boxes:"):
        out = np.zeros((h, w), dtype=bool)
        for x0, y0, x1, y1 in json.loads(target[len("boxes:") :]):
            c0, c1 = max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)))
            r0, r1 = max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)))
            out[r0:r1, c0:c1] = True
        return out
    if not mask_path:
        raise TrainingDataError(f"Target {target!r} needs a lung mask, but the sample has none.")
    sides = lung_sides(mask_path, (h, w))
    parts = target.split(":")
    side = parts[1]
    names = ("left", "right") if side == "both" else (side,)
    if parts[0] == "lung":
        return np.logical_or.reduce([sides[s] for s in names])
    if parts[0] == "zone":
        return np.logical_or.reduce([lung_zones(sides[s])[parts[2]] for s in names])
    raise TrainingDataError(f"Unknown segmentation target {target!r}.")


# --- building the tables -----------------------------------------------------------------
def build_image_manifest(
    data_root: str | Path,
    *,
    sources: Sequence[str] = ("covid", "shenzhen", "tbx11k"),
    max_images: int | None = None,
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.15,
) -> "pd.DataFrame":
    """One row per usable image with ``mask`` or ``boxes``, patient-level ``split`` stratified by source.

    Uses the trainer's adapters; patient ids get the dataset as prefix so two sets'
    numbering never merge two people. ``max_images`` keeps the first N per source
    (smoke tests).
    """
    import pandas as pd

    from trainer.data.adapters import build_manifest
    from trainer.data.manifest import BOXES, DATASET, IMAGE, MASK, PATIENT, SPLIT
    from trainer.data.splits import make_splits

    root = Path(data_root)
    frames = []
    if "covid" in sources:
        v7 = build_manifest("covid", root / "covid_ieee8023", mask="v7labs")
        vae = build_manifest("covid", root / "covid_ieee8023", mask="predicted").set_index(IMAGE)[MASK]
        v7["meta_mask_source"] = np.where(v7[MASK].fillna("") != "", "hand-drawn (v7labs)", "")
        extra = v7[IMAGE].map(vae).fillna("")
        use_vae = (v7[MASK].fillna("") == "") & (extra != "")
        v7.loc[use_vae, MASK] = extra[use_vae]
        v7.loc[use_vae, "meta_mask_source"] = "predicted (lungVAE)"
        v7 = v7[(v7[MASK].fillna("") != "") & v7["meta_view"].str.upper().isin(FRONTAL)]
        frames.append(v7[[IMAGE, PATIENT, DATASET, MASK, "meta_view", "meta_mask_source"]])
    if "shenzhen" in sources:
        sz = build_manifest("shenzhen", root / "shenzhen_sample")
        sz = sz[sz[MASK].fillna("") != ""].copy()
        sz["meta_view"] = "PA"
        sz["meta_mask_source"] = "hand-drawn (Shenzhen)"
        frames.append(sz[[IMAGE, PATIENT, DATASET, MASK, "meta_view", "meta_mask_source"]])
    if "tbx11k" in sources:
        tb = build_manifest("tbx11k", root / "tbx11k")
        tb = tb[tb[BOXES].fillna("[]") != "[]"].copy()
        tb["meta_view"] = "PA"
        tb["meta_mask_source"] = "lesion boxes"
        frames.append(tb[[IMAGE, PATIENT, DATASET, BOXES, "meta_view", "meta_mask_source"]])
    if not frames:
        raise TrainingDataError("No segmentation sources selected (known: covid, shenzhen, tbx11k).")
    parts = []
    for f in frames:
        f = f.sort_values(IMAGE).reset_index(drop=True)
        if max_images:
            f = f.head(int(max_images))
        parts.append(f)
    frame = pd.concat(parts, ignore_index=True)
    frame[PATIENT] = frame[DATASET].astype(str) + ":" + frame[PATIENT].astype(str)
    for col in (MASK, BOXES):
        if col in frame:
            frame[col] = frame[col].fillna("")
    # stratify the patient-level split by source so every split sees every kind of target
    strata = [f"src_{d}" for d in sorted(frame[DATASET].unique())]
    for d in sorted(frame[DATASET].unique()):
        frame[f"src_{d}"] = (frame[DATASET] == d).astype(int)
    frame = make_splits(frame, seed=seed, val=val, test=test, labels=strata, keep_existing=False)
    frame = frame.drop(columns=strata)
    log.info("segmentation images: %s", frame.groupby([DATASET, SPLIT]).size().to_dict())
    return frame.reset_index(drop=True)


def iu_sentences(reports_csv: str | Path, *, limit: int | None = None) -> dict[str, list[str]]:
    """Distinct IU report sentences, grouped: ``none`` (negative, no region) and ``lungs``/``left``/``right``
    (sentences naming exactly one whole-lung region, any polarity but no asserted finding)."""
    import pandas as pd

    from cxr_viewer.core.report import parse_report, region_phrases

    df = pd.read_csv(reports_csv)
    groups: dict[str, OrderedDict[str, None]] = {k: OrderedDict() for k in ("none", "both", "left", "right")}
    for col in ("findings", "impression"):
        for text in df[col].dropna().astype(str):
            for s in parse_report(text).sentences:
                t = s.text.strip()
                if "XXXX" in t or not 8 <= len(t) <= 120:  # de-identification gaps and run-ons
                    continue
                r = region_phrases(t)
                if not r.negative:
                    continue
                if not r.regions:
                    groups["none"][t] = None
                elif len(r.regions) == 1 and r.regions[0].structure == "lung" and r.regions[0].zone is None:
                    side = r.regions[0].side or "bilateral"
                    groups["both" if side == "bilateral" else side][t] = None
    out = {k: list(v) for k, v in groups.items()}
    if limit:
        out = {k: v[:limit] for k, v in out.items()}
    return out


def _text(value: Any) -> str:
    """A manifest cell as text; blank, None and NaN (pandas' empty cell) become ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _zone_of_y(y: float, h: int) -> str:
    """Zone of a point from its height in the image (lungs span roughly 10-85 % of a PA film)."""
    f = y / max(h, 1)
    return "upper" if f < 0.37 else "middle" if f < 0.60 else "lower"


def build_samples(
    images: "pd.DataFrame",
    *,
    reports_csv: str | Path | None = None,
    seed: int = 0,
    negatives_per_image: int = 1,
    zones: bool = True,
) -> "pd.DataFrame":
    """Expand the image manifest into (image, target, phrase) rows; phrasings drawn with ``seed``.

    Lung-mask images give left / right / both lungs, the six zones and the three
    bilateral zones (plus one IU "lungs are clear"-type sentence per image when
    available); TBX11K images give one lesion target per side with boxes (and a
    bilateral one when both sides have lesions); every image gets
    ``negatives_per_image`` IU sentences that name no region, with an empty target.
    Images whose lung mask cannot be split into two lungs are skipped (logged).
    """
    import pandas as pd

    from trainer.data.manifest import BOXES, DATASET, IMAGE, MASK, PATIENT, SPLIT

    rng = np.random.default_rng(seed)
    iu = iu_sentences(reports_csv) if reports_csv else {"none": [], "both": [], "left": [], "right": []}
    if not iu["none"]:
        iu["none"] = ["No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
                      "No pneumothorax or pleural effusion.", "No acute disease."]  # fmt: skip

    def pick(options: Sequence[str]) -> str:
        return str(options[int(rng.integers(len(options)))])

    rows: list[dict[str, Any]] = []
    skipped = 0
    for r in images.itertuples(index=False):
        rec = r._asdict()
        base = {
            "image": rec[IMAGE], "patient_id": _text(rec[PATIENT]), "split": _text(rec.get(SPLIT)),
            "dataset": _text(rec.get(DATASET)), "mask": "", "source": _text(rec.get("meta_mask_source")),
        }  # fmt: skip
        mask = _text(rec.get(MASK))
        boxes = _text(rec.get(BOXES))
        if mask:
            try:
                sides = lung_sides(mask)
            except (TrainingDataError, OSError) as exc:
                skipped += 1
                log.info("skipping %s: %s", Path(mask).name, exc)
                continue
            del sides
            b = {**base, "mask": mask}
            for side, kind in (("left", "left_lung"), ("right", "right_lung"), ("both", "both_lungs")):
                rows.append({**b, "target": f"lung:{side}", "phrase": pick(LUNG_PHRASES[side]), "side": side, "zone": "", "kind": kind})
            if zones:
                for side in ("left", "right", "both"):
                    for zone in ("upper", "middle", "lower"):
                        rows.append({**b, "target": f"zone:{side}:{zone}", "phrase": pick(zone_phrases(side, zone)),
                                     "side": side, "zone": zone, "kind": "zone"})  # fmt: skip
            for side in ("both", "left", "right"):
                if iu[side] and (side == "both" or rng.random() < 0.5):
                    rows.append({**b, "target": f"lung:{side}", "phrase": pick(iu[side]), "side": side, "zone": "",
                                 "kind": "both_lungs" if side == "both" else f"{side}_lung", "source": "IU report sentence"})  # fmt: skip
        elif boxes:
            h, w = _image_size(rec[IMAGE])
            items = json.loads(boxes)
            by_side: dict[str, list[list[float]]] = {"left": [], "right": []}
            cats: dict[str, list[str]] = {"left": [], "right": []}
            for label, x0, y0, x1, y1 in items:
                side = "right" if (x0 + x1) / 2 < w / 2 else "left"  # image left = patient's right
                by_side[side].append([float(x0), float(y0), float(x1), float(y1)])
                cats[side].append(str(label))
            for side in ("left", "right"):
                if not by_side[side]:
                    continue
                bx = np.array(by_side[side])
                zone = _zone_of_y(float((bx[:, 1].min() + bx[:, 3].max()) / 2), h)
                cat = max(set(cats[side]), key=cats[side].count)
                rows.append({**base, "target": "boxes:" + json.dumps(by_side[side]), "phrase": pick(tb_phrases(side, zone, cat)),
                             "side": side, "zone": zone, "kind": "tb_lesion"})  # fmt: skip
            if by_side["left"] and by_side["right"]:
                rows.append({**base, "target": "boxes:" + json.dumps(by_side["right"] + by_side["left"]),
                             "phrase": pick(tb_phrases("both", "", "ActiveTuberculosis")), "side": "both", "zone": "",
                             "kind": "tb_lesion"})  # fmt: skip
        else:
            continue
        for _ in range(int(negatives_per_image)):
            rows.append({**base, "target": "empty", "phrase": pick(iu["none"]), "side": "", "zone": "", "kind": "negative",
                         "source": "IU report sentence"})  # fmt: skip
    if skipped:
        log.info("segmentation samples: %d images skipped (mask not splittable into two lungs)", skipped)
    if not rows:
        raise TrainingDataError("No segmentation samples could be built: no image has a usable lung mask or lesion box.")
    out = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    return out


def write_samples(frame: "pd.DataFrame", path: str | Path) -> Path:
    """Write the sample table; image and mask paths are stored relative to the file's folder."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    out = frame.copy()
    for col in ("image", "mask"):
        out[col] = [os.path.relpath(v, base) if isinstance(v, str) and v else "" for v in out[col]]
    from cxr_viewer.core.csvio import neutralise_frame
    from cxr_viewer.core.staging import staged_file

    with staged_file(path) as part:
        neutralise_frame(out).to_csv(part, index=False)
    return path


def read_samples(path: str | Path) -> "pd.DataFrame":
    """Read a sample table written by :func:`write_samples` (paths made absolute, columns checked)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"Segmentation sample table {path} not found.", path=path)
    from cxr_viewer.core.csvio import restore_frame

    frame = restore_frame(pd.read_csv(path, dtype=str, keep_default_na=False))
    missing = [c for c in SAMPLE_COLUMNS if c not in frame.columns]
    if missing:
        raise TrainingDataError(f"{path.name} lacks column(s) {missing}; it is not a segmentation sample table.")
    base = path.resolve().parent
    for col in ("image", "mask"):
        frame[col] = [str((base / v).resolve()) if v else "" for v in frame[col]]
    bad = sorted(set(frame["kind"]) - set(KINDS))
    if bad:
        raise TrainingDataError(f"{path.name} has unknown target kind(s) {bad}; known: {', '.join(KINDS)}.")
    return frame


# --- dataset -------------------------------------------------------------------------------
class SegmentationDataset:
    """Sample rows -> ``{"image": (C,H,W), "mask": (1,H,W) float, "phrase": int, "kind": int, "index": i}``.

    Images go through the trainer's cached loader (the viewer's reader + the shared
    ``preprocess``); targets are rasterised at the image's own size and placed on the
    network grid with the same ``preprocess`` geometry, so image and mask align.
    With ``hflip_p > 0`` a flipped sample flips image and mask and swaps left/right in
    its phrase; geometric augmentation (affine, resized crop) moves image and mask
    together; intensity augmentation touches the image only.
    """

    def __init__(
        self,
        frame: "pd.DataFrame",
        spec: "Preprocessing",
        phrase_index: Mapping[str, int],
        *,
        augment: Any = None,
        hflip_p: float = 0.0,
        cache: Any = None,
        mask_cache_size: int = 4096,
    ) -> None:
        from dataclasses import replace

        if len(frame) == 0:
            raise TrainingDataError("The segmentation dataset is empty (no samples in this split).")
        self.rows = frame.reset_index(drop=True).to_dict("records")
        self.spec = spec
        self.mask_spec = replace(spec, mean=(0.0,), std=(1.0,), window="none", pad_value=0.0, channels=1,
                                 interpolation="bilinear")  # fmt: skip
        self.phrase_index = dict(phrase_index)
        for r in self.rows:
            for p in (r["phrase"], swap_sides(r["phrase"])):
                if p not in self.phrase_index:
                    raise TrainingDataError(f"Phrase {p!r} has no precomputed embedding.")
        self.hflip_p = float(hflip_p)
        self.cache = cache
        self._masks: OrderedDict[tuple[str, str], "torch.Tensor"] = OrderedDict()
        self._mask_cache_size = int(mask_cache_size)
        self.geometric, self.intensity = _split_augment(augment, spec)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> "torch.Tensor":
        from trainer.data.dataset import load_tensor

        path = self.rows[i]["image"]
        if self.cache is None:
            return load_tensor(path, self.spec)
        return self.cache.get(path, self.spec, lambda: load_tensor(path, self.spec))

    def mask(self, i: int) -> "torch.Tensor":
        """Target (1, H, W) float {0, 1} on the network grid."""
        import torch

        from cxr_viewer.core.models.preprocess import preprocess

        r = self.rows[i]
        key = (r["image"], r["target"])
        t = self._masks.get(key)
        if t is None:
            shape = _image_size(r["image"])
            m = target_mask(r["target"], shape, r["mask"] or None).astype(np.float32)
            t = torch.from_numpy(preprocess(m, self.mask_spec)[:1] > 0.5).to(torch.uint8)
            self._masks[key] = t
            while len(self._masks) > self._mask_cache_size:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(key)
        return t.float()

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        x = self.image(i)
        y = self.mask(i)
        phrase = self.rows[i]["phrase"]
        if self.hflip_p and float(torch.rand(())) < self.hflip_p:
            x, y = x.flip(-1), y.flip(-1)
            phrase = swap_sides(phrase)
        if self.geometric is not None:
            x, y = self.geometric(x, y)
        if self.intensity is not None:
            x = self.intensity(x)
        return {
            "image": x,
            "mask": (y > 0.5).float(),
            "phrase": self.phrase_index[phrase],
            "kind": KINDS.index(self.rows[i]["kind"]),
            "index": i,
        }


def _split_augment(augment: Any, spec: "Preprocessing") -> tuple[Any, Any]:
    """The trainer's augmentation config split in two: joint geometry (image + mask) and image-only intensity."""
    if augment is None or augment == "none":
        return None, None
    from dataclasses import replace

    from trainer.data.augment import RadiographAugment, augment_config

    cfg = augment_config(augment)
    intensity = RadiographAugment(replace(cfg, rotate_deg=0.0, translate=0.0, crop_scale=1.0, hflip=False), spec)
    geo = None
    if cfg.rotate_deg or cfg.translate or cfg.crop_scale < 1.0:
        geo = _JointGeometry(cfg, spec)
    return geo, intensity


class _JointGeometry:
    """torchvision v2 affine + resized crop applied with the SAME parameters to image and mask."""

    def __init__(self, cfg: Any, spec: "Preprocessing") -> None:
        import torch
        from torchvision.transforms import v2

        ops: list[Any] = []
        if cfg.rotate_deg or cfg.translate:
            ops.append(v2.RandomAffine(degrees=cfg.rotate_deg, translate=(cfg.translate, cfg.translate)))
        if cfg.crop_scale < 1.0:
            ops.append(v2.RandomResizedCrop(tuple(spec.size), scale=(cfg.crop_scale, 1.0), ratio=(0.9, 1.1), antialias=True))
        self.ops = v2.Compose(ops)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
        self.pad = float(spec.pad_value)

    def __call__(self, x: "torch.Tensor", y: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        from torchvision import tv_tensors

        unit = x * self.std + self.mean  # fill with black in pixel units, as the letterbox does
        img, msk = self.ops(tv_tensors.Image(unit), tv_tensors.Mask(y))
        return ((img.as_subclass(type(x)) - self.mean) / self.std).contiguous(), msk.as_subclass(type(y))
