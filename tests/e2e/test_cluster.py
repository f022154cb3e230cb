"""The cluster side: the compiled YAML's platform settings, and submission/scheduling through kfp.Client
against a local stand-in of the KFP REST API (token and kubeconfig auth)."""
from __future__ import annotations

import json

import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb
from kfp.pipeline_spec import pipeline_spec_pb2
from support.cli import run_cli
from support.kfp_standin import KFPStandIn

from eagrl.cli.ops import compile_for_cluster

PARAMS = {"profile", "dataset", "task", "model", "data_path", "overrides"}


def validated(path) -> tuple[dict, dict]:
    """Parse both YAML documents into KFP's own protobuf messages (unknown or mistyped fields fail)."""
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "pipeline spec + platform spec"
    json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    executors = {}
    for name, cfg in docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        executors[name] = json_format.MessageToDict(json_format.ParseDict(cfg, k8s_pb.KubernetesExecutorConfig()))
    assert platform.platforms["kubernetes"]
    from kfp import components

    components.load_component_from_file(str(path))  # what the KFP SDK and UI accept
    return docs[0], executors


def test_compiled_yaml_carries_gpus_nodes_tolerations_volume_and_secrets(tmp_path):
    spec, executors = validated(compile_for_cluster(tmp_path / "p.yaml", "paper"))
    assert PARAMS <= set(spec["root"]["inputDefinitions"]["parameters"])
    containers = {name.removeprefix("exec-"): e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}
    gpu = {t for t, c in containers.items() if c.get("resources", {}).get("accelerator")}
    assert gpu == {"train-expert", "zero-shot", "mcts-trajectories", "sft-policy", "direct-policy", "rl-policy",
                   "evaluate"}
    assert containers["train-expert"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert all(c["resources"]["resourceCpuRequest"] == "4" for c in containers.values())  # paper.yaml
    assert set(executors) == {f"exec-{t}" for t in containers}
    for name, k8s in executors.items():
        assert k8s["pvcMount"][0]["mountPath"] == "/workspace"
        assert k8s["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "eagrl-workspace"
        secret = k8s["secretAsEnv"][0]
        assert secret["secretNameParameter"]["runtimeValue"]["constant"] == "eagrl-mlflow"
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"}
        on_gpu = name.removeprefix("exec-") in gpu
        assert ("nodeSelector" in k8s) == on_gpu and ("tolerations" in k8s) == on_gpu
    assert executors["exec-train-expert"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert executors["exec-train-expert"]["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists",
                                                                "effect": "NoSchedule"}
    env = {e["name"]: e["value"] for e in containers["validate-data"]["env"]}
    assert env["EAGRL_WORKSPACE"] == "/workspace"  # what config_from_params takes as the workspace


def test_object_store_mode_and_per_task_gpus_come_from_overrides(tmp_path):
    path = compile_for_cluster(tmp_path / "p.yaml", "paper", {
        "cluster.data": "object-store", "cluster.gpus": {"zero-shot": 2},
        "cluster.secrets": [{"name": "eagrl-s3", "env": {"access_key": "AWS_ACCESS_KEY_ID"}}]})
    spec, executors = validated(path)
    containers = {n.removeprefix("exec-"): e["container"] for n, e in spec["deploymentSpec"]["executors"].items()}
    assert containers["zero-shot"]["resources"]["accelerator"]["resourceCount"] == "2"
    assert "accelerator" not in containers["train-expert"].get("resources", {})
    for k8s in executors.values():
        assert "pvcMount" not in k8s and k8s["emptyDirMounts"][0]["mountPath"] == "/workspace"
        assert k8s["secretAsEnv"][0]["keyToEnv"] == [{"secretKey": "access_key", "envVar": "AWS_ACCESS_KEY_ID"}]


def test_a_bad_cluster_setting_is_one_clear_error(tmp_path):
    res = run_cli("pipeline", "compile", "--output", str(tmp_path / "p.yaml"),
                  "--set", "cluster.schedule_cron=0 3 * * *")
    assert res.returncode == 1 and "cluster.schedule_cron must have 6 fields" in res.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_submit_with_a_token_uploads_once_and_starts_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "s3cret-token")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of the user's
    with KFPStandIn() as kfp_api:
        args = ["pipeline", "submit", "--profile", "paper", "--dataset", "tjh", "--task", "mortality", "--model",
                "smollm2-135m", "--data-path", "/workspace/data/raw/tjh", "--set", f"cluster.host={kfp_api.url}",
                "--set", "cluster.auth=token", "--set", "data.seed=7", "--name", "nightly-check"]
        first = run_cli(*args)
        assert first.returncode == 0, first.stderr[-2000:]
        uploaded = len(kfp_api.requests)
        second = run_cli(*args)
        assert second.returncode == 0, second.stderr[-2000:]

    # the first submission creates the pipeline, then its version named by content; the second finds that one
    assert [r.route for r in kfp_api.requests[:uploaded] if "upload" in r.route] == ["pipelines/upload",
                                                                                    "pipelines/upload_version"]
    assert not [r for r in kfp_api.requests[uploaded:] if "upload" in r.route], "an unchanged pipeline is re-uploaded"
    version = kfp_api.calls("POST", "pipelines/upload_version")[0]
    package = list(yaml.safe_load_all(version.files["uploadfile"].decode()))
    assert package[0]["pipelineInfo"]["name"] == "eagrl" and "platforms" in package[1]
    assert version.query["name"].startswith("eagrl-")
    assert all(r.headers.get("authorization") == "Bearer s3cret-token" for r in kfp_api.requests)
    runs = kfp_api.calls("POST", "runs")
    assert len(runs) == 2 and first.stdout.strip() == runs[0].response["run_id"]
    body = runs[0].body
    assert body["display_name"] == "nightly-check"
    assert body["experiment_id"] == kfp_api.experiments[0]["experiment_id"]
    assert runs[1].body["pipeline_version_reference"] == body["pipeline_version_reference"] == {
        "pipeline_id": kfp_api.pipelines[0]["pipeline_id"],
        "pipeline_version_id": version.response["pipeline_version_id"]}
    assert body["runtime_config"]["parameters"] == {
        "profile": "paper", "dataset": "tjh", "task": "mortality", "model": "smollm2-135m",
        "data_path": "/workspace/data/raw/tjh", "overrides": json.dumps({"data.seed": 7})}
    assert "pipeline_spec" not in body, "runs reference the uploaded version, not an inline spec"


def test_schedule_through_the_kubeconfig_creates_the_recurring_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with KFPStandIn() as kfp_api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": kfp_api.url}}],
            "users": [{"name": "me", "user": {"token": "kube-token"}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me"}}]}))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        res = run_cli("pipeline", "schedule", "--profile", "default", "--dataset", "mimic-iv-demo", "--model",
                      "smollm2-135m", "--cron", "0 30 2 * * 1", "--max-concurrency", "2")
        assert res.returncode == 0, res.stderr[-2000:]

    proxy = "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/apis/v2beta1/"
    assert kfp_api.requests and [r.path for r in kfp_api.requests if not r.path.startswith(proxy)] == []
    assert all(r.headers.get("authorization") == "Bearer kube-token" for r in kfp_api.requests)
    [job] = kfp_api.calls("POST", "recurringruns")
    assert res.stdout.strip() == job.response["recurring_run_id"]
    body = job.body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * 1"}}
    assert int(body["max_concurrency"]) == 2 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {
        "profile": "default", "dataset": "mimic-iv-demo", "task": "", "model": "smollm2-135m", "data_path": "",
        "overrides": "{}"}
    assert body["pipeline_version_reference"]["pipeline_version_id"] == kfp_api.versions[-1]["pipeline_version_id"]


def test_token_auth_without_a_token_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    res = run_cli("pipeline", "submit", "--set", "cluster.host=http://127.0.0.1:9", "--set", "cluster.auth=token")
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "eagrl: error: cluster.auth is token but $KFP_TOKEN is empty: export the KFP token there")
