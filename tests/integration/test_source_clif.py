"""CLIF 2.x loader on the real MIMIC-IV demo: stays, labels, measurements, the cohort, malformed files."""
import dataclasses
import shutil

import pandas as pd
import pytest

from eagrl.config import Config, DataConfig
from eagrl.data.cohort import build_cohort
from eagrl.data.schema import load_specs, specs_dir
from eagrl.data.sources import clif, get_source
from eagrl.errors import DataError

# The profile values recommended for the demo: readmission predicted at discharge from the last 48 h, 4-h visits.
READMISSION = dict(dataset="mimic-iv-demo", task="readmission_30d", observation_hours=48, bin=4.0)


@pytest.fixture(scope="module")
def demo_dir(shared_data):
    return shared_data / "mimic-iv-demo-clif"


@pytest.fixture(scope="module")
def native(demo_dir):
    return clif.read(demo_dir)


@pytest.fixture(scope="module")
def raw(native):
    return clif.to_raw(native, DataConfig())


@pytest.fixture()
def demo_copy(tmp_path, demo_dir):
    """A writable copy of the tables the loader reads, to break one at a time."""
    for table in clif.REQUIRED_COLUMNS:
        shutil.copyfile(demo_dir / f"clif_{table}.parquet", tmp_path / f"clif_{table}.parquet")
    return tmp_path


# ---------------------------------------------------------------- stays and labels
def test_both_dataset_names_use_this_loader():
    assert get_source("mimic-iv-demo") is clif and get_source("clif") is clif
    assert clif.default_path().name == "mimic-iv-demo-clif"


def test_one_stay_per_hospitalization_with_the_documented_labels(raw, native):
    s = raw.stays
    assert len(s) == 310 and s["stay_id"].is_unique and s["patient_id"].nunique() == 100
    assert int(s["label_mortality"].sum()) == 17
    parts = clif.label_components(native).sum(numeric_only=True)
    # 64 next admissions within 30 days (the README's count); per METHOD.md deaths count as readmissions:
    # 17 in hospital and 11 within 30 days after discharge, 3 of which also had a readmission.
    counts = parts[["readmitted_30d", "died_in_hospital", "died_within_30d_after_discharge"]].tolist()
    assert counts == [64, 17, 11]
    assert int(s["label_readmission_30d"].sum()) == parts["readmission_30d"] == 89
    assert s["sex"].value_counts().to_dict() == {0.0: 155, 1.0: 155}
    assert s["prediction_time"].isna().all()  # the cohort sets it from the task and the window


def test_known_patient_demographics_and_times(raw):
    # subject 10000032: female, 52, four admissions; hadm 22595853's raw admittime 2180-05-06 22:23 (local)
    # is 03:23 UTC the next day, kept as tz-naive UTC.
    s = raw.stays[raw.stays["patient_id"] == "10000032"].set_index("stay_id")
    assert len(s) == 4 and (s["sex"] == 0.0).all() and (s["age"] == 52.0).all()
    assert s.loc["22595853", "admit_time"] == pd.Timestamp("2180-05-07 03:23")
    assert s["admit_time"].dtype == "datetime64[ns]"
    # the 2nd and 3rd admissions were each followed by another within 30 days; death (2180-09-09) came 32
    # days after the last discharge, so no label counts it.
    assert s["label_readmission_30d"].to_dict() == {"22595853": 0.0, "22841357": 1.0, "29079034": 1.0,
                                                    "25742920": 0.0}


# ---------------------------------------------------------------- features
def test_measurements_use_the_spec_names_with_readable_units(raw):
    m = raw.measurements
    names = set(raw.feature_names())
    assert len(names) == 32 and set(m["feature"]) == names
    assert {"Heart rate", "Serum creatinine", "Arterial pH", "Glasgow Coma Scale total"} <= names
    assert list(m.columns) == ["stay_id", "time", "feature", "value"] and m["time"].dtype == "datetime64[ns]"
    assert m["value"].notna().all()
    assert (m["feature"] == "Heart rate").sum() == 14737
    # the three Fahrenheit readings charted as temp_c were converted
    assert m.loc[m["feature"] == "Body temperature", "value"].max() < 42


def test_specs_first_alias_is_a_clif_category_and_ranges_are_ordered():
    specs = load_specs(specs_dir() / "clif.yaml")
    categories = [s.aliases[0] for s in specs]
    assert len(set(categories)) == len(specs)
    assert {"heart_rate", "sbp", "dbp", "map", "respiratory_rate", "spo2", "temp_c", "weight_kg"} <= set(categories)
    for s in specs:
        assert s.unit is not None and s.plausible_low is not None and s.plausible_high is not None
        assert s.plausible_low < s.plausible_high
        if s.ref_low is not None and s.ref_high is not None:
            assert s.plausible_low <= s.ref_low <= s.ref_high <= s.plausible_high, s.name


def test_few_values_fall_outside_the_plausible_ranges(raw):
    m = raw.measurements.merge(
        pd.DataFrame([(s.name, s.plausible_low, s.plausible_high) for s in raw.features],
                     columns=["feature", "lo", "hi"]), on="feature")
    outside = ((m["value"] < m["lo"]) | (m["value"] > m["hi"])).sum()
    assert outside == 85  # device artefacts: MAP < 20 or > 250, RR 0, HR 0, SpO2 < 50, weight 0


# ---------------------------------------------------------------- cohort
def test_readmission_cohort_with_recommended_window(raw):
    cohort = build_cohort(raw, DataConfig(**READMISSION))
    stats = cohort.statistics()
    assert stats["n_stays"] == 204 and stats["n_positive"] == 67
    assert min(stats[f"{split}_positive"] for split in ("train", "val", "test")) >= 2
    s = cohort.stays
    assert (s["n_visits"] >= 2).all() and s["n_visits"].max() <= 12  # 48 h / 4 h
    assert (s["prediction_time"] == s["discharge_time"]).all()


