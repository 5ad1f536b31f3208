"""Fuzzing the DICOM reader (short runs; ``benchmarks/fuzz_reader.py`` runs long ones).

Property over every input: ``read_image`` gives a record with finite pixels in [0, 1] (and
a finite window and spacing, if any), or an ``ImageReadError`` with a message and the
file's path; never another exception. ``CXR_FUZZ_EXAMPLES`` raises the Hypothesis budget.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_reader import check_file, mutate, run_mutate, seed_corpus

EXAMPLES = int(os.environ.get("CXR_FUZZ_EXAMPLES", "40"))

_US = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 64, 65535]), st.integers(0, 65535))
_DS = st.one_of(
    st.sampled_from(["0", "-1", "1", "1e308", "-1e308", "1e-308", "nan", "inf", "-inf", "4095", "1e300", ""]),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: f"{v:.6g}"),
)
_IS = st.one_of(st.sampled_from(["0", "1", "2", "-1", "2147483647", "abc", ""]), st.integers(-5, 10**9).map(str))
_PHOTOMETRIC = st.sampled_from(["MONOCHROME1", "MONOCHROME2", "MONOCHROME3", "RGB", "YBR_FULL", "YBR_FULL_422",
                                "PALETTE COLOR", "", "HSV", "monochrome2"])
_SYNTAX = st.sampled_from(["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
                           "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
                           "1.2.840.10008.1.2.4.102", "9.9.9"])


def _header_fields() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional={
        "Rows": _US, "Columns": _US, "BitsAllocated": _US, "BitsStored": _US, "HighBit": _US,
        "PixelRepresentation": _US, "SamplesPerPixel": _US, "PlanarConfiguration": _US,
        "PhotometricInterpretation": _PHOTOMETRIC, "NumberOfFrames": _IS,
        "WindowCenter": _DS, "WindowWidth": _DS, "RescaleSlope": _DS, "RescaleIntercept": _DS,
        "PixelSpacing": st.lists(_DS, min_size=0, max_size=3), "ImagerPixelSpacing": st.lists(_DS, max_size=2),
        "EstimatedRadiographicMagnificationFactor": _DS, "VOILUTFunction": st.sampled_from(["LINEAR", "SIGMOID", "X"]),
        "TransferSyntaxUID": _SYNTAX,
    })


_VR = {"Rows": "US", "Columns": "US", "BitsAllocated": "US", "BitsStored": "US", "HighBit": "US",
       "PixelRepresentation": "US", "SamplesPerPixel": "US", "PlanarConfiguration": "US",
       "PhotometricInterpretation": "CS", "NumberOfFrames": "IS", "WindowCenter": "DS", "WindowWidth": "DS",
       "RescaleSlope": "DS", "RescaleIntercept": "DS", "PixelSpacing": "DS", "ImagerPixelSpacing": "DS",
       "EstimatedRadiographicMagnificationFactor": "DS", "VOILUTFunction": "CS"}


def _write(path: Path, fields: dict, pixel_bytes: bytes) -> None:
    """A CR file with the given header values written verbatim (no validation), and raw pixel bytes."""
    from pydicom import config, dcmwrite
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = fields.pop("TransferSyntaxUID", "1.2.840.10008.1.2.1")
    ds.Modality = "CR"
    base = {"Rows": 16, "Columns": 16, "BitsAllocated": 16, "BitsStored": 12, "HighBit": 11,
            "PixelRepresentation": 0, "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2"}
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the very values under test
            for kw, value in {**base, **fields}.items():
                if isinstance(value, list):
                    value = "\\".join(value)
                ds.add_new(tag_for_keyword(kw), _VR[kw], value)
            ds.add_new(0x7FE00010, "OW", pixel_bytes)
            little = ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
            implicit = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
            buf = io.BytesIO()
            dcmwrite(buf, ds, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
    finally:
        config.settings.writing_validation_mode = old
    path.write_bytes(buf.getvalue())


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fields=_header_fields(), length=st.sampled_from([0, 1, 511, 512, 513, 1024, 4096]), fill=st.integers(0, 255))
def test_header_fields_never_escape_the_domain_errors(tmp_path: Path, fields: dict, length: int, fill: int) -> None:
    f = tmp_path / "h.dcm"
    rng = np.random.default_rng(fill)
    try:
        _write(f, dict(fields), rng.integers(0, 256, length, dtype=np.uint8).tobytes())
    except (ValueError, TypeError, OverflowError, KeyError):
        return  # pydicom cannot even write these values; nothing for the reader to see
    check_file(f)


def test_mutations_of_real_and_built_files(tmp_path: Path, dicom_dir: Path) -> None:
    """A seeded mutational run over the corpus (real DICOMs from the shared data plus built files)."""
    seeds = seed_corpus(tmp_path / "corpus", real_dir=dicom_dir)
    real = [p for p in seeds if p.name.startswith("real_")]
    assert len(real) == len(list(dicom_dir.glob("*.dcm"))) > 0
    stats = run_mutate(seeds, seconds=30.0, iterations=int(os.environ.get("CXR_FUZZ_ITERATIONS", "150")),
                       out=tmp_path, seed=1)
    bugs = {k: v for k, v in stats.items() if k.startswith("BUG")}
    assert not bugs, f"{bugs}; inputs in {tmp_path / 'crashes'}"
    assert stats.get("ok", 0) > 0 and sum(stats.values()) > 20  # both outcomes were reached


def test_mutate_is_deterministic_and_changes_the_input() -> None:
    data = bytes(range(256)) * 20
    a = [mutate(data, random.Random(3)) for _ in range(3)]
    assert a == [mutate(data, random.Random(3)) for _ in range(3)]
    assert all(x != data for x in a)


@pytest.mark.parametrize("name", ["native16.dcm", "jpeg8.dcm", "float32.dcm", "gray8.png"])
def test_built_seeds_read_cleanly(tmp_path: Path, name: str) -> None:
    seeds = {p.name: p for p in seed_corpus(tmp_path / "c", with_real=False)}
    assert check_file(seeds[name]) == "ok"


# --------------------------------------------------------------------------- the other parsers
from benchmarks.fuzz_reader import TARGETS, _json_seeds, run_target  # noqa: E402

_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=False),
              st.text(max_size=40), st.sampled_from(["../../etc/passwd", "=HYPERLINK(1)", "isotonic", "platt"])),
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=12), kids, max_size=6)),
    max_leaves=30,
)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_parser_target_keeps_its_property_under_mutation(tmp_path: Path, target: str) -> None:
    """Each new parser (site profiles, corrections, annotation sidecars, worklist rows), a seeded mutational run."""
    stats = run_target(target, seconds=30.0, iterations=int(os.environ.get("CXR_FUZZ_ITERATIONS", "150")),
                       out=tmp_path, seed=2)
    bugs = {k: v for k, v in stats.items() if k.startswith("BUG")}
    assert not bugs, f"{bugs}; inputs in {tmp_path / ('crashes-' + target)}"
    assert len(stats) >= 2  # both refusals and accepted inputs were reached


@pytest.mark.parametrize("target", sorted(TARGETS))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_JSON, where=st.sampled_from(["root", "finding", "calibration", "annotation", "row"]))
def test_parser_target_on_arbitrary_json(tmp_path: Path, target: str, doc: object, where: str) -> None:
    """Arbitrary JSON values spliced into a valid document of each parser: its property holds."""
    import json

    text = _json_seeds(target)[0].decode()
    seed = json.loads(text if target != "corrections" else text.splitlines()[0])
    if where == "root" or not isinstance(seed, (dict, list)):
        value = doc
    elif isinstance(seed, list):
        value = [doc, *seed]
    else:
        value = dict(seed)
        key = {"finding": "findings", "calibration": "findings", "annotation": "annotations", "row": "model"}[where]
        value[key] = {"Effusion": {"threshold": 0.5, "calibration": doc}} if where == "calibration" else doc
    f = tmp_path / "input.json"
    f.write_text(json.dumps(value))
    TARGETS[target](f)
