"""Serialization: the exact line formats (full series, compact latest values), token budgets, order control,
the chat template, and the answer the format asks for by readout."""
from __future__ import annotations

import math

import pytest
from support.llm import FEATURES, patient, tjh_cohort

from eagrl.config.llm import GenerationConfig
from eagrl.llm.loading import build_tiny
from eagrl.llm.prompt import build_prompt, encode, feature_order, format_value


def _prompt(**kw):
    tokenizer = kw.pop("tokenizer", None)
    order = kw.pop("order", None)
    dataset = kw.pop("dataset", "tjh")
    task = kw.pop("task", "mortality")
    kw.setdefault("serialization", "full")
    return build_prompt(patient(), FEATURES, dataset=dataset, task=task, cfg=GenerationConfig(**kw),
                        tokenizer=tokenizer, order=order)


def test_feature_lines_and_header_are_exact():
    p = _prompt(max_prompt_tokens=None)
    lines = p.user.splitlines()
    assert "- hemoglobin (unit: g/L; reference range: 120-175): [136, NaN, 140]" in lines
    assert "- procalcitonin (unit: ng/mL; reference range: <0.05): [0.09, NaN, NaN]" in lines
    assert "- eGFR (unit: mL/min/1.73m2; reference range: >90): [NaN, NaN, NaN]" in lines
    assert "- PH value (unit: n/a; reference range: unknown): [6.5, NaN, 6]" in lines
    assert "Patient: sex male, age 73 years." in lines
    assert "Number of visits: 3" in lines
    assert "Visit times (days since the first visit): [0, 2, 5]" in lines
    assert p.features_shown == [f.name for f in FEATURES]
    assert "COVID-19" in p.system and "in-hospital mortality" in p.user
    assert "<important_features>" in p.user and "<subquestion>" in p.user


def test_domains_tasks_and_styles():
    icu = _prompt(dataset="mimic-iv-demo", task="readmission_30d", max_prompt_tokens=None)
    assert "intensive care" in icu.system and "within 30 days" in icu.user
    vanilla = _prompt(prompt_style="vanilla", max_prompt_tokens=None)
    assert "<final_answer>" in vanilla.user and "<subquestion>" not in vanilla.user
    think = _prompt(prompt_style="think", max_prompt_tokens=None)
    assert "<think>" in think.user
    with pytest.raises(ValueError, match="unknown task"):
        _prompt(task="sepsis")


def test_compact_mode_drops_unmeasured_and_keeps_last_values():
    p = _prompt(compact=True, compact_last_values=2, max_prompt_tokens=None)
    assert "eGFR" not in p.features_shown and p.dropped_features == ["eGFR"]
    assert "- Lactate dehydrogenase (unit: U/L; reference range: 120-250): [701, 880]" in p.user
    assert "- procalcitonin (unit: ng/mL; reference range: <0.05): [0.09]" in p.user
    assert p.values_kept == 2


def test_deterministic_and_order_control():
    assert _prompt().text == _prompt().text
    order = [f.name for f in reversed(FEATURES)]
    p = _prompt(order=order, max_prompt_tokens=None)
    assert p.features_shown == order
    names = [f.name for f in FEATURES]
    assert feature_order(names, 0.0, 1) == names
    shuffled = feature_order(names, 1.0, 1, salt="p1")
    assert sorted(shuffled) == sorted(names) and shuffled != names
    assert shuffled == feature_order(names, 1.0, 1, salt="p1")
    partial = feature_order(names * 5, 0.2, 3)  # 30 lines, 6 of them move
    assert sum(a != b for a, b in zip(partial, names * 5)) <= 6
    s = _prompt(shuffle_fraction=1.0, shuffle_seed=4, max_prompt_tokens=None)
    assert sorted(s.features_shown) == sorted(names) and s.features_shown != names
    with pytest.raises(ValueError, match="not in the schema"):
        _prompt(order=["hemoglobin", "nonsense"])


def test_chat_template_and_token_budget_with_a_tokenizer():
    _, tok = build_tiny()
    p = _prompt(tokenizer=tok, max_prompt_tokens=None)
    assert p.text.startswith("<|im_start|>system\n") and p.text.endswith("<|im_start|>assistant\n")
    assert p.n_tokens == len(encode(p, tok))
    tight = _prompt(tokenizer=tok, max_prompt_tokens=p.n_tokens - 40)
    assert tight.n_tokens <= p.n_tokens - 40
    assert tight.values_kept is not None  # the compact view was used first
    plain = _prompt(tokenizer=tok, chat_template=False, max_prompt_tokens=None)
    assert "<|im_start|>" not in plain.text


