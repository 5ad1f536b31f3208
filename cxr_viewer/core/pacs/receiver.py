"""A C-STORE receiver (storage SCP): studies pushed by a modality or a PACS land in a folder.

Each instance is written as ``OUT/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` exactly
as it came over the wire (any transfer syntax is accepted), first to a temporary
name in the same folder and then renamed, so a watcher never sees half a file.
``on_stored`` is called on the receiver's own thread after each file is complete; a
GUI must hand it to its own thread. Nothing logged here names a patient.

What a hospital network may send is checked before it is answered:

- a dataset is decoded in full before the answer; an empty, truncated or undecodable
  one is answered 0xC000 (cannot understand), one whose SOP class or instance UID is
  missing, malformed or differs from the request's 0xA900 (does not match), and
  nothing of it is kept: a sender is told Success only for a file on disk;
- a file name is the UID itself only when it is a valid UID (digits and dots, 64
  characters at most), which maps different UIDs to different names; anything else
  gets a name from its hash (:func:`instance_path`), so two instances never share a file.
  Another instance arriving with the UID of a stored one replaces it only when it is
  byte for byte the same; otherwise it is refused;
- a dataset larger than ``max_bytes`` is refused while it arrives (the association is
  aborted; at most one negotiated PDU beyond the limit is held in memory);
- ACSE, DIMSE and network timeouts close idle and silent connections, and at most
  ``max_associations`` run at once, so idle sockets cannot lock a real sender out for long;
- it listens on loopback unless told otherwise, and ``allowed_ae`` limits the calling
  AE titles it accepts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_viewer.core.pacs.errors import ReceiverError
from cxr_viewer.core.pacs.nodes import LocalNode, check_ae_title

log = logging.getLogger(__name__)

__all__ = ["ReceivedFile", "ReceiverLimits", "StorageReceiver", "check_instance", "instance_path", "safe_uid"]

#: C-STORE status codes (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_CONFLICT = 0xC001  # "cannot understand" family: another instance already holds this UID

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@dataclass(frozen=True)
class ReceivedFile:
    path: Path
    study_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae: str


@dataclass(frozen=True)
class ReceiverLimits:
    """What one receiver accepts: size, time and how many associations at once."""

    max_bytes: int = 256 << 20  # one dataset
    max_associations: int = 16
    acse_timeout: float = 10.0  # a connection that sends no association request within this is closed
    dimse_timeout: float = 30.0
    network_timeout: float = 30.0  # an association that sends nothing for this long is closed
    max_pdu: int = 1 << 20  # the largest PDU we ask senders to send
    allowed_ae: tuple[str, ...] = ()  # calling AE titles accepted; empty: any


class InstanceRefused(Exception):
    """A received dataset that is not stored; ``status`` is what the sender is answered."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def valid_uid(uid: object) -> bool:
    text = str(uid or "")
    return 0 < len(text) <= 64 and _UID.fullmatch(text) is not None


def safe_uid(uid: str) -> str:
    """A UID as a file name: the UID itself when valid, else ``x`` and its hash (never the same for two UIDs)."""
    text = str(uid or "")
    if valid_uid(text):
        return text
    return "x" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def instance_path(out_dir: str | Path, study_uid: str, sop_uid: str) -> Path:
    """Where one instance is filed: ``OUT/<study>/<instance>.dcm``, names by :func:`safe_uid`."""
    return Path(out_dir) / safe_uid(study_uid) / f"{safe_uid(sop_uid)}.dcm"


