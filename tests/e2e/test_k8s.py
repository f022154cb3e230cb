"""k8s/: every manifest passes kubernetes-validate --strict; KServe resources match their CRD schemas."""
from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
K8S_VERSION = "1.37.0"
CRDS = {("serving.kserve.io", "InferenceService"): "inferenceservice.json",
        ("serving.kserve.io", "ServingRuntime"): "servingruntime.json"}


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _docs() -> list[tuple[str, dict]]:
    out = []
    for name in _kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                out.append((name, doc))
    return out


def _by_kind(kind: str) -> list[dict]:
    return [d for _, d in _docs() if d["kind"] == kind]


def _strict(schema):
    """Unknown fields become errors (what the API server's pruning would silently drop)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@lru_cache(maxsize=None)
def _crd_validator(group: str, kind: str):
    spec = json.loads((K8S / "crds" / CRDS[(group, kind)]).read_text())
    assert spec["group"] == group and spec["kind"] == kind
    return spec["version"], jsonschema.Draft7Validator(_strict(spec["openAPIV3Schema"]))


def validate(doc: dict) -> None:
    """Raise on any problem: CRD schema for KServe kinds, kubernetes-validate --strict for the rest."""
    group, _, version = doc["apiVersion"].rpartition("/")
    if (group, doc["kind"]) in CRDS:
        want, validator = _crd_validator(group, doc["kind"])
        assert version == want, f"{doc['kind']} must use {group}/{want}, not {doc['apiVersion']}"
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            raise jsonschema.ValidationError("; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors))
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# ====================================================================== schema validation
def test_kustomization_lists_every_manifest():
    listed = set(_kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert _kustomization()["namespace"] == "eagrl"


@pytest.mark.parametrize("name", sorted(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]))
def test_every_manifest_is_valid(name):
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert docs
    for doc in docs:
        validate(doc)


def test_the_checks_catch_mistakes():
    isvc = copy.deepcopy(_by_kind("InferenceService")[0])
    isvc["spec"]["predictor"]["model"]["storageUrl"] = "s3://typo"
    with pytest.raises(jsonschema.ValidationError, match="storageUrl"):
        validate(isvc)
    runtime = copy.deepcopy(_by_kind("ServingRuntime")[0])
    runtime["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"bad": 1}
    with pytest.raises(jsonschema.ValidationError):
        validate(runtime)
    deploy = copy.deepcopy(_by_kind("Deployment")[0])
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deploy)


# ====================================================================== the pieces agree
def test_inference_service_uses_the_runtime_with_a_gpu_storage_and_autoscaling():
    isvc, runtime = _by_kind("InferenceService")[0], _by_kind("ServingRuntime")[0]
    pred = isvc["spec"]["predictor"]
    model = pred["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert re.match(r"^(s3|gs|pvc|https?)://", model["storageUri"])
    assert 1 <= pred["minReplicas"] < pred["maxReplicas"] and pred["scaleMetric"] in ("cpu", "concurrency", "rps")
    accounts = {d["metadata"]["name"] for d in _by_kind("ServiceAccount")}
    assert pred["serviceAccountName"] in accounts


def test_runtime_runs_eagrl_serve_with_real_options_and_open_probes():
    from eagrl.cli import app
    from eagrl.serve.server import OPEN_PATHS

    container = _by_kind("ServingRuntime")[0]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "serve" and "--model=/mnt/models" in args
    command = typer.main.get_command(app).commands["serve"]
    known = {opt for p in command.params for opt in p.opts}
    for arg in args[1:]:
        assert arg.split("=")[0] in known, arg
    for probe in ("readinessProbe", "livenessProbe"):
        assert OPEN_PATHS.match(container[probe]["httpGet"]["path"])  # probes never need the API key
    key_env = next(e for e in container["env"] if e["name"] == "EAGRL_API_KEY")
    assert key_env["valueFrom"]["secretKeyRef"]["name"] == "eagrl-serve-api-key"


def _pod_specs():
    for _, d in _docs():
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "ServingRuntime":
            yield d["metadata"]["name"], {"containers": d["spec"]["containers"]}


def test_secrets_only_by_reference_and_documented():
    assert not _by_kind("Secret"), "secrets are created out of band, never stored in k8s/"
    readme = (K8S / "README.md").read_text()
    text = "\n".join((K8S / n).read_text() for n in _kustomization()["resources"])
    for name in set(re.findall(r"secretKeyRef:\s*\n\s*name:\s*(\S+)", text)):
        assert f"create secret generic {name}" in readme, name


def test_containers_run_as_non_root_with_pinned_images_and_limits():
    images = {i["name"] for i in _kustomization()["images"]}
    for name, pod in _pod_specs():
        pod_ctx = pod.get("securityContext", {})
        for c in pod["containers"]:
            ctx = c.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, (name, c["name"])
            assert ctx.get("allowPrivilegeEscalation") is False, (name, c["name"])
            assert c["image"] in images or re.search(r":[\w.-]+$", c["image"]) and not c["image"].endswith(":latest")
            assert "limits" in c.get("resources", {}), (name, c["name"])


def test_network_policies_deny_by_default_and_guard_postgres():
    policies = {d["metadata"]["name"]: d["spec"] for d in _by_kind("NetworkPolicy")}
    deny = policies["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    pg = policies["allow-postgres-from-mlflow"]
    assert pg["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in _by_kind("StatefulSet")}
    assert pg["podSelector"]["matchLabels"].items() <= pods["mlflow-postgres"].items()


def test_mlflow_uses_postgres_and_proxies_artifacts():
    deploy = next(d for d in _by_kind("Deployment") if d["metadata"]["name"] == "mlflow")
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    cmd = " ".join(c["args"])
    assert "--backend-store-uri \"postgresql+psycopg2://" in cmd and "@mlflow-postgres:5432/" in cmd
    assert "--serve-artifacts" in cmd and "--artifacts-destination" in cmd
    services = {d["metadata"]["name"] for d in _by_kind("Service")}
    assert {"mlflow", "mlflow-postgres"} <= services


def test_pipeline_runner_has_namespaced_permissions_only():
    assert not _by_kind("ClusterRole") and not _by_kind("ClusterRoleBinding")
    binding = _by_kind("RoleBinding")[0]
    assert binding["roleRef"]["name"] == _by_kind("Role")[0]["metadata"]["name"]
    assert binding["subjects"][0]["name"] in {d["metadata"]["name"] for d in _by_kind("ServiceAccount")}
    rules = _by_kind("Role")[0]["rules"]
    secret_rules = [r for r in rules if "secrets" in r["resources"]]
    assert all(r.get("resourceNames") for r in secret_rules), "secrets only by name"


def test_the_paper_profiles_workspace_claim_and_task_secrets_exist():
    """What `eagrl pipeline compile --profile paper` refers to is in k8s/ (the claim) or documented (secrets)."""
    from eagrl.config import load_config

    cluster = load_config("paper").cluster
    claims = {d["metadata"]["name"]: d for d in _by_kind("PersistentVolumeClaim")}
    assert cluster.data == "pvc" and cluster.pvc_name in claims
    assert claims[cluster.pvc_name]["spec"]["accessModes"] == ["ReadWriteMany"]  # tasks on several nodes
    readme = (K8S / "README.md").read_text()
    for secret in cluster.secrets:
        assert f"create secret generic {secret.name}" in readme, secret.name
        for key in secret.env:  # the secret's keys
            assert f"--from-literal={key}=" in readme, (secret.name, key)
