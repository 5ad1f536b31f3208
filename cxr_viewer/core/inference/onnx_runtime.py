"""ONNX Runtime without torch: the one session builder and the MiniLM text encoder.

A bundle's export (made by :mod:`cxr_viewer.core.inference.onnx_export`) lives in
``<bundle>/onnx/`` and is recorded in its ``manifest.json`` under ``onnx``: the file, its
sha256 and the sha256 of the weights it was made from, checked on load by
:func:`cxr_viewer.core.models.bundle.read_onnx_export` like the weights themselves. The
graphs run in :mod:`cxr_viewer.core.inference.backends.ort_backend`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cxr_viewer.core.errors import BundleError
from cxr_viewer.core.models.bundle import ONNX_RECORD_SCHEMA as RECORD_SCHEMA

log = logging.getLogger(__name__)

__all__ = [
    "ONNX_DIR",
    "RECORD_SCHEMA",
    "TEXT_DIR_NAME",
    "TEXT_RECORD",
    "OrtMiniLMEncoder",
    "default_text_dir",
    "ort_session",
    "ort_text_encoder",
]

ONNX_DIR = "onnx"
TEXT_RECORD = "onnx.json"
TEXT_DIR_NAME = "all-MiniLM-L6-v2"


def ort_session(source: str | Path | bytes, *, threads: int | None = None) -> Any:
    """THE ONNX Runtime session builder (CPU, all graph optimisations, quiet); ``source`` a path or bytes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    n = threads or int(os.environ.get("CXR_VIEWER_THREADS", "0") or 0)
    if n > 0:
        opts.intra_op_num_threads = int(n)
    what = "in-memory graph" if isinstance(source, bytes) else Path(source).name
    try:
        return ort.InferenceSession(source if isinstance(source, bytes) else str(source), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise BundleError(f"The ONNX model {what} cannot be opened: {exc}") from exc


# ---------------------------------------------------------------------- text encoder
def default_text_dir() -> Path:
    """Where the application ships the MiniLM ONNX export and tokenizer."""
    from cxr_viewer.core.paths import resources_dir

    return resources_dir() / "text" / TEXT_DIR_NAME


class OrtMiniLMEncoder:
    """all-MiniLM-L6-v2 on ONNX Runtime with the ``tokenizers`` package: mean pooling, unit norm."""

    dim = 384
    batch_size = 64

    def __init__(self, folder: str | Path | None = None, threads: int | None = None) -> None:
        from cxr_viewer.core.models.text import MINILM_NAME, TextEncoderError

        self.name = MINILM_NAME
        self.folder = Path(folder) if folder else default_text_dir()
        rec_path = self.folder / TEXT_RECORD
        if not rec_path.is_file():
            raise TextEncoderError(
                f"The report text encoder (all-MiniLM-L6-v2, ONNX) is missing from {self.folder}; reinstall cxr-viewer."
            )
        try:
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise TextEncoderError(f"The text encoder record {rec_path} is damaged ({exc}); reinstall cxr-viewer.") from exc
        self.max_length = int(rec.get("max_length", 256))
        self._files: dict[str, bytes] = {}
        for key, sha_key in (("file", "sha256"), ("tokenizer", "tokenizer_sha256")):
            name = str(rec.get(key) or "")
            p = self.folder / name
            data = p.read_bytes() if name and "/" not in name and p.is_file() else b""
            if not data or hashlib.sha256(data).hexdigest() != rec.get(sha_key):
                raise TextEncoderError(f"The text encoder file {name or key} is missing or damaged; reinstall cxr-viewer.")
            self._files[key] = data
        self.sha256 = str(rec["sha256"])
        self._threads = threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    def _ensure(self) -> None:
        if self._session is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self._files["tokenizer"].decode("utf-8"))
            tok.enable_truncation(max_length=self.max_length)
            tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
            self._tokenizer = tok
            self._session = ort_session(self._files["file"], threads=self._threads)

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


def ort_text_encoder(spec: dict[str, Any] | None, *, folder: str | Path | None = None) -> Any:
    """The cached ONNX Runtime encoder for a manifest's ``text_encoder`` block (MiniLM only)."""
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
            enc = _TEXT_ENCODERS[key] = OrtMiniLMEncoder(folder)
    want = spec.get("dim")
    if want is not None and int(want) != enc.dim:
        raise TextEncoderError(f"The model expects {want}-value text embeddings but all-MiniLM-L6-v2 gives {enc.dim}.")
    return CachedTextEncoder(enc)
