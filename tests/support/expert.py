"""Cohorts for the expert tests: a synthetic one with a known informative feature set, and TJH."""
from __future__ import annotations

import numpy as np
import pandas as pd

from eagrl.config import DataConfig
from eagrl.data.cohort import Cohort, build_cohort
from eagrl.data.schema import STAY_COLUMNS, FeatureSpec, RawEHR
from support.data import shared_dir


def synthetic_raw(
    n_stays: int = 600,
    n_features: int = 12,
    informative: tuple[int, ...] = (0, 4, 9),
    visits: tuple[int, int] = (3, 8),
    missing: float = 0.2,
    seed: int = 0,
) -> RawEHR:
    """Stays whose label depends only on the level of the ``informative`` features.

    Every feature of a stay hovers around its own level a_f ~ N(0, 1) with visit noise; the label is
    1[sum of a_f over the informative features + noise > 0]. The other features are pure distractors,
    drawn the same way, so only *which* features matter tells them apart.
    """
    rng = np.random.default_rng(seed)
    names = [f"lab_{j:02d}" for j in range(n_features)]
    level = rng.normal(size=(n_stays, n_features))
    risk = level[:, list(informative)].sum(1) + 0.3 * rng.normal(size=n_stays)
    label = (risk > 0).astype(float)
    admit = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 300, n_stays), unit="D")
    ids = [f"s{i:04d}" for i in range(n_stays)]
    stays = pd.DataFrame({
        "stay_id": ids, "patient_id": ids,
        "sex": rng.integers(0, 2, n_stays).astype(float), "age": rng.normal(60, 12, n_stays),
        "admit_time": admit, "discharge_time": admit + pd.Timedelta(days=30),
        "prediction_time": pd.Series(pd.NaT, index=range(n_stays), dtype="datetime64[ns]"),
        "label_mortality": label, "label_readmission_30d": np.nan,
    })[STAY_COLUMNS]
    n_vis = rng.integers(visits[0], visits[1] + 1, n_stays)
    stay_idx = np.repeat(np.arange(n_stays), n_vis)
    day = np.concatenate([np.arange(k) for k in n_vis])
    values = level[stay_idx] + 0.3 * rng.normal(size=(len(stay_idx), n_features))
    values[rng.random(values.shape) < missing] = np.nan
    wide = pd.DataFrame(values, columns=names)
    wide["stay_id"] = np.asarray(ids)[stay_idx]
    wide["time"] = admit[stay_idx] + pd.to_timedelta(day, unit="D")
    long = wide.melt(id_vars=["stay_id", "time"], var_name="feature", value_name="value").dropna()
    return RawEHR(source="synthetic", stays=stays, measurements=long.reset_index(drop=True),
                  features=[FeatureSpec(name=n) for n in names], default_bin="day")


def synthetic_cohort(**kw) -> tuple[Cohort, list[str]]:
    """The cohort and the names of its informative features."""
    raw = synthetic_raw(**kw)
    informative = kw.get("informative", (0, 4, 9))
    cohort = build_cohort(raw, DataConfig(dataset="tjh", task="mortality", seed=kw.get("seed", 0)))
    return cohort, [raw.features[j].name for j in informative]


def tjh_cohort() -> Cohort:
    """TJH mortality, stratified patient-level 70/10/20 split with seed 42, through the project's loader."""
    from eagrl.data.sources import get_source

    shared_dir()  # fails the test, naming the folder, when the data is missing
    cfg = DataConfig(dataset="tjh", task="mortality", seed=42, split=(0.7, 0.1, 0.2))
    src = get_source("tjh")
    return build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg)


def mean_jaccard(c_exp: list[list[str]], truth: list[str]) -> float:
    t = set(truth)
    return float(np.mean([len(set(c) & t) / len(set(c) | t) for c in c_exp]))
