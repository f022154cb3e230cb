"""The validation stage on the real TJH file and on corrupted copies of it."""
import json
import shutil

import pandas as pd
import pytest

from eagrl.config import load_config
from eagrl.data import stages
from eagrl.data.validation import validate_source
from eagrl.errors import ValidationFailed

from conftest import run_cli

TJH_FILE = "time_series_375_prerpocess_en.xlsx"


def tjh_cfg(path, workspace=".", **extra):
    return load_config("default", {"data.dataset": "tjh", "data.task": "mortality", "data.data_path": str(path),
                                   "workspace": str(workspace), **extra})


@pytest.fixture(scope="module")
def tjh_sheet(shared_data):
    return pd.read_excel(shared_data / "tjh" / TJH_FILE)


def write_copy(df, tmp_path, name="tjh.xlsx"):
    path = tmp_path / name
    df.to_excel(path, index=False)
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
    ],
    ids=["missing-column", "negative-age", "outcome-2", "dates-out-of-order"],
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
