"""Which anatomical region a report sentence names, and whether it is a negative sentence.

Rule-based on purpose: the vocabulary of chest radiograph reports is small and the
result must be explainable to the radiologist ("drawn because the sentence says
*right lower lobe*").

Documented choice for negative sentences that name a region ("Both lungs are
clear."): the region is kept (``regions`` = both lungs) and ``negative`` is True.
The segmentation model is trained to draw the region a sentence names whatever its
polarity (see ``trainer/data/segmentation.py``), so the viewer draws such a sentence
as the lungs with a *normal* flag, in a neutral colour. Sentences that name no
region ("No acute cardiopulmonary abnormality.", "No pneumothorax.") have
``regions == ()`` and the model is trained to return an empty mask for them.

Zones and lobes: a radiograph shows zones (upper/middle/lower thirds of a lung
field), not lobes; "right lower lobe" is mapped to the right lower zone, which is
what the training masks contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Region", "RegionReading", "region_phrases", "LUNG_STRUCTURES"]

#: Structures the lung-field segmenter can draw (everything else is reported, not drawn).
LUNG_STRUCTURES = frozenset(
    {"lung", "lobe", "zone", "base", "apex", "hemithorax", "costophrenic angle", "lingula", "retrocardiac", "hilum"}
)


@dataclass(frozen=True)
class Region:
    """A region named in a sentence. ``side`` is the PATIENT's side."""

    structure: str
    side: str | None = None  # "left" | "right" | "bilateral" | None (unsided, e.g. heart)
    zone: str | None = None  # "upper" | "middle" | "lower" | None
    text: str = ""  # the words that named it

    @property
    def phrase(self) -> str:
        """A canonical phrase for the region, in the wording the segmenter was trained on."""
        side, zone, st = self.side, self.zone, self.structure
        both = side in (None, "bilateral")
        if st in ("heart", "mediastinum", "hemidiaphragm") and side is None:
            return {"heart": "heart", "mediastinum": "mediastinum", "hemidiaphragm": "both hemidiaphragms"}[st]
        if st == "lung" or (st == "lobe" and zone is None):
            if zone is not None:
                return f"{'both' if both else side} {zone} zone{'s' if both else ''}"
            return "both lungs" if both else f"{side} lung"
        if st in ("lobe", "zone"):
            return f"{'bilateral' if both else side} {zone} {st}{'s' if both else ''}"
        if st == "base":
            return "both lung bases" if both else f"{side} lung base"
        if st == "apex":
            return "both lung apices" if both else f"{side} lung apex"
        if st == "hilum":
            return "both hila" if both else f"{side} hilum"
        if st == "costophrenic angle":
            return "both costophrenic angles" if both else f"{side} costophrenic angle"
        if st == "hemithorax":
            return "both hemithoraces" if both else f"{side} hemithorax"
        if st == "lingula":
            return "lingula"
        if st == "retrocardiac":
            return "retrocardiac region"
        return st if both else f"{side} {st}"


@dataclass(frozen=True)
class RegionReading:
    """What :func:`region_phrases` understood of one sentence."""

    sentence: str
    regions: tuple[Region, ...]
    negative: bool  # asserts absence or normality of everything it mentions
    findings: tuple[str, ...] = ()  # finding words that are asserted (not negated)
    negated_findings: tuple[str, ...] = ()

    @property
    def names_region(self) -> bool:
        return bool(self.regions)

    @property
    def names_lung_region(self) -> bool:
        """True if the lung-field segmenter can draw at least one named region."""
        return any(r.structure in LUNG_STRUCTURES for r in self.regions)

    @property
    def phrases(self) -> list[str]:
        out: list[str] = []
        for r in self.regions:
            if r.phrase not in out:
                out.append(r.phrase)
        return out


# --- vocabulary ---------------------------------------------------------------
_SIDE_WORDS = {
    "left": "left", "right": "right", "left-sided": "left", "right-sided": "right",
    "bilateral": "bilateral", "bilaterally": "bilateral", "both": "bilateral",
}
_ZONE_WORDS = {"upper": "upper", "middle": "middle", "mid": "middle", "lower": "lower"}

