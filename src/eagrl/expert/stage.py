"""The expert as a pipeline stage: train on the versioned cohort, track, register, version C_exp.

``expert_stage(cfg, out_dir)`` is what ``eagrl expert train``, the KFP component and the tests call. Around
the library function :func:`eagrl.expert.fit.train_expert` it adds: the MLflow run (config, per-epoch
curves, test metrics with intervals, the attention table, the model registered as
``eagrl-expert-<dataset>-<task>`` with the cohort version it was trained on) and the DVC-versioned copy of the
attention table at ``<workspace>/data/expert/<dataset>-<task>/attention.parquet`` for the MCTS stage.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from eagrl.config import Config
from eagrl.data.cohort import Cohort
from eagrl.stage import StageResult, stage_contract, stage_dir
from eagrl.tracking.dvc_store import DataStore, tree_md5
from eagrl.tracking.mlflow_run import log_metrics, stage_run
from eagrl.workspace import Workspace, workspace_inputs


@stage_contract("expert", ("data", "expert"), resolve=workspace_inputs)
def expert_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
                 cohort_path: str | Path | None = None) -> StageResult:
    """Train + evaluate + export ConCare on the prepared cohort (``eagrl data prepare`` first)."""
    import mlflow

    from eagrl.expert.fit import train_expert

    out = stage_dir(out_dir, "expert")
    source = Path(cohort_path)
    cohort = Cohort.load(source)
    with stage_run(cfg, "expert", parent_run_id) as run:
        mlflow.set_tag("eagrl.cohort_md5", tree_md5(source))
        result = train_expert(cohort, cfg.expert, out)
        for record in result.history:  # per-epoch curves
            epoch = int(record.get("epoch", 0))
            mlflow.log_metrics({f"epoch_{k}": float(v) for k, v in record.items()
                                if k != "epoch" and isinstance(v, (int, float))}, step=epoch)
        log_metrics(result.metrics)
        for path in (result.attention_path, result.predictions_path, result.config_path, out / "history.json"):
            mlflow.log_artifact(str(path))
        _log_and_register(cfg, result.model_path, result.metrics)

        dest = Workspace.of(cfg).expert_dir
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(result.attention_path, dest / "attention.parquet")
        shutil.copy2(result.model_path, dest / "model.pt")
        versions = {"expert_md5": tree_md5(dest)}
        if cfg.tracking.dvc:
            versions.update(DataStore(cfg.workspace, cfg.tracking.dvc_remote).commit())
        mlflow.set_tags({f"eagrl.{k}": v for k, v in versions.items()})
        m = result.metrics
        message = (f"ConCare test AUROC {m['test_auroc']:.3f} {_ci(m.get('test_auroc_ci'))}, "
                   f"AUPRC {m['test_auprc']:.3f} {_ci(m.get('test_auprc_ci'))}; {_guidance(m)}; "
                   f"C_exp -> {dest / 'attention.parquet'}")
        stage = StageResult("expert", metrics=result.metrics, mlflow_run_id=run.info.run_id, message=message,
                            outputs={"attention": str(dest / "attention.parquet"), "model": str(dest / "model.pt"),
                                     "registered_model": Workspace.of(cfg).registered_name("expert"), **versions})
    stage.write(out_dir)
    return stage


# What a re-export takes from the config rather than from the checkpoint: how C_exp is chosen.
EXPORT_KEYS = ("top_k", "c_exp_score", "c_exp_blend", "c_exp_mass", "occlusion_quantiles", "c_exp_observed_only")

# The figures each registered version carries as tags, beside its run's metrics: how well it predicts and
# what its C_exp holds (issue 28: the share of stays whose C_exp names a reference feature, per version).
VERSION_TAGS = ("test_auroc", "test_auprc", "c_exp_reference_share", "c_exp_reference_jaccard", "c_exp_size_mean",
                "c_exp_attention_mass_mean", "attention_entropy_median")


def _log_and_register(cfg: Config, model_path: Path, metrics: dict | None = None) -> None:
    """Log the trained ConCare as an MLflow PyTorch model, register a new version of it and tag the version
    with :data:`VERSION_TAGS` and the C_exp rule it was exported with."""
    import mlflow

    from eagrl.expert.fit import load_expert

    name = Workspace.of(cfg).registered_name("expert")
    model, ecfg, features = load_expert(model_path)
    info = mlflow.pytorch.log_model(model, name="expert", registered_model_name=name,
                                    pip_requirements=[], metadata={"feature_names": features},
                                    serialization_format="pickle")  # pt2 would need a traced example input
    version = getattr(info, "registered_model_version", None)
    if version is None:
        return
    tags = {k: f"{metrics[k]:.4f}" for k in VERSION_TAGS if isinstance((metrics or {}).get(k), (int, float))}
    tags["c_exp_rule"] = f"{ecfg.c_exp_score} mass={ecfg.c_exp_mass} k<={ecfg.top_k}"
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)


def _guidance(m: dict) -> str:
    """One phrase: how spread the final attention is and what C_exp holds."""
    text = (f"final attention entropy median {m['attention_entropy_median']:.2f} nats "
            f"(p25 {m['attention_entropy_p25']:.2f}, p75 {m['attention_entropy_p75']:.2f}) of "
            f"{m['attention_entropy_uniform']:.2f} uniform; C_exp mean size {m['c_exp_size_mean']:.1f}, "
            f"attention mass {m['c_exp_attention_mass_mean']:.2f}")
    if "c_exp_reference_share" in m:
        text += f", holds a reference feature in {m['c_exp_reference_share']:.0%} of stays"
    return text


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _trained_inputs(cfg: Config, out_dir, given: dict) -> dict:
    """The trained expert to read: the given checkpoint, else the workspace's."""
    return {"model_path": Path(given["model_path"] or Workspace.of(cfg).expert_dir / "model.pt")}


