"""The bundle manifest: its schema, validated in one place (see ``docs/bundle-format.md``).

Every problem with a manifest is listed in one :class:`BundleError`. Every file path a
manifest records (weights, ONNX export, golden images) must stay inside the bundle folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_viewer.core.errors import BundleError
from cxr_viewer.core.models.blocks import (
    CalibrationRecord,
    DerivedFinding,
    OnnxRecord,
    Population,
    SiteVersion,
)
from cxr_viewer.core.models.preprocess import Preprocessing
from cxr_viewer.core.models.ref import ModelRef

__all__ = [
    "CLASSIFIER_TASKS",
    "DTYPES",
    "MANIFEST_FILE",
    "MAX_INPUT_SIDE",
    "ONNX_RECORD_SCHEMA",
    "SCHEMA_VERSION",
    "TASKS",
    "UNSAFE_SUFFIXES",
    "WEIGHTS_FILE",
    "Manifest",
]

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
TASKS = ("multilabel", "binary", "multiclass", "text_segmentation", "ssl_encoder", "detection_heatmap")
CLASSIFIER_TASKS = ("multilabel", "binary", "multiclass")
# File types that can execute code when loaded (pickle, torch.save zips): never opened.
UNSAFE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".joblib", ".npy", ".npz", ".tar")
DTYPES = ("float16", "float32", "bfloat16")
#: Largest network input side a manifest may ask for (a 30000² input would allocate gigabytes per image).
MAX_INPUT_SIDE = 4096
MAX_ZIP_MEMBERS = 2000
MAX_ZIP_BYTES = 4 << 30
MAX_MANIFEST_BYTES = 16 << 20#: The version of the ``onnx`` export record a manifest carries (see ``core.inference.onnx_export``).
ONNX_RECORD_SCHEMA = 2

_KNOWN_KEYS = (
    "schema_version", "name", "version", "task", "trained", "architecture", "labels", "thresholds",
    "preprocessing", "cam", "text_encoder", "provenance", "metrics", "intended_use", "limitations",
    "golden", "weights", "enabled", "description", *(
        "population", "derived_findings", "calibration", "site_version", "onnx"),
)  # fmt: skip


def _leaves_bundle(name: str) -> bool:
    """Whether a recorded path could point outside its bundle (read as a POSIX and as a Windows path)."""
    from pathlib import PurePosixPath, PureWindowsPath

    win = PureWindowsPath(name)
    posix = PurePosixPath(name.replace("\\", "/"))
    return (not name or posix.is_absolute() or win.is_absolute() or bool(win.drive) or ".." in posix.parts
            or name.startswith("~"))


def _manifest_paths(d: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Every file path a manifest records, with where it is recorded."""
    out: list[tuple[str, Any]] = []
    for block in ("weights", "onnx"):
        rec = d.get(block)
        if isinstance(rec, Mapping) and "file" in rec:
            out.append((f"{block}.file", rec["file"]))
        if isinstance(rec, Mapping) and isinstance(rec.get("files"), Mapping):
            out += [(f"{block}.files.{k}", v.get("file") if isinstance(v, Mapping) else v) for k, v in rec["files"].items()]
    golden = d.get("golden")
    if isinstance(golden, list):
        out += [(f"golden[{i}].image", g.get("image")) for i, g in enumerate(golden) if isinstance(g, Mapping)]
    return out


#: The typed blocks: manifest key -> how it is read (each names the field it refuses).
_BLOCKS: dict[str, Any] = {
    "population": Population.from_dict,
    "calibration": CalibrationRecord.from_dict,
    "site_version": SiteVersion.from_dict,
    "onnx": OnnxRecord.from_dict,
    "derived_findings": DerivedFinding.list_from,
}


