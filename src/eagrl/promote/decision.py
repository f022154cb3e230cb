"""Register the trained policy and move the ``champion`` alias only when it beats the current champion.

``promote(name, version, predictions)`` is the pipeline's last step, for a version the RL stage registered
(``register_and_promote(run_id, artifact_path, ...)`` registers a run's model folder first):

1. the candidate's test predictions (``stay_id, label, probability``) are logged to its version's run as
   ``eagrl_eval/test_predictions.csv``, so any later candidate can be compared with it;
2. the registered model ``name`` gets the version (already there, or registered from the run);
3. the floor, which every candidate must clear, first or not (:func:`floor_check`): the lower bound of its
   test-AUROC bootstrap interval above ``min_auroc_low`` (0.5: it ranks patients better than chance on
   resampled test sets), and its paired AUROC difference against the zero-shot base model's predictions on
   the same stays (``baseline``) not below ``min_gain_over_baseline``. A candidate below it stays a registered
   version and the alias does not move, whether or not a champion exists;
4. the version holding the alias (``champion``) is looked up; with none, the candidate becomes champion;
5. otherwise both prediction files are aligned on ``stay_id`` and compared with a paired bootstrap of the
   test AUROC (:func:`eagrl.metrics.paired_bootstrap`); the alias moves only when the lower bound
   of the difference's interval is above ``min_improvement`` (the candidate is better on resampled test
   sets, not only on this one). Test sets sharing under ``min_overlap`` of their stays are not comparable:
   no promotion.

Why is recorded either way: tags ``eagrl.promotion.*`` on the new version (decision, reason, the floor's
numbers, both AUROCs, the difference, its interval, the p-value, the compared version) and the same numbers as
metrics/tags on the candidate's run. Nothing already registered is changed except the alias (and a
``replaced_by`` tag on the old champion).
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl.errors import DataError, EagrlError
from eagrl.metrics import auroc, evaluate_binary, paired_bootstrap

log = logging.getLogger(__name__)

PREDICTIONS = "eagrl_eval/test_predictions.csv"
COLUMNS = ("stay_id", "label", "probability")


@dataclass
class PromotionDecision:
    promoted: bool
    name: str
    version: str
    champion_version: str | None  # the version compared with (None: there was no champion)
    reason: str
    auroc: float
    champion_auroc: float | None = None
    comparison: dict = field(default_factory=dict)  # paired_bootstrap's output against the champion
    floor: dict = field(default_factory=dict)  # floor_check's output (empty: not checked)

    def to_dict(self) -> dict:
        return asdict(self)


def check_predictions(frame: pd.DataFrame, where: str = "predictions") -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; expected {list(COLUMNS)}")
    out = frame[list(COLUMNS)].copy()
    out["stay_id"] = out["stay_id"].astype(str)
    if out["stay_id"].duplicated().any():
        raise DataError(f"{where}: {int(out['stay_id'].duplicated().sum())} duplicated stay_id(s)")
    if not out["label"].isin([0, 1]).all():
        raise DataError(f"{where}: label must be 0 or 1")
    p = out["probability"].to_numpy(dtype=float)
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise DataError(f"{where}: probability must be finite and within [0, 1]")
    if out["label"].nunique() < 2:
        raise DataError(f"{where}: both classes are needed for an AUROC")
    return out


def floor_check(preds: pd.DataFrame, baseline: pd.DataFrame, *, baseline_name: str = "pqd",
                min_auroc_low: float = 0.5, min_gain_over_baseline: float = 0.0, min_overlap: float = 0.9,
                n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """The floor every candidate must clear: ``{"passed", "reason", "auroc_ci", "baseline", ...}``.

    Passed when the lower bound of the candidate's test-AUROC interval is above ``min_auroc_low`` and its
    paired AUROC difference against ``baseline`` (the zero-shot base model's predictions) on the stays both
    scored is not below ``min_gain_over_baseline``; base predictions sharing under ``min_overlap`` of the
    candidate's stays, or with other labels on them, are not the same test and fail it.
    """
    preds = check_predictions(preds, "candidate predictions")
    base = check_predictions(baseline, f"base model {baseline_name!r} predictions")
    y, p = preds["label"].to_numpy(dtype=int), preds["probability"].to_numpy(dtype=float)
    own = evaluate_binary(y, p, metrics=("auroc",), n_boot=n_boot, ci=ci, seed=seed)
    lo, hi = own["auroc_ci"]
    above_chance = lo > min_auroc_low
    parts = [f"test AUROC {own['auroc']:.4f}, {ci:.0%} CI [{lo:.4f}, {hi:.4f}] on {len(preds)} stays: the lower "
             f"bound is {'above' if above_chance else 'not above'} {min_auroc_low:g}"]
    out = {"auroc": own["auroc"], "auroc_ci": [lo, hi], "min_auroc_low": min_auroc_low, "baseline": baseline_name,
           "min_gain_over_baseline": min_gain_over_baseline}
    joined = preds.merge(base, on="stay_id", suffixes=("", "_base"))
    overlap = len(joined) / len(preds)
    if overlap < min_overlap or (joined["label"] != joined["label_base"]).any() or joined["label"].nunique() < 2:
        same = False
        parts.append(f"the zero-shot base model {baseline_name!r} was not scored on the same test "
                     f"({len(joined)} of the candidate's {len(preds)} stays shared, need {min_overlap:.0%}, with the "
                     "same labels and both classes), so the candidate cannot be shown not to be worse than it")
    else:
        cmp = paired_bootstrap(joined["label"].to_numpy(dtype=int), joined["probability"].to_numpy(),
                               joined["probability_base"].to_numpy(), "auroc", n_boot=n_boot, ci=ci, seed=seed)
        same = cmp["diff"] >= min_gain_over_baseline
        dlo, dhi = cmp["diff_ci"]
        parts.append(f"against the zero-shot base model {baseline_name!r} on {len(joined)} shared stays "
                     f"{cmp['a']:.4f} vs {cmp['b']:.4f}, difference {cmp['diff']:+.4f} ({ci:.0%} CI "
                     f"[{dlo:+.4f}, {dhi:+.4f}]), {'not below' if same else 'below'} {min_gain_over_baseline:g}")
        out.update(baseline_auroc=cmp["b"], baseline_diff=cmp["diff"], baseline_diff_ci=[dlo, dhi],
                   baseline_p_value=cmp["p_value"], baseline_n_stays=len(joined))
    passed = above_chance and same
    out.update(passed=passed, reason=("clears the promotion floor: " if passed else "below the promotion floor: ")
               + "; ".join(parts))
    return out


def register_and_promote(
    run_id: str,
    artifact_path: str,
    name: str,
    predictions: pd.DataFrame,
    *,
    tracking_uri: str | None = None,
    **kwargs,
) -> PromotionDecision:
    """Register ``<run artifacts>/<artifact_path>`` as a new version of ``name``, then :func:`promote` it."""
    from mlflow import MlflowClient

    check_predictions(predictions, "candidate predictions")  # refuse before registering anything
    if kwargs.get("baseline") is not None:
        check_predictions(kwargs["baseline"], "base model predictions")
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    ensure_registered_model(client, name)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = str(client.create_model_version(name, source, run_id=run_id).version)
    return promote(name, version, predictions, tracking_uri=tracking_uri, **kwargs)


def ensure_registered_model(client, name: str) -> None:
    """Create the served registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="EAG-RL policy models; the champion alias is served.")


