"""Model bundles: ``manifest.json`` + ``model.safetensors``, the trainer/viewer contract.

See ``docs/bundle-format.md``. Weights load only from safetensors, only after their
sha256 matches the manifest; pickle-based files are refused outright. The network
is rebuilt with :func:`cxr_viewer.core.models.create_model` from the manifest, so
the viewer never imports the trainer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import BundleError, BundleHashMismatchError, UnknownModelError, UnsafeWeightsError
from cxr_viewer.core.models.blocks import OnnxRecord
from cxr_viewer.core.models.preprocess import Preprocessing
from cxr_viewer.core.models.ref import ModelRef

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

from cxr_viewer.core.models.manifest import (  # noqa: F401  (re-exported: the bundle's public names)
    CLASSIFIER_TASKS,
    DTYPES,
    MANIFEST_FILE,
    MAX_INPUT_SIDE,
    ONNX_RECORD_SCHEMA,
    SCHEMA_VERSION,
    TASKS,
    UNSAFE_SUFFIXES,
    WEIGHTS_FILE,
    Manifest,
    _leaves_bundle,
)

#: Zip bundles: at most this many members and this many bytes once extracted (a zip bomb is refused).
MAX_ZIP_MEMBERS = 2000
MAX_ZIP_BYTES = 4 << 30
MAX_MANIFEST_BYTES = 16 << 20

log = logging.getLogger(__name__)

__all__ = [
    "BundleInfo",
    "LoadedBundle",
    "Manifest",
    "find_bundles",
    "load_bundle",
    "model_card_markdown",
    "read_manifest",
    "save_bundle",
    "sha256_file",
]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_file(bdir: str | Path, name: str, what: str) -> Path:
    """``bdir / name`` for a path a manifest records, refused if it leaves the bundle folder.

    Absolute paths, ``..`` and links that resolve outside ``bdir`` are all refused: a
    bundle may only ever make the viewer read (or run) files it carries itself.
    """
    bdir = Path(bdir)
    name = str(name)
    if not _leaves_bundle(name):
        path = bdir / name
        try:
            inside = path.resolve().is_relative_to(bdir.resolve())
        except (OSError, RuntimeError):  # a link loop
            inside = False
        if inside:
            return path
    raise BundleError(
        f"The bundle '{bdir.name}' names its {what} as {name!r}, a path outside the bundle folder; "
        "the bundle was refused.",
        path=bdir,
    )


@dataclass(frozen=True, eq=False)
class OnnxArtifact:
    """A bundle's recorded ONNX export, read once and checked: these bytes are what was hashed and what runs."""

    graph: bytes = field(repr=False)
    record: OnnxRecord
    head: "tuple[np.ndarray, np.ndarray] | None" = field(default=None, repr=False)  # linear head for exact CAMs

    @property
    def sha256(self) -> str:
        return self.record.sha256


@dataclass
class LoadedBundle:
    """A bundle ready to run: validated manifest + its network.

    ``model`` is the torch network in eval mode on ``device`` (``None`` in a process without
    torch); ``onnx`` the recorded ONNX export, hash-checked, when the bundle carries one.
    ``lock`` serialises use of ``model`` across threads (hooks for Grad-CAM mutate it).
    """

    manifest: Manifest
    model: "nn.Module | None"
    path: Path
    sha256: str
    device: "torch.device | str"
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    onnx: OnnxArtifact | None = field(default=None, repr=False)
    #: Builds ``model`` from the verified weights when torch is first needed (``load_bundle(defer_torch=True)``).
    builder: "Callable[[], nn.Module] | None" = field(default=None, repr=False, compare=False)

    @property
    def torch_capable(self) -> bool:
        """True when this process can run the bundle on torch (now, or once :meth:`ensure_model` builds it)."""
        return self.model is not None or self.builder is not None

    def ensure_model(self) -> bool:
        """Build the deferred torch network now (ROAD, a GPU, a gradient-only heatmap); False without torch."""
        if self.model is None and self.builder is not None:
            with self.lock:
                if self.model is None and self.builder is not None:
                    self.model = self.builder()
                    self.builder = None
        return self.model is not None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def preprocessing(self) -> Preprocessing:
        return self.manifest.preprocessing

    @property
    def ref(self) -> ModelRef:
        """The model's identity, with the hash of the weights verified on load."""
        return ModelRef.from_manifest(self.manifest, self.sha256)

    def describe(self) -> dict[str, Any]:
        """The short model identity written into results and JSON output (:meth:`ModelRef.to_dict`)."""
        return self.ref.to_dict()


