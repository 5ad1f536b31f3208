"""The one-page report (PDF or PNG) and the view with overlays, drawn with matplotlib (Agg, no pyplot).

One page: the image with its active overlays and their legends, the findings table
(score, threshold and how it was chosen, a POSITIVE/negative badge), QC flags, the
models that produced the scores (name, version, weights sha256) and "research use
only". The page carries no patient name or ID, so the same file serves an
anonymised export; the study is named by its date and the image's format.

:func:`render_view` is also the Secondary Capture picture of
:mod:`cxr_viewer.core.export.dicom_results` (image + overlays + legends, RGB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cxr_viewer.core.inference.results import AnalysisResult
    from cxr_viewer.core.io.record import ImageRecord

__all__ = ["Overlay", "RESEARCH_NOTICE", "ViewPicture", "overlays_from", "render_view", "render_view_picture", "write_report"]

RESEARCH_NOTICE = "Research use only. Not a medical device. Not for diagnosis."
_A4 = (8.27, 11.69)
_POS = "#c0392b"
_NEG = "#5d6d7e"


@dataclass(frozen=True, eq=False)
class Overlay:
    """One drawable layer: a report mask (bool) or a heatmap (float in [0, 1]) with its legend text."""

    text: str
    values: np.ndarray
    colour: tuple[int, int, int] = (0, 200, 255)
    kind: str = "mask"  # mask | heatmap
    style: str = "contour"  # masks: contour | fill
    opacity: float = 0.45
    colormap: str = "jet"


@dataclass(frozen=True, eq=False)
class ViewPicture:
    """An RGB picture of the view and whether it shows the patient's identity (e.g. the viewer's corner text)."""

    rgb: np.ndarray
    shows_identity: bool


def overlays_from(masks: Sequence[Any] | None = None, heatmap: Any = None) -> list[Overlay]:
    """Overlays from what the engine and the session hold.

    ``masks``: :class:`~cxr_viewer.core.inference.segment.Mask` or session ``MaskLayer`` items (hidden
    layers are skipped); ``heatmap``: a :class:`~cxr_viewer.core.inference.results.Heatmap` or a
    session ``HeatmapLayer``.
    """
    out: list[Overlay] = []
    if heatmap is not None and getattr(heatmap, "visible", True):
        values = getattr(heatmap, "values", None)
        if values is None:
            values = heatmap.data
        text = " ".join(p for p in (heatmap.label, f"({heatmap.method})" if heatmap.method else "") if p)
        if getattr(heatmap, "faithfulness", None) is not None:
            text += f", faithfulness {heatmap.faithfulness:.2f}"
        out.append(Overlay(text=text or "heatmap", values=np.asarray(values, dtype=np.float32), kind="heatmap",
                           opacity=float(getattr(heatmap, "opacity", 0.45)),
                           colormap=str(getattr(heatmap, "colormap", "jet"))))
    for m in masks or ():
        if not getattr(m, "visible", True):
            continue
        binary = m.binary() if hasattr(m, "binary") else np.asarray(m.mask, dtype=bool)
        colour = tuple(getattr(m, "colour", None) or getattr(m, "color", (0, 200, 255)))
        out.append(Overlay(text=m.text, values=np.asarray(binary, dtype=bool), colour=colour,  # type: ignore[arg-type]
                           style=str(getattr(m, "style", "contour")), opacity=float(getattr(m, "opacity", 0.5))))
    return out


def _display_pixels(record: "ImageRecord", window: tuple[float, float] | None) -> np.ndarray:
    if window is None:
        return record.model_pixels()
    lo, hi = window
    return np.clip((record.pixels - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _resized(values: np.ndarray, shape: tuple[int, int], *, nearest: bool) -> np.ndarray:
    if values.shape == shape:
        return values
    import cv2

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = cv2.resize(values.astype(np.float32), (shape[1], shape[0]), interpolation=interp)
    return out > 0.5 if values.dtype == bool else out


def _draw_image(ax: Any, record: "ImageRecord", overlays: Sequence[Overlay], window: tuple[float, float] | None) -> None:
    from matplotlib.patches import Patch

    ax.imshow(_display_pixels(record, window), cmap="gray", vmin=0.0, vmax=1.0, interpolation="lanczos")
    handles = []
    for ov in overlays:
        if ov.kind == "heatmap":
            heat = _resized(ov.values, record.shape, nearest=False)
            im = ax.imshow(np.ma.masked_less(heat, 0.05), cmap=ov.colormap, vmin=0.0, vmax=1.0, alpha=ov.opacity)
            cbar = ax.figure.colorbar(im, ax=ax, fraction=0.035, pad=0.01)
            cbar.set_label(ov.text, fontsize=7)
            cbar.ax.tick_params(labelsize=6)
            continue
        mask = _resized(ov.values, record.shape, nearest=True)
        rgb = tuple(c / 255.0 for c in ov.colour)
        if ov.style == "fill":
            rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
            rgba[mask] = (*rgb, ov.opacity)
            ax.imshow(rgba)
        if mask.any():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[rgb], linewidths=1.2)
        handles.append(Patch(facecolor=rgb, edgecolor=rgb, label=_short(ov.text, 70)))
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=7, frameon=False,
                  ncol=1, handlelength=1.2)
    ax.set_axis_off()


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_view(
    record: "ImageRecord",
    *,
    masks: Sequence[Any] | None = None,
    heatmap: Any = None,
    window: tuple[float, float] | None = None,
    width_px: int = 1024,
) -> np.ndarray:
    """The image with its overlays and legends as an RGB uint8 array (the Secondary Capture picture)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    overlays = overlays_from(masks, heatmap)
    n_legend = sum(o.kind == "mask" for o in overlays)
    h, w = record.shape
    fig_w = 8.0
    legend_in = 0.2 * n_legend + (0.15 if n_legend else 0.0)
    fig = Figure(figsize=(fig_w, fig_w * h / w + legend_in + 0.35), dpi=width_px / fig_w, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, (legend_in + 0.25) / fig.get_figheight(), 0.98,
                       1 - (legend_in + 0.3) / fig.get_figheight()))
    _draw_image(ax, record, overlays, window)
    leg = ax.get_legend()
    if leg is not None:
        for t in leg.get_texts():
            t.set_color("white")
    fig.text(0.5, 0.005, "cxr-viewer · " + RESEARCH_NOTICE, ha="center", va="bottom", fontsize=7, color="#bbbbbb")
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def render_view_picture(record: "ImageRecord", **kwargs: Any) -> ViewPicture:
    """:func:`render_view` as a :class:`ViewPicture` (it draws no patient identity)."""
    return ViewPicture(render_view(record, **kwargs), shows_identity=False)


