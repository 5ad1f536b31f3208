"""What can go wrong on the DICOM network, each with a message that names the fix."""

from __future__ import annotations

from cxr_viewer.core.errors import CXRError

__all__ = ["PacsConnectionLostError", "PacsError", "PacsRefusedError", "PacsUnreachableError", "ReceiverError"]


class PacsError(CXRError):
    """Base class of DICOM network failures."""

    code = "pacs_error"


class PacsUnreachableError(PacsError):
    """Nothing answered at the configured host and port."""

    code = "pacs_unreachable"


class PacsRefusedError(PacsError):
    """The PACS answered but refused: the association, a query, a move or a store."""

    code = "pacs_refused"


class PacsConnectionLostError(PacsError):
    """The association dropped (abort, timeout, closed socket) in the middle of a request."""

    code = "pacs_connection_lost"


class ReceiverError(PacsError):
    """Our own C-STORE receiver could not start (port in use, folder not writable, bad AE title)."""

    code = "receiver_error"
