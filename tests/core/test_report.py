"""Report parsing on real Indiana University reports and on typed report layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxr_viewer.core.report import parse_report, region_phrases, split_sentences


@pytest.fixture(scope="module")
def iu_reports(data_dir: Path) -> dict[str, dict[str, str]]:
    path = data_dir / "reports_iu" / "indiana_reports.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["uid"]: row for row in csv.DictReader(fh)}


def _as_report(row: dict[str, str]) -> str:
    return (
        f"INDICATION: {row['indication']}\nCOMPARISON: {row['comparison']}\n"
        f"FINDINGS: {row['findings']}\nIMPRESSION: {row['impression']}"
    )


def test_sections_and_sentences_of_real_report(iu_reports: dict[str, dict[str, str]]) -> None:
    rep = parse_report(_as_report(iu_reports["1"]))
    assert [s.name for s in rep.sections] == ["indication", "comparison", "findings", "impression"]
    findings = [s.text for s in rep.section("findings")[0].sentences]
    assert findings == [
        "The cardiac silhouette and mediastinum size are within normal limits.",
        "There is no pulmonary edema.",
        "There is no focal consolidation.",
        "There are no XXXX of a pleural effusion.",
        "There is no evidence of pneumothorax.",
    ]
    # spans point into the original text
    for s in rep.sentences:
        assert rep.text[s.start : s.end] == s.text
    # indication/comparison are not finding sentences
    assert all(s.section in ("findings", "impression") for s in rep.finding_sentences())


def test_numbered_impression_and_decimals(iu_reports: dict[str, dict[str, str]]) -> None:
    imp = iu_reports["3611"]["impression"]  # "1. No acute posttraumatic finding. 2. Mild right basilar ..."
    sents = [s.text for s in split_sentences(imp)]
    assert sents[0] == "No acute posttraumatic finding."
    assert sents[1].startswith("Mild right basilar airspace consolidation")
    assert len(sents) == 3
    s = split_sentences("There is a 1.9 x 1.8 cm round density. Dr. Smith was notified at 3 p.m. today. Stable.")
    assert [x.text for x in s] == [
        "There is a 1.9 x 1.8 cm round density.",
        "Dr. Smith was notified at 3 p.m. today.",
        "Stable.",
    ]


def test_inline_headers_and_missing_space(iu_reports: dict[str, dict[str, str]]) -> None:
    # uid 2415 repeats a whole report inline: "IMPRESSION: Exam: ... Comparison: ... History: ... FINDINGS: ..."
    rep = parse_report(iu_reports["2415"]["impression"])
    names = [s.name for s in rep.sections]
    assert names[:1] == ["free_text"]
    assert {"technique", "comparison", "indication", "findings", "impression"} <= set(names)
    glued = "Clear right lung XXXX.In the left superior lower lobe there is a 1.9 x 1.8 cm density."
    assert [x.text for x in split_sentences(glued)] == [
        "Clear right lung XXXX.",
        "In the left superior lower lobe there is a 1.9 x 1.8 cm density.",
    ]


def test_typed_report_with_lists_and_line_breaks() -> None:
    text = "FINDINGS:\n- Right lower lobe opacity\n- Left lung clear\n\nImpression:\n1. Right lower lobe pneumonia\n2. No effusion"
    rep = parse_report(text)
    assert [(s.section, s.text) for s in rep.sentences] == [
        ("findings", "Right lower lobe opacity"),
        ("findings", "Left lung clear"),
        ("impression", "Right lower lobe pneumonia"),
        ("impression", "No effusion"),
    ]
    # no headers at all: one free-text section
    free = parse_report("Both lungs are clear. Heart size normal.")
    assert [s.name for s in free.sections] == ["free_text"]
    assert len(free.finding_sentences()) == 2
    assert parse_report("").sentences == []


@pytest.mark.parametrize(
    ("sentence", "phrases", "negative"),
    [
        ("Both lungs are clear and expanded.", ["both lungs"], True),  # uid 2106
        ("No acute cardiopulmonary abnormality.", [], True),
        ("There is no evidence of pneumothorax.", [], True),
        ("Minimal right middle lobe atelectasis.", ["right middle lobe"], False),  # uid 567
        ("There is patchy opacity in the left lung base which may be secondary to atelectasis.", ["left lung base"], False),
        ("Mild right basilar airspace consolidation may represent atelectasis versus infiltrate.", ["right lung base"], False),
        ("Minimal left basilar atelectasis.", ["left lung base"], False),
        ("Probably scarring in the left apex, although difficult to exclude a cavitary lesion.", ["left lung apex"], False),
        ("Opacities in the bilateral upper lobes could represent scarring.", ["bilateral upper lobes"], False),
        ("Left lower lobe airspace disease and bilateral pleural effusions.", ["left lower lobe"], False),
        ("Bibasilar atelectasis.", ["both lung bases"], False),
        ("Heart size within normal limits.", ["heart"], True),
        ("The lungs are clear, without evidence of acute infiltrate or effusion.", ["both lungs"], True),
        ("Right lower lobe opacity without pleural effusion.", ["right lower lobe"], False),
        ("Small right apical pneumothorax.", ["right lung apex"], False),
        ("Blunting of the left costophrenic angle.", ["left costophrenic angle"], False),
        ("Opacity in the LLL.", ["left lower lobe"], False),
        ("The left hemithorax is opacified.", ["left hemithorax"], False),
    ],
)
def test_region_phrases(sentence: str, phrases: list[str], negative: bool) -> None:
    got = region_phrases(sentence)
    assert got.phrases == phrases
    assert got.negative is negative


def test_region_reading_on_real_sentences(iu_reports: dict[str, dict[str, str]]) -> None:
    """Over many real impressions, 'no acute ...' sentences read negative and name no region."""
    n = 0
    for row in list(iu_reports.values())[:1500]:
        for s in parse_report(row["impression"]).sentences:
            low = s.text.lower()
            if low.startswith(("no acute cardiopulmonary", "no active disease")) and "," not in low:
                r = region_phrases(s)
                assert r.negative, s.text
                assert not r.names_region, s.text
                n += 1
            if low.startswith(("left lower lobe", "right lower lobe", "right upper lobe", "left upper lobe")):
                r = region_phrases(s)
                side, zone = low.split()[:2]
                assert any(g.side == side and g.zone == zone for g in r.regions), s.text
                assert r.names_lung_region
    assert n > 100
