"""The pipeline's last stage: register the RL policy as a version of the served model, and move its
``champion`` alias only when it beats the current champion on the evaluation stage's test predictions.

``promote_stage(cfg, out_dir, parent_run_id, evaluation_dir=..., candidate=...)`` is what ``eagrl promote``,
the KFP component and the tests call. It

1. reads the evaluation stage's table (``DIR/evaluate/table.csv``) and finds the candidate's row
   (``promote.entry``, default the row named after ``rl.variant``), which must be scored and name the
   registered version it scored (``models:/eagrl-eag-rl-tjh-mortality/3``). With ``candidate`` given (the
   RL stage's registration), the two must be the same version: a stale evaluation never decides;
2. registers that version's logged model as a version of ``promote.registered_name`` (``eagrl-policy``),
   once: a rerun finds the version registered before from the same source;
3. calls :func:`eagrl.promote.decision.promote` with the row's predictions and those of the zero-shot base
   model (``promote.baseline_entry``, scored on the same stays): the alias moves only when the candidate
   clears the floor (the lower bound of its test-AUROC interval above ``promote.min_auroc_low``, its paired
   AUROC difference against the base model not below ``promote.min_gain_over_baseline``) and the
   paired-bootstrap interval of its AUROC gain over the champion (if any) lies above
   ``promote.min_improvement``;
4. records the decision in its own MLflow run (``promotion.json``, metrics and tags) and, through
   ``promote``, as tags on the new version and on the candidate's training run.

A candidate refused is still a registered version (with the reason in its tags) and the stage succeeds: the
pipeline did its job, and its message says that nothing was promoted and why.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from eagrl.config import Config
from eagrl.errors import DataError
from eagrl.stage import StageResult, stage_contract, stage_dir
from eagrl.tracking.mlflow_run import log_metrics, stage_run

log = logging.getLogger(__name__)

SOURCE_TAG = "eagrl.promotion.source"  # on a served-model version: the training registration it copies


def candidate_row(evaluation_dir: Path, entry: str) -> dict:
    """The evaluation table's row of ``entry``, which must have been scored from a registered version."""
    row = scored_row(evaluation_dir, entry, "nothing to promote")
    if not row["uri"].startswith("models:/"):
        raise DataError(f"{evaluation_dir / 'table.csv'}: row {entry!r} was not scored from a registered model "
                        f"({row['uri']!r})")
    return row


def scored_row(evaluation_dir: Path, entry: str, otherwise: str) -> dict:
    """The evaluation table's row of ``entry``, which must have been scored."""
    table_path = evaluation_dir / "table.csv"
    if not table_path.is_file():
        raise DataError(f"{table_path}: no evaluation table; run `eagrl evaluate` (the evaluation stage) first")
    table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    for col in ("name", "status", "uri"):
        if col not in table.columns:
            raise DataError(f"{table_path}: missing column {col!r}; it was written by another eagrl version, "
                            "rerun the evaluation stage")
    rows = table[table["name"] == entry]
    if rows.empty:
        raise DataError(f"{table_path}: no row {entry!r} (rows: {list(table['name'])}); set promote.entry to one")
    row = rows.iloc[0].to_dict()
    if row["status"] != "scored":
        raise DataError(f"{table_path}: row {entry!r} is {row['status']} ({row.get('note', '')}); {otherwise}")
    return row


def entry_predictions(evaluation_dir: Path, entry: str) -> pd.DataFrame:
    from eagrl.promote.decision import check_predictions

    path = evaluation_dir / "models" / entry / "predictions.csv"
    if not path.is_file():
        raise DataError(f"{path}: the evaluation's predictions of {entry!r} are missing")
    return check_predictions(pd.read_csv(path, dtype={"stay_id": str}), str(path))


def _registered(uri: str) -> tuple[str, str]:
    name, _, version = uri.removeprefix("models:/").rpartition("/")
    if not name or not version.isdigit():
        raise DataError(f"{uri!r} is not models:/<name>/<version>")
    return name, version


def served_version(client, name: str, source_uri: str) -> str:
    """The version of ``name`` copying the training registration ``source_uri``; registered when new."""
    import mlflow

    from eagrl.promote.decision import ensure_registered_model

    src_name, src_version = _registered(source_uri)
    source = client.get_model_version(src_name, src_version)
    ensure_registered_model(client, name)
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get(SOURCE_TAG) == source_uri:
            return str(mv.version)  # a rerun: no second copy of the same model
    mv = mlflow.register_model(source.source, name, tags={SOURCE_TAG: source_uri})
    return str(mv.version)


