"""train_expert end to end on a small synthetic cohort: files, metrics, attention table, reload; config checks."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from support.expert import synthetic_cohort

from eagrl.config import load_config
from eagrl.config.expert import ExpertConfig
from eagrl.errors import ConfigError, DataError
from eagrl.expert.attention import attention_table, observed_features, read_attention, top_k
from eagrl.expert.fit import load_expert, train_expert
from eagrl.expert.train import predict

SMALL = ExpertConfig(hidden=16, heads=2, ff_hidden=16, max_epochs=3, min_epochs=1, top_k=4, n_boot=50,
                     progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cohort, _ = synthetic_cohort(n_stays=160, missing=0.5, seed=1)
    out = tmp_path_factory.mktemp("expert")
    return cohort, train_expert(cohort, SMALL, out), out


def test_outputs_on_disk(trained):
    cohort, result, out = trained
    for p in (result.model_path, result.config_path, result.metrics_path, result.attention_path,
              result.predictions_path, out / "history.json"):
        assert p.is_file(), p
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    for k in ("test_auroc", "test_auprc", "test_f1", "test_brier"):
        lo, hi = metrics[f"{k}_ci"]
        assert lo <= metrics[k] <= hi
    # flat: numbers and two-number lists only (what MLflow and summary.json take)
    assert all(isinstance(v, (int, float)) or (isinstance(v, list) and len(v) == 2) for v in metrics.values())
    assert all(isinstance(v, float) for v in result.scalar_metrics().values())
    assert len(result.history) == metrics["epochs"] and 1 <= result.best_epoch <= metrics["epochs"]
    assert ExpertConfig.model_validate_json(result.config_path.read_text()) == SMALL
    # issue 28: how spread the final attention is and what C_exp holds, per stay and summarised
    for k in ("attention_entropy_median", "attention_entropy_p25", "attention_entropy_p75", "c_exp_size_mean",
              "c_exp_attention_mass_mean"):
        assert isinstance(metrics[k], float), k
    assert (0 <= metrics["attention_entropy_p25"] <= metrics["attention_entropy_median"]
            <= metrics["attention_entropy_p75"])
    assert metrics["attention_entropy_p75"] <= np.log(len(cohort.feature_names)) + 1e-6
    pred = pd.read_parquet(result.predictions_path)
    assert np.median(pred["attention_entropy"]) == pytest.approx(metrics["attention_entropy_median"])
    assert pred["c_exp_size"].between(1, SMALL.top_k).all() and pred["c_exp_attention_mass"].between(0, 1 + 1e-9).all()
    assert pred["c_exp_size"].mean() == pytest.approx(metrics["c_exp_size_mean"])


def test_attention_table(trained):
    cohort, result, _ = trained
    table = read_attention(result.attention_path)
    assert list(table.columns) == ["stay_id", "c_exp", *cohort.feature_names]
    assert sorted(table["stay_id"]) == sorted(cohort.stays["stay_id"])  # every stay of every split
    w = table[cohort.feature_names].to_numpy()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    observed = pd.DataFrame(observed_features(cohort), columns=cohort.feature_names,
                            index=cohort.tensors(None)["stay_ids"])
    for _, row in table.iterrows():
        assert isinstance(row["c_exp"], list) and 1 <= len(row["c_exp"]) <= SMALL.top_k
        assert all(observed.loc[row["stay_id"], n] for n in row["c_exp"])  # only measured features
        ranked = row[row["c_exp"]].to_numpy(dtype=float)
        assert (np.diff(ranked) <= 0).all()  # highest weight first


def test_top_k_only_among_allowed_features():
    w = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    names = ["a", "b", "c"]
    assert top_k(w, names, 2) == [["a", "b"], ["c", "b"]]
    allowed = np.array([[False, True, True], [True, False, False]])
    assert top_k(w, names, 2, allowed) == [["b", "c"], ["a"]]
    with pytest.raises(DataError, match="shape"):
        attention_table(["s1"], w, names, 2)


def test_reloaded_model_predicts_the_same(trained):
    cohort, result, _ = trained
    model, cfg, names = load_expert(result.model_path)
    assert cfg == SMALL and names == cohort.feature_names
    p, _ = predict(model, cohort.tensors("test"))
    saved = pd.read_parquet(result.predictions_path).set_index("stay_id")
    test_ids = cohort.tensors("test")["stay_ids"]
    np.testing.assert_allclose(p, saved.loc[test_ids, "prob"].to_numpy(), atol=1e-6)
    assert set(saved["split"]) == {"train", "val", "test"}


def test_config_cross_field_checks():
    with pytest.raises(ValidationError, match="hidden=30, heads=4"):
        ExpertConfig(hidden=30)
    with pytest.raises(ValidationError, match="8 > 4"):
        ExpertConfig(min_epochs=8, max_epochs=4)
    with pytest.raises(ValidationError, match="gpu0"):
        ExpertConfig(device="gpu0")
    with pytest.raises(ConfigError, match="expert.heads"):
        load_config("smoke", {"expert.heads": 3})
    assert ExpertConfig(device="cuda:1").device == "cuda:1"


def test_stage_input_checks(tmp_path):
    cohort, _ = synthetic_cohort(n_stays=80, n_features=4, informative=(0, 1), seed=2)
    with pytest.raises(ConfigError, match="top_k=5 exceeds the 4 features"):
        train_expert(cohort, SMALL.model_copy(update={"top_k": 5}), tmp_path)
    one_class = cohort.stays.copy()
    one_class["label"] = 0
    cohort.stays = one_class
    with pytest.raises(DataError, match="both classes"):
        train_expert(cohort, SMALL.model_copy(update={"top_k": 2}), tmp_path)


def test_gpu_when_present():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cohort, _ = synthetic_cohort(n_stays=80, seed=4)
    from eagrl.expert.fit import build_model
    from eagrl.expert.train import fit

    cfg = SMALL.model_copy(update={"device": "cuda", "max_epochs": 1})
    fitted = fit(build_model(12, 2, cfg), cohort.tensors("train"), cohort.tensors("val"), cfg)
    assert next(fitted.model.parameters()).is_cuda
