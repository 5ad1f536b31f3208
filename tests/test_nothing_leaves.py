"""`cxr-viewer analyze` in a fresh home writes nothing outside our own folders: in particular ONNX Runtime
keeps no telemetry device ID or event queue (~/.cache/Microsoft/), because the package turns it off itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cxr_viewer.core.models.testing import make_untrained_bundle

REPO = Path(__file__).resolve().parents[1]
OURS = (".cache/cxr-viewer", ".local/share/cxr-viewer", ".config/cxr-viewer")


def test_analyze_in_a_fresh_home_writes_only_our_folders(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_untrained_bundle(models / "tiny", name="tiny", labels=["Effusion"], backbone="resnet10t", size=(64, 64))
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "CXR_VIEWER_", "ORT_")) and k not in ("HOME", "TMPDIR")}
    env.update(HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME=str(home / ".cache"),
               XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local" / "share"),
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    out = tmp_path / "out" / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_viewer.cli", "analyze", str(REPO / "resources" / "samples" / "nih_chest.png"),
         "--no-default-models", "--models", str(models), "--backend", "onnx", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())[0]
    assert result["backend"] == {"tiny": "onnx"}  # ONNX Runtime really ran
    written = sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file())
    # (the export is regenerated in memory from the verified weights: writing nothing at all is fine)
    strays = [w for w in written if not w.startswith(OURS)]
    assert strays == [], f"written outside our folders: {strays}"
    assert not any(tmp.iterdir())  # and no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "models", "out", "tmp"]  # nothing in the cwd