@dataclass
class Manifest:
    """A validated bundle manifest. Unknown top-level keys are kept in ``extra`` and written back.

    The blocks a consumer reads (``population``, ``derived_findings``, ``calibration``,
    ``site_version``, ``onnx``) are typed (:mod:`cxr_viewer.core.models.blocks`); the
    top-level key order read is kept, so a manifest loaded and saved is the same JSON.
    """

    name: str
    version: str
    task: str
    architecture: dict[str, Any]
    labels: list[str] = field(default_factory=list)
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    trained: bool = False
    cam: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = "Research use only. Not a medical device."
    limitations: list[str] = field(default_factory=list)
    golden: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    description: str = ""
    schema_version: int = SCHEMA_VERSION
    population: Population | None = None
    derived_findings: tuple[DerivedFinding, ...] = ()
    calibration: CalibrationRecord | None = None
    site_version: SiteVersion | None = None
    onnx: OnnxRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)  # top-level keys as read

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | Path | None = None) -> "Manifest":
        """Validate a manifest dict; every problem is listed in one :class:`BundleError`."""
        where = f" in {source}" if source else ""
        if not isinstance(d, Mapping):
            raise BundleError(f"The model manifest{where} is not a JSON object.", path=source)
        problems: list[str] = []

        def need(key: str, typ: type | tuple[type, ...], what: str) -> Any:
            if key not in d:
                problems.append(f"missing '{key}' ({what})")
                return None
            if not isinstance(d[key], typ):
                problems.append(f"'{key}' must be {what}")
                return None
            return d[key]

        sv = d.get("schema_version", SCHEMA_VERSION)
        if not isinstance(sv, int) or sv < 1:
            problems.append("'schema_version' must be a positive integer")
        elif sv > SCHEMA_VERSION:
            problems.append(f"schema_version {sv} is newer than this viewer understands ({SCHEMA_VERSION}); update cxr-viewer")
        name = need("name", str, "a text name")
        version = need("version", str, "a version text such as '0.1.0'")
        task = need("task", str, "one of " + ", ".join(TASKS))
        if task is not None and task not in TASKS:
            problems.append(f"'task' is {task!r}; expected one of {', '.join(TASKS)}")
        arch = need("architecture", Mapping, "an object with 'name' and 'kwargs'")
        if arch is not None:
            if not isinstance(arch.get("name"), str):
                problems.append("'architecture.name' must name a registered architecture")
            if not isinstance(arch.get("kwargs", {}), Mapping):
                problems.append("'architecture.kwargs' must be an object")
        labels = d.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            problems.append("'labels' must be a list of non-empty label names")
            labels = []
        elif len(set(labels)) != len(labels):
            problems.append("'labels' contains duplicates")
        if task in CLASSIFIER_TASKS:
            if not labels:
                problems.append(f"a {task} bundle needs 'labels'")
            elif task == "multiclass" and len(labels) < 2:
                problems.append("a multiclass bundle needs at least two labels (softmax over one label is always 1.0)")
            n = (arch or {}).get("kwargs", {}).get("num_classes") if isinstance(arch, Mapping) else None
            if isinstance(n, int) and labels and n != len(labels):
                problems.append(f"architecture has {n} outputs but {len(labels)} labels are listed")
        thresholds: dict[str, dict[str, Any]] = {}
        raw_thr = d.get("thresholds", {}) or {}
        if not isinstance(raw_thr, Mapping):
            problems.append("'thresholds' must map label -> {value, method, source}")
        else:
            for label, t in raw_thr.items():
                entry = {"value": t} if isinstance(t, (int, float)) and not isinstance(t, bool) else t
                if not isinstance(entry, Mapping) or not isinstance(entry.get("value"), (int, float)):
                    problems.append(f"threshold for {label!r} needs a numeric 'value'")
                    continue
                if labels and label not in labels:
                    problems.append(f"threshold given for unknown label {label!r}")
                    continue
                v = float(entry["value"])
                if not 0.0 <= v <= 1.0:
                    problems.append(f"threshold for {label!r} is {v}; it must lie in [0, 1]")
                thresholds[label] = {**dict(entry), "value": v}
        try:
            pre = Preprocessing.from_dict(d.get("preprocessing") or {})
        except (TypeError, ValueError) as exc:
            problems.append(str(exc))
            pre = Preprocessing()
        if max(pre.size) > MAX_INPUT_SIDE:
            problems.append(f"preprocessing.size {list(pre.size)} is larger than {MAX_INPUT_SIDE} pixels a side")
        for where_, value in _manifest_paths(d):
            if not isinstance(value, str) or _leaves_bundle(value):
                problems.append(f"'{where_}' is {value!r}: a file path must stay inside the bundle folder")
        golden = d.get("golden", []) or []
        if not isinstance(golden, list) or not all(
            isinstance(g, Mapping) and isinstance(g.get("image"), str) and isinstance(g.get("scores"), Mapping)
            for g in golden
        ):
            problems.append("'golden' must be a list of {image, scores}")
            golden = []
        weights = d.get("weights", {}) or {}
        if not isinstance(weights, Mapping):
            problems.append("'weights' must be an object with 'file', 'sha256', 'dtype'")
            weights = {}
        for key, typ, what in (
            ("trained", bool, "true or false"),
            ("enabled", bool, "true or false"),
            ("cam", Mapping, "an object"),
            ("provenance", Mapping, "an object"),
            ("metrics", Mapping, "an object"),
            ("limitations", list, "a list of texts"),
            ("intended_use", str, "a text"),
        ):
            if key in d and d[key] is not None and not isinstance(d[key], typ):
                problems.append(f"'{key}' must be {what}")
        te = d.get("text_encoder")
        if te is not None and not isinstance(te, Mapping):
            problems.append("'text_encoder' must be an object or null")
        blocks: dict[str, Any] = {}
        for key, read in _BLOCKS.items():
            if d.get(key) is None or d.get(key) == []:
                continue  # written back as read (see ``extra``)
            try:
                blocks[key] = read(d[key])
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
        if problems:
            raise BundleError(
                f"The model bundle{where} has an invalid manifest: " + "; ".join(problems) + ".", path=source
            )
        extra = {k: v for k, v in d.items() if k not in _KNOWN_KEYS or (k in _BLOCKS and k not in blocks)}
        return cls(
            name=name,
            version=version,
            task=task,
            architecture={"name": arch["name"], "kwargs": dict(arch.get("kwargs", {}))},
            labels=list(labels),
            thresholds=thresholds,
            preprocessing=pre,
            trained=bool(d.get("trained", False)),
            cam=dict(d.get("cam") or {}),
            text_encoder=None if te is None else dict(te),
            provenance=dict(d.get("provenance") or {}),
            metrics=dict(d.get("metrics") or {}),
            intended_use=str(d.get("intended_use") or cls.intended_use),
            limitations=[str(x) for x in (d.get("limitations") or [])],
            golden=[dict(g) for g in golden],
            weights=dict(weights),
            enabled=bool(d.get("enabled", True)),
            description=str(d.get("description", "")),
            schema_version=int(sv),
            extra=extra,
            key_order=tuple(str(k) for k in d),
            **blocks,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "trained": self.trained,
            "description": self.description,
            "architecture": {"name": self.architecture["name"], "kwargs": dict(self.architecture.get("kwargs", {}))},
            "labels": list(self.labels),
            "thresholds": {k: dict(v) for k, v in self.thresholds.items()},
            "preprocessing": self.preprocessing.to_dict(),
            "cam": dict(self.cam),
            "text_encoder": self.text_encoder,
            "provenance": dict(self.provenance),
            "metrics": dict(self.metrics),
            "intended_use": self.intended_use,
            "limitations": list(self.limitations),
            "golden": [dict(g) for g in self.golden],
            "enabled": self.enabled,
            "weights": dict(self.weights),
        }
        blocks = {"derived_findings": self.derived_findings or None, "calibration": self.calibration,
                  "population": self.population, "site_version": self.site_version, "onnx": self.onnx}  # fmt: skip
        for key, block in blocks.items():
            if block is not None:
                d[key] = [b.to_dict() for b in block] if isinstance(block, tuple) else block.to_dict()
        for key, value in self.extra.items():  # a block read as null or [] sits in extra until it is set
            d.setdefault(key, value)
        if self.key_order:  # the order read; keys added since go last
            first = [k for k in self.key_order if k in d]
            d = {**{k: d[k] for k in first}, **{k: v for k, v in d.items() if k not in first}}
        return d

    # ------------------------------------------------------------------ helpers
    def threshold(self, label: str) -> float:
        """Operating threshold for ``label`` (0.5 when the trainer recorded none)."""
        t = self.thresholds.get(label)
        return 0.5 if t is None else float(t["value"])

    @property
    def is_classifier(self) -> bool:
        return self.task in CLASSIFIER_TASKS

    def derived(self, role: str | None = "finding") -> list[DerivedFinding]:
        """The ``derived_findings`` entries with ``role`` (default ``finding``, None: all; see :data:`~cxr_viewer.core.models.blocks.DERIVED_ROLES`).

        Only ``text_segmentation`` bundles have any (other tasks' entries are ignored).
        """
        if self.task != "text_segmentation":
            return []
        return [d for d in self.derived_findings if role is None or d.role == role]

    @property
    def ref(self) -> ModelRef:
        """The model's identity as its manifest records it (weights hash as recorded)."""
        return ModelRef.from_manifest(self)

    @property
    def replaces(self) -> str:
        """The name of the bundle a site version was fine-tuned from ("" for any other bundle)."""
        return "" if self.site_version is None else self.site_version.replaces_name

    @property
    def cam_layers(self) -> list[str]:
        layers = self.cam.get("target_layers") or []
        return [str(x) for x in layers]

    @property
    def display_name(self) -> str:
        return f"{self.name} {self.version}"
