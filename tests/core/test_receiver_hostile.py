"""The C-STORE receiver under attack: `cxr-viewer listen` on loopback, real pynetdicom senders and raw sockets.

A sender is told Success only for a file on disk; junk, conflicting duplicates, oversized datasets,
malformed UIDs and strangers are refused with a failure status, and idle sockets cannot lock a real
sender out for longer than the ACSE timeout.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr_viewer.core.pacs.receiver import instance_path, safe_uid

pynetdicom = pytest.importorskip("pynetdicom")

CR = "1.2.840.10008.5.1.4.1.1.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_ds(sop: str | None = None, study: str | None = None, rows: int = 16, patient: str = "Doe^Jane") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = sop if sop is not None else generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = patient, "P1", "CR"
    ds.Rows, ds.Columns = rows, 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.random.default_rng(rows).integers(0, 4095, (rows, 16), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CR, ds.SOPInstanceUID
    return ds


class Listener:
    """`cxr-viewer listen` as a user runs it, in its own process."""

    def __init__(self, out: Path, *extra: str) -> None:
        self.port = free_port()
        self.out = out
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from cxr_viewer.cli import main; sys.exit(main(sys.argv[1:]))",
             "listen", "--port", str(self.port), "--ae-title", "CXRTEST", "--out", str(out), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.banner = self.proc.stdout.readline()
        assert "listening" in self.banner, self.proc.stderr.read()

    def stop(self) -> tuple[str, str]:
        import signal

        self.proc.send_signal(signal.SIGINT)  # Ctrl+C: the listener stops cleanly and prints its counts
        out, err = self.proc.communicate(timeout=30)
        return out, err


@pytest.fixture
def listener(tmp_path: Path, request: pytest.FixtureRequest):
    extra = getattr(request, "param", ())
    lst = Listener(tmp_path / "in", *extra)
    yield lst
    if lst.proc.poll() is None:
        lst.stop()


def send(port: int, items: list, ae: str = "SENDER", timeout: float = 20) -> list[int | None]:
    """C-STORE each dataset (or file path) over one association; the status per item (None: no answer)."""
    from pynetdicom import AE, _config

    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # a file goes over the wire byte for byte, as hostile as it is
    try:
        return _send(port, items, ae, timeout)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def _send(port: int, items: list, ae: str, timeout: float) -> list[int | None]:
    from pynetdicom import AE

    sender = AE(ae_title=ae)
    sender.acse_timeout = sender.dimse_timeout = sender.network_timeout = timeout
    sender.add_requested_context(CR, [ExplicitVRLittleEndian])
    assoc = sender.associate("127.0.0.1", port, ae_title="CXRTEST")
    if not assoc.is_established:
        return [None] * len(items)
    out: list[int | None] = []
    for item in items:
        try:
            st = assoc.send_c_store(item)
            out.append(int(st.Status) if st and "Status" in st else None)
        except Exception:  # noqa: BLE001 - an aborted association: no answer for this item
            out.append(None)
    if assoc.is_established:
        assoc.release()
    return out


def stored(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.dcm"))


def test_names_never_collide_for_uids_that_sanitise_alike() -> None:
    pairs = [("1.2.3", "1.2.3."), ("1.2.3a", "1.2.3b"), ("1.2.3", "1.2.3_"), ("", "unknown"), ("1.2", " 1.2")]
    for a, b in pairs:
        assert instance_path("o", "1.2", a) != instance_path("o", "1.2", b)
        assert "/" not in safe_uid(a) and ".." != safe_uid(a)
    assert safe_uid("1.2.840.1") == "1.2.840.1"  # a valid UID keeps its readable name


def test_junk_is_refused_with_a_failure_and_never_filed(listener: Listener, tmp_path: Path) -> None:
    good = make_ds()
    src = tmp_path / "good.dcm"
    good.save_as(src, enforce_file_format=True)
    whole = src.read_bytes()

    def variant(name: str, body: bytes) -> Path:  # file meta of a real instance, then a hostile body
        meta_end = len(whole) - len(good_body)
        p = tmp_path / name
        p.write_bytes(whole[:meta_end] + body)
        return p

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, good)
    good_body = buf.getvalue()
    rng = np.random.default_rng(1)
    junk = [variant("empty.dcm", b""), variant("truncated.dcm", good_body[: len(good_body) // 2]),
            variant("garbage.dcm", rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()),
            variant("cut-header.dcm", good_body[:37])]
    statuses = send(listener.port, [*junk, good])
    assert statuses[-1] == 0x0000, [hex(s or 0) for s in statuses]
    for name, st in zip(["empty", "truncated", "garbage", "cut-header"], statuses[:-1]):
        assert st is not None and st != 0x0000 and (st & 0xF000) in (0xA000, 0xC000), (name, hex(st or 0))
    assert stored(listener.out) == [instance_path(listener.out, good.StudyInstanceUID, good.SOPInstanceUID)]
    out, err = listener.stop()
    assert "Traceback" not in err and "4 refused" in out, err[-3000:]


def test_uids_that_sanitise_alike_never_overwrite_each_other(listener: Listener) -> None:
    study = generate_uid()
    a, b = make_ds("1.2.3.4", study, rows=16), make_ds("1.2.3.4.", study, rows=20)
    c, d = make_ds("1.2.3a", study, rows=24), make_ds("1.2.3b", study, rows=28)
    statuses = send(listener.port, [a, b, c, d])
    assert statuses[0] == 0x0000
    assert all(s not in (0x0000, None) for s in statuses[1:]), [hex(s or 0) for s in statuses]
    files = stored(listener.out)
    assert len(files) == 1
    from pydicom import dcmread

    assert dcmread(files[0]).Rows == 16  # the first instance, untouched


def test_duplicate_replaces_itself_only_when_identical(listener: Listener) -> None:
    first = make_ds("1.2.826.0.1.3680043.99.1", rows=16)
    again = make_ds("1.2.826.0.1.3680043.99.1", first.StudyInstanceUID, rows=16)
    again.SeriesInstanceUID = first.SeriesInstanceUID
    other = make_ds("1.2.826.0.1.3680043.99.1", first.StudyInstanceUID, rows=32)
    other.SeriesInstanceUID = first.SeriesInstanceUID
    assert send(listener.port, [first, again]) == [0, 0]
    st = send(listener.port, [other])[0]
    assert st is not None and st >= 0xA000
    from pydicom import dcmread

    assert dcmread(stored(listener.out)[0]).Rows == 16


def test_empty_and_overlong_uids_answer_at_once_with_a_mismatch(listener: Listener, monkeypatch) -> None:
    from pynetdicom import _config

    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))  # a sender that sends what it is given
    long_uid = "1." + "2" * 70
    t0 = time.monotonic()
    statuses = [send(listener.port, [ds])[0] for ds in (make_ds(""), make_ds(long_uid), make_ds(study=long_uid))]
    assert time.monotonic() - t0 < 15  # no 60 s hang
    # an over-long UID in the request's command is refused by pynetdicom itself, which aborts the association at
    # once (the sender sees a failure, never Success); in the dataset it is answered 0xA900, not 0xA700
    assert statuses[0] == 0xA900 and statuses[1] in (None, 0xA900) and statuses[2] == 0xA900, statuses
    assert send(listener.port, [make_ds()]) == [0x0000]
    assert len(stored(listener.out)) == 1
    out, err = listener.stop()
    assert "Traceback" not in err and not re.search(r"^ERROR", err, re.M), err[-2000:]
    assert re.search(r"[23] refused", out)


@pytest.mark.parametrize("listener", [("--max-size", "1")], indirect=True)
def test_size_limit_refuses_while_streaming(listener: Listener) -> None:
    big = make_ds(rows=1600)  # 1600x16x2 bytes... made larger below
    big.Rows, big.Columns = 1024, 1536
    big.PixelData = np.zeros((1024, 1536), dtype=np.uint16).tobytes()  # 3 MiB > 1 MB
    small = make_ds(rows=64)
    assert send(listener.port, [big])[0] != 0x0000
    assert send(listener.port, [small]) == [0x0000]
    assert [p.name for p in stored(listener.out)] == [f"{small.SOPInstanceUID}.dcm"]


@pytest.mark.parametrize("listener", [("--acse-timeout", "2", "--max-associations", "4")], indirect=True)
def test_idle_and_hostile_sockets_do_not_lock_out_a_real_sender(listener: Listener) -> None:
    socks = []
    for i in range(12):  # idle TCP connections, and some sending garbage
        s = socket.create_connection(("127.0.0.1", listener.port))
        if i % 3 == 0:
            s.sendall(os.urandom(64))
        socks.append(s)
    try:
        ds = make_ds()
        deadline, status = time.monotonic() + 20, None
        while time.monotonic() < deadline and status != 0x0000:
            status = send(listener.port, [ds])[0]
            if status != 0x0000:
                time.sleep(0.5)
        assert status == 0x0000
        # and several real senders at once after that
        results = [send(listener.port, [make_ds()])[0] for _ in range(6)]
        assert results == [0x0000] * 6
    finally:
        for s in socks:
            s.close()
    assert len(stored(listener.out)) == 7


@pytest.mark.parametrize("listener", [("--allowed-ae", "MODALITY1,PACS2")], indirect=True)
def test_loopback_by_default_and_calling_ae_allow_list(listener: Listener) -> None:
    assert "on 127.0.0.1:" in listener.banner
    assert send(listener.port, [make_ds()], ae="STRANGER") == [None]
    assert send(listener.port, [make_ds()], ae="PACS2") == [0x0000]
    assert len(stored(listener.out)) == 1


def test_receiver_defaults_to_loopback(tmp_path: Path) -> None:
    from cxr_viewer.core.pacs import LocalNode, StorageReceiver

    with StorageReceiver(LocalNode("CXRTEST", 0), tmp_path) as rx:
        assert rx._server.server_address[0] == "127.0.0.1"
