"""The one CSV manifest every adapter writes and every trainer task reads.

Columns:

- ``image`` (required): path of the image (PNG/JPEG/TIFF/DICOM). Relative paths are
  relative to the manifest file's folder, so a manifest can travel with its data.
- ``patient_id`` (required): splits are made per patient, never per image.
- ``split`` (optional): ``train`` | ``val`` | ``test`` (blank = not yet assigned).
- ``dataset`` (optional): where the row came from (``nih14``, ``kermany``...); goes into
  the bundle's provenance.
- ``mask`` (optional): path of a 0/255 PNG mask; ``boxes`` (optional): JSON list of
  ``[label, xmin, ymin, xmax, ymax]`` in the referenced image's pixels;
  ``report`` (optional): free report text.
- ``meta_*`` (optional): descriptive columns (view, age, sex...) kept for sub-group analysis.
- every other column is a **label**: 1 = present, 0 = absent, blank = unknown.
  A multiclass problem is one-hot label columns with exactly one 1 per row.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_viewer.core.errors import TrainingDataError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

IMAGE, PATIENT, SPLIT, DATASET, MASK, BOXES, REPORT = (
    "image",
    "patient_id",
    "split",
    "dataset",
    "mask",
    "boxes",
    "report",
)
RESERVED = (IMAGE, PATIENT, SPLIT, DATASET, MASK, BOXES, REPORT)
META_PREFIX = "meta_"
SPLITS = ("train", "val", "test")


@dataclass
class Manifest:
    """A validated manifest: ``frame`` holds absolute image/mask paths as strings."""

    frame: "pd.DataFrame"
    path: Path | None = None

    @property
    def labels(self) -> list[str]:
        return label_columns(self.frame)

    @property
    def datasets(self) -> list[str]:
        if DATASET not in self.frame:
            return []
        return sorted({str(v) for v in self.frame[DATASET].dropna().unique() if str(v)})

    def subset(self, split: str | None) -> "pd.DataFrame":
        """Rows of one split (``None`` = all rows)."""
        if split is None:
            return self.frame
        if SPLIT not in self.frame or not (self.frame[SPLIT] == split).any():
            raise TrainingDataError(
                f"The manifest has no rows in the '{split}' split. "
                "Assign splits first with `cxr-train data split`, or check the split column."
            )
        return self.frame[self.frame[SPLIT] == split].reset_index(drop=True)


def label_columns(frame: "pd.DataFrame") -> list[str]:
    """Label columns in file order: everything not reserved and not ``meta_*``."""
    return [c for c in frame.columns if c not in RESERVED and not str(c).startswith(META_PREFIX)]


def validate(frame: "pd.DataFrame", *, check_files: bool = True, where: str = "manifest") -> None:
    """Raise :class:`TrainingDataError` naming the first problem a user must fix."""
    import numpy as np
    import pandas as pd

    for col in (IMAGE, PATIENT):
        if col not in frame.columns:
            raise TrainingDataError(
                f"The {where} has no '{col}' column. Columns found: {', '.join(map(str, frame.columns))}."
            )
    if frame.empty:
        raise TrainingDataError(f"The {where} has no rows: no images were found.")
    if frame[IMAGE].isna().any() or (frame[IMAGE].astype(str).str.strip() == "").any():
        raise TrainingDataError(f"The {where} has rows with an empty 'image' path.")
    if frame[PATIENT].isna().any() or (frame[PATIENT].astype(str).str.strip() == "").any():
        n = int((frame[PATIENT].isna() | (frame[PATIENT].astype(str).str.strip() == "")).sum())
        raise TrainingDataError(
            f"{n} rows of the {where} have no patient_id. Splits are made per patient; "
            "when the source has no patient identifier use the image id (one image per patient)."
        )
    dup = frame[IMAGE].duplicated()
    if dup.any():
        raise TrainingDataError(
            f"The {where} lists {int(dup.sum())} images twice, e.g. {frame[IMAGE][dup].iloc[0]}."
        )
    if SPLIT in frame.columns:
        values = set(frame[SPLIT].dropna().astype(str)) - {""}
        bad = values - set(SPLITS)
        if bad:
            raise TrainingDataError(
                f"Unknown split value(s) {sorted(bad)} in the {where}; use train, val or test."
            )
    for col in label_columns(frame):
        values = pd.to_numeric(frame[col], errors="coerce")
        nonnum = values.isna() & frame[col].notna() & (frame[col].astype(str).str.strip() != "")
        if nonnum.any():
            raise TrainingDataError(
                f"Label column '{col}' holds non-numeric values such as {frame[col][nonnum].iloc[0]!r}; "
                "labels must be 0, 1 or blank. Prefix descriptive columns with 'meta_'."
            )
        known = values.dropna().to_numpy()
        if known.size and not np.isin(known, (0.0, 1.0)).all():
            raise TrainingDataError(f"Label column '{col}' must hold only 0, 1 or blank.")
    if check_files:
        missing = [p for p in frame[IMAGE].astype(str) if not os.path.exists(p)]
        if missing:
            raise TrainingDataError(
                f"{len(missing)} image file(s) listed in the {where} do not exist, e.g. {missing[0]}. "
                "Check the data folder or rebuild the manifest.",
                path=missing[0],
            )


def _resolve(value: object, base: Path) -> object:
    if not isinstance(value, str) or not value:
        return value
    p = Path(value)
    return str(p if p.is_absolute() else (base / p).resolve())


def _relativise(value: object, base: Path) -> object:
    if not isinstance(value, str) or not value:
        return value
    try:
        return os.path.relpath(value, base)
    except ValueError:  # another drive on Windows
        return value


def read_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Read and validate a manifest CSV; image/mask paths become absolute."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(
            f"Manifest {path} not found. Build one with `cxr-train data build --adapter ... --root ... --out {path}`.",
            path=path,
        )
    try:
        frame = pd.read_csv(path, dtype={IMAGE: str, PATIENT: str, SPLIT: str, MASK: str}, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise TrainingDataError(f"Manifest {path} is not a readable CSV file ({exc}).", path=path) from None
    from cxr_viewer.core.csvio import restore_frame

    frame = restore_frame(frame)
    base = path.resolve().parent
    for col in (IMAGE, MASK):
        if col in frame.columns:
            frame[col] = frame[col].map(lambda v: _resolve(v, base))
    if SPLIT in frame.columns:
        frame[SPLIT] = frame[SPLIT].fillna("")
    validate(frame, check_files=check_files, where=f"manifest {path.name}")
    return Manifest(frame=frame, path=path)


def write_manifest(frame: "pd.DataFrame", path: str | Path, *, check_files: bool = False) -> Path:
    """Validate and write ``frame``; image/mask paths are stored relative to ``path``'s folder."""
    path = Path(path)
    validate(frame, check_files=check_files, where=f"manifest {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    out = frame.copy()
    for col in (IMAGE, MASK):
        if col in out.columns:
            out[col] = out[col].map(lambda v: _relativise(v, base))
    ordered = [c for c in RESERVED if c in out.columns]
    ordered += [c for c in out.columns if c not in RESERVED]
    from cxr_viewer.core.csvio import neutralise_frame
    from cxr_viewer.core.staging import staged_file

    with staged_file(path) as part:
        neutralise_frame(out[ordered]).to_csv(part, index=False)
    log.info("wrote manifest %s (%d images, labels: %s)", path, len(out), ", ".join(label_columns(out)))
    return path


def label_matrix(frame: "pd.DataFrame", labels: list[str]) -> "np.ndarray":  # noqa: F821
    """Labels as float32 (N, L) with NaN for unknown."""
    import numpy as np
    import pandas as pd

    missing = [c for c in labels if c not in frame.columns]
    if missing:
        raise TrainingDataError(
            f"Label(s) {missing} are not columns of the manifest. Available labels: {label_columns(frame)}."
        )
    return np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float32) for c in labels], axis=1)


def normal_means_normal(labels: "pd.DataFrame", normal: "pd.Series") -> "pd.DataFrame":
    """The one label policy for films a source calls normal: negative (0) for every finding.

    A source that labels one finding (Kermany: pneumonia) or none (Shenzhen: tuberculosis, the
    COVID collection's "No Finding") still says of its normal films that nothing is there, so
    every label of such a film is 0, not unknown. Findings of its abnormal films stay as the
    source gives them (unknown where it does not say). ``normal``: True where the source
    labels the film normal (NaN/False otherwise).
    """
    out = labels.copy()
    is_normal = normal.fillna(False).astype(bool).to_numpy()
    out.loc[is_normal, :] = 0.0
    return out
