"""The MEDS loader on a small MEDS dataset written here: demographics, feature choice, leakage, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eagrl.config import DataConfig
from eagrl.data.cohort import build_cohort
from eagrl.data.sources import get_source, meds
from eagrl.errors import DataError

HR, CREAT, GLUC, RARE, DIAG = "VITAL//HR", "LAB//50912//mg/dL", "LAB//GLUCOSE", "LAB//RARE", "DIAGNOSIS//ICD//I10"
LEAK_VALUE = 999.0  # measured after subject 1's prediction time: must never reach the cohort
N_SUBJECTS = 20  # subjects 1..20 labelled; 99 has events but no label


def _subject_events(sid: int, start: pd.Timestamp, days: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for h in range(0, days * 24, 4):  # a vital every 4 h, labs daily, a diagnosis without a value
        t = start + pd.Timedelta(hours=h)
        rows.append(dict(subject_id=sid, time=t, code=HR, numeric_value=float(rng.integers(60, 110)), unit="bpm"))
        if h % 24 == 0:
            rows.append(dict(subject_id=sid, time=t, code=CREAT, numeric_value=1.0 + sid / 10, unit="mg/dL"))
            rows.append(dict(subject_id=sid, time=t, code=GLUC, numeric_value=100.0 + sid, unit=None))
            rows.append(dict(subject_id=sid, time=t, code=DIAG, numeric_value=None, unit=None))
    return rows


def _events() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        dict(subject_id=1, time=pd.Timestamp("1950-01-01"), code="MEDS_BIRTH", numeric_value=None, unit=None),
        dict(subject_id=1, time=None, code="GENDER//M", numeric_value=None, unit=None),
        dict(subject_id=2, time=pd.Timestamp("1980-06-15"), code="MEDS_BIRTH", numeric_value=None, unit=None),
        dict(subject_id=2, time=None, code="GENDER//F", numeric_value=None, unit=None),
        # subject 3: no birth, no gender
        dict(subject_id=1, time=pd.Timestamp("2020-01-03 13:00"), code=HR, numeric_value=LEAK_VALUE, unit="bpm"),
        dict(subject_id=1, time=pd.Timestamp("2020-01-01 02:00"), code=RARE, numeric_value=5.0, unit="U/L"),
    ]
    rows += _subject_events(1, pd.Timestamp("2020-01-01"), 4, rng)
    rows += _subject_events(2, pd.Timestamp("2021-05-01"), 10, rng)
    for sid in range(3, N_SUBJECTS + 1):
        if sid > 3:
            rows.append(dict(subject_id=sid, time=pd.Timestamp("1960-01-01"), code="MEDS_BIRTH",
                             numeric_value=None, unit=None))
            rows.append(dict(subject_id=sid, time=None, code=f"GENDER//{'MF'[sid % 2]}", numeric_value=None,
                             unit=None))
        rows += _subject_events(sid, pd.Timestamp("2022-03-01"), 3, rng)
    rows += _subject_events(99, pd.Timestamp("2022-03-01"), 3, rng)
    return pd.DataFrame(rows)


def _labels() -> pd.DataFrame:
    rows = [(1, "2020-01-03 12:00", True), (2, "2021-05-03 00:00", False), (2, "2021-05-10 00:00", True)]
    rows += [(sid, "2022-03-03 00:00", sid % 2 == 0) for sid in range(3, N_SUBJECTS + 1)]
    return pd.DataFrame({"subject_id": [r[0] for r in rows],
                         "prediction_time": pd.to_datetime([r[1] for r in rows]),
                         "boolean_value": [r[2] for r in rows]})


def _write(df: pd.DataFrame, path: Path) -> Path:
    """Write with MEDS types: int64 subject_id, timestamp[us] time, float32 numeric_value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = []
    for f in table.schema:
        if f.name == "subject_id":
            f = f.with_type(pa.int64())
        elif pa.types.is_timestamp(f.type):
            f = f.with_type(pa.timestamp("us"))
        elif f.name == "numeric_value":
            f = f.with_type(pa.float32())
        fields.append(f)
    pq.write_table(table.cast(pa.schema(fields)), path)
    return path


@pytest.fixture
def meds_root(tmp_path: Path) -> Path:
    """A MEDS root with two event shards, a label table and codes metadata."""
    root = tmp_path / "meds"
    ev = _events()
    _write(ev[ev["subject_id"] <= 10], root / "data" / "train" / "0.parquet")
    _write(ev[ev["subject_id"] > 10], root / "data" / "held_out" / "0.parquet")
    _write(_labels(), root / "labels" / "mortality.parquet")
    _write(pd.DataFrame({"code": [CREAT], "description": ["Creatinine"]}), root / "metadata" / "codes.parquet")
    return root


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"dataset": "meds", "task": "mortality", "meds_max_features": 3, **kw})


