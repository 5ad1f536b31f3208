"""Corrections are stored with provenance and exported as a trainer manifest (latest word wins)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.corrections import Correction, CorrectionError, CorrectionStore
from cxr_viewer.core.inference.results import Finding
from cxr_viewer.headless import export_corrections_main


def test_store_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = CorrectionStore(tmp_path / "store")
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    from PIL import Image

    for f in (a, b, c):  # the films exist: the export refuses a path that is no image
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(f)
    high = Finding("Pneumonia", 0.81, 0.5, "pneu", "1.0", "site profile ward v2: target sensitivity 0.9", raw_score=0.6)
    low = Finding("Pneumonia", 0.20, 0.5, "pneu", "1.0", "youden")
    wrong = store.add_for_finding(a, high, correct=False, patient_id="P1", model_sha256="ab" * 32, reader="dr x")
    assert wrong.value == 0.0 and wrong.kind == "marked_wrong" and wrong.site_profile == "ward v2"
    assert wrong.model == {"name": "pneu", "version": "1.0", "sha256": "ab" * 32} and wrong.model_score == 0.81
    store.add_for_finding(b, low, correct=False, patient_id="P2")  # missed: below threshold, reader says present
    store.add_for_finding(b, low, correct=None, patient_id="P2")  # then unsure: the latest word wins
    store.add_for_finding(c, high, correct=True, patient_id="P2")
    store.add_missed(a, "Effusion", patient_id="P1")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    m = store.add_mask(c, "right lower zone opacity", mask, patient_id="P2", content_hash="f" * 64)
    assert Path(m.mask).is_file() and m.kind == "mask_edit"
    with store.path.open("a") as fh:
        fh.write("{not json\n")  # a torn line is skipped, the rest still reads
    assert len(store.all()) == 6
    with pytest.raises(CorrectionError, match="present"):
        Correction(str(a), "X", 0.5)

    out = tmp_path / "site.csv"
    assert export_corrections_main(["--out", str(out), "--store", str(store.folder), "--label", "Pneumonia",
                                    "--label", "Effusion"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out.open())}
    assert summary["images"] == 3 and summary["patients"] == 2
    assert rows["a.png"]["Pneumonia"] == "0" and rows["a.png"]["Effusion"] == "1" and rows["a.png"]["patient_id"] == "P1"
    assert rows["b.png"]["Pneumonia"] == "" and rows["c.png"]["Pneumonia"] == "1"
    assert summary["labels"]["Pneumonia"] == {"positive": 1, "negative": 1}

    assert export_corrections_main(["--out", str(out), "--store", str(tmp_path / "empty")]) == 1
    assert "No corrections are stored" in capsys.readouterr().err
