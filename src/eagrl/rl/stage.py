"""Stage 2 as a pipeline stage: GRPO from the Stage-1 policy, scored on held-out stays, plotted, registered.

``rl_stage(cfg, out_dir)`` is what ``eagrl rl``, the KFP component and the tests call. Around
:func:`eagrl.rl.train.run_rl` it adds: the Stage-1 adapter (the SFT stage's in ``out_dir``, else the latest
registered ``eagrl-sft-<dataset>-<task>``), the expert's C_exp, the MLflow run (every step's reward parts,
entropy, eps(tau) distribution, clip fractions, KL and response length, logged while training; the curves
and the eps(tau) histogram as plots afterwards), a held-out P_QD check of the trained policy (the same
generation the zero-shot and SFT stages score with) and the adapter registered as
``eagrl-<variant>-<dataset>-<task>`` (``eagrl-eag-rl-tjh-mortality``, ``eagrl-grpo-...``), the names the
evaluation table looks up.

Training state lives in ``DIR/rl/<variant>-<key>/`` with ``key`` a digest of everything that changes the
run (the model's weights, the generation and RL settings that change what is trained, the start adapter, the
cohort, C_exp): an interrupted run with the same settings resumes from its last checkpoint, and other settings
or variants never resume from it. Throughput, logging, checkpointing and held-out settings are left out, so a
rerun with more threads or another held-out cap still resumes; each held-out setting writes its own
``heldout-<split>-<cap>-seed<seed>/`` there.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from eagrl.config import Config
from eagrl.config.rl import RLConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.stage import StageResult, stage_contract, stage_dir
from eagrl.tracking.dvc_store import tree_md5
from eagrl.tracking.mlflow_run import log_metrics, stage_run
from eagrl.workspace import Workspace, model_config, workspace_inputs

SECTIONS = ("data", "expert", "model", "generation", "reward", "mcts", "sft", "rl")


def default_sft_adapter(cfg: Config, out_dir: str | Path) -> str | None:
    """The SFT stage's adapter in ``out_dir``, else the newest registered SFT version (None: neither exists)."""
    result = StageResult.read(out_dir, "sft")
    if result is not None and result.status == "succeeded" and Path(result.outputs.get("adapter", "")).is_dir():
        return result.outputs["adapter"]
    import mlflow

    sft = Workspace.of(cfg).registered_name("sft")
    try:
        versions = mlflow.MlflowClient(cfg.tracking.mlflow_tracking_uri).search_model_versions(f"name='{sft}'")
    except Exception:  # no registry, no such model: the caller says what is missing
        return None
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    return f"models:/{sft}/{newest.version}"


def _inputs(cfg: Config, out_dir, given: dict) -> dict:
    """The workspace's cohort and C_exp, and the start adapter: the SFT stage's in ``out_dir``, else the newest
    registered SFT version (for the variants that start from Stage 1), so a retrained SFT policy is a new input."""
    paths = workspace_inputs(cfg, out_dir, given)
    adapter = given["adapter_path"] or (default_sft_adapter(cfg, out_dir) if cfg.rl.from_sft else None)
    return {**paths, "adapter_path": adapter}


