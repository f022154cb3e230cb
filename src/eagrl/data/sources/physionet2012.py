"""PhysioNet/CinC Challenge 2012: the first 48 h of 12,000 adult ICU stays (see ../shared/data/physionet2012).

Each set (A, B, C) is a tarball of 4,000 per-record CSV files ``Time,Parameter,Value``. Reading them one by one
with pandas would take minutes, so :func:`read` pulls every member's bytes out of the tarball, prefixes each line
with its record id and parses the whole set as one CSV buffer with pyarrow (a few seconds for all 12,000).

:func:`to_raw` then:

* turns the 00:00 descriptors into the stay row (Age -> age, Gender 0/1 -> sex; -1 means missing);
* maps the 37 challenge codes to the readable names of ``specs/physionet2012.yaml`` (the code is an alias);
* drops set C's rows with an empty Parameter and the -1 "missing" values of DiasABP, NIDiasABP and Weight;
* places every stay on a synthetic clock (the challenge has none): admission at :data:`ADMIT_TIME`, measurement
  time = admission + elapsed minutes, prediction at admission + 48 h, so the cohort uses exactly the 48-h window;
* fixes the split to the challenge's: sets A and B train (the cohort draws val from them), set C test.
"""
from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from eagrl.config import DataConfig
from eagrl.data.schema import STAY_COLUMNS, FeatureSpec, RawEHR, load_specs, specs_dir
from eagrl.data.sources import shared_data_dir
from eagrl.errors import DataError

NAME = "physionet2012"
DEFAULT_TASK = "mortality"  # in-hospital death, the challenge's outcome
SETS = ("a", "b", "c")
SPLIT_OF_SET = {"a": "train", "b": "train", "c": "test"}  # the challenge's own train/test protocol
HEADER = b"Time,Parameter,Value"

# The challenge has no wall clock: every stay starts at the same synthetic instant.
ADMIT_TIME = pd.Timestamp("2000-01-01 00:00")
PREDICTION_HOURS = 48.0  # the records are the first 48 h of the stay; mortality is predicted at their end
# 4-h visits: vitals come about hourly and labs about daily, so a 4-h bin usually holds a full set of vitals
# while the 48 h stay as 12 visits, short enough for an LLM prompt yet fine enough to show a trend.
DEFAULT_BIN_HOURS = 4.0

DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType")  # once per record, at 00:00
TIME_SERIES = (
    "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine", "DiasABP", "FiO2",
    "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP", "MechVent", "Na", "NIDiasABP",
    "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH", "Platelets", "RespRate", "SaO2", "SysABP", "Temp",
    "TroponinI", "TroponinT", "Urine", "WBC", "Weight",
)  # Weight is also the sixth descriptor; its 00:00 value is the admission weight, kept as a measurement
MINUS_ONE_IS_MISSING = ("DiasABP", "NIDiasABP", "Weight")  # per the README; elsewhere -1 never occurs

OUTCOME_COLUMNS = ("RecordID", "SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death")
REQUIRED_COLUMNS = {
    "events": {"record_id": "numeric", "time_min": "numeric", "parameter": "string", "value": "numeric",
               "set": "string"},
    "outcomes": {"RecordID": "numeric", "Length_of_stay": "numeric", "In-hospital_death": "numeric",
                 "set": "string"},
}


def default_path() -> Path:
    return shared_data_dir() / "physionet2012"


