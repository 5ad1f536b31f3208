"""The inference engine: bundles in, findings / heatmaps / QC flags out.

Designed for a Qt worker thread: every public method is synchronous and
thread-safe (one lock per model, because CAM hooks mutate it; ONNX Runtime
sessions are thread-safe on their own), and long calls take a
:class:`~cxr_viewer.core.inference.results.CancelToken` checked between stages.
Results are cached by (image content hash, weights sha256, thresholds).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import (
    AnalysisCancelledError,
    BundleError,
    CXRError,
    InferenceError,
    UnknownLabelError,
)
from cxr_viewer.core.inference.population import outside_population
from cxr_viewer.core.inference.qc import check_quality
from cxr_viewer.core.inference.results import AnalysisResult, CancelToken, Finding, Heatmap, QCFlag
from cxr_viewer.core.io.record import ImageRecord

if TYPE_CHECKING:
    import torch

    from cxr_viewer.core.inference.onnx_backend import OnnxRunner
    from cxr_viewer.core.models.bundle import LoadedBundle
    from cxr_viewer.core.models.preprocess import Preprocessing

log = logging.getLogger(__name__)

__all__ = ["InferenceEngine", "configure_threads", "select_device"]

NO_MODELS_WARNING = (
    "No models found: only the image checks were run. Install model bundles in the models folder "
    "or pass --models DIR."
)


def select_device(preference: "str | torch.device" = "auto") -> "torch.device":
    """CUDA, then Apple MPS, then CPU for ``auto``; an explicit choice that is unavailable is an error."""
    import torch

    pref = str(preference).lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError("A CUDA GPU was requested but none is available; use --device cpu or auto.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InferenceError("Apple MPS was requested but is not available; use --device cpu or auto.")
    return dev


def configure_threads(threads: int | None = None) -> int:
    """Intra-op CPU threads for torch: ``threads``, else ``CXR_VIEWER_THREADS``, else torch's default.

    torch defaults to the number of physical cores, which suits a desktop; the
    variable lets a shared server keep the viewer to a few cores.
    """
    import torch

    n = threads or int(os.environ.get("CXR_VIEWER_THREADS", "0") or 0)
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


#: How derived findings name their heatmap: the lesion map itself, not a class-activation map.
LESION_MAP_METHOD = "lesion map"


def derived_specs(bundle: "LoadedBundle") -> list[dict[str, Any]]:
    """A ``text_segmentation`` bundle's ``derived_findings`` (see docs/bundle-format.md), checked.

    Each spec names a label, the prompts whose pixel-wise maximum is the lesion map, and the
    threshold the image score (the map's maximum) is judged against. Other tasks have none.
    """
    if bundle.task != "text_segmentation":
        return []
    raw = bundle.manifest.extra.get("derived_findings") or []
    where = f"The model {bundle.name!r} lists derived findings"
    if not isinstance(raw, list):
        raise BundleError(f"{where} that are not a list; fix 'derived_findings' in its manifest.")
    out: list[dict[str, Any]] = []
    for d in raw:
        ok = (
            isinstance(d, dict)
            and isinstance(d.get("label"), str)
            and d["label"]
            and isinstance(d.get("prompts"), list)
            and d["prompts"]
            and all(isinstance(p, str) and p.strip() for p in d["prompts"])
            and d.get("score", "max") == "max"
            and isinstance((d.get("threshold") or {}).get("value"), (int, float))
            and 0.0 <= float(d["threshold"]["value"]) <= 1.0
        )
        if not ok:
            raise BundleError(
                f"{where} with a broken entry: each needs a label, a list of prompts, score 'max' "
                "and a threshold value between 0 and 1."
            )
        out.append(d)
    return out


def _scores(logits: np.ndarray, task: str) -> np.ndarray:
    """Logits (L,) -> probabilities: softmax across labels for multiclass, else independent sigmoids."""
    z = logits.astype(np.float64)
    if task == "multiclass":
        e = np.exp(z - z.max())
        return e / e.sum()
    return 1.0 / (1.0 + np.exp(-z))


class InferenceEngine:
    """Runs every classifier bundle on an image; makes heatmaps on request.

    ``backend``: ``auto`` uses a verified ONNX Runtime export on CPU (faster) and
    torch on GPU; ``torch`` or ``onnx`` force one (``onnx`` still falls back to
    torch, with a log warning, if the export cannot be verified).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "InferenceEngine":
        # Without torch (the small CPU app bundle) the ONNX lane stands in: same API, no torch import.
        if cls is InferenceEngine:
            from cxr_viewer.core.runtime import torch_available

            if not torch_available():
                from cxr_viewer.core.inference.onnx_lane import LaneEngine

                cls = LaneEngine
        return super().__new__(cls)

    def __init__(
        self,
        bundles: Iterable["LoadedBundle"] | None = None,
        *,
        device: "str | torch.device" = "auto",
        backend: str = "auto",
        cache_size: int = 64,
        onnx_cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError("backend must be auto, torch or onnx")
        self.device = select_device(device)
        self.threads = configure_threads(threads)
        self.backend = backend
        self.onnx_cache_dir = onnx_cache_dir
        self._lock = threading.RLock()
        self._bundles: list[LoadedBundle] = []
        self._runners: dict[str, OnnxRunner | None] = {}  # sha -> runner (None: torch)
        self._user_thresholds: dict[tuple[str, str], float] = {}
        self._cache: OrderedDict[tuple, AnalysisResult] = OrderedDict()
        self._cam_cache: OrderedDict[tuple, Heatmap] = OrderedDict()
        self._cache_size = cache_size
        self.load_errors: list[tuple[Path, str]] = []
        for b in bundles or []:
            self.add_bundle(b)

    # ------------------------------------------------------------------ bundles
    def _load_bundle(self, path: Path, **kwargs: Any) -> "LoadedBundle":
        """How :meth:`from_dirs` loads one bundle (the torch-free engine overrides it)."""
        from cxr_viewer.core.models.bundle import load_bundle

        return load_bundle(path, device=self.device)

    @classmethod
    def from_dirs(
        cls, dirs: Sequence[str | Path] | None = None, *, device: "str | torch.device" = "auto", **kwargs: Any
    ) -> "InferenceEngine":
        """Load every enabled bundle found in ``dirs`` (default: app + user model folders).

        Bundles that fail to load are skipped and listed in ``load_errors`` with the reason.
        """
        from cxr_viewer.core.models.bundle import find_bundles

        engine = cls(None, device=device, **kwargs)
        for info in find_bundles(dirs):
            if not info.ok:
                engine.load_errors.append((info.path, info.error or "invalid bundle"))
                continue
            if not info.enabled:
                continue
            try:
                engine.add_bundle(engine._load_bundle(info.path, **kwargs))
            except CXRError as exc:
                log.warning("skipping model bundle %s: %s", info.path.name, exc.message)
                engine.load_errors.append((info.path, exc.message))
        return engine

    def add_bundle(self, bundle: "LoadedBundle") -> None:
        with self._lock:
            if any(b.sha256 == bundle.sha256 for b in self._bundles):
                return
            if any(b.name == bundle.name for b in self._bundles):
                raise BundleError(f"Two loaded models are both named {bundle.name!r}; remove one of them.")
            derived_specs(bundle)  # a broken derived_findings block fails here, by name
            if bundle.device != self.device:
                bundle.model.to(self.device)
                bundle.device = self.device
            self._bundles.append(bundle)
            self._cache.clear()

    def remove_bundle(self, name: str) -> None:
        with self._lock:
            self._bundles = [b for b in self._bundles if b.name != name]
            self._cache.clear()
            self._cam_cache.clear()

    @property
    def bundles(self) -> list["LoadedBundle"]:
        with self._lock:
            return list(self._bundles)

    @property
    def classifiers(self) -> list["LoadedBundle"]:
        return [b for b in self.bundles if b.manifest.is_classifier]

    @property
    def derived_bundles(self) -> list["LoadedBundle"]:
        """Segmentation bundles that declare derived findings (scored by :meth:`analyze`)."""
        return [b for b in self.bundles if derived_specs(b)]

    def _segmenter(self, bundle: "LoadedBundle") -> Any:
        """One shared :class:`Segmenter` per bundle (its text embeddings are cached inside)."""
        from cxr_viewer.core.inference.segment import Segmenter

        with self._lock:
            # created on first use: the torch-free LaneEngine builds its own state in its own __init__
            cache: dict[str, Any] = self.__dict__.setdefault("_segmenters", {})
            seg = cache.get(bundle.sha256)
            if seg is None:
                seg = cache[bundle.sha256] = Segmenter(bundle)
            return seg

    def lesion_map(
        self, record: ImageRecord, bundle: "LoadedBundle", spec: dict[str, Any], *, cancel: CancelToken | None = None
    ) -> Heatmap:
        """The derived finding's map: pixel-wise max of the prompts' masks, at the original size; cached."""
        label = str(spec["label"])
        ckey = (record.content_hash, bundle.sha256, label, LESION_MAP_METHOD)
        with self._lock:
            hit = self._cam_cache.get(ckey)
            if hit is not None:
                self._cam_cache.move_to_end(ckey)
                return hit
        t0 = time.perf_counter()
        masks = self._segmenter(bundle).segment(record, list(spec["prompts"]), cancel=cancel)
        values = np.maximum.reduce([m.prob for m in masks]).astype(np.float32, copy=False)
        hit = Heatmap(
            values=values,
            label=label,
            method=LESION_MAP_METHOD,
            model=bundle.name,
            target_index=-1,
            target_layer="segmenter output: " + " / ".join(spec["prompts"]),
            faithfulness=None,
            faithfulness_method="not applicable: the map is the segmenter's output, not an explanation",
            score=float(values.max()) if values.size else 0.0,
            timing_ms=(time.perf_counter() - t0) * 1e3,
        )
        with self._lock:
            self._cam_cache[ckey] = hit
            while len(self._cam_cache) > 4:
                self._cam_cache.popitem(last=False)
        return hit

    def bundles_for_task(self, task: str) -> list["LoadedBundle"]:
        """E.g. ``text_segmentation`` bundles for the segmentation step."""
        return [b for b in self.bundles if b.task == task]

    def bundle(self, name: str) -> "LoadedBundle":
        for b in self.bundles:
            if b.name == name:
                return b
        raise InferenceError(f"No loaded model is named {name!r}.")

    # ------------------------------------------------------------------ thresholds
    def threshold(self, bundle: "LoadedBundle", label: str) -> tuple[float, str]:
        """The threshold in force for ``label``: the user's if set, else the bundle's."""
        user = self._user_thresholds.get((bundle.name, label))
        if user is not None:
            return user, "user"
        for spec in derived_specs(bundle):
            if spec["label"] == label:
                return float(spec["threshold"]["value"]), str(spec["threshold"].get("method") or "default")
        t = bundle.manifest.thresholds.get(label) or {}
        return bundle.manifest.threshold(label), str(t.get("method") or "default")

    def set_threshold(self, model: str, label: str, value: float | None) -> None:
        """Override (or with ``None`` restore) a label's operating threshold."""
        b = self.bundle(model)
        if label not in b.labels and label not in {d["label"] for d in derived_specs(b)}:
            raise UnknownLabelError(f"Model {model!r} has no label {label!r}.")
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise InferenceError("A threshold must lie between 0 and 1.")
        with self._lock:
            if value is None:
                self._user_thresholds.pop((model, label), None)
            else:
                self._user_thresholds[(model, label)] = float(value)

    # ------------------------------------------------------------------ backends
    def backend_for(self, bundle: "LoadedBundle") -> str:
        return "onnx" if self._runner(bundle) is not None else "torch"

    def _runner(self, bundle: "LoadedBundle") -> "OnnxRunner | None":
        if self.backend == "torch" or self.device.type != "cpu":
            return None
        with bundle.lock:
            if bundle.sha256 not in self._runners:
                from cxr_viewer.core.inference.onnx_backend import onnx_runner_for

                self._runners[bundle.sha256] = onnx_runner_for(
                    bundle, cache_dir=self.onnx_cache_dir, threads=self.threads
                )
            return self._runners[bundle.sha256]

    def warmup(self, cancel: CancelToken | None = None) -> None:
        """Prepare backends (ONNX export/verification) and run one forward per model."""
        for b in self.classifiers:
            if cancel is not None:
                cancel.raise_if_cancelled()
            self._forward(b, self._zeros(b.preprocessing))

    @staticmethod
    def _zeros(spec: "Preprocessing") -> "torch.Tensor":
        import torch

        return torch.zeros(1, spec.channels, *spec.size)

    def _forward(self, bundle: "LoadedBundle", batch: "torch.Tensor") -> np.ndarray:
        """Logits (N, L) as float64 numpy, via ONNX or torch."""
        import torch

        runner = self._runner(bundle)
        if runner is not None:
            return np.asarray(runner(batch.numpy()), dtype=np.float64)
        with bundle.lock, torch.inference_mode():
            out = bundle.model(batch.to(self.device, non_blocking=True))
            return out.float().cpu().numpy().astype(np.float64)

    # ------------------------------------------------------------------ analysis
    def _cache_key(self, record: ImageRecord, bundles: Sequence["LoadedBundle"]) -> tuple:
        thr = tuple(sorted((k, v) for k, v in self._user_thresholds.items()))
        meta = record.metadata or {}
        header = tuple(str(meta.get(k)) for k in ("modality", "body_part", "view_position", "patient_age_years", "frames"))
        return (record.content_hash, header, record.default_window, tuple(b.sha256 for b in bundles), thr)

    def analyze(
        self, record: ImageRecord, *, cancel: CancelToken | None = None, models: Sequence[str] | None = None
    ) -> AnalysisResult:
        """Findings from every classifier (or those named in ``models``) plus QC flags.

        Thread-safe; raises AnalysisCancelledError if ``cancel`` fires between stages.
        """
        import torch

        from cxr_viewer.core.models.preprocess import preprocess

        t_all = time.perf_counter()
        bundles = self.classifiers
        derived = self.derived_bundles
        if models is not None:
            bundles = [b for b in bundles if b.name in set(models)]
            derived = [b for b in derived if b.name in set(models)]
        key = self._cache_key(record, [*bundles, *derived])
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return replace(hit, cached=True)
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        windowed = record.model_pixels()  # computed once: QC and every "default"-window model share it
        qc: list[QCFlag] = check_quality(record, windowed)
        timing["qc"] = (time.perf_counter() - t0) * 1e3
        findings: list[Finding] = []
        backends: dict[str, str] = {}
        tensors: dict[Preprocessing, torch.Tensor] = {}
        t_pre = 0.0
        for b in bundles:
            if cancel is not None:
                cancel.raise_if_cancelled()
            spec = b.preprocessing
            if spec not in tensors:  # models sharing a preprocessing share the tensor
                t0 = time.perf_counter()
                tensors[spec] = torch.from_numpy(preprocess(windowed if spec.window == "default" else record, spec)[None])
                t_pre += time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                logits = self._forward(b, tensors[spec])[0]
            except CXRError:
                raise
            except Exception as exc:  # noqa: BLE001 - report which model failed, in words
                log.exception("model %s failed", b.name)
                raise InferenceError(f"Model {b.name!r} failed on this image: {exc}") from exc
            timing[f"inference:{b.name}"] = (time.perf_counter() - t0) * 1e3
            backends[b.name] = self.backend_for(b)
            if logits.shape[-1] != len(b.labels):
                raise InferenceError(f"Model {b.name!r} returned {logits.shape[-1]} scores for {len(b.labels)} labels.")
            probs = _scores(logits, b.task)
            outside = outside_population(record.metadata, qc, b.manifest.extra.get("population"))
            for label, p in zip(b.labels, probs):
                thr, method = self.threshold(b, label)
                validated = (b.manifest.thresholds.get(label) or {}).get("validated")
                findings.append(Finding(label, float(p), thr, b.name, b.version, method, b.manifest.trained,
                                        validated=None if validated is None else bool(validated), outside=outside))  # fmt: skip
        derived_warnings: list[str] = []
        for b in derived:
            for spec in derived_specs(b):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                t0 = time.perf_counter()
                try:
                    heat = self.lesion_map(record, b, spec, cancel=cancel)
                except AnalysisCancelledError:
                    raise
                except CXRError as exc:  # e.g. no text encoder here: the classifiers' findings still stand
                    log.warning("derived finding %r of %s skipped: %s", spec["label"], b.name, exc.message)
                    derived_warnings.append(f"{spec['label']} could not be computed: {exc.message}")
                    continue
                timing[f"inference:{b.name}"] = timing.get(f"inference:{b.name}", 0.0) + (time.perf_counter() - t0) * 1e3
                backends[b.name] = "onnx" if getattr(b, "lane", None) is not None else "torch"
                thr, method = self.threshold(b, spec["label"])
                findings.append(
                    Finding(
                        spec["label"], float(heat.score or 0.0), thr, b.name, b.version, method, b.manifest.trained,
                        note=str(spec.get("note") or ""), validated=bool(spec.get("validated", False)),
                        outside=outside_population(record.metadata, qc, b.manifest.extra.get("population")),
                    )
                )
        bundles = [*bundles, *derived]
        timing["preprocess"] = t_pre * 1e3
        timing["total"] = (time.perf_counter() - t_all) * 1e3
        warnings: list[str] = list(derived_warnings)
        if not bundles:
            warnings.append(NO_MODELS_WARNING)
        elif any(not b.manifest.trained for b in bundles):
            warnings.append("Some models are UNTRAINED (random weights): their scores mean nothing.")
        result = AnalysisResult(
            content_hash=record.content_hash,
            findings=tuple(findings),
            qc=tuple(qc),
            models=tuple(b.describe() for b in bundles),
            timing_ms=timing,
            warnings=tuple(warnings),
            backend=backends,
        )
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    # ------------------------------------------------------------------ heatmaps
    def _bundle_for_label(self, label: str, model: str | None) -> "LoadedBundle":
        candidates = self.classifiers if model is None else [self.bundle(model)]
        for b in candidates:
            if label in b.labels:
                return b
        known = sorted({lab for b in candidates for lab in b.labels})
        where = f"model {model!r}" if model else "the loaded models"
        raise UnknownLabelError(
            f"No heatmap for {label!r}: {where} do not predict it. Available: {', '.join(known) or 'none'}."
        )

    def _derived_for_label(self, label: str, model: str | None) -> "tuple[LoadedBundle, dict[str, Any]] | None":
        """The segmentation bundle and spec of a derived finding named ``label``, if any."""
        for b in self.derived_bundles:
            if model is not None and b.name != model:
                continue
            for spec in derived_specs(b):
                if spec["label"] == label:
                    return b, spec
        return None

    def cam(
        self,
        record: ImageRecord,
        label: str,
        method: str = "gradcam",
        *,
        model: str | None = None,
        faithfulness: bool = False,
        cancel: CancelToken | None = None,
    ) -> Heatmap:
        """Heatmap for ``label`` at the ORIGINAL image size (float32 HxW in [0, 1]).

        Runs on torch (gradients), serialised with other uses of the same model.
        ``faithfulness=True`` adds the ROAD score now; a UI can instead show the map
        first and call :meth:`faithfulness` afterwards (it costs seconds on CPU).
        """
        import torch

        from cxr_viewer.core.inference.cam import canonical_method, compute_cam
        from cxr_viewer.core.models.preprocess import preprocess, restore_map

        derived = self._derived_for_label(label, model)
        if derived is not None:
            return self.lesion_map(record, *derived, cancel=cancel)
        key_method = canonical_method(method)
        b = self._bundle_for_label(label, model)
        idx = b.labels.index(label)
        ckey = (record.content_hash, b.sha256, label, key_method)
        with self._lock:
            hit = self._cam_cache.get(ckey)
        if hit is None:
            layers = b.manifest.cam_layers
            if not layers:
                cam_layer = getattr(b.model, "cam_layer_name", None)
                if cam_layer is None:
                    raise InferenceError(f"Model {b.name!r} names no heatmap layer in its bundle.")
                layers = [cam_layer()]
            t0 = time.perf_counter()
            x = torch.from_numpy(preprocess(record, b.preprocessing)[None]).to(self.device)
            if cancel is not None:
                cancel.raise_if_cancelled()
            with b.lock:
                net_map, logits = compute_cam(b.model, x, idx, method=key_method, target_layers=layers)
            score = float(_scores(logits, b.task)[idx])
            values = restore_map(net_map, b.preprocessing, record.shape)
            hi = float(values.max()) if values.size else 0.0
            if hi > 0:  # the peak may have sat in letterbox padding: rescale what is visible
                values /= hi
            np.clip(values, 0.0, 1.0, out=values)
            hit = Heatmap(
                values=values,
                label=label,
                method=key_method,
                model=b.name,
                target_index=idx,
                target_layer=",".join(layers),
                score=score,
                timing_ms=(time.perf_counter() - t0) * 1e3,
                network_map=net_map,
            )
            with self._lock:
                self._cam_cache[ckey] = hit
                while len(self._cam_cache) > 4:
                    self._cam_cache.popitem(last=False)
        if faithfulness and hit.faithfulness is None:
            if cancel is not None:
                cancel.raise_if_cancelled()
            hit = hit.with_faithfulness(*self._road(record, hit))
            with self._lock:
                self._cam_cache[ckey] = hit
        return hit

    def faithfulness(self, record: ImageRecord, heatmap: Heatmap) -> Heatmap:
        """The same heatmap with its ROAD faithfulness score filled in (see ``inference.cam``)."""
        if heatmap.faithfulness is not None or heatmap.method == LESION_MAP_METHOD:
            return heatmap
        return heatmap.with_faithfulness(*self._road(record, heatmap))

    def _road(self, record: ImageRecord, heatmap: Heatmap) -> tuple[float, str]:
        import torch

        from cxr_viewer.core.inference.cam import DEFAULT_ROAD_PERCENTILES, road_faithfulness
        from cxr_viewer.core.models.preprocess import preprocess

        if heatmap.network_map is None:
            raise InferenceError("This heatmap carries no network-space map to score.")
        b = self.bundle(heatmap.model)
        x = torch.from_numpy(preprocess(record, b.preprocessing)[None]).to(self.device)
        with b.lock:
            value = road_faithfulness(b.model, x, heatmap.network_map, heatmap.target_index,
                                      multiclass=b.task == "multiclass")
        return value, f"ROAD combined, percentiles {list(DEFAULT_ROAD_PERCENTILES)}"

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cam_cache.clear()