@stage_contract("rl", SECTIONS, resolve=_inputs)
def rl_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
             cohort_path: str | Path | None = None, attention_path: str | Path | None = None,
             adapter_path: str | Path | None = None) -> StageResult:
    """Train ``cfg.rl.variant`` from the Stage-1 adapter, score it on held-out stays, log and register it."""
    import mlflow

    from eagrl.expert.attention import read_attention
    from eagrl.llm.registry import log_policy
    from eagrl.mcts.cohort_search import c_exp_lookup
    from eagrl.rl.train import run_rl
    from eagrl.scoring.keys import tag_heldout
    from eagrl.scoring.policy import evaluate_trained

    out = stage_dir(out_dir, "rl")
    source, attention = Path(cohort_path), Path(attention_path)
    cohort = Cohort.load(source)
    table = read_attention(attention)
    c_exp = c_exp_lookup(table, [str(s) for s in cohort.split_ids(cfg.rl.split)])
    adapter = str(adapter_path) if adapter_path else None
    if cfg.rl.from_sft and adapter is None:
        raise DataError(f"rl.variant={cfg.rl.variant!r} starts from the SFT policy, but there is no SFT adapter in "
                        f"{out_dir} nor a registered one: run `eagrl sft` first or pass --adapter")
    mcfg = model_config(cfg)
    registered = Workspace.of(cfg).registered_name(cfg.rl.variant)
    cohort_md5 = tree_md5(source)
    # every output of this variant and these settings goes in its own folder: another variant trained into the same
    # out_dir keeps its held-out files and plots
    train_dir = out / f"{cfg.rl.variant}-{_run_key(cfg, cohort_md5, attention, adapter)}"

    with stage_run(cfg, "rl", parent_run_id) as run:
        mlflow.set_tags({"eagrl.cohort_md5": cohort_md5, "eagrl.rl_variant": cfg.rl.variant,
                         "eagrl.start_adapter": adapter or "none (fresh adapter on the base model)"})
        res = run_rl(mcfg, cfg.generation, cfg.rl, cohort, c_exp, train_dir, sft_adapter=adapter,
                     lora_cfg=cfg.sft.lora_model_config(mcfg), cls_reward=cfg.reward)
        plots = [training_curves(res.history, cfg.rl.variant, train_dir / "curves.png"),
                 eps_histogram(res.eps_values, cfg.rl, train_dir / "eps_distribution.png")]

        heldout = train_dir / heldout_folder(cfg)
        held = evaluate_trained(res.model, res.tokenizer, cohort, heldout, mcfg, cfg.generation,
                                split=cfg.rl.eval_split, max_stays=cfg.rl.eval_max_stays,
                                n_boot=cfg.rl.eval_n_boot, seed=cfg.evaluate.seed,
                                fit_max_stays=cfg.rl.fit_max_stays)
        metrics = {**res.metrics, **held,
                   "train_epochs": cfg.rl.epochs_done(res.metrics["train_steps"], res.metrics["n_rl_stays"])}
        log_metrics(metrics)
        for path in (*plots, train_dir / "train_history.json"):
            mlflow.log_artifact(str(path))
        mlflow.log_artifacts(str(heldout), artifact_path="heldout")
        tag_heldout(mcfg, res.adapter_dir, cfg.generation, cohort_md5, cfg.rl.eval_split)  # for the evaluation
        info = log_policy(res.adapter_dir, mcfg, cfg.generation, name="policy", registered_name=registered,
                          metadata={"stage": "rl", "variant": cfg.rl.variant, "dataset": cfg.data.dataset,
                                    "task": cfg.data.task, "start_adapter": adapter or "",
                                    "start_adapter_digest": start_digest(adapter, mcfg)})
        split = cfg.rl.eval_split
        auroc, ci = held.get(f"{split}_auroc"), held.get(f"{split}_auroc_ci")
        version = getattr(info, "registered_model_version", None)
        message = (f"RL ({cfg.rl.variant}) {res.metrics['train_steps']} steps ({metrics['train_epochs']:.3g} epochs "
                   f"over {res.metrics['n_rl_stays']} stays): {_reward_trend(res.metrics)}"
                   f"; {split} P_QD AUROC " + (f"{auroc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if auroc is not None else
                                              "undefined")
                   + f", well-formed {held.get(f'{split}_well_formed_rate', 0):.0%}"
                   + (f"; on its own training stays {held['train_auroc']:.3f}" if "train_auroc" in held else "")
                   + f"; registered {registered}"
                   + (f" v{version}" if version else ""))
        result = StageResult("rl", metrics=metrics, mlflow_run_id=run.info.run_id, message=message,
                             outputs={"adapter": str(res.adapter_dir), "heldout": str(heldout),
                                      "curves": str(plots[0]), "eps_plot": str(plots[1]),
                                      "registered_model": registered, "model_uri": str(info.model_uri),
                                      "model_version": str(version or "")})
    result.write(out_dir)
    return result


