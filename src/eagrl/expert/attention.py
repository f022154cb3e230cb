"""Expert attention per stay: the final-attention weights over the features, and C_exp = the top-k.

The table has one row per stay: ``stay_id``, ``c_exp`` (list of feature names, highest weight first) and
one float column per feature, named exactly as ``Cohort.feature_names`` and in that order; the weight
columns of a row sum to 1. The rewards (R_att) and the MCTS read C_exp from it by stay id.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.expert.config import ExpertConfig
from eagrl.expert.model import ConCare
from eagrl.expert.train import predict


def observed_features(cohort: Cohort, split: str | None = None) -> np.ndarray:
    """(B, F) bool: feature f was measured at least once in stay b (before imputation)."""
    raw = cohort.tensors(split, normalized=False)
    seen = ~np.isnan(raw["x"]) & raw["mask"][:, :, None]  # (B, T, F)
    return seen.any(axis=1)


def top_k(weights: np.ndarray, feature_names: list[str], k: int, allowed: np.ndarray | None = None) -> list[list[str]]:
    """Per row, the names of the k largest weights (ties: cohort order); only ``allowed`` ones if given."""
    w = np.where(allowed, weights, -np.inf) if allowed is not None else weights  # (B, F)
    order = np.argsort(-w, axis=1, kind="stable")[:, :k]  # (B, k)
    names = np.asarray(feature_names, dtype=object)
    return [[names[j] for j in row if np.isfinite(w[i, j])] for i, row in enumerate(order)]


def attention_table(
    stay_ids, weights: np.ndarray, feature_names: list[str], k: int, allowed: np.ndarray | None = None
) -> pd.DataFrame:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(stay_ids), len(feature_names)):
        raise DataError(f"attention weights have shape {weights.shape}, expected ({len(stay_ids)}, {len(feature_names)})")
    if len(set(feature_names)) != len(feature_names) or {"stay_id", "c_exp"} & set(feature_names):
        raise DataError("feature names must be unique and must not be 'stay_id' or 'c_exp'")
    table = pd.DataFrame(weights, columns=list(feature_names))
    table.insert(0, "c_exp", top_k(weights, feature_names, k, allowed))
    table.insert(0, "stay_id", [str(s) for s in stay_ids])
    return table


def export_attention(model: ConCare, cohort: Cohort, cfg: ExpertConfig, path: str | Path) -> pd.DataFrame:
    """Attention of every stay of the cohort (all splits), written to ``path`` as parquet."""
    arrays = cohort.tensors(None)
    _, weights = predict(model, arrays, batch_size=max(cfg.batch_size, 256))
    allowed = observed_features(cohort) if cfg.c_exp_observed_only else None
    table = attention_table(arrays["stay_ids"], weights, cohort.feature_names, cfg.top_k, allowed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return table


def read_attention(path: str | Path) -> pd.DataFrame:
    """The exported table, with ``c_exp`` as Python lists of names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no expert attention table at {path} (train the expert first)")
    table = pd.read_parquet(path)
    table["c_exp"] = [list(v) for v in table["c_exp"]]
    return table