def _cohort_input(cfg: Config, given: dict) -> list:
    return [Workspace.of(cfg).cohort_dir]


def _check_features(cohort: Cohort, features: list[str], where: Path) -> None:
    from eagrl.errors import DataError

    if features != cohort.feature_names:
        missing = sorted(set(features) ^ set(cohort.feature_names))[:5]
        raise DataError(f"the expert at {where} was trained on other features than the {cohort.dataset} cohort "
                        f"(e.g. {missing}); train it on this cohort first")


@stage_contract("expert-evaluate", inputs=_cohort_input, resolve=_trained_inputs)
def evaluate_expert_stage(cfg: Config, out_dir: str | Path, model_path: str | Path | None = None,
                          split: str = "test") -> StageResult:
    """Score a trained expert on one split of the prepared cohort, with bootstrap intervals."""
    from eagrl.expert.fit import load_expert
    from eagrl.expert.train import predict
    from eagrl.metrics import evaluate_binary

    out = stage_dir(out_dir, "expert-evaluate")
    cohort = Cohort.load(Workspace.of(cfg).cohort_dir)
    model, ecfg, features = load_expert(model_path)
    _check_features(cohort, features, Path(model_path))
    arrays = cohort.tensors(split)
    probs, _ = predict(model, arrays)
    metrics = evaluate_binary(arrays["y"], probs, prefix=f"{split}_", n_boot=ecfg.n_boot, seed=ecfg.seed,
                              threshold=ecfg.threshold)
    a, ci = metrics[f"{split}_auroc"], metrics[f"{split}_auroc_ci"]
    import mlflow
    import pandas as pd

    pd.DataFrame({"stay_id": arrays["stay_ids"], "label": arrays["y"], "prob": probs}).to_csv(
        out / "predictions.csv", index=False)
    with stage_run(cfg, "expert-evaluate") as run:
        log_metrics(metrics)
        mlflow.log_artifact(str(out / "predictions.csv"))
    result = StageResult("expert-evaluate", metrics=metrics, outputs={"predictions": str(out / "predictions.csv")},
                         mlflow_run_id=run.info.run_id,
                         message=f"expert on {cohort.dataset} {split}: AUROC {a:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    result.write(out_dir)
    return result


@stage_contract("expert-attention", inputs=_cohort_input, resolve=_trained_inputs)
def export_attention_stage(cfg: Config, out_dir: str | Path, model_path: str | Path | None = None) -> StageResult:
    """Write every stay's score and C_exp from a trained expert, by this config's C_exp rule (``EXPORT_KEYS``)."""
    from eagrl.expert.attention import export_attention
    from eagrl.expert.fit import load_expert

    out = stage_dir(out_dir, "expert-attention")
    cohort = Cohort.load(Workspace.of(cfg).cohort_dir)
    model, ecfg, features = load_expert(model_path)
    _check_features(cohort, features, Path(model_path))
    ecfg = ecfg.model_copy(update={k: getattr(cfg.expert, k) for k in EXPORT_KEYS})
    table = export_attention(model, cohort, ecfg, out / "attention.parquet")
    import mlflow

    with stage_run(cfg, "expert-attention") as run:
        mlflow.log_artifact(str(out / "attention.parquet"))
    result = StageResult("expert-attention", metrics={"n_stays": len(table), "top_k": ecfg.top_k},
                         mlflow_run_id=run.info.run_id,
                         outputs={"attention": str(out / "attention.parquet")},
                         message=f"C_exp ({ecfg.c_exp_score}, mass {ecfg.c_exp_mass}, k<={ecfg.top_k}) of {len(table)} "
                                  f"stays -> {out / 'attention.parquet'}")
    result.write(out_dir)
    return result
