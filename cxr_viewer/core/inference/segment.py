"""Report-conditioned segmentation at inference time: image + sentences -> masks on the image.

:class:`Segmenter` wraps a loaded ``text_segmentation`` bundle. For one image and N
sentences it preprocesses the image once with the bundle's own ``preprocessing``
(the one shared path), runs the U-Net encoder once, fuses each cached sentence
embedding at the bottleneck and decodes all sentences as one batch. Probabilities
are mapped back to the ORIGINAL image pixels with :func:`restore_map`, so masks
overlay the radiograph exactly whatever the letterbox or crop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import AnalysisCancelledError, BundleError, InferenceError
from cxr_viewer.core.inference.inputs import ModelInputs
from cxr_viewer.core.inference.results import is_cancelled

if TYPE_CHECKING:
    from cxr_viewer.core.inference.backends.base import SegmentationBackend
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.models.bundle import LoadedBundle

__all__ = ["Mask", "Segmenter", "load_segmenter", "write_report_masks", "PALETTE", "NEGATIVE_COLOUR", "REGION_LABEL"]

log = logging.getLogger(__name__)

#: The label under which a segmentation bundle stores its threshold.
REGION_LABEL = "region"
#: Distinct, colour-blind-friendly overlay colours (Okabe-Ito), assigned in sentence order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)
#: Sentences that read as normal ("Both lungs are clear.") are drawn in a neutral grey.
NEGATIVE_COLOUR = (170, 170, 170)


@dataclass(frozen=True, eq=False)
class Mask:
    """The region one sentence refers to, at the original image size."""

    text: str
    prob: np.ndarray  # float32 HxW in [0, 1]
    mask: np.ndarray  # bool HxW: prob >= threshold
    threshold: float
    area_fraction: float  # fraction of the image's pixels inside the mask
    colour: tuple[int, int, int]
    negative: bool = False  # the sentence reads as normal / absent (see core.report.regions)
    regions: tuple[str, ...] = field(default_factory=tuple)  # region phrases the sentence names

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())

    def to_png(self, path: str | Path) -> Path:
        """Write the binary mask as an 8-bit PNG (0/255) the size of the image."""
        from PIL import Image

        from cxr_viewer.core.staging import staged_file

        path = Path(path)
        with staged_file(path) as part:
            Image.fromarray(self.mask.astype(np.uint8) * 255, mode="L").save(part, format="PNG")
        return path

    def summary(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "area_fraction": round(float(self.area_fraction), 6),
            "threshold": float(self.threshold),
            "negative": bool(self.negative),
            "regions": list(self.regions),
        }


def _cancelled(cancel: Any) -> bool:
    return is_cancelled(cancel)


def default_text_encoder(spec: dict[str, Any]) -> Any:
    """The encoder a manifest's ``text_encoder`` names.

    MiniLM runs on ONNX Runtime from the verified export the application ships
    (``resources/text``), with or without torch: it starts in a fraction of the time
    transformers needs and computes the same embeddings (within ``TEXT_FLOAT16_ATOL``).
    Other encoders (CLIP) need the torch extra.
    """
    from cxr_viewer.core.inference.onnx_runtime import TEXT_RECORD, default_text_dir, ort_text_encoder
    from cxr_viewer.core.models.text import MINILM_NAME
    from cxr_viewer.core.runtime import torch_available

    name = str((spec or {}).get("name") or MINILM_NAME).lower()
    minilm = name in (MINILM_NAME.lower(), "minilm", "sentence-transformers/all-minilm-l6-v2")
    if (minilm and (default_text_dir() / TEXT_RECORD).is_file()) or not torch_available():
        return ort_text_encoder(spec)
    from cxr_viewer.core.models.text import get_text_encoder

    return get_text_encoder(spec)


def _needs_torch(encoder: Any) -> bool:
    from cxr_viewer.core.models.text import CachedTextEncoder, _HFEncoder
    from cxr_viewer.core.runtime import torch_available

    inner = encoder.encoder if isinstance(encoder, CachedTextEncoder) else encoder
    return isinstance(inner, _HFEncoder) and not torch_available()


class Segmenter:
    """Draws the region each sentence names, with a ``text_segmentation`` bundle.

    ``text_encoder`` defaults to the encoder the manifest names (cached embeddings);
    pass one to share it between segmenters or to use a local CLIP folder. The network
    runs on the backend the one rule picks (:mod:`cxr_viewer.core.inference.backends.select`)
    for ``prefer`` (the engine passes its own choice; alone, torch when the bundle was loaded
    with torch), or on ``backend`` when given; ``inputs`` shares the model-input cache.
    """

    def __init__(
        self,
        bundle: "LoadedBundle",
        text_encoder: Any = None,
        *,
        max_batch: int = 16,
        backend: "SegmentationBackend | None" = None,
        prefer: str = "torch",
        threads: int | None = None,
        inputs: ModelInputs | None = None,
    ) -> None:
        man = bundle.manifest
        if man.task != "text_segmentation":
            raise BundleError(
                f"The model '{man.name}' is a {man.task} model, not a report-conditioned segmentation model."
            )
        if backend is None:
            from cxr_viewer.core.inference.backends.select import segmentation_backend

            backend = segmentation_backend(bundle, prefer=prefer, threads=threads)
        self.bundle = bundle
        self.backend = backend
        self.spec = man.preprocessing
        self.inputs = inputs if inputs is not None else ModelInputs(size=2)
        self.max_batch = max(1, int(max_batch))
        thr = man.thresholds.get(REGION_LABEL) or (next(iter(man.thresholds.values())) if man.thresholds else None)
        self.threshold = 0.5 if thr is None else float(thr["value"])
        self.conditioned = bool(backend.conditioned)
        self.text_encoder = None
        if self.conditioned:
            if text_encoder is None or _needs_torch(text_encoder):
                if not man.text_encoder:
                    raise BundleError(f"The segmentation model '{man.name}' does not name its text encoder.")
                text_encoder = default_text_encoder(man.text_encoder)
            want = int((man.text_encoder or {}).get("dim") or getattr(backend, "text_dim", 0) or 0)
            if want and int(text_encoder.dim) != want:
                raise BundleError(
                    f"The segmentation model '{man.name}' expects {want}-value text embeddings, "
                    f"but the text encoder {text_encoder.name!r} gives {text_encoder.dim}."
                )
            self.text_encoder = text_encoder

    # ------------------------------------------------------------------ pieces
    def embed(self, phrases: Sequence[str]) -> np.ndarray:
        """Sentence embeddings (N, dim), from the encoder's cache when seen before."""
        if self.text_encoder is None:
            return np.zeros((len(phrases), 0), dtype=np.float32)
        return np.asarray(self.text_encoder.encode(list(phrases)), dtype=np.float32)

    def image_tensor(self, record: "ImageRecord | np.ndarray") -> np.ndarray:
        """The network input (1, C, H, W), via the shared ``preprocess`` (cached per image and spec)."""
        return self.inputs.get(record, self.spec)

    def probabilities(self, x: np.ndarray, emb: np.ndarray, *, cancel: Any = None) -> np.ndarray:
        """Network-space probabilities (N, H, W) for one image input and N embeddings."""
        return self.backend.probabilities(x, emb, max_batch=self.max_batch, cancel=cancel)

    # ------------------------------------------------------------------ API
    def segment(
        self,
        record: "ImageRecord | np.ndarray",
        phrases: Sequence[str],
        *,
        cancel: Any | Callable[[], bool] = None,
    ) -> list[Mask]:
        """One :class:`Mask` per non-empty phrase, in order, at the original image size.

        ``cancel`` is the engine's ``CancelToken``, a ``threading.Event`` or a callable returning True; a
        cancelled run raises :class:`AnalysisCancelledError` and returns nothing.
        """
        from cxr_viewer.core.models.preprocess import restore_map
        from cxr_viewer.core.report import region_phrases

        texts = [str(p).strip() for p in phrases]
        texts = [t for t in texts if t]
        if not texts:
            return []
        shape = tuple(int(v) for v in record.shape[:2])  # ImageRecord.shape and arrays alike
        if _cancelled(cancel):
            raise AnalysisCancelledError("Segmentation was cancelled.")
        try:
            emb = self.embed(texts)
            x = self.image_tensor(record)
            probs = self.probabilities(x, emb, cancel=cancel)
        except AnalysisCancelledError:
            raise
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"Segmentation failed: {exc}") from exc
        if not self.conditioned:  # image-only model: the same map for every sentence
            probs = np.broadcast_to(probs[:1], (len(texts), *probs.shape[1:]))
        masks: list[Mask] = []
        total = float(shape[0] * shape[1])
        colour_i = 0
        for text, p in zip(texts, probs):
            if _cancelled(cancel):
                raise AnalysisCancelledError("Segmentation was cancelled.")
            full = np.clip(restore_map(p, self.spec, shape), 0.0, 1.0).astype(np.float32, copy=False)
            binary = full >= self.threshold
            reading = region_phrases(text)
            if reading.negative:
                colour = NEGATIVE_COLOUR
            else:
                colour = PALETTE[colour_i % len(PALETTE)]
                colour_i += 1
            masks.append(
                Mask(
                    text=text,
                    prob=full,
                    mask=binary,
                    threshold=self.threshold,
                    area_fraction=float(binary.sum()) / total,
                    colour=colour,
                    negative=reading.negative,
                    regions=tuple(reading.phrases),
                )
            )
        log.debug("segmented %d sentences", len(masks))
        return masks

    def segment_report(
        self, record: "ImageRecord | np.ndarray", report_text: str, *, cancel: Any = None
    ) -> list[Mask]:
        """Masks for every FINDINGS/IMPRESSION sentence of a report (all sentences if it has no headers)."""
        from cxr_viewer.core.report import parse_report

        sentences = [s.text for s in parse_report(report_text).finding_sentences()]
        return self.segment(record, sentences, cancel=cancel)


