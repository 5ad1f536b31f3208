"""A real Orthanc PACS on loopback for the network tests (Debian's ``orthanc`` package).

The fixture writes a JSON configuration into a temp folder (loopback only, free DICOM
and HTTP ports, no authentication, our AE title registered as a C-MOVE destination),
starts ``Orthanc config.json`` as a child process (never the system service), waits
for its REST API and stops it afterwards. Without the package the test fails and
says how to install it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = (
    "Orthanc is not installed, and the DICOM network tests run against a real Orthanc. "
    "Install it with: apt-get install -y orthanc  (.ci/run does this on CI)."
)
OUR_AE = "CXRVIEWER"
ORTHANC_AE = "ORTHANC"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrthancServer:
    dicom_port: int
    http_port: int
    receiver_port: int  # where Orthanc sends C-MOVEs for OUR_AE
    root: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read().decode())

    def post(self, path: str, body: Any) -> Any:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read().decode())

    def log_tail(self) -> str:
        log = self.root / "orthanc.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def orthanc_binary() -> str:
    exe = shutil.which("Orthanc") or (Path("/usr/sbin/Orthanc").is_file() and "/usr/sbin/Orthanc") or None
    if not exe:
        pytest.fail(INSTALL_HINT)
    return str(exe)


def start_orthanc(root: Path) -> OrthancServer:
    exe = orthanc_binary()
    root.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port, receiver_port = free_port(), free_port(), free_port()
    config = {
        "Name": "cxr-viewer-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {"cxrviewer": [OUR_AE, "127.0.0.1", receiver_port]},
        "DicomScpTimeout": 30,
        "DicomAssociationCloseDelay": 0,
        "StableAge": 1,
        "ConcurrentJobs": 1,
        "HttpTimeout": 20,
        "StorageCompression": False,
        "SaveJobs": False,
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = (root / "orthanc.log").open("w")
    proc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = OrthancServer(dicom_port, http_port, receiver_port, root, proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited at start (status {proc.returncode}):\n{server.log_tail()}")
        try:
            server.get("/system")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"Orthanc did not answer on port {http_port} within 60 s:\n{server.log_tail()}")


def stop_orthanc(server: OrthancServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        stop_orthanc(server)
