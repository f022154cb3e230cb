"""The validation stage on the real TJH file and on corrupted copies of it."""
import json
import shutil

import pandas as pd
import pytest
from support.cli import run_cli

from eagrl.config import load_config
from eagrl.data import stage as stages
from eagrl.data.validation import validate_source
from eagrl.errors import ValidationFailed

TJH_FILE = "time_series_375_prerpocess_en.xlsx"


def tjh_cfg(path, workspace=".", **extra):
    return load_config("default", {"data.dataset": "tjh", "data.task": "mortality", "data.data_path": str(path),
                                   "workspace": str(workspace), **extra})


@pytest.fixture(scope="module")
def tjh_sheet(shared_data):
    return pd.read_excel(shared_data / "tjh" / TJH_FILE)


def write_copy(df, tmp_path, name="tjh.xlsx"):
    path = tmp_path / name
    df.to_excel(path, index=False, engine="xlsxwriter")  # half openpyxl's time; the same frame read back
    return path


def test_real_file_passes_with_warnings_only(shared_data):
    report, cohort = validate_source(tjh_cfg(shared_data / "tjh"))
    assert report.passed, report.summary_line()
    assert cohort is not None and len(cohort.stays) == 323
    # the real data has a few implausible lab values (e.g. RBC count 234 x10^12/L): reported, not fatal
    assert any(w.column == "Red blood cell count" for w in report.warnings)
    assert {r.gate for r in report.results} == {"native", "canonical", "cohort"}


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda df: df.drop(columns=["outcome"]), "outcome"),
        (lambda df: df.assign(age=df["age"].where(df.index != 0, -5)), "records.age"),
        (lambda df: df.assign(outcome=df["outcome"].where(df.index != 5, 2)), "records.outcome"),
        (lambda df: df.assign(**{"Discharge time": df["Admission time"] - pd.Timedelta(days=3)}), "discharge_time"),
        # a date at the end of pandas' range: the tolerance arithmetic overflowed (the MEDS fuzzer found it)
        (lambda df: df.assign(**{"Discharge time": df["Discharge time"].where(df.index != 0,
                                                                               pd.Timestamp("2262-04-10"))}),
         "stays.discharge_time=2262-04-10"),
    ],
    ids=["missing-column", "negative-age", "outcome-2", "dates-out-of-order", "impossible-date"],
)
def test_corrupted_copies_fail_naming_the_problem(tjh_sheet, tmp_path, corrupt, expected):
    report, cohort = validate_source(tjh_cfg(write_copy(corrupt(tjh_sheet.copy()), tmp_path)))
    assert not report.passed and cohort is None
    assert expected in report.summary_line()
    assert report.errors[0].severity == "error"


def test_example_values_are_quoted(tjh_sheet, tmp_path):
    df = tjh_sheet.copy()
    df.loc[0, "age"] = -5
    report, _ = validate_source(tjh_cfg(write_copy(df, tmp_path)))
    assert "-5" in report.summary_line() and "1 of 6120 rows" in report.summary_line()


@pytest.mark.parametrize("kind", ["truncated", "empty", "not-utf8-csv", "wrong-sheet"])
def test_unreadable_files_give_a_clear_error(shared_data, tmp_path, kind):
    src = shared_data / "tjh" / TJH_FILE
    if kind == "truncated":
        path = tmp_path / "tjh.xlsx"
        path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        expected = "not a readable xlsx"
    elif kind == "empty":
        path = tmp_path / "tjh.xlsx"
        path.write_bytes(b"")
        expected = "is empty"
    elif kind == "not-utf8-csv":
        path = tmp_path / "tjh.csv"
        path.write_bytes("PATIENT_ID,RE_DATE,age\n1,2020-01-01,70\n".encode() + "gén".encode("latin-1") + b"\n")
        expected = "not UTF-8"
    else:  # a workbook whose first sheet is something else entirely
        path = tmp_path / "tjh.xlsx"
        pd.DataFrame({"patient": [1, 2], "value": [3, 4]}).to_excel(path, index=False)
        expected = "PATIENT_ID"
    report, cohort = validate_source(tjh_cfg(path))
    assert not report.passed and cohort is None
    assert expected in report.summary_line()
    assert "Traceback" not in report.summary_line()