def test_nothing_at_or_after_the_prediction_time_enters_the_cohort(raw):
    stay = raw.stays.iloc[1]  # 22841357: discharged 2180-06-27 23:49
    at, before = stay["discharge_time"], stay["discharge_time"] - pd.Timedelta(minutes=1)
    probe = pd.DataFrame({"stay_id": stay["stay_id"], "feature": "Serum creatinine",
                          "time": [before, at, at + pd.Timedelta(hours=1)], "value": [11.0, 22.0, 33.0]})
    leaky = dataclasses.replace(raw, measurements=pd.concat([raw.measurements, probe], ignore_index=True))
    cohort = build_cohort(leaky, DataConfig(**READMISSION))
    visits = cohort.visits.merge(cohort.stays[["stay_id", "prediction_time"]], on="stay_id")
    assert (visits["time"] < visits["prediction_time"]).all()
    values = set(cohort.visits.loc[cohort.visits["stay_id"] == stay["stay_id"], "Serum creatinine"].dropna())
    assert 11.0 in values and not values & {22.0, 33.0}


def test_early_mortality_cohort_predicts_after_the_first_hours(raw):
    cohort = build_cohort(raw, DataConfig(dataset="mimic-iv-demo", task="mortality", observation_hours=24))
    s = cohort.stays
    assert (s["prediction_time"] == s["admit_time"] + pd.Timedelta(hours=24)).all()
    assert int(s["label"].sum()) == 15 and (s["n_visits"] <= 6).all()


def test_demo_passes_the_validation_stage():
    from eagrl.data.validation import validate_source

    report, cohort = validate_source(Config(data=DataConfig(**READMISSION)))
    assert report.passed, report.summary_line()
    assert cohort is not None and len(cohort.stays) == 204


# ---------------------------------------------------------------- malformed input
def test_read_gives_uniform_types(native):
    hosp = native["hospitalization"]
    assert hosp["admission_dttm"].dtype.kind == "M" and hosp["admission_dttm"].dt.tz is None
    assert hosp["discharge_category"].dtype == object


def test_truncated_parquet_names_the_file(demo_copy):
    labs = demo_copy / "clif_labs.parquet"
    labs.write_bytes(labs.read_bytes()[: labs.stat().st_size // 2])
    with pytest.raises(DataError, match=r"clif_labs\.parquet.*not a readable parquet file"):
        clif.read(demo_copy)


def test_missing_table_names_the_file(demo_copy):
    (demo_copy / "clif_vitals.parquet").unlink()
    with pytest.raises(DataError, match=r"lacks clif_vitals\.parquet"):
        clif.read(demo_copy)


@pytest.mark.parametrize("content, problem", [(b"", "empty"), (b"patient_id,sex\n1,M\n", "not a readable parquet")])
def test_empty_or_non_parquet_file_names_the_file(demo_copy, content, problem):
    (demo_copy / "clif_patient.parquet").write_bytes(content)
    with pytest.raises(DataError, match=rf"clif_patient\.parquet.*{problem}"):
        clif.read(demo_copy)


def test_missing_column_names_table_and_column(demo_copy):
    native = clif.read(demo_copy)
    native["labs"] = native["labs"].drop(columns="lab_value_numeric")
    with pytest.raises(DataError, match=r"clif_labs\.parquet lacks the columns lab_value_numeric"):
        clif.to_raw(native, DataConfig())


def test_repeated_hospitalization_is_an_error_naming_the_id(native):
    """Found by fuzzing (tests/integration/test_fuzz_loaders.py): repeated hospitalization rows raised pandas'
    InvalidIndexError from the label lookup instead of a report."""
    repeated = dict(native, hospitalization=pd.concat([native["hospitalization"], native["hospitalization"].head(3)],
                                                      ignore_index=True))
    first = str(native["hospitalization"]["hospitalization_id"].iloc[0])
    with pytest.raises(DataError, match=rf"clif_hospitalization\.parquet has 6 rows sharing 3 hospitalization_id "
                                        rf"values, e\.g\. {first}"):
        clif.to_raw(repeated, DataConfig())


def test_missing_directory_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="eagrl data pull mimic-iv-demo"):
        clif.read(tmp_path / "nowhere")


def test_without_assessments_there_is_no_gcs_but_everything_else(demo_copy):
    (demo_copy / "clif_patient_assessments.parquet").unlink()
    raw = clif.to_raw(clif.read(demo_copy), DataConfig())
    assert len(raw.stays) == 310
    assert "Glasgow Coma Scale total" not in set(raw.measurements["feature"])
    assert (raw.measurements["feature"] == "Heart rate").sum() == 14737


def test_corrupt_page_header_is_reported_on_one_line(demo_copy, demo_dir):
    """Found by fuzzing (tests/integration/test_fuzz_loaders.py): pyarrow's error for a corrupt page header spans
    two lines ("Couldn't deserialize thrift: ...\\nDeserializing page header failed."), and the report passed it on
    as is."""
    from eagrl.data.validation import validate_source

    data = (demo_dir / "clif_adt.parquet").read_bytes()
    (demo_copy / "clif_adt.parquet").write_bytes(data[:1000] + bytes(b ^ 0xFF for b in data[1000:1588]) + data[1588:])
    report, cohort = validate_source(Config(data=DataConfig(**READMISSION, data_path=str(demo_copy))))
    line = report.summary_line()
    assert cohort is None and "\n" not in line
    assert "clif_adt.parquet is not a readable parquet file" in line and "Deserializing page header failed" in line