def start_digest(adapter: str | None, mcfg) -> str:
    """The digest of the adapter RL started from (:func:`eagrl.scoring.keys.adapter_digest`; a ``models:/`` start
    is read from the model cache), so the evaluation can tell which SFT policy an RL row grew from; "" without one."""
    from eagrl.llm.loading import mlflow_model_dir
    from eagrl.scoring.keys import adapter_digest

    if not adapter:
        return ""
    folder = mlflow_model_dir(adapter, mcfg.resolved_cache_dir()) if adapter.startswith("models:/") else adapter
    return adapter_digest(folder)


def _reward_trend(m: dict) -> str:
    """Mean reward of the first and the last half of the steps (each step samples other patients, so two single
    steps compare different patients: halves average that out)."""
    if "early_reward" in m:
        return (f"mean reward {m['early_reward']:.3f} over the first half of the steps -> "
                f"{m['late_reward']:.3f} over the last")
    return f"reward {m.get('last_reward', float('nan')):.3f}"


def heldout_folder(cfg: Config) -> str:
    """The held-out check's folder in the run's: one per split, cap and sample seed, so re-scoring a trained policy
    with another cap (not part of the run key) keeps the earlier check's files."""
    return f"heldout-{cfg.rl.eval_split}-{cfg.rl.eval_max_stays or 'all'}-seed{cfg.evaluate.seed}"


def _run_key(cfg: Config, cohort_md5: str, attention: Path, adapter: str | None) -> str:
    start = adapter or ""
    if adapter and Path(adapter).is_dir():
        from eagrl.scoring.keys import adapter_digest

        start = adapter_digest(adapter)  # its weights and config, not the SFT stage's notes (paths) beside them
    key = {"model": cfg.model.weights(),
           "generation": cfg.generation.content(),
           "rl": cfg.rl.model_dump(mode="json", exclude=set(RLConfig.NOT_TRAINING)),
           "reward": cfg.reward.model_dump(mode="json"),
           "cohort": cohort_md5, "c_exp": hashlib.md5(attention.read_bytes()).hexdigest(), "start": start}
    return hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ====================================================================== plots
def training_curves(history: list[dict], variant: str, out: Path) -> Path:
    """Reward (and its parts), entropy, eps(tau) and KL / clip fractions per optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(r["step"], r[key]) for r in history if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for key, label in (("reward", "R"), ("rewards/r_cls/mean", "R_cls"), ("rewards/r_att/mean", "R_att")):
        axes[0].plot(*series(key), marker="o", ms=3, label=label)
    axes[0].set_title("reward (mean over the batch)")
    for key, label in (("entropy", "all model tokens"), ("entropy/features_mean", "H(tau): feature tokens")):
        axes[1].plot(*series(key), marker="o", ms=3, label=label)
    axes[1].set_title("policy entropy")
    for key, label in (("eps/mean", "mean"), ("eps/min", "min"), ("eps/max", "max")):
        axes[2].plot(*series(key), marker="o", ms=3, label=label)
    axes[2].set_title("upper clip eps(tau)")
    axes[3].plot(*series("kl_to_start"), marker="o", ms=3, label="KL to start")
    axes[3].plot(*series("clip_ratio/region_mean"), marker="o", ms=3, label="clipped share")
    axes[3].set_title("KL and clipping")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.legend(fontsize=7)
    fig.suptitle(f"RL: {variant}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def eps_histogram(eps_values: list[float], rl_cfg, out: Path) -> Path:
    """The distribution of every eps(tau) used in training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    lo, hi = min(rl_cfg.eps_min, rl_cfg.fixed_epsilon_high), max(rl_cfg.eps_max, rl_cfg.fixed_epsilon_high)
    ax.hist(eps_values, bins=20, range=(lo - 1e-3, hi + 1e-3))
    ax.set_xlabel("eps(tau)")
    ax.set_ylabel("trajectories")
    ax.set_title(f"upper clip bounds ({len(eps_values)} trajectories)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
