"""The evaluation stage: every registered model on one test split, paired comparisons, robustness,
generalisation, and the HTML report.

``evaluate_stage(cfg, out_dir)`` is what ``eagrl evaluate``, the KFP component and the tests call. It

1. resolves each entry of ``cfg.evaluate.models`` (prompting baselines on the base model, the policies
   registered in MLflow, the ConCare expert, logistic regression on the last values, fitted here on the train
   split); an entry that is not registered is a visible ``skipped`` row;
2. scores every resolved model on the same stays of ``cfg.evaluate.split`` and summarises it (AUROC, AUPRC,
   F1, Brier, ECE, well-formed rate, mean R_att against the expert's C_exp, each with its interval; for LLMs
   also the AUROC of 1 - p and the share of answers that copy an earlier number); with
   ``evaluate.tune_threshold`` also on val stays, whose max-F1 threshold gives the model's ``f1_tuned``;
3. compares each model with every reference (``evaluate.references``, default P_QD and SFT) by paired
   bootstrap, difference and relative gain with intervals;
4. re-scores the robustness models under feature-order shuffles and value noise (AUROC against the level,
   paired against the references at each level), and the generalisation models on other datasets' cohorts;
5. writes ``DIR/evaluate/``: ``table.csv``, ``paired.csv``, ``robustness.csv``, ``generalisation.csv``,
   ``report.html`` and its PNGs, ``models/<entry>/`` predictions and responses; logs all of it to MLflow.
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl.config import Config
from eagrl.config.evaluate import TUNE_SPLIT, EvaluateConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.evaluate.diagnostics import llm_diagnostics
from eagrl.evaluate.models import READY, Resolved, lineage, registry_version, resolve
from eagrl.evaluate.perturb import shuffled, with_value_noise
from eagrl.evaluate.score import (
    read_c_exp,
    read_scored,
    restricted,
    score_expert,
    score_llm,
    summarise,
    tuned_f1,
)
from eagrl.evaluate.table import FAILED, SCORED, SKIPPED, Evaluation, generalisation_gains, paired_rows, write_tables
from eagrl.evaluate.tabular import fit_tabular, score_tabular
from eagrl.stage import StageResult, stage_contract, stage_dir
from eagrl.tracking.dvc_store import tree_md5
from eagrl.tracking.mlflow_run import log_metrics, nested_run, stage_run
from eagrl.workspace import Workspace, workspace_inputs

log = logging.getLogger(__name__)

REGISTERED_KINDS = ("registered", "expert")  # the entries read from the MLflow registry


# ====================================================================== the stage
def _inputs(cfg: Config, out_dir, given: dict) -> dict:
    """The workspace's cohort, and each registered entry pinned to the version the registry gives it now
    ("latest" or an alias made a number) unless the caller pinned it: the fingerprint then names the models
    scored, so a policy retrained since the last evaluation is scored anew rather than reused."""
    from eagrl.tracking.mlflow_run import tracking_uri

    ecfg = _restricted(cfg.evaluate, given["only"])
    versions = {k: str(v) for k, v in (given["versions"] or {}).items()}
    for m in ecfg.models:
        if m.kind in REGISTERED_KINDS and m.name not in versions:
            number, _ = registry_version(m.registered_name(cfg.data.dataset, cfg.data.task), m.version,
                                         tracking_uri(cfg))
            if number is not None:  # not registered: the table lists it as skipped
                versions[m.name] = number
    return {**workspace_inputs(cfg, out_dir, given), "versions": versions}


@stage_contract("evaluate", resolve=_inputs)
def evaluate_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
                   cohort_path: str | Path | None = None, only: list[str] | None = None,
                   versions: dict[str, str] | None = None) -> StageResult:
    """Score the configured models (``only``: these entries) on the prepared cohort and write the report.

    ``versions`` pins entries to registry versions (entry name -> version), overriding ``evaluate.models``:
    the pipeline passes the versions its SFT and RL stages just registered, so the evaluation scores those
    (not whatever is latest) and a rerun after retraining is never mistaken for a finished one.
    """
    import mlflow

    from eagrl.evaluate.report import write_report

    ecfg = _pinned(_restricted(cfg.evaluate, only), versions or {})
    out = stage_dir(out_dir, "evaluate")
    source = Path(cohort_path)
    cohort = Cohort.load(source)
    ids = cohort.sample_ids(ecfg.split, ecfg.max_stays, ecfg.seed)
    cohort = restricted(cohort, ecfg.split, ids)  # every model, perturbation and the expert: these stays
    with stage_run(cfg, "evaluate", parent_run_id) as run:
        ev = run_evaluation(cfg, ecfg, cohort, ids, out,
                            cohort_md5=tree_md5(source) if ecfg.reuse_predictions else None)
        metrics = ev.metrics(ecfg.split)
        metrics[f"{ecfg.split}_n_stays"] = len(ids)
        write_tables(ev, out)
        report = write_report(out, report_context(cfg, ecfg, cohort, ids, ev))
        log_metrics(metrics)
        mlflow.log_artifact(str(report))
        mlflow.log_artifacts(str(out), artifact_path="evaluate")
        result = StageResult("evaluate", metrics=metrics, mlflow_run_id=run.info.run_id,
                             message=_message(cohort, ecfg, ids, ev, report),
                             outputs={"report": str(report), "table": str(out / "table.csv"),
                                      "paired": str(out / "paired.csv")})
    result.write(out_dir)
    return result


def _restricted(ecfg: EvaluateConfig, only: list[str] | None) -> EvaluateConfig:
    if not only:
        return ecfg
    names = [m.name for m in ecfg.models]
    unknown = [n for n in only if n not in names]
    if unknown:
        from eagrl.errors import ConfigError

        raise ConfigError(f"--models names {unknown}, which are not entries of evaluate.models ({names})")
    keep = [m for m in ecfg.models if m.name in only]
    kept = {m.name for m in keep}
    return ecfg.model_copy(update={
        "models": keep, "references": [r for r in ecfg.references if r in kept],
        "robustness": ecfg.robustness.model_copy(update={"models": [m for m in ecfg.robustness.models if m in kept]}),
        "generalisation": ecfg.generalisation.model_copy(
            update={"models": [m for m in ecfg.generalisation.models if m in kept]}),
    })


def _pinned(ecfg: EvaluateConfig, versions: dict[str, str]) -> EvaluateConfig:
    if not versions:
        return ecfg
    from eagrl.config.evaluate import ModelEntry
    from eagrl.errors import ConfigError

    names = {m.name: m for m in ecfg.models}
    unknown = [n for n in versions if n not in names or names[n].kind not in REGISTERED_KINDS]
    if unknown:
        raise ConfigError(f"pinned versions name {unknown}, which are not registered entries of evaluate.models")
    try:
        models = [ModelEntry.model_validate({**m.model_dump(), "version": str(versions[m.name])})
                  if m.name in versions else m for m in ecfg.models]
    except ValueError as exc:
        raise ConfigError(f"pinned versions {versions}: {exc}") from None
    return ecfg.model_copy(update={"models": models})


# ====================================================================== the work
def run_evaluation(cfg: Config, ecfg: EvaluateConfig, cohort: Cohort, ids: list[str], out: Path,
                   cohort_md5: str | None = None) -> Evaluation:
    """Resolve, score and compare every entry; the robustness and generalisation runs reuse each loaded model.

    With ``cohort_md5`` (the content digest of the cohort folder) and ``evaluate.reuse_predictions``, a row whose
    model was already scored on these stays with these settings (by the zero-shot, SFT or RL stage, or an earlier
    evaluation) is read back from that run (:mod:`eagrl.scoring.keys`); its model is loaded only for what is left
    (robustness, transfer, a validation pass for the tuned threshold).
    """
    ev = Evaluation()
    if ecfg.samples > 1:
        ev.notes.append(f"each LLM's probability for a stay is the mean over {ecfg.samples} responses sampled at "
                        f"temperature {ecfg.sample_temperature:g} (evaluate.samples); probability_sd_within is the "
                        "mean spread of a stay's responses, probability_sd_between the spread of the stays' means")
    resolved = [resolve(entry, cfg) for entry in ecfg.models]
    ev.notes.extend(lineage(resolved))
    _tabular_left_out(ecfg, ev)
    c_exp = _c_exp(cfg, cohort, resolved, out, ev)
    targets = _targets(cfg, ecfg, ev)
    tune = _tuning_stays(ecfg, cohort, ev)
    base_backend = None
    for res in resolved:
        row = {"name": res.name, "label": res.entry.title, "group": res.entry.group, "note": res.note,
               "uri": res.uri or "", "status": SCORED if res.status == READY else res.status, "reused_from": "",
               "metrics": {}}
        ev.table.append(row)
        if res.status != READY:
            ev.notes.append(f"{res.entry.title}: {res.status}, {res.note}")
            continue
        backend, step, val, fitted = None, "scoring", None, None
        where = out / "models" / res.name
        try:
            if res.entry.kind == "tabular":
                fitted = fit_tabular(cohort, ecfg.tabular, ecfg.seed)
                row["note"] = fitted.note + (" (the scored split: in-sample)" if ecfg.split == "train" else "")
                pred = score_tabular(fitted, cohort, ids, where)
            elif not res.is_llm:
                pred = score_expert(res.expert, res.expert_features, cohort, ids, where)
            else:
                pred = _reused(cfg, ecfg, res, cohort, ecfg.split, ids, cohort_md5, where, c_exp, row)
                if tune is not None:
                    val = _reused(cfg, ecfg, res, tune[0], TUNE_SPLIT, tune[1], cohort_md5, where / TUNE_SPLIT,
                                  c_exp, row)
                if pred is None or (tune is not None and val is None) or _needs_model(ecfg, res, targets):
                    if res.entry.kind == "prompt":
                        base_backend = base_backend or _backend(res, cfg)
                        backend = base_backend
                    else:
                        backend = _backend(res, cfg)
                if pred is None:
                    pred = _score(cfg, ecfg, res, cohort, where, c_exp, backend,
                                  key=_key(cfg, ecfg, res, cohort_md5, ecfg.split))
            row["metrics"] = summarise(pred, ecfg)
            if res.is_llm:
                row["metrics"].update(llm_diagnostics(pred, n_boot=ecfg.n_boot, ci=ecfg.ci, seed=ecfg.seed))
            ev.predictions[res.name] = pred
            if tune is not None:
                step = "threshold tuning"
                if fitted is not None:
                    val = score_tabular(fitted, tune[0], tune[1], where / TUNE_SPLIT)
                elif not res.is_llm:
                    val = score_expert(res.expert, res.expert_features, tune[0], tune[1], where / TUNE_SPLIT)
                elif val is None:
                    val = _score(cfg, ecfg, res, tune[0], where / TUNE_SPLIT, c_exp, backend, split=TUNE_SPLIT,
                                 key=_key(cfg, ecfg, res, cohort_md5, TUNE_SPLIT))
                row["metrics"].update(tuned_f1(pred, val, ecfg))
            if backend is not None:
                step = "robustness"
                _robustness(cfg, ecfg, res, cohort, out, c_exp, backend, pred, ev)
                step = "generalisation"
                _generalise(cfg, ecfg, res, targets, out, backend, ev)
        except Exception as exc:
            if res.entry.kind == "prompt":
                raise  # the base model failing is a bug to see, not a row
            log.exception("%s of %s failed", step, res.name)
            why = f"{step} failed: {type(exc).__name__}: {exc}"
            if step == "scoring":
                row.update(status=FAILED, note=f"{res.note}; {why}")
            ev.notes.append(f"{res.entry.title}: {why}")
        finally:
            if backend is not None and backend is not base_backend:
                del backend  # one policy in memory at a time (the base model stays for the prompt rows)
                _release_memory()
    paired_rows(ecfg, ev)
    generalisation_gains(ecfg, ev, [t[0] for t in targets], f"{cfg.data.dataset}/{cfg.data.task}")
    tabular = {m.name for m in ecfg.models if m.kind == "tabular"}
    missing = [n for n in ecfg.robustness.models if n not in ev.predictions and n not in tabular]
    if missing:
        ev.notes.append(f"robustness curves left out for {', '.join(missing)}: not scored")
    return ev


def _tabular_left_out(ecfg: EvaluateConfig, ev: Evaluation) -> None:
    """A note for each tabular entry named in the robustness or generalisation models: those re-score prompts or
    other datasets' cohorts, which a regression fitted on this cohort's features does not take."""
    tabular = {m.name: m.title for m in ecfg.models if m.kind == "tabular"}
    for key, names in (("robustness", ecfg.robustness.models), ("generalisation", ecfg.generalisation.models)):
        for name in names:
            if name in tabular:
                ev.notes.append(f"{tabular[name]}: left out of evaluate.{key} (a tabular row fitted on this "
                                "cohort's features; only LLM rows are re-scored there)")


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _backend(res: Resolved, cfg: Config):
    from eagrl.llm.backends import make_backend

    return make_backend(res.model_cfg, cfg.generation)


def _gen(cfg: Config, ecfg: EvaluateConfig, res: Resolved):
    """The entry's decoding: generation's, in its prompt style; sampled at evaluate.sample_temperature where each
    stay gets several responses (evaluate.samples)."""
    update = {"prompt_style": res.entry.style}
    if ecfg.samples > 1:
        update["temperature"] = ecfg.sample_temperature
    return cfg.generation.model_copy(update=update)


def _score(cfg: Config, ecfg: EvaluateConfig, res: Resolved, cohort: Cohort, out: Path, c_exp, backend,
           gen=None, run_name: str | None = None, split: str | None = None,
           key: str | None = None) -> pd.DataFrame:
    """One LLM on one cohort, in its own nested MLflow run (the zero-shot routine logs its numbers there).

    ``key`` (a plain pass: unperturbed cohort and settings) is the scoring key the run is tagged with, beside its
    predictions, so a later evaluation of the same model on these stays reads them back (:mod:`eagrl.scoring.keys`).
    """
    import mlflow

    from eagrl.scoring.keys import FILES, tag_scored

    split = split or ecfg.split
    with nested_run(run_name or _run_name(ecfg, res, split)):
        mlflow.set_tag("eagrl.model_uri", res.uri or res.model_cfg.source)
        pred = score_llm(cohort, out, res.model_cfg, gen or _gen(cfg, ecfg, res), split=split, max_stays=None,
                         c_exp=c_exp, backend=backend, seed=ecfg.seed, samples=ecfg.samples)
        if key is not None:
            for name in FILES:
                mlflow.log_artifact(str(out / name), artifact_path="predictions")
            tag_scored(key, "predictions")
        return pred


def _run_name(ecfg: EvaluateConfig, res: Resolved, split: str) -> str:
    """The nested run of the entry's plain pass on ``split``: ``evaluate-<entry>``, ``evaluate-<entry>-val``."""
    return f"evaluate-{res.name}" + ("" if split == ecfg.split else f"-{split}")


