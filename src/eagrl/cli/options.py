"""What every ``eagrl`` command shares: the option contract (``--profile``, ``--dataset``, ``--data-path``, ``--task``,
``--out``, ``--set``, ``--workspace``), the one config builder, the one-line failure and the stage-command body."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from eagrl import config
from eagrl.config import Config, parse_override
from eagrl.errors import EagrlError
from eagrl.stage import progress_logging  # noqa: F401  (the commands set it up first)

console = Console(stderr=True)

Profile = Annotated[str, typer.Option("--profile", "-p", help="smoke | default | paper, or a YAML file.")]
DatasetOpt = Annotated[
    Optional[str], typer.Option("--dataset", help="mimic-iv-demo | tjh | clif | meds | physionet2012 | synthetic")
]
DataPath = Annotated[Optional[Path], typer.Option("--data-path", help="Folder or file holding the source data.")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="mortality | readmission_30d")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Folder for this command's outputs.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config value: KEY=VALUE (repeatable).")]
WorkspaceOpt = Annotated[Optional[Path], typer.Option("--workspace", help="Folder with data/, data.dvc, mlflow.db.")]


def build_config(profile: str, dataset: str | None = None, data_path: Path | None = None, task: str | None = None,
                 sets: list[str] | None = None, workspace: Path | None = None) -> Config:
    """The option contract and ``--set`` overrides, through the one config builder
    (:func:`eagrl.config.build_config`)."""
    overrides: dict = dict(parse_override(s) for s in (sets or []))
    given = {"data.dataset": dataset, "data.task": task,
             "data.data_path": str(data_path.resolve()) if data_path else None}
    overrides.update({k: v for k, v in given.items() if v is not None})
    return config.build_config(profile, overrides, workspace)


def fail(exc: BaseException, code: int = 1) -> None:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"eagrl: error: {msg}", file=sys.stderr)
    raise typer.Exit(code)


def guard(fn):
    """Turn expected failures into one stderr line; unexpected ones too, with the traceback behind EAGRL_DEBUG."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        progress_logging()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except EagrlError as exc:
            fail(exc)
        except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
            if os.environ.get("EAGRL_DEBUG"):
                raise
            fail(RuntimeError(f"{type(exc).__name__}: {exc} (set EAGRL_DEBUG=1 for the traceback)"), code=2)

    return wrapper


def run_stage(stage_fn, profile, dataset, data_path, task, out, sets, workspace, *shown: str) -> None:
    """The body every stage command shares: resolve the config, run the stage, say what it produced."""
    from eagrl.workspace_lock import workspace_lock

    cfg = build_config(profile, dataset, data_path, task, sets, workspace)
    with workspace_lock(cfg.workspace, wait_s=cfg.pipeline.lock_wait_s):  # one writer per workspace
        result = stage_fn(cfg, out)
    console.print(f"[green]{result.message}[/green]")
    details = [f"{key}: {result.outputs[key]}" for key in shown if key in result.outputs]
    console.print("  ".join([*details, f"metrics: {Path(out) / result.stage / 'metrics.json'}",
                             f"mlflow run: {result.mlflow_run_id}"]))
