"""The one-page report (PDF or PNG) and the view with overlays, drawn with matplotlib (Agg, no pyplot).

The record of one read film (:class:`~cxr_viewer.core.export.record.ClinicalRecord`):
on every page a header identifying the patient and study (none when the record is
anonymised); the key image with the overlays the reader had on (heatmap with its colour
bar, report masks, measurements); the findings table from the one judged result
(display name, score, threshold in force and its source, the state exactly as the viewer
shows it, POSITIVE first, one footnote per state present, the change since the prior when
current | prior was open); QC flags, the models (name, version, weights sha256), the site
profile; then the measurements and the report sentences with their regions.

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

    from cxr_viewer.core.export.clinical import ClinicalRecord
    from cxr_viewer.core.inference.results import AnalysisResult
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.judging import JudgedResult

__all__ = ["Overlay", "RESEARCH_NOTICE", "ViewPicture", "findings_rows", "overlays_from", "render_view", "render_view_picture",
           "write_record_pdf", "write_report"]

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


def _draw_annotations(ax: Any, annotations: Sequence[Any], colour: str = "#00e5ff") -> None:
    """The reader's measurements as the viewer draws them: lines through their points and the value."""
    from cxr_viewer.core.export.measurements import measurement_rows

    for row in measurement_rows(annotations):
        ann = row.annotation
        pts = list(ann.points)
        if row.kind == "ctr":
            segments = [list(ann.cardiac), list(ann.thoracic)]
        elif row.kind == "roi":
            from matplotlib.patches import Ellipse, Rectangle

            (r0, c0), (r1, c1) = ann.p0, ann.p1
            xy, w, h = (min(c0, c1), min(r0, r1)), abs(c1 - c0), abs(r1 - r0)
            patch = (Ellipse((xy[0] + w / 2, xy[1] + h / 2), w, h, fill=False, edgecolor=colour, linewidth=1.0)
                     if ann.shape == "ellipse" else Rectangle(xy, w, h, fill=False, edgecolor=colour, linewidth=1.0))
            ax.add_patch(patch)
            segments = []
        else:
            segments = [pts]
        for seg in segments:
            ax.plot([p[1] for p in seg], [p[0] for p in seg], color=colour, linewidth=1.0, marker="+", markersize=4)
        r, c = pts[-1]
        ax.annotate(row.name.split(" (")[0], (c, r), xytext=(3, 3), textcoords="offset points", fontsize=6,
                    color=colour)


def _draw_image(ax: Any, record: "ImageRecord", overlays: Sequence[Overlay], window: tuple[float, float] | None,
                annotations: Sequence[Any] = ()) -> None:  # fmt: skip
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
    _draw_annotations(ax, annotations)
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
    annotations: Sequence[Any] = (),
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
    _draw_image(ax, record, overlays, window, annotations)
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


_STATE_COLOUR = {"positive": _POS, "above_not_validated": "#b9770e", "outside_population": "#6c3483",
                 "not_applicable": "#7f8c8d"}


def findings_rows(rec: "ClinicalRecord") -> list[list[str]]:
    """The findings table as printed: report order, display names, the state's own text."""
    rows = []
    for j in rec.judged.in_report_order():
        f = j.finding
        name = j.display_name + ("" if f.trained else " [untrained]")
        score = f"{f.score:.3f}" if j.state.value != "not_applicable" else "n/a"
        row = [name, _short(f.model, 23), score, f"{f.threshold:.3f}", j.source_text, j.state_text]
        if rec.prior is not None:
            row.append(rec.prior.text(f.model, f.label))
        rows.append(row)
    return rows


def _header(fig: "Figure", rec: "ClinicalRecord", page: int, pages: int) -> float:
    """Title, identification block and notice at the top of every page; returns where the body starts."""
    fig.text(0.05, 0.975, rec.title, fontsize=14, weight="bold", va="top")
    fig.text(0.95, 0.975, f"page {page} of {pages}", fontsize=7, color="#666666", va="top", ha="right")
    y = 0.952
    ident = rec.identification
    if ident is not None:
        for line in ident.lines():
            fig.text(0.05, y, line, fontsize=8.5, va="top", weight="bold" if line.startswith("Patient") else None)
            y -= 0.015
    md = rec.record.metadata or {}
    study_bits = [b for b in (  # no date here: an anonymised page carries none
        md.get("modality") and f"modality {md.get('modality')}",
        md.get("view_position") and f"view {md.get('view_position')}",
        f"{rec.record.shape[1]}×{rec.record.shape[0]} px",
        f"image sha256 {rec.judged.content_hash[:16]}…",
    ) if b]
    fig.text(0.05, y, " · ".join(study_bits), fontsize=7.5, color="#444444", va="top")
    y -= 0.015
    fig.text(0.05, y, RESEARCH_NOTICE, fontsize=8.5, color=_POS, weight="bold", va="top")
    fig.add_artist(_rule(fig, y - 0.014))
    return y - 0.022


