"""The inference engine: bundles in, findings / heatmaps / QC flags out. One class over two backends.

Each bundle gets one backend, chosen once (:meth:`InferenceEngine.backend_for`) by
:mod:`cxr_viewer.core.inference.backends.select`: ONNX Runtime on a CPU for a bundle that
carries a recorded export (or, with ``backend="onnx"``, one regenerated from its verified
weights), torch on a GPU or when asked; without torch installed, ONNX Runtime only.
Everything else is written once, above the backend: the model input (computed once per
image and preprocessing spec, shared by scores, CAM and ROAD), the caches, thresholds,
derived findings, QC and ``restore_map``.

What is cached is what is expensive -- the model outputs, keyed by everything the
network input depends on (pixels, the default window, the spec) and by what ran. QC
flags and findings are recomputed from the record's header and the current thresholds
on every call, so two files with the same pixels and different headers never share them.

Designed for a Qt worker thread: every public method is synchronous and thread-safe
(one lock per model, because CAM hooks mutate it; ONNX Runtime sessions are thread-safe
on their own), and long calls take a :class:`~cxr_viewer.core.inference.results.CancelToken`
checked between stages.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
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
from cxr_viewer.core.inference.backends.base import ClassifierBackend
from cxr_viewer.core.inference.inputs import ModelInputs, input_key
from cxr_viewer.core.inference.lung_field import DILATION as LUNG_DILATION
from cxr_viewer.core.inference.lung_field import UNCONSTRAINED, LungField
from cxr_viewer.core.inference.population import film_age, finding_outside, outside_population
from cxr_viewer.core.inference.qc import check_quality
from cxr_viewer.core.inference.results import AnalysisResult, CancelToken, Finding, Heatmap, QCFlag
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.runtime import configure_threads, torch_available

if TYPE_CHECKING:
    import torch

    from cxr_viewer.core.inference.segment import Segmenter
    from cxr_viewer.core.models.blocks import DerivedFinding
    from cxr_viewer.core.models.bundle import LoadedBundle

log = logging.getLogger(__name__)

__all__ = ["InferenceEngine", "configure_threads", "select_device"]

TORCH_BACKEND_ONLY = (
    "The torch backend was requested but PyTorch is not installed: install the torch extra "
    "(python -m pip install -r requirements/dev.txt, or -e \".[torch]\") or use --backend onnx (or auto)."
)
CPU_ONLY = "This copy of cxr-viewer runs on the CPU only (it has no PyTorch/CUDA); use --device cpu or auto."
NO_FAITHFULNESS = "not available without PyTorch"
#: Heatmaps (and lesion maps) kept: each is a float32 map at the image's full size.
MAP_CACHE = 4

NO_MODELS_WARNING = (
    "No models found: only the image checks were run. Install model bundles in the models folder "
    "or pass --models DIR."
)


def _no_gpu_here() -> bool:
    """True on Linux when no NVIDIA or AMD GPU driver is present: ``auto`` is then the CPU, known without torch."""
    if not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd"))


def select_device(preference: "str | torch.device" = "auto") -> "torch.device | str":
    """CUDA, then Apple MPS, then CPU for ``auto``; an explicit choice that is unavailable is an error.

    ``auto`` on a Linux machine with no GPU driver is ``"cpu"`` without importing torch (seconds at start-up).
    """
    pref = str(preference).lower()
    if pref in ("auto", "cpu") and (pref == "cpu" or _no_gpu_here()) and "torch" not in sys.modules:
        return "cpu"
    import torch

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


#: How derived findings name their heatmap: the lesion map itself, not a class-activation map.
LESION_MAP_METHOD = "lesion map"


def derived_specs(bundle: "LoadedBundle") -> list["DerivedFinding"]:
    """A ``text_segmentation`` bundle's ``derived_findings`` (see docs/bundle-format.md); other tasks have none.

    Each names a label, the prompts whose pixel-wise maximum is the lesion map, and the threshold
    the image score (the map's maximum) is judged against; its ``role`` says whether it is a
    finding or a research overlay. The manifest checked every entry when it was read.
    """
    return bundle.manifest.derived(None)


def finding_specs(bundle: "LoadedBundle") -> list["DerivedFinding"]:
    """Derived findings that are findings: scored by :meth:`InferenceEngine.analyze`, shown everywhere."""
    return bundle.manifest.derived("finding")


def overlay_specs(bundle: "LoadedBundle") -> list["DerivedFinding"]:
    """Derived findings that are research overlays: a map drawn on request, never a finding."""
    return bundle.manifest.derived("research_overlay")


def wants_features(bundle: "LoadedBundle") -> bool:
    """Whether the bundle's population block reads its pooled features (fitted OOD statistics or an age head)."""
    pop = bundle.manifest.population
    return pop is not None and pop.wants_features


def model_warnings(used: Sequence["LoadedBundle"]) -> tuple[str, ...]:
    """What every result scored by ``used`` warns about: no model at all, or an untrained one."""
    if not used:
        return (NO_MODELS_WARNING,)
    if any(not b.manifest.trained for b in used):
        return ("Some models are UNTRAINED (random weights): their scores mean nothing.",)
    return ()


def _scores(logits: np.ndarray, task: str) -> np.ndarray:
    """Logits (L,) -> probabilities: softmax across labels for multiclass, else independent sigmoids."""
    z = logits.astype(np.float64)
    if task == "multiclass":
        e = np.exp(z - z.max())
        return e / e.sum()
    return 1.0 / (1.0 + np.exp(-z))


class InferenceEngine:
    """Runs every classifier bundle on an image; makes heatmaps and lesion maps on request.

    ``backend``: ``auto`` runs ONNX Runtime on a CPU when the bundle carries a verified
    export, torch otherwise and on a GPU; ``torch`` or ``onnx`` force one (``onnx``
    regenerates an export when the bundle has none, and still falls back to torch, with a
    log warning, if none can be verified). Without torch only ``onnx`` exists.
    """

    def __init__(
        self,
        bundles: Iterable["LoadedBundle"] | None = None,
        *,
        device: "str | torch.device" = "auto",
        backend: str = "auto",
        cache_size: int = 64,
        threads: int | None = None,
    ) -> None:
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError("backend must be auto, torch or onnx")
        if torch_available():
            self.device: Any = select_device(device)
        else:
            if str(device).split(":")[0] not in ("auto", "cpu"):
                raise InferenceError(CPU_ONLY)
            if backend == "torch":
                raise InferenceError(TORCH_BACKEND_ONLY)
            self.device = "cpu"
        self.threads = configure_threads(threads)
        self.backend = backend
        # Heatmaps of lung findings are constrained to the lung field when a segmenter can draw it
        # (see inference.lung_field); off only to measure what the constraint changes.
        self.lung_constraint = True
        self.lung_dilation = LUNG_DILATION
        self._lock = threading.RLock()
        self._bundles: list[LoadedBundle] = []
        self._backends: dict[str, ClassifierBackend] = {}  # weights sha -> the backend chosen once
        self._torch: dict[str, ClassifierBackend] = {}  # weights sha -> torch, for ROAD / gradient-only CAMs
        self._segmenters: dict[str, Segmenter] = {}
        self.inputs = ModelInputs(size=8)
        self._outputs: OrderedDict[tuple, tuple] = OrderedDict()  # (input key, what ran) -> (logits, pooled features)
        self._maps: OrderedDict[tuple, Heatmap] = OrderedDict()
        self._cache_size = cache_size
        self.load_errors: list[tuple[Path, str]] = []
        for b in bundles or []:
            self.add_bundle(b)

    @property
    def device_type(self) -> str:
        return str(self.device).split(":")[0]

    # ------------------------------------------------------------------ bundles
    @classmethod
    def from_dirs(
        cls, dirs: Sequence[str | Path] | None = None, *, device: "str | torch.device" = "auto",
        enabled: Sequence[str] | frozenset[str] = (), **kwargs: Any,
    ) -> "InferenceEngine":  # fmt: skip
        """Load every enabled bundle found in ``dirs`` (default: app + user model folders).

        ``enabled``: names of bundles shipped switched off (a site fine-tune) that the user switched on.
        Bundles that fail to load are skipped and listed in ``load_errors`` with the reason.
        """
        from cxr_viewer.core.models.bundle import find_bundles

        engine = cls(None, device=device, **kwargs)
        for info in find_bundles(dirs):
            if not info.ok:
                engine.load_errors.append((info.path, info.error or "invalid bundle"))
                continue
            if not info.enabled and info.manifest.name not in enabled:
                continue
            try:
                engine.add_bundle(engine.load(info.path))
            except CXRError as exc:
                log.warning("skipping model bundle %s: %s", info.path.name, exc.message)
                engine.load_errors.append((info.path, exc.message))
        return engine

    def load(self, path: str | Path) -> "LoadedBundle":
        """A bundle loaded for this engine: on a CPU with a recorded export, torch is built only when needed."""
        from cxr_viewer.core.models.bundle import load_bundle

        return load_bundle(path, device=self.device, defer_torch=self.backend != "torch")

    def add_bundle(self, bundle: "LoadedBundle") -> None:
        with self._lock:
            if any(b.sha256 == bundle.sha256 for b in self._bundles):
                return
            if any(b.name == bundle.name for b in self._bundles):
                raise BundleError(f"Two loaded models are both named {bundle.name!r}; remove one of them.")
            if bundle.model is not None and str(bundle.device) != str(self.device):
                bundle.model.to(self.device)
                bundle.device = self.device
            self._bundles.append(bundle)

    def remove_bundle(self, name: str) -> None:
        with self._lock:
            gone = {b.sha256 for b in self._bundles if b.name == name}
            self._bundles = [b for b in self._bundles if b.name != name]
            for sha in gone:
                self._backends.pop(sha, None)
                self._torch.pop(sha, None)
                self._segmenters.pop(sha, None)
            self.clear_cache()

    @property
    def bundles(self) -> list["LoadedBundle"]:
        with self._lock:
            return list(self._bundles)

    @property
    def classifiers(self) -> list["LoadedBundle"]:
        return [b for b in self.bundles if b.manifest.is_classifier]

    @property
    def derived_bundles(self) -> list["LoadedBundle"]:
        """Segmentation bundles that declare derived findings with the ``finding`` role (scored by :meth:`analyze`)."""
        return [b for b in self.bundles if finding_specs(b)]

    def research_overlays(self) -> list[tuple[str, str]]:
        """(label, model) of every research overlay: a map drawn on request, never a finding."""
        return [(d.label, b.name) for b in self.bundles for d in overlay_specs(b)]

    def bundles_for_task(self, task: str) -> list["LoadedBundle"]:
        """E.g. ``text_segmentation`` bundles for the segmentation step."""
        return [b for b in self.bundles if b.task == task]

    def bundle(self, name: str) -> "LoadedBundle":
        for b in self.bundles:
            if b.name == name:
                return b
        raise InferenceError(f"No loaded model is named {name!r}.")

    # ------------------------------------------------------------------ backends (chosen once per bundle)
    def _backend(self, bundle: "LoadedBundle") -> ClassifierBackend:
        from cxr_viewer.core.inference.backends.select import classifier_backend

        with bundle.lock:
            hit = self._backends.get(bundle.sha256)
            if hit is None:
                hit = self._backends[bundle.sha256] = classifier_backend(bundle, prefer=self.backend, threads=self.threads)
            return hit

    def _torch_backend(self, bundle: "LoadedBundle") -> ClassifierBackend:
        from cxr_viewer.core.inference.backends.torch_backend import TorchClassifier

        with bundle.lock:
            hit = self._torch.get(bundle.sha256)
            if hit is None:
                hit = self._torch[bundle.sha256] = TorchClassifier(bundle)
            return hit

    def backend_for(self, bundle: "LoadedBundle") -> str:
        """``onnx`` or ``torch``: what runs this bundle's network."""
        if bundle.manifest.is_classifier:
            return self._backend(bundle).name
        return self.segmenter(bundle).backend.name

    def executed(self, bundle: "LoadedBundle") -> dict[str, str]:
        """The backend and the sha256 of what actually runs for ``bundle`` (for results and reports)."""
        if bundle.manifest.is_classifier:
            return self._backend(bundle).executed.to_dict()
        return self.segmenter(bundle).backend.executed.to_dict()

    def segmenter(self, bundle: "LoadedBundle", text_encoder: Any = None) -> "Segmenter":
        """One shared :class:`Segmenter` per segmentation bundle (its embeddings are cached inside)."""
        from cxr_viewer.core.inference.segment import Segmenter

        with self._lock:
            seg = self._segmenters.get(bundle.sha256)
            if seg is None or (text_encoder is not None and seg.text_encoder is not text_encoder):
                seg = Segmenter(bundle, text_encoder=text_encoder, prefer=self.backend, threads=self.threads,
                                inputs=self.inputs)
                self._segmenters[bundle.sha256] = seg
            return seg

    def unavailable_cam_methods(self, bundle: "LoadedBundle") -> dict[str, str]:
        """Heatmap methods that cannot be drawn for ``bundle`` here -> the reason (for a greyed-out tooltip)."""
        if bundle.torch_capable:
            return {}  # torch draws whatever the ONNX backend cannot
        return self._backend(bundle).unavailable_cam_methods()

    def prepare(self) -> None:
        """Build every model's backend now, side by side in threads.

        Most of a cold start is ONNX Runtime optimising each graph when its session is created
        (about 0.3-0.5 s each here), work that releases the GIL: the classifiers' sessions, each
        segmenter's and the text encoder's are made at once instead of one after another. Errors are
        left for the first real call to report (each by model), as without this step.
        """
        from concurrent.futures import ThreadPoolExecutor

        from cxr_viewer.core.inference.segment import default_text_encoder

        jobs: list[Any] = [lambda b=b: self._backend(b) for b in self.classifiers]
        for b in self.bundles_for_task("text_segmentation"):
            jobs.append(lambda b=b: self.segmenter(b))
            if b.manifest.text_encoder and derived_specs(b):
                jobs.append(lambda b=b: default_text_encoder(b.manifest.text_encoder).encode(["chest"]))
        if len(jobs) < 2:
            return
        with ThreadPoolExecutor(max_workers=min(4, len(jobs)), thread_name_prefix="cxr-prepare") as pool:
            for fut in [pool.submit(job) for job in jobs]:
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001 - reported by the model's own call later
                    log.debug("preparing a model failed (reported when it is used): %s", exc)

    def warmup(self, cancel: CancelToken | None = None) -> None:
        """Everything the first image would otherwise wait for, done now (call it off the GUI thread).

        Chooses and prepares every classifier's backend (ONNX sessions, verification) and runs one
        forward per model; for each segmentation bundle with derived findings, builds its segmenter
        (text encoder included), encodes the stock prompts (cached for every later image) and runs
        one decode. ``cancel`` is checked between the steps.
        """
        self.prepare()
        for b in self.classifiers:
            if cancel is not None:
                cancel.raise_if_cancelled()
            spec = b.preprocessing
            self._forward(b, np.zeros((1, spec.channels, *spec.size), np.float32))
        for b in self.derived_bundles:
            prompts = [p for spec in finding_specs(b) for p in spec.prompts]
            if cancel is not None:
                cancel.raise_if_cancelled()
            try:
                seg = self.segmenter(b)
                emb = seg.embed(prompts)
                if cancel is not None:
                    cancel.raise_if_cancelled()
                spec = b.preprocessing
                seg.probabilities(np.zeros((1, spec.channels, *spec.size), np.float32), emb, cancel=cancel)
            except AnalysisCancelledError:
                raise
            except CXRError as exc:  # analyze reports it per image; the classifiers still warm up
                log.warning("warm-up of %s skipped: %s", b.name, exc.message)

    # ------------------------------------------------------------------ thresholds
    def threshold(self, bundle: "LoadedBundle", label: str) -> tuple[float, str]:
        """The bundle's threshold for ``label`` and how it was chosen.

        The reader's own thresholds are not the engine's: they are applied when a result is judged
        (:func:`cxr_viewer.core.judging.judge`, from the workspace's settings), so a cached result
        serves every threshold.
        """
        for spec in derived_specs(bundle):
            if spec.label == label:
                return float(spec.threshold.value), spec.threshold.method or "default"
        t = bundle.manifest.thresholds.get(label) or {}
        return bundle.manifest.threshold(label), str(t.get("method") or "default")

    # ------------------------------------------------------------------ caches
    def _remember(self, cache: OrderedDict, key: tuple, value: Any, limit: int) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > limit:
                cache.popitem(last=False)

    def _recall(self, cache: OrderedDict, key: tuple) -> Any:
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
            return hit

    def clear_cache(self) -> None:
        with self._lock:
            self._outputs.clear()
            self._maps.clear()
            self.inputs.clear()

    def _logits(
        self, record: ImageRecord, bundle: "LoadedBundle", windowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, bool, float]:
        """One image's logits (L,), its pooled features (K,) when the bundle's population block
        carries OOD statistics (else None), whether they came from the cache, and the seconds
        spent preprocessing."""
        backend = self._backend(bundle)
        key = (input_key(record, bundle.preprocessing), backend.executed)
        hit = self._recall(self._outputs, key)
        if hit is not None:
            return hit[0], hit[1], True, 0.0
        t0 = time.perf_counter()
        x = self.inputs.get(record, bundle.preprocessing, windowed)
        t_pre = time.perf_counter() - t0
        logits, pooled = self._forward(bundle, x)
        logits, pooled = logits[0], (None if pooled is None else pooled[0])
        if self._cache_size > 0:
            self._remember(self._outputs, key, (logits, pooled), self._cache_size)
        return logits, pooled, False, t_pre

    def _forward(self, bundle: "LoadedBundle", x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, L) of a batch and, when the bundle wants them for its OOD check, the pooled
        features (N, K): the mean of the heatmap layer's map, from the same forward."""
        backend = self._backend(bundle)
        try:
            pooled = None
            if wants_features(bundle):
                try:
                    logits, feats = backend.features(x)
                    pooled = np.asarray(feats, dtype=np.float64).mean(axis=(2, 3))
                except InferenceError as exc:  # e.g. an export without the feature output: no OOD check
                    log.warning("no pooled features from %s, so no OOD check: %s", bundle.name, exc.message)
            if pooled is None:
                logits = backend.logits(x)
        except CXRError:
            raise
        except Exception as exc:  # noqa: BLE001 - report which model failed, in words
            log.exception("model %s failed", bundle.name)
            raise InferenceError(f"Model {bundle.name!r} failed on this image: {exc}") from exc
        if logits.shape[-1] != len(bundle.labels):
            raise InferenceError(f"Model {bundle.name!r} returned {logits.shape[-1]} scores for {len(bundle.labels)} labels.")
        return logits, pooled

    # ------------------------------------------------------------------ analysis
    def analyze(
        self,
        record: ImageRecord,
        *,
        cancel: CancelToken | None = None,
        models: Sequence[str] | None = None,
        _batched: dict[str, tuple[np.ndarray, np.ndarray | None, float, float]] | None = None,
    ) -> AnalysisResult:
        """Findings from every classifier (or those named in ``models``) plus QC flags.

        Thread-safe; raises AnalysisCancelledError if ``cancel`` fires between stages.
        (``_batched``: outputs :meth:`analyze_batch` computed for this record, by weights sha.)
        """
        t_all = time.perf_counter()
        bundles = self.classifiers
        derived = self.derived_bundles
        if models is not None:
            bundles = [b for b in bundles if b.name in set(models)]
            derived = [b for b in derived if b.name in set(models)]
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        windowed = record.model_pixels()  # computed once: QC and every "default"-window model share it
        qc: list[QCFlag] = check_quality(record, windowed)  # from this record's own header, every time
        timing["qc"] = (time.perf_counter() - t0) * 1e3
        findings: list[Finding] = []
        backends: dict[str, str] = {}
        described: list[dict[str, Any]] = []
        all_cached = True
        t_pre = 0.0
        for b in bundles:
            if cancel is not None:
                cancel.raise_if_cancelled()
            t0 = time.perf_counter()
            done = (_batched or {}).get(b.sha256)
            if done is not None:  # this record's share of a batched forward
                logits, pooled, ms, dt = done
                t_pre += dt
                timing[f"inference:{b.name}"] = ms
            else:
                logits, pooled, cached, dt = self._logits(record, b, windowed)
                all_cached &= cached
                t_pre += dt
                timing[f"inference:{b.name}"] = (time.perf_counter() - t0 - dt) * 1e3
            backends[b.name] = self.backend_for(b)
            described.append({**b.describe(), "executed": self.executed(b)})
            population = b.manifest.population
            outside = outside_population(record.metadata, qc, population, pooled)
            age = film_age(record.metadata, population, pooled)
            for label, p in zip(b.labels, _scores(logits, b.task)):
                thr, method = self.threshold(b, label)
                validated = (b.manifest.thresholds.get(label) or {}).get("validated")
                findings.append(Finding(label, float(p), thr, b.name, b.version, method, b.manifest.trained,
                                        validated=None if validated is None else bool(validated),
                                        outside=outside or finding_outside(population, label, age)))  # fmt: skip
        derived_warnings: list[str] = []
        for b in derived:
            ran = False
            for spec in finding_specs(b):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                t0 = time.perf_counter()
                try:
                    heat, cached = self._lesion_map(record, b, spec, cancel=cancel)
                except AnalysisCancelledError:
                    raise
                except CXRError as exc:  # e.g. no text encoder here: the classifiers' findings still stand
                    log.warning("derived finding %r of %s skipped: %s", spec.label, b.name, exc.message)
                    derived_warnings.append(f"{spec.label} could not be computed: {exc.message}")
                    continue
                ran = True
                all_cached &= cached
                timing[f"inference:{b.name}"] = timing.get(f"inference:{b.name}", 0.0) + (time.perf_counter() - t0) * 1e3
                thr, method = self.threshold(b, spec.label)
                findings.append(
                    Finding(
                        spec.label, float(heat.score or 0.0), thr, b.name, b.version, method, b.manifest.trained,
                        note=spec.note, validated=bool(spec.validated),
                        outside=outside_population(record.metadata, qc, b.manifest.population),
                    )
                )
            described.append({**b.describe(), **({"executed": self.executed(b)} if ran else {})})
            if ran:
                backends[b.name] = self.backend_for(b)
        timing["preprocess"] = t_pre * 1e3
        timing["total"] = (time.perf_counter() - t_all) * 1e3
        used = [*bundles, *derived]
        warnings = [*derived_warnings, *model_warnings(used)]
        return AnalysisResult(
            content_hash=record.content_hash,
            findings=tuple(findings),
            qc=tuple(qc),
            models=tuple(described),
            timing_ms=timing,
            warnings=tuple(warnings),
            cached=bool(used) and all_cached,
            backend=backends,
        )

    def analyze_batch(
        self,
        records: Sequence[ImageRecord],
        *,
        cancel: CancelToken | None = None,
        models: Sequence[str] | None = None,
        max_batch: int = 8,
    ) -> list[AnalysisResult]:
        """:meth:`analyze` for several images, each classifier's forwards run in batches of ``max_batch``.

        The results are those of one :meth:`analyze` call per record (the same inputs, caches,
        QC, thresholds, population checks and derived findings); only the classifiers' network
        runs are shared, and each record's ``inference`` time is its share of its batch.
        """
        records = list(records)
        bundles = self.classifiers if models is None else [b for b in self.classifiers if b.name in set(models)]
        done: list[dict[str, tuple[np.ndarray, np.ndarray | None, float, float]]] = [{} for _ in records]
        for b in bundles:
            backend = self._backend(b)
            todo: list[tuple[int, tuple]] = []
            for i, r in enumerate(records):
                key = (input_key(r, b.preprocessing), backend.executed)
                if self._recall(self._outputs, key) is None and all(key != k for _, k in todo):
                    todo.append((i, key))
            for start in range(0, len(todo), max(1, int(max_batch))):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                chunk = todo[start : start + max(1, int(max_batch))]
                t0 = time.perf_counter()
                x = np.concatenate([self.inputs.get(records[i], b.preprocessing, records[i].model_pixels())
                                    for i, _ in chunk])  # fmt: skip
                t_pre = (time.perf_counter() - t0) / len(chunk)
                t0 = time.perf_counter()
                logits, pooled = self._forward(b, x)
                ms = (time.perf_counter() - t0) * 1e3 / len(chunk)
                for j, (i, key) in enumerate(chunk):
                    out = (logits[j], None if pooled is None else pooled[j])
                    done[i][b.sha256] = (*out, ms, t_pre)
                    if self._cache_size > 0:
                        self._remember(self._outputs, key, out, self._cache_size)
        return [self.analyze(r, cancel=cancel, models=models, _batched=d or None) for r, d in zip(records, done)]

    # ------------------------------------------------------------------ maps
    def lesion_map(
        self, record: ImageRecord, bundle: "LoadedBundle", spec: "DerivedFinding", *, cancel: CancelToken | None = None
    ) -> Heatmap:
        """The derived finding's map: pixel-wise max of the prompts' masks, at the original size; cached."""
        return self._lesion_map(record, bundle, spec, cancel=cancel)[0]

    def _lesion_map(
        self, record: ImageRecord, bundle: "LoadedBundle", spec: "DerivedFinding", *, cancel: CancelToken | None = None
    ) -> tuple[Heatmap, bool]:
        label = spec.label
        seg = self.segmenter(bundle)
        ckey = (input_key(record, bundle.preprocessing), seg.backend.executed, label, LESION_MAP_METHOD,
                self.lung_constraint, self.lung_dilation)
        hit = self._recall(self._maps, ckey)
        if hit is not None:
            return hit, True
        t0 = time.perf_counter()
        masks = seg.segment(record, list(spec.prompts), cancel=cancel)
        values = np.maximum.reduce([m.prob for m in masks]).astype(np.float32, copy=False)
        score = float(values.max()) if values.size else 0.0  # the image score: the whole map's maximum
        field = self.lung_field(record, cancel=cancel) if self.lung_constraint else None
        region = "whole image"
        if field is not None and field.found:
            values = np.where(field.mask, values, np.float32(0.0))
            region = field.source
        overlay = not spec.is_finding
        rank = spec.reference_rank(score)
        if overlay and values.size and float(values.max()) > 0:
            # a research overlay is drawn on its rank among validation normals, not on raw probabilities
            values = values / float(values.max())
        hit = Heatmap(
            values=values,
            label=label,
            method=LESION_MAP_METHOD,
            model=bundle.name,
            target_index=-1,
            target_layer="segmenter output: " + " / ".join(spec.prompts),
            faithfulness=None,
            faithfulness_method="not applicable: the map is the segmenter's output, not an explanation",
            score=score,
            timing_ms=(time.perf_counter() - t0) * 1e3,
            region=region,
            research=overlay,
            reference_rank=rank,
            reference="" if spec.reference is None else spec.reference.what,
            colour_peak=rank if overlay else None,
        )
        self._remember(self._maps, ckey, hit, MAP_CACHE)
        return hit, False

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

    def _derived_for_label(self, label: str, model: str | None) -> "tuple[LoadedBundle, DerivedFinding] | None":
        """The segmentation bundle and spec of a derived finding or research overlay named ``label``, if any."""
        for b in self.bundles:
            if model is not None and b.name != model:
                continue
            for spec in derived_specs(b):
                if spec.label == label:
                    return b, spec
        return None

    def _explainer(self, bundle: "LoadedBundle", method: str) -> ClassifierBackend:
        """The chosen backend when it can draw ``method``, else torch (when this process has it)."""
        primary = self._backend(bundle)
        reason = primary.unavailable_cam_methods().get(method)
        if reason is None:
            return primary
        if not bundle.ensure_model():
            raise InferenceError(reason)
        return self._torch_backend(bundle)

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

        ``faithfulness=True`` adds the ROAD score now; a UI can instead show the map
        first and call :meth:`faithfulness` afterwards (it costs seconds on CPU).
        """
        from cxr_viewer.core.inference.cam_methods import canonical_method
        from cxr_viewer.core.models.preprocess import restore_map

        derived = self._derived_for_label(label, model)
        if derived is not None:
            return self.lesion_map(record, *derived, cancel=cancel)
        key_method = canonical_method(method)
        b = self._bundle_for_label(label, model)
        idx = b.labels.index(label)
        backend = self._explainer(b, key_method)
        ckey = self._cam_key(record, b, backend, label, key_method)
        hit = self._recall(self._maps, ckey)
        if hit is None:
            t0 = time.perf_counter()
            x = self.inputs.get(record, b.preprocessing)
            if cancel is not None:
                cancel.raise_if_cancelled()
            net_map, logits = backend.cam(x, idx, key_method, cancel=cancel)
            net_map, region = self._constrained(record, b, label, net_map, cancel=cancel)
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
                target_layer=backend.cam_layer,
                score=float(_scores(logits, b.task)[idx]),
                timing_ms=(time.perf_counter() - t0) * 1e3,
                network_map=net_map,
                region=region,
                colour_peak=float(_scores(logits, b.task)[idx]),
                **({} if b.torch_capable else {"faithfulness_method": NO_FAITHFULNESS}),
            )
            self._remember(self._maps, ckey, hit, MAP_CACHE)
        if faithfulness and hit.faithfulness is None and b.torch_capable:
            if cancel is not None:
                cancel.raise_if_cancelled()
            hit = hit.with_faithfulness(*self._road(record, hit, cancel=cancel))
            self._remember(self._maps, ckey, hit, MAP_CACHE)
        return hit

    def faithfulness(self, record: ImageRecord, heatmap: Heatmap, *, cancel: CancelToken | None = None) -> Heatmap:
        """The same heatmap with its ROAD faithfulness score filled in (see ``inference.cam``), on demand.

        Scored at model resolution on the cached model input the map was made from; the result
        is cached with the map. Without torch the ROAD score cannot be computed: the heatmap
        comes back as it is. ``cancel`` is checked between ROAD's steps.
        """
        if heatmap.faithfulness is not None or heatmap.method == LESION_MAP_METHOD:
            return heatmap
        b = self.bundle(heatmap.model)
        if not b.torch_capable:
            return heatmap
        done = heatmap.with_faithfulness(*self._road(record, heatmap, cancel=cancel))
        backend = self._explainer(b, heatmap.method)
        ckey = self._cam_key(record, b, backend, heatmap.label, heatmap.method)
        if self._recall(self._maps, ckey) is not None:
            self._remember(self._maps, ckey, done, MAP_CACHE)
        return done

    def _cam_key(self, record: ImageRecord, bundle: "LoadedBundle", backend: ClassifierBackend, label: str,
                 method: str) -> tuple:  # fmt: skip
        constrained = self.lung_constraint and label not in UNCONSTRAINED
        return (input_key(record, bundle.preprocessing), backend.executed, label, method, constrained,
                self.lung_dilation)

    # ------------------------------------------------------------------ the lung field
    def lung_segmenter(self) -> "LoadedBundle | None":
        """The report-conditioned segmenter that draws the lung field (the first one loaded), if any."""
        return next((b for b in self.bundles_for_task("text_segmentation") if b.manifest.text_encoder), None)

    def lung_field(self, record: ImageRecord, *, cancel: CancelToken | None = None) -> "LungField | None":
        """The dilated lung field of ``record`` at its original size (cached), or None without a segmenter.

        A segmenter that fails here (no text encoder, a broken export) is logged and the maps stay
        unconstrained: a heatmap never fails for want of a lung field.
        """
        from cxr_viewer.core.inference.lung_field import LUNG_PROMPTS, lung_field_from_probabilities

        b = self.lung_segmenter()
        if b is None:
            return None
        try:
            seg = self.segmenter(b)
            ckey = (input_key(record, b.preprocessing), seg.backend.executed, "lung field", self.lung_dilation)
            hit = self._recall(self._maps, ckey)
            if hit is None:
                masks = seg.segment(record, list(LUNG_PROMPTS), cancel=cancel)
                hit = lung_field_from_probabilities([m.prob for m in masks], seg.threshold,
                                                    dilation=self.lung_dilation, source=f"lung field ({b.name})")
                self._remember(self._maps, ckey, hit, MAP_CACHE)
            return hit
        except AnalysisCancelledError:
            raise
        except CXRError as exc:
            log.warning("no lung field from %s, heatmaps stay unconstrained: %s", b.name, exc.message)
            return None

    def _constrained(self, record: ImageRecord, bundle: "LoadedBundle", label: str, net_map: np.ndarray, *,
                     cancel: CancelToken | None = None) -> tuple[np.ndarray, str]:  # fmt: skip
        """A classifier's network-space map constrained to the lung field, and a caption of the region.

        The field is placed on the classifier's own input grid (the one preprocessing geometry), so
        the map shown and the map ROAD scores are the same map.
        """
        from dataclasses import replace as _replace

        from cxr_viewer.core.inference.lung_field import constrain_map
        from cxr_viewer.core.models.preprocess import place

        if not self.lung_constraint or label in UNCONSTRAINED:
            return net_map, "whole image" + (" (a finding outside the lungs)" if label in UNCONSTRAINED else "")
        field = self.lung_field(record, cancel=cancel)
        if field is None:
            return net_map, "whole image (no lung segmenter loaded)"
        if not field.found:
            return net_map, "whole image (no lung field found on this film)"
        spec = _replace(bundle.preprocessing, pad_value=0.0, interpolation="bilinear")
        grid = place(field.mask.astype(np.float32), spec)
        net = np.asarray(net_map, dtype=np.float32)
        if grid.shape != net.shape:
            from cxr_viewer.core.models.preprocess import resize2d

            grid = resize2d(grid, net.shape, "bilinear")
        return constrain_map(net, grid >= 0.5), field.source

    def _road(self, record: ImageRecord, heatmap: Heatmap, *, cancel: CancelToken | None = None) -> tuple[float, str]:
        from cxr_viewer.core.inference.cam_methods import DEFAULT_ROAD_PERCENTILES

        if heatmap.network_map is None:
            raise InferenceError("This heatmap carries no network-space map to score.")
        b = self.bundle(heatmap.model)
        x = self.inputs.get(record, b.preprocessing)  # the same input the map was made from
        value = self._torch_backend(b).road(x, heatmap.network_map, heatmap.target_index,
                                            multiclass=b.task == "multiclass", cancel=cancel)
        return float(value or 0.0), f"ROAD combined, percentiles {list(DEFAULT_ROAD_PERCENTILES)}"
