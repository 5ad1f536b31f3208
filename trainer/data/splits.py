"""Patient-level, seeded, stratified splits and nested label fractions.

Why patient level: images of one patient are near-duplicates; splitting by image lets a
model be tested on the patient it trained on and inflates every metric.

Stratification: each patient gets one stratum key, its rarest positive label (by
patient-level prevalence) or ``none``; patients are shuffled with the seed inside each
stratum and dealt into splits in proportion. With one binary label this is ordinary
stratified sampling; with many labels it keeps each rare label present in every split.

Fractions (1 %, 10 %, 100 % of the training patients) take a prefix of the same seeded
per-stratum ordering, so a smaller fraction is always a subset of a larger one; a
fraction that would miss every positive of a label gets that label's first positive
patient added (and so do all larger fractions).
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_viewer.core.errors import TrainingDataError
from trainer.data.manifest import PATIENT, SPLIT, SPLITS, label_columns, label_matrix

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

FRACTION_PREFIX = "frac_"


def fraction_column(fraction: float) -> str:
    """Column name holding membership of a label fraction (``frac_0.01``)."""
    return f"{FRACTION_PREFIX}{fraction:g}"


def _patient_table(frame: "pd.DataFrame", labels: list[str]) -> "pd.DataFrame":
    """One row per patient: max of each label over the patient's images (NaN -> 0)."""
    import numpy as np
    import pandas as pd

    y = np.nan_to_num(label_matrix(frame, labels), nan=0.0) if labels else np.zeros((len(frame), 0))
    table = pd.DataFrame(y, columns=labels)
    table[PATIENT] = frame[PATIENT].astype(str).to_numpy()
    return table.groupby(PATIENT, sort=True).max()


def _strata(patients: "pd.DataFrame") -> "pd.Series":
    import pandas as pd

    if patients.shape[1] == 0:
        return pd.Series("none", index=patients.index)
    prevalence = patients.mean(axis=0)
    order = list(prevalence.sort_values(kind="stable").index)  # rarest first

    def key(row: "pd.Series") -> str:
        for lab in order:
            if row[lab] > 0:
                return lab
        return "none"

    return patients.apply(key, axis=1)


