"""Every set in the shared data folder loads through an adapter; official layouts are rebuilt in tmp_path."""

from __future__ import annotations

import gzip
import io
import json
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from cxr_viewer.core.errors import TrainingDataError
from trainer.data.adapters import NIH_FINDINGS, build_manifest, kermany_patient
from trainer.data.manifest import label_columns, read_manifest, write_manifest


def _all_exist(frame: pd.DataFrame) -> bool:
    return all(os.path.exists(p) for p in frame["image"])


def test_nih14_shared_layout(data_dir: Path) -> None:
    f = build_manifest("nih14", data_dir / "nih14")
    raw = pd.read_csv(data_dir / "nih14" / "labels.csv")
    assert len(f) == len(raw) and _all_exist(f)
    assert label_columns(f) == list(NIH_FINDINGS)
    # labels agree with the raw finding strings
    row = f[f["image"].str.endswith(raw["file"].iloc[1].split("/")[-1])].iloc[0]
    for lab in NIH_FINDINGS:
        assert row[lab] == int(lab in raw["finding_labels"].iloc[1])
    assert f["patient_id"].nunique() < len(f)  # several images of some patients


def test_nih14_official_layout(data_dir: Path, tmp_path: Path) -> None:
    """Data_Entry_2017 rows from the real full list + a few of our images under images_001/images."""
    with gzip.open(data_dir / "labels_only" / "Data_Entry_2017_v2020.csv.gz", "rt") as fh:
        entry = pd.read_csv(fh)
    ours = sorted((data_dir / "nih14" / "images").glob("*.jpg"))[:6]
    names = [p.stem + ".png" for p in ours]
    rows = entry[entry["Image Index"].isin(names)]
    assert len(rows) == len(names)
    folder = tmp_path / "images_001" / "images"
    folder.mkdir(parents=True)
    for p, n in zip(ours[:5], names[:5]):  # one listed image is missing on purpose
        (folder / n).write_bytes(p.read_bytes())
    rows.to_csv(tmp_path / "Data_Entry_2017_v2020.csv", index=False)
    f = build_manifest("nih14", tmp_path)
    assert len(f) == 5 and _all_exist(f)
    first = rows.set_index("Image Index").loc[Path(f["image"].iloc[0]).name]
    for lab in NIH_FINDINGS:
        assert f[lab].iloc[0] == int(lab in first["Finding Labels"].replace(" ", "_"))
    assert f["patient_id"].iloc[0] == str(first["Patient ID"])
    assert f["meta_view"].iloc[0] == first["View Position"]


def test_kermany_shared_and_folder_layout(data_dir: Path, tmp_path: Path) -> None:
    f = build_manifest("kermany", data_dir / "pneumonia_kermany")
    raw = pd.read_csv(data_dir / "pneumonia_kermany" / "labels.csv")
    assert len(f) == len(raw) and set(f["pneumonia"]) == {0, 1} and _all_exist(f)
    assert f["pneumonia"].sum() == raw["pneumonia"].sum() == (raw["file"].str.contains("/PNEUMONIA/")).sum()
    # the official folders: train/NORMAL, train/PNEUMONIA, test/...
    src = data_dir / "pneumonia_kermany" / "images"
    picks = {
        ("train", "NORMAL"): sorted((src / "NORMAL").glob("*"))[:3],
        ("train", "PNEUMONIA"): sorted((src / "PNEUMONIA").glob("*"))[:3],
        ("test", "PNEUMONIA"): sorted((src / "PNEUMONIA").glob("*"))[10:12],
    }
    for (split, cls), files in picks.items():
        d = tmp_path / split / cls
        d.mkdir(parents=True)
        for p in files:
            os.symlink(p, d / p.name)
    g = build_manifest("kermany", tmp_path)
    assert len(g) == 8 and set(g["split"]) == {"train", "test"}
    assert g.loc[g["image"].str.contains("/NORMAL/"), "pneumonia"].eq(0).all()
    # patient ids match the ones in the shared labels (parsed from the same names)
    shared = pd.read_csv(data_dir / "pneumonia_kermany" / "labels.csv").set_index("file")
    for img, pid in zip(g["image"], g["patient_id"]):
        cls = "NORMAL" if "/NORMAL/" in img else "PNEUMONIA"
        assert shared.loc[f"images/{cls}/{Path(img).name}", "patient_id"] == pid
    mc = build_manifest("kermany", data_dir / "pneumonia_kermany", multiclass=True)
    assert label_columns(mc) == ["normal", "bacterial", "viral"]
    assert (mc[["normal", "bacterial", "viral"]].sum(axis=1) == 1).all()


def test_kermany_patient_parser() -> None:
    assert kermany_patient("person12_virus_3.jpeg") == "P12"
    assert kermany_patient("IM-0115-0001.jpeg") == "N-0115"
    assert kermany_patient("NORMAL2-IM-0383-0001.jpeg") == "N2-0383"


