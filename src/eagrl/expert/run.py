"""The expert as a pipeline stage: train on the versioned cohort, track, register, version C_exp.

``expert_stage(cfg, out_dir)`` is what ``eagrl expert train``, the KFP component and the tests call. Around
the library function :func:`eagrl.expert.stage.train_expert` it adds: the MLflow run (config, per-epoch
curves, test metrics with intervals, the attention table, the model registered as
``eagrl-expert-<dataset>-<task>`` with the cohort version it was trained on) and the DVC-versioned copy of the
attention table at ``<workspace>/data/expert/<dataset>-<task>/attention.parquet`` for the MCTS stage.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from eagrl.config import Config
from eagrl.data.cohort import Cohort
from eagrl.stage import StageResult, records_failure, stage_dir
from eagrl.tracking.dvc_store import DataStore, tree_md5
from eagrl.tracking.mlflow_run import log_metrics, stage_run


def registered_name(cfg: Config) -> str:
    return f"eagrl-expert-{cfg.data.dataset}-{cfg.data.task}"


def cohort_dir(cfg: Config) -> Path:
    return Path(cfg.workspace).resolve() / "data" / "cohorts" / f"{cfg.data.dataset}-{cfg.data.task}"


def expert_dir(cfg: Config) -> Path:
    return Path(cfg.workspace).resolve() / "data" / "expert" / f"{cfg.data.dataset}-{cfg.data.task}"


@records_failure("expert")
def expert_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
                 cohort_path: str | Path | None = None) -> StageResult:
    """Train + evaluate + export ConCare on the prepared cohort (``eagrl data prepare`` first)."""
    import mlflow

    from eagrl.expert.stage import train_expert

    out = stage_dir(out_dir, "expert")
    source = Path(cohort_path) if cohort_path else cohort_dir(cfg)
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
        _log_and_register(cfg, result.model_path)

        dest = expert_dir(cfg)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(result.attention_path, dest / "attention.parquet")
        shutil.copy2(result.model_path, dest / "model.pt")
        versions = {"expert_md5": tree_md5(dest)}
        if cfg.tracking.dvc:
            versions.update(DataStore(cfg.workspace, cfg.tracking.dvc_remote).commit())
        mlflow.set_tags({f"eagrl.{k}": v for k, v in versions.items()})
        m = result.metrics
        message = (f"ConCare test AUROC {m['test_auroc']:.3f} {_ci(m.get('test_auroc_ci'))}, "
                   f"AUPRC {m['test_auprc']:.3f} {_ci(m.get('test_auprc_ci'))}; C_exp -> {dest / 'attention.parquet'}")
        stage = StageResult("expert", metrics=result.metrics, mlflow_run_id=run.info.run_id, message=message,
                            outputs={"attention": str(dest / "attention.parquet"), "model": str(dest / "model.pt"),
                                     "registered_model": registered_name(cfg), **versions})
    stage.write(out_dir)
    return stage


def _log_and_register(cfg: Config, model_path: Path) -> None:
    """Log the trained ConCare as an MLflow PyTorch model and register a new version of it."""
    import mlflow

    from eagrl.expert.stage import load_expert

    model, _, features = load_expert(model_path)
    mlflow.pytorch.log_model(model, name="expert", registered_model_name=registered_name(cfg),
                             pip_requirements=[], metadata={"feature_names": features},
                             serialization_format="pickle")  # pt2 would need a traced example input


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
