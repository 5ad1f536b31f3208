"""The torch-free inference lane: ONNX Runtime + NumPy, for the small CPU app bundle.

Why: PyTorch (with its CUDA libraries) is most of a frozen app's size (5.4 GB
measured, see ``packaging/README.md``). At build time every bundle gets ONNX
exports verified against torch (:mod:`cxr_viewer.core.inference.onnx_lane_export`),
stored under ``<bundle>/lane/`` with a ``lane.json`` recording their hashes and the
weights they came from. This module runs them with no torch import at all, behind
the same API the viewer and the headless commands already use:
``InferenceEngine(...)`` becomes a :class:`LaneEngine`, ``load_bundle`` a
:func:`load_lane_bundle`, ``Segmenter`` a :class:`LaneSegmenter` and the MiniLM
text encoder a :class:`LaneMiniLMEncoder` whenever torch is absent.

Heatmaps without gradients. Our classifiers are ``backbone -> global average
pool -> linear head``, and the heatmap layer is the last spatial map ``A`` (K, h, w)
before the pool. Then the logit is ``y_c = b_c + sum_k W_ck * mean_ij A_kij``, so
its gradient with respect to ``A`` is the CONSTANT ``W_ck / (h*w)``. Every
gradient method therefore has a closed form in ``A`` and ``W`` alone (the ONNX
export outputs ``A``; ``W`` is read from the bundle's own safetensors):

- Grad-CAM: ``relu(sum_k W_ck A_k)`` (the 1/(h*w) factor vanishes in the min-max
  scaling), which is exactly the classic CAM of Zhou et al. 2016;
- HiResCAM: identical to Grad-CAM here (gradient times activation, summed);
- XGrad-CAM, Grad-CAM++ and LayerCAM: their weight formulas with ``g = W_ck/(h*w)``;
- EigenCAM needs only ``A`` (first principal component);
- ScoreCAM is forward-only: each channel of ``A``, upsampled and scaled to [0, 1],
  masks the input; the label's logits on those inputs (batched ONNX forwards),
  softmaxed, weight the channels.

The export checks the identity numerically (``logits == W @ mean(A) + b``) and
records ``cam.exact``; ``tests/packaging/test_onnx_lane.py`` checks every map
against pytorch-grad-cam on the torch path. A model that does not end in pooling
and a linear layer keeps EigenCAM and ScoreCAM only. The ROAD faithfulness score
(the library's imputation on torch tensors) is not computed here: heatmaps carry
``faithfulness=None``. :func:`unavailable_cam_methods` says what a bundle cannot
draw in this process, with the reason, for the UI to grey out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import BundleError, BundleHashMismatchError, InferenceError
from cxr_viewer.core.inference.engine import InferenceEngine
from cxr_viewer.core.inference.results import CancelToken, Heatmap
from cxr_viewer.core.inference.segment import Segmenter
from cxr_viewer.core.models.bundle import (
    LoadedBundle,
    _resolve_bundle_dir,
    read_manifest,
    read_verified_weights,
    sha256_file,
)
from cxr_viewer.core.models.preprocess import preprocess, resize2d, restore_map

if TYPE_CHECKING:
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.models.preprocess import Preprocessing

log = logging.getLogger(__name__)

__all__ = [
    "LANE_CAM_METHODS",
    "LANE_DIR",
    "LANE_FILE",
    "LANE_SCHEMA",
    "LaneBundle",
    "LaneDevice",
    "LaneEngine",
    "LaneMiniLMEncoder",
    "LaneSegmenter",
    "cam_from_features",
    "default_text_dir",
    "load_lane_bundle",
    "read_lane",
    "scorecam_weights",
    "unavailable_cam_methods",
]

LANE_DIR = "lane"
LANE_FILE = "lane.json"
LANE_SCHEMA = 1
#: Heatmap methods the lane computes (closed forms, see the module docstring).
LANE_CAM_METHODS: tuple[str, ...] = (
    "gradcam", "hirescam", "xgradcam", "gradcam++", "layercam", "eigencam", "scorecam",
)  # fmt: skip
#: Methods that work from the feature map alone, for models without a pooling + linear ending.
FEATURE_ONLY_METHODS: tuple[str, ...] = ("eigencam", "scorecam")
TORCH_ONLY_REASON = (
    "This copy of cxr-viewer runs without PyTorch (the small CPU build), so {method} is not available. "
    "Choose GradCAM, HiResCAM, XGradCAM, GradCAM++, LayerCAM, EigenCAM or ScoreCAM, or install the full version."
)
NOT_EXACT_REASON = (
    "Without PyTorch, {method} needs a model that ends in average pooling and a linear layer; "
    "{model!r} does not, so only EigenCAM and ScoreCAM can be drawn."
)
SCORECAM_BATCH = 32
TEXT_DIR_NAME = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class LaneDevice:
    """Stands where a ``torch.device`` would: the lane runs on the CPU only."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