def test_budget_on_real_tjh_patients():
    cohort = tjh_cohort()
    _, tok = build_tiny()
    cfg = GenerationConfig(max_prompt_tokens=1200, serialization="full")
    for sid in cohort.split_ids("train")[:5]:
        p = build_prompt(cohort.patient(sid), cohort.features, dataset="tjh", task="mortality", cfg=cfg, tokenizer=tok)
        assert p.n_tokens <= 1200
        assert len(p.features_shown) + len(p.dropped_features) == len(cohort.features)
        assert all(f"- {name} (unit: " in p.user for name in p.features_shown)


def test_format_value():
    assert [format_value(v) for v in (136.0, 0.09, 8.77, 123.26, math.nan, None, 1e-5, -2.5)] == \
        ["136", "0.09", "8.77", "123.3", "NaN", "NaN", "1e-05", "-2.5"]


def test_the_budget_drops_the_fewest_least_measured_features():
    """Over a sweep of budgets: the prompt fits, the least-measured lines go first, a larger budget never
    drops more, and the budget equal to a result's own size gives that same result (minimal drops)."""
    cohort = tjh_cohort()
    _, tok = build_tiny()
    rec = cohort.patient(cohort.split_ids("train")[0])
    measured = {n: sum(not math.isnan(v) for v in rec.values.get(n, [])) for n in [f.name for f in cohort.features]}

    def at(budget):
        cfg = GenerationConfig(max_prompt_tokens=budget, compact_last_values=1, serialization="full")
        return build_prompt(rec, cohort.features, dataset="tjh", task="mortality", cfg=cfg, tokenizer=tok)

    compact = build_prompt(rec, cohort.features, dataset="tjh", task="mortality", tokenizer=tok,
                           cfg=GenerationConfig(compact=True, compact_last_values=1, serialization="full"))
    previous = None
    for budget in range(compact.n_tokens - 240, compact.n_tokens, 24):
        p = at(budget)
        assert p.n_tokens <= budget
        dropped = [n for n in p.dropped_features if measured[n] > 0]
        assert dropped and max(measured[n] for n in dropped) <= min(measured[n] for n in p.features_shown)
        if previous is not None:
            assert len(p.dropped_features) <= len(previous.dropped_features)
        assert at(p.n_tokens).features_shown == p.features_shown
        previous = p


# ====================================================================== compact serialization
def test_compact_lines_give_last_value_unit_flag_and_trend():
    """Each measured feature: its last value and unit, HIGH/LOW against the range, rising/falling against the
    stay's first value; a never-measured feature is left out; schema order."""
    p = _prompt(serialization="compact", max_prompt_tokens=None)
    lines = p.user.splitlines()
    assert "- hemoglobin: 140 g/L" in lines  # 136 -> 140 (+3%): in range, no trend mark
    assert "- Lactate dehydrogenase: 880 U/L, HIGH, rising" in lines  # 701 -> 880 (+26%), above 250
    assert "- procalcitonin: 0.09 ng/mL, HIGH" in lines  # one value: no trend
    assert "- PH value: 6" in lines  # 6.5 -> 6 (-8%): within the 10% trend threshold; no unit, no range
    assert "eGFR" not in p.user and p.dropped_features == ["eGFR"]
    assert p.features_shown == [f.name for f in FEATURES if f.name != "eGFR"]
    assert "Latest values" in p.user and "[" not in "".join(x for x in lines if x.startswith("- "))


def test_compact_budget_drops_in_range_lines_before_flagged_ones():
    cohort = tjh_cohort()
    _, tok = build_tiny()
    rec = cohort.patient(cohort.split_ids("train")[0])
    whole = build_prompt(rec, cohort.features, dataset="tjh", task="mortality", tokenizer=tok,
                         cfg=GenerationConfig(serialization="compact", max_prompt_tokens=None))
    flagged = {line[2:].split(":")[0] for line in whole.user.splitlines()
               if line.startswith("- ") and (", HIGH" in line or ", LOW" in line)}
    assert 0 < len(flagged) < len(whole.features_shown)
    budget = whole.n_tokens - 60
    tight = build_prompt(rec, cohort.features, dataset="tjh", task="mortality", tokenizer=tok,
                         cfg=GenerationConfig(serialization="compact", max_prompt_tokens=budget))
    assert tight.n_tokens <= budget
    gone = [n for n in whole.features_shown if n not in tight.features_shown]
    assert gone and not set(gone) & flagged, "a flagged line went while an in-range one stayed"
    assert tight.features_shown == [n for n in whole.features_shown if n not in gone]  # order kept


def test_the_format_asks_for_the_readouts_answer():
    yesno = _prompt(readout="yesno", max_prompt_tokens=None)
    assert "<final_answer>yes or no</final_answer>" in yesno.user and "Answer yes if the patient will die" in yesno.user
    digits = _prompt(readout="digits", max_prompt_tokens=None)
    assert "<final_answer>a probability between 0 and 1, such as 0.27</final_answer>" in digits.user
    assert "Answer yes" not in digits.user