def test_get_source_and_native_tables(meds_root: Path) -> None:
    assert get_source("meds") is meds
    native = meds.read(meds_root)
    for table, cols in meds.REQUIRED_COLUMNS.items():
        assert set(cols) <= set(native[table].columns)
    assert 99 not in set(native["events"]["subject_id"])  # only labelled subjects are read
    assert len(native["labels"]) == N_SUBJECTS + 1
    assert "unit" in native["events"].columns and "codes" in native


def test_stays_demographics_and_labels(meds_root: Path) -> None:
    raw = meds.to_raw(meds.read(meds_root), _cfg())
    stays = raw.stays.set_index("stay_id")
    assert len(stays) == N_SUBJECTS + 1
    s1 = stays.loc["1@20200103T1200"]
    assert s1["patient_id"] == "1" and s1["sex"] == 1.0
    age = (pd.Timestamp("2020-01-03 12:00") - pd.Timestamp("1950-01-01")) / pd.Timedelta(days=365.25)
    assert s1["age"] == pytest.approx(age) and 70 < age < 70.01
    assert s1["admit_time"] == pd.Timestamp("2020-01-01 00:00")  # the first dated event, not the birth
    assert s1["prediction_time"] == pd.Timestamp("2020-01-03 12:00")
    assert s1["label_mortality"] == 1.0 and np.isnan(s1["label_readmission_30d"])
    s2 = stays.loc[["2@20210503T0000", "2@20210510T0000"]]
    assert (s2["sex"] == 0.0).all() and (s2["patient_id"] == "2").all()
    assert s2["label_mortality"].tolist() == [0.0, 1.0]
    assert s2["age"].iloc[1] > s2["age"].iloc[0]  # age at each sample's prediction time
    s3 = stays.loc["3@20220303T0000"]
    assert np.isnan(s3["sex"]) and np.isnan(s3["age"])
    assert raw.stays["discharge_time"].isna().all()
    assert raw.stays["prediction_time"].dtype == "datetime64[ns]"

    readm = meds.to_raw(meds.read(meds_root), _cfg(task="readmission_30d")).stays
    assert readm["label_mortality"].isna().all() and readm["label_readmission_30d"].notna().all()


def test_features_are_the_most_frequent_numeric_codes(meds_root: Path) -> None:
    raw = meds.to_raw(meds.read(meds_root), _cfg())
    assert raw.feature_names() == [HR, CREAT, GLUC]  # DIAG has no values, RARE is rare
    spec = {f.name: f for f in raw.features}
    assert spec[HR].unit == "bpm" and spec[GLUC].unit == ""
    assert spec[HR].aliases == ("HR",) and spec[HR].reference_range == "unknown"
    assert spec[CREAT].aliases == ("Creatinine",)  # from metadata/codes.parquet; "mg/dL" is the unit
    assert spec[CREAT].description == "Creatinine"
    assert set(raw.measurements["feature"]) <= set(raw.feature_names())
    assert meds.to_raw(meds.read(meds_root), _cfg(meds_max_features=1)).feature_names() == [HR]


def test_no_event_at_or_after_prediction_time_reaches_the_cohort(meds_root: Path) -> None:
    cfg = _cfg()
    raw = meds.to_raw(meds.read(meds_root), cfg)
    m = raw.measurements.merge(raw.stays[["stay_id", "prediction_time"]], on="stay_id")
    assert (m["time"] < m["prediction_time"]).all()
    assert LEAK_VALUE not in set(raw.measurements["value"])

    cohort = build_cohort(raw, cfg)
    assert cohort.meta["bin"] == meds.DEFAULT_BIN_HOURS
    v = cohort.visits.merge(cohort.stays[["stay_id", "prediction_time"]], on="stay_id")
    assert (v["time"] < v["prediction_time"]).all()
    assert not (cohort.visits[HR] == LEAK_VALUE).any()
    assert cohort.visits[HR].max() < LEAK_VALUE
    # subject 2's first sample sees its first two days, its second one nine
    n = cohort.stays.set_index("stay_id")["n_visits"]
    assert n["2@20210503T0000"] < n["2@20210510T0000"]
    assert cohort.stays.groupby("patient_id")["split"].nunique().max() == 1