def _key(cfg: Config, ecfg: EvaluateConfig, res: Resolved, cohort_md5: str | None, split: str) -> str | None:
    """The scoring key of the entry's plain pass on ``split`` (None: reuse is off, or not reusable)."""
    from eagrl.scoring.keys import scoring_key

    return scoring_key(res.model_cfg, _gen(cfg, ecfg, res), cohort_md5, split) if cohort_md5 else None


def _tuning_stays(ecfg: EvaluateConfig, cohort: Cohort, ev: Evaluation) -> tuple[Cohort, list[str]] | None:
    """(the cohort with its val split cut to the tuning stays, those stays) under ``evaluate.tune_threshold``."""
    if not ecfg.tune_threshold:
        return None
    try:
        ids = cohort.sample_ids(TUNE_SPLIT, ecfg.tune_max_stays, ecfg.seed)
    except DataError as exc:
        ev.notes.append(f"F1 at a tuned threshold left out: {exc}")
        return None
    return restricted(cohort, TUNE_SPLIT, ids), ids


def _needs_model(ecfg: EvaluateConfig, res: Resolved, targets) -> bool:
    """Whether the entry is scored again beyond the table (robustness, transfer to a prepared cohort)."""
    return res.name in ecfg.robustness.models or (
        res.name in ecfg.generalisation.models and any(t[1] is not None for t in targets))


