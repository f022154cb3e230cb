"""The shapes every source is brought into: feature specs and the canonical raw EHR.

A source loader (``eagrl.data.sources.*``) reads its native files and returns a :class:`RawEHR`:

* ``stays``: one row per stay (hospitalisation / ICU stay / TJH admission), columns
  ``STAY_COLUMNS`` (labels as 0/1 floats, NaN where a task does not apply);
* ``measurements``: long table ``stay_id, time, feature, value`` with one row per observation
  (``time`` a timezone-naive ``datetime64[ns]``, ``feature`` a canonical feature name).

``eagrl.data.cohort.build_cohort`` turns that into the cohort the models use.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import yaml

TASKS = ("mortality", "readmission_30d")
DATASETS = ("mimic-iv-demo", "tjh", "clif", "meds", "physionet2012", "synthetic")

STAY_COLUMNS = [
    "stay_id",  # str, unique
    "patient_id",  # str; splits are by patient
    "sex",  # 1 male, 0 female, NaN unknown
    "age",  # years at admission (MEDS: at the prediction time)
    "admit_time",  # datetime64[ns]
    "discharge_time",  # datetime64[ns] (NaT if unknown)
    "prediction_time",  # datetime64[ns] or NaT: fixed by the source (MEDS, PhysioNet); else set by the cohort
    *(f"label_{t}" for t in TASKS),
]
MEASUREMENT_COLUMNS = ["stay_id", "time", "feature", "value"]


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature is: the name the LLM reads and the expert's schema uses, with its clinical context."""

    name: str
    unit: str = ""
    ref_low: float | None = None  # reference (normal) range, shown in the prompt
    ref_high: float | None = None
    plausible_low: float | None = None  # physiologic plausibility, checked by validation
    plausible_high: float | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def reference_range(self) -> str:
        """Human-readable range for the prompt, e.g. ``"3.5-5.3"``, ``"<10"``, ``"unknown"``."""
        lo, hi = self.ref_low, self.ref_high
        if lo is not None and hi is not None:
            return _fmt(lo) if lo == hi else f"{_fmt(lo)}-{_fmt(hi)}"
        if hi is not None:
            return f"<{_fmt(hi)}"
        if lo is not None:
            return f">{_fmt(lo)}"
        return "unknown"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        d = dict(d)
        d["aliases"] = tuple(d.get("aliases") or ())
        return cls(**d)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def load_specs(path: str | Path) -> list[FeatureSpec]:
    """Read a feature-spec YAML file: a list of mappings with FeatureSpec's fields."""
    with open(path, encoding="utf-8") as fh:
        rows = yaml.safe_load(fh) or []
    return [FeatureSpec.from_dict(r) for r in rows]


def specs_dir() -> Path:
    return Path(__file__).parent / "specs"


@dataclass
class RawEHR:
    """A source after reading, in canonical long form, before windowing and splitting."""

    source: str
    stays: pd.DataFrame
    measurements: pd.DataFrame
    features: list[FeatureSpec]
    # Native tables as read, for the source-level validation suite (required columns, types).
    native: dict[str, pd.DataFrame] = field(default_factory=dict)
    # Optional (stay_id, time) rows of record events that carry no feature value (a TJH row with only the
    # nucleic-acid test): they still make a visit, as in the published preprocessing.
    encounters: pd.DataFrame | None = None
    # Per-visit binning: hours per bin, or "day" for calendar days (TJH).
    default_bin: str | float = "day"
    # Observation window in hours when the config leaves it unset (None: the whole stay).
    default_observation_hours: float | None = None
    # Fixed split per stay (e.g. PhysioNet sets A/B/C), or None to draw a stratified split.
    fixed_split: pd.Series | None = None

    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def is_missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))