CPU = LaneDevice()


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    n = threads or int(os.environ.get("CXR_VIEWER_THREADS", "0") or 0)
    if n > 0:
        opts.intra_op_num_threads = n
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise BundleError(f"The ONNX model file {path.name} cannot be opened: {exc}", path=path) from exc


def read_lane(bundle_dir: Path) -> dict[str, Any] | None:
    """The ``lane/lane.json`` record of a bundle folder, or None when it has no lane export."""
    p = Path(bundle_dir) / LANE_DIR / LANE_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"The ONNX export record {p} is damaged ({exc}); rebuild the application.", path=p) from exc
    if not isinstance(data, dict) or data.get("schema") != LANE_SCHEMA:
        raise BundleError(f"The ONNX export record {p} is of an unknown version; rebuild the application.", path=p)
    return data


def _check_file(bdir: Path, rec: dict[str, Any], what: str) -> Path:
    name = str(rec.get("file") or "")
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or rel.suffix != ".onnx":
        raise BundleError(f"The ONNX export record of this model names no valid {what} file.", path=bdir)
    path = bdir / LANE_DIR / rel
    if not path.is_file():
        raise BundleError(f"The ONNX file {path.name} of this model is missing; rebuild the application.", path=path)
    if sha256_file(path) != rec.get("sha256"):
        raise BundleHashMismatchError(
            f"The ONNX file {path.name} does not match its recorded checksum: it was changed or damaged. "
            "Reinstall the application.",
            path=path,
        )
    return path