def _reused(cfg: Config, ecfg: EvaluateConfig, res: Resolved, cohort: Cohort, split: str, ids: list[str], cohort_md5,
            where: Path, c_exp, row: dict) -> pd.DataFrame | None:
    """The entry's predictions on ``ids`` of ``split``, read back from the run (a stage's, or an earlier
    evaluation's) that scored it on these stays, or None. The table split's reuse fills ``row["reused_from"]``."""
    import mlflow

    from eagrl.scoring.keys import find_scored

    active = mlflow.active_run()
    if not ecfg.reuse_predictions or cohort_md5 is None or active is None:
        return None
    found = find_scored(active.info.experiment_id, _key(cfg, ecfg, res, cohort_md5, split), ids, where)
    if found is None:
        return None
    table = split == ecfg.split
    with nested_run(_run_name(ecfg, res, split)):
        mlflow.set_tags({"eagrl.model_uri": res.uri or res.model_cfg.source, "eagrl.reused_from": found.run_id})
    if table:
        row["reused_from"] = found.run_id
    row["note"] = (f"{row['note']}; {'' if table else split + ' '}predictions reused from MLflow run "
                   f"{found.run_id} ({len(ids)} of the {found.n_scored} stays it scored)")
    log.info("%s: %s predictions of run %s reused", res.name, split, found.run_id)
    return read_scored(where, _gen(cfg, ecfg, res), c_exp, cohort.dataset)


