"""Champion promotion against a local sqlite MLflow store: the alias moves only on a bootstrap-backed win."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from eagrl.errors import DataError
from eagrl.llm.loading import mlflow_model_dir
from eagrl.promote.decision import PREDICTIONS, promote, register_and_promote
from eagrl.serve.server import resolve_model_uri

NAME = "eagrl-policy"


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("promotion", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, exp, tmp_path


def _run(store, tag: str) -> str:
    """A run holding a model folder (what the RL stage logs)."""
    uri, client, exp, tmp = store
    run_id = client.create_run(exp, run_name=tag).info.run_id
    folder = tmp / tag / "policy"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": tag}))
    client.log_artifacts(run_id, str(folder), artifact_path="policy")
    return run_id


def _preds(strength: float, n: int = 300, seed: int = 0, ids=None) -> pd.DataFrame:
    """Predictions whose AUROC grows with ``strength`` on one fixed set of labelled stays."""
    y = np.random.default_rng(123).random(n) < 0.3
    noise = np.random.default_rng(seed).normal(size=n)
    p = 1 / (1 + np.exp(-(strength * (2 * y - 1) + noise)))
    return pd.DataFrame({"stay_id": ids if ids is not None else [f"s{i}" for i in range(n)],
                         "label": y.astype(int), "probability": p})


BASE = _preds(0.0, seed=9)  # the zero-shot base model on the same stays: about chance (AUROC near 0.5)


def _promote(store, run_id, preds, baseline=BASE, **kw):
    uri = store[0]
    return register_and_promote(run_id, "policy", NAME, preds, baseline=baseline, tracking_uri=uri, n_boot=300, **kw)


def test_first_version_becomes_champion_and_the_model_is_servable_by_alias(store, monkeypatch):
    uri, client, _, tmp = store
    d = _promote(store, _run(store, "sft"), _preds(0.5))
    assert d.promoted and d.version == "1" and d.champion_version is None and "no version held" in d.reason
    assert d.floor["passed"] and d.floor["auroc_ci"][0] > 0.5 and d.floor["baseline_diff"] >= 0
    mv = client.get_model_version_by_alias(NAME, "champion")
    assert str(mv.version) == "1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what the serving pod is given
    resolved = resolve_model_uri(f"models:/{NAME}@champion")
    assert resolved == f"models:/{NAME}/1"
    local = mlflow_model_dir(resolved, tmp / "cache")  # what `eagrl serve --model models:/...` loads
    assert json.loads((local / "config.json").read_text()) == {"model": "sft"}
    assert mv.tags["eagrl.promotion.decision"] == "promoted"


def test_a_better_model_takes_the_alias_and_a_worse_one_does_not(store):
    uri, client, _, _ = store
    _promote(store, _run(store, "sft"), _preds(0.4, seed=1))
    rl_run = _run(store, "rl")
    better = _promote(store, rl_run, _preds(1.5, seed=2))
    assert better.promoted and better.version == "2" and better.champion_version == "1"
    assert better.auroc > better.champion_auroc and better.comparison["diff_ci"][0] > 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert client.get_model_version(NAME, "1").tags["eagrl.promotion.replaced_by"] == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["eagrl.promotion.decision"] == "promoted" and "CI [" in tags["eagrl.promotion.reason"]
    assert tags["eagrl.promotion.floor"] == "passed" and "clears the promotion floor" in tags["eagrl.promotion.reason"]
    assert float(tags["eagrl.promotion.auroc_diff"]) == pytest.approx(better.comparison["diff"], abs=1e-6)
    run = client.get_run(rl_run)
    assert run.data.metrics["promotion_promoted"] == 1.0 and run.data.tags["eagrl.promotion.compared_with"] == "1"
    assert PREDICTIONS in [f.path for f in client.list_artifacts(rl_run, "eagrl_eval")]

    worse_run = _run(store, "rl-worse")
    worse = _promote(store, worse_run, _preds(0.3, seed=3))
    assert not worse.promoted and worse.version == "3" and "stays on v2" in worse.reason
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert client.get_model_version(NAME, "3").tags["eagrl.promotion.decision"] == "rejected"
    assert client.get_run(worse_run).data.metrics["promotion_promoted"] == 0.0


def test_a_tie_does_not_promote(store):
    _, client, _, _ = store
    _promote(store, _run(store, "a"), _preds(1.0, seed=5))
    same = _promote(store, _run(store, "b"), _preds(1.0, seed=5))
    assert not same.promoted and same.comparison["diff"] == pytest.approx(0.0)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"


def test_different_test_sets_are_not_compared(store):
    _, client, _, _ = store
    _promote(store, _run(store, "a"), _preds(0.5))
    ids = [f"x{i}" for i in range(300)]
    other = _promote(store, _run(store, "b"), _preds(3.0, ids=ids), baseline=_preds(0.0, seed=9, ids=ids))
    assert not other.promoted and "not comparable" in other.reason
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"


def test_bad_predictions_are_refused_before_anything_is_registered(store):
    _, client, _, _ = store
    run_id = _run(store, "a")
    with pytest.raises(DataError, match=r"missing column\(s\) \['probability'\]"):
        _promote(store, run_id, _preds(1.0).drop(columns="probability"))
    bad = _preds(1.0)
    bad.loc[0, "probability"] = 1.5
    with pytest.raises(DataError, match="within \\[0, 1\\]"):
        _promote(store, run_id, bad)
    with pytest.raises(DataError, match=r"base model predictions: missing column\(s\) \['label'\]"):
        _promote(store, run_id, _preds(1.0), baseline=BASE.drop(columns="label"))
    assert client.search_registered_models() == []


def test_promote_takes_a_version_the_training_stage_registered(store):
    uri, client, _, _ = store
    _promote(store, _run(store, "sft"), _preds(0.4, seed=1))
    run_id = _run(store, "rl")
    run = client.get_run(run_id)
    version = client.create_model_version(NAME, f"{run.info.artifact_uri}/policy", run_id=run_id).version
    d = promote(NAME, version, _preds(1.5, seed=2), baseline=BASE, tracking_uri=uri, n_boot=300)
    assert d.promoted and d.champion_version == "1"
    again = promote(NAME, version, _preds(1.5, seed=2), baseline=BASE, tracking_uri=uri, n_boot=300)
    assert not again.promoted and "already holds" in again.reason
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == str(version)


# ------------------------------------------------------------------ the floor every candidate must clear
def _no_alias(client) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version_by_alias(NAME, "champion")
    except MlflowException:
        return True
    return False


def test_a_first_candidate_worse_than_chance_is_refused_and_stays_registered_with_the_reason(store):
    _, client, _, _ = store
    run_id = _run(store, "rl")
    wrong_way = _preds(-0.6, n=60, seed=4)  # ranks patients the wrong way round, as the 0.330
    d = _promote(store, run_id, wrong_way, baseline=_preds(0.0, n=60, seed=9))
    assert d.auroc < 0.5 and d.floor["auroc_ci"][0] < 0.5 and not d.floor["passed"]
    assert not d.promoted and d.version == "1" and d.champion_version is None
    assert d.reason.startswith("below the promotion floor: ") and "not above 0.5" in d.reason
    assert "stays unset (no version holds it)" in d.reason
    assert _no_alias(client), "a below-chance first candidate became champion"
    tags = client.get_model_version(NAME, "1").tags  # still a version, with why it was refused
    assert tags["eagrl.promotion.decision"] == "rejected" and tags["eagrl.promotion.floor"] == "failed"
    assert tags["eagrl.promotion.reason"] == d.reason and tags["eagrl.promotion.baseline"] == "pqd"
    assert json.loads(tags["eagrl.promotion.auroc_ci"])[0] == pytest.approx(d.floor["auroc_ci"][0], abs=1e-6)
    run = client.get_run(run_id)
    assert run.data.metrics["promotion_promoted"] == 0.0 and run.data.metrics["promotion_floor_passed"] == 0.0


def test_a_candidate_above_chance_but_worse_than_the_base_model_is_refused(store):
    _, client, _, _ = store
    d = _promote(store, _run(store, "rl"), _preds(0.5, seed=2), baseline=_preds(1.5, seed=9))
    assert d.floor["auroc_ci"][0] > 0.5 and d.floor["baseline_diff"] < 0  # better than chance, worse than the base
    assert not d.promoted and "the lower bound is above 0.5" in d.reason and ", below 0" in d.reason
    assert _no_alias(client)
    tags = client.get_model_version(NAME, "1").tags
    assert tags["eagrl.promotion.floor"] == "failed" and float(tags["eagrl.promotion.baseline_auroc_diff"]) < 0


def test_a_base_model_scored_on_other_stays_fails_the_floor(store):
    _, client, _, _ = store
    d = _promote(store, _run(store, "rl"), _preds(2.0), baseline=_preds(0.0, ids=[f"x{i}" for i in range(300)]))
    assert not d.promoted and "was not scored on the same test" in d.reason and _no_alias(client)


def test_above_the_floor_but_not_above_the_champion_is_refused_above_both_is_promoted(store):
    _, client, _, _ = store
    first = _promote(store, _run(store, "a"), _preds(1.5, seed=1))
    assert first.promoted and first.floor["passed"]
    floor_only = _promote(store, _run(store, "b"), _preds(0.5, seed=2))  # clears the floor, not the champion
    assert floor_only.floor["passed"] and floor_only.floor["auroc_ci"][0] > 0.5
    assert not floor_only.promoted and floor_only.comparison["diff_ci"][0] <= 0 and "stays on v1" in floor_only.reason
    tags = client.get_model_version(NAME, "2").tags
    assert tags["eagrl.promotion.floor"] == "passed" and tags["eagrl.promotion.decision"] == "rejected"
    reason = tags["eagrl.promotion.reason"]
    assert "clears the promotion floor" in reason and "stays on v1" in reason
    both = _promote(store, _run(store, "c"), _preds(3.0, seed=3))
    assert both.promoted and both.floor["passed"] and both.comparison["diff_ci"][0] > 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"
    assert client.get_model_version(NAME, "3").tags["eagrl.promotion.decision"] == "promoted"


def test_the_floor_is_in_the_config_with_safe_defaults():
    from eagrl.config import load_config

    for profile in ("smoke", "default", "paper"):
        pcfg = load_config(profile).promote
        assert (pcfg.min_auroc_low, pcfg.min_gain_over_baseline, pcfg.baseline_entry) == (0.5, 0.0, "pqd"), profile
    with pytest.raises(Exception, match="min_auroc_low"):
        load_config("smoke", {"promote.min_auroc_low": 0.3})  # a floor below chance is no floor


# ------------------------------------------------------------------ the stage: refused, promoted, reused
def _evaluation(store, tag: str, candidate: pd.DataFrame, base: pd.DataFrame, cfg) -> tuple[str, object]:
    """What the RL and evaluation stages leave for promotion: the policy logged and registered by its training
    run (as the RL stage does), table.csv naming that version, each row's predictions."""
    import mlflow

    from eagrl.llm.registry import log_policy

    uri, client, exp, tmp = store
    adapter = tmp / tag / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4}))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp, run_name=tag):
        info = log_policy(adapter, cfg.model, cfg.generation, "policy", registered_name="eagrl-eag-rl-test-task")
    scored = f"models:/eagrl-eag-rl-test-task/{info.registered_model_version}"
    entry, ev = cfg.rl.variant, tmp / f"evaluation-{tag}"
    for name, preds in ((entry, candidate), ("pqd", base)):
        (ev / "models" / name).mkdir(parents=True)
        preds.to_csv(ev / "models" / name / "predictions.csv", index=False)
    pd.DataFrame([{"name": "pqd", "status": "scored", "uri": cfg.model.source, "note": ""},
                  {"name": entry, "status": "scored", "uri": scored, "note": ""}]).to_csv(ev / "table.csv", index=False)
    return scored, ev


