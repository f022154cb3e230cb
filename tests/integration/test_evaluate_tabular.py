"""The logistic-regression reference row on a real cohort (40 TJH mortality stays): its features are each stay's
last measured values, z-scored with the cohort's train statistics, and it is fitted on the train split only."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from support.llm import tjh_cohort

from eagrl.config.evaluate import TabularConfig
from eagrl.errors import DataError
from eagrl.evaluate.tabular import fit_tabular, last_values, score_tabular


def _by_hand(cohort, ids: list[str]) -> np.ndarray:
    """From the raw visit values: the last measured value of each feature, z-scored with the train statistics;
    the train median where the stay never measured it."""
    stats = cohort.meta["normalization"]
    rows = []
    for sid in ids:
        v = cohort.visits[cohort.visits["stay_id"].astype(str) == sid].sort_values("visit")
        row = []
        for f in cohort.feature_names:
            seen = v[f].dropna()
            raw = seen.iloc[-1] if len(seen) else stats[f]["median"]
            row.append((raw - stats[f]["mean"]) / stats[f]["std"])
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def test_last_values_are_the_last_measured_values_z_scored_with_train_statistics():
    cohort = tjh_cohort()
    ids = [str(s) for s in cohort.split_ids("test")] + [str(s) for s in cohort.split_ids("train")][:5]
    x = last_values(cohort, ids)
    assert x.shape == (len(ids), len(cohort.feature_names)) == (13, 73)
    np.testing.assert_allclose(x, _by_hand(cohort, ids), rtol=1e-6, atol=1e-4)  # visits_model is float32
    # a stay with no visit at all takes the imputation value of every feature (the train median)
    sid = ids[0]
    bare = dataclasses.replace(cohort, visits_model=cohort.visits_model[cohort.visits_model["stay_id"].astype(str)
                                                                        != sid])
    stats = cohort.meta["normalization"]
    median_z = [(stats[f]["median"] - stats[f]["mean"]) / stats[f]["std"] for f in cohort.feature_names]
    np.testing.assert_allclose(last_values(bare, [sid])[0], median_z)


def test_logistic_regression_is_fitted_on_the_train_split_and_scores_the_asked_stays(tmp_path):
    cohort = tjh_cohort()
    train = [str(s) for s in cohort.split_ids("train")]
    test = [str(s) for s in cohort.split_ids("test")]
    labels = cohort.stays.assign(stay_id=cohort.stays["stay_id"].astype(str)).set_index("stay_id")["label"]
    fitted = fit_tabular(cohort, TabularConfig(c=0.5), seed=0)
    assert (fitted.n_train, fitted.n_train_positive) == (len(train), int(labels[train].sum()))
    assert f"fitted on {len(train)} train stays" in fitted.note

    pred = score_tabular(fitted, cohort, test, tmp_path / "logreg")
    assert pred["stay_id"].tolist() == test and pred["label"].tolist() == labels[test].tolist()
    # the same problem to the same tolerance (at scikit-learn's 1e-4 the float32 inputs' 2e-4 differences stopped the
    # solver 4 iterations apart, 1.5e-3 off in probability)
    manual = LogisticRegression(C=0.5, class_weight="balanced", max_iter=1000, tol=1e-6).fit(
        _by_hand(cohort, train), labels[train])
    np.testing.assert_allclose(pred["probability"], manual.predict_proba(_by_hand(cohort, test))[:, 1], atol=1e-3)
    assert roc_auc_score(pred["label"], pred["probability"]) > 0.8  # TJH mortality is easy from the last labs
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "logreg" / "predictions.parquet"), pred)
    coef = pd.read_csv(tmp_path / "logreg" / "coefficients.csv")
    assert sorted(coef["feature"]) == sorted(cohort.feature_names)
    assert coef["coefficient"].abs().is_monotonic_decreasing

    # the config is what is fitted: C, and the class weights
    other = fit_tabular(cohort, TabularConfig(c=0.01, balanced=False), seed=0)
    plain = LogisticRegression(C=0.01, max_iter=1000, tol=1e-6).fit(_by_hand(cohort, train), labels[train])
    np.testing.assert_allclose(other.model.coef_, plain.coef_, atol=1e-3)
    assert np.abs(other.model.coef_).sum() < 0.5 * np.abs(fitted.model.coef_).sum()


def test_one_label_in_train_and_other_features_are_named_errors(tmp_path):
    cohort = tjh_cohort()
    stays = cohort.stays[(cohort.stays["split"] != "train") | (cohort.stays["label"] == 0)]
    survivors = dataclasses.replace(cohort, stays=stays.reset_index(drop=True))
    with pytest.raises(DataError, match=r"both labels in the train split of tjh/mortality; its \d+ stays have "
                                        r"label \[0\] only"):
        fit_tabular(survivors, TabularConfig())
    fitted = fit_tabular(cohort, TabularConfig())
    fewer = dataclasses.replace(cohort, features=cohort.features[:-1])
    with pytest.raises(DataError, match="fitted on other features than the tjh cohort"):
        score_tabular(fitted, fewer, [str(s) for s in cohort.split_ids("test")], tmp_path)