# ====================================================================== reading
def read(path: str | Path, sets: tuple[str, ...] = SETS) -> dict[str, pd.DataFrame]:
    """Native tables, as in the files: ``events`` (record_id, time_min, parameter, value, set), ``outcomes``.

    ``path`` is the folder holding ``set-{a,b,c}.tar.gz`` (or the unpacked ``set-{a,b,c}/`` folders) and
    ``Outcomes-{a,b,c}.txt``; ``sets`` reads only some of them (tests).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"PhysioNet 2012 folder not found: {root} (expected set-a.tar.gz ... Outcomes-c.txt)")
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise DataError(f"unknown PhysioNet 2012 set(s) {unknown}: choose from {list(SETS)}")
    events = pd.concat([_read_set(root, s) for s in sets], ignore_index=True)
    outcomes = pd.concat([_read_outcomes(root, s) for s in sets], ignore_index=True)
    return {"events": events, "outcomes": outcomes}


def _read_set(root: Path, set_: str) -> pd.DataFrame:
    """All records of one set as one long table, parsed from a single CSV buffer."""
    buffer, n_records = _set_buffer(root, set_)
    where = f"{root}/set-{set_}"
    if n_records == 0:
        raise DataError(f"{where} holds no <RecordID>.txt records")
    table = _parse_buffer(buffer, where)
    minutes = _minutes(table.column("time"), where)
    frame = pd.DataFrame({
        "record_id": table.column("record_id").to_numpy(),
        "time_min": minutes,
        "parameter": table.column("parameter").to_pandas(),
        "value": table.column("value").to_numpy(zero_copy_only=False),
    })
    frame["set"] = set_
    _check_record_ids(frame, where)
    return frame


def _set_buffer(root: Path, set_: str) -> tuple[bytes, int]:
    """Concatenate the set's records into ``record_id,Time,Parameter,Value`` lines (headers removed)."""
    chunks: list[bytes] = []
    for name, data in _members(root, set_):
        record_id = name.rsplit("/", 1)[-1].removesuffix(".txt")
        if not record_id.isdigit():
            continue  # not a record (e.g. a stray README in an unpacked folder)
        first_nl = data.find(b"\n")
        head = (data if first_nl < 0 else data[:first_nl]).rstrip(b"\r")
        if head != HEADER:
            raise DataError(f"{root}/set-{set_}: record {name} does not start with the header "
                            f"{HEADER.decode()!r} (found {head[:40]!r})")
        body = b"" if first_nl < 0 else data[first_nl + 1:].rstrip(b"\r\n")
        if body:
            prefix = record_id.encode() + b","
            chunks.append(prefix + body.replace(b"\n", b"\n" + prefix) + b"\n")
        else:
            chunks.append(b"")
    return b"".join(chunks), len(chunks)


def _members(root: Path, set_: str) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of each record file, from ``set-x.tar.gz`` or an unpacked ``set-x/`` folder."""
    tar_path, folder = root / f"set-{set_}.tar.gz", root / f"set-{set_}"
    if tar_path.is_file():
        try:
            with tarfile.open(tar_path, "r:gz") as tf:
                for member in tf:
                    if member.isfile() and member.name.endswith(".txt"):
                        yield member.name, tf.extractfile(member).read()
        except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:  # zlib.error: a corrupt gzip stream (fuzzing)
            raise DataError(f"{tar_path} is not a readable tar.gz archive (truncated or corrupt?): {exc}") from None
    elif folder.is_dir():
        for file in sorted(folder.glob("*.txt")):
            yield file.name, file.read_bytes()
    else:
        raise DataError(f"PhysioNet 2012 set {set_.upper()} not found: expected {tar_path} or the folder {folder}")


def _parse_buffer(buffer: bytes, where: str) -> pa.Table:
    read_opts = pcsv.ReadOptions(column_names=["record_id", "time", "parameter", "value"])
    convert = pcsv.ConvertOptions(column_types={"record_id": pa.int64(), "time": pa.string(),
                                                "parameter": pa.string(), "value": pa.float64()})
    try:
        return pcsv.read_csv(pa.py_buffer(buffer), read_options=read_opts, convert_options=convert)
    except pa.ArrowInvalid as exc:  # the message quotes the bad row, which starts with its record id
        raise DataError(f"{where}: a record line is not `Time,Parameter,Value` with a numeric Value: {exc}") from None


def _minutes(time: pa.ChunkedArray, where: str) -> np.ndarray:
    """``"HH:MM"`` elapsed since ICU admission -> minutes."""
    parts = pc.split_pattern(time, ":")
    try:
        hours = pc.cast(pc.list_element(parts, 0), pa.int64())
        mins = pc.cast(pc.list_element(parts, 1), pa.int64())
    except (pa.ArrowInvalid, IndexError) as exc:
        raise DataError(f"{where}: a Time is not HH:MM: {exc}") from None
    return pc.add(pc.multiply(hours, 60), mins).to_numpy()


def _check_record_ids(frame: pd.DataFrame, where: str) -> None:
    """The RecordID descriptor must match the file name, or a record was renamed or mixed up."""
    ids = frame[frame["parameter"] == "RecordID"]
    bad = ids[ids["value"] != ids["record_id"]]
    if len(bad):
        raise DataError(f"{where}: {len(bad)} record files whose RecordID line differs from the file name, "
                        f"e.g. {bad['record_id'].iloc[0]}.txt says {bad['value'].iloc[0]:g}")


def _read_outcomes(root: Path, set_: str) -> pd.DataFrame:
    path = root / f"Outcomes-{set_}.txt"
    if not path.is_file():
        raise DataError(f"PhysioNet 2012 labels not found: {path}")
    try:
        df = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be parsed as CSV: {exc}") from None
    missing = [c for c in OUTCOME_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing} (has {list(df.columns)})")
    df["set"] = set_
    return df


# ====================================================================== canonical form
def feature_specs() -> list[FeatureSpec]:
    return load_specs(specs_dir() / "physionet2012.yaml")


def code_names(specs: list[FeatureSpec]) -> dict[str, str]:
    """Challenge code -> canonical name; each code must be an alias of exactly one spec."""
    out: dict[str, str] = {}
    for code in TIME_SERIES:
        owners = [s.name for s in specs if code == s.name or code in s.aliases]
        if len(owners) != 1:
            raise DataError(f"specs/physionet2012.yaml: code {code!r} must be an alias of exactly one feature, "
                            f"found {owners or 'none'}")
        out[code] = owners[0]
    return out


def to_raw(native: dict[str, pd.DataFrame], cfg: DataConfig) -> RawEHR:
    """Stays on the synthetic clock, measurements under canonical names, the challenge's fixed split."""
    events, outcomes = native["events"], native["outcomes"]
    specs = feature_specs()
    stays = _stays(events, outcomes)
    measurements = _measurements(events, code_names(specs), [s.name for s in specs])
    set_of = events.drop_duplicates("record_id").set_index("record_id")["set"]
    fixed_split = pd.Series(set_of.map(SPLIT_OF_SET).to_numpy(), index=set_of.index.astype(str), name="split")
    return RawEHR(source=NAME, stays=stays, measurements=measurements, features=specs, native=native,
                  default_bin=DEFAULT_BIN_HOURS, fixed_split=fixed_split)


