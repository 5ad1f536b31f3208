"""The one ONNX export: bundle weights -> verified ONNX Runtime graphs (needs torch; running them does not).

``python -m cxr_viewer.core.inference.onnx_export BUNDLE_DIR... [--text-out DIR]`` writes
``<bundle>/onnx/classifier.onnx`` (logits and the heatmap layer's feature map) or
``<bundle>/onnx/segmenter.onnx`` (image + sentence embeddings -> mask logits), and records
it in the bundle's ``manifest.json`` under ``onnx`` (file, its sha256, the sha256 of the
weights it came from, what was verified) -- where the weights' own hash lives. With
``--text-out`` the MiniLM text encoder is exported too (its record is ``onnx.json`` beside it).

One verification rule for every export: ONNX Runtime must reproduce torch within
:data:`ATOL` on realistic inputs -- the bundle's golden images and the sample
radiographs, through the bundle's own preprocessing -- and on a fixed-seed noise batch.
A graph that agrees on noise but not on radiographs is refused. Nothing is written
unless it passes; the weights are never touched, so their checksum and golden scores
stay valid.

:func:`regenerate` makes the same export in memory from weights that were just
verified, for a bundle that carries none: the torch backend on a CPU never runs an
ONNX file it did not make itself or find recorded in the manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import BundleError, CXRError, InferenceError
from cxr_viewer.core.inference.onnx_runtime import (
    ONNX_DIR,
    RECORD_SCHEMA,
    TEXT_DIR_NAME,
    TEXT_RECORD,
    OrtMiniLMEncoder,
    ort_session,
)
from cxr_viewer.core.models.blocks import OnnxRecord
from cxr_viewer.core.models.bundle import MANIFEST_FILE, _write_json, bundle_file, sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cxr_viewer.core.models.bundle import LoadedBundle, OnnxArtifact
    from cxr_viewer.core.models.preprocess import Preprocessing

log = logging.getLogger(__name__)

__all__ = [
    "ATOL",
    "OPSET",
    "TEXT_FLOAT16_ATOL",
    "export_bundle",
    "export_text_encoder",
    "main",
    "ort_artifact_for",
    "regenerate",
    "store_float16",
    "verification_inputs",
    "verify_classifier",
]

#: Largest allowed |onnx - torch| on logits (and, scaled by the map's range, on feature maps).
ATOL = 1e-4
#: Largest allowed |onnx - torch| on MiniLM's unit-norm sentence embeddings once its weights are float16.
TEXT_FLOAT16_ATOL = 2e-3
OPSET = 18
NOISE_IMAGES = 2
SENTENCES = (
    "No acute cardiopulmonary abnormality.",
    "Right lower lobe consolidation, likely pneumonia.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Heart size is normal. The lungs are clear bilaterally without focal airspace disease, effusion "
    "or pneumothorax; degenerative changes of the thoracic spine are noted.",
)


# ---------------------------------------------------------------------- export + verification rule
def _export(
    module: "nn.Module",
    args: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    """The TorchScript-based exporter, then the torch.export one; the first success wins."""
    import torch

    errors: list[str] = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if dynamo:
                    shapes = tuple(
                        {ax: torch.export.Dim(f"{name}_{n}", min=1 if n == "batch" else 2, max=4096)
                         for ax, n in dynamic.get(name, {}).items()} or None
                        for name in input_names
                    )
                    torch.onnx.export(module, args, str(path), dynamo=True, external_data=False,
                                      input_names=input_names, output_names=output_names,
                                      dynamic_shapes=shapes, opset_version=OPSET, verbose=False)
                else:
                    # No constant folding: batch norms stay separate so every weight keeps the bundle's
                    # own (float16-exact) values for :func:`store_float16`; ONNX Runtime fuses them at load.
                    torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                                      output_names=output_names, dynamic_axes=dynamic, opset_version=17,
                                      do_constant_folding=False)
            return
        except Exception as exc:  # noqa: BLE001 - exporter failures are many; try the other one
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc)[:300]}")
    raise InferenceError("The model could not be exported to ONNX (" + " | ".join(errors) + ").")


def store_float16(path: Path, *, lossy: bool = False, min_size: int = 256) -> dict[str, Any]:
    """Rewrite the graph at ``path`` with float16 initialisers, each cast to float32 by a ``Cast`` node.

    ONNX Runtime folds the casts at load (constant folding), so the session computes in float32
    exactly as before and the file is about half the size. Without ``lossy`` only tensors whose
    values float16 holds exactly are converted (our bundles store float16 weights, so that is
    nearly all of them and the graph computes the same numbers); with ``lossy`` every float32
    tensor of at least ``min_size`` values is rounded (the caller re-verifies). Returns what was stored.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inputs = {i.name for i in graph.input}
    stored = kept = 0
    casts, halves = [], []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or init.name in inputs:
            continue
        a = numpy_helper.to_array(init)
        if a.size < min_size:
            kept += a.size
            continue
        with np.errstate(over="ignore"):
            h = a.astype(np.float16)
        if not np.all(np.isfinite(h)) or (not lossy and not np.array_equal(h.astype(np.float32), a)):
            kept += a.size
            continue
        graph.initializer.remove(init)
        halves.append(numpy_helper.from_array(h, f"{init.name}__f16"))
        casts.append(helper.make_node("Cast", [f"{init.name}__f16"], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_f32"))
        stored += a.size
    graph.initializer.extend(halves)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*casts, *nodes])  # casts first: the graph stays topologically sorted
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"initializers": "float16" if stored and not kept else ("mixed" if stored else "float32"),
            "float16_values": stored, "float32_values": kept, "lossy": bool(lossy and stored)}


