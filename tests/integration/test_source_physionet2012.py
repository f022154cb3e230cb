"""The PhysioNet 2012 loader on the real files in ../shared/data/physionet2012 (read once per module, ~5 s)."""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eagrl.config import DataConfig
from eagrl.data.cohort import Cohort, build_cohort
from eagrl.data.schema import RawEHR
from eagrl.data.sources import get_source
from eagrl.data.sources import physionet2012 as pn
from eagrl.errors import DataError

CFG = DataConfig(dataset="physionet2012", task="mortality")
NO_TIME_SERIES = ["140501", "140936", "141264", "142731", "142998", "143656", "145611", "147514", "150309",
                  "150649", "155655", "156254"]  # listed in the dataset's README
ADMIT = pn.ADMIT_TIME
PREDICT = ADMIT + pd.Timedelta(hours=48)


@pytest.fixture(scope="module")
def root(shared_data) -> Path:
    """The real files; the test fails (never skips: it asserts on them) when they are not there."""
    folder = pn.default_path()
    if not (folder / "set-a.tar.gz").is_file():
        pytest.fail(f"PhysioNet 2012 not found at {folder} (expected set-a.tar.gz; or set EAGRL_SHARED_DATA)",
                    pytrace=False)
    return folder


@pytest.fixture(scope="module")
def native(root) -> dict[str, pd.DataFrame]:
    return pn.read(root)


@pytest.fixture(scope="module")
def raw(native) -> RawEHR:
    return pn.to_raw(native, CFG)


@pytest.fixture(scope="module")
def cohort(raw) -> Cohort:
    """The cohort of every 6th stay (about 2,000, record 132539 included): the full one is a slow test."""
    keep = set(raw.stays["stay_id"].iloc[::6]) | {"132539"}
    small = RawEHR(source=raw.source, stays=raw.stays[raw.stays["stay_id"].isin(keep)],
                   measurements=raw.measurements[raw.measurements["stay_id"].isin(keep)], features=raw.features,
                   default_bin=raw.default_bin, fixed_split=raw.fixed_split)
    return build_cohort(small, CFG)


# ---------------------------------------------------------------- reading
def test_counts(native, raw) -> None:
    assert get_source("physionet2012") is pn
    ev, out = native["events"], native["outcomes"]
    for table, cols in pn.REQUIRED_COLUMNS.items():
        assert set(cols) <= set(native[table].columns)
    assert ev["record_id"].nunique() == 12_000 and len(out) == 12_000
    assert ev.groupby("set")["record_id"].nunique().to_dict() == {"a": 4000, "b": 4000, "c": 4000}
    assert out.groupby("set")["In-hospital_death"].sum().to_dict() == {"a": 554, "b": 568, "c": 585}
    assert (ev["parameter"] == "").sum() == 2403  # set C's unnamed rows, kept in the native table
    assert len(raw.stays) == 12_000 and raw.stays["stay_id"].is_unique
    assert raw.stays["label_mortality"].sum() == 1707 and raw.stays["label_readmission_30d"].isna().all()
    assert len(raw.features) == 37


def test_measurements_are_clean(native, raw) -> None:
    m = raw.measurements
    assert m["feature"].notna().all() and set(m["feature"].cat.categories) == set(raw.feature_names())
    assert m["time"].dtype == "datetime64[ns]"
    assert m["time"].between(ADMIT, PREDICT).all()
    minus_one = [pn.code_names(raw.features)[c] for c in pn.MINUS_ONE_IS_MISSING]
    assert not ((m["value"] == -1) & m["feature"].isin(minus_one)).any()
    # records without time series keep at most their admission weight, so the cohort drops them (< 2 visits)
    empty = m[m["stay_id"].isin(NO_TIME_SERIES)]
    assert set(empty["feature"]) <= {"Body weight"} and (empty["time"] == ADMIT).all()
    # every named time-series row survives except the -1 "missing" values
    ev = native["events"]
    ts = ev[ev["parameter"].isin(pn.TIME_SERIES)]
    assert len(m) == len(ts) - int((ts["parameter"].isin(pn.MINUS_ONE_IS_MISSING) & (ts["value"] == -1)).sum())


def test_record_132539_by_hand(raw) -> None:
    """Values read off set-a/132539.txt and Outcomes-a.txt."""
    s = raw.stays.set_index("stay_id").loc["132539"]
    assert (s["age"], s["sex"], s["label_mortality"]) == (54.0, 0.0, 0.0)
    assert s["admit_time"] == ADMIT and s["prediction_time"] == PREDICT
    assert s["discharge_time"] == ADMIT + pd.Timedelta(days=5)
    assert raw.fixed_split["132539"] == "train"
    m = raw.measurements[raw.measurements["stay_id"] == "132539"]
    assert len(m) == 267  # 274 lines - header - 6 descriptors (its 00:00 Weight is -1)
    hr = m[m["feature"] == "Heart rate"].sort_values("time")
    assert len(hr) == 37
    assert hr["value"].iloc[:3].tolist() == [73.0, 77.0, 60.0]
    assert hr["time"].iloc[0] == ADMIT + pd.Timedelta(minutes=7)
    assert not (m["feature"] == "Body weight").any()


