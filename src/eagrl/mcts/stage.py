"""Stage 1a as a pipeline stage: the expert-guided search over the cohort's training split, tracked and versioned.

``mcts_stage(cfg, out_dir)`` is what ``eagrl mcts``, the KFP component and the tests call. Around
:func:`eagrl.mcts.cohort_search.run_mcts` it adds: the store's place in the workspace, the MLflow run (settings, reward
statistics with intervals, a plot of the reward distributions, the selected set) and the DVC version of the
trajectories.

The store lives at ``<workspace>/data/trajectories/<dataset>-<task>/<guided|unguided>-<key>/`` where ``key``
digests everything that changes what the search writes (its settings, the model and its dtype, the cohort version
and the expert's C_exp). The same settings therefore find and resume their own store after an interruption, and other
settings (the unguided ablation, another expert) start a new one beside it instead of overwriting it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from eagrl.config import Config
from eagrl.data.cohort import Cohort
from eagrl.mcts.cohort_search import trajectories_dir
from eagrl.mcts.select import trains_text
from eagrl.stage import StageResult, stage_contract, stage_dir
from eagrl.tracking.dvc_store import DataStore, tree_md5
from eagrl.tracking.mlflow_run import stage_run
from eagrl.workspace import model_config, workspace_inputs


@stage_contract("mcts", ("data", "expert", "model", "generation", "reward", "mcts"), resolve=workspace_inputs)
def mcts_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
               cohort_path: str | Path | None = None, attention_path: str | Path | None = None) -> StageResult:
    """Search every stay of ``cfg.mcts.split``, select the SFT set, track and version it."""
    import mlflow

    from eagrl.expert.attention import read_attention
    from eagrl.mcts.cohort_search import run_mcts

    out = stage_dir(out_dir, "mcts")
    source, attention = Path(cohort_path), Path(attention_path)
    cohort = Cohort.load(source)
    table = read_attention(attention)
    cohort_md5 = tree_md5(source)
    dest = trajectories_dir(cfg, cohort, source, attention)

    with stage_run(cfg, "mcts", parent_run_id) as run:
        mlflow.set_tags({"eagrl.cohort_md5": cohort_md5, "eagrl.expert_guidance": str(cfg.mcts.expert_guidance),
                         "eagrl.trajectories_dir": str(dest)})
        res = run_mcts(cohort, table, model_config(cfg), cfg.generation, cfg.mcts, dest, split=cfg.mcts.split,
                       max_stays=cfg.mcts.max_stays, progress=sys.stderr.isatty(), cls_reward=cfg.reward)
        plot = reward_plot(res.trajectories_path, res.selected_path, out / "rewards.png")
        for path in (res.selected_path, res.metrics_path, plot):
            mlflow.log_artifact(str(path))
        versions = {"trajectories_md5": tree_md5(dest)}
        if cfg.tracking.dvc:
            versions.update(DataStore(cfg.workspace, cfg.tracking.dvc_remote).commit())
        mlflow.set_tags({f"eagrl.{k}": v for k, v in versions.items()})
        m = res.metrics
        lo, hi = m.get("selected_r_att_ci", [float("nan")] * 2)
        message = (f"MCTS ({'guided' if cfg.mcts.expert_guidance else 'unguided'}) on {m['n_patients']} stays: "
                   f"{m['n_trajectories']} trajectories, {m['n_selected']} selected "
                   f"({m['n_selected_positive']} pos / {m['n_selected_negative']} neg; "
                   f"{m['n_slot_only']} more rollouts for the answer slot alone), selected R_att "
                   f"{m['selected_r_att_mean']:.3f} [{lo:.3f}, {hi:.3f}]"
                   + (f", {m['selected_expert_features_share']:.0%} of them naming the expert's C_exp "
                      f"({m['n_expert_candidates']} such candidates)" if cfg.mcts.expert_features else "")
                   + f"; {res.n_skipped} stays resumed from the store")
        result = StageResult("mcts", metrics={**m, "n_resumed": res.n_skipped}, mlflow_run_id=run.info.run_id,
                             message=message,
                             outputs={"selected": str(res.selected_path), "trajectories": str(res.trajectories_path),
                                      "dir": str(dest), "rewards_plot": str(plot), **versions})
    result.write(out_dir)
    return result


def reward_plot(trajectories_path: Path, selected_path: Path, out: Path) -> Path:
    """Histograms of R, R_cls and R_att over all completed trajectories and over the selected ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = _all_trajectories(trajectories_path)
    chosen = [r for r in (json.loads(line) for line in selected_path.read_text().splitlines() if line.strip())
              if trains_text(r)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("r", "r_cls", "r_att"), ("R (composite)", "R_cls", "R_att")):
        bins = [i / 20 for i in range(21)]
        ax.hist([t[key] for t in every], bins=bins, alpha=0.6, label=f"all ({len(every)})")
        ax.hist([t[key] for t in chosen], bins=bins, alpha=0.6, label=f"selected ({len(chosen)})")
        ax.set_title(title)
        ax.set_xlabel("reward")
    axes[0].set_ylabel("trajectories")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _all_trajectories(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            if obj.get("kind") == "patient":
                out.extend(obj["trajectories"])
    return out
