"""What the viewer's own install (no torch, no trainer packages) says when asked for more than it has."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.packaging.test_onnx_lane import _torch_free

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "resources" / "samples" / "nih_chest.png"


def test_torch_backend_without_torch_is_refused_with_a_message(tmp_path: Path) -> None:
    p = _torch_free(f"""
        from cxr_viewer.headless import analyze_main
        print("RC", analyze_main([r"{SAMPLE}", "--backend", "torch", "--json", r"{tmp_path / 'a.json'}"]))
    """, tmp_path)
    assert "RC 2" in p.stdout, p.stdout + p.stderr
    assert "PyTorch is not installed" in p.stderr and "--backend onnx" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "a.json").exists() or "onnx" not in (tmp_path / "a.json").read_text()


def test_cxr_train_without_the_trainer_packages_names_the_install(tmp_path: Path) -> None:
    """As after `pip install -r requirements/viewer.txt`: pandas and Lightning are absent."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"pandas", "lightning", "sklearn"}:
                    raise ModuleNotFoundError("No module named " + repr(name), name=name)
        sys.meta_path.insert(0, Block())
        from trainer.cli import main
        print("RC", main(["data", "build", "--adapter", "nih14", "--root", r"{tmp_path}", "--out", r"{tmp_path / 'y.csv'}"]))
    """))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "RC 2" in p.stdout, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert "requirements/dev.txt" in p.stderr and "'pandas'" in p.stderr
