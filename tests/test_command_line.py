"""The command line as a user types it: one parser for the window, --screenshot and the headless form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_viewer.cli import main as cli_main
from cxr_viewer.core.models.testing import make_untrained_bundle
from cxr_viewer.headless import analyze_main

REPO = Path(__file__).resolve().parents[1]
NIH_SAMPLE = REPO / "resources" / "samples" / "nih_chest.png"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_models")
    make_untrained_bundle(root / "tiny", name="tiny", labels=["Effusion", "Nodule"], size=(64, 64), seed=3)
    return root


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for command in ("analyze", "worklist", "listen", "pacs", "export-corrections", "--self-test", "--screenshot"):
        assert f"cxr-viewer {command}" in text, command
    assert "1400x900" in text  # the real default size, as the README says


def test_readme_states_the_real_default_size() -> None:
    from cxr_viewer.qt.app import SCREENSHOT_SIZE

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    w, h = SCREENSHOT_SIZE
    assert f"{w}×{h}" in readme or f"{w}x{h}" in readme
    assert "1440" not in readme


def test_headless_takes_the_window_arguments_and_a_folder(tmp_path: Path, tiny_models: Path) -> None:
    """No display: `cxr-viewer FOLDER --heatmap Effusion --size WxH --models DIR` (space-separated values)
    writes a screenshot at that size and one JSON object per image in the folder."""
    films = tmp_path / "films"
    films.mkdir()
    img = Image.open(NIH_SAMPLE).convert("L").resize((256, 256))
    img.save(films / "a.png")
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(films / "b.png")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "config"), OMP_NUM_THREADS="2",
               CXR_VIEWER_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_viewer.cli", str(films), "--heatmap", "Effusion", "--size", "1100x700",
         "--models", str(tiny_models), "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "expected one argument" not in proc.stderr and "Traceback" not in proc.stderr
    shot = np.asarray(Image.open(out / "screenshot.png").convert("RGB"))
    assert shot.shape == (700, 1100, 3)
    data = json.loads((out / "analysis.json").read_text())
    assert sorted(Path(d["file"]).name for d in data) == ["a.png", "b.png"]
    assert all(d["status"] == "ok" for d in data)
    assert all("tiny" in {m["name"] for m in d["models"]} for d in data), "--models DIR reaches the analysis"
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir()), "nothing written into the working folder"


def test_gradcam_plus_plus_does_not_overwrite_gradcam(tmp_path: Path, tiny_models: Path, capsys) -> None:
    paths = {}
    for method in ("gradcam", "gradcam++"):
        rc = analyze_main([str(NIH_SAMPLE), "--no-default-models", "--models", str(tiny_models), "--cam", "Nodule",
                           "--cam-method", method, "--cam-out", str(tmp_path), "--no-faithfulness",
                           "--backend", "torch"])
        assert rc == 0
        paths[method] = json.loads(capsys.readouterr().out)[0]["cam"]["path"]
    assert paths["gradcam"] != paths["gradcam++"]
    assert Path(paths["gradcam"]).exists() and Path(paths["gradcam++"]).exists()
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_report_writes_masks_only_with_mask_out(tmp_path: Path, tiny_models: Path, monkeypatch, capsys) -> None:
    from tests.qt.bundles import build_segmenter

    seg_dir = tmp_path / "seg_models"
    build_segmenter(seg_dir / "seg")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = [str(NIH_SAMPLE), "--no-default-models", "--models", str(tiny_models), "--models", str(seg_dir),
            "--report", "Right lower lobe opacity. The left lung is clear.", "--backend", "torch"]
    json_out = tmp_path / "j" / "result.json"
    assert analyze_main([*args, "--json", str(json_out)]) == 0
    obj = json.loads(json_out.read_text())[0]
    assert len(obj["masks"]) == 2 and all("path" not in m for m in obj["masks"])
    assert list(work.iterdir()) == [] and [p.name for p in json_out.parent.iterdir()] == ["result.json"]
    masks = tmp_path / "masks"
    assert analyze_main([*args, "--mask-out", str(masks)]) == 0
    obj = json.loads(capsys.readouterr().out)[0]
    assert len(list(masks.glob("*.png"))) == 2 and all(Path(m["path"]).parent == masks for m in obj["masks"])