def _stage_cfg(store):
    from eagrl.config import load_config

    return load_config("smoke", {"workspace": str(store[3]), "tracking.mlflow_tracking_uri": store[0]})


def test_the_stage_refuses_a_below_chance_candidate_succeeds_says_why_and_a_rerun_reuses_it(store):
    from eagrl.promote.stage import promote_stage
    from eagrl.stage import FINGERPRINT

    _, client, _, tmp = store
    cfg, out = _stage_cfg(store), tmp / "out"
    uri, ev = _evaluation(store, "rl", _preds(-0.6, n=60, seed=4), _preds(0.0, n=60, seed=9), cfg)
    result = promote_stage(cfg, out, evaluation_dir=ev, candidate=uri)
    assert result.status == "succeeded" and result.message.startswith(
        f"nothing promoted: {uri} is registered as models:/{NAME}/1, not @champion: below the promotion floor: ")
    assert result.message.endswith("no version holds @champion yet") and "not above 0.5" in result.message
    assert result.metrics["promoted"] == 0.0 and result.metrics["floor_passed"] == 0.0
    assert "champion_version" not in result.metrics and result.outputs["champion_version"] == ""
    record = json.loads((out / "promote" / "promotion.json").read_text())
    assert not record["promoted"] and record["champion_now"] is None and record["candidate_source"] == uri
    assert record["reason"].startswith("below the promotion floor") and not record["floor"]["passed"]
    assert client.get_model_version(NAME, "1").tags["eagrl.promotion.reason"] == record["reason"]
    assert _no_alias(client)
    assert (out / "promote" / FINGERPRINT).is_file(), "a finished promotion records its fingerprint like any stage"

    again = promote_stage(cfg, out, evaluation_dir=ev, candidate=uri)
    assert again.message == f"reused (inputs unchanged): {result.message}" and again.metrics == result.metrics
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1