@dataclass(frozen=True)
class BundleInfo:
    """What a folder scan found: the manifest (cheap, no weights read) or why it is unusable."""

    path: Path
    manifest: Manifest | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.manifest is not None and self.error is None

    @property
    def enabled(self) -> bool:
        return self.ok and self.manifest is not None and self.manifest.enabled

    @property
    def ref(self) -> ModelRef | None:
        """The model's identity as its manifest records it (None for an unusable bundle)."""
        return None if self.manifest is None else self.manifest.ref


# ---------------------------------------------------------------------- saving
def _classifier_cam_default(manifest: Manifest) -> None:
    if manifest.cam.get("target_layers") or manifest.architecture["name"] not in ("classifier",):
        return
    backbone = manifest.architecture.get("kwargs", {}).get("backbone", "resnet18")
    from cxr_viewer.core.models.classifier import default_cam_layer

    manifest.cam["target_layers"] = [default_cam_layer(backbone)]


def save_bundle(
    model: "nn.Module",
    manifest: Mapping[str, Any] | Manifest,
    out_dir: str | Path,
    *,
    dtype: str = "float16",
) -> Path:
    """Write ``model.safetensors`` + ``manifest.json`` (with sha256) into ``out_dir``.

    Floating tensors are stored as ``dtype`` (float16 halves the download; load
    upcasts). The manifest's architecture is rebuilt and the weights loaded strictly
    before anything is written, so a bundle that saves is a bundle that loads.
    A verified ONNX export is added afterwards by :mod:`cxr_viewer.core.inference.onnx_export`.
    """
    import torch
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}")
    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(dict(manifest))
    m = Manifest.from_dict(m.to_dict())  # private copy
    _classifier_cam_default(m)
    target = getattr(torch, dtype)
    state: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(target)
        state[key] = t.clone().contiguous()
    # Check the manifest really describes this network.
    from cxr_viewer.core.models.registry import create_model

    try:
        probe = create_model(m.architecture["name"], **m.architecture["kwargs"])
        probe.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except UnknownModelError:
        raise
    except (RuntimeError, TypeError, ValueError) as exc:
        raise BundleError(f"The manifest's architecture does not match the model being saved: {exc}") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    tmp = weights.with_suffix(".safetensors.tmp")
    # One metadata key only: safetensors serialises the metadata map in no fixed order, so
    # several keys would make the same weights hash differently from one save to the next.
    # Name and version live in the manifest.
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    m.weights = {"file": WEIGHTS_FILE, "sha256": sha256_file(weights), "dtype": dtype}
    m.onnx = None  # an export of other weights must not be carried over
    m.extra.pop("onnx", None)
    _write_json(out / MANIFEST_FILE, m.to_dict())
    log.info("saved bundle %s %s to %s", m.name, m.version, out)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- loading
def _unsafe(path: Path) -> UnsafeWeightsError:
    return UnsafeWeightsError(
        f"'{path.name}' is a PyTorch/pickle file, which can run code when opened, so it was not loaded. "
        "Only model bundles with 'model.safetensors' and 'manifest.json' are accepted; "
        "convert the checkpoint with 'cxr-train export'.",
        path=path,
    )


def _check_safetensors_bytes(head: bytes, path: Path) -> None:
    """Refuse anything that is not a safetensors file by its first bytes.

    safetensors starts with a little-endian u64 header length then ``{``; anything
    else that looks like pickle (protocol byte 0x80) or a torch.save zip is unsafe.
    """
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= 100 * 1024 * 1024 and head[8:9] == b"{":
            return
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise _unsafe(path)
    if len(head) < 9:
        raise BundleError(f"The weights file '{path.name}' is truncated; copy the bundle again.", path=path)
    raise BundleError(f"'{path.name}' is not a safetensors weights file; the bundle is damaged.", path=path)


def _resolve_bundle_dir(path: Path) -> Path:
    """A folder, its manifest.json, or a zip (extracted once into the user cache)."""
    if path.is_file() and path.name == MANIFEST_FILE:
        return path.parent
    if path.is_dir():
        return path
    if not path.exists():
        raise BundleError(f"No model bundle at '{path}'.", path=path)
    if path.suffix.lower() in UNSAFE_SUFFIXES:
        raise _unsafe(path)
    if zipfile.is_zipfile(path):
        return _extract_zip(path)
    if path.suffix.lower() == ".safetensors":
        raise BundleError(
            f"'{path.name}' is only the weights; pick the bundle folder that also holds manifest.json.", path=path
        )
    raise BundleError(f"'{path.name}' is not a model bundle (a folder or .zip with manifest.json).", path=path)


