"""SFT's second phase: the answer slot trained after the policy's own text.

The evaluation, RL and serving read the answer slot after the reasoning the policy writes itself. SFT's first phase
trains the slot after the search's texts instead, and the slot learns those texts (measured on TJH, sessions 16-17:
after its own text the SFT policy ranks its own training stays at 0.63-0.73 AUROC where the direct fine-tune, with
no text before its slot, reaches 0.98). This phase closes that gap the way the readout is used: the trained policy
writes its greedy response for every stay of the training split (the held-out check's generation, so the texts
are those it will be read after), and the slot alone is trained on each stay's label after that text. The records
are slot-only (``"train_text": false``, :func:`eagrl.mcts.select.trains_text`): no reasoning token is trained,
so the text the policy writes is left as the first phase made it. ``sft.own_text_epochs`` passes; 0 switches the
phase off.

Before training, the readout of those same responses is the policy's fit on every training stay, reported as
``own_text_auroc_before`` (and the phase's last pass as the usual ``train_*`` metrics of the held-out check).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.config.sft import SFTConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.metrics import evaluate_binary

log = logging.getLogger(__name__)


@dataclass
class OwnTextResult:
    adapter_dir: Path
    metrics: dict[str, float]  # own_text_* numbers
    history: list[dict[str, float]]  # the phase's loss curve (its own step numbers)


def write_own_text_records(model, tokenizer, cohort: Cohort, model_cfg: ModelConfig, gen_cfg: GenerationConfig,
                           out: str | Path, *, split: str = "train", max_stays: int | None = None,
                           seed: int = 0) -> tuple[Path, dict[str, float]]:
    """The policy's greedy P_QD response to every stay of ``split`` as slot-only trajectory records (the format
    :func:`eagrl.sft.data.load_examples` reads); returns the file and the readout's AUROC on those responses.

    ``model`` is the policy being trained (a peft model); it is not changed: a merged copy writes the texts."""
    from eagrl.llm.prompt import build_prompt, encode
    from eagrl.llm.structured import StructuredGenerator
    from eagrl.scoring.policy import heldout_generation, merged_backend

    gen = heldout_generation(gen_cfg)
    if gen.readout != "yesno":
        raise DataError(f"training the answer slot after the policy's own text needs the yes/no readout, not "
                        f"generation.readout={gen.readout!r}; set sft.own_text_epochs 0")
    backend = merged_backend(copy.deepcopy(model), tokenizer, model_cfg, gen)  # the policy itself stays trainable
    generator = StructuredGenerator(backend, gen, cohort.features)
    stay_ids = cohort.sample_ids(split, max_stays, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    labels, probs, n_kept = [], [], 0
    with open(out, "w", encoding="utf-8") as fh:
        for start in range(0, len(stay_ids), gen.batch_size):
            chunk = stay_ids[start:start + gen.batch_size]
            records = [cohort.patient(s) for s in chunk]
            ids = [encode(build_prompt(r, cohort.features, dataset=cohort.dataset, task=cohort.task, cfg=gen,
                                       tokenizer=tokenizer), tokenizer) for r in records]
            groups = generator.generate(ids, n=1, seed=[gen.seed + start + i for i in range(len(chunk))])
            for sid, rec, group in zip(chunk, records, groups):
                resp = group[0]
                labels.append(int(rec.label))
                probs.append(resp.probability if resp.probability is not None else 0.5)
                if resp.readout_index is None:  # no slot was written (cannot happen with the yes/no readout)
                    continue
                fh.write(json.dumps({"stay_id": str(sid), "label": int(rec.label), "prompt_ids": resp.prompt_ids,
                                     "token_ids": resp.token_ids, "mask": resp.mask,
                                     "readout_index": int(resp.readout_index), "train_text": False,
                                     "probability": resp.probability},  # the slot's reading before the phase
                                    separators=(",", ":")) + "\n")
                n_kept += 1
            log.info("own text: %d/%d %s stays written", min(start + len(chunk), len(stay_ids)), len(stay_ids), split)
    del backend
    metrics = {"own_text_stays": float(n_kept), "own_text_generation_seconds": time.perf_counter() - t0}
    if len(set(labels)) == 2:
        metrics["own_text_auroc_before"] = evaluate_binary(np.array(labels), np.array(probs), metrics=("auroc",),
                                                           n_boot=0)["auroc"]
    return out, metrics


def train_slot_on_own_text(model, tokenizer, cohort: Cohort, model_cfg: ModelConfig, sft_cfg: SFTConfig,
                           gen_cfg: GenerationConfig, out_dir: str | Path, *, seed: int = 0) -> OwnTextResult:
    """Write the policy's own responses to the training stays, then train its answer slot after them for
    ``sft_cfg.own_text_epochs`` passes (the same trainer and slot loss as the first phase); save the adapter under
    ``out_dir/adapter``. ``model`` carries the trainable adapter and is trained in place."""
    from eagrl.llm.structured import answer_words, tokenizer_encode, yes_no_ids
    from eagrl.sft.data import load_examples
    from eagrl.sft.train import build_trainer, train_and_save

    out = Path(out_dir)
    path, metrics = write_own_text_records(model, tokenizer, cohort, model_cfg, gen_cfg, out / "own_text.jsonl",
                                           seed=seed)
    encode = tokenizer_encode(tokenizer)
    data = load_examples(path, sft_cfg.max_seq_len, answer_tokens=answer_words(encode))
    phase = sft_cfg.model_copy(update={"epochs": sft_cfg.own_text_epochs, "max_steps": None})
    trainer = build_trainer(model, tokenizer, phase, data, out / "checkpoints", readout_ids=yes_no_ids(encode))
    train_out, seconds, adapter_dir, history = train_and_save(trainer, out, phase, model_cfg)
    answer = [r["answer_loss"] for r in history if "answer_loss" in r]
    metrics.update({"own_text_steps": float(train_out.global_step), "own_text_train_seconds": seconds,
                    "own_text_examples": float(len(data.examples))})
    if answer:  # the means of the first and last quarter of the steps (a last partial batch is one or two stays)
        q = max(1, len(answer) // 4)
        metrics["own_text_answer_loss_start"] = float(np.mean(answer[:q]))
        metrics["own_text_answer_loss_end"] = float(np.mean(answer[-q:]))
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    log.info("answer slot after the policy's own text: %d stays, %d steps in %.1f s (AUROC on them before: %s)",
             len(data.examples), train_out.global_step, seconds, metrics.get("own_text_auroc_before", "undefined"))
    return OwnTextResult(adapter_dir, metrics, history)
