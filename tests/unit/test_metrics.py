"""Metrics equal sklearn's on fixed data, for the point estimate and for every bootstrap resample."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score

from eagrl import metrics as M


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    n = 120
    y = (rng.random(n) < 0.35).astype(float)
    s = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    s = np.round(s, 2)  # ties on purpose: AUROC counts them one half, AP groups them into one threshold
    return y, s


def _ece_loop(y, s, n_bins=10):
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = (s >= lo) & ((s < hi) if b < n_bins - 1 else (s <= hi))
        if sel.any():
            total += sel.sum() / len(s) * abs(s[sel].mean() - y[sel].mean())
    return total


def test_point_estimates_equal_sklearn(data):
    y, s = data
    assert np.unique(s).size < s.size  # the fixture has ties
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert M.f1_at(y, s) == pytest.approx(f1_score(y, s >= 0.5), abs=1e-12)
    assert M.f1_at(y, s, 0.7) == pytest.approx(f1_score(y, s >= 0.7), abs=1e-12)
    assert M.brier(y, s) == pytest.approx(brier_score_loss(y, s), abs=1e-12)
    assert M.ece(y, s) == pytest.approx(_ece_loop(y, s), abs=1e-12)


def test_every_resample_equals_sklearn_on_that_resample(data):
    y, s = data
    n_boot, seed = 40, 7
    dist = M.bootstrap_distribution(y, s, n_boot=n_boot, seed=seed)
    idx = M.bootstrap_indices(len(y), n_boot, seed)
    assert idx.shape == (n_boot, len(y))
    for r in range(n_boot):
        yr, sr = y[idx[r]], s[idx[r]]
        assert dist["auroc"][r] == pytest.approx(roc_auc_score(yr, sr), abs=1e-12)
        assert dist["auprc"][r] == pytest.approx(average_precision_score(yr, sr), abs=1e-12)
        assert dist["f1"][r] == pytest.approx(f1_score(yr, sr >= 0.5), abs=1e-12)
        assert dist["brier"][r] == pytest.approx(brier_score_loss(yr, sr), abs=1e-12)
        assert dist["ece"][r] == pytest.approx(_ece_loop(yr, sr), abs=1e-12)


def test_chunking_does_not_change_the_distribution(data, monkeypatch):
    y, s = data
    whole = M.bootstrap_distribution(y, s, n_boot=100, seed=1)
    monkeypatch.setattr(M, "_MAX_CELLS", len(y) * 7)  # 15 chunks, the last one short
    chunked = M.bootstrap_distribution(y, s, n_boot=100, seed=1)
    for m in M.METRICS:
        np.testing.assert_allclose(whole[m], chunked[m], rtol=0, atol=1e-12)  # BLAS blocking only


def test_evaluate_binary_flat_prefixed_and_seeded(data):
    y, s = data
    out = M.evaluate_binary(y, s, prefix="test_", seed=0)
    for m in M.METRICS:
        lo, hi = out[f"test_{m}_ci"]
        assert lo <= out[f"test_{m}"] <= hi
        assert isinstance(out[f"test_{m}"], float)
    assert out["test_n"] == len(y) and out["test_n_positive"] == int(y.sum())
    assert out == M.evaluate_binary(y, s, prefix="test_", seed=0)
    assert out["test_auroc_ci"] != M.evaluate_binary(y, s, prefix="test_", seed=1)["test_auroc_ci"]
    assert "auroc_ci" not in M.evaluate_binary(y, s, n_boot=0)
    flat = M.scalar_metrics(out)
    assert flat["test_auroc_ci_low"] == out["test_auroc_ci"][0]
    assert all(isinstance(v, float) for v in flat.values())


def test_interval_width_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2000):
        y = (rng.random(n) < 0.4).astype(float)
        s = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, n))))
        lo, hi = M.evaluate_binary(y, s, metrics=["auroc"])["auroc_ci"]
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_undefined_resamples_are_nan_not_errors():
    y = np.array([1.0, 0, 0, 0, 0, 0, 0, 0])
    s = np.linspace(0.9, 0.1, 8)
    dist = M.bootstrap_distribution(y, s, metrics=["auroc", "auprc"], n_boot=200, seed=0)
    assert np.isnan(dist["auroc"]).any() and np.isfinite(dist["auroc"]).any()
    assert np.isnan(M.auroc(np.zeros(4), [0.1, 0.2, 0.3, 0.4]))


def test_paired_bootstrap(data):
    y, s = data
    same = M.paired_bootstrap(y, s, s.copy())
    assert same["diff"] == 0 and same["diff_ci"] == [0.0, 0.0]
    rng = np.random.default_rng(1)
    worse = np.clip(s + rng.normal(0, 0.4, len(s)), 0, 1)
    res = M.paired_bootstrap(y, s, worse, "auroc", seed=0)
    assert res["a"] == pytest.approx(roc_auc_score(y, s))
    assert res["b"] == pytest.approx(roc_auc_score(y, worse))
    assert res["diff"] > 0 and res["diff_ci"][0] > 0 and res["p_value"] < 0.05
    # The paired interval is narrower than the difference of two independent intervals would suggest.
    a_ci = M.evaluate_binary(y, s, metrics=["auroc"])["auroc_ci"]
    b_ci = M.evaluate_binary(y, worse, metrics=["auroc"])["auroc_ci"]
    assert res["diff_ci"][1] - res["diff_ci"][0] < (a_ci[1] - a_ci[0]) + (b_ci[1] - b_ci[0])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="3 values but y_score has 2"):
        M.auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0/1"):
        M.auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        M.auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="unknown metric"):
        M.evaluate_binary([0, 1], [0.1, 0.2], metrics=["accuracy"])
