"""The one front door for building networks: ``create_model(name, **kwargs)``.

Bundles store ``architecture = {"name": ..., "kwargs": {...}}``; the viewer and the
trainer both rebuild networks through :func:`create_model`, so a model is usable
everywhere as soon as its module registers it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cxr_viewer.core.errors import UnknownModelError

if TYPE_CHECKING:  # torch stays lazy for modules the GUI imports at start-up
    from torch import nn

F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, Callable[..., Any]] = {}
_LOCK = threading.Lock()


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering a factory (function or class) under ``name``.

    Registering the same name twice with a different factory is an error, so two
    modules cannot silently shadow each other.
    """

    def deco(fn: F) -> F:
        with _LOCK:
            old = _REGISTRY.get(name)
            if old is not None and old is not fn and getattr(old, "__qualname__", None) != getattr(
                fn, "__qualname__", None
            ):
                raise ValueError(f"model name {name!r} is already registered by {old!r}")
            _REGISTRY[name] = fn
        return fn

    return deco


#: Imports the modules of the built-in architectures (they need torch). The package sets it: it knows its
#: members, and the registry stays below them (they import ``register_model`` from here).
_builtin_loader: Callable[[], None] | None = None


def set_builtin_loader(loader: Callable[[], None]) -> None:
    """Name the function that registers the built-in architectures on first use (the package's)."""
    global _builtin_loader
    _builtin_loader = loader


def _ensure_builtin() -> None:
    """Register the built-in architectures before a name is looked up."""
    if _builtin_loader is not None:
        _builtin_loader()


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> "nn.Module":
    """Build the network registered as ``name`` with ``kwargs`` (from a manifest or config)."""
    _ensure_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownModelError(
            f"Unknown model architecture {name!r}. Known architectures: {known}. "
            "The model bundle may need a newer version of cxr-viewer."
        ) from None
    return factory(**kwargs)
