"""EHR to prompt: the serialization of one patient, in the P_QD, vanilla or think-then-answer style.

A prompt is a system message (the physician the model plays, by domain), then a user message with the task,
the response format and the patient. Two serializations (``generation.serialization``):

* ``compact`` (smoke and default profiles): one line a feature the stay measured, its last value, unit, a
  HIGH/LOW flag against the reference range and a trend mark against the stay's first value::

      Patient: sex male, age 73 years.
      Number of visits: 3
      Visit times (days since the first visit): [0, 4, 6]
      Latest values (HIGH/LOW: outside the reference range; rising/falling: against the first value):
      - lactate dehydrogenase: 412 U/L, HIGH, rising
      - hemoglobin: 140 g/L

  Features come in the schema's fixed order (never the expert's: that would leak C_exp into the prompt).
  Over the token budget, lines are dropped in a documented order: first the in-range ones, last line first,
  then the flagged ones, last line first; ``Prompt.dropped_features`` lists them.
* ``full`` (paper profile): every value of every feature in visit order::

      - hemoglobin (unit: g/L; reference range: 115-150): [136, NaN, 140]

  Its budget is met by, in turn, the compact view of the series (never-measured features dropped, the last m
  values kept), fewer values per feature, then dropping the least-measured features.

Everything is deterministic: the same record, config and tokenizer give the same text, so served and trained
prompts are identical. Feature order is the cohort's, an explicit permutation, or a seeded partial shuffle
(``shuffle_fraction``) for the robustness experiments.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from eagrl.config.llm import GenerationConfig
from eagrl.data.cohort import PatientRecord
from eagrl.data.schema import FeatureSpec

COVID_DATASETS = ("tjh",)

SYSTEM_PROMPTS = {
    "icu": (
        "You are an experienced intensive care unit (ICU) physician. You read a patient's electronic health "
        "record (demographics and time series of laboratory tests and vital signs) and reason step by step, "
        "as a clinician would, about the patient's risk."
    ),
    "covid": (
        "You are an experienced physician who treats hospitalised COVID-19 patients. You read a patient's "
        "electronic health record (demographics and time series of laboratory tests) and reason step by "
        "step, as a clinician would, about the patient's risk."
    ),
}

TASKS = {
    "mortality": (
        "Task: estimate the probability that the patient dies during this hospital stay (in-hospital "
        "mortality), using only the record below."
    ),
    "readmission_30d": (
        "Task: estimate the probability that the patient is readmitted to hospital within 30 days of "
        "discharge (a death within 30 days counts as a readmission), using only the record below."
    ),
}

FORMATS = {
    "pqd": (
        "Response format: break the question into short sub-questions and answer each in turn, then name "
        "the features that mattered most and give your answer. Write exactly:\n"
        "<subquestion>a question about this patient</subquestion><answer>its answer</answer>\n"
        "(1 to {depth} such steps)\n"
        "<important_features>feature name; feature name; ...</important_features>\n"
        "<final_answer>{answer}</final_answer>\n"
        "Name the features exactly as they are written in the record."
    ),
    "vanilla": (
        "Response format: answer directly:\n"
        "<final_answer>{answer}</final_answer>"
    ),
    "think": (
        "Response format: first think step by step, then answer:\n"
        "<think>your reasoning</think>\n"
        "<final_answer>{answer}</final_answer>"
    ),
}

# What <final_answer> holds, by readout: a yes/no word (its two words' probabilities are the readout), or a number.
ANSWERS = {
    "yesno": "yes or no",
    "digits": "a probability between 0 and 1, such as 0.27",
}


@dataclass
class Prompt:
    system: str
    user: str
    text: str  # what the model reads: the chat template applied, ending where the response begins
    features_shown: list[str]
    dropped_features: list[str] = field(default_factory=list)
    values_kept: int | None = None  # last m values per feature, None: all visits
    n_tokens: int | None = None  # None: no tokenizer was given

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]

    def n_tokens_or_estimate(self) -> int:
        """Token count when a tokenizer was given, else about four characters a token."""
        return self.n_tokens if self.n_tokens is not None else len(self.text) // 4 + 1


# ====================================================================== formatting
def domain_of(dataset: str) -> str:
    return "covid" if dataset in COVID_DATASETS else "icu"


def format_value(v: float | None) -> str:
    """Short, exact-enough numbers: NaN for missing, integers without a decimal point, 2-3 significant decimals."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    v = float(v)
    if not math.isfinite(v):
        return "NaN"
    if v.is_integer() and abs(v) < 1e12:
        return str(int(v))
    a = abs(v)
    text = f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"
    if "e" not in text and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def feature_line(spec: FeatureSpec, values: Sequence[float]) -> str:
    vals = ", ".join(format_value(v) for v in values)
    return f"- {spec.name} (unit: {spec.unit or 'n/a'}; reference range: {spec.reference_range}): [{vals}]"