def _extract_zip(path: Path) -> Path:
    from cxr_viewer.core.paths import user_cache_dir

    digest = sha256_file(path)[:20]
    dest = user_cache_dir() / "bundles" / digest
    if (dest / ".complete").exists():
        return _single_root(dest)
    refused = f"The archive '{path.name}' was refused"
    tmp: Path | None = None
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ZIP_MEMBERS:
                raise BundleError(f"{refused}: it holds {len(infos)} files (at most {MAX_ZIP_MEMBERS}).", path=path)
            declared = sum(i.file_size for i in infos)
            if declared > MAX_ZIP_BYTES:
                raise BundleError(
                    f"{refused}: it would extract to {declared / 2**30:.1f} GiB (at most {MAX_ZIP_BYTES / 2**30:.0f} GiB).",
                    path=path,
                )
            if not any(i.filename.rsplit("/", 1)[-1] == MANIFEST_FILE for i in infos):
                raise BundleError(f"The archive '{path.name}' holds no manifest.json; it is not a model bundle.", path=path)
            for i in infos:
                p = Path(i.filename)
                if _leaves_bundle(i.filename) or (i.external_attr >> 16) & 0o170000 == 0o120000:
                    raise BundleError(f"{refused}: it contains unsafe paths or links.", path=path)
                if p.suffix.lower() in UNSAFE_SUFFIXES and p.parts[0] != "golden":
                    raise _unsafe(p)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=digest, dir=dest.parent))
            written = 0
            for i in infos:  # streamed, counting real bytes: a member's declared size is not trusted
                target = tmp / i.filename
                if i.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(i) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > MAX_ZIP_BYTES:
                            raise BundleError(f"{refused}: it extracts to more than {MAX_ZIP_BYTES / 2**30:.0f} GiB.", path=path)
                        out.write(block)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        _remove(tmp)
        raise BundleError(f"The archive '{path.name}' is damaged: {exc}.", path=path) from exc
    except BaseException:
        _remove(tmp)
        raise
    assert tmp is not None
    (tmp / ".complete").touch()
    try:
        os.replace(tmp, dest)
    except OSError:  # another thread or process won the race
        _remove(tmp)
    return _single_root(dest)


def _remove(folder: Path | None) -> None:
    if folder is not None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _single_root(dest: Path) -> Path:
    if (dest / MANIFEST_FILE).exists():
        return dest
    subs = [p for p in dest.iterdir() if p.is_dir() and (p / MANIFEST_FILE).exists()]
    if len(subs) == 1:
        return subs[0]
    raise BundleError("The archive does not hold exactly one bundle folder with manifest.json.", path=dest)


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a bundle's manifest without touching the weights (cheap)."""
    bdir = _resolve_bundle_dir(Path(path))
    mpath = bdir / MANIFEST_FILE
    if not mpath.exists():
        raise BundleError(f"The folder '{bdir.name}' has no manifest.json; it is not a model bundle.", path=bdir)
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"The manifest of '{bdir.name}' is larger than {MAX_MANIFEST_BYTES >> 20} MB.", path=mpath)
        data = json.loads(mpath.read_text(encoding="utf-8"))
        return Manifest.from_dict(data, source=bdir.name)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"The manifest of '{bdir.name}' is not valid JSON ({exc}).", path=mpath) from exc
    except RecursionError as exc:  # json (and any walk of it) gives up on nesting thousands deep
        raise BundleError(
            f"The manifest of '{bdir.name}' is nested too deeply to be a model manifest; the bundle was refused.",
            path=mpath,
        ) from exc
    except OSError as exc:
        raise BundleError(f"The manifest of '{bdir.name}' cannot be read ({exc}).", path=mpath) from exc


def read_verified_weights(bdir: Path, manifest: "Manifest") -> tuple[bytes, str]:
    """The weights file's bytes and sha256, after every safety rule: safetensors only (no pickle,
    no path outside the bundle), present, and equal to the manifest's recorded checksum."""
    wname = str(manifest.weights.get("file") or WEIGHTS_FILE)
    wpath = bundle_file(bdir, wname, "weights file")
    if Path(wname).suffix.lower() != ".safetensors":
        raise _unsafe(Path(wname))
    if not wpath.exists():
        stray = [p for p in bdir.iterdir() if p.suffix.lower() in UNSAFE_SUFFIXES]
        if stray:
            raise _unsafe(stray[0])
        raise BundleError(f"The bundle '{manifest.name}' is missing its weights file '{wname}'.", path=bdir)
    data = wpath.read_bytes()
    _check_safetensors_bytes(data[:16], wpath)
    digest = hashlib.sha256(data).hexdigest()
    expected = str(manifest.weights.get("sha256") or "").lower()
    if not expected:
        raise BundleError(
            f"The bundle '{manifest.name}' records no sha256 for its weights, so they cannot be verified.", path=bdir
        )
    if digest != expected:
        raise BundleHashMismatchError(
            f"The weights of model '{manifest.name}' {manifest.version} do not match their recorded checksum: "
            "the file was changed or damaged. Reinstall the model bundle.",
            path=wpath,
        )
    return data, digest