def _rule(fig: "Figure", y: float) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([0.05, 0.95], [y, y], transform=fig.transFigure, color="#bbbbbb", linewidth=0.6)


def _table(fig: "Figure", top: float, rows: list[list[str]], cols: list[str], widths: list[float],
           colour_col: int | None = None, states: list[str] | None = None) -> float:  # fmt: skip
    """A table whose top sits at ``top``; returns the y below it."""
    row_h = 0.0175
    height = row_h * (len(rows) + 1)
    tax = fig.add_axes((0.05, top - height, 0.90, height))
    tax.set_axis_off()
    table = tax.table(cellText=rows, colLabels=cols, loc="upper center", cellLoc="left", colWidths=widths,
                      bbox=(0, 0, 1, 1))
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("#dddddd")
        if r == 0:
            cell.set_facecolor("#eeeeee")
            cell.get_text().set_weight("bold")
        elif colour_col is not None and c == colour_col and states is not None:
            state = states[r - 1]
            if state == "positive":
                cell.set_facecolor(_POS)
                cell.get_text().set_color("white")
            else:
                cell.set_facecolor("#f4f6f6")
                cell.get_text().set_color(_STATE_COLOUR.get(state, _NEG))
            cell.get_text().set_weight("bold")
    return top - height - 0.01


def _text_block(fig: "Figure", y: float, lines: Sequence[str], *, x: float = 0.05, size: float = 7.5,
                width: int = 120, colour: str = "#222222") -> float:  # fmt: skip
    for text in lines:
        for line in _wrap(text, width):
            fig.text(x, y, line, fontsize=size, va="top", color=colour)
            y -= 0.0135 * size / 7.5
    return y


def _side_column(fig: "Figure", rec: "ClinicalRecord", y: float) -> None:
    result = rec.judged
    fig.text(0.60, y, "Image quality (QC)", fontsize=10, weight="bold", va="top")
    y -= 0.02
    if not result.qc:
        fig.text(0.60, y, "No quality flags.", fontsize=8, va="top")
        y -= 0.016
    for q in result.qc:
        colour = {"error": _POS, "warning": "#b9770e"}.get(q.severity, "#333333")
        fig.text(0.60, y, f"[{q.severity}] {q.code}", fontsize=8, color=colour, weight="bold", va="top")
        y -= 0.014
        y = _text_block(fig, y, [q.message], x=0.62, size=7, width=52)
    y -= 0.008
    fig.text(0.60, y, "Models", fontsize=10, weight="bold", va="top")
    y -= 0.02
    backend = result.result.backend
    for m in result.models:
        fig.text(0.60, y, f"{m.get('name', '?')} {m.get('version', '')}"
                 + ("" if m.get("trained", True) else " [untrained]")
                 + (f" ({backend[m['name']]})" if m.get("name") in backend else ""),
                 fontsize=8, weight="bold", va="top")
        y -= 0.013
        sha = str(m.get("sha256") or "")
        for line in (sha[:32], sha[32:]) if sha else ("sha256 unknown",):
            fig.text(0.62, y, line, fontsize=6.5, family="monospace", va="top")
            y -= 0.011
        y -= 0.004
    if result.site_profile is not None:  # the scores and thresholds are the site's: say whose
        from cxr_viewer.core.site.profile import profile_text

        fig.text(0.60, y, "Site calibration profile", fontsize=10, weight="bold", va="top")
        y -= 0.018
        _text_block(fig, y, [profile_text(result.site_profile)], x=0.62, size=7, width=52)
    elif result.site_profile_message:
        fig.text(0.60, y, "Site profile not applied", fontsize=10, weight="bold", va="top")
        _text_block(fig, y - 0.018, [result.site_profile_message], x=0.62, size=7, width=52)


def _second_page_needed(rec: "ClinicalRecord") -> bool:
    return bool(rec.annotations or rec.report_text.strip() or rec.masks)