def load_segmenter(path: str | Path, *, device: Any = None, text_encoder: Any = None) -> Segmenter:
    """Load a ``text_segmentation`` bundle (folder or zip) and wrap it; CUDA/MPS when present."""
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.runtime import torch_available

    if torch_available():
        import cxr_viewer.core.models.segmenter  # noqa: F401  (registers text_unet before the bundle is rebuilt)
    if device is None:
        if torch_available():
            from cxr_viewer.core.models.text import _pick_device

            device = _pick_device(None)
        else:
            device = "cpu"
    return Segmenter(load_bundle(path, device=device), text_encoder=text_encoder)


def _file_part(text: str, limit: int = 40) -> str:
    out = "".join(c.lower() if c.isalnum() else "_" for c in text)
    out = "_".join(p for p in out.split("_") if p)
    return out[:limit].rstrip("_") or "sentence"


def write_report_masks(
    segmenter: Segmenter,
    record: "ImageRecord | np.ndarray",
    report_text: str,
    out_dir: str | Path,
    stem: str,
    *,
    cancel: Any = None,
    masks: Sequence[Mask] | None = None,
) -> list[dict[str, Any]]:
    """Headless output: one 8-bit PNG (0/255, the input's size) per report sentence.

    Sentences are the report's FINDINGS/IMPRESSION sentences, or every sentence when
    the text has no section headers. Returns, in sentence order,
    ``{"text", "path", "area_fraction", "negative", "regions"}`` for the result JSON.
    ``masks``: already segmented masks of this report (written as they are).
    """
    out = Path(out_dir)
    if masks is None:
        masks = segmenter.segment_report(record, report_text, cancel=cancel)
    rows = []
    for i, m in enumerate(masks, start=1):
        path = m.to_png(out / f"{stem}_mask{i:02d}_{_file_part(m.text)}.png")
        rows.append({**m.summary(), "path": str(path)})
    return rows
