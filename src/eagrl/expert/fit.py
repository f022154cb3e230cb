"""The expert stage: train ConCare on a cohort, evaluate it on test, export its attention.

``train_expert(cohort, cfg, out_dir)`` writes to ``out_dir``:

* ``model.pt``: ``{"state_dict", "config", "feature_names", "demo_dim", "dataset", "task"}`` (the
  resolved config travels inside the checkpoint); ``config.json``: the same config on its own;
* ``metrics.json``: flat numbers and [low, high] intervals (``test_auroc``, ``test_auroc_ci``, ...), with the
  guidance figures over all stays (``attention_entropy_median``/``_p25``/``_p75``, ``c_exp_attention_mass_mean``,
  ``c_exp_size_mean``, ``c_exp_reference_share``, ``c_exp_reference_jaccard``);
* ``attention.parquet``: per stay, C_exp and the score it ranks, over the features (see ``attention.py``);
* ``predictions.parquet``: per stay, split, label and the expert's probability (for paired comparisons), the
  final attention's entropy, C_exp's size and the attention mass it holds (and, where the dataset has
  ``expert.reference_features``, whether C_exp holds one and its Jaccard with them);
* ``history.json``: one record per epoch.

The CLI command, the KFP component and the tests all call this function; MLflow logging happens in the
caller from the returned :class:`ExpertResult` (``scalar_metrics()`` for ``log_metrics``,
``history`` for per-epoch steps, the paths for artifacts).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from eagrl.config.expert import ExpertConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import ConfigError, DataError
from eagrl.expert.attention import export_attention, guidance_stats, importance
from eagrl.expert.model import ConCare
from eagrl.expert.train import fit, predict, seed_everything
from eagrl.metrics import auprc, auroc, evaluate_binary, scalar_metrics


@dataclass
class ExpertResult:
    model_path: Path
    config_path: Path
    metrics_path: Path
    attention_path: Path
    predictions_path: Path
    metrics: dict[str, float | list[float]]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0

    def scalar_metrics(self) -> dict[str, float]:
        """Intervals split into ``*_ci_low``/``*_ci_high``: ready for ``mlflow.log_metrics``."""
        return scalar_metrics(self.metrics)


def build_model(n_features: int, demo_dim: int, cfg: ExpertConfig) -> ConCare:
    seed_everything(cfg.seed)
    return ConCare(n_features, demo_dim, cfg)


def _check_inputs(cohort: Cohort, cfg: ExpertConfig, train: dict, val: dict, test: dict) -> None:
    n_feat = len(cohort.feature_names)
    if cfg.top_k > n_feat:
        raise ConfigError(f"expert.top_k={cfg.top_k} exceeds the {n_feat} features of the {cohort.dataset} cohort")
    for name, part in (("train", train), ("test", test)):
        labels = set(np.unique(part["y"]).tolist())
        if labels != {0.0, 1.0}:
            raise DataError(
                f"the {name} split of {cohort.dataset}/{cohort.task} has {len(part['y'])} stays with labels "
                f"{sorted(labels)}; the expert needs both classes (enlarge data.max_stays or change data.split)"
            )
    if len(val["y"]) == 0:
        raise DataError(f"the {cohort.dataset} cohort has no validation stays; early stopping needs data.split[1] > 0")


def train_expert(cohort: Cohort, cfg: ExpertConfig, out_dir: Path) -> ExpertResult:
    """Train, select on validation AUPRC, evaluate on test with bootstrap intervals, export attention."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, test = (cohort.tensors(s) for s in ("train", "val", "test"))
    _check_inputs(cohort, cfg, train, val, test)

    model = build_model(len(cohort.feature_names), train["demo"].shape[1], cfg)
    result = fit(model, train, val, cfg)
    model = result.model.cpu()

    p_test, _ = predict(model, test)
    metrics: dict[str, float | list[float]] = evaluate_binary(
        test["y"], p_test, prefix="test_", metrics=("auroc", "auprc", "f1", "brier", "ece"),
        n_boot=cfg.n_boot, seed=cfg.seed, threshold=cfg.threshold,
    )
    p_val, _ = predict(model, val)
    metrics.update(val_auroc=auroc(val["y"], p_val), val_auprc=auprc(val["y"], p_val))
    metrics.update(best_epoch=result.best_epoch, epochs=len(result.history), train_seconds=result.seconds)

    everyone = cohort.tensors(None)
    p_all, attention = predict(model, everyone)
    attention, scores = importance(model, cohort, everyone, cfg, attention)
    attention_path = out / "attention.parquet"
    table = export_attention(model, cohort, cfg, attention_path, scores=scores)
    per_stay, guidance = guidance_stats(table, attention, cohort.feature_names,
                                        cfg.reference_features.get(cohort.dataset))
    metrics.update(guidance)

    predictions_path = out / "predictions.parquet"
    split_of = cohort.stays.set_index("stay_id")["split"]
    pd.DataFrame({
        "stay_id": [str(s) for s in everyone["stay_ids"]],
        "split": split_of.loc[everyone["stay_ids"]].to_numpy(),
        "label": everyone["y"].astype(int),
        "prob": p_all.astype(np.float64),
        **{c: per_stay[c].to_numpy() for c in per_stay.columns if c != "stay_id"},
    }).to_parquet(predictions_path, index=False)

    model_path, config_path = out / "model.pt", out / "config.json"
    torch.save({
        "state_dict": model.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "feature_names": cohort.feature_names,
        "demo_dim": int(train["demo"].shape[1]),
        "dataset": cohort.dataset,
        "task": cohort.task,
    }, model_path)
    config_path.write_text(cfg.model_dump_json(indent=1))
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=1))
    (out / "history.json").write_text(json.dumps(result.history, indent=1))
    return ExpertResult(
        model_path=model_path, config_path=config_path, metrics_path=metrics_path,
        attention_path=attention_path, predictions_path=predictions_path,
        metrics=metrics, history=result.history, best_epoch=result.best_epoch,
    )


def load_expert(path: str | Path) -> tuple[ConCare, ExpertConfig, list[str]]:
    """Rebuild a trained expert from ``model.pt`` (or the folder holding it), in eval mode on the CPU."""
    p = Path(path)
    p = p / "model.pt" if p.is_dir() else p
    if not p.is_file():
        raise DataError(f"no expert checkpoint at {p} (run `eagrl expert train` first)")
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    cfg = ExpertConfig.model_validate(ckpt["config"])
    model = ConCare(len(ckpt["feature_names"]), ckpt["demo_dim"], cfg)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), cfg, list(ckpt["feature_names"])