def test_failed_validation_leaves_stored_data_and_runs_alone(shared_data, tjh_sheet, workspace, tmp_path):
    out = tmp_path / "out"
    good = stages.prepare(tjh_cfg(shared_data / "tjh", workspace), out)
    dvc_before = (workspace / "data.dvc").read_text()
    cohort_dir = workspace / "data" / "cohorts" / "tjh-mortality"
    files_before = {p.name: p.read_bytes() for p in cohort_dir.iterdir()}
    raw_before = (workspace / "data" / "raw" / "tjh" / TJH_FILE).read_bytes()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    runs_before = {r.info.run_id: (r.info.status, r.data.metrics, r.data.tags)
                   for r in client.search_runs(client.get_experiment_by_name("eagrl").experiment_id)}

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    df = tjh_sheet.copy()
    df.loc[3, "outcome"] = 2
    write_copy(df, bad_dir, TJH_FILE)
    with pytest.raises(ValidationFailed) as err:
        stages.prepare(tjh_cfg(bad_dir, workspace), out)
    assert "records.outcome" in str(err.value) and (out / "validate" / "report.html").is_file()

    assert (workspace / "data.dvc").read_text() == dvc_before
    assert {p.name: p.read_bytes() for p in cohort_dir.iterdir()} == files_before
    assert (workspace / "data" / "raw" / "tjh" / TJH_FILE).read_bytes() == raw_before
    runs_after = {r.info.run_id: (r.info.status, r.data.metrics, r.data.tags)
                  for r in client.search_runs(client.get_experiment_by_name("eagrl").experiment_id)}
    assert all(runs_after[k] == v for k, v in runs_before.items())
    assert len(runs_after) == len(runs_before) + 1  # the failed validation is a new run, marked FAILED
    new = [v for k, v in runs_after.items() if k not in runs_before][0]
    assert new[0] == "FAILED" and new[1]["validation_errors"] >= 1
    status = json.loads((out / "validate" / "status.json").read_text())
    assert status["status"] == "failed" and "records.outcome" in status["message"]
    assert good.outputs["dvc_data_md5"].endswith(".dir")


def test_cli_validate_exit_codes(shared_data, tmp_path, tjh_sheet):
    ok = run_cli("data", "validate", "--dataset", "tjh", "--task", "mortality", "--data-path",
                 str(shared_data / "tjh"), "--workspace", str(tmp_path), "--out", str(tmp_path / "out"))
    assert ok.returncode == 0, ok.stderr
    metrics = json.loads((tmp_path / "out" / "validate" / "metrics.json").read_text())
    assert metrics["validation_passed"] == 1.0 and metrics["n_stays"] == 323

    bad = tmp_path / "bad.xlsx"
    bad.write_bytes((shared_data / "tjh" / TJH_FILE).read_bytes()[:5000])
    res = run_cli("data", "validate", "--dataset", "tjh", "--task", "mortality", "--data-path", str(bad),
                  "--workspace", str(tmp_path), "--out", str(tmp_path / "out2"))
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("eagrl: error:")]
    assert len(lines) == 1 and "not a readable xlsx" in lines[0] and "Traceback" not in res.stderr


# ---------------------------------------------------------------- severities that match the data
def test_labs_moved_400_days_after_discharge_are_rejected_naming_the_cause(tjh_sheet, tmp_path):
    """Every record 400 days after its patient's discharge: impossible, so an error (it was a warning)."""
    df = tjh_sheet.copy()
    df["RE_DATE"] = df["Discharge time"] + pd.Timedelta(days=400)
    report, cohort = validate_source(tjh_cfg(write_copy(df, tmp_path)))
    assert not report.passed and cohort is None
    first = report.errors[0]
    assert (first.table, first.column) == ("measurements_in_stay", "latest/time")
    assert first.unexpected_count == first.element_count == 55226 and first.share == 1.0
    line = report.summary_line()
    assert "measured more than 24 h after discharge" in line and "55226 of 55226 rows" in line
    assert "2021-" in line  # an example of the moved dates is quoted
    # every lab on the same date also makes conflicting values at one (stay, time, feature): reported too
    assert any(e.table == "measurement_keys" for e in report.errors)


def test_labs_before_admission_are_rejected(tjh_sheet, tmp_path):
    df = tjh_sheet.copy()
    df["RE_DATE"] = df["Admission time"] - pd.Timedelta(days=3)
    report, cohort = validate_source(tjh_cfg(write_copy(df, tmp_path)))
    assert not report.passed and cohort is None
    assert "measured more than 24 h before admission" in report.summary_line()


def test_a_few_impossible_times_are_an_error_by_default_and_a_warning_under_a_configured_share(tjh_sheet, tmp_path):
    df = tjh_sheet.copy()
    moved = df.index[df["PATIENT_ID"].ffill() == 1]  # one patient's records, 0.2% of the labs
    df.loc[moved, "RE_DATE"] = df.loc[moved, "Discharge time"] + pd.Timedelta(days=400)
    path = write_copy(df, tmp_path)
    report, _ = validate_source(tjh_cfg(path))
    assert not report.passed and "after discharge" in report.summary_line()
    share = report.errors[0].share
    assert 0 < share < 0.01

    tolerant, cohort = validate_source(tjh_cfg(path, **{"validation.impossible_time_max_share": 0.01}))
    assert tolerant.passed and cohort is not None, tolerant.summary_line()
    late = [w for w in tolerant.warnings if w.column == "latest/time"]
    assert len(late) == 1 and late[0].share == share and late[0].examples


