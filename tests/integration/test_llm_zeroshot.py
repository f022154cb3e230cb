"""Zero-shot evaluation writes the metrics contract; SmolLM2 answers TJH patients in P_QD form (slow)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from support.llm import tjh_cohort

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.scoring.policy import evaluate_zero_shot

FAST = dict(cpu_threads=1, max_subquestion_tokens=4, max_answer_tokens=4, max_features_tokens=4, max_think_tokens=4,
            max_prompt_tokens=1024, compact=True, compact_last_values=2)


@pytest.mark.parametrize("style, depth", [("vanilla", 1), ("pqd", 2)])
def test_zero_shot_with_the_tiny_model(tmp_path, style, depth):
    cohort = tjh_cohort()
    gen = GenerationConfig(prompt_style=style, depth=depth, temperature=0.0, **FAST)
    m = evaluate_zero_shot(cohort, tmp_path, ModelConfig(source="tiny"), gen, n_boot=50)
    n = len(cohort.split_ids("test"))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["test_well_formed_rate"] == 1.0 and on_disk["test_parsed_rate"] == 1.0
    assert on_disk["test_n_stays"] == n
    assert 0.0 <= on_disk["test_auroc"] <= 1.0 and len(on_disk["test_auroc_ci"]) == 2
    assert on_disk["test_auprc_ci"][0] <= on_disk["test_auprc_ci"][1]
    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert len(preds) == n and preds["probability"].between(0, 1).all()
    assert len((tmp_path / "responses.jsonl").read_text().splitlines()) == n
    assert m["test_auroc"] == on_disk["test_auroc"]


def test_several_samples_a_stay_give_the_mean_probability_and_keep_every_response(tmp_path):
    cohort = tjh_cohort()
    gen = GenerationConfig(depth=2, temperature=1.0, **FAST)
    m = evaluate_zero_shot(cohort, tmp_path, ModelConfig(source="tiny"), gen, max_stays=5, n_boot=0, samples=4)
    preds = pd.read_csv(tmp_path / "predictions.csv", dtype={"stay_id": str})
    each = pd.read_csv(tmp_path / "samples.csv", dtype={"stay_id": str})
    assert len(preds) == 5 and each["sample"].tolist() == [0, 1, 2, 3] * 5
    assert each["stay_id"].tolist() == [s for s in preds["stay_id"] for _ in range(4)]
    by = each.groupby("stay_id", sort=False)["probability"]
    assert preds["probability"].to_numpy() == pytest.approx(by.mean().to_numpy())
    assert m["probability_sd_within"] == pytest.approx(by.std(ddof=0).mean()) and m["probability_sd_within"] > 0
    assert m["samples"] == 4 and m["test_n_stays"] == 5
    lines = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert [r["sample"] for r in lines] == [0, 1, 2, 3] * 5
    assert [r["probability"] for r in lines] == pytest.approx(each["probability"].tolist())

    # one response a stay into the same folder: the earlier responses are not left to be read as this one's
    evaluate_zero_shot(cohort, tmp_path, ModelConfig(source="tiny"), gen, max_stays=5, n_boot=0)
    assert not (tmp_path / "samples.csv").exists()
    with pytest.raises(ValueError, match="need sampled decoding"):
        evaluate_zero_shot(cohort, tmp_path / "greedy", ModelConfig(source="tiny"),
                           gen.model_copy(update={"temperature": 0.0}), max_stays=5, n_boot=0, samples=2)


@pytest.mark.slow
def test_smollm2_answers_tjh_patients_in_pqd_form(tmp_path):
    cohort = tjh_cohort()
    gen = GenerationConfig(depth=2, temperature=1.0, cpu_threads=1, max_subquestion_tokens=12, max_answer_tokens=16,
                           max_features_tokens=16, max_prompt_tokens=1024, compact=True, compact_last_values=2)
    m = evaluate_zero_shot(cohort, tmp_path, ModelConfig(dtype="bfloat16"), gen, max_stays=4, n_boot=0)
    assert m["test_well_formed_rate"] == 1.0 and m["test_parsed_rate"] == 1.0
    texts = [json.loads(line)["text"] for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert all(t.startswith("<subquestion>") and t.endswith("</final_answer>") for t in texts)
