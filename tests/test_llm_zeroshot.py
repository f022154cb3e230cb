"""Zero-shot evaluation writes the metrics contract; SmolLM2 answers TJH patients in P_QD form (slow)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from eagrl.llm.config import GenerationConfig, ModelConfig
from eagrl.llm.zeroshot import evaluate_zero_shot
from llm_helpers import tjh_cohort

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


@pytest.mark.slow
def test_smollm2_answers_tjh_patients_in_pqd_form(tmp_path):
    cohort = tjh_cohort()
    gen = GenerationConfig(depth=2, temperature=1.0, cpu_threads=1, max_subquestion_tokens=12, max_answer_tokens=16,
                           max_features_tokens=16, max_prompt_tokens=1024, compact=True, compact_last_values=2)
    m = evaluate_zero_shot(cohort, tmp_path, ModelConfig(dtype="bfloat16"), gen, max_stays=4, n_boot=0)
    assert m["test_well_formed_rate"] == 1.0 and m["test_parsed_rate"] == 1.0
    texts = [json.loads(line)["text"] for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert all(t.startswith("<subquestion>") and t.endswith("</final_answer>") for t in texts)
