"""The direct fine-tune: the same LoRA policy trained on the answer slot alone, with no reasoning.

Each training stay becomes one example: its prompt in the vanilla style (same serialisation as every other
prompt) followed by ``<final_answer>`` and the label's word at the answer slot, exactly what the vanilla style's
structured generation writes before it reads the probability. :func:`eagrl.sft.train.run_sft` trains it with the
answer-slot loss only (there are no reasoning tokens). The result is the ceiling of what supervision through the
readout gives this backbone: the EAG-RL rows are measured against it (issue "Make the policy learn").

``write_direct_examples`` writes them as a trajectory file (the format ``run_sft`` reads), so the same loader,
collator and trainer serve both SFT sets.
"""
from __future__ import annotations

import json
from pathlib import Path

from eagrl.config.llm import GenerationConfig
from eagrl.data.cohort import Cohort
from eagrl.llm.parse import FINAL
from eagrl.llm.prompt import build_prompt, encode
from eagrl.llm.structured import answer_words, tokenizer_encode


def direct_generation(gen_cfg: GenerationConfig) -> GenerationConfig:
    """The generation settings of the direct policy: the vanilla style with the yes/no readout."""
    return gen_cfg.model_copy(update={"prompt_style": "vanilla", "readout": "yesno", "structured": True})


def write_direct_examples(cohort: Cohort, split: str, gen_cfg: GenerationConfig, tokenizer, out: str | Path,
                          max_stays: int | None = None, seed: int = 0) -> Path:
    """One trajectory record a stay of ``split``: vanilla prompt, ``<final_answer>`` + the label's word (inserted,
    so no language-model target; the answer-slot loss trains it), ``</final_answer>``."""
    gen = direct_generation(gen_cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for sid in cohort.sample_ids(split, max_stays, seed):
            rec = cohort.patient(sid)
            prompt = build_prompt(rec, cohort.features, dataset=cohort.dataset, task=cohort.task, cfg=gen,
                                  tokenizer=tokenizer)
            fh.write(json.dumps(direct_record(str(sid), int(rec.label), encode(prompt, tokenizer), tokenizer),
                                separators=(",", ":")) + "\n")
    return out


def direct_record(stay_id: str, label: int, prompt_ids: list[int], tokenizer, before: str = "") -> dict:
    """One stay's trajectory record: ``before`` (inserted text, none for the direct policy), ``<final_answer>``, the
    label's word at the answer slot (inserted: the answer-slot loss trains it), ``</final_answer>``."""
    enc = tokenizer_encode(tokenizer)
    head = enc(before + f"<{FINAL}>")
    ids = head + [answer_words(enc)[label]] + enc(f"</{FINAL}>")
    return {"stay_id": stay_id, "label": label, "prompt_ids": prompt_ids, "token_ids": ids, "mask": [False] * len(ids),
            "readout_index": len(head)}
