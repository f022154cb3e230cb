"""MLflow in production mode: PostgreSQL as the backend store, `mlflow server` proxying artifacts, the smoke
pipeline run twice against it, the runs compared (CLI and the REST API the UI's compare view reads), and
the first run's data brought back with `eagrl data checkout`."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest
from support.cli import run_cli
from support.services import mlflow_server, postgres

from eagrl.tracking.dvc_store import tree_md5

NAME = "mimic-iv-demo-readmission_30d"


@pytest.mark.slow
def test_smoke_pipeline_on_postgres_and_the_artifact_proxy(shared_data, workspace, tmp_path):
    t0 = time.time()
    artifacts = tmp_path / "artifact-store"
    artifacts.mkdir()
    with postgres() as db, mlflow_server(db, artifacts) as url:
        started = time.time() - t0
        common = ["--profile", "smoke", "--data-path", str(shared_data / "mimic-iv-demo-clif"), "--workspace",
                  str(workspace), "--set", f"tracking.mlflow_tracking_uri={url}"]
        first = run_cli("run", *common, "--out", str(workspace / "out-a"))
        assert first.returncode == 0, first.stderr[-3000:]
        second = run_cli("run", *common, "--set", "data.seed=7", "--out", str(workspace / "out-b"))
        assert second.returncode == 0, second.stderr[-3000:]
        run_a, run_b = first.stdout.split()[-1], second.stdout.split()[-1]

        import mlflow

        client = mlflow.MlflowClient(url)
        a, b = client.get_run(run_a), client.get_run(run_b)
        assert a.info.status == b.info.status == "FINISHED"
        # artifacts went through the server's proxy into its destination, not into the workspace
        assert a.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert [p.path for p in client.list_artifacts(run_a)] == ["summary.json"]
        assert list(artifacts.rglob("summary.json")) and not (workspace / "mlartifacts").exists()
        assert client.get_latest_versions(f"eagrl-expert-{NAME}"), "the expert is registered in PostgreSQL"

        # eagrl runs compare: metrics and data versions side by side
        res = run_cli("runs", "compare", run_a, run_b, "--tracking-uri", url, "--json")
        assert res.returncode == 0, res.stderr
        cmp = json.loads(res.stdout)
        assert cmp["params"]["data.seed"] == ["42", "7"]
        assert cmp["metrics"]["prepare.n_stays"][0] == cmp["metrics"]["prepare.n_stays"][1]
        assert cmp["metrics"]["prepare.train_positive"][0] != cmp["metrics"]["prepare.train_positive"][1]
        assert "expert.test_auroc" in cmp["metrics"] and "zeroshot.test_auroc" in cmp["metrics"]
        cohorts = cmp["versions"]["prepare.cohort_md5"]
        assert cohorts[0] != cohorts[1] and all(c.endswith(".dir") for c in cohorts)
        table = run_cli("runs", "compare", run_a, run_b, "--tracking-uri", url)
        assert table.returncode == 0 and cohorts[0] in table.stdout and "prepare.cohort_md5 *" in table.stdout

        # the UI: its page, and the run data its compare view fetches, data versions included
        with urllib.request.urlopen(url) as page:
            assert page.status == 200 and b"MLflow" in page.read()
        for run_id, cohort in zip((run_a, run_b), cohorts):
            with urllib.request.urlopen(f"{url}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}") as r:
                run = json.loads(r.read())["run"]
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert tags["eagrl.prepare.cohort_md5"] == cohort
            assert {m["key"] for m in run["data"]["metrics"]} >= {"expert.test_auroc", "prepare.n_stays"}

        # eagrl data checkout: the first run's cohort and expert outputs, exactly, over the second's
        assert tree_md5(workspace / "data" / "cohorts" / NAME) == cohorts[1]
        back = run_cli("data", "checkout", run_a, "--force", "--tracking-uri", url, "--workspace", str(workspace))
        assert back.returncode == 0, back.stderr
        assert tree_md5(workspace / "data" / "cohorts" / NAME) == cohorts[0]
        expert_a = cmp["versions"]["expert.expert_md5"][0]
        assert tree_md5(workspace / "data" / "expert" / NAME) == expert_a
    print(f"services up in {started:.1f} s, whole test {time.time() - t0:.1f} s")