def read_onnx_export(bdir: Path, manifest: Manifest, weights_sha256: str, weights: bytes) -> OnnxArtifact | None:
    """The bundle's recorded ONNX export (manifest ``onnx``), after every check; None if it records none.

    Refused (BundleError): a path leaving the bundle, a missing file, bytes whose sha256 is not
    the recorded one. An export made from other weights is refused too (``stale``: the caller
    decides whether to regenerate instead). The returned bytes are the ones hashed.
    """
    rec = manifest.onnx
    if rec is None or rec.schema != ONNX_RECORD_SCHEMA:
        return None
    if rec.weights_sha256 != weights_sha256:
        raise BundleError(
            f"The ONNX export of '{manifest.name}' was made from other weights; re-export it "
            "(python -m cxr_viewer.core.inference.onnx_export BUNDLE; packaging/build.sh does this for the shipped models).",
            path=bdir,
        )
    name = rec.file
    if Path(name).suffix != ".onnx":
        raise BundleError(f"The ONNX export record of '{manifest.name}' names no .onnx file.", path=bdir)
    path = bundle_file(bdir, name, "ONNX export")
    if not path.is_file():
        raise BundleError(f"The ONNX file {name} of '{manifest.name}' is missing; re-export the bundle.", path=path)
    graph = path.read_bytes()
    if hashlib.sha256(graph).hexdigest() != rec.sha256:
        raise BundleHashMismatchError(
            f"The ONNX file {path.name} of '{manifest.name}' does not match its recorded checksum: it was changed "
            "or damaged. Reinstall the model bundle.",
            path=path,
        )
    return OnnxArtifact(graph=graph, record=rec, head=_onnx_head(weights, rec, manifest.name))


def _onnx_head(weights: bytes, rec: OnnxRecord, name: str) -> "tuple[np.ndarray, np.ndarray] | None":
    """The linear head (W, b) an exact-CAM export names, from the verified safetensors bytes."""
    keys = rec.cam.get("head")
    if not (rec.exact_cam and isinstance(keys, Mapping)):
        return None
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    try:
        tensors = st_load(weights)
        return (np.asarray(tensors[str(keys["weight"])], dtype=np.float32),
                np.asarray(tensors[str(keys["bias"])], dtype=np.float32))
    except (KeyError, SafetensorError, ValueError, TypeError) as exc:
        raise BundleError(f"The weights of '{name}' lack the classifier head {exc} named by its ONNX export.") from exc


def load_bundle(path_or_zip: str | Path, *, device: "str | torch.device" = "cpu", defer_torch: bool = False) -> LoadedBundle:
    """Validate, hash-check and rebuild a bundle; the model comes back in eval mode on ``device``.

    Without torch (the small CPU app) ``model`` is None and the bundle must carry a recorded
    ONNX export, which the ONNX Runtime backend runs. With ``defer_torch`` on a CPU, a bundle
    that carries a recorded export (or one the viewer never runs, such as an SSL encoder) comes
    back the same way, plus a ``builder`` that makes the
    torch network from the same verified bytes when something first needs it
    (:meth:`LoadedBundle.ensure_model`): a start-up that runs ONNX Runtime never imports torch.
    """
    from cxr_viewer.core.runtime import torch_available

    path = Path(path_or_zip)
    bdir = _resolve_bundle_dir(path)
    manifest = read_manifest(bdir)
    data, digest = read_verified_weights(bdir, manifest)
    runs_net = manifest.is_classifier or manifest.task == "text_segmentation"
    if not torch_available():
        if device is not None and str(device).split(":")[0] not in ("cpu", "auto"):
            raise BundleError(
                "This copy of cxr-viewer runs on the CPU only (it has no PyTorch/CUDA); use --device cpu or auto."
            )
        artifact = read_onnx_export(bdir, manifest, digest, data) if runs_net else None
        if runs_net and artifact is None:
            raise BundleError(
                f"The model '{manifest.name}' has no ONNX export, and this copy of cxr-viewer runs without "
                "PyTorch. Export it with `python -m cxr_viewer.core.inference.onnx_export BUNDLE` on an "
                "installation with PyTorch, or use the full version of cxr-viewer.",
                path=bdir,
            )
        log.info("loaded bundle %s %s (%s) for ONNX Runtime", manifest.name, manifest.version, digest[:12])
        return LoadedBundle(manifest=manifest, model=None, path=bdir, sha256=digest, device="cpu", onnx=artifact)
    artifact = None
    if runs_net:
        try:
            artifact = read_onnx_export(bdir, manifest, digest, data)
        except BundleHashMismatchError:
            raise
        except BundleError as exc:  # e.g. made from earlier weights: torch still runs, the export is ignored
            log.warning("ignoring the ONNX export of %s: %s", manifest.name, exc.message)
    if defer_torch and (artifact is not None or not runs_net) and str(device).split(":")[0] in ("cpu", "auto"):
        log.info("loaded bundle %s %s (%s) for ONNX Runtime (torch on demand)", manifest.name, manifest.version,
                 digest[:12])
        return LoadedBundle(manifest=manifest, model=None, path=bdir, sha256=digest, device="cpu", onnx=artifact,
                            builder=lambda: _torch_model(bdir, manifest, data, "cpu"))
    import torch

    dev = torch.device(device)
    model = _torch_model(bdir, manifest, data, dev)
    log.info("loaded bundle %s %s (%s) on %s", manifest.name, manifest.version, digest[:12], dev)
    return LoadedBundle(manifest=manifest, model=model, path=bdir, sha256=digest, device=dev, onnx=artifact)


