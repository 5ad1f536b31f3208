"""Calling a PACS: C-ECHO, study-level C-FIND, C-MOVE / C-GET of a study, C-STORE of files.

Every call is synchronous and bounded by ``timeout`` (seconds, for the TCP connect,
the association and each DIMSE reply), so a Qt worker can run it and the GUI never
waits. Failures become :mod:`~cxr_viewer.core.pacs.errors` with a message that says
what to check: nothing answers (unreachable), the PACS says no (refused: AE title
unknown, no C-MOVE destination, SOP class not accepted), or the association drops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_viewer.core.pacs.errors import PacsConnectionLostError, PacsError, PacsRefusedError, PacsUnreachableError
from cxr_viewer.core.pacs.nodes import LocalNode, RemoteNode, check_ae_title
from cxr_viewer.core.pacs.receiver import (
    ReceivedFile,
    ReceiverLimits,
    StorageReceiver,
    check_instance,
    instance_path,
)

log = logging.getLogger(__name__)

__all__ = ["StoredFile", "StudyHit", "StudyQuery", "dicom_files", "echo", "find_studies", "get_study",
           "move_study", "send_files"]

DEFAULT_TIMEOUT = 30.0
_PENDING = (0xFF00, 0xFF01)
_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)


@dataclass(frozen=True)
class StudyQuery:
    """Study-level C-FIND keys; empty means 'any'."""

    patient_id: str = ""
    study_date: str = ""  # YYYYMMDD or YYYYMMDD-YYYYMMDD
    modality: str = ""  # matched against ModalitiesInStudy
    study_uid: str = ""
    accession: str = ""


@dataclass(frozen=True)
class StudyHit:
    """One study a PACS returned. Patient name and ID are kept out of ``repr`` (logs)."""

    study_uid: str
    study_date: str = ""
    modalities: str = ""
    description: str = ""
    instances: int | None = None
    accession: str = ""
    patient_name: str = ""
    patient_id: str = ""

    def __repr__(self) -> str:
        return f"StudyHit(study_uid={self.study_uid!r}, study_date={self.study_date!r}, modalities={self.modalities!r})"


@dataclass(frozen=True)
class StoredFile:
    path: Path
    sop_instance_uid: str
    status: int


def _status_text(status: int) -> str:
    try:
        from pynetdicom.status import code_to_category

        return f"0x{status:04X} ({code_to_category(status)})"
    except Exception:  # noqa: BLE001
        return f"0x{status:04X}"


@contextmanager
def _association(remote: RemoteNode, contexts: Sequence[tuple[str, Sequence[str] | None]], *, calling_ae: str,
                 timeout: float, ext_neg: list[Any] | None = None,
                 evt_handlers: list[Any] | None = None) -> Iterator[Any]:
    from pynetdicom import AE, evt

    remote.check()
    calling = check_ae_title(calling_ae, "calling AE title")
    ae = AE(ae_title=calling)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    for abstract, syntaxes in contexts:
        if syntaxes is None:
            ae.add_requested_context(abstract)
        else:
            ae.add_requested_context(abstract, list(syntaxes))
    opened = threading.Event()  # the TCP connection was made: anything after it is a refusal or a drop
    handlers = [*(evt_handlers or []), (evt.EVT_CONN_OPEN, lambda event: opened.set())]
    try:
        assoc = ae.associate(remote.host, int(remote.port), ae_title=remote.ae_title, ext_neg=ext_neg,
                             evt_handlers=handlers)
    except OSError as exc:
        raise PacsUnreachableError(f"No DICOM server answered at {remote.host}:{remote.port} ({exc}).") from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            raise PacsRefusedError(
                f"The PACS {remote} refused the connection: check that it knows our AE title {calling!r} "
                f"and that its own AE title is {remote.ae_title!r}."
            )
        if assoc.is_aborted and opened.is_set():
            raise PacsConnectionLostError(f"The PACS {remote} dropped the connection while it was being set up.")
        raise PacsUnreachableError(
            f"No DICOM server answered at {remote.host}:{remote.port} within {timeout:g} s: check the host, the "
            "port, that the PACS is running and that no firewall is in the way."
        )
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _lost(remote: RemoteNode, what: str) -> PacsConnectionLostError:
    return PacsConnectionLostError(
        f"The connection to {remote} was lost (or it stopped answering) during {what}; try again."
    )


def echo(remote: RemoteNode, *, calling_ae: str = "CXRVIEWER", timeout: float = DEFAULT_TIMEOUT) -> None:
    """C-ECHO: raises unless the PACS accepts us and answers."""
    from pynetdicom.sop_class import Verification

    with _association(remote, [(Verification, None)], calling_ae=calling_ae, timeout=timeout) as assoc:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            raise _lost(remote, "C-ECHO")
        if status.Status != 0:
            raise PacsRefusedError(f"The PACS {remote} answered C-ECHO with status {_status_text(status.Status)}.")


def _text(ds: Any, keyword: str) -> str:
    v = ds.get(keyword)
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or v.__class__.__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def find_studies(remote: RemoteNode, query: StudyQuery = StudyQuery(), *, calling_ae: str = "CXRVIEWER",
                 timeout: float = DEFAULT_TIMEOUT) -> list[StudyHit]:
    """Study-level C-FIND (Study Root)."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = query.study_uid
    ds.PatientID = query.patient_id
    ds.StudyDate = query.study_date
    ds.ModalitiesInStudy = query.modality
    ds.AccessionNumber = query.accession
    ds.PatientName = ""
    ds.StudyDescription = ""
    ds.NumberOfStudyRelatedInstances = ""
    hits: list[StudyHit] = []
    with _association(remote, [(FindModel, None)], calling_ae=calling_ae, timeout=timeout) as assoc:
        for status, ident in assoc.send_c_find(ds, FindModel):
            if not status or "Status" not in status:
                raise _lost(remote, "the study query")
            code = int(status.Status)
            if code in _PENDING:
                if ident is None:
                    continue
                n = _text(ident, "NumberOfStudyRelatedInstances")
                hits.append(StudyHit(
                    study_uid=_text(ident, "StudyInstanceUID"), study_date=_text(ident, "StudyDate"),
                    modalities=_text(ident, "ModalitiesInStudy"), description=_text(ident, "StudyDescription"),
                    instances=int(n) if n.isdigit() else None, accession=_text(ident, "AccessionNumber"),
                    patient_name=_text(ident, "PatientName"), patient_id=_text(ident, "PatientID"),
                ))
            elif code != 0:
                raise PacsRefusedError(f"The PACS {remote} refused the study query: status {_status_text(code)}.")
    log.info("C-FIND on %s: %d stud%s", remote.ae_title, len(hits), "y" if len(hits) == 1 else "ies")
    return hits


