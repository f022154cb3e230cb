"""Rewards on hand-computed cases (METHOD.md, "Rewards")."""
from __future__ import annotations

import math

import pytest

from eagrl.config.reward import ClsReward
from eagrl.llm.parse import ParsedResponse, Step, parse_response
from eagrl.llm.rewards import composite, r_att, r_cls, reward

BRIER = ClsReward(form="brier")


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
def test_brier_r_cls_by_hand(p, y, expected):
    assert r_cls(p, y, BRIER) == pytest.approx(expected)


@pytest.mark.parametrize(
    "p, y, expected",
    [
        (1.0, 1, 1.0),  # p_y clipped to 0.99: 2/3 (1 + log 0.99 / log 100) + 1/3
        (0.0, 0, 1.0),
        (0.0, 1, 0.0),  # p_y clipped to 0.01: 2/3 (1 - 1) + 0
        (0.8, 1, 2 / 3 * (1 + math.log(0.8) / math.log(100)) + 1 / 3),
        (0.3, 1, 2 / 3 * (1 + math.log(0.3) / math.log(100))),  # wrong side: no bonus
        (0.5, 1, 2 / 3 * (1 + math.log(0.5) / math.log(100)) + 1 / 3),  # p >= 0.5 predicts 1
        (0.5, 0, 2 / 3 * (1 + math.log(0.5) / math.log(100))),
        (0.2, 0, 2 / 3 * (1 + math.log(0.8) / math.log(100)) + 1 / 3),  # p_y = 1 - p
    ],
)
def test_loglik_r_cls_by_hand(p, y, expected):
    """METHOD's default R_cls: w_ll (1 + log p_y / log 100) + w_sep 1[correct side], p clipped to [0.01, 0.99]."""
    got = r_cls(p, y)
    if p in (0.0, 1.0):
        expected = (2 / 3 * (1 + math.log(0.99 if expected == 1.0 else 0.01) / math.log(100))
                    + (1 / 3 if expected else 0))
    assert got == pytest.approx(expected)
    assert 0.0 <= got <= 1.0


def test_loglik_punishes_confident_wrong_answers_that_brier_barely_separates():
    """Brier is bounded where it matters most: a positive read at 0.01 and one read at 0.1 differ by 0.085 under it,
    by a third of the reward under the log-likelihood; and both rise monotonically with p_y."""
    assert r_cls(0.1, 1) - r_cls(0.01, 1) > 3 * (r_cls(0.1, 1, BRIER) - r_cls(0.01, 1, BRIER))
    ps = [0.02, 0.1, 0.3, 0.49, 0.51, 0.7, 0.9, 0.98]
    for form in (ClsReward(), BRIER):
        assert all(r_cls(a, 1, form) < r_cls(b, 1, form) for a, b in zip(ps, ps[1:]))


def test_cls_reward_weights_must_keep_it_in_0_1():
    with pytest.raises(ValueError, match="w_ll"):
        ClsReward(w_ll=0.9, w_sep=0.5)


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
    r = reward(parsed, 1, ["albumin", "hemoglobin"], lam=0.6, cls_cfg=BRIER)
    assert r.r_cls == pytest.approx(0.98)
    assert r.r_att == pytest.approx(1 / 4)  # {albumin} / {ldh, albumin, vibes, hemoglobin}
    assert r.total == pytest.approx(0.6 * 0.98 + 0.4 * 0.25)


def test_malformed_response_gets_zero():
    bad = ParsedResponse(steps=[Step("q", "a")], features=["albumin"], probability=0.9, well_formed=False)
    r = reward(bad, 1, ["albumin"])
    assert (r.total, r.well_formed) == (0.0, False)
    assert reward(parse_response("no tags at all"), 1, ["albumin"]).total == 0.0