def check_instance(encoded: bytes, transfer_syntax: Any, sop_class: str, sop_instance: str) -> Any:
    """The decoded dataset of a C-STORE, or :class:`InstanceRefused` saying why it is not stored."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    if isinstance(transfer_syntax, (list, tuple)):
        transfer_syntax = transfer_syntax[0] if transfer_syntax else ""
    transfer_syntax = UID(str(transfer_syntax))
    if not encoded:
        raise InstanceRefused(CANNOT_UNDERSTAND, "the dataset is empty")
    if not valid_uid(sop_instance) or not valid_uid(sop_class):
        raise InstanceRefused(DATASET_MISMATCH, "the request's SOP class or instance UID is missing or not a valid UID")
    try:
        body = encoded
        if transfer_syntax.is_deflated:
            import zlib

            body = zlib.decompress(encoded, -zlib.MAX_WBITS)
        implicit, little = bool(transfer_syntax.is_implicit_VR), bool(transfer_syntax.is_little_endian)
        if transfer_syntax.is_deflated:
            implicit, little = False, True
        consumed = _complete(body, implicit, little)
        fp = DicomBytesIO(body)
        fp.is_little_endian, fp.is_implicit_VR = little, implicit
        ds = read_dataset(fp, implicit, little)
        for elem in ds.iterall():  # every value decoded now: a truncated or garbled one fails here, not later
            _ = elem.value
    except InstanceRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on hostile bytes
        raise InstanceRefused(CANNOT_UNDERSTAND, f"the dataset cannot be decoded ({type(exc).__name__})") from None
    if not consumed or len(ds) == 0:
        raise InstanceRefused(CANNOT_UNDERSTAND, "the dataset is truncated or not DICOM")
    if str(ds.get("SOPInstanceUID", "")) != sop_instance or str(ds.get("SOPClassUID", "")) != sop_class:
        raise InstanceRefused(DATASET_MISMATCH, "the dataset's SOP class or instance UID differs from the request's")
    if not valid_uid(ds.get("StudyInstanceUID", "")):
        raise InstanceRefused(DATASET_MISMATCH, "the dataset has no valid Study Instance UID")
    return ds


def _complete(body: bytes, implicit: bool, little: bool) -> bool:
    """Whether every top-level element of ``body`` holds as many bytes as its length says, to the last byte."""
    import warnings

    from pydicom.dataelem import RawDataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import data_element_generator

    fp = DicomBytesIO(body)
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    last = -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for elem in data_element_generator(fp, implicit, little):
            if isinstance(elem, RawDataElement):
                if int(elem.tag) <= last:  # tags must ascend: random bytes rarely do
                    return False
                last = int(elem.tag)
                if elem.length != 0xFFFFFFFF and elem.value is not None and len(elem.value) != elem.length:
                    return False
    return fp.tell() >= len(body)


class StorageReceiver:
    """A storage SCP on ``node``'s port, writing into ``out_dir``. ``port=0`` takes a free port."""

    def __init__(self, node: LocalNode, out_dir: str | Path,
                 on_stored: Callable[[ReceivedFile], None] | None = None,
                 limits: ReceiverLimits | None = None) -> None:
        self.node = node
        self.out_dir = Path(out_dir)
        self.on_stored = on_stored
        self.limits = limits or ReceiverLimits()
        self.count = 0
        self.refused = 0
        self._server: Any = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._listeners: list[Callable[[ReceivedFile], None]] = []
        self._incoming: dict[int, int] = {}  # id(association) -> bytes of the dataset arriving on it

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            return self.node.port
        return int(self._server.server_address[1])

    def add_listener(self, fn: Callable[[ReceivedFile], None]) -> None:
        """Another callback per stored file (e.g. a C-MOVE collecting what arrives for it)."""
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[ReceivedFile], None]) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def start(self) -> "StorageReceiver":
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        if self._server is not None:
            return self
        self.node.check()
        allowed = [check_ae_title(t, "allowed calling AE title") for t in self.limits.allowed_ae]
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / ".cxr-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ReceiverError(
                f"Received studies cannot be written to {self.out_dir} ({exc.strerror or exc}); choose another folder."
            ) from exc
        ae = AE(ae_title=self.node.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        lim = self.limits
        ae.maximum_pdu_size = int(lim.max_pdu)
        ae.maximum_associations = max(1, int(lim.max_associations))
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = lim.acse_timeout, lim.dimse_timeout, lim.network_timeout
        if allowed:
            ae.require_calling_aet = allowed
        from pynetdicom import _config

        # pynetdicom's own logging handlers fail with a traceback on a request without a UID, and stop
        # the handlers after them (ours, which answer that request); they log nothing we need
        _config.LOG_HANDLER_LEVEL = "none"
        _one_line_network_logs()
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_PDU_RECV, self._on_pdu), (evt.EVT_DIMSE_RECV, self._on_dimse),
                    (evt.EVT_RELEASED, self._forget),
                    (evt.EVT_ABORTED, self._forget), (evt.EVT_CONN_CLOSE, self._forget)]
        try:
            self._server = ae.start_server((self.node.host, self.node.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ReceiverError(
                f"The DICOM receiver cannot listen on port {self.node.port} ({exc.strerror or exc}): "
                "another program (or another viewer) uses it, or ports under 1024 need administrator rights. "
                "Choose another port."
            ) from exc
        self._stop_reaper = threading.Event()
        threading.Thread(target=self._reap, name="cxr-receiver-reaper", daemon=True).start()
        log.info("DICOM receiver %s listening on %s port %d", self.node.ae_title, self.node.host, self.port)
        return self

    def _reap(self) -> None:
        """Close connections that sit before an association (Sta2) or after an abort waiting for the peer to
        hang up (Sta13) for longer than the ACSE timeout: a client that opens a socket and never speaks, or
        never closes after being refused, otherwise holds a slot of ``max_associations`` for good."""
        first_seen: dict[int, float] = {}
        import time

        while not self._stop_reaper.wait(0.5):
            server = self._server
            if server is None:
                return
            now, alive = time.monotonic(), set()
            for assoc in list(server.active_associations):
                try:
                    state = assoc.dul.state_machine.current_state
                except AttributeError:
                    continue
                if state not in ("Sta2", "Sta13"):
                    continue
                key = id(assoc)
                alive.add(key)
                since = first_seen.setdefault(key, now)
                if now - since > float(self.limits.acse_timeout):
                    with contextlib.suppress(Exception):
                        assoc.dul.socket.close()
            first_seen = {k: v for k, v in first_seen.items() if k in alive}

    def stop(self) -> None:
        server, self._server = self._server, None
        stop = getattr(self, "_stop_reaper", None)
        if stop is not None:
            stop.set()
        if server is not None:
            server.shutdown()
            log.info("DICOM receiver stopped after %d file(s), %d refused", self.count, self.refused)

    def __enter__(self) -> "StorageReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # receiver thread ----------------------------------------------------------
    def _on_pdu(self, event: Any) -> None:
        """Count a dataset's bytes as they arrive; abort an association whose dataset passes the limit."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        key = id(event.assoc)
        for item in items:
            value = item.presentation_data_value or b"\x00"
            if value[0] & 0x01:  # a command fragment starts the next message
                self._incoming[key] = 0
                continue
            total = self._incoming.get(key, 0) + len(value) - 1
            self._incoming[key] = total
            if total > self.limits.max_bytes:
                self._incoming[key] = -(1 << 62)  # abort once
                with self._lock:
                    self.refused += 1
                log.warning("a received dataset passed the size limit (%d bytes); the association is aborted",
                            self.limits.max_bytes)
                event.assoc.abort()  # the non-blocking abort inside a notification handler
                return

    def _on_dimse(self, event: Any) -> None:
        """Answer a C-STORE request whose command lacks a valid SOP class or instance UID.

        pynetdicom ignores such a request without answering, which leaves the sender waiting for
        its timeout; it is refused here at once instead (0xA900), and nothing is stored.
        """
        from pynetdicom.dimse_messages import C_STORE_RQ
        from pynetdicom.dimse_primitives import C_STORE

        msg = event.message
        if not isinstance(msg, C_STORE_RQ):
            return
        cs = msg.command_set
        sop, cls = str(cs.get("AffectedSOPInstanceUID", "") or ""), str(cs.get("AffectedSOPClassUID", "") or "")
        if valid_uid(sop) and valid_uid(cls):
            return
        for kw in ("AffectedSOPInstanceUID", "AffectedSOPClassUID"):  # pynetdicom then ignores it without a traceback
            if kw in cs and not valid_uid(cs.get(kw)):
                setattr(cs, kw, "")
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = int(cs.get("MessageID", 0) or 0)
        if valid_uid(cls):
            rsp.AffectedSOPClassUID = cls
        rsp.Status = DATASET_MISMATCH
        with self._lock:
            self.refused += 1
        log.warning("a received instance was refused (0x%04X): the request has no valid SOP instance UID",
                    DATASET_MISMATCH)
        event.assoc.dimse.send_msg(rsp, msg.context_id)

    def _forget(self, event: Any) -> None:
        self._incoming.pop(id(event.assoc), None)

    def _refuse(self, status: int, comment: str) -> Any:
        from pydicom.dataset import Dataset

        with self._lock:
            self.refused += 1
        log.warning("a received instance was refused (0x%04X): %s", status, comment)
        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorComment = comment[:64]
        return rsp

    def _on_store(self, event: Any) -> Any:
        try:
            req = event.request
            raw = req.DataSet.getvalue() if req.DataSet is not None else b""
            if len(raw) > self.limits.max_bytes:
                raise InstanceRefused(OUT_OF_RESOURCES, f"the dataset is larger than {self.limits.max_bytes} bytes")
            ds = check_instance(raw, event.context.transfer_syntax, str(req.AffectedSOPClassUID or ""),
                                str(req.AffectedSOPInstanceUID or ""))
            study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
            path = instance_path(self.out_dir, study, sop)
            encoded = event.encoded_dataset()
            with self._write_lock:
                if path.exists():
                    if path.read_bytes() != encoded:
                        raise InstanceRefused(DUPLICATE_CONFLICT, "another instance with this SOP Instance UID "
                                              "is already stored")
                else:
                    from cxr_viewer.core.staging import write_atomic

                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(path, encoded)
        except InstanceRefused as exc:
            return self._refuse(exc.status, exc.comment)
        except OSError as exc:
            log.error("a received instance could not be written: %s", exc.strerror or exc)
            return self._refuse(OUT_OF_RESOURCES, "the instance could not be written to disk")
        except Exception as exc:  # noqa: BLE001 - a bad instance is refused, the receiver keeps running
            log.error("a received instance could not be read: %s", type(exc).__name__)
            return self._refuse(CANNOT_UNDERSTAND, "the instance could not be read")
        item = ReceivedFile(path, study, str(req.AffectedSOPClassUID), sop, str(event.assoc.requestor.ae_title))
        with self._lock:
            self.count += 1
            listeners = [self.on_stored, *self._listeners]
        for fn in listeners:
            if fn is None:
                continue
            try:
                fn(item)
            except Exception:  # noqa: BLE001 - a broken listener must not refuse the instance
                log.exception("a receiver listener failed")
        return SUCCESS


class _OneLine(logging.Filter):
    """What a hostile or broken peer makes pynetdicom log (garbage PDUs, resets) becomes one warning line
    without a traceback: the receiver's log stays readable, and the sender is told by its status."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if record.exc_info:
            record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _one_line_network_logs() -> None:
    for name in ("pynetdicom.dul", "pynetdicom.transport", "pynetdicom.association", "pynetdicom.acse",
                 "pynetdicom.dimse", "pynetdicom.events", "pynetdicom.fsm"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in lg.filters):
            lg.addFilter(_OneLine())


def allowed_titles(text: Iterable[str] | None) -> tuple[str, ...]:
    """Calling AE titles from a command line or settings value (comma or space separated)."""
    out: list[str] = []
    for part in text or ():
        out += [t for t in re.split(r"[,\s]+", str(part)) if t]
    return tuple(out)