class LaneClassifierNet:
    """ONNX classifier: (N, C, H, W) float32 -> logits (N, L), and the heatmap layer's map."""

    def __init__(self, path: Path, head: tuple[np.ndarray, np.ndarray] | None, cam: dict[str, Any], threads: int | None) -> None:
        self.path = path
        self.session = _session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.head = head
        self.cam_exact = bool(cam.get("exact")) and head is not None
        self.cam_layer = str(cam.get("layer") or "")

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self.session.run(["logits", "features"], {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return logits, feats

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]


class LaneSegmenterNet:
    """ONNX text-conditioned U-Net: one image (1, C, H, W) + N embeddings -> logits (N, 1, H, W)."""

    def __init__(self, path: Path, conditioned: bool, threads: int | None) -> None:
        self.path = path
        self.session = _session(path, threads)
        self.conditioned = conditioned
        self.text_dim = int(next((i.shape[-1] for i in self.session.get_inputs() if i.name == "text"), 0) or 0)

    def __call__(self, image: np.ndarray, text: np.ndarray | None) -> np.ndarray:
        feeds = {"image": np.ascontiguousarray(image, np.float32)}
        if self.conditioned:
            feeds["text"] = np.ascontiguousarray(text, np.float32)
        return self.session.run(["logits"], feeds)[0]


class LaneBundle(LoadedBundle):
    """A :class:`LoadedBundle` whose ``model`` is an ONNX Runtime network (``lane`` holds lane.json)."""

    lane: dict[str, Any]


def _head(data: bytes, keys: dict[str, str], name: str) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load as st_load

    tensors = st_load(data)
    try:
        w = np.asarray(tensors[keys["weight"]], dtype=np.float32)
        b = np.asarray(tensors[keys["bias"]], dtype=np.float32)
    except KeyError as exc:
        raise BundleError(f"The weights of '{name}' lack the classifier head {exc} named by its ONNX export.") from exc
    return w, b


def load_lane_bundle(path_or_zip: str | Path, *, device: Any = None, threads: int | None = None) -> LaneBundle:
    """Validate and hash-check a bundle (as ``load_bundle`` does) and open its ONNX lane export.

    The weights' sha256 must match the manifest, the lane record must have been made
    from those same weights, and every ONNX file must match its recorded sha256.
    """
    if device is not None and str(device).split(":")[0] not in ("cpu", "auto"):
        raise InferenceError(
            "This copy of cxr-viewer runs on the CPU only (it has no PyTorch/CUDA); use --device cpu or auto."
        )
    bdir = _resolve_bundle_dir(Path(path_or_zip))
    manifest = read_manifest(bdir)
    data, digest = read_verified_weights(bdir, manifest)
    lane = read_lane(bdir)
    needs_net = manifest.is_classifier or manifest.task == "text_segmentation"
    model: Any = None
    if needs_net:
        if lane is None:
            raise BundleError(
                f"The model '{manifest.name}' has no ONNX export, and this copy of cxr-viewer runs without "
                "PyTorch. Export it with `python -m cxr_viewer.core.inference.onnx_lane_export BUNDLE` on an "
                "installation with PyTorch, or use the full version of cxr-viewer.",
                path=bdir,
            )
        if lane.get("weights_sha256") != digest:
            raise BundleError(
                f"The ONNX export of '{manifest.name}' was made from other weights; re-export it "
                "(packaging/build.sh does this for the shipped models).",
                path=bdir,
            )
        if manifest.is_classifier:
            cam = dict(lane.get("cam") or {})
            head = _head(data, cam["head"], manifest.name) if cam.get("exact") and cam.get("head") else None
            model = LaneClassifierNet(_check_file(bdir, lane, "classifier"), head, cam, threads)
        else:
            model = LaneSegmenterNet(_check_file(bdir, lane, "segmentation"), bool(lane.get("conditioned", True)), threads)
    del data
    log.info("loaded bundle %s %s (%s) on the ONNX lane", manifest.name, manifest.version, digest[:12])
    bundle = LaneBundle(manifest=manifest, model=model, path=bdir, sha256=digest, device=CPU)
    bundle.lane = lane or {}
    return bundle


# ---------------------------------------------------------------------- heatmaps
def _minmax(a: np.ndarray) -> np.ndarray:
    a = a - np.min(a)
    return (a / (1e-7 + np.max(a))).astype(np.float32)


def _first_component(acts: np.ndarray) -> np.ndarray:
    """Projection of each position's K-vector on the first principal axis (EigenCAM)."""
    k = acts.shape[0]
    x = acts.reshape(k, -1).T.astype(np.float32)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=True)
    return (x @ vt[0]).reshape(acts.shape[1:]).astype(np.float32)


