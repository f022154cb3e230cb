"""``eagrl evaluate``: the comparison table, robustness, generalisation and the HTML report in one command.

:func:`register` adds it to the main app of :mod:`eagrl.cli`; it shares the stage-command contract
(``--profile``, ``--dataset``, ``--data-path``, ``--task``, ``--out``, ``--set``, ``--workspace``) and body.
No ``from __future__ import annotations`` here: typer reads the annotations of the nested command at run time.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    # Imported here: typer reads these annotations when the command is built.
    from eagrl.cli.options import DataPath, DatasetOpt, Out, Profile, Sets, TaskOpt, WorkspaceOpt, guard, run_stage

    Models = Annotated[Optional[str], typer.Option(
        "--models", help="Comma-separated entries of evaluate.models to score (default: all of them).")]

    @app.command("evaluate")
    @guard
    def evaluate(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                 task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                 workspace: WorkspaceOpt = None, models: Models = None) -> None:
        """Score the prompting baselines and every registered model on one split; write OUT/evaluate/report.html."""
        from eagrl.evaluate.stage import evaluate_stage

        only = [m.strip() for m in models.split(",") if m.strip()] if models else None
        stage = lambda cfg, o: evaluate_stage(cfg, o, only=only)  # noqa: E731
        run_stage(stage, profile, dataset, data_path, task, out, set_, workspace, "report", "table")
