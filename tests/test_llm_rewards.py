"""Rewards on hand-computed cases (METHOD.md, "Rewards")."""
from __future__ import annotations

import pytest

from eagrl.llm.parse import ParsedResponse, Step, parse_response
from eagrl.llm.rewards import composite, r_att, r_cls, reward


def test_r_att_is_jaccard_with_unknowns_in_the_union():
    assert r_att({"a", "b"}, {"a", "b"}) == 1.0
    assert r_att({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    # an unknown name ("lab vibes") is not in C_exp, so it only grows the union: 1 / 4
    assert r_att({"a", "lab vibes"}, {"a", "b", "c"}) == pytest.approx(1 / 4)
    assert r_att(set(), {"a"}) == 0.0
    assert r_att(set(), set()) == 0.0
    assert r_att(["a", "a"], ["a"]) == 1.0  # duplicates do not count twice


@pytest.mark.parametrize(
    "p, y, expected",
    [
        (1.0, 1, 1.0),  # 0.5 * (1 - 0) + 0.5 * 1
        (0.0, 0, 1.0),
        (0.0, 1, 0.0),  # 0.5 * (1 - 1) + 0
        (0.8, 1, 0.5 * (1 - 0.04) + 0.5),  # 0.98
        (0.3, 1, 0.5 * (1 - 0.49)),  # 0.255, wrong side
        (0.5, 1, 0.5 * (1 - 0.25) + 0.5),  # p >= 0.5 predicts 1: 0.875
        (0.5, 0, 0.5 * (1 - 0.25)),  # 0.375
        (1.7, 1, 1.0),  # clipped to 1
    ],
)
def test_r_cls_by_hand(p, y, expected):
    assert r_cls(p, y) == pytest.approx(expected)


def test_composite_weights_and_checks_lambda():
    assert composite(1.0, 0.0, 0.6) == pytest.approx(0.6)
    assert composite(0.5, 0.25, 0.6) == pytest.approx(0.6 * 0.5 + 0.4 * 0.25)
    with pytest.raises(ValueError, match="lambda"):
        composite(1.0, 1.0, 1.5)


def test_reward_of_a_parsed_response_by_hand():
    text = ("<subquestion>Is LDH high?</subquestion><answer>Yes, 880 U/L.</answer>\n"
            "<important_features>LDH; albumin; vibes</important_features>\n<final_answer>0.8</final_answer>")
    parsed = parse_response(text, ["Lactate dehydrogenase", "albumin", "hemoglobin"])
    assert parsed.well_formed
    # LDH is not an alias here (plain names), so it is an unknown: C_llm = {ldh, albumin, vibes}
    r = reward(parsed, 1, ["albumin", "hemoglobin"], lam=0.6)
    assert r.r_cls == pytest.approx(0.98)
    assert r.r_att == pytest.approx(1 / 4)  # {albumin} / {ldh, albumin, vibes, hemoglobin}
    assert r.total == pytest.approx(0.6 * 0.98 + 0.4 * 0.25)


def test_malformed_response_gets_zero():
    bad = ParsedResponse(steps=[Step("q", "a")], features=["albumin"], probability=0.9, well_formed=False)
    r = reward(bad, 1, ["albumin"])
    assert (r.total, r.well_formed) == (0.0, False)
    assert reward(parse_response("no tags at all"), 1, ["albumin"]).total == 0.0
