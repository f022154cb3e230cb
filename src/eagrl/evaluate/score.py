"""Score one model on one split and summarise its predictions with bootstrap intervals.

Every scorer returns the same table, one row per stay in split order: ``stay_id`` (str), ``label``,
``probability``, and for LLMs ``well_formed``, ``features`` (the parsed C_llm) and ``r_att`` (Jaccard with the
expert's C_exp of that stay; 0 for a malformed response, as in the reward) and ``copied`` (whether the final
answer copies a number the response wrote earlier: :mod:`eagrl.evaluate.diagnostics`). With ``evaluate.samples``
K > 1 the probability is the mean over a stay's K sampled responses, ``well_formed`` the share of them that were,
``r_att`` and ``copied`` their means. :func:`summarise` turns it into
AUROC, AUPRC, F1, Brier and ECE, the well-formed rate and the mean R_att, each with its interval; every model
scored on the same stays with the same seed sees the same resamples, so paired comparisons line up.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl.config.evaluate import EvaluateConfig
from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.evaluate.diagnostics import copied_per_stay
from eagrl.llm.rewards import r_att
from eagrl.metrics import METRICS, evaluate_binary, evaluate_means, max_f1_threshold

STYLES_WITH_FEATURES = ("pqd",)  # vanilla and think responses name no features: R_att does not apply


def restricted(cohort: Cohort, split: str, ids: list[str]) -> Cohort:
    """The cohort with ``split`` cut down to ``ids`` (other splits kept: the noise scale reads train)."""
    import dataclasses

    sid = cohort.stays["stay_id"].astype(str)
    keep = (cohort.stays["split"] != split) | sid.isin(set(ids))
    return dataclasses.replace(cohort, stays=cohort.stays[keep.to_numpy()].reset_index(drop=True))


def read_c_exp(path: str | Path) -> dict[str, list[str]] | None:
    """stay_id -> C_exp from the expert's attention table; None when there is no table."""
    from eagrl.expert.attention import read_attention

    if not Path(path).is_file():
        return None
    table = read_attention(path)
    return {str(s): list(c) for s, c in zip(table["stay_id"], table["c_exp"])}


def score_llm(cohort: Cohort, out_dir: str | Path, model_cfg: ModelConfig, gen_cfg: GenerationConfig, *,
              split: str, max_stays: int | None, c_exp: Mapping[str, list[str]] | None, backend=None,
              seed: int = 0, samples: int = 1) -> pd.DataFrame:
    """Generate ``samples`` responses per stay (the zero-shot routine, any policy) and read back its predictions."""
    from eagrl.scoring.policy import evaluate_zero_shot

    out = Path(out_dir)
    evaluate_zero_shot(cohort, out, model_cfg, gen_cfg, split=split, max_stays=max_stays, n_boot=0, seed=seed,
                       backend=backend, samples=samples)
    return read_scored(out, gen_cfg, c_exp, cohort.dataset)


def read_scored(out: Path, gen_cfg: GenerationConfig, c_exp: Mapping[str, list[str]] | None,
                dataset: str) -> pd.DataFrame:
    """The scorer's ``predictions.csv`` in ``out`` as the evaluation's table (with R_att), also as parquet.

    Where the stays got several responses (``samples.csv`` beside it), ``well_formed`` is the share of a stay's
    responses that were and ``r_att`` their mean, each response counted as the reward counts it. ``copied``, the
    share of a stay's responses (``responses.jsonl``) whose answer copies an earlier number, is left out where
    there is no responses file."""
    from eagrl.scoring.policy import SAMPLES

    pred = _read_responses(out / "predictions.csv")
    each = _read_responses(out / SAMPLES) if (out / SAMPLES).is_file() else None
    if c_exp is not None and gen_cfg.prompt_style in STYLES_WITH_FEATURES:
        missing = [s for s in pred["stay_id"] if s not in c_exp]
        if missing:
            raise DataError(f"the expert attention table has no C_exp for stays {missing[:5]} of {dataset}; "
                            "export it for this cohort (eagrl expert export-attention)")
        table = pred if each is None else each  # several responses: R_att of each, averaged below
        table["r_att"] = [r_att(f, c_exp[s]) if ok else 0.0
                          for s, f, ok in zip(table["stay_id"], table["features"], table["well_formed"])]
    if each is not None:
        by_stay = each.groupby("stay_id", sort=False)
        if set(by_stay.groups) != set(pred["stay_id"]):
            raise DataError(f"{out / SAMPLES} and {out / 'predictions.csv'} name different stays")
        pred["well_formed"] = pred["stay_id"].map(by_stay["well_formed"].mean())
        pred["probability_sd"] = pred["stay_id"].map(by_stay["probability"].std(ddof=0))
        if "r_att" in each:
            pred["r_att"] = pred["stay_id"].map(by_stay["r_att"].mean())
    copied = copied_per_stay(out / "responses.jsonl", list(pred["stay_id"]))
    if copied is not None:
        pred["copied"] = copied.to_numpy()
    pred = pred[[c for c in ("stay_id", "label", "probability", "well_formed", "features", "r_att", "probability_sd",
                             "copied") if c in pred]]
    pred.to_parquet(out / "predictions.parquet", index=False)
    return pred