def _retrieve_identifier(study_uid: str) -> Any:
    from pydicom.dataset import Dataset

    if not str(study_uid).strip():
        raise PacsError("No study was chosen to retrieve.")
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = str(study_uid).strip()
    return ds


def _check_final(remote: RemoteNode, code: int, what: str, failed: int, our_ae: str) -> None:
    if code == 0xA801:
        raise PacsRefusedError(
            f"The PACS {remote} does not know {our_ae!r} as a C-MOVE destination: add our AE title, this "
            "computer's address and the receiver port to its list of DICOM modalities."
        )
    if code == 0xB000 or (code == 0 and failed):
        raise PacsRefusedError(f"The PACS {remote} sent the study only in part ({failed} instance(s) failed).")
    if code not in (0x0000,):
        hint = ""
        if "retrieval" in what and "C-GET" not in what:
            hint = (f" If it does not know {our_ae!r} as a C-MOVE destination, add our AE title, this computer's "
                    "address and the receiver port to its list of DICOM modalities.")
        raise PacsRefusedError(f"The PACS {remote} refused the {what}: status {_status_text(code)}.{hint}")


def move_study(remote: RemoteNode, study_uid: str, out_dir: str | Path | None = None, *,
               receiver: StorageReceiver | None = None, calling_ae: str = "CXRVIEWER", listen_port: int = 0,
               timeout: float = DEFAULT_TIMEOUT) -> list[Path]:
    """C-MOVE a study to our receiver; returns the files that arrived for it.

    Uses ``receiver`` when one is running (its AE title is the move destination), or
    starts one on ``listen_port`` writing into ``out_dir`` for the length of the call.
    The PACS must know that AE title with this computer's address and port.
    """
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MoveModel

    ident = _retrieve_identifier(study_uid)
    own = receiver is None
    if receiver is None:
        if out_dir is None:
            raise PacsError("A folder for the retrieved study is needed.")
        # the PACS calls us back: on loopback when it runs here, else on every address, accepting only its AE title
        local = str(remote.host).strip() in ("localhost", "127.0.0.1", "::1")
        receiver = StorageReceiver(LocalNode(calling_ae, listen_port, "127.0.0.1" if local else "0.0.0.0"), out_dir,
                                   limits=ReceiverLimits(allowed_ae=(remote.ae_title,)))
    got: list[Path] = []
    lock = threading.Lock()

    def collect(item: ReceivedFile) -> None:
        if item.study_uid == ident.StudyInstanceUID:
            with lock:
                got.append(item.path)

    receiver.add_listener(collect)
    try:
        if own:
            receiver.start()
        dest = receiver.node.ae_title
        with _association(remote, [(MoveModel, None)], calling_ae=calling_ae, timeout=timeout) as assoc:
            code, failed = None, 0
            for status, _ident in assoc.send_c_move(ident, dest, MoveModel):
                if not status or "Status" not in status:
                    raise _lost(remote, "the study retrieval")
                code = int(status.Status)
                failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
                if code not in _PENDING:
                    break
            if code is None:
                raise _lost(remote, "the study retrieval")
            _check_final(remote, code, "study retrieval", failed, dest)
    finally:
        receiver.remove_listener(collect)
        if own:
            receiver.stop()
    log.info("C-MOVE from %s: %d file(s)", remote.ae_title, len(got))
    return sorted(got)


