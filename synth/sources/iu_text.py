"""Pure text logic for Indiana University (Open-i) reports: MeSH, labels, cleaning, captions.

It fixes the SynTheX-Ray thesis's text defects: terms match whole words (its 'tube' matched
'tuberculosis'), `XXXX` de-identification tokens are removed without guessing the hidden word
(it wrote "osseous structures"), and no control character can reach a caption (its non-raw
"\\1" replacement wrote \\x01 into captions).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

NO_INDEXING = "no indexing"
DEID_TOKEN = "XXXX"

# The thesis's stage-2 rule for "pure" opacity, as defaults for `source.rules`.
OPACITY_TERMS = (
    "opacity", "lung opacity", "pneumonia", "infiltrate", "consolidation", "density",
    "airspace disease", "pulmonary congestion", "congestion", "pulmonary edema", "edema",
    "pulmonary atelectasis", "atelectasis",
)  # fmt: skip
OPACITY_CONFOUNDERS = (
    "device", "medical device", "tube", "wire", "catheter", "pacemaker", "stent",
    "surgical instrument", "foreign body", "sternotomy", "fracture", "spine", "rib", "nodule",
    "mass", "granuloma", "granulomatous disease", "calcinosis", "pneumothorax", "emphysema",
    "copd", "pulmonary disease chronic obstructive", "mastectomy",
)  # fmt: skip
OPACITY_MAX_HEADINGS = 3

_WORD = re.compile(r"[a-z0-9]+")
# A sentence ends at . ! or ? plus space, but not after a title such as "Dr.".
_SENTENCE_END = re.compile(r"(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<=[.!?])\s+")
# A sentence that starts with one of these once XXXX is gone had the hidden word as its
# subject ("XXXX are intact"): what is left says nothing, and guessing the subject would
# invent anatomy, so the sentence is dropped.
_VERBS_LEFT_WITHOUT_SUBJECT = frozenset(
    [
        "are",
        "is",
        "was",
        "were",
        "appear",
        "appears",
        "remain",
        "remains",
        "has",
        "have",
        "demonstrate",
        "demonstrates",
        "show",
        "shows",
    ]
)
# Sentences about other studies, phone calls or advice say nothing about this image.
_DROPPED_SENTENCE = re.compile(
    r"\b(compared|comparison"
    r"|(prior|previous) (exam|study|studies|film|films|radiograph|radiographs|examination)"
    r"|since the (prior|previous|last)|discussed with|called to|notified|communicated"
    r"|telephone|paged|recommend\w*|suggest\w*|advised|follow-?up|further evaluation"
    r"|could be obtained|correlat\w+ (is|clinically)|clinical correlation)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class MeshFinding:
    """One MeSH finding: a heading and its '/' qualifiers (location, severity, ...)."""

    heading: str
    qualifiers: tuple[str, ...] = ()

    @property
    def words(self) -> str:
        return " ".join((self.heading, *self.qualifiers))


@dataclass(frozen=True)
class LabelRule:
    """A task label's rule over MeSH headings. Terms match whole words, never substrings."""

    any_of: tuple[str, ...] = ()  # at least one heading must contain one of these terms
    none_of: tuple[str, ...] = ()  # no heading may contain any of these terms
    max_headings: int | None = None  # at most this many distinct headings
    exactly: tuple[str, ...] | None = None  # the distinct headings must be exactly these


DEFAULT_RULES = {
    "normal": LabelRule(exactly=("normal",)),
    "opacity": LabelRule(
        any_of=OPACITY_TERMS, none_of=OPACITY_CONFOUNDERS, max_headings=OPACITY_MAX_HEADINGS
    ),
}
LABEL_PHRASES = {"normal": "Normal", "opacity": "Lung opacity"}


def parse_mesh(entries: Sequence[str]) -> tuple[MeshFinding, ...]:
    """MeSH entries ('Opacity/lung/base/right', or ';'-joined ones) as findings."""
    findings = []
    for entry in entries:
        for part in entry.split(";"):
            pieces = [clean_text(p).strip() for p in part.split("/")]
            pieces = [p for p in pieces if p]
            if pieces:
                heading = pieces[0]
                if heading.lower() == NO_INDEXING:
                    heading = NO_INDEXING
                findings.append(MeshFinding(heading, tuple(pieces[1:])))
    return tuple(findings)


