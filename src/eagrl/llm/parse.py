"""Read a response back: steps, important features, probability, and whether it is well formed.

``parse_response`` never raises, whatever the text: it scans for the tags with ``str.find`` (linear time,
no backtracking regex) and reports what it found. The P_QD format it reads::

    <subquestion>...</subquestion><answer>...</answer>      (1..T times)
    <important_features>feature; feature; ...</important_features>
    <evidence>...</evidence>                                (written by the framework, optional; not read)
    <final_answer>0.83</final_answer>

Feature names are mapped to the canonical schema by :class:`FeatureMatcher` (exact, alias, then fuzzy
with :mod:`difflib`); names that match nothing are kept as unknowns, normalised, so R_att can count them.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from eagrl.data.schema import FeatureSpec

SUBQ, ANSWER, FEATURES, FINAL, THINK = "subquestion", "answer", "important_features", "final_answer", "think"
TAG_NAMES = (SUBQ, ANSWER, FEATURES, FINAL, THINK)
# The framework's restatement of the named features' record lines (GenerationConfig.evidence). Not a field tag: only
# the framework writes it, after the last field the model fills, so no field stops at it.
EVIDENCE = "evidence"
ALL_TAGS = tuple(t for name in TAG_NAMES for t in (f"<{name}>", f"</{name}>"))

NO_NUMBER = "no number in <final_answer>"
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_LIST_PREFIX = re.compile(r"^(?:[-*\u2022]+|\d+[.)])\s*")
_MAX_NAME = 80  # unknown names are kept up to this many characters
_UNIT_SUFFIX = re.compile(r"\s*\((?:unit|units|reference)[^)]*\)\s*$", re.IGNORECASE)


@dataclass
class Step:
    subquestion: str
    answer: str


@dataclass
class ParsedResponse:
    steps: list[Step] = field(default_factory=list)
    features: list[str] = field(default_factory=list)  # canonical names first-seen order, then unknowns
    unknown_features: list[str] = field(default_factory=list)
    probability: float | None = None
    well_formed: bool = False
    problems: list[str] = field(default_factory=list)
    think: str | None = None

    @property
    def known_features(self) -> list[str]:
        unknown = set(self.unknown_features)
        return [f for f in self.features if f not in unknown]


# ====================================================================== feature names
def normalize_name(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation or list markers."""
    t = " ".join(str(text).split()).strip()
    t = _LIST_PREFIX.sub("", t)
    t = t.strip(" \t\"'`.,:;*_")
    return t.lower()


