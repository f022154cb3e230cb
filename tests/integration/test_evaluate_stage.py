"""The evaluation stage end to end on real cohorts, with models registered in a throw-away MLflow store.

One workspace (module scope): a MIMIC-IV demo 30-day readmission cohort (60 stays, the first 10 test stays
scored) and the TJH mortality cohort (40 stays) as a generalisation target; a ConCare expert trained for one
epoch, registered and its C_exp exported; the tiny policy registered twice, as a full checkpoint (``sft``) and,
as the training stages register policies (a pyfunc with the adapter and policy.json), as a LoRA adapter with
non-zero weights (``eag-rl``); a registered ``grpo`` whose artifacts hold no model. The logistic
regression (``logreg``) is fitted on the cohort's train split. Everything else of the default table is not registered.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from support.llm import tjh_cohort

from eagrl.config import DataConfig, load_config
from eagrl.config.llm import ModelConfig
from eagrl.data.cohort import build_cohort
from eagrl.evaluate.diagnostics import copies_number
from eagrl.evaluate.models import registry_version
from eagrl.evaluate.score import read_c_exp, restricted
from eagrl.evaluate.stage import evaluate_stage
from eagrl.evaluate.tabular import last_values
from eagrl.expert.attention import read_attention
from eagrl.expert.stage import _log_and_register
from eagrl.llm.loading import attach_lora, build_tiny, save_tiny
from eagrl.llm.registry import log_policy
from eagrl.llm.rewards import r_att
from eagrl.stage import StageResult
from eagrl.tracking.mlflow_run import _experiment_id, tracking_uri
from eagrl.workspace import Workspace

OVERRIDES = {
    "data.dataset": "mimic-iv-demo", "data.task": "readmission_30d", "tracking.dvc": False,
    "generation.cpu_threads": 1, "evaluate.max_stays": 10,
    "expert.max_epochs": 1, "expert.progress": False,
    "evaluate.robustness.models": ["pqd", "eag-rl", "logreg"], "evaluate.robustness.shuffle_levels": [0.6, 1.0],
    "evaluate.robustness.noise_levels": [0.3],
    "evaluate.generalisation.models": ["pqd", "eag-rl", "logreg"],  # logreg: left out of both, with a note
    "evaluate.generalisation.targets": [{"dataset": "tjh", "task": "mortality"},
                                        {"dataset": "mimic-iv-demo", "task": "readmission_30d"},
                                        {"dataset": "physionet2012", "task": "mortality"}],
    "evaluate.generalisation.max_stays": None,
}


def _register(cfg, name: str, folder: Path) -> str:
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=_experiment_id(cfg)) as run:
        mlflow.log_artifacts(str(folder), "model")
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    return client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, shared_data):
    from eagrl.data.cohort import build_cohort
    from eagrl.data.sources import get_source
    from eagrl.expert.fit import train_expert

    root = tmp_path_factory.mktemp("evaluate")
    ws = root / "ws"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = load_config("smoke", {"workspace": str(ws), **OVERRIDES})
        cfg.tracking.mlflow_tracking_uri = tracking_uri(cfg)
        mlflow.set_tracking_uri(cfg.tracking.mlflow_tracking_uri)
        dcfg = DataConfig(dataset="mimic-iv-demo", task="readmission_30d", max_stays=60, max_visits=6)
        src = get_source("mimic-iv-demo")
        cohort = build_cohort(src.to_raw(src.read(src.default_path()), dcfg), dcfg)
        cohort.save(Workspace.of(cfg).cohort_dir)
        tjh_cohort().save(ws / "data" / "cohorts" / "tjh-mortality")

        trained = train_expert(cohort, cfg.expert, root / "expert")
        Workspace.of(cfg).expert_dir.mkdir(parents=True)
        (Workspace.of(cfg).attention_path).write_bytes(trained.attention_path.read_bytes())
        with mlflow.start_run(experiment_id=_experiment_id(cfg)):
            _log_and_register(cfg, trained.model_path)

        _register(cfg, "eagrl-sft-mimic-iv-demo-readmission_30d", save_tiny(root / "full"))
        model, _ = build_tiny()
        torch.manual_seed(1)
        lora = attach_lora(__import__("copy").deepcopy(model), ModelConfig(lora_r=4, lora_alpha=8))
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # a fresh adapter is the identity; this one changes the model
                p.data.normal_(0, 0.5)
        lora.save_pretrained(root / "adapter")
        with mlflow.start_run(experiment_id=_experiment_id(cfg)):  # as the training stages register policies
            log_policy(root / "adapter", ModelConfig(source="tiny"), cfg.generation, name="policy",
                       registered_name="eagrl-eag-rl-mimic-iv-demo-readmission_30d")
        (root / "empty").mkdir()
        (root / "empty" / "README.txt").write_text("not a model")
        _register(cfg, "eagrl-grpo-mimic-iv-demo-readmission_30d", root / "empty")

        result = evaluate_stage(cfg, root / "out")
        try:
            yield {"cfg": cfg, "result": result, "out": root / "out" / "evaluate", "root": root, "cohort": cohort}
        finally:  # set_tracking_uri is process-global and also exports MLFLOW_TRACKING_URI: undo both
            mlflow.set_tracking_uri(None)


def _table(evaluated) -> pd.DataFrame:
    return pd.read_csv(evaluated["out"] / "table.csv").set_index("name")


def _pred(evaluated, name: str) -> pd.DataFrame:
    return pd.read_parquet(evaluated["out"] / "models" / name / "predictions.parquet")


def test_registered_models_are_scored_and_the_rest_visibly_skipped(evaluated):
    table = _table(evaluated)
    status = table["status"].to_dict()
    assert {n for n, s in status.items() if s == "scored"} == {"vanilla", "think", "pqd", "sft", "eag-rl", "logreg",
                                                               "expert"}
    assert status["grpo"] == "failed" and "no config.json or adapter_config.json" in table.loc["grpo", "note"]
    for name in ("dapo", "eag-rl-no-stage1", "eag-rl-no-stage2", "eag-rl-no-ratt", "eag-rl-no-adaptive-clip", "direct"):
        assert status[name] == "skipped"
        assert f"eagrl-{name}-mimic-iv-demo-readmission_30d is not registered" in table.loc[name, "note"]
    assert "full checkpoint" in table.loc["sft", "note"] and "LoRA adapter on tiny" in table.loc["eag-rl", "note"]
    result = evaluated["result"]
    assert result.status == "succeeded"
    assert "7 of 14 models scored" in result.message and "failed: grpo" in result.message
    assert "skipped: dapo" in result.message
    on_disk = StageResult.read(evaluated["root"] / "out", "evaluate")
    assert on_disk.metrics["n_models_skipped"] == 6 and on_disk.metrics["n_models_failed"] == 1


def test_every_model_is_scored_on_the_same_test_stays(evaluated):
    ids = evaluated["cohort"].sample_ids("test", 10, seed=0)
    labels = evaluated["cohort"].stays.set_index("stay_id").loc[ids, "label"]
    assert len(ids) == 10 and labels.nunique() == 2
    for name in ("vanilla", "think", "pqd", "sft", "eag-rl", "logreg", "expert"):
        assert _pred(evaluated, name)["stay_id"].tolist() == ids


def test_table_metrics_equal_sklearn_on_the_written_predictions(evaluated):
    table = _table(evaluated)
    for name in ("pqd", "eag-rl", "logreg", "expert"):
        p = _pred(evaluated, name)
        assert table.loc[name, "auroc"] == pytest.approx(roc_auc_score(p["label"], p["probability"]), abs=1e-12)
        assert table.loc[name, "auprc"] == pytest.approx(average_precision_score(p["label"], p["probability"]),
                                                         abs=1e-12)
        assert table.loc[name, "brier"] == pytest.approx(np.mean((p["probability"] - p["label"]) ** 2), abs=1e-12)
        assert table.loc[name, "auroc_ci_low"] <= table.loc[name, "auroc"] <= table.loc[name, "auroc_ci_high"]


def test_a_registered_copy_of_the_base_model_reproduces_it_and_the_adapter_changes_it(evaluated):
    pqd, sft, rl = (_pred(evaluated, n)["probability"].to_numpy() for n in ("pqd", "sft", "eag-rl"))
    np.testing.assert_allclose(sft, pqd, rtol=0, atol=1e-6)
    assert np.abs(rl - pqd).max() > 1e-3


def test_well_formed_rate_and_mean_r_att_against_the_expert_c_exp(evaluated):
    table = _table(evaluated)
    c_exp = {str(s): list(c) for s, c in read_attention(Workspace.of(evaluated["cfg"]).attention_path)
             [["stay_id", "c_exp"]].itertuples(index=False)}
    for name in ("pqd", "eag-rl"):
        p = _pred(evaluated, name)
        manual = [r_att(list(f), c_exp[s]) if ok else 0.0 for s, f, ok in zip(p["stay_id"], p["features"],
                                                                               p["well_formed"])]
        assert p["r_att"].tolist() == pytest.approx(manual)
        assert table.loc[name, "r_att_mean"] == pytest.approx(np.mean(manual), abs=1e-12)
        assert table.loc[name, "well_formed_rate"] == pytest.approx(p["well_formed"].mean())
        lo, hi = table.loc[name, "r_att_mean_ci_low"], table.loc[name, "r_att_mean_ci_high"]
        assert lo <= table.loc[name, "r_att_mean"] <= hi
    assert np.isnan(table.loc["vanilla", "r_att_mean"])  # no important features in a direct answer
    assert np.isnan(table.loc["expert", "well_formed_rate"])


def test_logistic_regression_row_is_fitted_on_the_train_split_and_left_out_of_re_scoring(evaluated):
    """The tabular reference: fitted here on the cohort's train stays, scored on the table's stays with the same
    metrics and intervals as the expert; not re-scored under prompt perturbations or on other datasets (a note)."""
    table, cohort, cfg = _table(evaluated), evaluated["cohort"], evaluated["cfg"]
    train = [str(s) for s in cohort.split_ids("train")]
    labels = cohort.stays.assign(stay_id=cohort.stays["stay_id"].astype(str)).set_index("stay_id")["label"]
    assert f"fitted on {len(train)} train stays ({int(labels[train].sum())} positive)" in table.loc["logreg", "note"]
    p = _pred(evaluated, "logreg")
    manual = LogisticRegression(C=cfg.evaluate.tabular.c, class_weight="balanced", max_iter=1000,
                                tol=cfg.evaluate.tabular.tol).fit(last_values(cohort, train), labels[train])
    np.testing.assert_allclose(p["probability"], manual.predict_proba(last_values(cohort, p["stay_id"].tolist()))[:, 1],
                               atol=1e-6)
    expert_cols = {c for c in table.columns if pd.notna(table.loc["expert", c])}
    assert {c for c in table.columns if pd.notna(table.loc["logreg", c])} == expert_cols - {"uri"}  # no registry
    assert table.loc["logreg", "group"] == "reference" and table.loc["logreg", "label"] == \
        "Logistic regression (last values)"
    assert (evaluated["out"] / "models" / "logreg" / "coefficients.csv").is_file()
    notes = json.loads((evaluated["out"] / "notes.json").read_text())
    for key in ("robustness", "generalisation"):
        assert f"Logistic regression (last values): left out of evaluate.{key}" in " ".join(notes)
    assert "logreg" not in set(pd.read_csv(evaluated["out"] / "robustness.csv").entry)
    assert "logreg" not in set(pd.read_csv(evaluated["out"] / "generalisation.csv").entry)


def test_llm_rows_report_the_auroc_of_one_minus_p_and_the_share_of_answers_copying_a_number(evaluated):
    table = _table(evaluated)
    metrics = json.loads((evaluated["out"] / "metrics.json").read_text())
    run = mlflow.MlflowClient().get_run(evaluated["result"].mlflow_run_id)
    html = (evaluated["out"] / "report.html").read_text()
    assert "AUROC of 1 − p" in html and "answers copying an earlier number" in html
    for name in ("vanilla", "think", "pqd", "sft", "eag-rl"):
        p = _pred(evaluated, name)
        inverted = roc_auc_score(p["label"], 1 - p["probability"])
        assert table.loc[name, "auroc_inverted"] == pytest.approx(inverted, abs=1e-12)
        assert table.loc[name, "auroc_inverted_ci_low"] <= inverted <= table.loc[name, "auroc_inverted_ci_high"]
        responses = pd.read_json(evaluated["out"] / "models" / name / "responses.jsonl", lines=True,
                                 dtype={"stay_id": str})
        assert responses["stay_id"].tolist() == p["stay_id"].tolist()
        copied = [float(copies_number(t)) for t in responses["text"]]
        assert p["copied"].tolist() == copied
        assert table.loc[name, "copy_share"] == pytest.approx(np.mean(copied), abs=1e-12)
        assert metrics[f"{name}_test_auroc_inverted"] == pytest.approx(inverted)
        assert metrics[f"{name}_test_copy_share"] == pytest.approx(np.mean(copied))
        assert run.data.metrics[f"{name}_test_auroc_inverted"] == pytest.approx(inverted)
        assert run.data.metrics[f"{name}_test_copy_share"] == pytest.approx(np.mean(copied))
        assert f"<td>{inverted:.3f} [" in html
    for name in ("expert", "logreg"):  # not LLMs: no such diagnostics
        assert pd.isna(table.loc[name, "auroc_inverted"]) and pd.isna(table.loc[name, "copy_share"])


def test_paired_comparisons_against_pqd_and_sft(evaluated):
    paired = pd.read_csv(evaluated["out"] / "paired.csv")
    row = paired[(paired.entry == "eag-rl") & (paired.reference == "pqd") & (paired.metric == "auroc")].iloc[0]
    rl, base = _pred(evaluated, "eag-rl"), _pred(evaluated, "pqd")
    a, b = roc_auc_score(rl["label"], rl["probability"]), roc_auc_score(base["label"], base["probability"])
    assert row["diff"] == pytest.approx(a - b, abs=1e-12) and row["rel_diff"] == pytest.approx(a / b - 1, abs=1e-12)
    assert row["diff_ci_low"] <= row["diff"] <= row["diff_ci_high"]
    pairs = set(zip(paired.entry, paired.reference, paired.metric))
    assert ("eag-rl", "sft", "auprc") in pairs and ("expert", "pqd", "auroc") in pairs
    assert ("logreg", "pqd", "auroc") in pairs and ("logreg", "sft", "auroc") in pairs
    assert ("pqd", "sft", "auroc") not in pairs and ("sft", "pqd", "auroc") in pairs  # each pair once
    assert not any(e == r for e, r, _ in pairs)
    # at each robustness level the perturbed models are compared too (sft is a reference but not perturbed here)
    assert ("eag-rl", "pqd", "auroc@shuffle1") in pairs and ("eag-rl", "pqd", "auroc@noise0.3") in pairs
    metrics = json.loads((evaluated["out"] / "metrics.json").read_text())
    assert metrics["eag-rl_vs_pqd_auroc_diff"] == pytest.approx(a - b)


def test_robustness_curves(evaluated):
    rob = pd.read_csv(evaluated["out"] / "robustness.csv")
    levels = {(e, p, lv) for e, p, lv in zip(rob.entry, rob.perturbation, rob.level)}
    assert levels == {(e, p, lv) for e in ("pqd", "eag-rl") for p, lv in
                      (("none", 0.0), ("shuffle", 0.6), ("shuffle", 1.0), ("noise", 0.3))}
    for (entry, pert, level), row in rob.set_index(["entry", "perturbation", "level"]).iterrows():
        if pert == "none":
            continue
        p = pd.read_parquet(evaluated["out"] / "robustness" / entry / f"{pert}-{level:g}" / "predictions.parquet")
        assert row["auroc"] == pytest.approx(roc_auc_score(p["label"], p["probability"]), abs=1e-12)
    shuffled = pd.read_json(evaluated["out"] / "robustness" / "pqd" / "shuffle-1" / "responses.jsonl", lines=True)
    plain = pd.read_json(evaluated["out"] / "models" / "pqd" / "responses.jsonl", lines=True)
    assert len(shuffled) == len(plain)
    assert not np.allclose(shuffled["probability"], plain["probability"])  # the input order changed the answer


def test_generalisation_to_another_dataset(evaluated):
    gen = pd.read_csv(evaluated["out"] / "generalisation.csv")
    scored = gen[gen.status == "scored"]
    assert set(zip(scored.entry, scored.target)) == {("pqd", "tjh/mortality"), ("eag-rl", "tjh/mortality")}
    assert (scored.source == "mimic-iv-demo/readmission_30d").all()
    missing = gen[gen.target == "physionet2012/mortality"]
    assert set(missing.status) == {"skipped"} and missing.note.str.contains("eagrl data prepare").all()
    assert "mimic-iv-demo/readmission_30d" not in set(gen.target)  # the training dataset is no target
    rl = scored[scored.entry == "eag-rl"].iloc[0]
    p = pd.read_parquet(evaluated["out"] / "generalisation" / "tjh-mortality" / "eag-rl" / "predictions.parquet")
    base = pd.read_parquet(evaluated["out"] / "generalisation" / "tjh-mortality" / "pqd" / "predictions.parquet")
    assert rl["n"] == len(p) == len(tjh_cohort().split_ids("test"))
    assert rl["auroc"] == pytest.approx(roc_auc_score(p["label"], p["probability"]), abs=1e-12)
    assert rl["diff_vs_pqd"] == pytest.approx(rl["auroc"] - roc_auc_score(base["label"], base["probability"]))
    assert rl["diff_vs_pqd_ci_low"] <= rl["diff_vs_pqd"] <= rl["diff_vs_pqd_ci_high"]


def test_f1_at_each_models_threshold_tuned_on_val_stays(evaluated):
    """The smoke profile tunes the threshold on at most 8 val stays; F1 on the test stays at it, pinned to a loop."""
    table, cohort = _table(evaluated), evaluated["cohort"]
    val_ids = cohort.sample_ids("val", 8, seed=0)  # the 60-stay cohort's whole val split (4 stays, both labels)
    assert not set(val_ids) & set(cohort.sample_ids("test", 10, seed=0))
    for name in ("vanilla", "pqd", "eag-rl", "logreg", "expert"):
        val = pd.read_parquet(evaluated["out"] / "models" / name / "val" / "predictions.parquet")
        assert val["stay_id"].tolist() == val_ids and val["label"].sum() > 0
        cands = np.unique(val["probability"])
        f1 = [f1_score(val["label"], val["probability"] >= c, zero_division=0) for c in cands]
        t = max(c for c, f in zip(cands, f1) if f == max(f1))
        assert table.loc[name, "threshold_tuned"] == pytest.approx(t, abs=1e-12)
        assert table.loc[name, "f1_tuned_val"] == pytest.approx(max(f1), abs=1e-12)
        test = _pred(evaluated, name)
        assert table.loc[name, "f1_tuned"] == pytest.approx(
            f1_score(test["label"], test["probability"] >= t, zero_division=0), abs=1e-12)
        assert table.loc[name, "f1_tuned_ci_low"] <= table.loc[name, "f1_tuned"] <= table.loc[name, "f1_tuned_ci_high"]
        assert table.loc[name, "n_tune"] == len(val_ids)
    html = (evaluated["out"] / "report.html").read_text()
    assert "F1 at the val max-F1 threshold" in html
    run = mlflow.MlflowClient().get_run(evaluated["result"].mlflow_run_id)
    assert run.data.metrics["pqd_test_f1_tuned"] == pytest.approx(table.loc["pqd", "f1_tuned"])


def test_a_second_evaluation_reads_back_the_first_ones_passes(evaluated):
    """The evaluation's own passes (table and val) are tagged with their scoring key: a later evaluation of the same
    model on (a subset of) the same stays reads them back instead of generating them again."""
    cfg, root = evaluated["cfg"], evaluated["root"]
    client = mlflow.MlflowClient()
    again = evaluate_stage(cfg, root / "again", only=["think", "expert"])
    table = pd.read_csv(root / "again" / "evaluate" / "table.csv").set_index("name")
    source = client.get_run(table.loc["think", "reused_from"])
    assert source.data.tags["mlflow.runName"] == "evaluate-think"
    assert source.data.tags["mlflow.parentRunId"] == evaluated["result"].mlflow_run_id
    assert "val predictions reused from MLflow run" in table.loc["think", "note"]
    for part in ("", "val"):
        first = pd.read_parquet(evaluated["out"] / "models" / "think" / part / "predictions.parquet")
        second = pd.read_parquet(root / "again" / "evaluate" / "models" / "think" / part / "predictions.parquet")
        pd.testing.assert_frame_equal(first, second)
    assert table.loc["think", "f1_tuned"] == pytest.approx(_table(evaluated).loc["think", "f1_tuned"])
    assert again.metrics["n_models_reused"] == 1
    fresh = evaluate_stage(cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
        update={"reuse_predictions": False})}), root / "fresh", only=["think"])
    assert fresh.metrics["n_models_reused"] == 0


def test_several_sampled_responses_a_stay_are_averaged_and_their_spread_reported(evaluated):
    """evaluate.samples = 3: each stay's probability is the mean of its 3 sampled responses' (written one per row in
    samples.csv), well-formed is their share, R_att their mean; the spread within and between stays is in the
    table; sampled passes are never read back from the greedy ones."""
    cfg, root = evaluated["cfg"], evaluated["root"]
    c = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={
        "samples": 3, "sample_temperature": 1.0, "tune_threshold": False, "max_stays": 6})})
    c.evaluate.robustness.models, c.evaluate.generalisation.models = [], []
    res = evaluate_stage(c, root / "sampled", only=["pqd", "eag-rl"])
    out = root / "sampled" / "evaluate"
    table = pd.read_csv(out / "table.csv").set_index("name")
    assert res.metrics["n_models_reused"] == 0 and "3 sampled responses a stay" in res.message
    notes = json.loads((out / "notes.json").read_text())
    assert any("mean over 3 responses sampled at temperature 1" in n for n in notes)
    c_exp = read_c_exp(Workspace.of(cfg).attention_path)
    for name in ("pqd", "eag-rl"):
        each = pd.read_csv(out / "models" / name / "samples.csv", dtype={"stay_id": str}, keep_default_na=False)
        pred = pd.read_parquet(out / "models" / name / "predictions.parquet")
        assert len(each) == 3 * len(pred) == 18 and each.groupby("stay_id").size().eq(3).all()
        by = each.groupby("stay_id", sort=False)
        assert pred["probability"].to_numpy() == pytest.approx(by["probability"].mean().loc[pred["stay_id"]].to_numpy())
        assert each.groupby("stay_id")["probability"].nunique().max() > 1  # sampled: the responses differ
        ok = each["well_formed"].astype(str).eq("True")
        att = [r_att([f for f in str(v).split("; ") if f], c_exp[s]) if w else 0.0
               for s, v, w in zip(each["stay_id"], each["features"], ok)]
        assert pred["r_att"].to_numpy() == pytest.approx(
            pd.Series(att).groupby(each["stay_id"], sort=False).mean().loc[pred["stay_id"]].to_numpy())
        assert pred["well_formed"].to_numpy() == pytest.approx(
            ok.groupby(each["stay_id"], sort=False).mean().loc[pred["stay_id"]].to_numpy())
        texts = pd.read_json(out / "models" / name / "responses.jsonl", lines=True, dtype={"stay_id": str})
        assert len(texts) == 18  # the copy share counts every response of a stay
        assert pred["copied"].to_numpy() == pytest.approx(texts["text"].map(copies_number).astype(float)
                                                          .groupby(texts["stay_id"], sort=False).mean()
                                                          .loc[pred["stay_id"]].to_numpy())
        sd = by["probability"].std(ddof=0).loc[pred["stay_id"]]
        assert table.loc[name, "probability_sd_within"] == pytest.approx(sd.mean()) and sd.mean() > 0
        assert table.loc[name, "probability_sd_between"] == pytest.approx(pred["probability"].std(ddof=0))
        assert table.loc[name, "auroc"] == pytest.approx(roc_auc_score(pred["label"], pred["probability"]))
        assert pd.isna(table.loc[name, "reused_from"])
    html = (out / "report.html").read_text()
    assert "probability SD within a stay / between stays" in html
    assert f"{table.loc['pqd', 'probability_sd_within']:.3f} / {table.loc['pqd', 'probability_sd_between']:.3f}" in html
    assert "probability SD within" not in (evaluated["out"] / "report.html").read_text()  # one response a stay


def test_report_has_its_sections_and_images(evaluated):
    report = evaluated["out"] / "report.html"
    assert evaluated["result"].outputs["report"] == str(report)
    html = report.read_text()
    for anchor in ("comparison", "paired", "curves", "robustness", "generalisation"):
        assert f'id="{anchor}"' in html
    images = re.findall(r'<img alt="([a-z_]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert {a for a, _ in images} == {"roc", "pr", "calibration", "robustness_shuffle", "robustness_noise"}
    import base64

    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for _, b in images)
    for name in ("roc", "pr", "calibration", "robustness_shuffle", "robustness_noise"):
        assert (evaluated["out"] / f"{name}.png").stat().st_size > 1000
    assert "EAG-RL" in html and "not registered" in html and "ConCare expert" in html


def test_mlflow_has_the_report_and_the_metrics(evaluated):
    client = mlflow.MlflowClient()
    run = client.get_run(evaluated["result"].mlflow_run_id)
    assert run.data.tags["eagrl.stage"] == "evaluate"
    table = _table(evaluated)
    assert run.data.metrics["eag-rl_test_auroc"] == pytest.approx(table.loc["eag-rl", "auroc"])
    assert run.data.metrics["eag-rl_test_auroc_ci_low"] == pytest.approx(table.loc["eag-rl", "auroc_ci_low"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "report.html" in names and "evaluate" in names


def test_registry_versions_latest_alias_and_missing(evaluated):
    cfg, root = evaluated["cfg"], evaluated["root"]
    name = "eagrl-sft-mimic-iv-demo-readmission_30d"
    second = _register(cfg, name, root / "full")
    assert registry_version(name, "latest") == (str(second), "")
    assert registry_version(name, "1") == ("1", "")
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", "1")
    assert registry_version(name, "@champion") == ("1", "")
    number, why = registry_version(name, "@nope")
    assert number is None and name in why
    number, why = registry_version(name, "99")
    assert number is None and "not registered" in why
    assert registry_version("eagrl-nothing", "latest")[0] is None


def test_cli_scores_the_chosen_models(evaluated):
    from typer.testing import CliRunner

    from eagrl.cli import app

    cfg, root = evaluated["cfg"], evaluated["root"]
    common = ["evaluate", "--profile", "smoke", "--dataset", "mimic-iv-demo", "--task", "readmission_30d",
              "--workspace", cfg.workspace, "--out", str(root / "cli"), "--set", "evaluate.max_stays=4",
              "--set", "tracking.dvc=false",
              "--set", f"tracking.mlflow_tracking_uri={cfg.tracking.mlflow_tracking_uri}",
              "--set", "generation.cpu_threads=1"]
    res = CliRunner().invoke(app, [*common, "--models", "vanilla,dapo"])
    assert res.exit_code == 0, res.output
    assert "1 of 2 models scored" in res.output and "skipped: dapo" in res.output
    assert str(root / "cli" / "evaluate" / "report.html") in res.output.replace("\n", "")
    table = pd.read_csv(root / "cli" / "evaluate" / "table.csv")
    assert table["name"].tolist() == ["vanilla", "dapo"] and table["n"].tolist()[0] == 4
    bad = CliRunner().invoke(app, [*common, "--models", "nope"])
    assert bad.exit_code == 1 and "--models names ['nope']" in bad.output


def test_a_capped_split_is_a_seeded_stratified_sample_in_cohort_order():
    cohort = tjh_cohort()
    test = [str(s) for s in cohort.split_ids("test")]
    label = cohort.stays.assign(stay_id=cohort.stays["stay_id"].astype(str)).set_index("stay_id")["label"]
    ids = cohort.sample_ids("test", 4, seed=0)
    assert len(ids) == 4 and label[ids].nunique() == 2
    assert ids == [s for s in test if s in set(ids)]  # cohort order kept
    assert ids == cohort.sample_ids("test", 4, seed=0)
    assert {tuple(cohort.sample_ids("test", 4, seed=k)) for k in range(6)} != {tuple(ids)}
    assert cohort.sample_ids("test", None) == test == cohort.sample_ids("test", 100)
    cut = restricted(cohort, "test", ids)
    assert [str(s) for s in cut.split_ids("test")] == ids
    assert cut.split_ids("train") == cohort.split_ids("train")


def test_an_empty_split_is_a_data_error_naming_the_cohort_and_the_split(tmp_path):
    from eagrl.config.llm import GenerationConfig
    from eagrl.errors import DataError
    from eagrl.scoring.policy import evaluate_zero_shot

    no_test = restricted(tjh_cohort(), "test", [])
    with pytest.raises(DataError, match="the tjh/mortality cohort has no stays in split 'test'"):
        no_test.sample_ids("test", 4)
    with pytest.raises(DataError, match="no stays in split 'test'"):  # before any model is loaded
        evaluate_zero_shot(no_test, tmp_path, ModelConfig(source="tiny"), GenerationConfig())
    assert no_test.sample_ids("train", 4)  # the other splits are kept


def test_capped_samples_are_nested_and_keep_class_shares_where_the_head_is_one_class(shared_data):
    """The MCTS, RL and held-out checks take part of a split from Cohort.sample_ids: never a one-class head."""
    from eagrl.data.sources import get_source

    cfg = DataConfig(dataset="tjh", task="mortality")  # the whole cohort: its train split starts with survivors
    src = get_source("tjh")
    cohort = build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg)
    label = cohort.stays.assign(stay_id=cohort.stays["stay_id"].astype(str)).set_index("stay_id")["label"]
    train = [str(s) for s in cohort.split_ids("train")]
    assert label[train[:8]].nunique() == 1  # what the first 8 stays gave the search: one class
    share = float(label[train].mean())
    previous: set[str] = set()
    for n in range(2, 41):
        ids = cohort.sample_ids("train", n, seed=0)
        assert len(ids) == n and ids == [s for s in train if s in set(ids)]
        assert abs(int(label[ids].sum()) - n * share) < 1.0 + 1e-9  # each class its proportional share
        assert previous <= set(ids)  # nested: a larger cap only adds stays
        previous = set(ids)


def test_the_scoring_key_changes_with_what_decides_the_responses_and_not_with_throughput(tmp_path):
    from eagrl.config.llm import GenerationConfig
    from eagrl.scoring.keys import adapter_digest, scoring_key

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    model = ModelConfig(source="tiny", adapter=str(adapter))
    gen = GenerationConfig(temperature=0)
    key = scoring_key(model, gen, "cohort-a.dir", "test")
    assert key is not None and key == scoring_key(model.model_copy(update={"cache_dir": "/elsewhere"}), gen,
                                                  "cohort-a.dir", "test")
    for throughput in ({"batch_size": 1}, {"cpu_threads": 2}, {"prefix_cache_tokens": 0}):
        assert scoring_key(model, gen.model_copy(update=throughput), "cohort-a.dir", "test") == key, throughput
    for content in ({"max_answer_tokens": 3}, {"prompt_style": "vanilla"}, {"backend": "vllm"},
                    {"shuffle_fraction": 0.6}):
        assert scoring_key(model, gen.model_copy(update=content), "cohort-a.dir", "test") != key, content
    assert scoring_key(model, gen, "cohort-b.dir", "test") != key
    assert scoring_key(model, gen, "cohort-a.dir", "val") != key
    assert scoring_key(model.model_copy(update={"dtype": "bfloat16"}), gen, "cohort-a.dir", "test") != key
    assert scoring_key(model.model_copy(update={"adapter": None}), gen, "cohort-a.dir", "test") != key
    before = adapter_digest(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")  # retrained: other weights, same folder
    assert adapter_digest(adapter) != before and scoring_key(model, gen, "cohort-a.dir", "test") != key
    # sampled decoding, a sampled read-out, or a model known only by its folder: never reused
    assert scoring_key(model, gen.model_copy(update={"temperature": 0.7}), "cohort-a.dir", "test") is None
    assert scoring_key(model, gen.model_copy(update={"sample_readout": True}), "cohort-a.dir", "test") is None
    assert scoring_key(ModelConfig(source=str(adapter)), gen, "cohort-a.dir", "test") is None
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no adapter weights"):
        adapter_digest(adapter)
    assert scoring_key(model, gen, "cohort-a.dir", "test") is None  # the evaluation then loads it and says why
