"""``analyze`` with annotations saved beside the image: read into the record; a damaged sidecar is a warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cxr_viewer.core.imaging.measurements import make_distance, save_annotations, sidecar_path
from cxr_viewer.core.io import read_image
from cxr_viewer.headless import analyze_main


def test_sidecar_measurements_reach_the_json_and_a_damaged_one_is_a_warning(repo_root: Path, tmp_path: Path) -> None:
    image = tmp_path / "film.dcm"
    shutil.copy(repo_root / "resources" / "samples" / "siim_cr_chest.dcm", image)
    record = read_image(image)
    save_annotations(sidecar_path(image), [make_distance(record, (100, 100), (100, 400))], record)
    bad = tmp_path / "bad.png"
    shutil.copy(repo_root / "resources" / "samples" / "nih_chest.png", bad)
    sidecar_path(bad).write_text("{ not json", encoding="utf-8")
    models = repo_root / "resources" / "models"
    rc = analyze_main([str(image), str(bad), "--json", str(tmp_path / "a.json"), "--models", str(models),
                       "--no-default-models", "--pdf-out", str(tmp_path / "pdf")])
    good, damaged = json.loads((tmp_path / "a.json").read_text())
    assert rc == 0 and good["status"] == damaged["status"] == "ok"
    (m,) = good["measurements"]
    assert m["kind"] == "distance" and m["value"].endswith(" mm")
    assert all({"state", "threshold_source", "display_name"} <= set(f) for f in good["findings"])
    assert "measurements" not in damaged and any("annotations saved beside" in w for w in damaged["warnings"])
    assert Path(damaged["report_pdf"]).is_file()
