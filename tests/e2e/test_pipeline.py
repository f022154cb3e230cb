"""The pipeline end to end through KFP's local runner, and its compilation for a cluster."""
import json
from pathlib import Path

import pytest
import yaml
from support.cli import run_cli

from pipelines.eagrl_pipeline import STAGES, compile_pipeline


@pytest.mark.slow  # the whole pipeline, 3-4 min of make test's 15: in make test-slow, which CI runs too
def test_run_smoke_on_the_mimic_demo(shared_data, workspace):
    out = workspace / "out"
    res = run_cli("run", "--profile", "smoke", "--data-path", str(shared_data / "mimic-iv-demo-clif"),
                  "--workspace", str(workspace), "--out", str(out), timeout=600)  # ~3 min quiet; 284 s on shared cores
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "succeeded" and [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "succeeded" for s in summary["stages"])
    run_id = res.stdout.strip().splitlines()[-1]
    assert run_id == summary["mlflow_run_id"]
    prep = json.loads((out / "prepare" / "metrics.json").read_text())
    assert prep["n_stays"] > 50 and prep["test_positive"] >= 2 and prep["n_features"] == 32
    assert (out / "validate" / "report.html").read_text().count("<tr>") > 20
    log = (out / "pipeline.log").read_text()  # the components' progress lines, as they ran (eagrl.stage)
    assert "eagrl.sft.train: SFT on" in log and "eagrl.scoring.policy: zero-shot pqd:" in log

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["prepare.n_stays"] == prep["n_stays"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert {c.data.tags["eagrl.stage"] for c in children} == set(STAGES)
    prepare_run = next(c for c in children if c.data.tags["eagrl.stage"] == "prepare")
    # data.dvc pins the last version written (the MCTS trajectories); earlier versions stay recoverable
    dvc = yaml.safe_load((workspace / "data.dvc").read_text())
    mcts_stage_run = next(c for c in children if c.data.tags["eagrl.stage"] == "mcts")
    assert mcts_stage_run.data.tags["eagrl.dvc_data_md5"] == dvc["outs"][0]["md5"]
    prepared_md5 = prepare_run.data.tags["eagrl.dvc_data_md5"]
    assert prepared_md5 != dvc["outs"][0]["md5"]
    assert (workspace / ".dvc-storage" / "files" / "md5" / prepared_md5[:2] / prepared_md5[2:]).is_file()
    assert (workspace / "data" / "cohorts" / "mimic-iv-demo-readmission_30d" / "stays.parquet").is_file()
    assert any((workspace / ".dvc-storage").rglob("*")), "the local DVC remote received the data"

    # the expert: registered with the cohort version it was trained on; C_exp versioned for MCTS
    expert = json.loads((out / "expert" / "metrics.json").read_text())
    assert 0 <= expert["test_auroc_ci"][0] <= expert["test_auroc"] <= expert["test_auroc_ci"][1] <= 1
    name = "eagrl-expert-mimic-iv-demo-readmission_30d"
    version = client.get_latest_versions(name)[0]
    expert_run = client.get_run(version.run_id)
    assert expert_run.data.tags["eagrl.cohort_md5"] == prepare_run.data.tags["eagrl.cohort_md5"]
    import pandas as pd

    att = pd.read_parquet(workspace / "data" / "expert" / "mimic-iv-demo-readmission_30d" / "attention.parquet")
    assert len(att) == prep["n_stays"] and att["c_exp"].map(len).max() == 5

    # the zero-shot baseline of the (tiny) policy model: every response well formed
    zs = json.loads((out / "zeroshot" / "metrics.json").read_text())
    assert zs["test_well_formed_rate"] == 1.0 and zs["test_n_stays"] == 16

    # stage 1: trajectories searched on the training split, versioned; the SFT adapter registered
    mcts = json.loads((out / "mcts" / "metrics.json").read_text())
    assert mcts["n_patients"] == 6 and mcts["n_trajectories"] == 12 and mcts["n_selected"] >= 1
    status = json.loads((out / "mcts" / "status.json").read_text())
    selected = status["outputs"]["selected"]
    assert selected.startswith(str(workspace / "data" / "trajectories")) and "guided-" in selected
    sft = json.loads((out / "sft" / "metrics.json").read_text())
    # every rollout of a kept stay trains SFT: the selected ones with their reasoning, the others the answer slot alone
    assert sft["n_examples"] == mcts["n_selected"] + mcts["n_slot_only"] and sft["n_slot_only"] == mcts["n_slot_only"]
    assert sft["test_n_stays"] == 16
    sft_version = client.get_latest_versions("eagrl-sft-mimic-iv-demo-readmission_30d")[0]
    import hashlib

    assert client.get_run(sft_version.run_id).data.tags["eagrl.trajectories_md5"] == \
        hashlib.md5(Path(selected).read_bytes()).hexdigest()

    # evaluation scores exactly the versions this run's SFT and RL stages registered; promotion serves RL's
    rl = json.loads((out / "rl" / "status.json").read_text())["outputs"]
    rl_uri = f"models:/{rl['registered_model']}/{rl['model_version']}"
    table = pd.read_csv(out / "evaluate" / "table.csv", dtype=str, keep_default_na=False).set_index("name")
    assert table.loc["eag-rl", "status"] == "scored" and table.loc["eag-rl", "uri"] == rl_uri
    assert table.loc["sft", "uri"] == f"models:/{sft_version.name}/{sft_version.version}"
    assert table.loc["grpo", "status"] == "skipped"  # not trained by this run: a visible row, not a gap
    assert (out / "evaluate" / "report.html").is_file()
    # every held-out check (all capped at 16 in smoke) scored the same stays as the evaluation
    scored = pd.read_parquet(out / "evaluate" / "models" / "pqd" / "predictions.parquet")["stay_id"]
    scored = scored.astype(str).tolist()
    assert len(scored) == 16
    checks = {"pqd": out / "zeroshot" / "pqd", "sft": out / "sft" / "heldout", "eag-rl": Path(rl["heldout"])}
    assert checks["eag-rl"].parent.name.startswith("eag-rl-")  # the variant's own folder
    for name, check in checks.items():
        assert pd.read_csv(check / "predictions.csv", dtype={"stay_id": str})["stay_id"].tolist() == scored, name
    # ... with the same settings, so the table's rows are read back from those runs, not generated a second time
    assert table.loc["sft", "reused_from"] == sft_version.run_id
    assert table.loc["eag-rl", "reused_from"] == rl_run_id(client, rl_uri)
    zeroshot_pqd = client.get_run(table.loc["pqd", "reused_from"])  # a child run, kept in its parent's experiment
    assert zeroshot_pqd.data.tags["mlflow.runName"] == "zeroshot-pqd"
    assert zeroshot_pqd.info.experiment_id == client.get_run(sft_version.run_id).info.experiment_id
    for name, check in checks.items():
        mine = pd.read_parquet(out / "evaluate" / "models" / name / "predictions.parquet")["probability"]
        theirs = pd.read_csv(check / "predictions.csv")["probability"]
        assert mine.tolist() == theirs.tolist(), name
    # the smoke policy is random: on these 16 test stays its AUROC interval reaches below chance, so the promotion
    # floor refuses it, first candidate or not; it stays a registered version with the reason; the stage succeeds
    promotion = json.loads((out / "promote" / "promotion.json").read_text())
    assert promotion["candidate_source"] == rl_uri and not promotion["promoted"] and not promotion["floor"]["passed"]
    assert promotion["floor"]["auroc_ci"][0] <= 0.5 and promotion["reason"].startswith("below the promotion floor")
    assert promotion["champion_now"] is None and promotion["floor"]["baseline"] == "pqd"
    version = client.get_model_version("eagrl-policy", promotion["version"])
    assert version.tags["eagrl.promotion.source"] == rl_uri and version.run_id == rl_run_id(client, rl_uri)
    assert version.tags["eagrl.promotion.reason"] == promotion["reason"]
    assert version.tags["eagrl.promotion.decision"] == "rejected"
    message = next(s["message"] for s in summary["stages"] if s["stage"] == "promote")
    assert message.startswith(f"nothing promoted: {rl_uri} is registered as models:/eagrl-policy/") and \
        promotion["reason"] in message and message.endswith("no version holds @champion yet")
    assert "promote: succeeded nothing promoted:" in " ".join(res.stderr.split())  # printed with its reason
    import pytest
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):  # a below-chance policy never becomes @champion
        client.get_model_version_by_alias("eagrl-policy", "champion")


