"""Shared pieces of the LLM tests: the tiny random model, a hand-made patient, and a small TJH cohort."""
from __future__ import annotations

import functools

import pandas as pd

from eagrl.config import DataConfig
from eagrl.data.cohort import Cohort, PatientRecord, build_cohort
from eagrl.data.schema import FeatureSpec
from support.data import shared_dir

NAN = float("nan")

FEATURES = [
    FeatureSpec("hemoglobin", "g/L", 120.0, 175.0, aliases=("Hb", "haemoglobin")),
    FeatureSpec("albumin", "g/L", 35.0, 52.0),
    FeatureSpec("Lactate dehydrogenase", "U/L", 120.0, 250.0, aliases=("LDH",)),
    FeatureSpec("procalcitonin", "ng/mL", None, 0.05),
    FeatureSpec("eGFR", "mL/min/1.73m2", 90.0, None),
    FeatureSpec("PH value", "", None, None),
]


def patient(stay_id: str = "p1") -> PatientRecord:
    times = [pd.Timestamp("2020-02-01"), pd.Timestamp("2020-02-03"), pd.Timestamp("2020-02-06")]
    return PatientRecord(
        stay_id=stay_id, sex=1.0, age=73.0, visit_times=times,
        values={
            "hemoglobin": [136.0, NAN, 140.0],
            "albumin": [33.3, 32.1, NAN],
            "Lactate dehydrogenase": [612.0, 701.0, 880.0],
            "procalcitonin": [0.09, NAN, NAN],
            "eGFR": [NAN, NAN, NAN],
            "PH value": [6.5, NAN, 6.0],
        },
        label=1, prediction_time=times[-1] + pd.Timedelta(days=1),
    )


@functools.lru_cache(maxsize=1)
def tjh_cohort(max_stays: int = 40) -> Cohort:
    """A stratified subsample of the real TJH mortality cohort (a few seconds, once per session)."""
    from eagrl.data.sources import get_source

    shared_dir()  # fails the test, naming the folder, when the data is missing
    cfg = DataConfig(dataset="tjh", task="mortality", max_stays=max_stays)
    src = get_source("tjh")
    return build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg)
