"""Stage 1b as a pipeline stage: LoRA SFT on the selected trajectories, scored on held-out stays, registered.

``sft_stage(cfg, out_dir)`` is what ``eagrl sft``, the KFP component and the tests call. Around
:func:`eagrl.sft.train.run_sft` it adds: the trajectory set (the MCTS stage's ``selected.jsonl`` for these
settings unless a path is given), with ``sft.own_text_epochs`` > 0 the second phase (the answer slot trained
after the policy's own text, :mod:`eagrl.sft.own_text`; its adapter is the one registered), a held-out check of
the trained policy with the same structured P_QD generation the zero-shot stage uses (well-formed rate,
AUROC/AUPRC/Brier with intervals), the MLflow run (settings, loss curve as metrics and as a plot, held-out
metrics, the adapter) and the adapter registered as ``eagrl-sft-<dataset>-<task>`` (a pyfunc model,
:mod:`eagrl.llm.registry`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from eagrl.config import Config
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.stage import StageResult, stage_contract, stage_dir
from eagrl.tracking.dvc_store import tree_md5
from eagrl.tracking.mlflow_run import log_metrics, stage_run
from eagrl.workspace import Workspace, model_config, workspace_inputs


def default_trajectories(cfg: Config, cohort: Cohort, cohort_path: Path) -> Path:
    """The selected set the MCTS stage writes for the current settings."""
    from eagrl.mcts.cohort_search import trajectories_dir

    attention = Workspace.of(cfg).attention_path
    if not attention.is_file():
        raise DataError(f"no expert attention table at {attention}: run `eagrl expert train` and `eagrl mcts` "
                        "first, or pass the trajectories file")
    path = trajectories_dir(cfg, cohort, cohort_path, attention) / "selected.jsonl"
    if not path.is_file():
        raise DataError(f"no selected trajectories at {path}: run `eagrl mcts` with the same settings first")
    return path


def _inputs(cfg: Config, out_dir, given: dict) -> dict:
    """The workspace's cohort, and the search's selected set for these settings unless a file is given."""
    paths = workspace_inputs(cfg, out_dir, given)
    if given.get("trajectories_path") is None:
        source = paths["cohort_path"]
        paths["trajectories_path"] = default_trajectories(cfg, Cohort.load(source), source)
    return paths


@stage_contract("sft", ("data", "expert", "model", "generation", "mcts", "sft"), resolve=_inputs)
def sft_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
              cohort_path: str | Path | None = None, trajectories_path: str | Path | None = None) -> StageResult:
    """Train the LoRA adapter, score it on held-out stays, log and register it."""
    import mlflow

    from eagrl.llm.registry import log_policy
    from eagrl.scoring.keys import tag_heldout
    from eagrl.scoring.policy import evaluate_trained
    from eagrl.sft.own_text import train_slot_on_own_text
    from eagrl.sft.train import run_sft

    out = stage_dir(out_dir, "sft")
    source, trajectories = Path(cohort_path), Path(trajectories_path)
    cohort = Cohort.load(source)
    mcfg = model_config(cfg)
    registered = Workspace.of(cfg).registered_name("sft")

    with stage_run(cfg, "sft", parent_run_id) as run:
        cohort_md5 = tree_md5(source)
        mlflow.set_tags({"eagrl.cohort_md5": cohort_md5,
                         "eagrl.trajectories_md5": hashlib.md5(trajectories.read_bytes()).hexdigest()})
        res = run_sft(mcfg, cfg.sft, trajectories, out / "train", readout=cfg.generation.readout)
        history, adapter_dir, own = res.history, res.adapter_dir, {}
        if cfg.sft.own_text_epochs > 0:  # the answer slot after the policy's own text (eagrl.sft.own_text)
            phase = train_slot_on_own_text(res.model, res.tokenizer, cohort, mcfg, cfg.sft, cfg.generation,
                                           out / "own-text", seed=cfg.evaluate.seed)
            last = int(history[-1]["step"]) if history else 0
            history = history + [{**r, "step": r.get("step", 0) + last} for r in phase.history]
            adapter_dir, own = phase.adapter_dir, phase.metrics
            mlflow.log_artifact(str(out / "own-text" / "train_history.json"), artifact_path="own-text")
        for row in history:
            mlflow.log_metrics({f"train_{k}": float(v) for k, v in row.items() if k != "step"},
                               step=int(row.get("step", 0)))
        plot = loss_plot(history, out / "loss.png", phase_start=len(res.history) if own else None)

        held = evaluate_trained(res.model, res.tokenizer, cohort, out / "heldout", mcfg, cfg.generation,
                                split=cfg.sft.eval_split, max_stays=cfg.sft.eval_max_stays,
                                n_boot=cfg.sft.eval_n_boot, seed=cfg.evaluate.seed,
                                fit_max_stays=cfg.sft.fit_max_stays)
        metrics = {**res.metrics, **own, **held}
        log_metrics(metrics)
        for path in (plot, out / "train" / "train_history.json"):
            mlflow.log_artifact(str(path))
        mlflow.log_artifacts(str(out / "heldout"), artifact_path="heldout")
        if (out / "fit-train").is_dir():
            mlflow.log_artifacts(str(out / "fit-train"), artifact_path="fit-train")
        tag_heldout(mcfg, adapter_dir, cfg.generation, cohort_md5, cfg.sft.eval_split)  # for the evaluation
        info = log_policy(adapter_dir, mcfg, cfg.generation, name="policy", registered_name=registered,
                          metadata={"stage": "sft", "dataset": cfg.data.dataset, "task": cfg.data.task})
        split = cfg.sft.eval_split
        auroc, ci = held.get(f"{split}_auroc"), held.get(f"{split}_auroc_ci")
        message = (
            f"SFT on {int(res.metrics.get('n_examples', 0))} trajectories, "
            f"{int(res.metrics.get('optimizer_steps', 0))} optimiser steps over "
            f"{int(res.metrics.get('answer_tokens_trained', 0))} answer slots and "
            f"{int(res.metrics.get('reasoning_tokens_trained', 0))} reasoning tokens: loss "
            f"{res.metrics.get('first_loss', float('nan')):.3f} -> {res.metrics.get('last_loss', float('nan')):.3f}"
            + (f"; then the answer slot after its own text on {int(own['own_text_stays'])} training stays "
               f"(AUROC on them before: {own.get('own_text_auroc_before', float('nan')):.3f})" if own else "")
            + "; "
            f"{split} P_QD AUROC "
            + (f"{auroc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if auroc is not None else "undefined")
            + f", well-formed {held.get(f'{split}_well_formed_rate', 0):.0%}"
            + (f"; on its own training stays {held['train_auroc']:.3f}" if "train_auroc" in held else "")
            + f"; registered {registered}"
            + (f" v{info.registered_model_version}" if getattr(info, "registered_model_version", None) else "")
        )
        result = StageResult("sft", metrics=metrics, mlflow_run_id=run.info.run_id, message=message,
                             outputs={"adapter": str(adapter_dir), "heldout": str(out / "heldout"),
                                      "loss_plot": str(plot), "registered_model": registered,
                                      "model_uri": str(info.model_uri),
                                      "model_version": str(getattr(info, "registered_model_version", None) or "")})
    result.write(out_dir)
    return result


def loss_plot(history: list[dict], out: Path, phase_start: int | None = None) -> Path:
    """The training loss (and learning rate) per optimiser step; ``phase_start``: the index in ``history`` where the
    second phase (the answer slot after the policy's own text) begins, marked by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r.get("step", i + 1) for i, r in enumerate(history)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, [r.get("loss", float("nan")) for r in history], marker="o", ms=3, label="loss (response tokens)")
    if phase_start is not None and 0 < phase_start < len(steps):
        ax.axvline(steps[phase_start] - 0.5, color="black", ls=":", lw=1)
        ax.text(steps[phase_start], ax.get_ylim()[1], " slot after own text", va="top", fontsize=8)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    if any("learning_rate" in r for r in history):
        ax2 = ax.twinx()
        ax2.plot(steps, [r.get("learning_rate", float("nan")) for r in history], color="grey", alpha=0.5)
        ax2.set_ylabel("learning rate")
    ax.set_title("SFT")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@stage_contract("direct", ("data", "model", "generation", "sft"), resolve=workspace_inputs)
def direct_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
                 cohort_path: str | Path | None = None) -> StageResult:
    """The direct fine-tune baseline (:mod:`eagrl.sft.direct`): the same LoRA SFT on the answer slot alone over every
    training stay, scored on held-out stays in the vanilla style, registered as ``eagrl-direct-<dataset>-<task>``."""
    import mlflow

    from eagrl.llm.loading import load_model
    from eagrl.llm.registry import log_policy
    from eagrl.scoring.keys import tag_heldout
    from eagrl.scoring.policy import evaluate_trained
    from eagrl.sft.direct import direct_generation, write_direct_examples
    from eagrl.sft.train import run_sft

    out = stage_dir(out_dir, "direct")
    source = Path(cohort_path)
    cohort = Cohort.load(source)
    mcfg = model_config(cfg)
    registered = Workspace.of(cfg).registered_name("direct")
    gen = direct_generation(cfg.generation)
    with stage_run(cfg, "direct", parent_run_id) as run:
        cohort_md5 = tree_md5(source)
        mlflow.set_tags({"eagrl.cohort_md5": cohort_md5})
        loaded = load_model(mcfg.model_copy(update={"adapter": None}))
        examples = write_direct_examples(cohort, "train", gen, loaded.tokenizer, out / "examples.jsonl")
        res = run_sft(mcfg, cfg.sft, examples, out / "train", loaded=loaded, readout="yesno")
        held = evaluate_trained(res.model, res.tokenizer, cohort, out / "heldout", mcfg, gen, split=cfg.sft.eval_split,
                                max_stays=cfg.sft.eval_max_stays, n_boot=cfg.sft.eval_n_boot, seed=cfg.evaluate.seed,
                                fit_max_stays=cfg.sft.fit_max_stays, style="vanilla")
        metrics = {**res.metrics, **held}
        log_metrics(metrics)
        mlflow.log_artifacts(str(out / "heldout"), artifact_path="heldout")
        tag_heldout(mcfg, res.adapter_dir, gen, cohort_md5, cfg.sft.eval_split, style="vanilla")
        info = log_policy(res.adapter_dir, mcfg, gen, name="policy", registered_name=registered,
                          metadata={"stage": "direct", "dataset": cfg.data.dataset, "task": cfg.data.task})
        split = cfg.sft.eval_split
        auroc, ci = held.get(f"{split}_auroc"), held.get(f"{split}_auroc_ci")
        message = (f"direct fine-tune on {int(res.metrics.get('n_examples', 0))} training stays, "
                   f"{int(res.metrics.get('optimizer_steps', 0))} optimiser steps: {split} AUROC "
                   + (f"{auroc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if auroc is not None else "undefined")
                   + (f"; on its own training stays {held['train_auroc']:.3f}" if "train_auroc" in held else "")
                   + f"; registered {registered}")
        result = StageResult("direct", metrics=metrics, mlflow_run_id=run.info.run_id, message=message,
                             outputs={"adapter": str(res.adapter_dir), "heldout": str(out / "heldout"),
                                      "registered_model": registered,
                                      "model_uri": str(info.model_uri)})
    result.write(out_dir)
    return result
