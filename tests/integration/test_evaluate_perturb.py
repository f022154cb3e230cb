"""Robustness perturbations go through the normal serialisation and keep each value with its feature."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from support.llm import tjh_cohort

from eagrl.config.llm import GenerationConfig
from eagrl.evaluate.perturb import shuffled, with_value_noise
from eagrl.llm.prompt import build_prompt, compact_line, feature_line

FULL = GenerationConfig(serialization="full", compact=False, max_prompt_tokens=None, chat_template=False)
COMPACT = GenerationConfig(serialization="compact", max_prompt_tokens=None, chat_template=False)


def _lines(cohort, stay_id, gen):
    prompt = build_prompt(cohort.patient(stay_id), cohort.features, dataset=cohort.dataset, task=cohort.task, cfg=gen)
    return [line for line in prompt.user.splitlines() if line.startswith("- ")]


def _name(line: str) -> str:
    return re.match(r"- (.*?)(?: \(unit: |: )", line).group(1)  # full: "- name (unit: ...", compact: "- name: ..."


def _line(gen, spec, values) -> str:
    return compact_line(spec, values, gen.trend_threshold) if gen.serialization == "compact" \
        else feature_line(spec, values)


@pytest.mark.parametrize("level", [0.2, 0.4, 0.6, 1.0])
def test_shuffle_moves_lines_but_keeps_values_with_their_names(level):
    cohort = tjh_cohort()
    sid = cohort.split_ids("test")[0]
    record = cohort.patient(sid)
    by_name = {f.name: f for f in cohort.features}
    plain = _lines(cohort, sid, FULL)
    moved = _lines(cohort, sid, shuffled(FULL, level, seed=3))
    assert sorted(moved) == sorted(plain)  # the same lines, each whole
    for line in moved:  # and each line is its feature's own values
        assert line == feature_line(by_name[_name(line)], record.values[_name(line)])
    n = len(plain)
    displaced = sum(a != b for a, b in zip(plain, moved))
    assert 0 < displaced <= round(level * n)
    if level == 1.0:
        assert displaced > n // 2


@pytest.mark.parametrize("level", [0.6, 1.0])
def test_shuffle_moves_compact_lines_but_keeps_each_last_value_with_its_name(level):
    """The compact serialisation (default and smoke profiles) shuffles its lines the same way."""
    cohort = tjh_cohort()
    sid = cohort.split_ids("test")[0]
    record = cohort.patient(sid)
    by_name = {f.name: f for f in cohort.features}
    plain = _lines(cohort, sid, COMPACT)
    moved = _lines(cohort, sid, shuffled(COMPACT, level, seed=3))
    assert len(plain) > 10 and sorted(moved) == sorted(plain)
    for line in moved:
        assert line == compact_line(by_name[_name(line)], record.values[_name(line)], COMPACT.trend_threshold)
    assert sum(a != b for a, b in zip(plain, moved)) > len(plain) // 4


def test_shuffle_is_seeded_and_differs_between_stays():
    cohort = tjh_cohort()
    a, b = cohort.split_ids("test")[:2]
    gen = shuffled(FULL, 0.6, seed=1)

    def names(sid, g):
        return [_name(x) for x in _lines(cohort, sid, g)]

    assert names(a, gen) == names(a, shuffled(FULL, 0.6, seed=1))
    assert names(a, gen) != names(a, shuffled(FULL, 0.6, seed=2))
    assert names(a, gen) != names(b, gen)  # the shuffle is salted by the stay id
    with pytest.raises(ValueError, match="shuffle level"):
        shuffled(FULL, 1.5)


def test_value_noise_scales_with_train_spread_and_keeps_missingness():
    cohort = tjh_cohort()
    names = cohort.feature_names
    before = cohort.visits[names].to_numpy(dtype=float).copy()
    noisy = with_value_noise(cohort, 0.3, seed=0)
    x = noisy.visits[names].to_numpy(dtype=float)
    np.testing.assert_array_equal(np.isnan(x), np.isnan(before))  # missing stays missing, measured stays measured
    np.testing.assert_array_equal(cohort.visits[names].to_numpy(dtype=float), before)  # the input is not touched
    pd.testing.assert_frame_equal(noisy.visits_model, cohort.visits_model)  # the expert's table is not perturbed
    train = cohort.visits["stay_id"].isin(cohort.split_ids("train")).to_numpy()
    sd = np.nanstd(before[train], axis=0)
    nonneg = np.nanmin(np.where(np.isnan(before[train]), np.inf, before[train]), axis=0) >= 0
    assert (x[:, nonneg][~np.isnan(x[:, nonneg])] >= 0).all()
    # away from the zero clip, the noise has the asked spread: 0.3 train SDs per feature
    delta = (x - before) / np.where(sd > 0, sd, np.nan)
    far = (before > 3 * sd) & np.isfinite(delta)
    assert far.sum() > 500
    assert np.std(delta[far]) == pytest.approx(0.3, rel=0.1)
    assert abs(np.mean(delta[far])) < 0.03
    again = with_value_noise(cohort, 0.3, seed=0).visits[names].to_numpy(dtype=float)
    np.testing.assert_array_equal(again, x)
    other = with_value_noise(cohort, 0.3, seed=1).visits[names].to_numpy(dtype=float)
    assert not np.array_equal(np.nan_to_num(other), np.nan_to_num(x))
    np.testing.assert_array_equal(with_value_noise(cohort, 0.0).visits[names].to_numpy(dtype=float), before)


@pytest.mark.parametrize("gen", [FULL, COMPACT], ids=["full", "compact"])
def test_noisy_values_reach_the_prompt(gen):
    cohort = tjh_cohort()
    sid = cohort.split_ids("test")[0]
    noisy = with_value_noise(cohort, 0.5, seed=0)
    plain, moved = _lines(cohort, sid, gen), _lines(noisy, sid, gen)
    assert [_name(a) for a in plain] == [_name(b) for b in moved]  # same order, other values
    assert sum(a != b for a, b in zip(plain, moved)) > len(plain) // 2
    by_name = {f.name: f for f in noisy.features}
    rec = noisy.patient(sid)
    assert all(line == _line(gen, by_name[_name(line)], rec.values[_name(line)]) for line in moved)
