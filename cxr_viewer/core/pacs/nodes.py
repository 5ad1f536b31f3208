"""Network identities: our own application entity and the PACS we talk to."""

from __future__ import annotations

from dataclasses import dataclass

from cxr_viewer.core.pacs.errors import PacsError

__all__ = ["LocalNode", "RemoteNode", "check_ae_title"]


def check_ae_title(title: str, what: str = "AE title") -> str:
    """An AE title is 1-16 characters of printable ASCII without a backslash (PS3.5 6.2)."""
    t = str(title).strip()
    if not 0 < len(t) <= 16 or any(not (32 <= ord(c) < 127) or c == "\\" for c in t):
        raise PacsError(f"The {what} {title!r} is not valid: use 1 to 16 plain letters, digits, '-' or '_'.")
    return t


def _check_port(port: int, allow_zero: bool) -> int:
    p = int(port)
    if not (0 if allow_zero else 1) <= p <= 65535:
        raise PacsError(f"The port {port} is not valid: use a number from 1 to 65535.")
    return p


@dataclass(frozen=True)
class LocalNode:
    """Our receiver: AE title, port (0: any free port) and the address it listens on (loopback unless told)."""

    ae_title: str = "CXRVIEWER"
    port: int = 11112
    host: str = "127.0.0.1"

    def check(self) -> None:
        check_ae_title(self.ae_title, "receiver AE title")
        _check_port(self.port, allow_zero=True)


@dataclass(frozen=True)
class RemoteNode:
    """A PACS (or modality) we call: host, port and its AE title."""

    host: str
    port: int
    ae_title: str = "ORTHANC"

    def check(self) -> None:
        if not str(self.host).strip():
            raise PacsError("No PACS host is configured: enter its address in the PACS settings.")
        check_ae_title(self.ae_title, "PACS AE title")
        _check_port(self.port, allow_zero=False)

    def __str__(self) -> str:
        return f"{self.ae_title} at {self.host}:{self.port}"
