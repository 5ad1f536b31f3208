"""The site profile's figures: ROC and reliability on the site's own films (matplotlib axes in, drawn).

The trainer's site report and the viewer's site calibration wizard draw the same axes from the
report :func:`cxr_viewer.core.site.fit.fit_site_finding` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["draw_site_axes"]


def draw_site_axes(ax_roc: Any, ax_rel: Any, label: str, r: Mapping[str, Any]) -> None:
    """ROC on the site films with the bundle's and the site's operating points; held-out reliability before/after.

    Takes matplotlib axes (the trainer's report figure and the viewer's wizard draw the same).
    """
    roc = r.get("roc")
    if roc:
        ax_roc.plot(roc["fpr"], roc["tpr"], label=f"site ROC (AUROC {r['auroc']['value']:.2f})")
    for key, mark, text in (("before", "o", "model threshold"), ("after", "s", "site threshold")):
        op = r["held_out"][key]
        if op["specificity"] is not None and op["sensitivity"] is not None:
            ax_roc.plot(1 - op["specificity"], op["sensitivity"], mark, ms=8, label=f"{text} {op['threshold']:.2f}")
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax_roc.set(title=f"{label}: ROC on site films", xlabel="1 - specificity", ylabel="sensitivity",
               xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    ax_roc.legend(fontsize=7, loc="lower right")
    for key, text in (("reliability_before", "before"), ("reliability_after", "after")):
        pts = [(b["mean_score"], b["observed"]) for b in r["held_out"][key] if b["n"]]
        ece = r["held_out"]["ece_" + text]["value"]
        if pts:
            ax_rel.plot(*zip(*pts), marker="o", ms=3, label=f"{text} (ECE {ece:.3f})")
    ax_rel.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax_rel.set(title=f"{label}: reliability, held-out films", xlabel="mean score", ylabel="observed frequency",
               xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    ax_rel.legend(fontsize=7, loc="upper left")