def max_diff(got: np.ndarray, ref: np.ndarray, what: str, atol: float = ATOL, *, relative: bool = False) -> float:
    """THE verification rule: max |onnx - torch| within ``atol`` (times the reference's range if relative)."""
    if got.shape != ref.shape:
        raise InferenceError(f"ONNX {what} shape {got.shape} differs from torch {ref.shape}; export refused.")
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if got.size else 0.0
    limit = atol * max(1.0, float(np.max(np.abs(ref)))) if relative else atol
    if not np.isfinite(diff) or diff > limit:
        raise InferenceError(f"ONNX {what} differ from torch by {diff:.2e} (limit {limit:.1e}); export refused.")
    return diff


@functools.lru_cache(maxsize=8)
def _sample_inputs(spec: "Preprocessing") -> np.ndarray:
    """The shipped sample radiographs through ``spec`` (N, C, H, W); empty if none can be read."""
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.preprocess import preprocess
    from cxr_viewer.core.paths import resources_dir

    out = []
    samples = resources_dir() / "samples"
    for p in sorted(samples.glob("*")) if samples.is_dir() else []:
        if p.suffix.lower() not in (".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            continue
        try:
            out.append(preprocess(read_image(p), spec))
        except CXRError as exc:  # pragma: no cover - the samples ship with the package
            log.warning("sample %s not used for ONNX verification: %s", p.name, exc.message)
    return np.stack(out) if out else np.zeros((0, spec.channels, *spec.size), np.float32)


def verification_inputs(bundle: "LoadedBundle", *, seed: int = 0) -> tuple[np.ndarray, dict[str, int]]:
    """Realistic inputs (golden images, sample radiographs) plus fixed-seed noise, preprocessed for ``bundle``."""
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.preprocess import preprocess

    spec = bundle.preprocessing
    golden = []
    for g in bundle.manifest.golden:
        path = bundle_file(bundle.path, str(g["image"]), "golden image")
        try:
            golden.append(preprocess(read_image(path), spec))
        except CXRError as exc:
            raise BundleError(f"The golden image {g['image']} of {bundle.name!r} cannot be read: {exc.message}") from exc
    samples = _sample_inputs(spec)
    noise = np.random.default_rng(seed).standard_normal((NOISE_IMAGES, spec.channels, *spec.size)).astype(np.float32)
    parts = [np.stack(golden)] if golden else []
    x = np.concatenate([*parts, samples, noise], 0).astype(np.float32)
    return x, {"golden": len(golden), "samples": int(samples.shape[0]), "noise": NOISE_IMAGES}


class _WithFeatures:
    """Builds an ``nn.Module`` returning (logits, heatmap-layer map) for export."""

    @staticmethod
    def build(model: "nn.Module", layer_name: str) -> "nn.Module":
        from torch import nn

        modules = dict(model.named_modules())
        if layer_name not in modules:
            raise InferenceError(f"The model has no layer {layer_name!r} for heatmaps; the bundle's 'cam' is wrong.")

        class WithFeatures(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model
                self.store: list[Any] = []
                self.handle = modules[layer_name].register_forward_hook(lambda m, i, o: self.store.append(o))

            def forward(self, x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
                self.store.clear()
                logits = self.model(x)
                return logits, self.store[-1]

        return WithFeatures().eval()


def _torch_outputs(module: "nn.Module", x: np.ndarray, *extra: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(a) for a in (x, *extra)))
    out = out if isinstance(out, tuple) else (out,)
    return [t.float().cpu().numpy() for t in out]


def verify_classifier(session: Any, model: "nn.Module", x: np.ndarray, layer: str | None, *, atol: float = ATOL) -> dict[str, float]:
    """Logits (and the feature map when the graph outputs it) of ``session`` against torch on ``x``."""
    names = [o.name for o in session.get_outputs()]
    wrapped = _WithFeatures.build(model, layer) if layer and "features" in names else None
    try:
        ref = _torch_outputs(wrapped if wrapped is not None else model, x)
        got = session.run(names, {session.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})
        diffs = {"logits_max_abs_diff": max_diff(got[names.index("logits")], ref[0], "logits", atol)}
        if wrapped is not None:
            diffs["features_max_abs_diff"] = max_diff(got[names.index("features")], ref[1], "feature maps", atol,
                                                      relative=True)
    finally:
        if wrapped is not None:
            wrapped.handle.remove()
    return diffs


def _record(kind: str, file: str, data_sha: str, bundle: "LoadedBundle | None", **extra: Any) -> dict[str, Any]:
    import torch

    rec: dict[str, Any] = {"schema": RECORD_SCHEMA, "kind": kind, "file": file, "sha256": data_sha}
    if bundle is not None:
        rec["weights_sha256"] = bundle.sha256
    rec.update(extra)
    rec.update(opset=OPSET, torch_version=torch.__version__,
               created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return rec


def _head_exact(model: "nn.Module", feats: np.ndarray, logits: np.ndarray, atol: float) -> dict[str, Any]:
    """Whether logits == W @ mean(features) + b (then every gradient CAM has a closed form)."""
    from torch import nn

    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or head.bias is None or feats.ndim != 4:
        return {"exact": False, "head": None}
    w = head.weight.detach().float().cpu().numpy()
    b = head.bias.detach().float().cpu().numpy()
    pooled = feats.mean(axis=(2, 3))
    if pooled.shape[1] != w.shape[1]:
        return {"exact": False, "head": None}
    gap = float(np.max(np.abs(pooled @ w.T + b - logits)))
    exact = gap <= atol * max(1.0, float(np.max(np.abs(logits))))
    return {"exact": exact, "head": {"weight": "head.weight", "bias": "head.bias"}, "gap_linear_max_diff": gap}


def _half_size(x: np.ndarray) -> np.ndarray | None:
    """``x`` at half its height and width (area averaging), or None when that is too small to matter."""
    h, w = x.shape[2] // 2, x.shape[3] // 2
    if min(h, w) < 32:
        return None
    return x[:, :, : 2 * h, : 2 * w].reshape(x.shape[0], x.shape[1], h, 2, w, 2).mean(axis=(3, 5)).astype(np.float32)


def _export_classifier_file(bundle: "LoadedBundle", path: Path, *, atol: float, seed: int) -> dict[str, Any]:
    """Export + verify into ``path``; returns the record's verification fields (no file/sha yet)."""
    model = bundle.model.eval()
    layers = bundle.manifest.cam_layers or [model.cam_layer_name()]
    if len(layers) != 1:
        raise InferenceError(f"The ONNX export carries one heatmap layer; {bundle.name!r} names {len(layers)}.")
    x, counts = verification_inputs(bundle, seed=seed)
    wrapped = _WithFeatures.build(model, layers[0])
    import torch

    try:
        with bundle.lock:
            ref_logits, ref_feats = _torch_outputs(wrapped, x)
            # Height and width stay free so ScoreCAM may run its masked forwards at a capped size.
            _export(wrapped, (torch.from_numpy(x[:1]),), path, ["input"], ["logits", "features"],
                    {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"},
                     "features": {0: "batch", 2: "feature_height", 3: "feature_width"}})
    finally:
        wrapped.handle.remove()
    storage = store_float16(path)
    session = ort_session(path, threads=1)
    with bundle.lock:
        diffs = verify_classifier(session, model, x, layers[0], atol=atol)
        small = _half_size(x)
        if small is not None:  # the same rule at the size ScoreCAM's capped forwards use
            half = verify_classifier(session, model, small, layers[0], atol=atol)
            diffs.update({f"half_size_{k}": v for k, v in half.items()})
    cam = {"layer": layers[0], **_head_exact(model, ref_feats, ref_logits, atol)}
    return {"cam": cam, "storage": storage, "verified": {**diffs, "atol": atol, "inputs": counts}}


class _Seg:
    @staticmethod
    def build(net: "nn.Module") -> "nn.Module":
        from torch import nn

        class Seg(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, image: "torch.Tensor", text: "torch.Tensor | None" = None) -> "torch.Tensor":
                return self.net(image, text)

        return Seg().eval()


def _texts(dim: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed + 1).standard_normal((3, max(dim, 1))).astype(np.float32)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def verify_segmenter(session: Any, bundle: "LoadedBundle", x: np.ndarray, *, atol: float = ATOL, seed: int = 0) -> dict[str, float]:
    """Mask logits of ``session`` against torch, one image of ``x`` at a time, 3 and 1 sentences."""
    wrapped = _Seg.build(bundle.model.eval())
    conditioned = bool(getattr(bundle.model, "conditioned", True))
    text = _texts(int(getattr(bundle.model, "text_dim", 0) or 0), seed)
    diff = 0.0
    with bundle.lock:
        for i in range(x.shape[0]):  # the graph's image batch is fixed at 1
            img = x[i : i + 1]
            for t in ((text, text[:1]) if conditioned else (None,)):
                ref = _torch_outputs(wrapped, img, *(() if t is None else (t,)))[0]
                feeds = {"image": img} if t is None else {"image": img, "text": t}
                got = session.run(["logits"], feeds)[0]
                diff = max(diff, max_diff(got, ref, "segmentation logits", atol, relative=True))
    return {"logits_max_abs_diff": diff}


def _export_segmenter_file(bundle: "LoadedBundle", path: Path, *, atol: float, seed: int) -> dict[str, Any]:
    import torch

    net = bundle.model.eval()
    conditioned = bool(getattr(net, "conditioned", True))
    dim = int(getattr(net, "text_dim", 0) or 0)
    wrapped = _Seg.build(net)
    x, counts = verification_inputs(bundle, seed=seed)
    text = _texts(dim, seed)
    with bundle.lock:
        if conditioned:
            _export(wrapped, (torch.from_numpy(x[:1]), torch.from_numpy(text[:2])), path, ["image", "text"],
                    ["logits"], {"text": {0: "sentences"}, "logits": {0: "sentences"}})
        else:
            _export(wrapped, (torch.from_numpy(x[:1]),), path, ["image"], ["logits"], {})
    storage = store_float16(path)
    diffs = verify_segmenter(ort_session(path, threads=1), bundle, x, atol=atol, seed=seed)
    return {"conditioned": conditioned, "text_dim": dim, "storage": storage,
            "verified": {**diffs, "atol": atol, "inputs": counts}}


def _kind(bundle: "LoadedBundle") -> str | None:
    if bundle.manifest.is_classifier:
        return "classifier"
    if bundle.task == "text_segmentation":
        return "text_segmentation"
    return None


def _export_file(bundle: "LoadedBundle", path: Path, *, atol: float, seed: int) -> dict[str, Any]:
    kind = _kind(bundle)
    if kind == "classifier":
        return _export_classifier_file(bundle, path, atol=atol, seed=seed)
    if kind == "text_segmentation":
        return _export_segmenter_file(bundle, path, atol=atol, seed=seed)
    raise InferenceError(f"The viewer runs no ONNX graph for a {bundle.task} bundle.")


_MADE: dict[tuple[str, ...], "OnnxArtifact"] = {}  # (weights sha, kind, spec): made by this process
_MADE_LOCK = threading.Lock()


def regenerate(bundle: "LoadedBundle", *, atol: float = ATOL, seed: int = 0) -> "OnnxArtifact":
    """The bundle's export made now, in memory, from its verified weights (verified like any export).

    Nothing is left on disk, so nothing but what the manifest records or this process made is ever run.
    What this process made is kept in memory (by the weights' sha256) for the next engine.
    """
    key = (bundle.sha256, _kind(bundle) or "", repr(bundle.preprocessing), repr(bundle.manifest.cam_layers))
    with _MADE_LOCK:
        hit = _MADE.get(key)
    if hit is not None:
        return hit
    art = _regenerate(bundle, atol=atol, seed=seed)
    with _MADE_LOCK:
        _MADE[key] = art
        while len(_MADE) > 8:
            _MADE.pop(next(iter(_MADE)))
    return art


def _regenerate(bundle: "LoadedBundle", *, atol: float, seed: int) -> "OnnxArtifact":
    import hashlib

    from cxr_viewer.core.models.bundle import OnnxArtifact

    with tempfile.TemporaryDirectory(prefix="cxr-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        fields = _export_file(bundle, path, atol=atol, seed=seed)
        graph = path.read_bytes()
    rec = OnnxRecord.from_dict(_record(_kind(bundle) or "", "", hashlib.sha256(graph).hexdigest(), bundle,
                                       source="regenerated", **fields))  # fmt: skip
    return OnnxArtifact(graph=graph, record=rec, head=_torch_head(bundle, rec))


def _torch_head(bundle: "LoadedBundle", rec: OnnxRecord) -> "tuple[np.ndarray, np.ndarray] | None":
    if not rec.exact_cam:
        return None
    head = bundle.model.head
    return (head.weight.detach().float().cpu().numpy(), head.bias.detach().float().cpu().numpy())


def ort_artifact_for(bundle: "LoadedBundle", *, atol: float = ATOL) -> "OnnxArtifact":
    """What the ONNX Runtime backend may run for a torch-loaded bundle.

    The bundle's recorded export (hash-checked on load), verified here against the torch
    weights on the golden images, the sample radiographs and noise; or, when it records
    none, one regenerated now from those weights.
    """
    art = bundle.onnx
    if art is None:
        return regenerate(bundle, atol=atol)
    x, _ = verification_inputs(bundle)
    session = ort_session(art.graph, threads=1)
    if bundle.manifest.is_classifier:
        layer = art.record.cam_layer
        with bundle.lock:
            verify_classifier(session, bundle.model, x, layer, atol=atol)
    else:
        verify_segmenter(session, bundle, x, atol=atol)
    return art


def export_bundle(bundle_dir: str | Path, *, atol: float = ATOL, seed: int = 0) -> dict[str, Any] | None:
    """Write ``<bundle>/onnx/*.onnx`` and record it in the manifest (None for tasks the viewer does not run)."""
    import cxr_viewer.core.models  # noqa: F401  (registers every architecture)
    from cxr_viewer.core.models.bundle import load_bundle, read_manifest

    bdir = Path(bundle_dir)
    if not bdir.is_dir():
        raise BundleError(f"{bdir} is not a bundle folder (unpack zipped bundles first).", path=bdir)
    manifest = read_manifest(bdir)
    if not (manifest.is_classifier or manifest.task == "text_segmentation"):
        return None
    bundle = load_bundle(bdir, device="cpu")
    name = "classifier.onnx" if manifest.is_classifier else "segmenter.onnx"
    dest = bdir / ONNX_DIR
    dest.mkdir(exist_ok=True)
    tmp = dest / f".{name}.{os.getpid()}.tmp"
    try:
        fields = _export_file(bundle, tmp, atol=atol, seed=seed)
        os.replace(tmp, dest / name)
    finally:
        if tmp.exists():
            tmp.unlink()
    rec = _record(_kind(bundle) or "", f"{ONNX_DIR}/{name}", sha256_file(dest / name), bundle, **fields)
    data = json.loads((bdir / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["onnx"] = rec
    _write_json(bdir / MANIFEST_FILE, data)
    read_manifest(bdir)  # still a valid manifest
    log.info("ONNX export %s: %s", bundle.name, rec["verified"])
    return rec


def export_text_encoder(dest_dir: str | Path, *, atol: float = 1e-5, float16: bool = True) -> dict[str, Any]:
    """all-MiniLM-L6-v2 as ONNX + its tokenizer.json into ``dest_dir``; embeddings verified.

    The float32 graph must match the transformers model within ``atol``; with ``float16`` (the
    default, what the repository ships) its weights are then stored as float16 and the embeddings
    must stay within :data:`TEXT_FLOAT16_ATOL` of the transformers model's (unit vectors).
    """
    from torch import nn

    from cxr_viewer.core.models.text import MiniLMEncoder, minilm_model_dir

    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    ref_enc = MiniLMEncoder(device="cpu")
    ref_enc._ensure()
    bert = ref_enc._model

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor",
                    token_type_ids: "torch.Tensor") -> "torch.Tensor":
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    batch = ref_enc._tokenizer(list(SENTENCES[:2]), padding=True, return_tensors="pt")
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    seq = {0: "batch", 1: "tokens"}
    tmp = dest / f".model.{os.getpid()}.tmp"
    try:
        _export(Bert().eval(), args, tmp, ["input_ids", "attention_mask", "token_type_ids"],
                ["last_hidden_state"], {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq,
                                        "last_hidden_state": seq})
        os.replace(tmp, dest / "model.onnx")
    finally:
        if tmp.exists():
            tmp.unlink()
    shutil.copyfile(minilm_model_dir() / "tokenizer.json", dest / "tokenizer.json")
    record = _record("text_encoder", "model.onnx", sha256_file(dest / "model.onnx"), None,
                     name=ref_enc.name, tokenizer="tokenizer.json",
                     tokenizer_sha256=sha256_file(dest / "tokenizer.json"), max_length=ref_enc.max_length,
                     dim=ref_enc.dim)
    _write_json(dest / TEXT_RECORD, record)
    texts = [*SENTENCES, "x " * 400]  # the last one is truncated at max_length
    ref = ref_enc.encode(texts)
    try:
        diff = max_diff(OrtMiniLMEncoder(dest, threads=1).encode(texts), ref, "sentence embeddings", atol)
        verified: dict[str, Any] = {"embedding_max_abs_diff": diff, "atol": atol, "sentences": len(texts)}
        if float16:
            # MiniLM's weights are float32, so float16 storage rounds them: verified again, against its own limit.
            record["storage"] = store_float16(dest / "model.onnx", lossy=True)
            record["sha256"] = sha256_file(dest / "model.onnx")
            _write_json(dest / TEXT_RECORD, record)
            got = OrtMiniLMEncoder(dest, threads=1).encode(texts)
            verified = {"embedding_max_abs_diff": max_diff(got, ref, "float16-stored sentence embeddings",
                                                           TEXT_FLOAT16_ATOL),
                        "atol": TEXT_FLOAT16_ATOL, "float32_export_max_abs_diff": diff,
                        "min_cosine": float(np.min(np.sum(got * ref, axis=1))), "sentences": len(texts)}
    except InferenceError:
        (dest / TEXT_RECORD).unlink()
        raise
    record["verified"] = verified
    _write_json(dest / TEXT_RECORD, record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cxr_viewer.core.inference.onnx_export",
        description="Write verified ONNX exports beside model bundles (recorded in their manifests).",
    )
    p.add_argument("bundles", nargs="*", type=Path, help="bundle folders (or folders of bundle folders)")
    p.add_argument("--text-out", type=Path, help=f"also export the MiniLM text encoder into this folder "
                   f"(the app looks in resources/text/{TEXT_DIR_NAME})")
    p.add_argument("--atol", type=float, default=ATOL)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # one line per bundle
    failures = 0
    targets: list[Path] = []
    for b in args.bundles:
        if (b / MANIFEST_FILE).is_file():
            targets.append(b)
        elif b.is_dir():
            targets += sorted(d for d in b.iterdir() if (d / MANIFEST_FILE).is_file())
    for b in targets:
        try:
            rec = export_bundle(b, atol=args.atol)
        except CXRError as exc:
            log.error(f"FAIL  {b.name}: {exc.message}")
            failures += 1
            continue
        if rec is None:
            log.info(f"SKIP  {b.name}: not run by the viewer")
        else:
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in rec["verified"].items() if k.endswith("diff"))
            cam = f", CAM exact={rec['cam']['exact']}" if "cam" in rec else ""
            log.info(f"OK    {b.name}: {rec['file']} ({diffs}{cam})")
    if args.text_out:
        try:
            rec = export_text_encoder(args.text_out)
            log.info(f"OK    text encoder: {args.text_out} (embedding diff {rec['verified']['embedding_max_abs_diff']:.1e})")
        except CXRError as exc:
            log.error(f"FAIL  text encoder: {exc.message}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