def _findings_rows(result: "AnalysisResult") -> list[list[str]]:
    rows = []
    for f in result.findings:
        method = f.threshold_method or "—"
        label = f.label + ("" if f.trained else " [untrained]") + ("" if f.validated is not False else " *")
        rows.append([label, f.model, f"{f.score:.3f}", f"{f.threshold:.3f}", _short(method, 26),
                     "POSITIVE" if f.positive else "negative"])
    return rows


def _build_page(
    record: "ImageRecord",
    result: "AnalysisResult",
    overlays: Sequence[Overlay],
    window: tuple[float, float] | None,
    title: str,
) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_A4, dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    fig.text(0.05, 0.972, title, fontsize=15, weight="bold", va="top")
    md = record.metadata or {}
    study_bits = [b for b in (
        _iso_date(str(md.get("study_date") or "")) and f"study date {_iso_date(str(md.get('study_date')))}",
        md.get("modality") and f"modality {md.get('modality')}",
        md.get("view_position") and f"view {md.get('view_position')}",
        f"{record.shape[1]}×{record.shape[0]} px",
        f"image sha256 {result.content_hash[:16]}…",
    ) if b]
    fig.text(0.05, 0.945, " · ".join(study_bits), fontsize=8, color="#444444", va="top")
    fig.text(0.05, 0.928, RESEARCH_NOTICE, fontsize=9, color=_POS, weight="bold", va="top")

    ax = fig.add_axes((0.05, 0.50, 0.50, 0.41))
    _draw_image(ax, record, overlays, window)

    # Right column: QC flags and models.
    y = 0.905
    fig.text(0.60, y, "Image quality (QC)", fontsize=10, weight="bold", va="top")
    y -= 0.022
    if not result.qc:
        fig.text(0.60, y, "No quality flags.", fontsize=8, va="top")
        y -= 0.018
    for q in result.qc:
        colour = {"error": _POS, "warning": "#b9770e"}.get(q.severity, "#333333")
        fig.text(0.60, y, f"[{q.severity}] {q.code}", fontsize=8, color=colour, weight="bold", va="top")
        y -= 0.015
        for line in _wrap(q.message, 52):
            fig.text(0.62, y, line, fontsize=7, va="top")
            y -= 0.013
    if not result.reliable:
        fig.text(0.60, y, "Scores should not be read for this image.", fontsize=8, color=_POS, va="top")
        y -= 0.018
    y -= 0.01
    fig.text(0.60, y, "Models", fontsize=10, weight="bold", va="top")
    y -= 0.022
    for m in result.models:
        fig.text(0.60, y, f"{m.get('name', '?')} {m.get('version', '')}"
                 + ("" if m.get("trained", True) else " [untrained]")
                 + (f" ({result.backend[m['name']]})" if m.get("name") in result.backend else ""),
                 fontsize=8, weight="bold", va="top")
        y -= 0.014
        sha = str(m.get("sha256") or "")
        for line in (sha[:32], sha[32:]) if sha else ("sha256 unknown",):
            fig.text(0.62, y, line, fontsize=6.5, family="monospace", va="top")
            y -= 0.012
        y -= 0.004
    if result.site_profile is not None:  # the scores and thresholds are the site's: say whose
        from cxr_viewer.core.site_profile import profile_text

        fig.text(0.60, y, "Site calibration profile", fontsize=10, weight="bold", va="top")
        y -= 0.02
        for line in _wrap(profile_text(result.site_profile), 52):
            fig.text(0.62, y, line, fontsize=7, va="top")
            y -= 0.013

    # Findings table across the page.
    fig.text(0.05, 0.475, "Findings", fontsize=11, weight="bold", va="top")
    rows = _findings_rows(result)
    tax = fig.add_axes((0.05, 0.06, 0.90, 0.40))
    tax.set_axis_off()
    if rows:
        cols = ["Finding", "Model", "Score", "Threshold", "Operating point", "Result"]
        table = tax.table(cellText=rows, colLabels=cols, loc="upper center", cellLoc="left",
                          colWidths=[0.23, 0.26, 0.08, 0.10, 0.19, 0.12])
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
        table.scale(1.0, 1.25)
        for (r, c), cell in table.get_celld().items():
            cell.set_edgecolor("#dddddd")
            if r == 0:
                cell.set_facecolor("#eeeeee")
                cell.get_text().set_weight("bold")
            elif c == 5:
                positive = rows[r - 1][5] == "POSITIVE"
                cell.set_facecolor(_POS if positive else "#f4f6f6")
                cell.get_text().set_color("white" if positive else _NEG)
                cell.get_text().set_weight("bold")
    else:
        tax.text(0.0, 1.0, "No findings: no classifier model was loaded.", fontsize=9, va="top")
    if any(f.validated is False for f in result.findings):
        notes = {f.note for f in result.findings if f.validated is False and f.note}
        fig.text(0.05, 0.05, "* not fully validated: " + " ".join(sorted(notes)), fontsize=6.5, va="bottom",
                 wrap=True, color="#444444")
    fig.text(0.5, 0.015, "cxr-viewer · " + RESEARCH_NOTICE + " Scores are judged against each model's operating "
             "threshold; they are not a diagnosis.", ha="center", fontsize=6.5, color="#666666")
    return fig


def _iso_date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if len(d) == 8 and d.isdigit() else ""


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(str(text), width) or [""]


def write_report(
    record: "ImageRecord",
    result: "AnalysisResult",
    path: str | Path,
    *,
    masks: Sequence[Any] | None = None,
    heatmap: Any = None,
    window: tuple[float, float] | None = None,
    title: str = "Chest X-ray analysis",
) -> Path:
    """Write the one-page report; ``.pdf`` gives a PDF, ``.png`` a 150 dpi PNG of the same page."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in {"pdf", "png"}:
        raise ValueError("the report file must end in .pdf or .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _build_page(record, result, overlays_from(masks, heatmap), window, title)
    metadata = {"Title": title, "Creator": "cxr-viewer"} if fmt == "pdf" else None
    fig.savefig(path, format=fmt, dpi=150 if fmt == "png" else 100, metadata=metadata)
    return path
