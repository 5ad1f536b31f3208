"""The reader's corrections of model findings, stored as labelled data with their provenance.

A finding marked wrong, a finding confirmed, a missed finding added, a mask edited with a
brush or eraser: each becomes one :class:`Correction` appended to a JSON-lines file in
the user's corrections folder (:func:`cxr_viewer.core.paths.user_corrections_dir`; its
own file, apart from any result store). Each line says which image (path and pixel
hash), which patient (kept, so the trainer can split by patient), which finding, what the
reader says (present / absent / unsure), what the model said (model, version, weights
sha256, score, state, site profile) and when.

:meth:`CorrectionStore.export_manifest` writes the trainer's CSV manifest (``image``,
``patient_id``, ``dataset``, optional ``mask``, one column per finding, blank = unknown):
the latest word on each (image, finding) counts. The patient IDs are data here; they are
never logged.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import CXRError

if TYPE_CHECKING:
    import numpy as np

    from cxr_viewer.core.inference.results import Finding

log = logging.getLogger(__name__)

__all__ = ["KINDS", "Correction", "CorrectionStore", "CorrectionError"]

KINDS = ("confirmed", "marked_wrong", "added", "mask_edit", "label")
STORE_FILE = "corrections.jsonl"
#: Limits on what a line of the store may hold: it is read back and exported, so it is checked like any input.
MAX_LINE_BYTES = 64 << 10
MAX_LINE_DEPTH = 4
MAX_TEXT = 4096


class CorrectionError(CXRError):
    code = "invalid_correction"


@dataclass(frozen=True)
class Correction:
    image: str
    label: str
    value: float | None  # 1 = present, 0 = absent, None = unsure
    kind: str = "label"
    patient_id: str = ""
    content_hash: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # name, version, sha256
    model_score: float | None = None
    model_state: str = ""
    site_profile: str = ""
    mask: str = ""
    reader: str = ""
    note: str = ""
    time: str = ""

    def __post_init__(self) -> None:
        texts = ("image", "label", "kind", "patient_id", "content_hash", "model_state", "site_profile", "mask",
                 "reader", "note", "time")
        if not all(isinstance(getattr(self, k), str) and len(getattr(self, k)) <= MAX_TEXT for k in texts):
            raise CorrectionError(f"A correction's texts must be text of at most {MAX_TEXT} characters.")
        if not isinstance(self.model, dict) or not all(isinstance(v, (str, int, float, type(None)))
                                                       for v in self.model.values()):
            raise CorrectionError("A correction's model must be an object of plain values.")
        if self.model_score is not None and (isinstance(self.model_score, bool) or not isinstance(
                self.model_score, (int, float)) or not 0.0 <= float(self.model_score) <= 1.0):
            raise CorrectionError("A correction's model score must be a number in [0, 1].")
        if self.kind not in KINDS:
            raise CorrectionError(f"Unknown correction kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        if self.value not in (None, 0.0, 1.0):
            raise CorrectionError(f"A correction says present (1), absent (0) or unsure, not {self.value!r}.")
        if not self.image or not self.label:
            raise CorrectionError("A correction needs the image and the finding it is about.")


class CorrectionStore:
    """Append-only JSON lines; one writer at a time (the viewer), read by the export."""

    def __init__(self, folder: str | Path | None = None) -> None:
        from cxr_viewer.core.paths import user_corrections_dir

        self.folder = Path(folder) if folder is not None else user_corrections_dir()
        self.path = self.folder / STORE_FILE

    # ------------------------------------------------------------------ writing
    def add(self, correction: Correction) -> Correction:
        if not correction.time:
            from dataclasses import replace

            correction = replace(correction, time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps(asdict(correction), allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.info("correction stored: %s (%s)", correction.label, correction.kind)
        return correction

    def add_for_finding(
        self, image: str | Path, finding: "Finding", *, correct: bool | None, patient_id: str = "",
        content_hash: str = "", model_sha256: str = "", reader: str = "", note: str = "",
    ) -> Correction:  # fmt: skip
        """The reader's verdict on a finding the viewer showed: right, wrong, or unsure (``None``).

        The stored label is what the reader says is true: a score above its threshold marked
        wrong is stored absent, one below it marked wrong present.
        """
        shown = 1.0 if finding.above_threshold else 0.0  # what the score said against its threshold
        value = None if correct is None else (shown if correct else 1.0 - shown)
        profile = finding.threshold_method.split(":")[0].removeprefix("site profile ") if \
            finding.threshold_method.startswith("site profile ") else ""  # fmt: skip
        return self.add(Correction(
            image=str(Path(image).resolve()), label=finding.label, value=value,
            kind="label" if correct is None else ("confirmed" if correct else "marked_wrong"),
            patient_id=str(patient_id), content_hash=content_hash,
            model={"name": finding.model, "version": finding.model_version, "sha256": model_sha256},
            model_score=float(finding.score), model_state=finding.state, site_profile=profile, reader=reader, note=note,
        ))  # fmt: skip

    def add_label(
        self, image: str | Path, label: str, value: float | None, *, patient_id: str = "", content_hash: str = "",
        finding: "Finding | None" = None, model_sha256: str = "", site_profile: str = "", reader: str = "",
        note: str = "",
    ) -> Correction:  # fmt: skip
        """The reader's own label of a finding on a film: present (1), absent (0) or unsure (``None``).

        ``finding``: what the model said about it (score, state, model), kept as provenance.
        """
        model: dict[str, Any] = {}
        score, state = None, ""
        if finding is not None:
            model = {"name": finding.model, "version": finding.model_version, "sha256": model_sha256}
            score, state = float(finding.raw_score if finding.raw_score is not None else finding.score), finding.state
        return self.add(Correction(
            image=str(Path(image).resolve()), label=label, value=value, kind="label", patient_id=str(patient_id),
            content_hash=content_hash, model=model, model_score=score, model_state=state, site_profile=site_profile,
            reader=reader, note=note,
        ))  # fmt: skip

    def add_missed(self, image: str | Path, label: str, *, patient_id: str = "", content_hash: str = "",
                   reader: str = "", note: str = "") -> Correction:  # fmt: skip
        """A finding the models did not report, added by the reader."""
        return self.add(Correction(str(Path(image).resolve()), label, 1.0, "added", str(patient_id), content_hash,
                                   reader=reader, note=note))  # fmt: skip

    def add_mask(self, image: str | Path, label: str, mask: "np.ndarray", *, patient_id: str = "",
                 content_hash: str = "", reader: str = "", note: str = "") -> Correction:  # fmt: skip
        """A report-mask edited with the brush or eraser: saved as a 0/255 PNG beside the store."""
        import numpy as np
        from PIL import Image

        m = np.asarray(mask)
        if m.ndim != 2 or m.size == 0:
            raise CorrectionError("An edited mask must be a 2-D image.")
        masks = self.folder / "masks"
        masks.mkdir(parents=True, exist_ok=True)
        stem = (content_hash or Path(image).stem)[:16]
        n = len(list(masks.glob(f"{stem}_*.png")))
        out = masks / f"{stem}_{''.join(c if c.isalnum() else '_' for c in label)}_{n}.png"
        from cxr_viewer.core.staging import staged_file

        with staged_file(out) as part:
            Image.fromarray(np.where(m > 0, 255, 0).astype(np.uint8), mode="L").save(part, format="PNG")
        return self.add(Correction(str(Path(image).resolve()), label, 1.0 if (m > 0).any() else 0.0, "mask_edit",
                                   str(patient_id), content_hash, mask=str(out), reader=reader, note=note))  # fmt: skip

    # ------------------------------------------------------------------ reading
    def all(self) -> list[Correction]:
        if not self.path.is_file():
            return []
        from cxr_viewer.core.jsonio import loads_limited

        out = []
        with open(self.path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    d = loads_limited(raw, max_bytes=MAX_LINE_BYTES, max_depth=MAX_LINE_DEPTH)
                    if not isinstance(d, dict):
                        raise CorrectionError("a line must be a JSON object")
                    out.append(Correction(**d))
                except (ValueError, TypeError, CXRError) as exc:
                    log.warning("corrections line %d skipped: %s", n, str(getattr(exc, "message", exc))[:200])
        return out

    def latest(self) -> dict[tuple[str, str], Correction]:
        """The last word on each (image, finding)."""
        return {(c.image, c.label): c for c in self.all()}

    def labelled_rows(self, model_labels: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """The films the reader labelled, as the site calibration's labelled set.

        Same shape as :func:`cxr_viewer.core.site.labels.read_site_labels`:
        ``[{image, patient_id, labels: {finding: 1.0 | 0.0 | nan}}]`` and the findings found
        (the model's labels the reader said something about, matched in any case). The latest
        word on each (image, finding) counts; unsure = unknown; films no longer on disk are left out.
        """
        import math

        by_lower = {str(lab).lower(): str(lab) for lab in model_labels}
        rows: dict[str, dict[str, Any]] = {}
        for (image, lab), c in self.latest().items():
            model_lab = by_lower.get(lab.lower())
            if model_lab is None or c.kind == "mask_edit" or not Path(image).is_file():
                continue
            row = rows.setdefault(image, {"image": image, "patient_id": "", "labels": {}})
            row["patient_id"] = c.patient_id or row["patient_id"] or c.content_hash or Path(image).stem
            row["labels"][model_lab] = math.nan if c.value is None else float(c.value)
        found = [lab for lab in by_lower.values() if any(lab in r["labels"] for r in rows.values())]
        for r in rows.values():
            for lab in found:
                r["labels"].setdefault(lab, math.nan)
        return list(rows.values()), found

    def refusal(self, c: Correction, roots: Sequence[Path] = ()) -> str:
        """Why ``c``'s paths cannot go into a trainer manifest ("" when they can).

        The image must be an absolute path without ``..``, inside one of ``roots`` (the study
        folders) when given, and an image file the viewer can read; an edited mask must be a
        PNG in this store's own ``masks`` folder.
        """
        from cxr_viewer.core.io.sniff import sniff_file

        image = Path(c.image)
        if not image.is_absolute() or ".." in image.parts or "\x00" in c.image:
            return "the image path is not an absolute path of a study file"
        real = image.resolve()
        if roots and not any(real.is_relative_to(r) for r in roots):
            return "the image lies outside the study folders"
        try:
            if not real.is_file() or sniff_file(real) is None:
                return "the image is not an image file"
        except OSError:
            return "the image cannot be read"
        if c.mask:
            masks = (self.folder / "masks").resolve()
            mask = Path(c.mask)
            if ".." in mask.parts or "\x00" in c.mask or not mask.resolve().is_relative_to(masks) \
                    or mask.suffix.lower() != ".png":
                return "the mask lies outside the corrections' masks folder"
        return ""

    def export_manifest(self, out: str | Path, *, dataset: str = "site", labels: Iterable[str] | None = None,
                        roots: Iterable[str | Path] = ()) -> dict[str, Any]:
        """Write the trainer manifest; returns counts. Unsure answers leave the cell blank.

        ``roots``: the study folders the corrected films belong to; a correction whose image lies
        outside them (or is no image), or whose mask lies outside the store's masks folder, is left
        out and counted under ``refused``.
        """
        latest = self.latest()
        if not latest:
            raise CorrectionError(f"No corrections are stored yet (looked in {self.path}).")
        study_roots = [Path(r).resolve() for r in roots]
        wanted = list(labels) if labels is not None else sorted({lab for _, lab in latest})
        rows: dict[str, dict[str, Any]] = {}
        refused: dict[str, int] = {}
        for (image, lab), c in latest.items():
            if lab not in wanted:
                continue
            why = self.refusal(c, study_roots)
            if why:
                refused[why] = refused.get(why, 0) + 1
                continue
            row = rows.setdefault(image, {"image": image, "patient_id": "", "dataset": dataset, "mask": ""})
            row["patient_id"] = c.patient_id or row["patient_id"] or c.content_hash or Path(image).stem
            if c.kind == "mask_edit":
                row["mask"] = c.mask
            row[lab] = "" if c.value is None else int(c.value)
        if not rows:
            raise CorrectionError("No stored correction can be exported: " + "; ".join(
                f"{n} refused ({why})" for why, n in refused.items()) + ".")
        from cxr_viewer.core.csvio import write_csv_rows

        out = Path(out)
        cols = ["image", "patient_id", "dataset", *(["mask"] if any(r["mask"] for r in rows.values()) else []), *wanted]
        write_csv_rows(out, cols, ([r.get(c, "") for c in cols] for r in rows.values()))
        counts = {lab: {"positive": sum(1 for r in rows.values() if r.get(lab) == 1),
                        "negative": sum(1 for r in rows.values() if r.get(lab) == 0)} for lab in wanted}  # fmt: skip
        return {"manifest": str(out), "images": len(rows), "patients": len({r["patient_id"] for r in rows.values()}),
                "labels": counts, "refused": refused}  # fmt: skip