def _torch_model(bdir: Path, manifest: Manifest, data: bytes, device: "str | torch.device") -> "nn.Module":
    """The torch network from verified weight bytes, in eval mode on ``device``, gradients off."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    from cxr_viewer.core.models.registry import create_model

    wpath = bdir / str(manifest.weights.get("file") or WEIGHTS_FILE)
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BundleError(f"The weights of '{manifest.name}' cannot be read: {exc}.", path=wpath) from exc
    del data
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model = create_model(manifest.architecture["name"], **manifest.architecture["kwargs"])
    except UnknownModelError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BundleError(f"Model '{manifest.name}' cannot be built from its manifest: {exc}.", path=bdir) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(
            f"The weights of '{manifest.name}' do not fit the architecture in its manifest ({str(exc)[:300]}).",
            path=wpath,
        ) from exc
    model = model.to(torch.device(device)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def find_bundles(dirs: Iterable[str | Path] | None = None) -> list[BundleInfo]:
    """Scan folders for bundles (sub-folders with manifest.json, or .zip files); reads manifests only.

    A manifest is parsed again only when its file changed since the last scan, so a UI may call
    this on every request.

    Defaults to the application's ``resources/models`` and the user's models folder.
    Unusable bundles are returned with ``error`` set so a models panel can show why.
    """
    from cxr_viewer.core.paths import default_models_dir, user_models_dir

    roots = [Path(d) for d in dirs] if dirs is not None else [default_models_dir(), user_models_dir()]
    found: list[BundleInfo] = []
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            continue
        candidates: list[Path] = []
        if (root / MANIFEST_FILE).exists():
            candidates.append(root)
        else:
            for p in sorted(root.iterdir()):
                if (p.is_dir() and (p / MANIFEST_FILE).exists()) or (p.is_file() and p.suffix.lower() == ".zip"):
                    candidates.append(p)
        for cand in candidates:
            key = cand.resolve()
            if key in seen:
                continue
            seen.add(key)
            found.append(_scan(cand))
    return found


_SCANS: dict[Path, tuple[tuple[int, int], "Manifest | None", str | None]] = {}
_SCANS_LOCK = threading.Lock()


def _scan(cand: Path) -> BundleInfo:
    """One candidate's manifest, re-read only when its file changed (size or modification time)."""
    import copy

    src = cand if cand.is_file() else cand / MANIFEST_FILE
    try:
        st = src.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (-1, -1)
    with _SCANS_LOCK:
        hit = _SCANS.get(cand)
    if hit is None or hit[0] != stamp or stamp == (-1, -1):
        try:
            hit = (stamp, read_manifest(cand), None)
        except BundleError as exc:
            hit = (stamp, None, exc.message)
        with _SCANS_LOCK:
            _SCANS[cand] = hit
    _, manifest, error = hit
    return BundleInfo(cand, copy.deepcopy(manifest), error)



def __getattr__(name: str) -> Any:
    """The model card moved to its own module; the old import keeps working."""
    if name == "model_card_markdown":
        from cxr_viewer.core.models.card import model_card_markdown

        return model_card_markdown
    raise AttributeError(name)
