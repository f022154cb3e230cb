"""Champion promotion against a local sqlite MLflow store: the alias moves only on a bootstrap-backed win."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from eagrl.errors import DataError
from eagrl.llm.loading import mlflow_model_dir
from eagrl.serve.server import resolve_model_uri
from eagrl.serve.promote import PREDICTIONS, promote, register_and_promote

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


def _promote(store, run_id, preds, **kw):
    uri = store[0]
    return register_and_promote(run_id, "policy", NAME, preds, tracking_uri=uri, n_boot=300, **kw)


def test_first_version_becomes_champion_and_the_model_is_servable_by_alias(store, monkeypatch):
    uri, client, _, tmp = store
    d = _promote(store, _run(store, "sft"), _preds(0.5))
    assert d.promoted and d.version == "1" and d.champion_version is None and "no version held" in d.reason
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
    other = _promote(store, _run(store, "b"), _preds(3.0, ids=[f"x{i}" for i in range(300)]))
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
    assert client.search_registered_models() == []


def test_promote_takes_a_version_the_training_stage_registered(store):
    uri, client, _, _ = store
    _promote(store, _run(store, "sft"), _preds(0.4, seed=1))
    run_id = _run(store, "rl")
    run = client.get_run(run_id)
    version = client.create_model_version(NAME, f"{run.info.artifact_uri}/policy", run_id=run_id).version
    d = promote(NAME, version, _preds(1.5, seed=2), tracking_uri=uri, n_boot=300)
    assert d.promoted and d.champion_version == "1"
    again = promote(NAME, version, _preds(1.5, seed=2), tracking_uri=uri, n_boot=300)
    assert not again.promoted and "already holds" in again.reason
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == str(version)
