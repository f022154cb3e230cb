"""Expert importance per stay: what C_exp is ranked by, and C_exp itself.

ConCare's final attention collapses onto one feature per stay (issue 28: median entropy 0.26 nats on the
planted-cause cohort, whose outcome two labs cause), so its top-k is one cause plus arbitrary noise. The
score C_exp ranks is therefore ``expert.c_exp_score``: the attention, the occlusion attribution (how much the
logit moves when a feature's whole series is set to each of a few train quantiles: what the trained expert
relies on, whatever the value), or their blend; and ``expert.c_exp_mass`` makes k adaptive (the smallest
set holding that share of the score, capped at ``top_k``). docs/results.md compares them.

The table has one row per stay: ``stay_id``, ``c_exp`` (list of feature names, highest score first) and
one float column per feature, named exactly as ``Cohort.feature_names`` and in that order: the score, a row
summing to 1. The rewards (R_att) and the MCTS read C_exp from it by stay id.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from eagrl.config.expert import ExpertConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.expert.model import ConCare, last_valid_index
from eagrl.expert.train import batches, predict, to_tensors

log = logging.getLogger(__name__)


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


def adaptive_k(scores: np.ndarray, feature_names: list[str], k: int, mass: float | None,
               allowed: np.ndarray | None = None) -> list[list[str]]:
    """Per row, the fewest highest-scored names whose scores hold ``mass`` of the row's (allowed) total, at
    most k and at least one; ``mass`` None: the top k (:func:`top_k`)."""
    if mass is None:
        return top_k(scores, feature_names, k, allowed)
    w = np.where(allowed, scores, 0.0) if allowed is not None else np.asarray(scores, dtype=np.float64)
    w = np.clip(w, 0.0, None)
    share = np.cumsum(-np.sort(-w, axis=1), axis=1) / np.maximum(w.sum(1, keepdims=True), 1e-12)  # (B, F)
    sizes = np.minimum((share < mass - 1e-9).sum(1) + 1, k)  # (B,) first position reaching the mass
    ranked = top_k(scores, feature_names, k, allowed)
    return [row[: int(n)] for row, n in zip(ranked, sizes)]


def entropy(weights: np.ndarray) -> np.ndarray:
    """(B, F) rows summing to 1 -> (B,) entropy in nats (ln F for a uniform row, 0 for one feature)."""
    w = np.asarray(weights, dtype=np.float64)
    return -(w * np.log(np.clip(w, 1e-30, None))).sum(1)


def mass_of(weights: np.ndarray, feature_names: list[str], c_exp: list[list[str]]) -> np.ndarray:
    """(B,) the share of each row's weight that its C_exp holds."""
    col = {n: j for j, n in enumerate(feature_names)}
    return np.array([float(weights[i, [col[n] for n in c]].sum()) for i, c in enumerate(c_exp)])


def jaccard_with(c_exp: list[list[str]], reference: list[str]) -> np.ndarray:
    ref = set(reference)
    return np.array([len(set(c) & ref) / len(set(c) | ref) if (c or ref) else 0.0 for c in c_exp])


def train_quantiles(cohort: Cohort, quantiles: list[float]) -> np.ndarray:
    """(Q, F) quantiles of each feature's model-input values over the train stays' visits."""
    tr = cohort.tensors("train")
    values = tr["x"][tr["mask"]]  # (visits, F)
    return np.quantile(values, quantiles, axis=0).astype(np.float32)


@torch.no_grad()
def occlusion(model: ConCare, arrays: dict, levels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(B, F) mean |logit change| when feature f's whole series is set to each of ``levels[:, f]`` (Q, F).

    What the trained expert relies on for a stay: a feature it ignores moves nothing at any level, one it
    uses moves the logit whatever the stay's own value. Rows sum to 1 (all zeros: uniform). A feature's
    token depends on its own series only (:meth:`ConCare.encode`), and a constant series gives the same GRU
    states in every stay, so each level's tokens come from one GRU pass and only the readout runs per feature.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    lv = torch.as_tensor(levels, device=device)  # (Q, F)
    n_q = lv.shape[0]
    for b in batches(to_tensors(arrays, device), batch_size):
        x, mask, demo = b["x"], b["mask"], b["demo"]
        n, t, f = x.shape
        last = last_valid_index(mask)[:, None]  # (n, 1)
        feats = model.encode(x, mask, last)[:, 0]  # (n, F, H)
        base = model.readout(feats, demo)[0]  # (n,)
        states = model.gru(lv[:, None, :].expand(n_q, t, f).contiguous())  # (Q, T, F, H): constant series
        at_level = torch.stack([model.time_attention(states[q:q + 1].expand(n, -1, -1, -1), mask, last)[:, 0]
                                for q in range(n_q)])  # (Q, n, F, H)
        demo_q = demo.repeat(n_q, 1)  # (Q*n, D)
        moved = torch.zeros(n, f, device=device)
        for j in range(f):
            tokens = feats.expand(n_q, -1, -1, -1).clone()  # (Q, n, F, H)
            tokens[:, :, j] = at_level[:, :, j]
            logit = model.readout(tokens.reshape(n_q * n, f, -1), demo_q)[0].view(n_q, n)
            moved[:, j] = (logit - base).abs().mean(0)
        out.append(moved.cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, model.n_features), np.float32)
    s = torch.cat(out).double().numpy()
    total = s.sum(1, keepdims=True)
    return np.where(total > 0, s / np.where(total > 0, total, 1.0), 1.0 / s.shape[1])


