"""The ``cluster`` section: where the KFP endpoint is, how to authenticate, and what each task asks of k8s.

Secrets are only ever named here (a k8s Secret and its keys); their values never enter a config, a
pipeline YAML or MLflow.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eagrl.config.section import Section


class Toleration(Section):
    key: str = Field(..., description="Taint key, e.g. nvidia.com/gpu.")
    operator: Literal["Equal", "Exists"] = Field("Exists", description="Equal: match value too; Exists: any value.")
    value: str | None = Field(None, description="Taint value (operator Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        "NoSchedule", description="Taint effect tolerated; None: all effects.")


class SecretRef(Section):
    name: str = Field(..., description="Name of the k8s Secret in the run's namespace.")
    env: dict[str, str] = Field(..., description="Secret key -> environment variable in every task.")


class ClusterConfig(Section):
    host: str | None = Field(
        None, description="KFP API endpoint (http[s]://...); None: the API server of the kubeconfig context.")
    auth: Literal["token", "kubeconfig"] = Field(
        "kubeconfig", description="token: a bearer token from $token_env; kubeconfig: its credentials and proxy.")
    token_env: str = Field("KFP_TOKEN", description="Environment variable holding the bearer token (auth=token).")
    kube_context: str | None = Field(None, description="kubeconfig context (auth=kubeconfig); None: current.")
    namespace: str = Field("kubeflow", description="Namespace of the KFP install (kubeconfig proxy) and its runs.")
    verify_ssl: bool = Field(True, description="Check the endpoint's TLS certificate.")
    experiment: str = Field("eagrl", description="KFP experiment that runs and recurring runs belong to.")
    pipeline_name: str = Field("eagrl", description="Name the pipeline is uploaded under; versions by content.")
    run_profile: str = Field("paper", description="The `profile` pipeline parameter of submitted runs.")
    schedule_cron: str = Field(
        "0 0 3 * * 0", description="Retraining schedule, KFP's 6-field cron (s m h dom mon dow): Sundays 03:00.")
    max_concurrency: int = Field(1, ge=1, le=10, description="Recurring runs allowed at once.")
    catchup: bool = Field(False, description="Backfill missed intervals after a pause (off: only the latest).")
    enable_caching: bool = Field(True, description="KFP's task cache on the cluster (finished tasks are reused).")
    service_account: str | None = Field(None, description="k8s service account of the run's pods.")
    # ---- what the compiled pipeline asks of k8s (applied by pipelines/platform.py)
    accelerator_type: str = Field("nvidia.com/gpu", description="Extended resource of the GPU request.")
    gpus: dict[str, int] = Field(
        {"train-expert": 1, "zero-shot": 1, "mcts-trajectories": 1, "sft-policy": 1, "rl-policy": 1, "evaluate": 1},
        description="KFP task name -> GPUs it requests; tasks not listed run on CPU nodes.")
    cpu_request: str = Field("2", description="CPU request of every task.")
    memory_request: str = Field("8G", description="Memory request of every task.")
    gpu_node_selector: list[str] = Field(  # "key=value" strings: label keys hold dots, config keys are dotted
        ["nvidia.com/gpu.present=true"], description="Node labels (key=value) a GPU task must land on.")
    gpu_tolerations: list[Toleration] = Field(
        [Toleration(key="nvidia.com/gpu")], description="Taints GPU tasks tolerate (GPU nodes are usually tainted).")
    data: Literal["pvc", "object-store"] = Field(
        "pvc", description="pvc: every task mounts one RWX volume as the workspace; object-store: an emptyDir "
        "workspace, DVC remote and KFP artifacts in S3-compatible storage.")
    pvc_name: str = Field("eagrl-workspace", description="PersistentVolumeClaim holding the workspace (data=pvc).")
    workspace_path: str = Field("/workspace", description="Where the workspace is mounted in every task.")
    pipeline_root: str | None = Field(
        None, description="KFP artifact root of submitted runs, e.g. s3://bucket/kfp; None: the cluster's default.")
    secrets: list[SecretRef] = Field(
        [SecretRef(name="eagrl-mlflow", env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                                               "MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN"})],
        description="k8s Secrets exposed as environment variables in every task (by reference).")

    @model_validator(mode="after")
    def _check(self) -> "ClusterConfig":
        if len(self.schedule_cron.split()) != 6:
            raise ValueError(
                f"cluster.schedule_cron must have 6 fields (s m h dom mon dow), got {self.schedule_cron!r}"
            )
        if self.host is not None and not self.host.startswith(("http://", "https://")):
            raise ValueError(f"cluster.host must start with http:// or https://, got {self.host!r}")
        if any("=" not in label for label in self.gpu_node_selector):
            raise ValueError(f"cluster.gpu_node_selector entries must be key=value, got {self.gpu_node_selector}")
        bad = {k: v for k, v in self.gpus.items() if v < 0}
        if bad:
            raise ValueError(f"cluster.gpus must be non-negative counts, got {bad}")
        return self
