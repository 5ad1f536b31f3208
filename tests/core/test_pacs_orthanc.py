"""DICOM networking against a real Orthanc on loopback (no mock server anywhere).

The round trip: the sample studies are C-STOREd into Orthanc, found by C-FIND,
C-MOVEd to our receiver, analysed by the real default bundles, and their SR, SEG,
SC and PDF objects are sent back; Orthanc's REST API then shows them under the
original StudyInstanceUID.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from cxr_viewer.cli import main as cli_main
from cxr_viewer.core import pacs
from cxr_viewer.core.inference.segment import Segmenter
from cxr_viewer.core.io import read_image
from cxr_viewer.core.worklist import ResultStore, Worklist
from tests.orthanc import OUR_AE, free_port, orthanc  # noqa: F401  (fixture)

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
REPORT = "FINDINGS: Right lower zone opacity. The left lung is clear."


@pytest.fixture(scope="module")
def samples(repo_root: Path, dicom_dir: Path) -> list[Path]:
    files = [repo_root / "resources" / "samples" / "siim_cr_chest.dcm", *sorted(dicom_dir.glob("*.dcm"))]
    assert len(files) >= 3
    return files


def _remote(server, ae: str = "ORTHANC") -> pacs.RemoteNode:
    return pacs.RemoteNode("127.0.0.1", server.dicom_port, ae)


def _uids(files: list[Path], keyword: str) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).get(keyword)) for f in files}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the default bundles on four films, two of them 1955x1841 JPEG 2000
def test_round_trip_push_query_retrieve_analyse_send_back(orthanc, samples, tmp_path: Path) -> None:  # noqa: F811
    remote = _remote(orthanc)
    pacs.echo(remote)
    stored = pacs.send_files(remote, samples)
    assert len(stored) == len(samples)

    studies = _uids(samples, "StudyInstanceUID")
    hits = pacs.find_studies(remote)
    assert {h.study_uid for h in hits} == studies
    assert all(h.modalities for h in hits)
    one = sorted(studies)[0]
    assert [h.study_uid for h in pacs.find_studies(remote, pacs.StudyQuery(study_uid=one))] == [one]

    rx_dir = tmp_path / "received"
    arrived: list[pacs.ReceivedFile] = []
    receiver = pacs.StorageReceiver(pacs.LocalNode(OUR_AE, orthanc.receiver_port, "127.0.0.1"), rx_dir,
                                    on_stored=arrived.append).start()
    try:
        got = [p for h in hits for p in pacs.move_study(remote, h.study_uid, receiver=receiver)]
    finally:
        receiver.stop()
    unique = _uids(samples, "SOPInstanceUID")  # some samples share a SOP instance UID: the PACS keeps one
    assert len(got) == len(unique) == len(arrived)
    assert _uids(got, "SOPInstanceUID") == unique
    for f in got:  # filed by study, pixel data byte-identical to one pushed file of that UID
        srcs = [s for s in samples if _uids([s], "SOPInstanceUID") == _uids([f], "SOPInstanceUID")]
        assert f.parent.name == str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
        assert pydicom.dcmread(f).PixelData in [pydicom.dcmread(s).PixelData for s in srcs]

    # the received studies become a worklist analysed by the real default bundles
    wl = Worklist(ResultStore(tmp_path / "wl.sqlite"), device="cpu", backend="torch")  # no ONNX export here
    entries = wl.open_folder(rx_dir)
    assert len(entries) == len(unique) and all(e.ok and e.findings for e in entries)
    assert {f.model for f in entries[0].findings} >= {"chest-resnet18"}
    scores = [e.abnormality for e in entries]
    assert scores == sorted(scores, reverse=True)

    # results back to the PACS: SR + SEG + SC + PDF per image, from the same engine (its cache holds the scores)
    engine = wl.engine()
    seg = Segmenter(engine.bundles_for_task("text_segmentation")[0])
    for f in got:
        record = read_image(f)
        result = engine.analyze(record)
        assert result.cached  # the worklist's analysis, not a second one
        sent = pacs.send_results(remote, record, result, masks=seg.segment_report(record, REPORT))
        assert len(sent) == 4

    per_image = {uid: 0 for uid in studies}
    for f in got:
        per_image[str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)] += 1
    for uid in studies:
        found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": uid}})
        tags = [orthanc.get(f"/instances/{i}/simplified-tags") for i in found]
        assert {t["StudyInstanceUID"] for t in tags} == {uid}
        classes = [t["SOPClassUID"] for t in tags if t["SOPInstanceUID"] not in unique]  # the new objects
        n = per_image[uid]
        assert sum(c.startswith(SR_PREFIX) for c in classes) == n, classes
        assert classes.count(SEG) == n
        assert sum(c.startswith(SC_PREFIX) for c in classes) == n
        assert classes.count(PDF) == n
        seg = next(t for t in tags if t["SOPClassUID"] == SEG)
        assert "Right lower zone opacity" in str(seg)  # the sentence is the segment description
        sources = _uids([f for f in got if _uids([f], "StudyInstanceUID") == {uid}], "SOPInstanceUID")
        sr_ids = [i for i, t in zip(found, tags) if t["SOPClassUID"].startswith(SR_PREFIX)]
        sr = orthanc.get(f"/instances/{sr_ids[0]}/simplified-tags")
        assert any(s in str(sr) for s in sources)  # the SR references its source image


def test_c_get_retrieves_over_one_association(orthanc, samples, tmp_path: Path) -> None:  # noqa: F811
    remote = _remote(orthanc)
    pacs.send_files(remote, samples[:1])
    uid = next(iter(_uids(samples[:1], "StudyInstanceUID")))
    got = pacs.get_study(remote, uid, tmp_path / "get")
    assert _uids(samples[:1], "SOPInstanceUID") <= _uids(got, "SOPInstanceUID")


def test_refusal_absence_and_drop_have_clear_messages(orthanc, samples, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(pacs.PacsRefusedError, match="refused the connection.*AE title"):
        pacs.echo(_remote(orthanc, "NOT-ORTHANC"), timeout=5)
    with pytest.raises(pacs.PacsUnreachableError, match="No DICOM server answered at 127.0.0.1"):
        pacs.echo(pacs.RemoteNode("127.0.0.1", free_port(), "ORTHANC"), timeout=5)
    # a C-MOVE to a destination Orthanc does not know
    pacs.send_files(_remote(orthanc), samples[:1])
    uid = next(iter(_uids(samples[:1], "StudyInstanceUID")))
    stranger = pacs.StorageReceiver(pacs.LocalNode("STRANGER", 0, "127.0.0.1"), tmp_path / "s").start()
    try:
        with pytest.raises(pacs.PacsRefusedError, match="C-MOVE destination"):
            pacs.move_study(_remote(orthanc), uid, receiver=stranger, timeout=10)
    finally:
        stranger.stop()
    # a server that accepts the TCP connection and closes it at once
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def drop() -> None:
        for _ in range(2):
            try:
                conn, _addr = srv.accept()
            except OSError:
                return
            conn.close()

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    try:
        with pytest.raises(pacs.PacsConnectionLostError, match="dropped the connection"):
            pacs.echo(pacs.RemoteNode("127.0.0.1", port, "ORTHANC"), timeout=5)
    finally:
        srv.close()
    with pytest.raises(pacs.PacsError, match="AE title"):
        pacs.echo(pacs.RemoteNode("127.0.0.1", 104, "A" * 17))


def test_listen_command_receives_what_orthanc_pushes(orthanc, samples, tmp_path: Path, repo_root) -> None:  # noqa: F811
    out = tmp_path / "inbox"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxr_viewer.cli", "listen", "--port", str(orthanc.receiver_port),
         "--ae-title", OUR_AE, "--out", str(out), "--host", "127.0.0.1", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=repo_root,
    )
    try:
        line = proc.stdout.readline()
        assert "listening as CXRVIEWER" in line, line + proc.stdout.read()
        pacs.send_files(_remote(orthanc), samples[:2])
        ids = [i for uid in _uids(samples[:2], "StudyInstanceUID")
               for i in orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": uid}})]
        job = orthanc.post("/modalities/cxrviewer/store", {"Resources": ids, "Synchronous": True})
        assert job is not None
        deadline = time.monotonic() + 30
        want = _uids(samples[:2], "SOPInstanceUID")
        while time.monotonic() < deadline and not want <= {p.stem for p in out.rglob("*.dcm")}:
            time.sleep(0.2)
        assert want <= {p.stem for p in out.rglob("*.dcm")}
        assert not list(out.rglob("*.part"))
    finally:
        proc.terminate()
        text = proc.communicate(timeout=30)[0]
    assert "received" in text and "Doe" not in text
    with pytest.raises(pacs.ReceiverError, match="cannot listen on port"):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        try:
            pacs.StorageReceiver(pacs.LocalNode(OUR_AE, busy.getsockname()[1], "127.0.0.1"), tmp_path / "b").start()
        finally:
            busy.close()


def test_send_results_command_files_results_under_the_study(orthanc, samples, tmp_path: Path) -> None:  # noqa: F811
    from cxr_viewer.core.models.testing import make_untrained_bundle

    models = tmp_path / "models"
    make_untrained_bundle(models / "tiny", name="tiny", labels=["Effusion"], size=(64, 64), backbone="resnet10t")
    src = samples[0]
    pacs.send_files(_remote(orthanc), [src])
    uid = next(iter(_uids([src], "StudyInstanceUID")))
    before = set(orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": uid}}))
    args = ["pacs", "send-results", str(src), "--host", "127.0.0.1", "--port", str(orthanc.dicom_port),
            "--models", str(models), "--no-default-models", "--device", "cpu", "--out", str(tmp_path / "kept")]
    assert cli_main(args) == 0
    new = set(orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": uid}})) - before
    classes = sorted(orthanc.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in new)
    assert len(classes) == 3 and sum(c.startswith(SR_PREFIX) for c in classes) == 1 and PDF in classes
    assert len(list((tmp_path / "kept").rglob("*.dcm"))) == 3
    # with the site profile: judged as analyze and the viewer judge (the SR says the site set the threshold)
    import highdicom as hd
    import numpy as np

    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.site.fit import fit_site_finding
    from cxr_viewer.core.site.profile import SiteProfile, save_profile

    desc = load_bundle(models / "tiny", device="cpu").describe()
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.3, 300)
    y = (rng.random(300) < 1 / (1 + np.exp(-z))).astype(float)
    fp, _ = fit_site_finding("Effusion", y, 1 / (1 + np.exp(-3 * z)), np.arange(300), current_threshold=0.5,
                             target="sensitivity:0.9", method="platt", n_boot=50)  # fmt: skip
    profile = save_profile(SiteProfile("ward", {k: str(desc[k]) for k in ("name", "version", "sha256")},
                                       {"Effusion": fp}), tmp_path / "profiles")  # fmt: skip
    site_args = [*args[:-1], str(tmp_path / "site"), "--site-profile", str(profile.path)]
    assert cli_main(site_args) == 0
    sr = hd.sr.srread(next((tmp_path / "site").rglob("SR_*.dcm")))
    group = next(g for g in sr.content.get_image_measurement_groups() if g.finding_type.meaning == "Pleural effusion")
    assert {m.name.meaning: m for m in group.get_measurements()}["Threshold Value"].method.value == "THRESHOLD_SITE_PROFILE"
    # nothing listens: one clear line, status 1
    args[args.index("--port") + 1] = str(free_port())
    assert cli_main(args) == 1
