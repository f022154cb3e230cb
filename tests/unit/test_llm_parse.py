"""The response parser: never raises, reads the P_QD format, maps names to the schema."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.llm import FEATURES

from eagrl.llm.parse import ALL_TAGS, FeatureMatcher, parse_probability, parse_response

MATCHER = FeatureMatcher(FEATURES)
GOOD = (
    "<subquestion>Is LDH rising?</subquestion><answer>Yes: 612, 701, 880 U/L.</answer>\n"
    "<subquestion>Albumin?</subquestion> <answer>Low.</answer>\n"
    "<important_features>LDH; albumin (unit: g/L); haemoglobin; serum vibes</important_features>\n"
    "<final_answer>0.83</final_answer>"
)

# Text built from tag fragments, numbers and noise: the shapes a broken model actually writes.
pieces = st.one_of(
    st.sampled_from(ALL_TAGS + ("<", ">", "</", ";", "0.", "%", "\n", "1e309", "nan", "-3", "85", "LDH")),
    st.text(max_size=12),
)
texts = st.lists(pieces, max_size=40).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_parser_never_raises_and_keeps_its_promises(text):
    for style in ("pqd", "think", "vanilla"):
        p = parse_response(text, MATCHER, style)
        assert p.probability is None or (0.0 <= p.probability <= 1.0 and math.isfinite(p.probability))
        assert len(set(p.features)) == len(p.features)
        assert set(p.unknown_features) <= set(p.features)
        if p.well_formed:
            assert p.probability is not None and not p.problems
            if style == "pqd":
                assert p.steps


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_parser_takes_any_unicode(text):
    parse_response(text, MATCHER)
    parse_response(None)  # type: ignore[arg-type]


def test_reads_the_pqd_format():
    p = parse_response(GOOD, MATCHER)
    assert p.well_formed, p.problems
    assert [s.subquestion for s in p.steps] == ["Is LDH rising?", "Albumin?"]
    assert p.steps[1].answer == "Low."
    assert p.probability == pytest.approx(0.83)
    # alias, unit-stripped exact, alias with British spelling; the unknown is kept, normalised
    assert p.features == ["Lactate dehydrogenase", "albumin", "hemoglobin", "serum vibes"]
    assert p.unknown_features == ["serum vibes"]
    assert p.known_features == ["Lactate dehydrogenase", "albumin", "hemoglobin"]


def test_fuzzy_matching_and_separators():
    assert MATCHER.match("Lactate dehydrogenas") == "Lactate dehydrogenase"
    assert MATCHER.match("  1. Procalcitonin.") == "procalcitonin"
    assert MATCHER.match("heart rate") is None
    p = parse_response("<subquestion>q</subquestion><answer>a</answer><important_features>albumin, eGFR"
                       "</important_features><final_answer>0.2</final_answer>", MATCHER)
    assert p.features == ["albumin", "eGFR"]


@pytest.mark.parametrize(
    "text, expected",
    [("0.83", 0.83), ("83%", 0.83), ("probability: 0.3.", 0.3), ("85", 0.85), ("1", 1.0), ("-0.2", 0.0),
     ("1e309", None), ("none", None), ("", None), (".5", 0.5), ("250", 1.0)],
)
def test_probability(text, expected):
    got = parse_probability(text)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_malformed_cases_are_flagged():
    no_steps = "<important_features>albumin</important_features><final_answer>0.4</final_answer>"
    assert not parse_response(no_steps, MATCHER).well_formed
    assert parse_response(no_steps, MATCHER, "vanilla").well_formed
    unclosed = GOOD.replace("</final_answer>", "")
    p = parse_response(unclosed, MATCHER)
    assert not p.well_formed and p.probability == pytest.approx(0.83)
    features_after_answer = ("<subquestion>q</subquestion><answer>a</answer><final_answer>0.4</final_answer>"
                             "<important_features>albumin</important_features>")
    assert not parse_response(features_after_answer, MATCHER).well_formed
    assert parse_response("<think>hmm</think><final_answer>0.1</final_answer>", MATCHER, "think").well_formed
    assert not parse_response("<final_answer>0.1</final_answer>", MATCHER, "think").well_formed