def importance(model: ConCare, cohort: Cohort, arrays: dict, cfg: ExpertConfig,
               attention: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(attention (B, F), score (B, F)): the final attention, and what C_exp ranks (``cfg.c_exp_score``)."""
    if attention is None:
        _, attention = predict(model, arrays, batch_size=max(cfg.batch_size, 256))
    attention = np.asarray(attention, dtype=np.float64)
    if cfg.c_exp_score == "attention" or (cfg.c_exp_score == "blend" and cfg.c_exp_blend == 0.0):
        return attention, attention
    occ = occlusion(model, arrays, train_quantiles(cohort, cfg.occlusion_quantiles), cfg.batch_size)
    if cfg.c_exp_score == "occlusion":
        return attention, occ
    return attention, (1 - cfg.c_exp_blend) * attention + cfg.c_exp_blend * occ


def attention_table(
    stay_ids, weights: np.ndarray, feature_names: list[str], k: int, allowed: np.ndarray | None = None,
    mass: float | None = None,
) -> pd.DataFrame:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(stay_ids), len(feature_names)):
        raise DataError(
            f"attention weights have shape {weights.shape}, expected ({len(stay_ids)}, {len(feature_names)})"
        )
    if len(set(feature_names)) != len(feature_names) or {"stay_id", "c_exp"} & set(feature_names):
        raise DataError("feature names must be unique and must not be 'stay_id' or 'c_exp'")
    table = pd.DataFrame(weights, columns=list(feature_names))
    table.insert(0, "c_exp", adaptive_k(weights, feature_names, k, mass, allowed))
    table.insert(0, "stay_id", [str(s) for s in stay_ids])
    return table


def export_attention(model: ConCare, cohort: Cohort, cfg: ExpertConfig, path: str | Path,
                     scores: np.ndarray | None = None) -> pd.DataFrame:
    """Score and C_exp of every stay of the cohort (all splits, cohort order), written to ``path`` as parquet;
    ``scores`` (B, F) when the caller already has them (:func:`importance`)."""
    arrays = cohort.tensors(None)
    if scores is None:
        _, scores = importance(model, cohort, arrays, cfg)
    allowed = observed_features(cohort) if cfg.c_exp_observed_only else None
    table = attention_table(arrays["stay_ids"], scores, cohort.feature_names, cfg.top_k, allowed, cfg.c_exp_mass)
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


def guidance_stats(table: pd.DataFrame, attention: np.ndarray, feature_names: list[str],
                   reference: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per stay (same rows as ``table``) and summarised: how spread the final attention is, and what C_exp holds.

    Per stay: ``attention_entropy`` (nats), ``c_exp_size``, ``c_exp_attention_mass`` (the attention share in C_exp),
    and, with ``reference`` features, ``c_exp_reference_hit`` (C_exp holds at least one) and
    ``c_exp_reference_jaccard``. Summary: the entropy's median, 25th and 75th percentiles, the means of the rest
    (``c_exp_reference_share`` is the share of stays with a hit).
    """
    c_exp = [list(c) for c in table["c_exp"]]
    per = pd.DataFrame({
        "stay_id": table["stay_id"].to_numpy(),
        "attention_entropy": entropy(attention),
        "c_exp_size": [len(c) for c in c_exp],
        "c_exp_attention_mass": mass_of(np.asarray(attention, dtype=np.float64), feature_names, c_exp),
    })
    ent = per["attention_entropy"].to_numpy()
    summary = {
        "attention_entropy_median": float(np.median(ent)),
        "attention_entropy_p25": float(np.percentile(ent, 25)),
        "attention_entropy_p75": float(np.percentile(ent, 75)),
        "attention_entropy_uniform": float(np.log(len(feature_names))),
        "c_exp_size_mean": float(per["c_exp_size"].mean()),
        "c_exp_attention_mass_mean": float(per["c_exp_attention_mass"].mean()),
    }
    ref = list(reference or [])
    missing = sorted(set(ref) - set(feature_names))
    if missing:  # another cohort under the same dataset name (a custom synthetic recipe): no such figure
        log.warning("expert.reference_features %s are not features of this cohort: no c_exp_reference_* figures",
                    missing)
    elif ref:
        per["c_exp_reference_hit"] = [bool(set(c) & set(ref)) for c in c_exp]
        per["c_exp_reference_jaccard"] = jaccard_with(c_exp, ref)
        summary["c_exp_reference_share"] = float(per["c_exp_reference_hit"].mean())
        summary["c_exp_reference_jaccard"] = float(per["c_exp_reference_jaccard"].mean())
    return per, summary