def rl_run_id(client, uri: str) -> str:
    name, version = uri.removeprefix("models:/").rsplit("/", 1)
    return client.get_model_version(name, version).run_id


def test_a_failing_stage_stops_the_run_with_one_clear_line(workspace, tmp_path):
    bad = tmp_path / "tjh.xlsx"
    bad.write_bytes(b"PK\x03\x04 not really a workbook")
    out = workspace / "out"
    res = run_cli("run", "--profile", "smoke", "--dataset", "tjh", "--task", "mortality", "--data-path", str(bad),
                  "--workspace", str(workspace), "--out", str(out))
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("eagrl: error:")]
    assert len(errors) == 1 and "not a readable xlsx" in errors[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert [s["status"] for s in summary["stages"]] == ["failed"] + ["not run"] * (len(STAGES) - 1)
    assert not (workspace / "data").exists()


def test_pipeline_compiles_to_kfp_v2_yaml(tmp_path):
    path = compile_pipeline(tmp_path / "eagrl.yaml")
    spec = next(yaml.safe_load_all(path.read_text()))  # then the platform spec (pipelines/platform.py)
    assert spec["pipelineInfo"]["name"] == "eagrl"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"profile", "dataset", "task", "data_path", "overrides"} <= set(params)
    tasks = spec["root"]["dag"]["tasks"]
    assert {"validate-data", "prepare-data", "train-expert", "zero-shot", "mcts-trajectories", "sft-policy",
            "direct-policy", "rl-policy", "evaluate", "promote-policy"} <= set(tasks)
    assert tasks["prepare-data"]["dependentTasks"] == ["validate-data"]
    assert tasks["train-expert"]["dependentTasks"] == ["prepare-data"]
    assert set(tasks["mcts-trajectories"]["dependentTasks"]) == {"prepare-data", "train-expert", "zero-shot"}
    assert set(tasks["sft-policy"]["dependentTasks"]) == {"prepare-data", "mcts-trajectories"}
    assert set(tasks["direct-policy"]["dependentTasks"]) == {"prepare-data", "sft-policy"}  # one stage at a time
    assert set(tasks["rl-policy"]["dependentTasks"]) == {"prepare-data", "train-expert", "sft-policy", "direct-policy"}
    assert set(tasks["evaluate"]["dependentTasks"]) == {"prepare-data", "sft-policy", "rl-policy"}
    assert set(tasks["promote-policy"]["dependentTasks"]) == {"evaluate", "rl-policy"}  # the last step
    assert not any("promote-policy" in t.get("dependentTasks", []) for t in tasks.values())
    gpu = {name for name, t in spec["deploymentSpec"]["executors"].items()
           if t["container"].get("resources", {}).get("accelerator")}
    assert {"exec-train-expert", "exec-mcts-trajectories", "exec-sft-policy", "exec-direct-policy",
            "exec-rl-policy"} <= gpu
    images = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert {images[n] for n in gpu} == {"ghcr.io/eagrl/eagrl-pipeline-cuda:0.1.0"}  # pipeline.gpu_image
    assert {i for n, i in images.items() if n not in gpu} == {"ghcr.io/eagrl/eagrl-pipeline:0.1.0"}


def test_cli_help_lists_the_stage_commands():
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("data", "expert", "zeroshot", "mcts", "sft", "run", "pipeline", "config"):
        assert cmd in res.stdout


def test_committed_pipeline_yaml_is_up_to_date(tmp_path):
    """The YAML users upload to the KFP UI must be what the code compiles to (`make compile`)."""

    fresh = compile_pipeline(tmp_path / "eagrl.yaml").read_text()
    committed = (Path(__file__).parents[2] / "pipelines" / "eagrl_pipeline.yaml").read_text()
    assert list(yaml.safe_load_all(fresh)) == list(yaml.safe_load_all(committed)), \
        "run `make compile` and commit the YAML"