def test_covid_collection(data_dir: Path) -> None:
    f = build_manifest("covid", data_dir / "covid_ieee8023")
    raw = pd.read_csv(data_dir / "covid_ieee8023" / "labels.csv").drop_duplicates("file")  # first listing wins
    frontal = raw[raw["view"].fillna("") != "L"]
    assert _all_exist(f) and f["image"].is_unique and len(f) == len(frontal)
    assert not f["meta_view"].eq("L").any()  # laterals left out by default
    assert f["covid19"].sum() == frontal["covid19"].sum() > 0
    assert "report" in f and f["report"].str.len().gt(0).sum() == frontal["clinical_notes"].notna().sum() > 0
    masks = f["mask"].fillna("")
    assert masks.str.len().gt(0).sum() == frontal["mask_lung_v7labs"].notna().sum() > 0
    assert all(Path(m).is_file() for m in masks if m)
    lat = build_manifest("covid", data_dir / "covid_ieee8023", include_lateral=True)
    assert len(lat) == len(raw)


def test_covid_official_metadata(data_dir: Path, tmp_path: Path) -> None:
    shared = pd.read_csv(data_dir / "covid_ieee8023" / "labels.csv").drop_duplicates("file").head(6)
    (tmp_path / "images").mkdir()
    for f in shared["file"]:
        os.symlink(data_dir / "covid_ieee8023" / f, tmp_path / f)
    meta = pd.DataFrame({
        "patientid": shared["patient_id"], "finding": shared["finding"], "view": shared["view"],
        "modality": "X-ray", "folder": "images", "filename": [Path(f).name for f in shared["file"]],
        "clinical_notes": shared["clinical_notes"],
    })  # fmt: skip
    meta.loc[meta.index[-1], "view"] = "L"  # one lateral view: left out unless asked for
    meta.to_csv(tmp_path / "metadata.csv", index=False)
    f = build_manifest("covid", tmp_path, include_lateral=True)
    assert len(f) == 6
    assert list(f["covid19"].astype(int)) == [int("COVID" in str(x)) for x in shared["finding"]]
    frontal = build_manifest("covid", tmp_path)
    assert list(frontal["image"]) == list(f["image"])[:5]


def test_tbx11k_shared_and_sample(data_dir: Path) -> None:
    f = build_manifest("tbx11k", data_dir / "tbx11k")
    assert len(f) == len(pd.read_csv(data_dir / "tbx11k" / "labels.csv")) and f["tuberculosis"].eq(1).all()
    boxes = pd.read_csv(data_dir / "tbx11k" / "boxes.csv")
    assert sum(len(json.loads(b)) for b in f["boxes"]) == len(boxes)
    s = build_manifest("tbx11k", data_dir / "tbx11k_sample")
    assert sorted(s["tuberculosis"]) == [0, 1, 1]
    assert len(json.loads(s.loc[s["image"].str.endswith("tb0005.png"), "boxes"].iloc[0])) >= 1  # from the COCO json


def test_tbx11k_official_layout(data_dir: Path, tmp_path: Path) -> None:
    """imgs/{tb,health} + lists/*.txt + annotations/xml (Pascal VOC) built from our boxes.csv."""
    boxes = pd.read_csv(data_dir / "tbx11k" / "boxes.csv")
    (tmp_path / "imgs" / "tb").mkdir(parents=True)
    (tmp_path / "imgs" / "health").mkdir(parents=True)
    (tmp_path / "annotations" / "xml").mkdir(parents=True)
    (tmp_path / "lists").mkdir()
    names = []
    for file, grp in list(boxes.groupby("file"))[:3]:
        stem = Path(file).stem
        os.symlink(data_dir / "tbx11k" / file, tmp_path / "imgs" / "tb" / f"{stem}.jpg")
        objs = "".join(
            f"<object><name>{r.category}</name><bndbox><xmin>{r.xmin}</xmin><ymin>{r.ymin}</ymin>"
            f"<xmax>{r.xmax}</xmax><ymax>{r.ymax}</ymax></bndbox></object>"
            for r in grp.itertuples()
        )
        (tmp_path / "annotations" / "xml" / f"{stem}.xml").write_text(f"<annotation>{objs}</annotation>")
        names.append(f"tb/{stem}.jpg")
    os.symlink(data_dir / "tbx11k_sample" / "images" / "h0001.png", tmp_path / "imgs" / "health" / "h0001.png")
    names.append("health/h0001.png")
    (tmp_path / "lists" / "all_trainval.txt").write_text("\n".join(names) + "\n")
    f = build_manifest("tbx11k", tmp_path)
    assert list(f["tuberculosis"]) == [1, 1, 1, 0]
    assert [len(json.loads(b)) for b in f["boxes"]] == [len(g) for _, g in list(boxes.groupby("file"))[:3]] + [0]


