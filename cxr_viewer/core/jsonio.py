"""Writing JSON that every parser reads: never a ``NaN`` or ``Infinity`` literal.

Python's ``json`` writes ``NaN`` by default, which is not JSON (RFC 8259) and breaks
the readers of our output. Everything we write goes through :func:`dumps`, which
refuses non-finite numbers; :func:`non_finite_paths` finds them first so a caller
can say which value was not a number, and :func:`finite_or_none` turns them into
``null`` where "undefined" is an honest value (a metric with no positive case).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps", "finite_or_none", "non_finite_paths"]


def _walk(obj: Any, path: str) -> Any:
    if isinstance(obj, float):
        if not math.isfinite(obj):
            yield path
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        # numpy scalars: float(np.float32('nan')) is a float; anything else is left to json
        if hasattr(obj, "dtype") and getattr(obj, "shape", None) == () and getattr(obj.dtype, "kind", "") == "f":
            if not math.isfinite(float(obj)):
                yield path


def non_finite_paths(obj: Any) -> list[str]:
    """Dotted paths (``findings[2].score``) of every NaN or infinite float inside ``obj``."""
    return list(_walk(obj, ""))


def finite_or_none(obj: Any) -> Any:
    """A copy of ``obj`` with every NaN or infinite float replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "dtype") and getattr(obj, "shape", None) == () and getattr(obj.dtype, "kind", "") == "f":
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN/Infinity, naming where they are."""
    bad = non_finite_paths(obj)
    if bad:
        raise ValueError("refusing to write non-finite numbers to JSON at: " + ", ".join(bad[:5]))
    return json.dumps(obj, allow_nan=False, **kwargs)
