"""Receiver soak: `cxr-viewer listen` on loopback under real senders and hostile clients for a bounded time.

N pynetdicom senders store small CR instances in a loop; beside them hostile clients open idle
sockets, send garbage bytes, truncated and oversized datasets, duplicates that differ and requests
without UIDs. At the end every instance a sender was told Success is checked on disk, byte for
byte after the file meta. The figures:

- ``stored``: instances on disk; ``refused``: good instances answered with a failure or an abort
  (the sender knows, and would retry);
- ``lost``: good instances answered Success but absent or different on disk (goal 0);
- ``false_successes``: hostile datasets answered Success (goal 0);
- the time to store one instance (median, p95) under that load, and the listener's peak RSS.

    python benchmarks/bench_receiver_soak.py [--senders 8] [--hostile 6] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CR = "1.2.840.10008.5.1.4.1.1.1"


def make_ds(rows: int = 32, seed: int = 0, sop: str | None = None):
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CR, sop if sop is not None else generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Soak^Test", "SOAK", "CR"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.random.default_rng(seed).integers(0, 4095, (rows, rows), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CR, ds.SOPInstanceUID
    return ds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.succeeded: list[tuple[str, str, bytes]] = []  # study, sop, pixel bytes
        self.refused = 0
        self.hostile_sent = 0
        self.false_successes: list[str] = []
        self.latency: list[float] = []


def associate(port: int, ae: str = "SOAK"):
    from pynetdicom import AE
    from pydicom.uid import ExplicitVRLittleEndian

    a = AE(ae_title=ae)
    a.acse_timeout = a.dimse_timeout = a.network_timeout = 30
    a.add_requested_context(CR, [ExplicitVRLittleEndian])
    return a.associate("127.0.0.1", port, ae_title="CXRSOAK")


def sender(port: int, stop: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    n = 0
    while time.monotonic() < stop:
        assoc = associate(port)
        if not assoc.is_established:
            with tally.lock:
                tally.refused += 1
            time.sleep(0.2)
            continue
        for _ in range(rng.randint(1, 5)):
            n += 1
            ds = make_ds(rows=rng.choice([16, 32, 64]), seed=seed * 100000 + n)
            t0 = time.perf_counter()
            try:
                st = assoc.send_c_store(ds)
                status = int(st.Status) if st and "Status" in st else None
            except Exception:  # noqa: BLE001 - an aborted association: no answer
                status = None
            with tally.lock:
                if status == 0:
                    tally.succeeded.append((ds.StudyInstanceUID, ds.SOPInstanceUID, ds.PixelData))
                    tally.latency.append(time.perf_counter() - t0)
                else:
                    tally.refused += 1
            if not assoc.is_established:
                break
        if assoc.is_established:
            assoc.release()


def hostile(port: int, stop: float, tally: Tally, seed: int, tmp: Path) -> None:
    from pynetdicom import _config

    rng = random.Random(seed)
    k = 0
    while time.monotonic() < stop:
        k += 1
        kind = rng.choice(["idle", "garbage", "truncated", "oversize", "conflict", "no-uid", "empty"])
        if kind in ("idle", "garbage"):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                if kind == "garbage":
                    s.sendall(os.urandom(rng.randint(1, 4096)))
                time.sleep(rng.uniform(0.5, 3.0))
                s.close()
            except OSError:
                pass
            continue
        items: list = []
        if kind == "oversize":
            ds = make_ds(rows=1500, seed=k)  # 4.5 MB > the soak's 2 MB limit
            items = [ds]
        elif kind == "no-uid":
            items = [make_ds(sop="", seed=k)]
        elif kind == "conflict":  # an instance already stored by a sender, with other pixels
            with tally.lock:
                known = rng.choice(tally.succeeded) if tally.succeeded else None
            if known is None:
                continue
            ds = make_ds(rows=16, seed=10**9 + k, sop=known[1])
            ds.StudyInstanceUID = known[0]
            items = [ds]
        else:  # truncated or empty body behind a valid file meta, sent byte for byte
            good = make_ds(rows=32, seed=k)
            f = tmp / f"h{seed}_{k}.dcm"
            good.save_as(f, enforce_file_format=True)
            raw = f.read_bytes()
            from pydicom.filebase import DicomBytesIO
            from pydicom.filewriter import write_dataset

            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = True, False
            write_dataset(buf, good)
            body = buf.getvalue()
            meta = raw[: len(raw) - len(body)]
            f.write_bytes(meta + (b"" if kind == "empty" else body[: rng.randint(1, len(body) - 1)]))
            items = [f]
        assoc = associate(port, ae="HOSTILE")
        if not assoc.is_established:
            continue
        _config.STORE_SEND_CHUNKED_DATASET = True
        for item in items:
            with tally.lock:
                tally.hostile_sent += 1
            try:
                st = assoc.send_c_store(item)
                status = int(st.Status) if st and "Status" in st else None
            except Exception:  # noqa: BLE001
                status = None
            if status == 0:
                with tally.lock:
                    tally.false_successes.append(kind)
        if assoc.is_established:
            assoc.release()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--hostile", type=int, default=6)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--json", metavar="OUT", help="also write the figures here")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.CRITICAL)  # the senders' own failures are counted, not printed
    from pydicom import dcmread

    from cxr_viewer.core.pacs.receiver import instance_path

    with tempfile.TemporaryDirectory(prefix="cxr-soak-") as tmp_text:
        tmp = Path(tmp_text)
        out, port = tmp / "in", free_port()
        listener = subprocess.Popen(
            [sys.executable, "-c", "import sys; from cxr_viewer.cli import main; sys.exit(main(sys.argv[1:]))",
             "listen", "--port", str(port), "--ae-title", "CXRSOAK", "--out", str(out), "--max-size", "2",
             "--max-associations", str(args.senders + args.hostile + 4), "--acse-timeout", "2",
             "--network-timeout", "10"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert "listening" in listener.stdout.readline()
        tally, stop = Tally(), time.monotonic() + args.seconds
        threads = [threading.Thread(target=sender, args=(port, stop, tally, i + 1)) for i in range(args.senders)]
        threads += [threading.Thread(target=hostile, args=(port, stop, tally, 1000 + i, tmp))
                    for i in range(args.hostile)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        peak = 0.0
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mb(listener.pid))
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        listener.send_signal(signal.SIGINT)
        listener_out, listener_err = listener.communicate(timeout=60)

        lost = 0
        for study, sop, pixels in tally.succeeded:
            path = instance_path(out, study, sop)
            try:
                if dcmread(path).PixelData != pixels:
                    lost += 1
            except Exception:  # noqa: BLE001 - absent or unreadable: lost
                lost += 1
        stored = sum(1 for _ in out.rglob("*.dcm"))
        lat = sorted(tally.latency)
        figures = {
            "seconds": round(elapsed, 1), "senders": args.senders, "hostile_clients": args.hostile,
            "succeeded": len(tally.succeeded), "stored": stored, "refused": tally.refused,
            "lost": lost, "hostile_sent": tally.hostile_sent, "false_successes": len(tally.false_successes),
            "false_success_kinds": sorted(set(tally.false_successes)),
            "store_ms_median": round(1e3 * statistics.median(lat), 2) if lat else None,
            "store_ms_p95": round(1e3 * lat[int(0.95 * (len(lat) - 1))], 2) if lat else None,
            "instances_per_s": round(len(tally.succeeded) / elapsed, 1),
            "listener_peak_rss_mb": round(peak, 1),
            "listener_tracebacks": listener_err.count("Traceback"),
            "listener_summary": listener_out.strip().splitlines()[-1] if listener_out.strip() else "",
        }
        if "Traceback" in listener_err:
            print(listener_err[-4000:], file=sys.stderr)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["lost"] == 0 and figures["false_successes"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