def _visit_times(times: Sequence[pd.Timestamp]) -> str:
    ts = pd.to_datetime(pd.Series(list(times)), errors="coerce")
    if ts.empty or ts.isna().all():
        return "Visit times: unknown"
    offsets = (ts - ts.min()).dt.total_seconds()
    daily = bool((ts.dropna().dt.normalize() == ts.dropna()).all())
    unit, scale = ("days", 86400.0) if daily else ("hours", 3600.0)
    vals = ", ".join("NaN" if pd.isna(o) else format_value(round(o / scale, 2)) for o in offsets)
    return f"Visit times ({unit} since the first visit): [{vals}]"


def patient_header(record: PatientRecord) -> str:
    sex = {1.0: "male", 0.0: "female"}.get(record.sex, "unknown") if not _nan(record.sex) else "unknown"
    age = "unknown" if _nan(record.age) else f"{format_value(record.age)} years"
    return (
        f"Patient: sex {sex}, age {age}.\n"
        f"Number of visits: {len(record.visit_times)}\n"
        f"{_visit_times(record.visit_times)}"
    )


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


# ====================================================================== feature order
def feature_order(
    names: Sequence[str], fraction: float = 0.0, seed: int = 0, salt: str = ""
) -> list[str]:
    """Shuffle round(fraction * n) of the names among their own positions (seeded; ``salt`` varies it per patient)."""
    names = list(names)
    k = int(round(fraction * len(names)))
    if k < 2:
        return names
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    pos = np.sort(rng.choice(len(names), size=k, replace=False))
    moved = rng.permutation(pos)
    out = list(names)
    for dst, src in zip(pos, moved):
        out[dst] = names[src]
    return out