def test_shenzhen_sample_and_montgomery_names(data_dir: Path, tmp_path: Path) -> None:
    f = build_manifest("shenzhen", data_dir / "shenzhen_sample")
    assert len(f) == len(pd.read_csv(data_dir / "shenzhen_sample" / "labels.csv")) and f["tuberculosis"].eq(0).all()
    assert all(os.path.exists(m) for m in f["mask"])
    assert f["patient_id"].iloc[0] == "CHNCXR_0001"
    # Montgomery naming: last digit is the TB label; clinical readings become the report
    src = data_dir / "shenzhen_sample" / "images" / "CHNCXR_0001_0.png"
    (tmp_path / "CXR_png").mkdir()
    (tmp_path / "ClinicalReadings").mkdir()
    os.symlink(src, tmp_path / "CXR_png" / "MCUCXR_0104_1.png")
    (tmp_path / "ClinicalReadings" / "MCUCXR_0104_1.txt").write_text("Patient's Sex: F\nright upper lobe cavity\n")
    m = build_manifest("shenzhen", tmp_path)
    assert m["tuberculosis"].tolist() == [1] and m["dataset"].tolist() == ["montgomery"]
    assert "cavity" in m["report"].iloc[0]


def test_rsna_layout(data_dir: Path, tmp_path: Path) -> None:
    """Real stage_2_train_labels.csv rows with our DICOMs renamed to the patientIds."""
    with zipfile.ZipFile(data_dir / "labels_only" / "kaggle_stage_2_train_labels.csv.zip") as z:
        labels = pd.read_csv(io.BytesIO(z.read("stage_2_train_labels.csv")))
    pos = labels[labels["Target"] == 1]["patientId"].drop_duplicates().head(2).tolist()
    neg = labels[labels["Target"] == 0]["patientId"].drop_duplicates().head(2).tolist()
    rows = labels[labels["patientId"].isin(pos + neg)]
    rows.to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    (tmp_path / "stage_2_train_images").mkdir()
    dicoms = sorted((data_dir / "dicom").glob("*.dcm"))
    for pid, dcm in zip(pos + neg, dicoms):
        os.symlink(dcm, tmp_path / "stage_2_train_images" / f"{pid}.dcm")
    f = build_manifest("rsna", tmp_path).set_index("patient_id")
    assert set(f.index) == set(pos + neg)
    for pid in pos:
        assert f.loc[pid, "lung_opacity"] == 1
        assert len(json.loads(f.loc[pid, "boxes"])) == int((rows["patientId"] == pid).sum())
    for pid in neg:
        assert f.loc[pid, "lung_opacity"] == 0 and json.loads(f.loc[pid, "boxes"]) == []


def test_generic_csv_and_folder(data_dir: Path) -> None:
    g = build_manifest("csv", data_dir / "tbx11k_sample", label_cols="tuberculosis", dataset="tbx-sample")
    assert label_columns(g) == ["tuberculosis"] and len(g) == 3
    d = build_manifest("folder", data_dir / "dicom")
    assert len(d) == len(list((data_dir / "dicom").glob("*.dcm"))) == 5 and not label_columns(d)
    # DICOM patient ids are pseudonymised, never copied
    assert all(p.startswith("h") and len(p) == 13 for p in d["patient_id"])
    c = build_manifest("folder", data_dir / "covid_ieee8023")  # mask folders are not images
    films = pd.read_csv(data_dir / "covid_ieee8023" / "labels.csv")["file"].nunique()
    assert len(c) >= films and not c["image"].str.contains("masks_").any()


def test_bad_folders_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="not an NIH"):
        build_manifest("nih14", tmp_path)
    with pytest.raises(TrainingDataError, match="Unknown adapter"):
        build_manifest("mimic", tmp_path)
    with pytest.raises(TrainingDataError, match="does not exist"):
        build_manifest("kermany", tmp_path / "nope")


def test_manifest_roundtrip_and_validation(data_dir: Path, tmp_path: Path) -> None:
    f = build_manifest("shenzhen", data_dir / "shenzhen_sample")
    path = write_manifest(f, tmp_path / "sub" / "m.csv")
    text = path.read_text()
    assert not text.splitlines()[1].startswith("/")  # paths stored relative to the manifest
    back = read_manifest(path)
    assert list(back.frame["image"]) == list(f["image"]) and back.labels == ["tuberculosis"]
    bad = f.copy()
    bad["tuberculosis"] = "yes"
    with pytest.raises(TrainingDataError, match="non-numeric"):
        write_manifest(bad, tmp_path / "bad.csv")
    bad = f.drop(columns=["patient_id"])
    with pytest.raises(TrainingDataError, match="patient_id"):
        write_manifest(bad, tmp_path / "bad.csv")
    gone = f.copy()
    gone.loc[0, "image"] = str(tmp_path / "missing.png")
    write_manifest(gone, tmp_path / "gone.csv")
    with pytest.raises(TrainingDataError, match="do not exist"):
        read_manifest(tmp_path / "gone.csv")


def test_cli_data_build_and_split(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import main

    out = tmp_path / "tb.csv"
    assert main(["data", "build", "--adapter", "tbx11k", "--root", str(data_dir / "tbx11k_sample"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert main(["data", "build", "--adapter", "nih14", "--root", str(tmp_path), "--out", str(out)]) == 1
    assert "not an NIH" in capsys.readouterr().err