def test_real_file_has_within_tolerance_times_and_conflicts_as_warnings(shared_data):
    """The real file: 139 labs on the day after discharge (5 patients) and 3.4% of rows at a (stay, day, lab)
    with another value (the day precision): warnings, with counts and examples."""
    report, _ = validate_source(tjh_cfg(shared_data / "tjh"))
    by_column = {w.column: w for w in report.warnings}
    assert by_column["discharge_day_end/time"].unexpected_count == 139
    conflicts = by_column["conflicting"]
    assert conflicts.unexpected_count == 1877 and conflicts.examples and "@" in conflicts.examples[0]


def test_thresholds_are_config_values(shared_data):
    """The same real rows become errors when the configured share is below theirs."""
    strict = {"validation.implausible_max_share": 0.05}  # red blood cell count: 6.3% of its values
    report, cohort = validate_source(tjh_cfg(shared_data / "tjh", **strict))
    assert not report.passed and cohort is None
    assert [e.column for e in report.errors] == ["Red blood cell count"]
    assert "6.28%" in report.summary_line() and "234.0" in report.summary_line()

    report, _ = validate_source(tjh_cfg(shared_data / "tjh", **{"validation.conflict_max_share": 0.01}))
    assert not report.passed and "measurement_keys.conflicting" in report.summary_line()


def test_conflicting_duplicates_are_rejected(tjh_sheet, tmp_path):
    df = tjh_sheet.copy()
    labs = [c for c in df.columns if c not in ("PATIENT_ID", "RE_DATE", "age", "gender", "Admission time",
                                                "Discharge time", "outcome")]
    twin = df.copy()
    twin["PATIENT_ID"] = twin["PATIENT_ID"].ffill()
    twin[labs] = twin[labs] * 2 + 1
    both = pd.concat([df.assign(PATIENT_ID=df["PATIENT_ID"].ffill()), twin], ignore_index=True)
    report, cohort = validate_source(tjh_cfg(write_copy(both, tmp_path)))
    assert not report.passed and cohort is None
    assert "measurement_keys.conflicting" in report.summary_line()
    assert "another value at the same stay, time and feature" in report.summary_line()


def test_clif_labs_moved_after_discharge_are_rejected(shared_data, tmp_path):
    """The same rule on another source: the MIMIC demo's labs and vitals a year after discharge."""
    from eagrl.data.sources import clif

    demo = shared_data / "mimic-iv-demo-clif"
    for table in clif.REQUIRED_COLUMNS:
        shutil.copyfile(demo / f"clif_{table}.parquet", tmp_path / f"clif_{table}.parquet")
    hosp = pd.read_parquet(demo / "clif_hospitalization.parquet")
    end = hosp.set_index("hospitalization_id")["discharge_dttm"]
    for table, col in (("labs", "lab_result_dttm"), ("vitals", "recorded_dttm")):
        df = pd.read_parquet(demo / f"clif_{table}.parquet")
        df[col] = df["hospitalization_id"].map(end) + pd.Timedelta(days=400)
        df.to_parquet(tmp_path / f"clif_{table}.parquet", index=False)
    cfg = load_config("default", {"data.dataset": "mimic-iv-demo", "data.task": "readmission_30d",
                                  "data.data_path": str(tmp_path)})
    report, cohort = validate_source(cfg)
    assert not report.passed and cohort is None
    assert "measured more than 24 h after discharge" in report.summary_line()


# ---------------------------------------------------------------- the dataset's default task
@pytest.mark.parametrize("profile, dataset, task", [
    ("default", "tjh", "mortality"), ("default", "physionet2012", "mortality"),
    ("paper", "mimic-iv-demo", "readmission_30d"), ("paper", "clif", "readmission_30d"),
    ("smoke", None, "readmission_30d"), ("paper", None, "mortality"),
])
def test_task_follows_the_dataset_when_not_given(profile, dataset, task):
    from eagrl.config import config_from_params

    overrides = {"data.dataset": dataset} if dataset else {}
    assert load_config(profile, overrides).data.task == task
    assert config_from_params(profile, dataset=dataset or "", task="").data.task == task  # pipeline parameters
    other = "mortality" if task == "readmission_30d" else "readmission_30d"
    assert load_config(profile, {**overrides, "data.task": other}).data.task == other  # a given task wins


def test_cli_validate_without_task_uses_the_datasets(shared_data, tmp_path):
    """The issue's reproduction: `eagrl data validate --dataset tjh` (no --task) under the default profile,
    whose own dataset's task is readmission_30d, validates TJH mortality."""
    res = run_cli("data", "validate", "--dataset", "tjh", "--data-path", str(shared_data / "tjh"),
                  "--workspace", str(tmp_path), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out" / "validate" / "report.json").read_text())
    assert report["task"] == "mortality" and report["passed"]
    shown = run_cli("config", "--dataset", "physionet2012")
    assert shown.returncode == 0 and json.loads(shown.stdout)["data"]["task"] == "mortality"