def cam_from_features(
    features: np.ndarray,
    weight: np.ndarray | None,
    index: int,
    method: str,
    size: Sequence[int],
) -> np.ndarray:
    """Network-space heatmap (H, W) in [0, 1] from one image's map ``features`` (K, h, w).

    ``weight`` is the linear head (L, K); ``index`` the label. ``method="weighted"``
    takes ``weight[index]`` as the channel weights themselves (ScoreCAM's, from
    :func:`scorecam_weights`). The map is made at
    feature resolution, clipped at 0, scaled to [0, 1], upsampled bilinearly to
    ``size`` and scaled again (the steps pytorch-grad-cam takes for one layer).
    """
    a = np.nan_to_num(np.asarray(features, dtype=np.float32))
    if a.ndim != 3:
        raise InferenceError(f"Expected a (channels, h, w) feature map, got shape {a.shape}.")
    if method == "eigencam":
        cam = _first_component(a)
    else:
        if weight is None:
            raise InferenceError(f"The {method} heatmap needs the model's linear head, which this export lacks.")
        g = (np.asarray(weight, dtype=np.float32)[index] / float(a.shape[1] * a.shape[2]))[:, None, None]
        if method == "weighted":  # channel weights given directly (ScoreCAM)
            cam = (np.asarray(weight, dtype=np.float32)[index][:, None, None] * a).sum(0)
        elif method in ("gradcam", "hirescam"):
            cam = (g * a).sum(0)
        elif method == "xgradcam":
            s = a.sum(axis=(1, 2), keepdims=True)
            cam = ((g * a / (s + 1e-7)).sum(axis=(1, 2), keepdims=True) * a).sum(0)
        elif method == "gradcam++":
            g2 = g * g
            s = a.sum(axis=(1, 2), keepdims=True)
            aij = g2 / (2 * g2 + s * g2 * g + 1e-6)
            aij = np.where(g != 0, aij, 0.0)
            w = (np.maximum(g, 0) * aij * np.ones_like(a)).sum(axis=(1, 2), keepdims=True)
            cam = (w * a).sum(0)
        elif method == "layercam":
            cam = (np.maximum(g, 0) * a).sum(0)
        else:
            raise InferenceError(TORCH_ONLY_REASON.format(method=method))
    cam = _minmax(np.maximum(cam.astype(np.float32), 0))
    cam = resize2d(cam, size, "bilinear")
    return _minmax(np.maximum(cam, 0))