def registry_state(cfg: Config, args: dict) -> dict:
    """What a promotion decision depends on outside its inputs: the served model's versions (each with the
    training registration it copies) and the version holding the alias, in the configured registry."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from eagrl.tracking.mlflow_run import tracking_uri

    client, pcfg = MlflowClient(tracking_uri(cfg)), cfg.promote
    try:
        versions = client.search_model_versions(f"name = '{pcfg.registered_name}'")
    except MlflowException:
        versions = []
    try:
        holder = str(client.get_model_version_by_alias(pcfg.registered_name, pcfg.alias).version)
    except MlflowException:
        holder = None
    return {"alias": holder,
            "versions": sorted([int(v.version), v.run_id or "", v.tags.get(SOURCE_TAG, "")] for v in versions)}


# The decision depends on the registry, so the fingerprint includes it as the stage left it (eagrl.stage): a
# rerun reuses the decision while nobody else has moved the alias or registered a version since.
def promote_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
                  evaluation_dir: str | Path | None = None, candidate: str | None = None) -> StageResult:
    """Register the candidate as a version of ``promote.registered_name``; move the alias if it wins.
    ``evaluation_dir`` defaults to ``out_dir/evaluate``; its content is an input of the fingerprint either way."""
    evaluation = Path(evaluation_dir) if evaluation_dir else Path(out_dir) / "evaluate"
    return _promote_stage(cfg, out_dir, parent_run_id, evaluation_dir=evaluation, candidate=candidate)


@stage_contract("promote", state=registry_state)
def _promote_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None, evaluation_dir: Path,
                   candidate: str | None) -> StageResult:
    import mlflow
    from mlflow.exceptions import MlflowException

    from eagrl.promote.decision import promote

    pcfg = cfg.promote
    out = stage_dir(out_dir, "promote")
    evaluation = evaluation_dir
    entry = pcfg.entry or cfg.rl.variant
    row = candidate_row(evaluation, entry)
    scored = row["uri"]
    if candidate and candidate != scored:
        raise DataError(f"the evaluation scored {scored} as {entry!r}, but the candidate is {candidate}: rerun the "
                        "evaluation stage after the RL stage")
    preds = entry_predictions(evaluation, entry)
    scored_row(evaluation, pcfg.baseline_entry, "the promotion floor pairs every candidate with the zero-shot base "
               "model (promote.baseline_entry); score it in the evaluation (evaluate.models)")
    baseline = entry_predictions(evaluation, pcfg.baseline_entry)

    with stage_run(cfg, "promote", parent_run_id) as run:
        client = mlflow.MlflowClient()
        version = served_version(client, pcfg.registered_name, scored)
        decision = promote(pcfg.registered_name, version, preds, baseline=baseline, baseline_name=pcfg.baseline_entry,
                           alias=pcfg.alias, n_boot=pcfg.n_boot, ci=pcfg.ci, seed=pcfg.seed,
                           min_improvement=pcfg.min_improvement, min_overlap=pcfg.min_overlap,
                           min_auroc_low=pcfg.min_auroc_low, min_gain_over_baseline=pcfg.min_gain_over_baseline)
        try:
            champion = str(client.get_model_version_by_alias(pcfg.registered_name, pcfg.alias).version)
        except MlflowException:
            champion = None  # no candidate has cleared the floor yet
        record = {**decision.to_dict(), "candidate_source": scored, "entry": entry, "alias": pcfg.alias,
                  "champion_now": champion, "n_stays": len(preds)}
        (out / "promotion.json").write_text(json.dumps(record, indent=1, default=str))
        mlflow.log_artifact(str(out / "promotion.json"))
        mlflow.set_tags({"eagrl.promotion.decision": "promoted" if decision.promoted else "rejected",
                         "eagrl.promotion.reason": decision.reason[:5000],
                         "eagrl.promotion.candidate": f"models:/{pcfg.registered_name}/{version}"})
        metrics = {"promoted": float(decision.promoted), "candidate_auroc": decision.auroc}
        if champion is not None:
            metrics["champion_version"] = float(champion)
        if decision.floor:
            metrics.update(floor_passed=float(decision.floor["passed"]), candidate_auroc_ci=decision.floor["auroc_ci"])
            if "baseline_diff" in decision.floor:
                metrics.update(baseline_auroc=decision.floor["baseline_auroc"],
                               baseline_auroc_diff=decision.floor["baseline_diff"],
                               baseline_auroc_diff_ci=decision.floor["baseline_diff_ci"])
        if decision.comparison:
            metrics.update(champion_auroc=decision.comparison["b"], auroc_diff=decision.comparison["diff"],
                           auroc_diff_ci=list(decision.comparison["diff_ci"]))
        log_metrics(metrics)
        uri = f"models:/{pcfg.registered_name}/{version}"
        holder = f"@{pcfg.alias} is v{champion}" if champion else f"no version holds @{pcfg.alias} yet"
        if decision.promoted:
            message = f"{scored} is {uri}: promoted to @{pcfg.alias} ({decision.reason}); {holder}"
        elif champion == version:
            message = f"nothing promoted: {scored} is {uri}, which already holds @{pcfg.alias} ({decision.reason})"
        else:
            message = (f"nothing promoted: {scored} is registered as {uri}, not @{pcfg.alias}: {decision.reason}; "
                       f"{holder}")
        result = StageResult("promote", metrics=metrics, mlflow_run_id=run.info.run_id, message=message,
                             outputs={"model_uri": uri, "champion_uri": f"models:/{pcfg.registered_name}@{pcfg.alias}",
                                      "champion_version": champion or "", "promotion": str(out / "promotion.json")})
    result.write(out_dir)
    return result
