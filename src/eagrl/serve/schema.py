"""The canonical patient JSON of the clinical route, and what the route answers.

One patient record, the same thing the training prompts are built from (:class:`~eagrl.data.cohort.PatientRecord`)::

    {
      "patient_id": "optional, echoed back, never logged",
      "sex": "male" | "female" | null,
      "age": 63,                                  # years, or null
      "visits": [                                 # in time order, 1 to serve.max_visits
        {"time": "2020-02-01T00:00:00",           # ISO 8601; the prompt shows days (or hours) since visit 1
         "values": {"hemoglobin": 136, "LDH": 612, "albumin": null}},
        ...
      ]
    }

``values`` names features by their canonical name or any alias of the served dataset's feature specs
(``eagrl.data.specs/<dataset>.yaml``, or the prepared cohort's ``features.json``); a feature left out or
``null`` in a visit is "not measured" (NaN), exactly as in the cohort's visit table. An unknown name, a
non-numeric value, more than ``max_visits`` visits or visits out of time order are 4xx errors that name
the field, never its value. :func:`to_record` turns a validated body into the ``PatientRecord`` that
:func:`eagrl.llm.prompt.build_prompt` serialises, so serving and training produce the same prompt text;
:func:`record_to_json` is the inverse (tests, clients exporting a cohort).

The answer (:class:`ClinicalPrediction`): the probability read by the structured generator, the reasoning
steps (sub-question, answer), the important features (matched to canonical names) and whether the response
was well formed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from eagrl.data.cohort import PatientRecord
from eagrl.data.schema import FeatureSpec
from eagrl.errors import DataError

SEX_CODES = {"male": 1.0, "female": 0.0}


class Visit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: datetime = Field(description="When the values were measured (ISO 8601).")
    values: dict[str, float | None] = Field(
        default_factory=dict, description="Feature name (canonical or alias) -> value; null or absent: not measured."
    )

    @field_validator("values")
    @classmethod
    def _finite(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        bad = [k for k, x in v.items() if x is not None and not math.isfinite(x)]
        if bad:
            raise ValueError(f"values must be finite numbers or null; not for {bad[:5]}")
        return v


class PatientIn(BaseModel):
    """One patient as the clinical route takes it (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "patient_id": "demo-1", "sex": "male", "age": 63,
        "visits": [{"time": "2020-02-01", "values": {"hemoglobin": 136, "LDH": 612}},
                   {"time": "2020-02-03", "values": {"hemoglobin": 128, "albumin": 30.1}}]}]})

    patient_id: str | None = Field(None, max_length=128, description="Echoed back; never logged.")
    sex: Literal["male", "female"] | None = Field(None, description="male | female | null (unknown).")
    age: float | None = Field(None, ge=0, le=130, description="Age in years, or null.")
    visits: list[Visit] = Field(min_length=1, description="Visits in time order.")

    @field_validator("visits")
    @classmethod
    def _ordered(cls, v: list[Visit]) -> list[Visit]:
        times = [pd.Timestamp(x.time).tz_localize(None) if pd.Timestamp(x.time).tzinfo else pd.Timestamp(x.time)
                 for x in v]
        if any(b < a for a, b in zip(times, times[1:])):
            raise ValueError("visits must be in time order (oldest first)")
        return v


class Step(BaseModel):
    subquestion: str
    answer: str


class ClinicalPrediction(BaseModel):
    patient_id: str | None = None
    probability: float | None = Field(description="P(outcome) read from the model; null if none was written.")
    well_formed: bool
    steps: list[Step] = Field(default_factory=list, description="The reasoning: (sub-question, answer) pairs.")
    important_features: list[str] = Field(default_factory=list, description="Canonical names the model cited.")
    task: str
    model: str
    prompt_tokens: int
    features_shown: int = Field(description="Feature lines in the prompt (after the token budget).")


def alias_map(features: Sequence[FeatureSpec]) -> dict[str, str]:
    """Lower-cased canonical names and aliases -> canonical name."""
    out: dict[str, str] = {}
    for f in features:
        for key in (f.name, *f.aliases):
            out.setdefault(key.strip().lower(), f.name)
    return out


def to_record(patient: PatientIn, features: Sequence[FeatureSpec], *, max_visits: int | None = None) -> PatientRecord:
    """The PatientRecord the prompt serialiser reads; unknown feature names are a DataError naming them."""
    if max_visits is not None and len(patient.visits) > max_visits:
        raise DataError(f"visits: {len(patient.visits)} visits, at most {max_visits} are accepted")
    names = alias_map(features)
    unknown = sorted({k for v in patient.visits for k in v.values if k.strip().lower() not in names})
    if unknown:
        raise DataError(f"visits[].values: unknown feature name(s) {unknown[:8]}; use the names or aliases of "
                        f"the served feature specs (GET /clinical/v1/features)")
    series = {f.name: [math.nan] * len(patient.visits) for f in features}
    for i, visit in enumerate(patient.visits):
        for key, value in visit.values.items():
            if value is not None:
                series[names[key.strip().lower()]][i] = float(value)
    times = [pd.Timestamp(v.time) for v in patient.visits]
    times = [t.tz_convert(None) if t.tzinfo else t for t in times]
    return PatientRecord(
        stay_id=patient.patient_id or "request",
        sex=SEX_CODES.get(patient.sex, math.nan) if patient.sex else math.nan,
        age=math.nan if patient.age is None else float(patient.age),
        visit_times=times, values=series, label=-1,  # unknown at serving time; the prompt never reads it
        prediction_time=times[-1],
    )


def record_to_json(record: PatientRecord) -> dict:
    """The canonical JSON of a cohort patient (the inverse of :func:`to_record`)."""
    sex = {1.0: "male", 0.0: "female"}.get(record.sex) if not _nan(record.sex) else None
    visits = []
    for i, t in enumerate(record.visit_times):
        values = {name: float(vals[i]) for name, vals in record.values.items() if not _nan(vals[i])}
        visits.append({"time": pd.Timestamp(t).isoformat(), "values": values})
    return {"patient_id": record.stay_id, "sex": sex, "age": None if _nan(record.age) else float(record.age),
            "visits": visits}


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))