def test_descriptors_and_split(raw) -> None:
    st = raw.stays
    assert st["age"].between(15, 90).all()
    assert set(st["sex"].dropna()) == {0.0, 1.0} and st["sex"].isna().sum() == 12  # Gender -1
    assert (st["stay_id"] == st["patient_id"]).all()
    assert raw.fixed_split.value_counts().to_dict() == {"train": 8000, "test": 4000}
    assert raw.default_bin == pn.DEFAULT_BIN_HOURS


# ---------------------------------------------------------------- cohort
def test_cohort_splits_and_no_leakage(raw, cohort) -> None:
    st = cohort.stays
    set_of = raw.fixed_split.map({"train": "ab", "test": "c"})
    assert set(st.loc[st["split"] == "test", "stay_id"].map(set_of)) == {"c"}
    assert set(st.loc[st["stay_id"].map(set_of) == "c", "split"]) == {"test"}
    assert set(st["split"]) == {"train", "val", "test"}
    assert st.groupby("patient_id")["split"].nunique().max() == 1
    assert set(st["stay_id"]).isdisjoint(NO_TIME_SERIES)
    assert (st["prediction_time"] == PREDICT).all()
    v = cohort.visits.merge(st[["stay_id", "prediction_time"]], on="stay_id")
    assert (v["time"] < v["prediction_time"]).all()
    assert (raw.measurements["time"] == PREDICT).any()  # 48:00 rows exist in the source ...
    assert v["time"].max() < PREDICT  # ... and stay out of the cohort
    assert st["n_visits"].max() == 12  # 48 h in 4-h bins
    assert ((v["time"] - ADMIT) % pd.Timedelta(hours=4) == pd.Timedelta(0)).all()


@pytest.mark.slow
def test_full_cohort(raw) -> None:
    """All 12,000 stays: the 12 without time series and 8 with a single 4-h visit are dropped."""
    st = build_cohort(raw, CFG).stays
    assert len(st) == 11_980 and st["label"].sum() == 1706
    assert set(st["stay_id"]).isdisjoint(NO_TIME_SERIES)
    assert (st["split"] == "test").sum() == 3994 and (st["split"] == "val").sum() > 900
    assert st.groupby("patient_id")["split"].nunique().max() == 1


def test_cohort_record_132539_visits(cohort) -> None:
    rec = cohort.patient("132539")
    assert len(rec.visit_times) == 12 and rec.visit_times[0] == ADMIT
    assert rec.values["Heart rate"][0] == pytest.approx((73 + 77 + 60 + 62 + 80) / 5)
    assert rec.values["Body temperature"][0] == pytest.approx((35.1 + 35.6 + 37.8) / 3)
    assert rec.values["Urine output"][0] == pytest.approx((900 + 60 + 30 + 170 + 60) / 5)
    assert rec.values["Heart rate"][-1] == pytest.approx((84 + 86) / 2)
    assert np.isnan(rec.values["Lactate"]).all()  # never measured in this stay


# ---------------------------------------------------------------- specs
def test_specs(raw) -> None:
    specs = raw.features
    names = [s.name for s in specs]
    assert len(set(names)) == 37
    words = [w.lower() for s in specs for w in (s.name, *s.aliases)]
    assert len(words) == len(set(words)), "a name or alias is shared by two features"
    assert sorted(pn.code_names(specs)) == sorted(pn.TIME_SERIES)
    by_code = {c: next(s for s in specs if s.name == n) for c, n in pn.code_names(specs).items()}
    assert by_code["HR"].name == "Heart rate" and by_code["HR"].unit == "bpm"
    assert by_code["Creatinine"].name == "Serum creatinine"
    assert (by_code["Temp"].unit, by_code["FiO2"].plausible_high, by_code["GCS"].plausible_low) == ("°C", 1.0, 3.0)
    assert all(s.plausible_low is not None and s.plausible_high is not None for s in specs)


def test_plausible_ranges_flag_only_garbage(raw) -> None:
    """Share of values outside each plausible range (all 12,000 stays); the ranges flag recording garbage."""
    m = raw.measurements
    lo = m["feature"].map({s.name: s.plausible_low for s in raw.features}).astype(float)
    hi = m["feature"].map({s.name: s.plausible_high for s in raw.features}).astype(float)
    outside = (m["value"] < lo) | (m["value"] > hi)
    share = outside.groupby(m["feature"], observed=True).mean()
    assert share.max() < 0.005, share[share > 0.005]
    assert outside.sum() < 0.002 * len(m)
    names = pn.code_names(raw.features)
    bad = m[outside]
    for code, value in [("Temp", -17.8), ("pH", 735.0), ("SysABP", 0.0), ("WBC", 12500.0)]:
        assert ((bad["feature"] == names[code]) & (bad["value"] == value)).any(), (code, value)


# ---------------------------------------------------------------- bad input and the unpacked layout
def _write_record(folder: Path, rid: int, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rid}.txt").write_text("\n".join(["Time,Parameter,Value", *lines]) + "\n")


