"""MLflow runs for stages: one parent run per pipeline execution, one nested run per stage.

The store is ``cfg.tracking.mlflow_tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a local sqlite file
``<workspace>/mlflow.db`` with artifacts under ``<workspace>/mlartifacts``.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from eagrl.config import Config, default_tracking_uri
from eagrl.metrics import metrics_json

MAX_PARAM_LEN = 6000


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.mlflow_tracking_uri or default_tracking_uri(cfg)


def _experiment_id(cfg: Config) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if tracking_uri(cfg).startswith("sqlite:"):
        artifacts = (Path(cfg.workspace).resolve() / "mlartifacts").as_uri()
    return mlflow.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, parent_run_id: str | None = None) -> Iterator["object"]:
    """Start (and end) the MLflow run of one stage, tagged with dataset/task/profile, params = the config."""
    import mlflow

    with _tracking_uri_set(tracking_uri(cfg)):
        exp_id = _experiment_id(cfg)
        tags = {"eagrl.stage": stage, "eagrl.dataset": cfg.data.dataset, "eagrl.task": cfg.data.task,
                "eagrl.profile": cfg.profile}
        with mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent_run_id, tags=tags,
                              nested=parent_run_id is not None) as run:
            mlflow.log_params({k: _param(v) for k, v in cfg.to_flat().items()})
            yield run


def nested_run(run_name: str):
    """A child run of the active one, in the same experiment (``mlflow.start_run(nested=True)`` alone opens it in
    the active experiment, which is the Default one unless set: the child would be kept away from its parent)."""
    import mlflow

    parent = mlflow.active_run()
    return mlflow.start_run(run_name=run_name, nested=True,
                            experiment_id=parent.info.experiment_id if parent is not None else None)


@contextlib.contextmanager
def _tracking_uri_set(uri: str) -> Iterator[None]:
    """``mlflow.set_tracking_uri`` for the block only: it is process-global and exports MLFLOW_TRACKING_URI,
    so a stage called in-process (tests, notebooks) would otherwise redirect every later MLflow client."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def start_parent_run(cfg: Config, name: str = "pipeline") -> str:
    """Create the parent run of a pipeline execution and return its id (ended by :func:`end_run`)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    client = mlflow.MlflowClient()
    run = client.create_run(_experiment_id(cfg), run_name=name,
                            tags={"eagrl.stage": "pipeline", "eagrl.dataset": cfg.data.dataset,
                                  "eagrl.task": cfg.data.task, "eagrl.profile": cfg.profile})
    for k, v in cfg.to_flat().items():
        client.log_param(run.info.run_id, k, _param(v))
    return run.info.run_id


def end_run(cfg: Config, run_id: str, status: str = "FINISHED", metrics: dict | None = None) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    client = mlflow.MlflowClient()
    for k, v in flat_numbers(metrics or {}).items():
        client.log_metric(run_id, k, v)
    client.set_terminated(run_id, status=status)


def log_metrics(metrics: dict) -> None:
    import mlflow

    mlflow.log_metrics(flat_numbers(metrics))


def flat_numbers(metrics: dict) -> dict[str, float]:
    """MLflow takes scalars only: an interval ``x_ci = [lo, hi]`` becomes ``x_ci_low``/``x_ci_high``."""
    out: dict[str, float] = {}
    for k, v in metrics_json(metrics).items():
        if isinstance(v, list):
            out[f"{k}_low"], out[f"{k}_high"] = v
        else:
            out[k] = float(v)
    return out


def _param(v) -> str:
    s = str(v)
    return s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."