# (pattern, structure, side, zone); a None side/zone is filled from the modifiers before it.
_STRUCTURES: tuple[tuple[str, str, str | None, str | None], ...] = (
    (r"\bbibasilar\b|\bbibasal\b|\bbibasally\b", "base", "bilateral", "lower"),
    (r"\bbiapical(?:ly)?\b", "apex", "bilateral", "upper"),
    (r"\bRUL\b", "lobe", "right", "upper"),
    (r"\bRML\b", "lobe", "right", "middle"),
    (r"\bRLL\b", "lobe", "right", "lower"),
    (r"\bLUL\b", "lobe", "left", "upper"),
    (r"\bLLL\b", "lobe", "left", "lower"),
    (r"\blingula(?:r)?\b", "lingula", "left", "middle"),
    (r"\bretrocardiac\b", "retrocardiac", "left", "lower"),
    (r"\bcostophrenic (?:angles?|sulc(?:us|i))\b|\bCP angles?\b", "costophrenic angle", None, "lower"),
    (r"\bhemithora(?:x|ces)\b", "hemithorax", None, None),
    (r"\blobes?\b", "lobe", None, None),
    (r"\bzones?\b", "zone", None, None),
    (r"\bmid-?lungs?\b", "lung", None, "middle"),
    (r"\blung (?:bases|base)\b|\bbases\b|\bbase\b|\bbasilar\b|\bbasal\b|\bbasally\b", "base", None, "lower"),
    (r"\blung (?:apex|apices)\b|\bapex\b|\bapices\b|\bapical\b", "apex", None, "upper"),
    (r"\bperihilar\b|\bhil(?:um|a|ar)\b", "hilum", None, "middle"),
    (r"\blung fields?\b|\blungs?\b|\bpulmonary fields?\b", "lung", None, None),
    (r"\b(?:left|right) chest\b", "hemithorax", None, None),
    (r"\bhemidiaphragms?\b", "hemidiaphragm", None, "lower"),
    (r"\bheart\b|\bcardiac silhouette\b|\bcardiomegaly\b|\bcardiac size\b", "heart", None, None),
    (r"\bmediastin(?:um|al)\b|\bcardiomediastinal\b", "mediastinum", None, None),
)
_STRUCTURE_RE = re.compile("|".join(f"(?P<s{i}>{p})" for i, (p, *_r) in enumerate(_STRUCTURES)), re.IGNORECASE)
_PLURAL_RE = re.compile(r"(?:lungs|bases|apices|lobes|zones|hila|hemithoraces|angles|fields|hemidiaphragms)$", re.I)
_MODIFIER_RE = re.compile(
    r"\b(left-sided|right-sided|left|right|bilateral|both|upper|middle|mid|lower)\b", re.IGNORECASE
)

_FINDINGS_RE = re.compile(
    r"\b(opacit(?:y|ies)|opacification|consolidat\w*|effusions?|pneumothora(?:x|ces)|atelecta\w+|infiltrat\w*|"
    r"nodul\w*|mass(?:es)?|cavit\w+|cardiomegaly|enlarge\w*|edema|oedema|air ?space disease|disease|scar\w*|"
    r"granuloma\w*|fibros\w+|fibrotic|emphysema\w*|pneumonia|tuberculosis|TB|fractures?|deformit\w+|"
    r"elevat\w+|hyperinflat\w+|hypoinflat\w+|hyperexpan\w+|thickening|calcifi\w+|lesions?|densit(?:y|ies)|"
    r"haz(?:e|iness|y)|congestion|collapse|shift|blunt\w*|abnormalit(?:y|ies)|process(?:es)?|findings?|"
    r"adenopathy|lymphadenopathy|widening|cardiomediastinal enlargement|pneumoperitoneum|hernia|"
    r"bronchiectasis|interstitial markings?|markings)\b",
    re.IGNORECASE,
)
_NEG_CUE_RE = re.compile(
    r"\b(no|not|without|negative for|free of|absence of|absent|resolved|resolution of|clear of|rule out|ruled out)\b",
    re.IGNORECASE,
)
_NORMAL_RE = re.compile(
    r"\b(clear|normal|normally|unremarkable|within normal limits|well[- ]aerated|well[- ]expanded|"
    r"well[- ]inflated|intact|negative)\b",
    re.IGNORECASE,
)
# A negation's scope ends at a clause boundary.
_SCOPE_END_RE = re.compile(r"[;:]|\bbut\b|\bhowever\b|\balthough\b|\bwhich\b|\bwhereas\b|\bexcept\b|\bwith\b", re.I)