def _upsample_corners(a: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of (N, h, w) with corner-aligned sampling (``align_corners=True``), float32."""
    f32 = np.float32
    out = a.astype(f32)
    for axis, n_out in ((1, int(size[0])), (2, int(size[1]))):
        n_in = out.shape[axis]
        scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0.0)
        src = scale * np.arange(n_out, dtype=f32)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = (src - i0.astype(f32)).astype(f32)
        shape = [1, 1, 1]
        shape[axis] = n_out
        lam = lam.reshape(shape)
        out = np.take(out, i0, axis=axis) * (f32(1.0) - lam) + np.take(out, i1, axis=axis) * lam
    return out


def scorecam_weights(
    net: "LaneClassifierNet", x: np.ndarray, features: np.ndarray, index: int, *, cancel: CancelToken | None = None
) -> np.ndarray:
    """ScoreCAM channel weights (K,): softmax over the label's logits on channel-masked inputs."""
    size = x.shape[-2:]
    k = features.shape[0]
    scores = np.empty(k, dtype=np.float64)
    for i in range(0, k, SCORECAM_BATCH):
        if cancel is not None:
            cancel.raise_if_cancelled()
        up = _upsample_corners(features[i : i + SCORECAM_BATCH], size)
        flat = up.reshape(up.shape[0], -1)
        lo, hi = flat.min(1)[:, None, None], flat.max(1)[:, None, None]
        up = (up - lo) / (hi - lo + np.float32(1e-8))
        batch = x[0][None] * up[:, None]  # (B, C, H, W)
        scores[i : i + up.shape[0]] = net(batch)[:, index]
    e = np.exp(scores - scores.max())
    return (e / e.sum()).astype(np.float32)


def unavailable_cam_methods(bundle: LoadedBundle | None = None) -> dict[str, str]:
    """Heatmap methods this process cannot draw (for ``bundle``, if given) -> the reason, for a tooltip.

    Empty with torch. Without torch: nothing for a model with an exact pooling + linear
    ending, the gradient methods otherwise.
    """
    from cxr_viewer.core.inference.cam import CAM_METHODS
    from cxr_viewer.core.runtime import torch_available

    if torch_available() and not isinstance(bundle, LaneBundle):
        return {}
    out = {m: TORCH_ONLY_REASON.format(method=m) for m in CAM_METHODS if m not in LANE_CAM_METHODS}
    net = getattr(bundle, "model", None)
    if isinstance(net, LaneClassifierNet) and not net.cam_exact:
        out.update({m: NOT_EXACT_REASON.format(method=m, model=bundle.name)  # type: ignore[union-attr]
                    for m in LANE_CAM_METHODS if m not in FEATURE_ONLY_METHODS})
    return out


# ---------------------------------------------------------------------- engine
class LaneEngine(InferenceEngine):
    """:class:`InferenceEngine` on ONNX Runtime: same results API, no torch, CPU only."""

    def __init__(
        self,
        bundles: Iterable[LoadedBundle] | None = None,
        *,
        device: Any = "auto",
        backend: str = "auto",
        cache_size: int = 64,
        onnx_cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError("backend must be auto, torch or onnx")
        if str(device).split(":")[0] not in ("auto", "cpu"):
            raise InferenceError(
                "This copy of cxr-viewer runs on the CPU only (it has no PyTorch/CUDA); use --device cpu or auto."
            )
        self.device = CPU  # type: ignore[assignment]
        self.threads = int(threads or int(os.environ.get("CXR_VIEWER_THREADS", "0") or 0) or (os.cpu_count() or 1))
        self.backend = "onnx"
        self.onnx_cache_dir = onnx_cache_dir
        self._lock = threading.RLock()
        self._bundles: list[LoadedBundle] = []
        self._runners: dict[str, Any] = {}
        self._user_thresholds: dict[tuple[str, str], float] = {}
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._cam_cache: OrderedDict[tuple, Heatmap] = OrderedDict()
        self._cache_size = cache_size
        self.load_errors: list[tuple[Path, str]] = []
        for b in bundles or []:
            self.add_bundle(b)

    def add_bundle(self, bundle: LoadedBundle) -> None:
        if not isinstance(bundle, LaneBundle):
            raise BundleError(f"The model {bundle.name!r} was loaded for PyTorch; load it with load_lane_bundle.")
        super().add_bundle(bundle)

    def backend_for(self, bundle: LoadedBundle) -> str:
        return "onnx"

    def _runner(self, bundle: LoadedBundle) -> Any:
        return bundle.model

    @staticmethod
    def _zeros(spec: "Preprocessing") -> np.ndarray:  # type: ignore[override]
        return np.zeros((1, spec.channels, *spec.size), dtype=np.float32)

    def _forward(self, bundle: LoadedBundle, batch: Any) -> np.ndarray:  # type: ignore[override]
        return np.asarray(bundle.model(np.asarray(batch, dtype=np.float32)), dtype=np.float64)

    def _load_bundle(self, path: Path, **kwargs: Any) -> LoadedBundle:
        """Bundles load through their verified ONNX exports: no torch here."""
        return load_lane_bundle(path, threads=kwargs.get("threads"))

    def cam(
        self,
        record: "ImageRecord",
        label: str,
        method: str = "gradcam",
        *,
        model: str | None = None,
        faithfulness: bool = False,
        cancel: CancelToken | None = None,
    ) -> Heatmap:
        """Heatmap at the ORIGINAL image size from the exported feature map (see module docstring).

        ``faithfulness`` is accepted for API parity; the ROAD score needs torch, so it stays None.
        """
        from cxr_viewer.core.inference.cam import canonical_method
        from cxr_viewer.core.inference.engine import _scores

        derived = self._derived_for_label(label, model)
        if derived is not None:  # a derived finding's heatmap is its lesion map, no CAM needed
            return self.lesion_map(record, *derived, cancel=cancel)
        key = canonical_method(method)
        if key not in LANE_CAM_METHODS:
            raise InferenceError(TORCH_ONLY_REASON.format(method=method))
        b = self._bundle_for_label(label, model)
        net: LaneClassifierNet = b.model
        if key not in FEATURE_ONLY_METHODS and not net.cam_exact:
            raise InferenceError(NOT_EXACT_REASON.format(method=method, model=b.name))
        idx = b.labels.index(label)
        ckey = (record.content_hash, b.sha256, label, key)
        with self._lock:
            hit = self._cam_cache.get(ckey)
            if hit is not None:
                self._cam_cache.move_to_end(ckey)
                return hit
        t0 = time.perf_counter()
        x = preprocess(record, b.preprocessing)[None]
        if cancel is not None:
            cancel.raise_if_cancelled()
        logits, feats = net.forward(x)
        score = float(_scores(np.asarray(logits[0], dtype=np.float64), b.task)[idx])
        if key == "scorecam":
            weight, widx, key_for_map = scorecam_weights(net, x, feats[0], idx, cancel=cancel)[None], 0, "weighted"
        else:
            weight, widx, key_for_map = (net.head[0] if net.head is not None else None), idx, key
        net_map = cam_from_features(feats[0], weight, widx, key_for_map, b.preprocessing.size)
        values = restore_map(net_map, b.preprocessing, record.shape)
        hi = float(values.max()) if values.size else 0.0
        if hi > 0:
            values = values / hi
        values = np.clip(values, 0.0, 1.0).astype(np.float32)
        extra = {"network_map": net_map} if "network_map" in _HEATMAP_FIELDS else {}
        heat = Heatmap(
            values=values,
            label=label,
            method=key,
            model=b.name,
            target_index=idx,
            target_layer=net.cam_layer,
            faithfulness=None,
            faithfulness_method=NO_FAITHFULNESS,
            score=score,
            timing_ms=(time.perf_counter() - t0) * 1e3,
            **extra,
        )
        with self._lock:
            self._cam_cache[ckey] = heat
            while len(self._cam_cache) > 4:
                self._cam_cache.popitem(last=False)
        return heat


    def faithfulness(self, record: "ImageRecord", heatmap: Heatmap) -> Heatmap:
        """The ROAD score needs torch: the heatmap comes back as it is (``faithfulness`` None)."""
        return heatmap


_HEATMAP_FIELDS = frozenset(f.name for f in dataclasses.fields(Heatmap))
NO_FAITHFULNESS = "not available without PyTorch"


# ---------------------------------------------------------------------- segmentation
class _Probs(np.ndarray):
    """Probabilities (N, H, W) that also answer ``expand`` like the torch tensor they replace."""

    def expand(self, *shape: int) -> np.ndarray:
        return np.broadcast_to(np.asarray(self), tuple(int(s) for s in shape))


class LaneSegmenter(Segmenter):
    """:class:`Segmenter` on the ONNX export: same masks, no torch."""

    def _runs(self, bundle: LoadedBundle) -> bool:
        return isinstance(bundle.model, LaneSegmenterNet)

    def _can_use(self, text_encoder: Any) -> bool:
        return not _needs_torch(text_encoder)

    def _default_text_encoder(self, spec: dict[str, Any]) -> Any:
        return lane_text_encoder(spec)

    def image_tensor(self, record: "ImageRecord | np.ndarray") -> np.ndarray:
        return preprocess(record, self.spec)[None]

    def probabilities(self, x: Any, emb: np.ndarray, *, cancel: Any = None) -> np.ndarray:
        from cxr_viewer.core.errors import AnalysisCancelledError
        from cxr_viewer.core.inference.segment import _cancelled

        n = emb.shape[0] if self.conditioned else 1
        out = []
        with self.bundle.lock:
            for i in range(0, n, self.max_batch):
                if _cancelled(cancel):
                    raise AnalysisCancelledError("Segmentation was cancelled.")
                t = emb[i : i + self.max_batch] if self.conditioned else None
                logits = self.model(x, t)[:, 0].astype(np.float64)
                out.append((1.0 / (1.0 + np.exp(-logits))).astype(np.float32))
        return np.concatenate(out, 0).view(_Probs)


# ---------------------------------------------------------------------- text encoder
def default_text_dir() -> Path:
    """Where the application ships the MiniLM ONNX export and tokenizer."""
    from cxr_viewer.core.paths import resources_dir

    return resources_dir() / "text" / TEXT_DIR_NAME


def _needs_torch(encoder: Any) -> bool:
    from cxr_viewer.core.models.text import CachedTextEncoder, _HFEncoder
    from cxr_viewer.core.runtime import torch_available

    inner = encoder.encoder if isinstance(encoder, CachedTextEncoder) else encoder
    return isinstance(inner, _HFEncoder) and not torch_available()


class LaneMiniLMEncoder:
    """all-MiniLM-L6-v2 on ONNX Runtime with the ``tokenizers`` package: mean pooling, unit norm."""

    dim = 384
    batch_size = 64

    def __init__(self, folder: str | Path | None = None, threads: int | None = None) -> None:
        from cxr_viewer.core.models.text import MINILM_NAME, TextEncoderError

        self.name = MINILM_NAME
        self.folder = Path(folder) if folder else default_text_dir()
        rec_path = self.folder / LANE_FILE
        if not rec_path.is_file():
            raise TextEncoderError(
                f"The report text encoder (all-MiniLM-L6-v2, ONNX) is missing from {self.folder}; "
                "reinstall cxr-viewer."
            )
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        self.max_length = int(rec.get("max_length", 256))
        onnx_path = self.folder / str(rec.get("file", "model.onnx"))
        tok_path = self.folder / str(rec.get("tokenizer", "tokenizer.json"))
        for p, key in ((onnx_path, "sha256"), (tok_path, "tokenizer_sha256")):
            if not p.is_file() or sha256_file(p) != rec.get(key):
                raise TextEncoderError(f"The text encoder file {p.name} is missing or damaged; reinstall cxr-viewer.")
        self._onnx_path = onnx_path
        self._tok_path = tok_path
        self._threads = threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    def _ensure(self) -> None:
        if self._session is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self._tok_path))
            tok.enable_truncation(max_length=self.max_length)
            tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
            self._tokenizer = tok
            self._session = _session(self._onnx_path, self._threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with self._lock:
            self._ensure()
            names = {i.name for i in self._session.get_inputs()}
            for i in range(0, len(texts), self.batch_size):
                enc = self._tokenizer.encode_batch(texts[i : i + self.batch_size])
                ids = np.asarray([e.ids for e in enc], dtype=np.int64)
                mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
                feeds = {"input_ids": ids, "attention_mask": mask}
                if "token_type_ids" in names:
                    feeds["token_type_ids"] = np.asarray([e.type_ids for e in enc], dtype=np.int64)
                hidden = self._session.run(["last_hidden_state"], feeds)[0].astype(np.float32)
                m = mask[..., None].astype(np.float32)
                emb = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
                emb /= np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
                out.append(emb.astype(np.float32))
        return np.concatenate(out, 0)


_TEXT_ENCODERS: dict[str, Any] = {}
_TEXT_LOCK = threading.Lock()


def lane_text_encoder(spec: dict[str, Any] | None, *, folder: str | Path | None = None) -> Any:
    """The cached lane encoder for a manifest's ``text_encoder`` block (MiniLM only)."""
    from cxr_viewer.core.models.text import MINILM_NAME, CachedTextEncoder, TextEncoderError

    spec = dict(spec or {"name": MINILM_NAME, "dim": 384})
    name = str(spec.get("name") or MINILM_NAME).lower()
    if name not in (MINILM_NAME.lower(), "minilm", "sentence-transformers/all-minilm-l6-v2"):
        raise TextEncoderError(
            f"The model needs the text encoder {spec.get('name')!r}, which only the full (PyTorch) version "
            "of cxr-viewer can run."
        )
    key = str(Path(folder) if folder else default_text_dir())
    with _TEXT_LOCK:
        enc = _TEXT_ENCODERS.get(key)
        if enc is None:
            enc = _TEXT_ENCODERS[key] = LaneMiniLMEncoder(folder)
    want = spec.get("dim")
    if want is not None and int(want) != enc.dim:
        raise TextEncoderError(f"The model expects {want}-value text embeddings but all-MiniLM-L6-v2 gives {enc.dim}.")
    return CachedTextEncoder(enc)