def get_study(remote: RemoteNode, study_uid: str, out_dir: str | Path, *, calling_ae: str = "CXRVIEWER",
              timeout: float = DEFAULT_TIMEOUT) -> list[Path]:
    """C-GET a study over one association (no port for the PACS to call back); returns the files."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GetModel

    ident = _retrieve_identifier(study_uid)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    got: list[Path] = []
    storage = [cx.abstract_syntax for cx in StoragePresentationContexts[:120]]  # 127 contexts at most, with GET

    def on_store(event: Any) -> int:
        from cxr_viewer.core.pacs.receiver import InstanceRefused
        from cxr_viewer.core.staging import write_atomic

        req = event.request
        try:
            ds = check_instance(req.DataSet.getvalue() if req.DataSet is not None else b"",
                                event.context.transfer_syntax, str(req.AffectedSOPClassUID or ""),
                                str(req.AffectedSOPInstanceUID or ""))
        except InstanceRefused as exc:
            log.warning("a retrieved instance was refused: %s", exc.comment)
            return exc.status
        path = instance_path(out, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, event.encoded_dataset())
        got.append(path)
        return 0x0000

    contexts: list[tuple[str, Sequence[str] | None]] = [(GetModel, None)]
    contexts += [(a, ALL_TRANSFER_SYNTAXES) for a in storage]
    roles = [build_role(a, scp_role=True) for a in storage]
    with _association(remote, contexts, calling_ae=calling_ae, timeout=timeout, ext_neg=roles,
                      evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        code, failed = None, 0
        for status, _ident in assoc.send_c_get(ident, GetModel):
            if not status or "Status" not in status:
                raise _lost(remote, "the study retrieval")
            code = int(status.Status)
            failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
            if code not in _PENDING:
                break
        if code is None:
            raise _lost(remote, "the study retrieval")
        _check_final(remote, code, "study retrieval (C-GET)", failed, calling_ae)
    return sorted(got)


def dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files, and the files under folders, that are DICOM (by their 'DICM' preamble marker)."""
    out: list[Path] = []
    for p in (Path(x) for x in paths):
        cands = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in cands:
            try:
                with f.open("rb") as fh:
                    head = fh.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM":
                out.append(f)
    return out


def send_files(remote: RemoteNode, files: Sequence[str | Path], *, calling_ae: str = "CXRVIEWER",
               timeout: float = DEFAULT_TIMEOUT) -> list[StoredFile]:
    """C-STORE ``files`` (one association); returns those the PACS stored, raises when none could be.

    A file the PACS refuses (status, or no accepted presentation context for its SOP
    class and transfer syntax) is logged and left out; the others are still sent.
    """
    import pydicom

    if not files:
        return []
    wanted: dict[str, set[str]] = {}
    heads: list[tuple[Path, str, str, str]] = []
    for f in (Path(x) for x in files):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises several kinds
            raise PacsError(f"{f.name} is not a DICOM file that can be sent ({type(exc).__name__}).") from exc
        sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
        ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
        heads.append((f, sop_class, ts, str(ds.get("SOPInstanceUID", ""))))
        wanted.setdefault(sop_class, set()).add(ts)
    # one context per (SOP class, transfer syntax): the PACS accepts a single syntax per context
    pairs = sorted({(sop, t) for sop, ts in wanted.items() for t in ts})
    if len(pairs) > 127:
        raise PacsError("Too many kinds of DICOM object for one association; send them in smaller groups.")
    contexts: list[tuple[str, Sequence[str] | None]] = [(sop, [t]) for sop, t in pairs]
    stored: list[StoredFile] = []
    problems: list[str] = []
    with _association(remote, contexts, calling_ae=calling_ae, timeout=timeout) as assoc:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for path, sop_class, ts, sop_uid in heads:
            if (sop_class, ts) not in accepted:
                problems.append(f"{path.name}: the PACS does not accept this kind of object ({sop_class}) "
                                f"in transfer syntax {ts}")
                continue
            try:
                status = assoc.send_c_store(path)
            except (ValueError, OSError) as exc:
                problems.append(f"{path.name}: {exc}")
                continue
            if not status or "Status" not in status:
                raise _lost(remote, f"sending {path.name} ({len(stored)} of {len(heads)} stored before)")
            code = int(status.Status)
            if code == 0 or code in _WARNINGS:
                stored.append(StoredFile(path, sop_uid, code))
            else:
                problems.append(f"{path.name}: refused with status {_status_text(code)}")
    for p in problems:
        log.warning("C-STORE to %s: %s", remote.ae_title, p)
    if not stored:
        raise PacsRefusedError(f"The PACS {remote} stored none of the {len(heads)} file(s): " + "; ".join(problems[:3]))
    return stored