class FeatureMatcher:
    """Map free-text feature names to canonical ones: exact, alias, unit-stripped, then fuzzy."""

    def __init__(self, features: Sequence[FeatureSpec] | Sequence[str], fuzzy_cutoff: float = 0.85):
        self.fuzzy_cutoff = fuzzy_cutoff
        self._lookup: dict[str, str] = {}
        specs = [f if isinstance(f, FeatureSpec) else FeatureSpec(name=str(f)) for f in features]
        self.names = [spec.name for spec in specs]  # canonical names, in the cohort's order
        for spec in specs:  # canonical names win over aliases
            self._lookup.setdefault(normalize_name(spec.name), spec.name)
        for spec in specs:
            for alias in spec.aliases:
                self._lookup.setdefault(normalize_name(alias), spec.name)
        self._keys = list(self._lookup)

    def match(self, text: str) -> str | None:
        key = normalize_name(text)
        if not key:
            return None
        if key in self._lookup:
            return self._lookup[key]
        stripped = normalize_name(_UNIT_SUFFIX.sub("", key))
        if stripped in self._lookup:
            return self._lookup[stripped]
        if len(stripped) > 4 * _MAX_NAME:  # prose, not a name: fuzzy matching would only cost time
            return None
        close = difflib.get_close_matches(stripped, self._keys, n=1, cutoff=self.fuzzy_cutoff)
        return self._lookup[close[0]] if close else None

    def map(self, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """(all names in order, deduplicated, canonical where matched; the unknown ones)."""
        out, unknown, seen = [], [], set()
        for name in names:
            canon = self.match(name)
            value = canon if canon is not None else normalize_name(name)[:_MAX_NAME]
            if not value or value in seen:
                continue
            seen.add(value)
            out.append(value)
            if canon is None:
                unknown.append(value)
        return out, unknown


def split_feature_list(text: str) -> list[str]:
    """``"a; b; c"`` (or one a line, or comma-separated when there is no other separator) -> names."""
    parts = [p for chunk in text.split("\n") for p in chunk.split(";")]
    parts = [p for p in (x.strip() for x in parts) if p]
    if len(parts) == 1 and "," in parts[0]:
        parts = [p.strip() for p in parts[0].split(",") if p.strip()]
    return parts


# ====================================================================== probability
_YES_NO = re.compile(r"^\s*(yes|no)\b", re.IGNORECASE)


def parse_probability(text: str) -> float | None:
    """First number in the text as a probability in [0, 1]; "83%" or a bare 1 < x <= 100 reads as percent; an
    answer that is a bare yes / no word reads as 1 / 0 (free-form text; structured generation reads the slot)."""
    m = _NUMBER.search(text or "")
    if m is None:
        word = _YES_NO.match(text or "")
        return None if word is None else float(word.group(1).lower() == "yes")
    try:
        x = float(m.group(0))
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(x):
        return None
    rest = text[m.end():m.end() + 2].lstrip()
    if rest.startswith("%") or 1.0 < x <= 100.0:
        x /= 100.0
    return min(1.0, max(0.0, x))


# ====================================================================== tags
def _between(text: str, open_tag: str, close_tag: str, start: int = 0) -> tuple[str | None, int, int]:
    """(content, index of the open tag, index after the close tag) of the first complete span, else (None, -1, -1)."""
    i = text.find(open_tag, start)
    if i < 0:
        return None, -1, -1
    j = text.find(close_tag, i + len(open_tag))
    if j < 0:
        return None, i, -1
    return text[i + len(open_tag):j], i, j + len(close_tag)


def _steps(text: str, end: int) -> list[Step]:
    """Complete (sub-question, answer) pairs before ``end``, each answer following its sub-question."""
    steps, pos = [], 0
    while True:
        q, _, q_end = _between(text, f"<{SUBQ}>", f"</{SUBQ}>", pos)
        if q is None or q_end > end:
            return steps
        a, a_start, a_end = _between(text, f"<{ANSWER}>", f"</{ANSWER}>", q_end)
        if a is None or a_end > end or text[q_end:a_start].strip():
            return steps
        steps.append(Step(q.strip(), a.strip()))
        pos = a_end


def parse_response(
    text: str,
    features: Sequence[FeatureSpec] | Sequence[str] | FeatureMatcher = (),
    style: str = "pqd",
) -> ParsedResponse:
    """Parse one response; never raises. ``style`` (pqd | vanilla | think) sets what well formed means:

    * pqd: at least one complete step, then a closed <important_features>, then a readable <final_answer>;
    * think: a closed <think>, then a readable <final_answer>;
    * vanilla: a readable <final_answer>.
    """
    try:
        return _parse(str(text) if text is not None else "", features, style)
    except Exception as exc:  # pragma: no cover - the parser's promise is to never raise
        return ParsedResponse(problems=[f"parser error: {type(exc).__name__}"])


def _parse(text: str, features, style: str) -> ParsedResponse:
    matcher = features if isinstance(features, FeatureMatcher) else FeatureMatcher(features)
    out = ParsedResponse()

    final, f_start, _ = _between(text, f"<{FINAL}>", f"</{FINAL}>")
    if final is None:
        # A final answer the response did not close still carries a probability.
        if f_start >= 0:
            out.probability = parse_probability(text[f_start + len(FINAL) + 2:][:32])
        out.problems.append("no closed <final_answer>")
    else:
        out.probability = parse_probability(final)
        if out.probability is None:
            out.problems.append(NO_NUMBER)
    limit = f_start if f_start >= 0 else len(text)

    feats, i_start, i_end = _between(text, f"<{FEATURES}>", f"</{FEATURES}>")
    if feats is not None and i_end <= limit:
        out.features, out.unknown_features = matcher.map(split_feature_list(feats))
    elif style == "pqd":
        out.problems.append("no closed <important_features> before the final answer")

    steps_end = i_start if i_start >= 0 else limit
    out.steps = _steps(text, steps_end)
    if style == "pqd" and not out.steps:
        out.problems.append("no complete <subquestion>/<answer> step")

    think, _, _ = _between(text, f"<{THINK}>", f"</{THINK}>")
    if think is not None:
        out.think = think.strip()
    elif style == "think":
        out.problems.append("no closed <think>")

    out.well_formed = not out.problems and out.probability is not None
    return out