def _c_exp(cfg: Config, cohort: Cohort, resolved: list[Resolved], out: Path, ev: Evaluation):
    """C_exp per stay: the expert stage's attention table, else computed from the registered expert."""

    path = Workspace.of(cfg).attention_path
    c_exp = read_c_exp(path)
    if c_exp is not None:
        return c_exp
    expert = next((r for r in resolved if r.entry.kind == "expert" and r.status == READY), None)
    if expert is not None and expert.expert_features == cohort.feature_names:
        from eagrl.expert.attention import export_attention

        export_attention(expert.expert, cohort, cfg.expert, out / "attention.parquet")
        ev.notes.append(f"C_exp computed from {expert.uri} (no attention table at {path})")
        return read_c_exp(out / "attention.parquet")
    ev.notes.append(f"mean R_att not computed: no expert attention table at {path} and no registered expert "
                    "(run `eagrl expert train` first)")
    return None


# ====================================================================== robustness
def _robustness(cfg, ecfg, res: Resolved, cohort: Cohort, out: Path, c_exp, backend, pred, ev: Evaluation) -> None:
    rob = ecfg.robustness
    if res.name not in rob.models:
        return
    base = summarise(pred, ecfg, metrics=("auroc", "auprc"))
    ev.robustness.append({"entry": res.name, "perturbation": "none", "level": 0.0, **base})
    gen = _gen(cfg, ecfg, res)
    runs = [("shuffle", lv, cohort, shuffled(gen, lv, rob.seed)) for lv in rob.shuffle_levels]
    runs += [("noise", lv, with_value_noise(cohort, lv, rob.seed), gen) for lv in rob.noise_levels]
    for pert, level, part_cohort, part_gen in runs:
        where = out / "robustness" / res.name / f"{pert}-{level:g}"
        p = _score(cfg, ecfg, res, part_cohort, where, c_exp, backend, part_gen,
                   run_name=f"evaluate-{res.name}-{pert}{level:g}")
        ev.perturbed[(res.name, pert, float(level))] = p
        ev.robustness.append({"entry": res.name, "perturbation": pert, "level": float(level),
                              **summarise(p, ecfg, metrics=("auroc", "auprc"))})


