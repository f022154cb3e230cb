"""The ``eagrl serve`` command (registered in :mod:`eagrl.cli`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

Opt = typer.Option


def serve_command(
    model: Annotated[
        Optional[str],
        Opt(
            "--model",
            help="models:/eagrl-policy@champion, models:/name/version, a "
            "local model folder, smollm2-135m or tiny; default: the profile's model.source",
        ),
    ] = None,
    adapter: Annotated[Optional[str], Opt("--adapter", help="A LoRA adapter folder or models:/ URI.")] = None,
    name: Annotated[Optional[str], Opt("--name", help="Model name on the routes; default serve.model_name.")] = None,
    host: Annotated[
        Optional[str], Opt("--host", help="Bind address (0.0.0.0 in a container); default serve.host.")
    ] = None,
    port: Annotated[Optional[int], Opt("--port", help="HTTP port; default serve.port.")] = None,
    backend: Annotated[
        Optional[str], Opt("--backend", help="auto | transformers | vllm; default serve.backend.")
    ] = None,
    dataset: Annotated[
        Optional[str],
        Opt("--dataset", help="Feature specs and prompt domain of the clinical route; default serve.dataset."),
    ] = None,
    task: Annotated[Optional[str], Opt("--task", help="mortality | readmission_30d; default serve.task.")] = None,
    features_file: Annotated[Optional[Path], Opt("--features-file", help="A cohort's features.json.")] = None,
    max_batch_size: Annotated[Optional[int], Opt("--max-batch-size", help="1: one request at a time.")] = None,
    max_wait_ms: Annotated[
        Optional[float], Opt("--max-wait-ms", help="Batch fill wait after the first request.")
    ] = None,
    timeout: Annotated[Optional[float], Opt("--timeout", help="Seconds before a request gets 504.")] = None,
    max_body_bytes: Annotated[Optional[int], Opt("--max-body-bytes", help="Larger bodies get 413.")] = None,
    api_key_env: Annotated[
        Optional[str], Opt("--api-key-env", help="Env var holding the API key (set: key required).")
    ] = None,
    profile: Annotated[str, Opt("--profile", "-p", help="smoke | default | paper, or a YAML file.")] = "default",
    set_: Annotated[
        Optional[list[str]], Opt("--set", help="Override any config value: KEY=VALUE (repeatable).")
    ] = None,
) -> None:
    """Serve the policy model: OpenAI completions/chat, KServe v1/v2 predict, a clinical route, health. Each option
    left out takes the profile's ``serve`` section (``--set serve.KEY=VALUE`` changes any other)."""
    from eagrl.cli.options import build_config
    from eagrl.serve.server import serve

    cfg = build_config(profile, sets=set_)
    model_cfg = cfg.model.model_copy(update={k: v for k, v in {"source": model, "adapter": adapter}.items() if v})
    for source in (model_cfg.source, model_cfg.adapter):
        check_alias(source, cfg.tracking.mlflow_tracking_uri)
    given = {"model_name": name, "host": host, "port": port, "backend": backend, "dataset": dataset, "task": task,
             "features_file": str(features_file) if features_file else None, "max_batch_size": max_batch_size,
             "max_wait_ms": max_wait_ms, "request_timeout_s": timeout, "max_body_bytes": max_body_bytes,
             "api_key_env": api_key_env}
    serve_cfg = type(cfg.serve).model_validate({**cfg.serve.model_dump(), **{k: v for k, v in given.items()
                                                                              if v is not None}})
    serve(serve_cfg, model_cfg, cfg.generation)


def check_alias(source: str | None, tracking_uri: str) -> None:
    """``models:/<name>@<alias>`` that no version holds (no candidate cleared promotion yet): one line naming the
    missing alias, the store, and how to get one. Other sources, and a held alias, pass unchanged."""
    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)", source or "")
    if not m:
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    from eagrl.errors import ConfigError

    mlflow.set_tracking_uri(tracking_uri)  # the store the pipeline registered in; the server resolves it there
    name, alias = m.groups()
    client = mlflow.MlflowClient(tracking_uri)
    try:
        client.get_model_version_by_alias(name, alias)
        return
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise  # the store itself failed: its own message
    try:
        n = len(client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        n = 0
    held = (f"{name} has {n} version(s), none promoted" if n else f"no registered model {name!r}")
    raise ConfigError(
        f"{source}: no version of {name} holds the {alias!r} alias in {tracking_uri} ({held}); `make run` (or "
        f"`eagrl promote` after an evaluation) sets it once a candidate clears the promotion floor and beats the "
        f"champion, and says why when none does (promote/promotion.json, the eagrl.promotion.reason tag of each "
        f"version); or serve one version: --model models:/{name}/<version>")