def _read_responses(path: Path) -> pd.DataFrame:
    """A scorer's csv (one row per stay, or per response) with ``well_formed`` as bool and ``features`` as lists."""
    table = pd.read_csv(path, dtype={"stay_id": str}, keep_default_na=False, na_values={"probability": ["", "nan"]})
    table["well_formed"] = table["well_formed"].astype(str).str.lower().eq("true")
    table["features"] = [[f for f in str(v).split("; ") if f] for v in table["features"]]
    return table


def score_expert(model, features: list[str], cohort: Cohort, ids: list[str], out_dir: str | Path) -> pd.DataFrame:
    """The ConCare expert's probability for each of ``ids``."""
    from eagrl.expert.train import predict

    if features and features != cohort.feature_names:
        diff = sorted(set(features) ^ set(cohort.feature_names))[:5]
        raise DataError(f"the expert was trained on other features than the {cohort.dataset} cohort (e.g. {diff})")
    arrays = cohort.tensors(None)
    probs, _ = predict(model, arrays)
    by_id = dict(zip((str(s) for s in arrays["stay_ids"]), probs.astype(np.float64)))
    labels = dict(zip((str(s) for s in arrays["stay_ids"]), arrays["y"].astype(int)))
    pred = pd.DataFrame({"stay_id": ids, "label": [labels[s] for s in ids],
                         "probability": [float(by_id[s]) for s in ids]})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred.to_parquet(out / "predictions.parquet", index=False)
    return pred


def summarise(pred: pd.DataFrame, ecfg: EvaluateConfig, prefix: str = "",
              metrics: tuple[str, ...] = METRICS) -> dict[str, float | list[float]]:
    """Binary metrics of the probabilities and, for LLMs, the well-formed rate and mean R_att, with intervals."""
    y = pred["label"].to_numpy(dtype=np.float64)
    p = pred["probability"].to_numpy(dtype=np.float64)
    out = evaluate_binary(y, p, prefix=prefix, metrics=metrics, n_boot=ecfg.n_boot, ci=ecfg.ci, seed=ecfg.seed,
                          threshold=ecfg.threshold, n_bins=ecfg.n_bins)
    per_stay = {}
    if "well_formed" in pred:
        per_stay["well_formed_rate"] = pred["well_formed"].to_numpy(dtype=np.float64)
    if "r_att" in pred:
        per_stay["r_att_mean"] = pred["r_att"].to_numpy(dtype=np.float64)
    out.update(evaluate_means(per_stay, prefix=prefix, n_boot=ecfg.n_boot, ci=ecfg.ci, seed=ecfg.seed))
    if "probability_sd" in pred:  # several responses a stay: how far one moves against how far the stays differ
        out[f"{prefix}probability_sd_within"] = float(pred["probability_sd"].mean())
        out[f"{prefix}probability_sd_between"] = float(p.std())
    return out


def tuned_f1(pred: pd.DataFrame, val: pd.DataFrame, ecfg: EvaluateConfig) -> dict[str, float | list[float]]:
    """F1 on ``pred`` at the threshold that maximises F1 on ``val`` (the model's own operating point, picked
    without the scored labels): ``f1_tuned`` with its interval, ``threshold_tuned``, ``f1_tuned_val`` (F1 on val
    at it) and ``n_tune``; no ``f1_tuned`` when val has no positive stay (no threshold gives F1 > 0 there)."""
    t, f1_val = max_f1_threshold(val["label"].to_numpy(dtype=np.float64),
                                 val["probability"].to_numpy(dtype=np.float64))
    out: dict[str, float | list[float]] = {"threshold_tuned": t, "f1_tuned_val": f1_val, "n_tune": len(val)}
    if np.isfinite(t):
        res = evaluate_binary(pred["label"].to_numpy(dtype=np.float64), pred["probability"].to_numpy(dtype=np.float64),
                              metrics=("f1",), n_boot=ecfg.n_boot, ci=ecfg.ci, seed=ecfg.seed, threshold=t)
        out["f1_tuned"] = res["f1"]
        if "f1_ci" in res:  # n_boot 0: no interval
            out["f1_tuned_ci"] = res["f1_ci"]
    return out


def aligned(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities of a, of b) over the same stays in the same order; raises when they differ."""
    if list(a["stay_id"]) != list(b["stay_id"]):
        raise DataError("paired comparison needs both models scored on the same stays in the same order")
    return (a["label"].to_numpy(dtype=np.float64), a["probability"].to_numpy(dtype=np.float64),
            b["probability"].to_numpy(dtype=np.float64))