# ====================================================================== prompt
def instructions(dataset: str, task: str, style: str, depth: int, readout: str = "digits") -> tuple[str, str]:
    """(system prompt, task + response format) for a dataset's domain, a task and the answer's readout."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if style not in FORMATS:
        raise ValueError(f"unknown prompt style {style!r}: choose one of {', '.join(FORMATS)}")
    task_text = TASKS[task] if readout == "digits" else TASKS[task] + " " + QUESTIONS[task]
    return SYSTEM_PROMPTS[domain_of(dataset)], task_text + "\n\n" + FORMATS[style].format(
        depth=depth, answer=ANSWERS[readout])


QUESTIONS = {  # the yes/no question the answer word replies to
    "mortality": "Answer yes if the patient will die during this stay, no if the patient will survive.",
    "readmission_30d": "Answer yes if the patient will be readmitted (or die) within 30 days, no otherwise.",
}


def build_prompt(
    record: PatientRecord,
    features: Sequence[FeatureSpec],
    *,
    dataset: str,
    task: str,
    cfg: GenerationConfig | None = None,
    tokenizer=None,
    order: Sequence[str] | None = None,
) -> Prompt:
    """Serialize one patient as the configured prompt style, within the token budget."""
    cfg = cfg or GenerationConfig()
    system, task_text = instructions(dataset, task, cfg.prompt_style, cfg.depth, cfg.readout)
    by_name = {f.name: f for f in features}
    names = list(order) if order is not None else [f.name for f in features]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"feature order names features not in the schema: {unknown[:5]}")
    names = feature_order(names, cfg.shuffle_fraction, cfg.shuffle_seed, salt=record.stay_id)
    series = {n: [float(v) for v in record.values.get(n, [])] for n in names}
    if cfg.serialization == "compact":
        return _compact_prompt(record, by_name, names, series, system, task_text, cfg, tokenizer)
    n_measured = {n: sum(not math.isnan(v) for v in vals) for n, vals in series.items()}

    def render(compact: bool, last: int | None, drop: set[str]) -> Prompt:
        shown, lines = [], []
        for n in names:
            if n in drop or (compact and n_measured[n] == 0):
                continue
            vals = series[n]
            if last is not None:
                vals = [v for v in vals if not math.isnan(v)][-last:]
            shown.append(n)
            lines.append(feature_line(by_name[n], vals))
        if last is None:
            legend = "Features (one line a feature, values in visit order, NaN = not measured):"
        else:
            legend = (f"Features (one line a feature: its last {last} measured values, oldest first; "
                      "features never measured are left out):")
        user = "\n".join([task_text, "", patient_header(record), legend, *lines])
        text = _apply_template(system, user, tokenizer, cfg.chat_template)
        dropped = [n for n in names if n not in set(shown)]
        return Prompt(system, user, text, shown, dropped, last, _count(text, tokenizer))

    prompt = render(cfg.compact, cfg.compact_last_values if cfg.compact else None, set())
    budget = cfg.max_prompt_tokens
    if budget is None or prompt.n_tokens_or_estimate() <= budget:
        return prompt
    # 1. compact view, then fewer values per feature
    last = cfg.compact_last_values
    while True:
        prompt = render(True, last, set())
        if prompt.n_tokens_or_estimate() <= budget or last == 1:
            break
        last = max(1, last // 2)
    if prompt.n_tokens_or_estimate() <= budget:
        return prompt
    # 2. drop the fewest least-measured features (ties: the later line goes first) that make the prompt fit:
    # a bisection over how many (fewer lines never take more tokens), so O(log n) renders, not one per feature
    victims = sorted(prompt.features_shown, key=lambda n: (n_measured[n], -names.index(n)))
    lo, hi, at_hi = 1, len(victims), None  # the answer lies in [lo, hi]; at_hi: the render of hi, once made
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = render(True, last, set(victims[:mid]))
        if candidate.n_tokens_or_estimate() <= budget:
            hi, at_hi = mid, candidate
        else:
            lo = mid + 1
    return at_hi or render(True, last, set(victims[:hi]))  # never rendered: drop them all (the fallback)


# ====================================================================== compact serialization
COMPACT_LEGEND = ("Latest values (HIGH/LOW: outside the reference range; rising/falling: against the first "
                  "value; features never measured are left out):")


def flag(spec: FeatureSpec, value: float) -> str:
    """HIGH / LOW against the reference range, "" inside it or where the range is unknown."""
    if spec.ref_high is not None and value > spec.ref_high:
        return "HIGH"
    if spec.ref_low is not None and value < spec.ref_low:
        return "LOW"
    return ""


def trend(first: float, last: float, threshold: float) -> str:
    """rising / falling when the last value is more than ``threshold`` (a share of |first|) away from the first."""
    delta = last - first
    scale = abs(first) if first != 0 else 1.0
    if abs(delta) <= threshold * scale:
        return ""
    return "rising" if delta > 0 else "falling"


def compact_line(spec: FeatureSpec, values: Sequence[float], threshold: float) -> str | None:
    """``- name: last unit, FLAG, trend`` of the measured values (oldest first); None when none was measured."""
    measured = [v for v in values if not math.isnan(v)]
    if not measured:
        return None
    last = measured[-1]
    marks = [m for m in (flag(spec, last), trend(measured[0], last, threshold) if len(measured) > 1 else "") if m]
    unit = f" {spec.unit}" if spec.unit else ""
    return f"- {spec.name}: {format_value(last)}{unit}" + "".join(f", {m}" for m in marks)


def _compact_prompt(record, by_name, names, series, system, task_text, cfg, tokenizer) -> Prompt:
    """The compact serialization within the token budget (module docstring: what is dropped first)."""
    lines = {n: compact_line(by_name[n], series[n], cfg.trend_threshold) for n in names}
    shown = [n for n in names if lines[n] is not None]

    def render(keep: list[str]) -> Prompt:
        user = "\n".join([task_text, "", patient_header(record), COMPACT_LEGEND, *(lines[n] for n in keep)])
        text = _apply_template(system, user, tokenizer, cfg.chat_template)
        kept = set(keep)
        return Prompt(system, user, text, list(keep), [n for n in names if n not in kept], 1, _count(text, tokenizer))

    prompt = render(shown)
    budget = cfg.max_prompt_tokens
    if budget is None or prompt.n_tokens_or_estimate() <= budget:
        return prompt
    flagged = {n for n in shown if flag(by_name[n], [v for v in series[n] if not math.isnan(v)][-1])}
    victims = [n for n in reversed(shown) if n not in flagged] + [n for n in reversed(shown) if n in flagged]
    lo, hi, at_hi = 1, len(victims), None  # bisection over how many lines go (fewer lines never take more tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = render([n for n in shown if n not in set(victims[:mid])])
        if candidate.n_tokens_or_estimate() <= budget:
            hi, at_hi = mid, candidate
        else:
            lo = mid + 1
    return at_hi or render([n for n in shown if n not in set(victims[:hi])])


def _apply_template(system: str, user: str, tokenizer, use_template: bool) -> str:
    if use_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{user}\n\nResponse:\n"


def _count(text: str, tokenizer) -> int | None:
    if tokenizer is None:
        return None
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(prompt: Prompt | str, tokenizer) -> list[int]:
    """Token ids of a prompt's text (the chat template already carries its special tokens)."""
    text = prompt.text if isinstance(prompt, Prompt) else prompt
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
