"""A C-STORE receiver (storage SCP): studies pushed by a modality or a PACS land in a folder.

Each instance is written as ``OUT/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` exactly
as it came over the wire (any transfer syntax is accepted), first to a temporary
name and then renamed, so a watcher never sees half a file. ``on_stored`` is called
on the receiver's own thread after each file is complete; a GUI must hand it to its
own thread. Nothing logged here names a patient.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_viewer.core.pacs.errors import ReceiverError
from cxr_viewer.core.pacs.nodes import LocalNode

log = logging.getLogger(__name__)

__all__ = ["ReceivedFile", "StorageReceiver", "safe_uid"]

#: C-STORE status codes (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class ReceivedFile:
    path: Path
    study_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae: str


def safe_uid(uid: str) -> str:
    """A UID as a file name: digits and dots only (anything else becomes '_')."""
    text = "".join(c if c.isdigit() or c == "." else "_" for c in str(uid).strip())
    return text.strip(".") or "unknown"


class StorageReceiver:
    """A storage SCP on ``node``'s port, writing into ``out_dir``. ``port=0`` takes a free port."""

    def __init__(self, node: LocalNode, out_dir: str | Path,
                 on_stored: Callable[[ReceivedFile], None] | None = None) -> None:
        self.node = node
        self.out_dir = Path(out_dir)
        self.on_stored = on_stored
        self.count = 0
        self._server: Any = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[ReceivedFile], None]] = []

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
        ae.maximum_pdu_size = 0  # no limit
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS)]
        try:
            self._server = ae.start_server((self.node.host, self.node.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ReceiverError(
                f"The DICOM receiver cannot listen on port {self.node.port} ({exc.strerror or exc}): "
                "another program (or another viewer) uses it, or ports under 1024 need administrator rights. "
                "Choose another port."
            ) from exc
        log.info("DICOM receiver %s listening on port %d", self.node.ae_title, self.port)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            log.info("DICOM receiver stopped after %d file(s)", self.count)

    def __enter__(self) -> "StorageReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # receiver thread ----------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        try:
            ds = event.dataset
            study = safe_uid(ds.get("StudyInstanceUID", ""))
            sop = safe_uid(ds.get("SOPInstanceUID", "") or event.request.AffectedSOPInstanceUID)
            folder = self.out_dir / study
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{sop}.dcm"
            tmp = folder / f".{sop}.part"
            tmp.write_bytes(event.encoded_dataset())
            os.replace(tmp, path)
        except OSError as exc:
            log.error("a received instance could not be written: %s", exc.strerror or exc)
            return OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - a bad instance is refused, the receiver keeps running
            log.error("a received instance could not be read: %s", type(exc).__name__)
            return CANNOT_UNDERSTAND
        item = ReceivedFile(path, str(ds.get("StudyInstanceUID", "")), str(event.request.AffectedSOPClassUID),
                            str(ds.get("SOPInstanceUID", "")), str(event.assoc.requestor.ae_title))
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
