"""The ``eagrl serve`` command (registered in :mod:`eagrl.cli`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Opt = typer.Option


def serve_command(
    model: Annotated[Optional[str], Opt("--model", help="models:/eagrl-policy@champion, models:/name/version, a "
                                         "local model folder, smollm2-135m or tiny; default: the profile's model.source")] = None,
    adapter: Annotated[Optional[str], Opt("--adapter", help="A LoRA adapter folder or models:/ URI.")] = None,
    name: Annotated[str, Opt("--name", help="Model name on the routes.")] = "eagrl-policy",
    host: Annotated[str, Opt("--host", help="Bind address (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, Opt("--port", help="HTTP port.")] = 8080,
    backend: Annotated[str, Opt("--backend", help="auto | transformers | vllm")] = "auto",
    dataset: Annotated[str, Opt("--dataset", help="Feature specs and prompt domain of the clinical route.")] = "tjh",
    task: Annotated[str, Opt("--task", help="mortality | readmission_30d")] = "mortality",
    features_file: Annotated[Optional[Path], Opt("--features-file", help="A cohort's features.json.")] = None,
    max_batch_size: Annotated[int, Opt("--max-batch-size", help="1: one request at a time.")] = 8,
    max_wait_ms: Annotated[float, Opt("--max-wait-ms", help="Batch fill wait after the first request.")] = 10.0,
    timeout: Annotated[float, Opt("--timeout", help="Seconds before a request gets 504.")] = 120.0,
    max_body_bytes: Annotated[int, Opt("--max-body-bytes", help="Larger bodies get 413.")] = 1_000_000,
    api_key_env: Annotated[str, Opt("--api-key-env", help="Env var holding the API key (set: key required).")] = "EAGRL_API_KEY",
    profile: Annotated[str, Opt("--profile", "-p", help="smoke | default | paper, or a YAML file.")] = "default",
    set_: Annotated[Optional[list[str]], Opt("--set", help="Override any config value: KEY=VALUE (repeatable).")] = None,
) -> None:
    """Serve the policy model: OpenAI completions/chat, KServe v1/v2 predict, a clinical route, health."""
    from eagrl.cli import build_config
    from eagrl.serve.config import ServeConfig
    from eagrl.serve.server import serve

    cfg = build_config(profile, sets=set_)
    model_cfg = cfg.model.model_copy(update={k: v for k, v in {"source": model, "adapter": adapter}.items() if v})
    serve_cfg = ServeConfig(model_name=name, host=host, port=port, backend=backend, dataset=dataset, task=task,
                            features_file=str(features_file) if features_file else None, max_batch_size=max_batch_size,
                            max_wait_ms=max_wait_ms, request_timeout_s=timeout, max_body_bytes=max_body_bytes,
                            api_key_env=api_key_env)
    serve(serve_cfg, model_cfg, cfg.generation)
