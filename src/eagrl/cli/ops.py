"""Operations commands: ``pipeline compile|submit|schedule``, ``runs compare``, ``data checkout``.

Registered on the main app by :func:`register` (one line in ``eagrl.cli``).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagrl.cli.options import WorkspaceOpt
from eagrl.config import load_config, parse_override


def register(app: typer.Typer, data_app: typer.Typer, pipeline_app: typer.Typer) -> None:
    from eagrl.cli.options import guard

    runs_app = typer.Typer(no_args_is_help=True, help="Look at tracked MLflow runs.")
    app.add_typer(runs_app, name="runs")
    pipeline_app.command("compile")(guard(pipeline_compile))
    pipeline_app.command("submit")(guard(pipeline_submit))
    pipeline_app.command("schedule")(guard(pipeline_schedule))
    runs_app.command("compare")(guard(runs_compare))
    data_app.command("checkout")(guard(data_checkout))


ClusterProfile = Annotated[str, typer.Option("--profile", "-p", help="Profile whose cluster section applies and "
                                             "that submitted runs use: smoke | default | paper, or a YAML file.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config value: KEY=VALUE (repeatable); "
                                                  "cluster.* configure the cluster, the rest go to the run.")]
Package = Annotated[Optional[Path], typer.Option("--package", help="A compiled pipeline YAML; default: compile now.")]
Dataset = Annotated[str, typer.Option("--dataset", help="Run parameter dataset (empty: the profile's).")]
Task = Annotated[str, typer.Option("--task", help="Run parameter task (empty: the profile's).")]
Model = Annotated[str, typer.Option("--model", help="Run parameter model, i.e. model.source (empty: the profile's).")]
DataPath = Annotated[str, typer.Option("--data-path", help="Run parameter data_path, a path inside the cluster.")]
Name = Annotated[Optional[str], typer.Option("--name", help="Run / recurring-run name shown in the KFP UI.")]


def _overrides(sets: list[str] | None) -> dict:
    return dict(parse_override(s) for s in (sets or []))


def compile_for_cluster(output: Path, profile: str = "paper", overrides: dict | None = None) -> Path:
    """Compile the pipeline with the ``cluster`` and image settings of ``profile`` + ``overrides``
    (pipelines/platform.py): a pure function of that config."""
    from pipelines.eagrl_pipeline import compile_pipeline

    return compile_pipeline(output, load_config(profile, overrides))  # a bad profile or value fails here, named


def pipeline_compile(output: Annotated[Path, typer.Option("--output", "-o")] = Path("pipelines/eagrl_pipeline.yaml"),
                     profile: ClusterProfile = "paper", set_: Sets = None) -> None:
    """Write the KFP v2 pipeline YAML for a cluster (GPUs, nodes, volumes, secrets from the cluster section)."""
    print(compile_for_cluster(output, profile, _overrides(set_)))


def _prepare(profile: str, sets: list[str] | None, package: Path | None, dataset: str, task: str, model: str,
             data_path: str):
    from eagrl.cluster.submit import make_client, run_parameters

    overrides = _overrides(sets)
    cfg = load_config(profile, overrides)
    if package is None:
        package = compile_for_cluster(Path(tempfile.mkdtemp(prefix="eagrl-kfp-")) / "eagrl_pipeline.yaml",
                                      profile, overrides)
    run_overrides = {k: v for k, v in overrides.items() if not k.startswith("cluster.")}
    params = run_parameters(profile, dataset, task, model, data_path, run_overrides)
    return cfg.cluster, make_client(cfg.cluster), package, params


def pipeline_submit(profile: ClusterProfile = "paper", dataset: Dataset = "", task: Task = "", model: Model = "",
                    data_path: DataPath = "", set_: Sets = None, package: Package = None, name: Name = None) -> None:
    """Upload the pipeline to the KFP endpoint (cluster.host, token or kubeconfig) and start a run."""
    from eagrl.cluster.submit import api_errors, submit_run

    cluster, client, package, params = _prepare(profile, set_, package, dataset, task, model, data_path)
    done = api_errors(submit_run)(client, package, cluster, params, name)
    typer.echo(f"pipeline {done.pipeline_id} version {done.version_id}, experiment {done.experiment_id}", err=True)
    print(done.run_id)


def pipeline_schedule(
    profile: ClusterProfile = "paper",
    dataset: Dataset = "",
    task: Task = "",
    model: Model = "",
    data_path: DataPath = "",
    set_: Sets = None,
    package: Package = None,
    name: Name = None,
    cron: Annotated[Optional[str], typer.Option(help="6-field cron; default cluster.schedule_cron.")] = None,
    max_concurrency: Annotated[Optional[int], typer.Option(help="Default cluster.max_concurrency.")] = None,
    catchup: Annotated[
        Optional[bool], typer.Option("--catchup/--no-catchup", help="Default cluster.catchup (off).")
    ] = None,
) -> None:
    """Create a recurring run (scheduled retraining) of the pipeline on the KFP endpoint."""
    from eagrl.cluster.submit import api_errors, schedule_run

    given = {"cluster.schedule_cron": cron, "cluster.max_concurrency": max_concurrency, "cluster.catchup": catchup}
    sets = [*(set_ or []), *(f"{k}={json.dumps(v)}" for k, v in given.items() if v is not None)]
    cluster, client, package, params = _prepare(profile, sets, package, dataset, task, model, data_path)
    done = api_errors(schedule_run)(client, package, cluster, params, name)
    typer.echo(f"pipeline {done.pipeline_id} version {done.version_id}, experiment {done.experiment_id}, "
               f"cron {cluster.schedule_cron!r}, max concurrency {cluster.max_concurrency}, "
               f"catch-up {'on' if cluster.catchup else 'off'}", err=True)
    print(done.recurring_run_id)


TrackingUri = Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow store; default as `eagrl run`.")]


def _client(tracking_uri: str | None, workspace: Path | None):
    import mlflow

    from eagrl.cli.options import build_config

    sets = [f"tracking.mlflow_tracking_uri={tracking_uri}"] if tracking_uri else None
    cfg = build_config("default", sets=sets, workspace=workspace)
    return cfg, mlflow.MlflowClient(cfg.tracking.mlflow_tracking_uri)


def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more MLflow run ids.")],
    tracking_uri: TrackingUri = None,
    workspace: WorkspaceOpt = None,
    all_params: Annotated[bool, typer.Option("--all-params", help="Every param, not only those that differ.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the metrics, data versions (DVC hashes) and differing params of runs side by side."""
    from dataclasses import asdict

    from rich.console import Console

    from eagrl.tracking.compare import compare_runs, render

    _, client = _client(tracking_uri, workspace)
    cmp = compare_runs(client, run_ids, all_params)
    if as_json:
        print(json.dumps(asdict(cmp), indent=1, default=str))
    else:
        Console(width=max(120, 40 + 36 * len(run_ids))).print(render(cmp))


