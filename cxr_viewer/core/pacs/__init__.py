"""DICOM networking (pynetdicom): a C-STORE receiver, query/retrieve from a PACS, and sending results back."""

from cxr_viewer.core.pacs.client import (
    StoredFile,
    StudyHit,
    StudyQuery,
    dicom_files,
    echo,
    find_studies,
    get_study,
    move_study,
    send_files,
)
from cxr_viewer.core.pacs.errors import (
    PacsConnectionLostError,
    PacsError,
    PacsRefusedError,
    PacsUnreachableError,
    ReceiverError,
)
from cxr_viewer.core.pacs.nodes import LocalNode, RemoteNode
from cxr_viewer.core.pacs.receiver import ReceivedFile, StorageReceiver
from cxr_viewer.core.pacs.results import send_results

__all__ = [
    "LocalNode", "PacsConnectionLostError", "PacsError", "PacsRefusedError", "PacsUnreachableError",
    "ReceivedFile", "ReceiverError", "RemoteNode", "StorageReceiver", "StoredFile", "StudyHit", "StudyQuery",
    "dicom_files", "echo", "find_studies", "get_study", "move_study", "send_files", "send_results",
]