def _seeded_order(strata: "pd.Series", seed: int) -> dict[str, list[str]]:
    """Patients of each stratum in a seeded random order (sorted first so input order doesn't matter)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for stratum in sorted(strata.unique()):
        ids = sorted(strata.index[strata == stratum])
        out[stratum] = [ids[i] for i in rng.permutation(len(ids))]
    return out


def make_splits(
    frame: "pd.DataFrame",
    *,
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.15,
    labels: list[str] | None = None,
    keep_existing: bool = True,
) -> "pd.DataFrame":
    """Return ``frame`` with a ``split`` column assigned per patient.

    ``keep_existing`` keeps rows that already carry an official split (e.g. Kermany's
    test folder); patients without one are dealt into train/val/test. A patient that
    already sits in two splits is an error (the source split leaks).
    """
    import pandas as pd

    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise TrainingDataError(f"Validation ({val}) and test ({test}) fractions must be in [0, 1) and sum below 1.")
    labels = label_columns(frame) if labels is None else labels
    frame = frame.copy()
    existing = frame[SPLIT].fillna("").astype(str) if (keep_existing and SPLIT in frame) else pd.Series("", index=frame.index)
    assigned: dict[str, str] = {}
    for pid, grp in existing[existing != ""].groupby(frame[PATIENT].astype(str)):
        values = set(grp)
        if len(values) > 1:
            raise TrainingDataError(
                f"Patient {pid} appears in more than one split ({', '.join(sorted(values))}) in the source; "
                "rebuild the splits without keeping the existing ones (--no-keep-existing)."
            )
        assigned[str(pid)] = values.pop()
    todo = frame[~frame[PATIENT].astype(str).isin(assigned)]
    if len(todo):
        patients = _patient_table(todo, labels)
        order = _seeded_order(_strata(patients), seed)
        # With an official test set, the rest is train/val only.
        has_test = "test" in assigned.values()
        t_frac = 0.0 if has_test else test
        v_frac = val
        for ids in order.values():
            n = len(ids)
            n_test = int(round(n * t_frac))
            n_val = int(round(n * v_frac))
            if n >= 3:  # each split gets at least one patient of a stratum big enough to share
                n_test = max(n_test, 1) if t_frac > 0 else 0
                n_val = max(n_val, 1) if v_frac > 0 else 0
            for i, pid in enumerate(ids):
                assigned[pid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    frame[SPLIT] = frame[PATIENT].astype(str).map(assigned)
    counts = frame.groupby(SPLIT)[PATIENT].nunique().to_dict()
    log.info("splits (patients): %s", counts)
    return frame


def check_patient_level(frame: "pd.DataFrame") -> None:
    """Raise if any patient has images in two splits."""
    per = frame.groupby(frame[PATIENT].astype(str))[SPLIT].nunique()
    leaking = per[per > 1]
    if len(leaking):
        raise TrainingDataError(
            f"{len(leaking)} patient(s) have images in more than one split (e.g. {leaking.index[0]}); "
            "results would be optimistic. Rebuild the splits."
        )


def label_fractions(
    frame: "pd.DataFrame",
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0),
    *,
    seed: int = 0,
    labels: list[str] | None = None,
    split: str = "train",
) -> "pd.DataFrame":
    """Add boolean ``frac_<f>`` columns: nested, stratified, patient-level subsets of ``split``."""
    labels = label_columns(frame) if labels is None else labels
    frame = frame.copy()
    in_split = frame[SPLIT] == split
    if not in_split.any():
        raise TrainingDataError(f"No rows in the '{split}' split to sample label fractions from.")
    patients = _patient_table(frame[in_split], labels)
    order = _seeded_order(_strata(patients), seed)
    chosen: set[str] = set()
    for f in sorted(fractions):
        if not 0 < f <= 1:
            raise TrainingDataError(f"Label fraction {f} must be in (0, 1].")
        for ids in order.values():
            chosen.update(ids[: math.ceil(len(ids) * f)])
        flat = [pid for ids in order.values() for pid in ids]
        for lab in labels:
            if not patients.loc[sorted(chosen), lab].any() and patients[lab].any():
                first = next(pid for pid in flat if patients.loc[pid, lab] > 0)
                chosen.add(first)
        frame[fraction_column(f)] = in_split & frame[PATIENT].astype(str).isin(chosen)
    return frame


def write_split_file(frame: "pd.DataFrame", path: str | Path, *, write: bool = True) -> str:
    """Write one row per patient (split + fraction membership); return the file's sha256.

    Keyed by patient, not by image path, so the same split hashes the same on every machine.
    ``write=False`` only returns the hash the file has (the other ranks of a DDP run). The
    file is replaced atomically: a rank reading it on ``--resume`` never sees half of it.
    """
    path = Path(path)
    check_patient_level(frame)
    cols = [SPLIT] + [c for c in frame.columns if str(c).startswith(FRACTION_PREFIX)]
    table = frame.assign(**{PATIENT: frame[PATIENT].astype(str)}).groupby(PATIENT, sort=True)[cols].max()
    from cxr_viewer.core.csvio import neutralise_frame
    from cxr_viewer.core.staging import write_atomic

    data = neutralise_frame(table.reset_index()).to_csv(index=False, lineterminator="\n").encode("utf-8")
    if write:
        write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def apply_split_file(frame: "pd.DataFrame", path: str | Path) -> "pd.DataFrame":
    """Take ``split`` (and fraction membership) per patient from a file written by :func:`write_split_file`."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"Split file {path} not found.", path=path)
    from cxr_viewer.core.csvio import restore_frame

    table = restore_frame(pd.read_csv(path, dtype={PATIENT: str, SPLIT: str}))
    if not {PATIENT, SPLIT} <= set(table.columns):
        raise TrainingDataError(f"{path.name} is not a split file (needs patient_id and split columns).")
    table = table.set_index(PATIENT)
    pids = frame[PATIENT].astype(str)
    missing = ~pids.isin(table.index)
    if missing.any():
        raise TrainingDataError(
            f"{int(missing.sum())} images belong to patients not in split file {path.name} "
            f"(e.g. patient {pids[missing].iloc[0]}); was it made from another manifest?"
        )
    frame = frame.copy()
    for col in table.columns:
        if col == SPLIT or str(col).startswith(FRACTION_PREFIX):
            frame[col] = table.loc[pids, col].to_numpy()
    invalid = set(frame[SPLIT].dropna()) - set(SPLITS)
    if invalid:
        raise TrainingDataError(f"Split file {path.name} has unknown split values {sorted(invalid)}.")
    return frame
