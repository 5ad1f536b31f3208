"""The site's labelled films: a folder of images and a CSV of what each one shows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_viewer.core.errors import SiteProfileError

__all__ = ["read_site_labels"]

# ---------------------------------------------------------------------- site data
_LABEL_VALUES = {"1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "positive": 1.0, "negative": 0.0, "pos": 1.0, "neg": 0.0,
                 "yes": 1.0, "no": 0.0, "true": 1.0, "false": 0.0, "": math.nan, "unsure": math.nan, "nan": math.nan}  # fmt: skip


def read_site_labels(
    folder: str | Path, labels_csv: str | Path, model_labels: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The site's labelled films: ``[{image, patient_id, labels: {finding: 1.0 | 0.0 | nan}}]`` and the findings found.

    The CSV has a ``file`` (or ``image``) column relative to ``folder``, one column per
    finding named like the model's labels (any case; 1/0, positive/negative, yes/no; blank
    or ``unsure`` = unknown) and optionally ``patient_id`` (else each film is its own patient).
    """
    import csv

    folder, labels_csv = Path(folder), Path(labels_csv)
    if not folder.is_dir():
        raise SiteProfileError(f"The site folder {folder} does not exist.", path=folder)
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
            table = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SiteProfileError(f"The site labels {labels_csv} could not be read as CSV ({exc}).", path=labels_csv) from None
    header = list(table[0].keys()) if table else []
    cols = {str(c).strip().lower(): c for c in header}
    file_col = cols.get("file") or cols.get("image")
    if file_col is None:
        raise SiteProfileError(f"The site labels {labels_csv.name} need a 'file' column (paths relative to the folder).")
    found = [lab for lab in model_labels if lab.lower() in cols]
    if not found:
        raise SiteProfileError(f"The site labels {labels_csv.name} have no column for the model's findings "
                               f"({', '.join(model_labels)}); name a column after the finding.")  # fmt: skip
    pid_col = cols.get("patient_id")
    rows, missing = [], []
    for n, r in enumerate(table, 2):
        image = folder / str(r[file_col]).strip()
        if not image.is_file():
            missing.append(image.name)
        labels = {}
        for lab in found:
            v = str(r.get(cols[lab.lower()]) or "").strip().lower()
            if v not in _LABEL_VALUES:
                raise SiteProfileError(f"{labels_csv.name} line {n}: {lab} is {v!r}; use 1/0 (or positive/negative), "
                                       "blank = unknown.")  # fmt: skip
            labels[lab] = _LABEL_VALUES[v]
        pid = str(r.get(pid_col) or "").strip() if pid_col else ""
        rows.append({"image": str(image.resolve()), "patient_id": pid or str(r[file_col]), "labels": labels})
    if missing:
        raise SiteProfileError(f"{len(missing)} film(s) listed in {labels_csv.name} are not in {folder} "
                               f"(first: {missing[0]}).")  # fmt: skip
    if not rows:
        raise SiteProfileError(f"The site labels {labels_csv.name} list no films.")
    return rows, found