def test_observation_window(meds_root: Path) -> None:
    cfg = _cfg(observation_hours=24)
    raw = meds.to_raw(meds.read(meds_root), cfg)
    m = raw.measurements.merge(raw.stays[["stay_id", "prediction_time"]], on="stay_id")
    assert (m["time"] >= m["prediction_time"] - pd.Timedelta(hours=24)).all()
    cohort = build_cohort(raw, _cfg(observation_hours=24, bin=12.0))
    assert cohort.stays["n_visits"].max() <= 2


def test_subject_splits_fix_the_split(meds_root: Path) -> None:
    subjects = list(range(1, N_SUBJECTS + 1))
    split = ["held_out" if s > 14 else "tuning" if s > 10 else "train" for s in subjects]
    _write(pd.DataFrame({"subject_id": subjects, "split": split}), meds_root / "metadata" / "subject_splits.parquet")
    cohort = build_cohort(meds.to_raw(meds.read(meds_root), _cfg()), _cfg())
    want = {str(s): {"train": "train", "tuning": "val", "held_out": "test"}[p] for s, p in zip(subjects, split)}
    assert (cohort.stays["split"] == cohort.stays["patient_id"].map(want)).all()
    assert set(cohort.stays["split"]) == {"train", "val", "test"}


# ---------------------------------------------------------------- malformed input
def test_missing_column_names_the_file(meds_root: Path) -> None:
    shard = meds_root / "data" / "train" / "0.parquet"
    _write(pd.read_parquet(shard).drop(columns=["numeric_value"]), shard)
    with pytest.raises(DataError, match=r"0\.parquet lacks the MEDS column\(s\) \['numeric_value'\]"):
        meds.read(meds_root)


def test_missing_label_table(meds_root: Path) -> None:
    (meds_root / "labels" / "mortality.parquet").unlink()
    with pytest.raises(DataError, match="no MEDS label table under .*labels/\\*.parquet or labels.parquet"):
        meds.read(meds_root)


def test_label_table_missing_column(meds_root: Path) -> None:
    path = meds_root / "labels" / "mortality.parquet"
    _write(_labels().drop(columns=["boolean_value"]), path)
    with pytest.raises(DataError, match=r"mortality\.parquet lacks the MEDS column\(s\) \['boolean_value'\]"):
        meds.read(meds_root)


def test_truncated_parquet_names_the_file(meds_root: Path) -> None:
    shard = meds_root / "data" / "held_out" / "0.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"held_out/0\.parquet is not a readable parquet file \(truncated"):
        meds.read(meds_root)


def test_duplicate_label_rows(meds_root: Path) -> None:
    labels = _labels()
    _write(pd.concat([labels, labels.iloc[:1]]), meds_root / "labels" / "mortality.parquet")
    with pytest.raises(DataError, match="sharing a subject and prediction minute, e.g. 1@20200103T1200"):
        meds.to_raw(meds.read(meds_root), _cfg())


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MEDS folder not found"):
        meds.read(tmp_path / "nope")


def test_flat_layout_with_labels_file(tmp_path: Path) -> None:
    _write(_events(), tmp_path / "events.parquet")
    _write(_labels(), tmp_path / "labels.parquet")
    native = meds.read(tmp_path)
    assert len(native["labels"]) == N_SUBJECTS + 1 and native["events"]["subject_id"].nunique() == N_SUBJECTS


# ---------------------------------------------------------------- the default task: the label table's
def test_default_task_is_the_label_tables(meds_root: Path, tmp_path: Path) -> None:
    from eagrl.config import load_config
    from eagrl.errors import ConfigError

    cfg = load_config("default", {"data.dataset": "meds", "data.data_path": str(meds_root)})
    assert cfg.data.task == "mortality"  # labels/mortality.parquet
    readm = tmp_path / "readm"
    _write(_events(), readm / "data" / "0.parquet")
    _write(_labels(), readm / "labels" / "readmission" / "30d" / "0.parquet")
    assert DataConfig(dataset="meds", data_path=str(readm)).task == "readmission_30d"
    # a task given wins over the table's name
    assert DataConfig(dataset="meds", data_path=str(readm), task="mortality").task == "mortality"

    flat = tmp_path / "flat"
    _write(_events(), flat / "events.parquet")
    _write(_labels(), flat / "labels.parquet")
    with pytest.raises(ConfigError, match=r"labels\.parquet\) names no task.*pass --task"):
        load_config("default", {"data.dataset": "meds", "data.data_path": str(flat)})
    assert load_config("default", {"data.dataset": "meds", "data.data_path": str(flat),
                                   "data.task": "mortality"}).data.task == "mortality"