# ====================================================================== generalisation
def _targets(cfg: Config, ecfg: EvaluateConfig, ev: Evaluation) -> list[tuple[str, Cohort | None, dict | None, str]]:
    """(target key, its cohort or None, its C_exp or None, note) for each configured target."""

    found = []
    if not ecfg.generalisation.models:
        return found
    for t in ecfg.generalisation.targets:
        key = f"{t.dataset}/{t.task}"
        if (t.dataset, t.task) == (cfg.data.dataset, cfg.data.task):
            ev.notes.append(f"generalisation target {key} left out: it is the dataset the models were trained on")
            continue
        tcfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": t.dataset, "task": t.task})})
        path = Workspace.of(tcfg).cohort_dir
        if not (path / "stays.parquet").is_file():
            found.append((key, None, None, f"no prepared cohort at {path} "
                                            f"(eagrl data prepare --dataset {t.dataset} --task {t.task})"))
            continue
        target = Cohort.load(path)
        target = restricted(target, ecfg.split, target.sample_ids(ecfg.split, ecfg.generalisation.max_stays, ecfg.seed))
        found.append((key, target, read_c_exp(Workspace.of(tcfg).attention_path), ""))
    return found


def _generalise(cfg, ecfg: EvaluateConfig, res: Resolved, targets, out: Path, backend, ev: Evaluation) -> None:
    if res.name not in ecfg.generalisation.models:
        return
    source = f"{cfg.data.dataset}/{cfg.data.task}"
    for key, cohort, c_exp, note in targets:
        row = {"entry": res.name, "source": source, "target": key, "n": None, "note": note}
        ev.generalisation.append(row)
        if cohort is None:
            row["status"] = SKIPPED
            continue
        where = out / "generalisation" / key.replace("/", "-") / res.name
        pred = _score(cfg, ecfg, res, cohort, where, c_exp, backend, run_name=f"evaluate-{res.name}-on-{key}")
        ev.transfer[(key, res.name)] = pred
        row.update(status=SCORED, **summarise(pred, ecfg, metrics=("auroc", "auprc")))  # with n, n_positive


