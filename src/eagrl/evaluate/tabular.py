"""The tabular reference row: logistic regression on each stay's last values, fitted at evaluation time.

Features are the cohort's own model inputs (``visits_model``: z-scored with train-only statistics, forward-filled
within the stay, never-measured values imputed with the train median), read at each stay's last visit, so a
feature's value is the last one measured before the prediction time. A stay without any visit takes the
imputation value (the train median) of every feature. The model is scikit-learn's ``LogisticRegression`` (L2,
``evaluate.tabular.c``, balanced class weights by default, solved to ``evaluate.tabular.tol``) fitted on the cohort's
train split; it scores the same stays as every other row of the table and needs no registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl.config.evaluate import TabularConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError


def last_values(cohort: Cohort, stay_ids: list[str]) -> np.ndarray:
    """(len(stay_ids), F): each stay's last-visit values of every feature, in ``cohort.feature_names`` order."""
    names = cohort.feature_names
    vm = cohort.visits_model
    last = (vm.assign(stay_id=vm["stay_id"].astype(str)).sort_values(["stay_id", "visit"], kind="stable")
            .groupby("stay_id", sort=False)[names].last())
    stats = cohort.meta.get("normalization", {})
    missing = [f for f in names if f not in stats]
    if missing:
        raise DataError(f"the {cohort.dataset}/{cohort.task} cohort has no train statistics for {missing[:5]} "
                        "(meta.json normalization); prepare it again (eagrl data prepare)")
    impute = pd.Series({f: (stats[f]["median"] - stats[f]["mean"]) / stats[f]["std"] for f in names})
    return last.reindex([str(s) for s in stay_ids]).fillna(impute)[names].to_numpy(dtype=np.float64)


def _labels(cohort: Cohort, stay_ids: list[str]) -> np.ndarray:
    by_id = cohort.stays.assign(stay_id=cohort.stays["stay_id"].astype(str)).set_index("stay_id")["label"]
    return by_id.loc[[str(s) for s in stay_ids]].to_numpy(dtype=int)


@dataclass
class FittedTabular:
    model: object  # a fitted sklearn LogisticRegression
    feature_names: list[str]
    n_train: int
    n_train_positive: int

    @property
    def note(self) -> str:
        return (f"logistic regression on the last values of {len(self.feature_names)} features, fitted on "
                f"{self.n_train} train stays ({self.n_train_positive} positive) at evaluation time")

    def coefficients(self) -> pd.DataFrame:
        coef = np.asarray(self.model.coef_, dtype=np.float64)[0]
        table = pd.DataFrame({"feature": self.feature_names, "coefficient": coef})
        return table.reindex(table["coefficient"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def fit_tabular(cohort: Cohort, cfg: TabularConfig, seed: int = 0) -> FittedTabular:
    """Logistic regression fitted on the cohort's train split (both labels needed)."""
    from sklearn.linear_model import LogisticRegression

    ids = [str(s) for s in cohort.split_ids("train")]
    y = _labels(cohort, ids)
    if len(set(y.tolist())) < 2:
        raise DataError(f"logistic regression needs both labels in the train split of {cohort.dataset}/"
                        f"{cohort.task}; its {len(ids)} stays have label {sorted(set(y.tolist()))} only")
    model = LogisticRegression(C=cfg.c, class_weight="balanced" if cfg.balanced else None, max_iter=cfg.max_iter,
                               tol=cfg.tol, random_state=seed)
    model.fit(last_values(cohort, ids), y)
    return FittedTabular(model, cohort.feature_names, len(ids), int(y.sum()))


def score_tabular(fitted: FittedTabular, cohort: Cohort, ids: list[str], out_dir: str | Path) -> pd.DataFrame:
    """The fitted model's probability for each of ``ids`` (stay_id, label, probability), written beside its
    coefficients."""
    if fitted.feature_names != cohort.feature_names:
        diff = sorted(set(fitted.feature_names) ^ set(cohort.feature_names))[:5]
        raise DataError(f"the logistic regression was fitted on other features than the {cohort.dataset} cohort "
                        f"(e.g. {diff})")
    probs = fitted.model.predict_proba(last_values(cohort, ids))[:, 1]
    pred = pd.DataFrame({"stay_id": [str(s) for s in ids], "label": _labels(cohort, ids),
                         "probability": probs.astype(np.float64)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred.to_parquet(out / "predictions.parquet", index=False)
    fitted.coefficients().to_csv(out / "coefficients.csv", index=False)
    return pred
