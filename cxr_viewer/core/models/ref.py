"""One identity for a model bundle: :class:`ModelRef`.

What results, the worklist store, the GUI's model list and a site version's ``replaces``
record all name a model by. Its JSON form (:meth:`ModelRef.to_dict`) is the ``models`` entry of
every result (``name``, ``version``, ``sha256``, ``trained``, ``task``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelRef"]


@dataclass(frozen=True)
class ModelRef:
    """A model by name, version and weights hash (``sha256``, lower case); ``task`` and ``trained`` describe it.

    Two refs are the same model when name, version and sha256 agree (:attr:`key`); the
    worklist store keys results by exactly those three.
    """

    name: str
    version: str
    sha256: str
    task: str = ""
    trained: bool = True

    def __post_init__(self) -> None:
        for key in ("name", "version", "sha256", "task"):
            if not isinstance(getattr(self, key), str):
                raise TypeError(f"a model's '{key}' must be a text (got {getattr(self, key)!r})")
        if not isinstance(self.trained, bool):
            raise TypeError(f"a model's 'trained' must be true or false (got {self.trained!r})")
        object.__setattr__(self, "sha256", self.sha256.lower())

    @classmethod
    def from_manifest(cls, manifest: Any, sha256: str | None = None) -> "ModelRef":
        """The ref of a manifest's bundle (``sha256``: the verified weights hash, else the recorded one)."""
        digest = sha256 if sha256 is not None else str((manifest.weights or {}).get("sha256", ""))
        return cls(manifest.name, manifest.version, digest, manifest.task, bool(manifest.trained))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelRef":
        """A ref from its JSON form; ``ValueError``/``TypeError`` name what is wrong."""
        if not isinstance(d, Mapping):
            raise TypeError("a model reference must be an object")
        for key in ("name", "version"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ValueError(f"a model reference needs a text '{key}'")
        return cls(d["name"], d["version"], d.get("sha256") or "", d.get("task") or "", d.get("trained", True))

    def to_dict(self) -> dict[str, Any]:
        """The ``models`` entry of a result (the order results and JSON output have always used)."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "trained": self.trained,
                "task": self.task}  # fmt: skip

    @property
    def key(self) -> tuple[str, str, str]:
        """(name, version, sha256): what identifies the model's outputs."""
        return (self.name, self.version, self.sha256)

    @property
    def display_name(self) -> str:
        return f"{self.name} {self.version}".strip()