def report_context(cfg: Config, ecfg: EvaluateConfig, cohort: Cohort, ids: list[str], ev: Evaluation):
    from eagrl.evaluate.report import ReportContext

    labels = {r["name"]: r["label"] for r in ev.table}
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "metrics"}
                          | r["metrics"] for r in ev.table])
    def relabel(rows: list[dict]) -> pd.DataFrame:
        return pd.DataFrame([{**r, **{k: labels.get(r[k], r[k]) for k in ("entry", "reference") if k in r}}
                             for r in rows])

    n_pos = int(cohort.stays.set_index("stay_id").loc[ids, "label"].sum()) if ids else 0
    return ReportContext(
        title=f"eagrl evaluation: {cohort.dataset} / {cohort.task}", dataset=cohort.dataset, task=cohort.task,
        split=ecfg.split, n_stays=len(ids), n_positive=n_pos, n_boot=ecfg.n_boot, ci=ecfg.ci, table=table,
        paired=relabel(ev.paired), predictions={labels[k]: v for k, v in ev.predictions.items()},
        robustness=relabel(ev.robustness), generalisation=relabel(ev.generalisation), notes=ev.notes,
        n_bins=ecfg.n_bins, threshold=ecfg.threshold,
    )


def _message(cohort: Cohort, ecfg: EvaluateConfig, ids, ev: Evaluation, report: Path) -> str:
    scored = [r for r in ev.table if r["status"] == SCORED]
    parts = [f"{len(scored)} of {len(ev.table)} models scored on {cohort.dataset}/{cohort.task} "
             f"{ecfg.split} (n={len(ids)}" + (f", {ecfg.samples} sampled responses a stay" if ecfg.samples > 1 else "")
             + ")"]
    best = max(scored, key=lambda r: np.nan_to_num(r["metrics"].get("auroc", np.nan), nan=-1), default=None)
    if best is not None and np.isfinite(best["metrics"].get("auroc", np.nan)):
        ci = best["metrics"].get("auroc_ci") or [np.nan, np.nan]
        parts.append(f"best AUROC {best['label']} {best['metrics']['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    for status in (SKIPPED, FAILED):
        names = [r["name"] for r in ev.table if r["status"] == status]
        if names:
            parts.append(f"{status}: {', '.join(names)}")
    reused = [r["name"] for r in ev.table if r.get("reused_from")]
    if reused:
        parts.append(f"predictions reused from the stage runs: {', '.join(reused)}")
    parts.append(f"report: {report}")
    return "; ".join(parts)
