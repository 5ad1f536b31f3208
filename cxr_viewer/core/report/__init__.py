"""Report text -> sections -> sentences -> the regions they name (no torch, no Qt)."""

from __future__ import annotations

from cxr_viewer.core.report.parse import SECTION_NAMES, Report, Section, Sentence, parse_report, split_sentences
from cxr_viewer.core.report.regions import LUNG_STRUCTURES, Region, RegionReading, region_phrases

__all__ = [
    "LUNG_STRUCTURES",
    "SECTION_NAMES",
    "Region",
    "RegionReading",
    "Report",
    "Section",
    "Sentence",
    "parse_report",
    "region_phrases",
    "split_sentences",
]
