"""The planted-cause synthetic cohort as a source (``--dataset synthetic``): the raw import is a recipe.

``read(path)`` loads the recipe (a YAML file, or a folder holding ``synthetic.yaml``; by default the packaged
``eagrl/data/specs/synthetic.yaml``) and generates its seeded stays and measurements with
:func:`eagrl.data.synthetic.generate`; ``to_raw`` hands them on unchanged. Stays predict after their last
visit (whole stay, one visit per day), as TJH does; only the mortality task has labels.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from eagrl.config import DataConfig
from eagrl.data import synthetic
from eagrl.data.schema import FeatureSpec, RawEHR

NAME = synthetic.NAME
DEFAULT_TASK = "mortality"  # the planted causes drive label_mortality, the recipe's only outcome
REQUIRED_COLUMNS = {
    "stays": {"stay_id": "string", "patient_id": "string", "sex": "numeric", "age": "numeric",
              "admit_time": "datetime", "label_mortality": "numeric"},
    "measurements": {"stay_id": "string", "time": "datetime", "feature": "string", "value": "numeric"},
}
DOMAINS = {"stays": {"label_mortality": [0, 1], "sex": [0, 1]}}


def default_path() -> Path:
    return synthetic.default_recipe_path()


def read(path: str | Path) -> dict[str, pd.DataFrame]:
    """The generated tables of the recipe at ``path``: ``stays``, ``measurements`` and ``features``."""
    ehr = synthetic.generate(synthetic.load_recipe(path))
    return {"stays": ehr.stays, "measurements": ehr.measurements,
            "features": pd.DataFrame([f.to_dict() for f in ehr.features])}


def to_raw(native: dict[str, pd.DataFrame], cfg: DataConfig) -> RawEHR:
    features = [FeatureSpec.from_dict(row) for row in native["features"].to_dict("records")]
    return RawEHR(source=NAME, stays=native["stays"].copy(), measurements=native["measurements"].copy(),
                  features=features, native=native, default_bin="day")