def test_the_stage_promotes_a_candidate_that_clears_the_floor_and_decides_again_when_the_registry_moved(store):
    from eagrl.promote.stage import promote_stage

    _, client, _, tmp = store
    cfg, out = _stage_cfg(store), tmp / "out"
    uri, ev = _evaluation(store, "rl", _preds(1.5, seed=2), BASE, cfg)
    result = promote_stage(cfg, out, evaluation_dir=ev, candidate=uri)
    assert result.metrics["promoted"] == 1.0 and result.metrics["floor_passed"] == 1.0
    assert result.message.startswith(f"{uri} is models:/{NAME}/1: promoted to @champion (clears the promotion floor")
    assert result.metrics["candidate_auroc_ci"][0] > 0.5 and result.metrics["baseline_auroc_diff"] > 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    # the registry is as the stage left it (its own promotion): a rerun reuses the decision
    assert promote_stage(cfg, out, evaluation_dir=ev, candidate=uri).message.startswith("reused")
    # someone else moved the alias: decided again, on the registry as it is now
    client.delete_registered_model_alias(NAME, "champion")
    again = promote_stage(cfg, out, evaluation_dir=ev, candidate=uri)
    assert not again.message.startswith("reused") and again.metrics["promoted"] == 1.0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1


def test_serving_the_champion_before_there_is_one_names_the_missing_alias_and_how_to_get_one(store):
    from support.cli import run_cli

    _, client, _, tmp = store  # the store is tmp/mlflow.db: the default of a command run in tmp
    res = run_cli("serve", "--model", f"models:/{NAME}@champion", cwd=tmp, timeout=120)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("eagrl: error:")]
    assert res.returncode == 1 and len(errors) == 1, res.stderr[-2000:]
    assert f"no version of {NAME} holds the 'champion' alias" in errors[0]
    assert f"no registered model '{NAME}'" in errors[0]
    _promote(store, _run(store, "rl"), _preds(-0.6, n=60, seed=4), baseline=_preds(0.0, n=60, seed=9))  # refused
    res = run_cli("serve", "--model", f"models:/{NAME}@champion", cwd=tmp, timeout=120)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("eagrl: error:")]
    assert res.returncode == 1 and len(errors) == 1, res.stderr[-2000:]
    assert f"{NAME} has 1 version(s), none promoted" in errors[0] and "make run" in errors[0]
    assert f"--model models:/{NAME}/<version>" in errors[0]


def test_the_stage_decides_nothing_without_the_base_model_s_predictions(store):
    from eagrl.promote.stage import promote_stage

    _, client, _, tmp = store
    cfg = _stage_cfg(store)
    uri, ev = _evaluation(store, "rl", _preds(1.5, seed=2), BASE, cfg)
    table = pd.read_csv(ev / "table.csv", keep_default_na=False)
    table.loc[table["name"] == "pqd", ["status", "note"]] = ["skipped", "not in evaluate.models"]
    table.to_csv(ev / "table.csv", index=False)
    with pytest.raises(DataError, match=r"row 'pqd' is skipped \(not in evaluate.models\); the promotion floor pairs"):
        promote_stage(cfg, tmp / "out", evaluation_dir=ev, candidate=uri)
    assert not client.search_registered_models(f"name = '{NAME}'") and _no_alias(client)
