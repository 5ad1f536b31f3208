"""`cxr-train export` and the run's own bundle are written into a staging folder and swapped in whole:
an export that fails half-way leaves the previous good bundle loadable and unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_viewer.core.errors import ImageReadError
from cxr_viewer.core.models.bundle import find_bundles, load_bundle
from cxr_viewer.core.models.testing import make_untrained_bundle
from trainer.export import export_bundle, write_bundle


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_export_keeps_the_previous_bundle(tmp_path: Path, data_dir: Path) -> None:
    src = make_untrained_bundle(tmp_path / "src", name="tiny", labels=["Effusion"], backbone="resnet10t", size=(32, 32))
    golden = sorted((data_dir / "nih14" / "images").iterdir())[0]
    out = tmp_path / "models" / "tiny"
    export_bundle(src, out, golden_images=[str(golden)], version="1.0.0")
    before = _files(out)
    assert "golden/golden_0.png" in before
    # the second export writes new weights into its staging folder, then fails on its golden image
    with pytest.raises(ImageReadError):
        export_bundle(src, out, golden_images=[str(tmp_path / "missing.png")], version="2.0.0", dtype="float32")
    assert _files(out) == before
    assert load_bundle(out).manifest.version == "1.0.0"
    assert [i.path.name for i in find_bundles([out.parent])] == ["tiny"]
    export_bundle(src, out, version="3.0.0")  # and a good export still replaces it
    assert load_bundle(out).manifest.version == "3.0.0" and not (out / "golden").exists()


def test_write_bundle_failure_keeps_the_run_bundle(tmp_path: Path) -> None:
    import torch

    src = make_untrained_bundle(tmp_path / "src", name="tiny", labels=["Effusion"], backbone="resnet10t", size=(32, 32))
    loaded = load_bundle(src)
    out = tmp_path / "run" / "bundle"
    write_bundle(loaded.model, loaded.manifest.to_dict(), out)
    before = _files(out)
    with pytest.raises(Exception):  # noqa: B017 - whatever save_bundle raises for a bad manifest
        write_bundle(torch.nn.Linear(2, 2), {**loaded.manifest.to_dict(), "task": "regression"}, out)
    assert _files(out) == before
