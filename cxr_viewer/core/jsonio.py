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
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["JSONLimitError", "dumps", "finite_or_none", "loads_limited", "non_finite_paths", "read_json_limited"]

#: Limits of what :func:`loads_limited` parses: files we read that someone else may have written.
MAX_JSON_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
MAX_NUMBER_CHARS = 64


class JSONLimitError(ValueError):
    """JSON that is not JSON, or beyond the limits (size, nesting, number length, NaN/Infinity)."""


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
    """A copy of ``obj`` with every NaN or infinite float replaced by ``None`` (and NumPy scalars by Python numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "dtype") and getattr(obj, "shape", None) == ():  # a NumPy scalar: a Python number
        kind = getattr(obj.dtype, "kind", "")
        if kind == "f":
            return float(obj) if math.isfinite(float(obj)) else None
        if kind in ("i", "u"):
            return int(obj)
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN/Infinity, naming where they are."""
    bad = non_finite_paths(obj)
    if bad:
        raise ValueError("refusing to write non-finite numbers to JSON at: " + ", ".join(bad[:5]))
    return json.dumps(obj, allow_nan=False, **kwargs)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings skipped), without recursion."""
    import numpy as np

    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    arr = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.where((arr == ord("[")) | (arr == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _number(text: str, kind: type) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONLimitError(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise JSONLimitError(f"the number {text[:20]} is out of range")
    return value


def _constant(name: str) -> Any:
    raise JSONLimitError(f"{name} is not a JSON number")


def loads_limited(text: str | bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for files a user or another program wrote: bounded size, nesting and numbers.

    Raises :class:`JSONLimitError` (a ``ValueError``) with a short reason for anything beyond the
    limits, any non-finite or over-long number, and any syntax error; never ``RecursionError``.
    """
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise JSONLimitError(f"it is larger than {max_bytes >> 20} MB")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise JSONLimitError("it is not UTF-8 text") from None
    if len(text) > max_bytes:
        raise JSONLimitError(f"it is larger than {max_bytes >> 20} MB")
    depth = _depth(text)
    if depth > max_depth:
        raise JSONLimitError(f"it is nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(text, parse_int=lambda t: _number(t, int), parse_float=lambda t: _number(t, float),
                          parse_constant=_constant)
    except JSONLimitError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JSONLimitError(f"it is not valid JSON ({str(exc).splitlines()[0][:120]})") from None


def read_json_limited(path: Any, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """:func:`loads_limited` of a file, its size checked before it is read. ``OSError`` passes through."""
    from pathlib import Path

    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise JSONLimitError(f"it is larger than {max_bytes >> 20} MB")
    return loads_limited(p.read_bytes(), max_bytes=max_bytes, max_depth=max_depth)