def data_checkout(run_id: Annotated[str, typer.Argument(help="MLflow run id (a pipeline run or a stage run).")],
                  into: Annotated[Optional[Path], typer.Option("--into", help="Target folder; default "
                                                              "<workspace>/checkouts/<run-id>/data.")] = None,
                  force: Annotated[bool, typer.Option("--force", help="Replace the workspace's data/ (the current "
                                                      "version is versioned first).")] = False,
                  tracking_uri: TrackingUri = None, workspace: WorkspaceOpt = None,
                  remote: Annotated[Optional[str], typer.Option("--remote", help="DVC remote; default "
                                                                "tracking.dvc_remote.")] = None) -> None:
    """Restore the exact data/ tree (raw, cohort, C_exp, trajectories) a past MLflow run used, from DVC."""
    from eagrl.tracking.checkout import checkout_version, run_data_version
    from eagrl.workspace import Workspace

    cfg, client = _client(tracking_uri, workspace)
    md5 = run_data_version(client, run_id)
    dest = into or Workspace.of(cfg).checkouts_dir / run_id / "data"
    done = checkout_version(md5, cfg.workspace, remote or cfg.tracking.dvc_remote, dest=dest, force=force, label=run_id)
    if done.previous_md5:
        typer.echo(f"the replaced data/ stays in DVC as {done.previous_md5}", err=True)
    typer.echo(f"data version {md5} of run {run_id}", err=True)
    print(done.path)