def _page_one(rec: "ClinicalRecord", overlays: Sequence[Overlay], pages: int) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_A4, dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    top = _header(fig, rec, 1, pages)
    img_h = 0.40
    ax = fig.add_axes((0.05, top - img_h, 0.50, img_h))
    _draw_image(ax, rec.record, overlays, rec.window, rec.annotations)
    _side_column(fig, rec, top)
    y = top - img_h - 0.035 - 0.012 * sum(o.kind == "mask" for o in overlays)
    title = "Findings"
    if rec.prior is not None:
        title += f" (change since the prior of {_iso_date(rec.prior.prior_date) or rec.prior.prior_date})"
    fig.text(0.05, y, title, fontsize=11, weight="bold", va="top")
    y -= 0.02
    rows = findings_rows(rec)
    if rows:
        cols = ["Finding", "Model", "Score", "Threshold", "Source", "Result"]
        widths = [0.25, 0.25, 0.08, 0.10, 0.11, 0.21]
        if rec.prior is not None:
            cols.append("Prior → now")
            widths = [0.21, 0.21, 0.07, 0.09, 0.10, 0.19, 0.13]
        states = [j.state.value for j in rec.judged.in_report_order()]
        y = _table(fig, y, rows, cols, widths, colour_col=5, states=states)
    else:
        fig.text(0.05, y, "No findings: no classifier model was loaded.", fontsize=9, va="top")
        y -= 0.02
    _text_block(fig, y, rec.judged.footnotes(), size=6.5, width=150, colour="#444444")
    fig.text(0.5, 0.012, "cxr-viewer · " + RESEARCH_NOTICE + " Scores are judged against each finding's operating "
             "threshold; they are not a diagnosis.", ha="center", fontsize=6.5, color="#666666")
    return fig


def _page_two(rec: "ClinicalRecord", pages: int) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cxr_viewer.core.export.measurements import measurement_rows

    fig = Figure(figsize=_A4, dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    y = _header(fig, rec, 2, pages)
    fig.text(0.05, y, "Measurements", fontsize=11, weight="bold", va="top")
    y -= 0.02
    rows = [[r.name, r.value] for r in measurement_rows(rec.annotations)]
    if rows:
        y = _table(fig, y, rows, ["Measurement", "Value"], [0.25, 0.75])
    else:
        y = _text_block(fig, y, ["No measurements were made."])
    y -= 0.015
    fig.text(0.05, y, "Report", fontsize=11, weight="bold", va="top")
    y -= 0.02
    if rec.report_text.strip():
        y = _text_block(fig, y, [rec.report_text.strip()], size=8, width=120)
        y -= 0.01
    drawn, empty = rec.drawn_masks(), rec.empty_masks()
    if drawn or empty:
        fig.text(0.05, y, "Regions drawn from the report", fontsize=9, weight="bold", va="top")
        y -= 0.018
        y = _text_block(fig, y, [f"• {_short(m.text, 110)}: region shown on the key image" for m in drawn]
                        + [f"• {_short(m.text, 110)}: nothing found (no region drawn)" for m in empty])
    elif not rec.report_text.strip():
        y = _text_block(fig, y, ["No report text was entered."])
    fig.text(0.5, 0.012, "cxr-viewer · " + RESEARCH_NOTICE, ha="center", fontsize=6.5, color="#666666")
    return fig


def _iso_date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if len(d) == 8 and d.isdigit() else ""


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(str(text), width) or [""]


def write_record_pdf(rec: "ClinicalRecord", path: str | Path) -> Path:
    """Write the record; ``.pdf`` gives every page, ``.png`` the first page at 150 dpi."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in {"pdf", "png"}:
        raise ValueError("the report file must end in .pdf or .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    overlays = overlays_from(rec.drawn_masks(), rec.heatmap)
    pages = 2 if _second_page_needed(rec) else 1
    figures = [_page_one(rec, overlays, pages)]
    if pages == 2:
        figures.append(_page_two(rec, pages))
    from cxr_viewer.core.staging import staged_file

    with staged_file(path) as part:  # a kill or a failure never leaves a part of a report at its name
        if fmt == "png":
            figures[0].savefig(part, format="png", dpi=150)
            return path
        from matplotlib.backends.backend_pdf import PdfPages

        with PdfPages(part, metadata={"Title": rec.title, "Creator": "cxr-viewer"}) as pdf:
            for fig in figures:
                pdf.savefig(fig)
    return path


def write_report(
    record: "ImageRecord",
    result: "AnalysisResult | JudgedResult",
    path: str | Path,
    *,
    masks: Sequence[Any] | None = None,
    heatmap: Any = None,
    window: tuple[float, float] | None = None,
    title: str = "Chest X-ray analysis",
    annotations: Sequence[Any] = (),
) -> Path:
    """The record without identification (an anonymised page): see :func:`write_record_pdf`."""
    from cxr_viewer.core.export.clinical import ClinicalRecord
    from cxr_viewer.core.judging import judged_from

    rec = ClinicalRecord(record, judged_from(result), None, tuple(annotations), tuple(masks or ()), heatmap, window,
                         title=title)
    return write_record_pdf(rec, path)