def headings(findings: Sequence[MeshFinding]) -> list[str]:
    """Distinct headings, lower-cased, in first-seen order: the multi-hot label set."""
    seen: dict[str, None] = {}
    for finding in findings:
        seen.setdefault(finding.heading.lower(), None)
    return list(seen)


def normal_words(text: str) -> tuple[str, ...]:
    """Lower-case words with plurals folded ('Ribs' -> 'rib', 'masses' -> 'mass')."""
    return tuple(_singular(word) for word in _WORD.findall(text.lower()))


def term_matches(term: str, heading: str) -> bool:
    """Whether the term's words appear as a whole-word run in the heading."""
    needle, haystack = normal_words(term), normal_words(heading)
    if not needle:
        return False
    return any(
        haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1)
    )


def rule_matches(rule: LabelRule, heading_list: Sequence[str]) -> bool:
    if not heading_list or heading_list == [NO_INDEXING]:
        return False
    if rule.exactly is not None:
        return sorted(normal_words(" ".join(heading_list))) == sorted(
            normal_words(" ".join(rule.exactly))
        ) and len(heading_list) == len(rule.exactly)
    if rule.max_headings is not None and len(heading_list) > rule.max_headings:
        return False
    if rule.any_of and not any(term_matches(t, h) for t in rule.any_of for h in heading_list):
        return False
    return not any(term_matches(t, h) for t in rule.none_of for h in heading_list)


def task_label(rules: dict[str, LabelRule], heading_list: Sequence[str]) -> str | None:
    """The first label (in rule order) whose rule matches, or None."""
    return next((label for label, rule in rules.items() if rule_matches(rule, heading_list)), None)


def clean_text(text: str | None) -> str:
    """Report text with control characters removed and whitespace collapsed."""
    if not text:
        return ""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def clean_report_text(text: str | None) -> str:
    """Findings or impression for a caption: no XXXX tokens, no comparison/communication/
    recommendation sentences, no control characters."""
    sentences = []
    for sentence in _SENTENCE_END.split(clean_text(text)):
        if not sentence or _DROPPED_SENTENCE.search(sentence):
            continue
        # Drop each word that holds the token (e.g. "x-XXXX." or "XXXX-year-old"): guessing
        # the hidden word would invent clinical content.
        words = [w for w in sentence.split(" ") if DEID_TOKEN not in w.upper()]
        if len(words) < 2 or (
            len(words) < len(sentence.split(" "))
            and words[0].lower().strip(",;:") in _VERBS_LEFT_WITHOUT_SUBJECT
        ):
            continue
        kept = " ".join(words).strip(" ,;:")
        if not kept.endswith((".", "!", "?")):
            kept += "."
        sentences.append(kept[0].upper() + kept[1:])
    return " ".join(sentences)


def build_caption(
    label: str | None, findings: Sequence[MeshFinding], report_findings: str, impression: str
) -> str:
    """'Chest x-ray. <label phrase>. <MeSH findings>. <findings> <impression>', key terms first."""
    parts = ["Chest x-ray."]
    if label is not None:
        parts.append(f"{LABEL_PHRASES.get(label, label.replace('_', ' ').capitalize())}.")
    mesh_words = [f.words for f in findings if f.heading.lower() not in ("normal", NO_INDEXING)]
    if mesh_words:
        unique = list(dict.fromkeys(mesh_words))
        parts.append(f"{', '.join(unique)}.")
    for text in (clean_report_text(report_findings), clean_report_text(impression)):
        if text:
            parts.append(text)
    caption = " ".join(parts)
    return clean_text(caption)


def _singular(word: str) -> str:
    if len(word) <= 3 or word.endswith(("ss", "is", "us")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("oses") or (word.endswith("ases") and not word.endswith("eases")):
        return word[:-2] + "is"  # atelectases -> atelectasis, scolioses -> scoliosis
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word
