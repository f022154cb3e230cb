"""The LLM rows' diagnostics on hand-built inputs: AUROC of 1 - p, and answers that copy an earlier number."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from eagrl.errors import DataError
from eagrl.evaluate.diagnostics import copied_per_stay, copies_number, llm_diagnostics

STEP = "<subquestion>What is the lactate?</subquestion><answer>{}</answer>"


def response(reasoning: str, answer: str) -> str:
    return (STEP.format(reasoning) + "<important_features>albumin</important_features>"
            f"<final_answer>{answer}</final_answer>")


@pytest.mark.parametrize("text, copied", [
    (response("The risk is 0.83 here.", "0.83"), True),  # the two-decimal answer written before
    (response("The risk is .83 here.", "0.83"), True),
    (response("Risk about 0.8, rising.", "0.83"), True),  # the same first digit after "0."
    (response("Risk about 0.87.", "0.83"), True),
    (response("Risk about 0.91.", "0.83"), False),  # another first digit
    (response("Lactate 10.85 mmol/L on day 8.", "0.83"), False),  # 10.85 is no "0.8...", 8 no 0.83
    (response("83% of patients like this die.", "0.83"), False),  # percentages count by value only
    (response("Nothing numeric here.", "0.83"), False),
    (response("Risk 0.8 but", "yes"), False),  # the yes/no readout's word copies nothing
    (response("Risk 0.8 but", "no"), False),
    (response("Risk 0.8 but", "0.2"), False),
    (response("Day 1 was stable.", "1"), True),  # an integer answer by value
    ("<final_answer>0.8</final_answer>", False),  # nothing written before it
    ("The risk is 0.8 and no answer tag", False),
    # the answer is the last <final_answer>: an earlier one is text written before it
    ("<final_answer>0.4</final_answer> again <final_answer>0.45</final_answer>", True),
    # an unclosed answer is read to the end of the text
    ("Probably 0.35 <final_answer>0.3", True),
])
def test_copies_number_on_hand_written_responses(text, copied):
    assert copies_number(text) is copied


def test_copy_share_per_stay_reads_every_response_of_the_stay(tmp_path):
    path = tmp_path / "responses.jsonl"
    rows = [{"stay_id": "a", "text": response("risk 0.7", "0.75"), "probability": 0.75, "sample": 0},
            {"stay_id": "a", "text": response("risk 0.2", "0.75"), "probability": 0.75, "sample": 1},
            {"stay_id": "b", "text": response("risk 0.2", "no"), "probability": 0.1},
            {"stay_id": 7, "text": response("0.55 now", "0.55"), "probability": 0.55}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    shares = copied_per_stay(path, ["b", "7", "a"])
    assert shares.index.tolist() == ["b", "7", "a"] and shares.tolist() == [0.0, 1.0, 0.5]
    assert copied_per_stay(tmp_path / "none.jsonl", ["a"]) is None
    with pytest.raises(DataError, match=r"responses.jsonl has no response for stays \['c'\]"):
        copied_per_stay(path, ["a", "c"])
    path.write_text('{"stay_id": "a"}\n')
    with pytest.raises(DataError, match=r"responses.jsonl:1: not a response record"):
        copied_per_stay(path, ["a"])


def test_auroc_inverted_is_the_auroc_of_one_minus_p_with_its_interval():
    rng = np.random.default_rng(3)
    y = np.array([0, 1] * 15)
    p = np.clip(0.5 - 0.2 * (y - 0.5) + rng.normal(0, 0.15, y.size), 0, 1)  # ranks the wrong way round
    pred = pd.DataFrame({"label": y, "probability": p, "copied": [1.0, 0.0, 0.5] * 10})
    out = llm_diagnostics(pred, n_boot=200, ci=0.9, seed=0)
    assert out["auroc_inverted"] == pytest.approx(roc_auc_score(y, 1 - p), abs=1e-12)
    assert out["auroc_inverted"] == pytest.approx(1 - roc_auc_score(y, p), abs=1e-12) and out["auroc_inverted"] > 0.7
    lo, hi = out["auroc_inverted_ci"]
    assert lo <= out["auroc_inverted"] <= hi and hi - lo > 0.01
    assert out["copy_share"] == pytest.approx(0.5) and out["copy_share_ci"][0] <= 0.5 <= out["copy_share_ci"][1]
    tied = llm_diagnostics(pred.assign(probability=0.5).drop(columns="copied"), n_boot=0, ci=0.9, seed=0)
    assert tied == {"auroc_inverted": 0.5}  # ties count one half; no copied column: no copy share