def _descriptors(events: pd.DataFrame) -> pd.DataFrame:
    """One row per record (every record file, even one without time series) with its 00:00 descriptors."""
    rows = events[(events["time_min"] == 0) & events["parameter"].isin(DESCRIPTORS)]
    wide = rows.drop_duplicates(["record_id", "parameter"]).pivot(index="record_id", columns="parameter",
                                                                   values="value")
    wide = wide.reindex(index=pd.Index(events["record_id"].unique(), name="record_id"), columns=list(DESCRIPTORS))
    return wide.mask(wide == -1)


def _stays(events: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    desc = _descriptors(events)
    out = outcomes.drop_duplicates("RecordID").set_index("RecordID").reindex(desc.index)
    los_days = out["Length_of_stay"].where(out["Length_of_stay"] >= 0)  # -1: unknown
    ids = desc.index.astype(str)
    stays = pd.DataFrame({
        "stay_id": ids,
        "patient_id": ids,  # the challenge gives one stay per patient and no patient key
        "sex": desc["Gender"].map({0.0: 0.0, 1.0: 1.0}).to_numpy(dtype=float),
        "age": desc["Age"].to_numpy(dtype=float),
        "admit_time": ADMIT_TIME,
        "discharge_time": (ADMIT_TIME + pd.to_timedelta(los_days, unit="D")).to_numpy(),
        "prediction_time": ADMIT_TIME + pd.Timedelta(hours=PREDICTION_HOURS),
        "label_mortality": out["In-hospital_death"].to_numpy(dtype=float),
        "label_readmission_30d": np.nan,  # not in the challenge
    })[STAY_COLUMNS]
    for col in ("admit_time", "discharge_time", "prediction_time"):
        stays[col] = stays[col].astype("datetime64[ns]")
    return stays.sort_values("stay_id", kind="stable").reset_index(drop=True)


def _measurements(events: pd.DataFrame, names: dict[str, str], order: list[str]) -> pd.DataFrame:
    """The time-series rows (Weight at 00:00 included) under canonical names, on the synthetic clock.

    Works on factorized codes: the five million rows are filtered and renamed through small per-name tables
    instead of string comparisons row by row (several times faster).
    """
    codes, params = pd.factorize(events["parameter"], use_na_sentinel=False)
    params = pd.Series(params, dtype=object).fillna("")
    unknown = sorted(set(params) - set(names) - set(DESCRIPTORS) - {""})
    if unknown:
        raise DataError(f"PhysioNet 2012 records carry unknown parameter(s) {unknown[:10]}; "
                        f"expected the 37 challenge variables {list(TIME_SERIES)}")
    feature_of = params.map(names).map({n: i for i, n in enumerate(order)}).fillna(-1).to_numpy(dtype=np.int64)
    minus_one_missing = params.isin(MINUS_ONE_IS_MISSING).to_numpy()
    value = events["value"].to_numpy(dtype=float)
    keep = (feature_of[codes] >= 0) & ~np.isnan(value) & ~(minus_one_missing[codes] & (value == -1))

    record_codes, record_ids = pd.factorize(events["record_id"])
    minutes = events["time_min"].to_numpy()[keep]
    return pd.DataFrame({
        "stay_id": record_ids.astype(str).to_numpy(dtype=object)[record_codes[keep]],
        "time": (ADMIT_TIME + pd.to_timedelta(minutes, unit="m")).astype("datetime64[ns]"),
        "feature": pd.Categorical.from_codes(feature_of[codes[keep]], categories=order),
        "value": value[keep],
    })
