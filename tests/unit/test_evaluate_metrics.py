"""The evaluation's additions to the metrics: per-sample means with intervals, relative gains, pinned to loops."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from eagrl import metrics as M


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(5)
    n = 90
    y = (rng.random(n) < 0.4).astype(float)
    s = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)
    well = rng.random(n) < 0.8
    r_att = np.where(well, rng.integers(0, 6, n) / 5.0, 0.0)  # Jaccard-like values, 0 when malformed
    return y, s, well, r_att


def test_means_and_every_resample_equal_a_loop(sample):
    y, s, well, r_att = sample
    n_boot, seed = 60, 3
    out = M.evaluate_means({"well_formed_rate": well, "r_att_mean": r_att}, n_boot=n_boot, seed=seed)
    assert out["well_formed_rate"] == pytest.approx(well.mean(), abs=1e-12)
    assert out["r_att_mean"] == pytest.approx(r_att.mean(), abs=1e-12)
    idx = M.bootstrap_indices(len(y), n_boot, seed)  # the resamples evaluate_binary uses for this n and seed
    loop_w = np.array([well[i].mean() for i in idx])
    loop_r = np.array([r_att[i].mean() for i in idx])
    assert out["well_formed_rate_ci"] == pytest.approx(np.percentile(loop_w, [2.5, 97.5]).tolist(), abs=1e-12)
    assert out["r_att_mean_ci"] == pytest.approx(np.percentile(loop_r, [2.5, 97.5]).tolist(), abs=1e-12)
    lo, hi = out["r_att_mean_ci"]
    assert lo < out["r_att_mean"] < hi


def test_means_are_chunked_without_changing_them(sample, monkeypatch):
    _, _, well, r_att = sample
    whole = M.evaluate_means({"w": well, "r": r_att}, n_boot=100, seed=2, prefix="test_")
    monkeypatch.setattr(M, "_MAX_CELLS", len(well) * 7)  # 15 chunks, the last one short
    chunked = M.evaluate_means({"w": well, "r": r_att}, n_boot=100, seed=2, prefix="test_")
    for key, value in whole.items():
        np.testing.assert_allclose(chunked[key], value, rtol=0, atol=1e-12)
    assert set(whole) == {"test_w", "test_w_ci", "test_r", "test_r_ci"}
    assert "test_w_ci" not in M.evaluate_means({"w": well}, n_boot=0, prefix="test_")


def test_means_reject_bad_input():
    with pytest.raises(ValueError, match="one value per sample"):
        M.evaluate_means({"a": [1, 0, 1], "b": [0.5, 0.2]})
    with pytest.raises(ValueError, match="non-finite"):
        M.evaluate_means({"r_att_mean": [0.5, np.nan]})
    with pytest.raises(ValueError, match="empty"):
        M.evaluate_means({"a": []})


def test_paired_relative_gain_and_its_interval(sample):
    y, s, _, _ = sample
    rng = np.random.default_rng(9)
    worse = np.clip(s + rng.normal(0, 0.35, len(s)), 0, 1)
    res = M.paired_bootstrap(y, s, worse, "auroc", n_boot=300, seed=4)
    a, b = roc_auc_score(y, s), roc_auc_score(y, worse)
    assert res["rel_diff"] == pytest.approx(a / b - 1, abs=1e-12)
    idx = M.bootstrap_indices(len(y), 300, 4)
    loop = np.array([roc_auc_score(y[i], s[i]) / roc_auc_score(y[i], worse[i]) - 1 for i in idx])
    assert res["rel_diff_ci"] == pytest.approx(np.percentile(loop, [2.5, 97.5]).tolist(), abs=1e-9)
    assert res["rel_diff_ci"][0] > 0  # the better model's gain is clear of zero
    same = M.paired_bootstrap(y, s, s.copy())
    assert same["rel_diff"] == 0 and same["rel_diff_ci"] == [0.0, 0.0]


def test_max_f1_threshold_is_the_highest_best_candidate_of_a_loop(sample):
    y, s, _, _ = sample  # scores rounded to 2 decimals: many ties
    cands = np.unique(s)
    f1 = np.array([f1_score(y, s >= t, zero_division=0) for t in cands])
    t, best = M.max_f1_threshold(y, s)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    assert t == cands[np.flatnonzero(np.isclose(f1, f1.max(), atol=1e-12))[-1]]
    assert M.f1_at(y, s, t) == pytest.approx(best, abs=1e-12)
    # a perfect separation: the lowest positive score, F1 = 1
    assert M.max_f1_threshold([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9]) == (0.3, 1.0)
    t, best = M.max_f1_threshold([0, 0, 0], [0.1, 0.2, 0.3])  # no positive: no threshold gives F1 > 0
    assert np.isnan(t) and best == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        M.max_f1_threshold([0, 1], [0.1, float("nan")])
