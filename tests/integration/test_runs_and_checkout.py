"""`eagrl runs compare` and `eagrl data checkout` on real MLflow (sqlite) and DVC stores, without the pipeline."""
from __future__ import annotations

import json
import shutil

import mlflow
import pytest
from support.cli import run_cli

from eagrl.tracking.dvc_store import DataStore, tree_md5


def _pipeline_run(client, exp_id: str, seed: int, auroc: float, versions: dict[str, dict[str, str]]) -> str:
    """A parent run shaped like `eagrl run`'s: metrics `<stage>.<name>`, one stage run per stage with tags."""
    parent = client.create_run(exp_id, run_name="pipeline", tags={"eagrl.stage": "pipeline"})
    pid = parent.info.run_id
    client.log_param(pid, "data.seed", str(seed))
    client.log_param(pid, "expert.hidden", "16")
    client.log_metric(pid, "expert.test_auroc", auroc)
    for i, (stage, tags) in enumerate(versions.items()):
        child = client.create_run(exp_id, run_name=stage, start_time=1000 + i,
                                  tags={"eagrl.stage": stage, "mlflow.parentRunId": pid, **tags})
        client.set_terminated(child.info.run_id, end_time=2000 + i)
    client.set_terminated(pid)
    return pid


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"  # migrating a new store takes seconds
    return uri, mlflow.MlflowClient(uri)


@pytest.fixture()
def store(mlflow_db, request):
    uri, client = mlflow_db
    return uri, client, client.create_experiment(request.node.name)


def test_runs_compare_prints_metrics_data_versions_and_differing_params(store):
    uri, client, exp = store
    a = _pipeline_run(client, exp, 42, 0.71,
                      {"prepare": {"eagrl.cohort_md5": "aaa.dir", "eagrl.dvc_data_md5": "d1.dir"},
                       "expert": {"eagrl.expert_md5": "e1.dir", "eagrl.dvc_data_md5": "d2.dir"}})
    b = _pipeline_run(client, exp, 7, 0.65, {"prepare": {"eagrl.cohort_md5": "bbb.dir", "eagrl.dvc_data_md5": "d3.dir"},
                                             "expert": {"eagrl.expert_md5": "e2.dir", "eagrl.dvc_data_md5": "d4.dir"}})
    res = run_cli("runs", "compare", a, b, "--tracking-uri", uri, "--json")
    assert res.returncode == 0, res.stderr
    cmp = json.loads(res.stdout)
    assert cmp["run_ids"] == [a, b]
    assert cmp["metrics"]["expert.test_auroc"] == [0.71, 0.65]
    assert cmp["versions"]["prepare.cohort_md5"] == ["aaa.dir", "bbb.dir"]
    assert cmp["versions"]["expert.dvc_data_md5"] == ["d2.dir", "d4.dir"]
    assert cmp["params"] == {"data.seed": ["42", "7"]}, "only the params that differ"

    table = run_cli("runs", "compare", a, b, "--tracking-uri", uri)
    assert table.returncode == 0, table.stderr
    for text in (a, b, "expert.test_auroc *", "0.71", "0.65", "prepare.cohort_md5 *", "aaa.dir", "bbb.dir",
                 "data.seed *"):
        assert text in table.stdout, text


def test_runs_compare_names_a_missing_run(store):
    uri, client, exp = store
    a = _pipeline_run(client, exp, 42, 0.7, {})
    res = run_cli("runs", "compare", a, "0123456789abcdef0123456789abcdef", "--tracking-uri", uri)
    assert res.returncode == 1 and "no MLflow run '0123456789abcdef0123456789abcdef'" in res.stderr
    one = run_cli("runs", "compare", a, "--tracking-uri", uri)
    assert one.returncode == 1 and "at least two run ids" in one.stderr


def test_data_checkout_restores_a_past_run_exactly_and_clobbers_nothing(store, workspace):
    uri, client, exp = store
    data = workspace / "data" / "cohorts" / "x"
    data.mkdir(parents=True)
    (data / "stays.csv").write_text("stay_id,label\n1,0\n2,1\n")
    v1 = DataStore(workspace).commit()["dvc_data_md5"]
    old_tree = tree_md5(workspace / "data")
    run1 = _pipeline_run(client, exp, 42, 0.7, {"prepare": {"eagrl.dvc_data_md5": "an-older-version.dir"},
                                                "expert": {"eagrl.dvc_data_md5": v1}})
    (data / "stays.csv").write_text("stay_id,label\n1,1\n")  # a later run changed the cohort ...
    (workspace / "data" / "trajectories.jsonl").write_text('{"stay": 1}\n')  # ... and added trajectories
    v2 = DataStore(workspace).commit()["dvc_data_md5"]
    new_tree = tree_md5(workspace / "data")
    run2 = _pipeline_run(client, exp, 7, 0.6, {"mcts": {"eagrl.dvc_data_md5": v2}})
    shutil.rmtree(workspace / ".dvc" / "cache")  # what the local cache lost, the remote still has

    args = ("--tracking-uri", uri, "--workspace", str(workspace))
    res = run_cli("data", "checkout", run1, *args)
    assert res.returncode == 0, res.stderr
    restored = workspace / "checkouts" / run1 / "data"
    assert res.stdout.strip() == str(restored)
    assert tree_md5(restored) == old_tree and tree_md5(workspace / "data") == new_tree, "data/ left as it was"

    again = run_cli("data", "checkout", run1, *args)
    assert again.returncode == 1 and "already holds files" in again.stderr
    assert tree_md5(restored) == old_tree

    forced = run_cli("data", "checkout", run1, "--force", *args)
    assert forced.returncode == 0, forced.stderr
    assert tree_md5(workspace / "data") == old_tree and DataStore(workspace).data_hash() == v1
    assert f"the replaced data/ stays in DVC as {v2}" in forced.stderr
    into = workspace / "elsewhere"
    back = run_cli("data", "checkout", run2, "--into", str(into), *args)
    assert back.returncode == 0, back.stderr
    assert tree_md5(into) == new_tree, "the replaced version is still restorable"


def test_data_checkout_of_a_run_without_a_data_version_says_so(store, workspace):
    uri, client, exp = store
    run = _pipeline_run(client, exp, 42, 0.7, {"validate": {}})
    res = run_cli("data", "checkout", run, "--tracking-uri", uri, "--workspace", str(workspace))
    assert res.returncode == 1 and "carry no eagrl.dvc_data_md5 tag" in res.stderr
