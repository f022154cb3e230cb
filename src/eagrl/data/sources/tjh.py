"""TJH: Tongji Hospital COVID-19 blood tests (Yan et al., 2020), from the raw English xlsx.

Reproduces the published pyehr preprocessing (see ../shared/data/tjh/README.md): forward-fill the patient
id, recode sex (2 -> 0), truncate dates to the day, drop rows without id/record date/discharge date, drop the
constant nucleic-acid column, negative lab values to NaN, and one visit per patient-day (the cohort's "day"
binning averages same-day rows). Result: 361 patients, 1,704 visits, 73 labs plus sex and age.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd
from python_calamine import CalamineError

from eagrl.config import DataConfig
from eagrl.data.schema import STAY_COLUMNS, RawEHR, load_specs, specs_dir
from eagrl.data.sources import shared_data_dir
from eagrl.errors import DataError

NAME = "tjh"
DEFAULT_TASK = "mortality"  # the only outcome the sheet has
FILE_NAME = "time_series_375_prerpocess_en.xlsx"
ID, TIME, ADMIT, DISCHARGE = "PATIENT_ID", "RE_DATE", "Admission time", "Discharge time"
REQUIRED_COLUMNS = {
    "records": {
        ID: "numeric",
        TIME: "datetime",
        "age": "numeric",
        "gender": "numeric",
        ADMIT: "datetime",
        DISCHARGE: "datetime",
        "outcome": "numeric",
    }
}
# Value domains on every raw row (a label or age is repeated on each row of a patient, and the cohort reads
# only the first): a list is a value set, a tuple a (min, max) range.
DOMAINS = {"records": {"outcome": [0, 1], "gender": [1, 2], "age": (0, 120)}}
DROPPED = ("2019-nCoV nucleic acid detection",)  # constant in the source; pyehr drops it


def default_path() -> Path:
    return shared_data_dir() / "tjh"


def _resolve(path: Path) -> Path:
    if path.is_dir():
        path = path / FILE_NAME
    if not path.exists():
        raise DataError(f"TJH file not found: {path} (expected {FILE_NAME} or a .csv export of it)")
    if path.stat().st_size == 0:
        raise DataError(f"TJH file {path} is empty")
    return path


def read(path: str | Path) -> dict[str, pd.DataFrame]:
    """Read the raw sheet (xlsx, or a CSV export of it) without interpreting it."""
    path = _resolve(Path(path))
    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path, encoding="utf-8")
        else:
            df = pd.read_excel(path, sheet_name=0, engine="calamine")  # Rust reader: the same frame, ~4x openpyxl
    except UnicodeDecodeError as exc:
        raise DataError(
            f"TJH file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); re-export it as UTF-8"
        ) from None
    except (CalamineError, zipfile.BadZipFile, zlib.error, ElementTree.ParseError, EOFError, KeyError, OSError) as exc:
        # calamine reports a corrupt workbook as a CalamineError (XmlError, ZipError); the others are what fuzzing
        # found escaping openpyxl (corrupt deflate stream, sheet XML), kept while the fuzz campaign replays them
        raise DataError(
            f"TJH file {path} is not a readable xlsx workbook (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"TJH file {path} cannot be parsed: {exc}") from None
    if df.empty:
        raise DataError(f"TJH file {path} has no data rows on its first sheet")
    df.columns = [str(c).strip() for c in df.columns]
    for col in (TIME, ADMIT, DISCHARGE):  # a CSV export carries dates as text
        if col in df.columns and not pd.api.types.is_datetime64_any_dtype(df[col]):
            df[col] = pd.to_datetime(df[col], errors="coerce")
    return {"records": df}


def to_raw(native: dict[str, pd.DataFrame], cfg: DataConfig) -> RawEHR:
    df = native["records"].copy()
    df[ID] = df[ID].ffill()
    for col in (TIME, ADMIT, DISCHARGE):
        df[col] = df[col].astype("datetime64[ns]").dt.normalize()
    df = df.dropna(subset=[ID, TIME, DISCHARGE])
    df["stay_id"] = df[ID].astype(int).astype(str)

    specs = load_specs(specs_dir() / "tjh.yaml")
    labs = [s.name for s in specs]
    missing = [c for c in labs if c not in df.columns]
    if missing:
        raise DataError(f"TJH file lacks {len(missing)} lab columns, e.g. {missing[:5]}")

    first = df.groupby("stay_id", sort=True).first()
    stays = pd.DataFrame(
        {
            "stay_id": first.index.to_numpy(),
            "patient_id": first.index.to_numpy(),
            "sex": first["gender"].map({1: 1.0, 2: 0.0}).to_numpy(),
            "age": first["age"].astype(float).to_numpy(),
            "admit_time": first[ADMIT].to_numpy(),
            "discharge_time": first[DISCHARGE].to_numpy(),
            "prediction_time": pd.NaT,
            "label_mortality": first["outcome"].astype(float).to_numpy(),
            "label_readmission_30d": float("nan"),
        }
    )[STAY_COLUMNS]
    stays["prediction_time"] = stays["prediction_time"].astype("datetime64[ns]")

    values = df[labs].apply(pd.to_numeric, errors="coerce")
    values = values.mask(values < 0)  # negative lab values are entry errors in this source
    long = pd.concat([df[["stay_id", TIME]], values], axis=1).melt(
        id_vars=["stay_id", TIME], var_name="feature", value_name="value"
    )
    long = long.dropna(subset=["value"]).rename(columns={TIME: "time"}).reset_index(drop=True)
    encounters = df[["stay_id", TIME]].drop_duplicates().rename(columns={TIME: "time"}).reset_index(drop=True)
    return RawEHR(source=NAME, stays=stays, measurements=long[["stay_id", "time", "feature", "value"]],
                  features=specs, native=native, encounters=encounters, default_bin="day")