def _descriptor_lines(rid: int, age: int, gender: int, weight: float = -1) -> list[str]:
    return [f"00:00,RecordID,{rid}", f"00:00,Age,{age}", f"00:00,Gender,{gender}", "00:00,Height,-1",
            "00:00,ICUType,3", f"00:00,Weight,{weight:g}"]


def _outcomes(path: Path, rows: list[tuple[int, int]]) -> None:
    lines = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    lines += [f"{r},10,3,-1,-1,{d}" for r, d in rows]
    path.write_text("\n".join(lines) + "\n")


def test_unpacked_folder_layout(tmp_path: Path) -> None:
    _write_record(tmp_path / "set-a", 1, _descriptor_lines(1, 70, 1, 80) + ["01:05,HR,90", "05:00,HR,-1", "05:00,,3.0"])
    _write_record(tmp_path / "set-a", 2, _descriptor_lines(2, 40, 0))
    _outcomes(tmp_path / "Outcomes-a.txt", [(1, 1), (2, 0)])
    raw = pn.to_raw(pn.read(tmp_path, sets=("a",)), CFG)
    assert raw.stays["stay_id"].tolist() == ["1", "2"] and raw.stays["discharge_time"].isna().all()
    m = raw.measurements.sort_values("time")
    assert m["feature"].tolist() == ["Body weight", "Heart rate", "Heart rate"]  # HR -1 is a value, not missing
    assert m["time"].iloc[1] == ADMIT + pd.Timedelta(minutes=65)


def test_missing_and_corrupt_files(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        pn.read(tmp_path / "nope")
    with pytest.raises(DataError, match=r"set A not found: expected .*set-a\.tar\.gz"):
        pn.read(tmp_path, sets=("a",))
    data = (root / "set-a.tar.gz").read_bytes()
    (tmp_path / "set-a.tar.gz").write_bytes(data[: len(data) // 3])
    shutil.copy(root / "Outcomes-a.txt", tmp_path / "Outcomes-a.txt")
    with pytest.raises(DataError, match=r"set-a\.tar\.gz is not a readable tar\.gz archive \(truncated"):
        pn.read(tmp_path, sets=("a",))


def test_bad_record_and_outcomes(tmp_path: Path) -> None:
    _write_record(tmp_path / "set-b", 7, _descriptor_lines(8, 70, 1))  # file name and RecordID disagree
    _outcomes(tmp_path / "Outcomes-b.txt", [(7, 0)])
    with pytest.raises(DataError, match="RecordID line differs from the file name, e.g. 7.txt says 8"):
        pn.read(tmp_path, sets=("b",))
    _write_record(tmp_path / "set-b", 7, _descriptor_lines(7, 70, 1) + ["01:00,HR,fast"])
    with pytest.raises(DataError, match="numeric Value"):
        pn.read(tmp_path, sets=("b",))
    _write_record(tmp_path / "set-b", 7, _descriptor_lines(7, 70, 1) + ["01:00,Heartrate,80"])
    with pytest.raises(DataError, match=r"unknown parameter\(s\) \['Heartrate'\]"):
        pn.to_raw(pn.read(tmp_path, sets=("b",)), CFG)
    _write_record(tmp_path / "set-b", 7, _descriptor_lines(7, 70, 1))
    (tmp_path / "Outcomes-b.txt").write_text("RecordID,Survival\n7,-1\n")
    with pytest.raises(DataError, match=r"Outcomes-b\.txt lacks the column\(s\)"):
        pn.read(tmp_path, sets=("b",))


def test_tar_member_with_wrong_header(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "set-c.tar.gz", "w:gz") as tf:
        body = b"Hour,Name,Value\n00:00,RecordID,5\n"
        info = tarfile.TarInfo("set-c/5.txt")
        info.size = len(body)
        tf.addfile(info, io.BytesIO(body))
    _outcomes(tmp_path / "Outcomes-c.txt", [(5, 0)])
    with pytest.raises(DataError, match="5.txt does not start with the header 'Time,Parameter,Value'"):
        pn.read(tmp_path, sets=("c",))


def test_corrupt_gzip_stream_is_a_data_error(root: Path, tmp_path: Path) -> None:
    """Found by fuzzing (tests/integration/test_fuzz_loaders.py): two bytes flipped in a set's gzip stream raised
    zlib.error while a record's bytes were read, not a DataError. Two flips in the real set A that make zlib fail there
    (bytes 2000 and 152182; a flip in a header tarfile reports itself, and most others garble records)."""
    data = (root / "set-a.tar.gz").read_bytes()
    shutil.copy(root / "Outcomes-a.txt", tmp_path / "Outcomes-a.txt")
    for i in (2000, 152182):
        (tmp_path / "set-a.tar.gz").write_bytes(data[:i] + bytes(b ^ 0xFF for b in data[i:i + 2]) + data[i + 2:])
        with pytest.raises(DataError, match=r"set-a\.tar\.gz is not a readable tar\.gz archive .*decompressing data"):
            pn.read(tmp_path, sets=("a",))