def promote(
    name: str,
    version: str | int,
    predictions: pd.DataFrame,
    *,
    baseline: pd.DataFrame,
    baseline_name: str = "pqd",
    alias: str = "champion",
    tracking_uri: str | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    min_improvement: float = 0.0,
    min_overlap: float = 0.9,
    min_auroc_low: float = 0.5,
    min_gain_over_baseline: float = 0.0,
) -> PromotionDecision:
    """Move ``alias`` to an already registered ``version`` (e.g. logged with ``registered_model_name``) only if
    its test predictions clear the floor (:func:`floor_check` against ``baseline``, the zero-shot base model's
    predictions) and beat the current holder's; the predictions are stored on the version's run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    preds = check_predictions(predictions, "candidate predictions")
    check_predictions(baseline, f"base model {baseline_name!r} predictions")
    version = str(version)
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        raise DataError(f"{name} v{version} has no run to store its test predictions in")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PREDICTIONS).name
        preds.to_csv(path, index=False)
        client.log_artifact(run_id, str(path), artifact_path=str(Path(PREDICTIONS).parent))
    score = auroc(preds["label"].to_numpy(), preds["probability"].to_numpy())

    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == version:
        decision = PromotionDecision(False, name, version, version, f"v{version} already holds {alias!r}", score)
    else:
        floor = floor_check(preds, baseline, baseline_name=baseline_name, min_auroc_low=min_auroc_low,
                            min_gain_over_baseline=min_gain_over_baseline, min_overlap=min_overlap, n_boot=n_boot,
                            ci=ci, seed=seed)
        if not floor["passed"]:
            stays = f"stays on v{champion.version}" if champion is not None else "stays unset (no version holds it)"
            decision = PromotionDecision(False, name, version, None, f"{floor['reason']}; {alias!r} {stays}", score,
                                         floor=floor)
        elif champion is None:
            decision = PromotionDecision(True, name, version, None,
                                         f"{floor['reason']}; no version held the {alias!r} alias", score, floor=floor)
        else:
            decision = _compare(client, name, version, champion, preds, score, alias=alias, n_boot=n_boot, ci=ci,
                                seed=seed, min_improvement=min_improvement, min_overlap=min_overlap)
            decision.floor = floor
            decision.reason = f"{floor['reason']}; {decision.reason}"
    if decision.promoted:
        client.set_registered_model_alias(name, alias, version)
        if champion is not None:
            client.set_model_version_tag(name, champion.version, "eagrl.promotion.replaced_by", version)
    _record(client, decision, run_id)
    log.info("%s v%s: %s (%s)", name, version, "promoted" if decision.promoted else "not promoted", decision.reason)
    return decision


def _compare(client, name, version, champion, preds, score, *, alias, n_boot, ci, seed, min_improvement,
             min_overlap) -> PromotionDecision:
    old = _champion_predictions(client, champion)
    joined = preds.merge(old, on="stay_id", suffixes=("", "_champion"))
    overlap = len(joined) / max(len(preds), len(old))
    base = dict(name=name, version=version, champion_version=str(champion.version), auroc=score)
    if overlap < min_overlap:
        return PromotionDecision(False, reason=f"not comparable: the test sets share {len(joined)} stays, "
                                 f"{overlap:.0%} of the larger (need {min_overlap:.0%})", **base)
    if (joined["label"] != joined["label_champion"]).any():
        return PromotionDecision(False, reason="not comparable: the shared test stays have different labels", **base)
    y = joined["label"].to_numpy(dtype=int)
    cmp = paired_bootstrap(y, joined["probability"].to_numpy(), joined["probability_champion"].to_numpy(), "auroc",
                           n_boot=n_boot, ci=ci, seed=seed)
    lo, hi = cmp["diff_ci"]
    better = lo > min_improvement
    reason = (f"test AUROC {cmp['a']:.4f} vs champion v{champion.version} {cmp['b']:.4f} on {len(joined)} shared "
              f"stays: difference {cmp['diff']:+.4f}, {ci:.0%} CI [{lo:+.4f}, {hi:+.4f}], p={cmp['p_value']:.3g}; "
              + (f"the lower bound is above {min_improvement:g}" if better
                 else f"the lower bound is not above {min_improvement:g}, {alias!r} stays on v{champion.version}"))
    return PromotionDecision(better, reason=reason, champion_auroc=cmp["b"], comparison=cmp, **base)


def _champion_predictions(client, champion) -> pd.DataFrame:
    import mlflow

    if not champion.run_id:
        raise EagrlError(f"champion v{champion.version} has no run, so no test predictions to compare with")
    try:
        path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=PREDICTIONS,
                                                   tracking_uri=client.tracking_uri)
    except Exception as exc:  # mlflow raises several types; the message is what matters
        raise EagrlError(f"champion v{champion.version} (run {champion.run_id}) has no {PREDICTIONS}: "
                         f"{str(exc).splitlines()[0]}") from None
    return check_predictions(pd.read_csv(path), f"champion v{champion.version} predictions")


def _record(client, d: PromotionDecision, run_id: str) -> None:
    tags = {"decision": "promoted" if d.promoted else "rejected", "reason": d.reason[:5000],
            "auroc": f"{d.auroc:.6f}", "compared_with": d.champion_version or ""}
    if d.floor:
        tags.update({"floor": "passed" if d.floor["passed"] else "failed",
                     "auroc_ci": json.dumps([round(x, 6) for x in d.floor["auroc_ci"]]),
                     "baseline": d.floor["baseline"]})
        if "baseline_diff" in d.floor:
            tags.update({"baseline_auroc": f"{d.floor['baseline_auroc']:.6f}",
                         "baseline_auroc_diff": f"{d.floor['baseline_diff']:.6f}",
                         "baseline_auroc_diff_ci": json.dumps([round(x, 6) for x in d.floor["baseline_diff_ci"]])})
    if d.comparison:
        tags.update({"champion_auroc": f"{d.comparison['b']:.6f}", "auroc_diff": f"{d.comparison['diff']:.6f}",
                     "auroc_diff_ci": json.dumps([round(x, 6) for x in d.comparison["diff_ci"]]),
                     "p_value": f"{d.comparison['p_value']:.6g}"})
    for key, value in tags.items():
        client.set_model_version_tag(d.name, d.version, f"eagrl.promotion.{key}", value)
        client.set_tag(run_id, f"eagrl.promotion.{key}", value)
    client.log_metric(run_id, "promotion_promoted", float(d.promoted))
    client.log_metric(run_id, "promotion_test_auroc", d.auroc)
    if d.floor:
        client.log_metric(run_id, "promotion_floor_passed", float(d.floor["passed"]))
        client.log_metric(run_id, "promotion_test_auroc_ci_low", d.floor["auroc_ci"][0])
        if "baseline_diff" in d.floor:
            client.log_metric(run_id, "promotion_baseline_auroc_diff", d.floor["baseline_diff"])
    if d.comparison:
        client.log_metric(run_id, "promotion_auroc_diff", d.comparison["diff"])
        client.log_metric(run_id, "promotion_auroc_diff_ci_low", d.comparison["diff_ci"][0])
        client.log_metric(run_id, "promotion_auroc_diff_ci_high", d.comparison["diff_ci"][1])