def _modifiers(text: str) -> tuple[str | None, str | None]:
    """Side and zone from the words just before a structure word (same noun phrase)."""
    side: str | None = None
    zone: str | None = None
    sides: list[str] = []
    for m in _MODIFIER_RE.finditer(text):
        w = m.group(1).lower()
        if w in _SIDE_WORDS:
            sides.append(_SIDE_WORDS[w])
        elif w in _ZONE_WORDS:
            zone = _ZONE_WORDS[w]
    if sides:
        uniq = set(sides)
        side = "bilateral" if "bilateral" in uniq or uniq == {"left", "right"} else sides[-1]
    return side, zone


def _np_window(sentence: str, start: int, prev_end: int) -> str:
    """Words before a structure word that can modify it: up to 5 words, not across , ; or a verb break."""
    left = sentence[max(prev_end, 0) : start]
    left = re.split(r"[,;:.()]|\b(?:is|are|was|were|has|have|with|without|and no|of the heart)\b", left)[-1]
    words = left.split()
    return " ".join(words[-5:])


def region_phrases(sentence: str | object) -> RegionReading:
    """Read the regions a sentence names and whether it is a negative (normal) sentence.

    Accepts a string or a :class:`~cxr_viewer.core.report.parse.Sentence`.
    """
    text = str(getattr(sentence, "text", sentence) or "")
    regions: list[Region] = []
    prev_end = 0
    for m in _STRUCTURE_RE.finditer(text):
        idx = next(i for i in range(len(_STRUCTURES)) if m.group(f"s{i}") is not None)
        _pat, structure, side, zone = _STRUCTURES[idx]
        word = m.group(0)
        mod_side, mod_zone = _modifiers(_np_window(text, m.start(), prev_end) + " " + word)
        side = side or mod_side
        zone = zone or mod_zone
        if structure == "lobe" and zone is None and side is None and not _PLURAL_RE.search(word):
            prev_end = m.end()
            continue  # "the lobe" alone names nothing drawable
        if side is None and structure in LUNG_STRUCTURES:
            plural = bool(_PLURAL_RE.search(word))
            sentence_bilateral = re.search(r"\bbilateral(?:ly)?\b|\bboth\b", text, re.I) is not None
            if plural or sentence_bilateral or structure == "lung":
                side = "bilateral"
        if structure == "hemidiaphragm" and side is None and _PLURAL_RE.search(word):
            side = None  # "hemidiaphragms": both, unsided phrase
        region = Region(structure=structure, side=side, zone=zone, text=text[m.start() : m.end()])
        # "right lower lobe" and "right lung base" said twice -> keep one
        if region not in regions:
            regions.append(region)
        prev_end = m.end()
    # a generic "lungs" beside a specific lung region in the same sentence adds nothing
    specific = [r for r in regions if r.structure in LUNG_STRUCTURES and (r.zone or r.side in ("left", "right"))]
    if specific:
        regions = [r for r in regions if not (r.structure == "lung" and r.side == "bilateral" and r.zone is None)] or regions

    asserted: list[str] = []
    negated: list[str] = []
    for f in _FINDINGS_RE.finditer(text):
        clause_start = 0
        for b in _SCOPE_END_RE.finditer(text, 0, f.start()):
            clause_start = b.end()
        if _NEG_CUE_RE.search(text, clause_start, f.start()):
            negated.append(f.group(0).lower())
        else:
            asserted.append(f.group(0).lower())
    normal = _NORMAL_RE.search(text) is not None and not re.search(r"\babnormal", text, re.I)
    leading_no = re.match(r"\s*(?:otherwise\s+)?(?:no|without|negative for|free of)\b", text, re.I) is not None
    negative = not asserted and (bool(negated) or normal or leading_no)
    if asserted and normal and not negated:
        # "Heart size upper normal but stable" style: a normal predicate about the only thing named
        negative = all(a in ("enlargement", "findings", "finding") for a in asserted)
    return RegionReading(
        sentence=text,
        regions=tuple(regions),
        negative=negative,
        findings=tuple(asserted),
        negated_findings=tuple(negated),
    )
