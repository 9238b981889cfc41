from __future__ import annotations

import pytest

from synth.sources.iu_text import (
    DEFAULT_RULES,
    NO_INDEXING,
    MeshFinding,
    build_caption,
    clean_report_text,
    headings,
    parse_mesh,
    task_label,
    term_matches,
)


def test_mesh_splits_findings_and_qualifiers():
    findings = parse_mesh(["Opacity/lung/base/right/mild;Cardiomegaly/borderline", "normal"])
    assert findings == (
        MeshFinding("Opacity", ("lung", "base", "right", "mild")),
        MeshFinding("Cardiomegaly", ("borderline",)),
        MeshFinding("normal"),
    )
    assert headings(findings) == ["opacity", "cardiomegaly", "normal"]
    assert parse_mesh(["No Indexing"]) == (MeshFinding(NO_INDEXING),)


@pytest.mark.parametrize(
    ("term", "heading", "expected"),
    [
        ("tube", "Tuberculosis", False),  # the thesis's substring bug
        ("tube", "Tube, Inserted", True),
        ("rib", "Ribs", True),
        ("mass", "Masses", True),
        ("atelectasis", "Atelectases", True),
        ("copd", "Pulmonary Disease, Chronic Obstructive", False),
        ("pulmonary disease chronic obstructive", "Pulmonary Disease, Chronic Obstructive", True),
        ("opacity", "Lung", False),
        ("edema", "Pulmonary Edema", True),
    ],
)
def test_terms_match_whole_words_only(term, heading, expected):
    assert term_matches(term, heading) is expected


@pytest.mark.parametrize(
    ("mesh", "label"),
    [
        (["normal"], "normal"),
        (["Opacity/lung/base/right"], "opacity"),
        (["Opacity/lung/base/left", "Pulmonary Atelectasis/base/left"], "opacity"),
        (["Opacity/lung", "Tube, Inserted"], None),  # a confounder
        (["Opacity/lung", "Tuberculosis"], "opacity"),  # not a confounder
        (["Opacity", "Atelectasis", "Edema", "Cardiomegaly"], None),  # 4 headings
        (["normal", "Cardiomegaly"], None),
        (["No Indexing"], None),
        (["Cardiomegaly/mild"], None),
    ],
)
def test_default_label_rules(mesh, label):
    assert task_label(DEFAULT_RULES, headings(parse_mesh(mesh))) == label


def test_deidentification_tokens_are_removed_without_guessing():
    text = "XXXX are intact. Normal chest x-XXXX. There are no XXXX of a pleural effusion."
    cleaned = clean_report_text(text)
    assert "XXXX" not in cleaned and "osseous" not in cleaned
    assert cleaned == "Normal chest. There are no of a pleural effusion."


def test_comparison_communication_and_recommendation_sentences_are_dropped():
    text = (
        "Heart size is normal. Compared to the prior study, no change. Findings discussed with "
        "Dr. XXXX at 3 pm. Recommend follow-up CT. Lungs are clear."
    )
    assert clean_report_text(text) == "Heart size is normal. Lungs are clear."


def test_control_characters_never_reach_a_caption():
    caption = build_caption("opacity", parse_mesh(["Opacity/lung"]), "A\x01 patchy\topacity.", "")
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in caption)
    assert caption == "Chest x-ray. Lung opacity. Opacity lung. A patchy opacity."


def test_caption_layout_puts_key_terms_first():
    caption = build_caption(
        "normal", parse_mesh(["normal"]), "The lungs are clear.", "No acute disease."
    )
    assert caption == "Chest x-ray. Normal. The lungs are clear. No acute disease."
    other = build_caption(None, parse_mesh(["Cardiomegaly/mild"]), "Big heart.", "")
    assert other == "Chest x-ray. Cardiomegaly mild. Big heart."
