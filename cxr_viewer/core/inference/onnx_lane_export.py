"""Build-time exports for the torch-free lane (needs torch; the lane itself does not).

``python -m cxr_viewer.core.inference.onnx_lane_export BUNDLE_DIR... [--text-out DIR]``
writes ``<bundle>/lane/`` (ONNX files + ``lane.json``) for every classifier and
segmentation bundle and, with ``--text-out``, the MiniLM text encoder. Nothing is
written unless ONNX Runtime reproduces torch on the same inputs: classifier logits
and heatmap-layer maps, U-Net logits, sentence embeddings. The bundle's manifest
and weights are never touched, so its checksum and golden scores stay valid.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import BundleError, CXRError, InferenceError
from cxr_viewer.core.inference.onnx_lane import LANE_DIR, LANE_FILE, LANE_SCHEMA, TEXT_DIR_NAME
from cxr_viewer.core.models.bundle import sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cxr_viewer.core.models.bundle import LoadedBundle

log = logging.getLogger(__name__)

__all__ = ["ATOL", "export_classifier_lane", "export_lane", "export_segmenter_lane", "export_text_encoder", "main"]

#: Largest allowed |onnx - torch| on logits (and, scaled by the map's range, on feature maps).
ATOL = 1e-4
OPSET = 18
SENTENCES = (
    "No acute cardiopulmonary abnormality.",
    "Right lower lobe consolidation, likely pneumonia.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Heart size is normal. The lungs are clear bilaterally without focal airspace disease, effusion "
    "or pneumothorax; degenerative changes of the thoracic spine are noted.",
)


def _onnx_export(
    module: "nn.Module",
    args: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    """Export with the TorchScript-based exporter, then the torch.export one; first success wins."""
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
                    torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                                      output_names=output_names, dynamic_axes=dynamic, opset_version=17)
            return
        except Exception as exc:  # noqa: BLE001 - exporter failures are many; try the other one
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc)[:300]}")
    raise InferenceError("The model could not be exported to ONNX (" + " | ".join(errors) + ").")


def _max_diff(got: np.ndarray, ref: np.ndarray, what: str, atol: float, *, relative: bool = False) -> float:
    if got.shape != ref.shape:
        raise InferenceError(f"ONNX {what} shape {got.shape} differs from torch {ref.shape}.")
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if got.size else 0.0
    limit = atol * max(1.0, float(np.max(np.abs(ref)))) if relative else atol
    if not np.isfinite(diff) or diff > limit:
        raise InferenceError(f"ONNX {what} differ from torch by {diff:.2e} (limit {limit:.1e}); export refused.")
    return diff


def _ort(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _write_record(dest: Path, record: dict[str, Any]) -> None:
    import torch

    record = {"schema": LANE_SCHEMA, **record, "torch_version": torch.__version__,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    tmp = dest / (LANE_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, dest / LANE_FILE)


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


def _head_keys(model: "nn.Module") -> dict[str, str] | None:
    from torch import nn

    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or head.bias is None:
        return None
    return {"weight": "head.weight", "bias": "head.bias"}


def export_classifier_lane(bundle: "LoadedBundle", *, atol: float = ATOL, seed: int = 0) -> dict[str, Any]:
    """``<bundle>/lane/classifier.onnx``: input -> (logits, features); verified; returns the record."""
    import torch

    model = bundle.model.eval()
    spec = bundle.preprocessing
    layers = bundle.manifest.cam_layers or [model.cam_layer_name()]
    if len(layers) != 1:
        raise InferenceError(f"The lane exports one heatmap layer; {bundle.name!r} names {len(layers)}.")
    dest = bundle.path / LANE_DIR
    dest.mkdir(exist_ok=True)
    out = dest / "classifier.onnx"
    tmp = dest / f"classifier.{os.getpid()}.tmp.onnx"
    wrapped = _WithFeatures.build(model, layers[0])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, spec.channels, *spec.size, generator=g)
    try:
        with torch.inference_mode():
            ref_logits, ref_feats = (t.float().numpy() for t in wrapped(x))
        _onnx_export(wrapped, (x[:1],), tmp, ["input"], ["logits", "features"],
                     {"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}})
        got_logits, got_feats = _ort(tmp).run(["logits", "features"], {"input": x.numpy()})
        d_logits = _max_diff(got_logits, ref_logits, "logits", atol)
        d_feats = _max_diff(got_feats, ref_feats, "feature maps", atol, relative=True)
        cam: dict[str, Any] = {"layer": layers[0], "exact": False, "head": None}
        keys = _head_keys(model)
        if keys is not None and ref_feats.ndim == 4:
            w = model.head.weight.detach().float().cpu().numpy()
            b = model.head.bias.detach().float().cpu().numpy()
            pooled = ref_feats.mean(axis=(2, 3))
            if pooled.shape[1] == w.shape[1]:
                gap = float(np.max(np.abs(pooled @ w.T + b - ref_logits)))
                cam.update(exact=gap <= atol * max(1.0, float(np.max(np.abs(ref_logits)))), head=keys,
                           gap_linear_max_diff=gap)
        os.replace(tmp, out)
    finally:
        wrapped.handle.remove()
        if tmp.exists():
            tmp.unlink()
    record = {
        "kind": "classifier", "file": out.name, "sha256": sha256_file(out), "weights_sha256": bundle.sha256,
        "cam": cam, "verified": {"logits_max_abs_diff": d_logits, "features_max_abs_diff": d_feats, "atol": atol},
    }
    _write_record(dest, record)
    log.info("lane export %s: logits diff %.1e, CAM exact=%s", bundle.name, d_logits, cam["exact"])
    return record


def export_segmenter_lane(bundle: "LoadedBundle", *, atol: float = ATOL, seed: int = 0) -> dict[str, Any]:
    """``<bundle>/lane/segmenter.onnx``: (image (1,C,H,W), text (N,D)) -> logits (N,1,H,W); verified."""
    import torch
    from torch import nn

    net = bundle.model.eval()
    spec = bundle.preprocessing
    conditioned = bool(getattr(net, "conditioned", True))
    dim = int(getattr(net, "text_dim", 0) or 0)
    dest = bundle.path / LANE_DIR
    dest.mkdir(exist_ok=True)
    out = dest / "segmenter.onnx"
    tmp = dest / f"segmenter.{os.getpid()}.tmp.onnx"

    class Seg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: "torch.Tensor", text: "torch.Tensor | None" = None) -> "torch.Tensor":
            return self.net(image, text)

    wrapped = Seg().eval()
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, spec.channels, *spec.size, generator=g)
    text = torch.nn.functional.normalize(torch.randn(3, max(dim, 1), generator=g), dim=-1)
    try:
        if conditioned:
            with torch.inference_mode():
                ref = wrapped(image, text).float().numpy()
            _onnx_export(wrapped, (image, text[:2]), tmp, ["image", "text"], ["logits"],
                         {"text": {0: "sentences"}, "logits": {0: "sentences"}})
            got = _ort(tmp).run(["logits"], {"image": image.numpy(), "text": text.numpy()})[0]
            got1 = _ort(tmp).run(["logits"], {"image": image.numpy(), "text": text[:1].numpy()})[0]
            _max_diff(got1, ref[:1], "segmentation logits (one sentence)", atol, relative=True)
        else:
            with torch.inference_mode():
                ref = wrapped(image).float().numpy()
            _onnx_export(wrapped, (image,), tmp, ["image"], ["logits"], {})
            got = _ort(tmp).run(["logits"], {"image": image.numpy()})[0]
        diff = _max_diff(got, ref, "segmentation logits", atol, relative=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    record = {"kind": "text_segmentation", "file": out.name, "sha256": sha256_file(out),
              "weights_sha256": bundle.sha256, "conditioned": conditioned, "text_dim": dim,
              "verified": {"logits_max_abs_diff": diff, "atol": atol}}
    _write_record(dest, record)
    log.info("lane export %s: logits diff %.1e", bundle.name, diff)
    return record


def export_text_encoder(dest_dir: str | Path, *, atol: float = 1e-5) -> dict[str, Any]:
    """all-MiniLM-L6-v2 as ONNX + its tokenizer.json into ``dest_dir``; embeddings verified."""
    from torch import nn

    from cxr_viewer.core.inference.onnx_lane import LaneMiniLMEncoder
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
    tmp = dest / f"model.{os.getpid()}.tmp.onnx"
    try:
        _onnx_export(Bert().eval(), args, tmp, ["input_ids", "attention_mask", "token_type_ids"],
                     ["last_hidden_state"], {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq,
                                             "last_hidden_state": seq})
        os.replace(tmp, dest / "model.onnx")
    finally:
        if tmp.exists():
            tmp.unlink()
    shutil.copyfile(minilm_model_dir() / "tokenizer.json", dest / "tokenizer.json")
    record = {"kind": "text_encoder", "name": ref_enc.name, "file": "model.onnx",
              "sha256": sha256_file(dest / "model.onnx"), "tokenizer": "tokenizer.json",
              "tokenizer_sha256": sha256_file(dest / "tokenizer.json"), "max_length": ref_enc.max_length,
              "dim": ref_enc.dim}
    _write_record(dest, record)
    texts = [*SENTENCES, "x " * 400]  # the last one is truncated at max_length
    got = LaneMiniLMEncoder(dest, threads=1).encode(texts)
    ref = ref_enc.encode(texts)
    try:
        diff = _max_diff(got, ref, "sentence embeddings", atol)
    except InferenceError:
        (dest / LANE_FILE).unlink()
        raise
    record["verified"] = {"embedding_max_abs_diff": diff, "atol": atol, "sentences": len(texts)}
    _write_record(dest, record)
    return record


def export_lane(bundle_dir: str | Path, *, atol: float = ATOL) -> dict[str, Any] | None:
    """Export the lane for one bundle folder (None for tasks the viewer does not run)."""
    import cxr_viewer.core.models  # noqa: F401  (registers every architecture)
    from cxr_viewer.core.models.bundle import load_bundle, read_manifest

    bdir = Path(bundle_dir)
    if not bdir.is_dir():
        raise BundleError(f"{bdir} is not a bundle folder (unpack zipped bundles first).", path=bdir)
    manifest = read_manifest(bdir)
    if not (manifest.is_classifier or manifest.task == "text_segmentation"):
        return None
    bundle = load_bundle(bdir, device="cpu")
    if manifest.is_classifier:
        return export_classifier_lane(bundle, atol=atol)
    return export_segmenter_lane(bundle, atol=atol)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cxr_viewer.core.inference.onnx_lane_export",
        description="Write verified ONNX exports (lane/) beside model bundles for the torch-free viewer.",
    )
    p.add_argument("bundles", nargs="*", type=Path, help="bundle folders (or folders of bundle folders)")
    p.add_argument("--text-out", type=Path, help=f"also export the MiniLM text encoder into this folder "
                   f"(the app looks in resources/text/{TEXT_DIR_NAME})")
    p.add_argument("--atol", type=float, default=ATOL)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    failures = 0
    targets: list[Path] = []
    for b in args.bundles:
        if (b / "manifest.json").is_file():
            targets.append(b)
        elif b.is_dir():
            targets += sorted(d for d in b.iterdir() if (d / "manifest.json").is_file())
    for b in targets:
        try:
            rec = export_lane(b, atol=args.atol)
        except CXRError as exc:
            print(f"FAIL  {b.name}: {exc.message}")
            failures += 1
            continue
        if rec is None:
            print(f"SKIP  {b.name}: not run by the viewer")
        else:
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in rec["verified"].items() if k.endswith("diff"))
            cam = f", CAM exact={rec['cam']['exact']}" if "cam" in rec else ""
            print(f"OK    {b.name}: {rec['file']} ({diffs}{cam})")
    if args.text_out:
        try:
            rec = export_text_encoder(args.text_out)
            print(f"OK    text encoder: {args.text_out} (embedding diff {rec['verified']['embedding_max_abs_diff']:.1e})")
        except CXRError as exc:
            print(f"FAIL  text encoder: {exc.message}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
