"""Zero-shot evaluation of the base LLM: vanilla, think-then-answer and P_QD prompting on one split.

``evaluate_zero_shot(cohort, out_dir, model_cfg, gen_cfg)`` prompts the model once per stay of the split in
``gen_cfg.prompt_style``, structured or free-form, and writes into ``out_dir``:

* ``metrics.json``: flat numbers and ``[low, high]`` intervals, e.g. ``test_auroc``, ``test_auroc_ci``,
  ``test_auprc``, ``test_well_formed_rate``, ``test_parsed_rate`` (a probability was read), timings;
* ``predictions.csv``: stay_id, label, probability, well_formed, n_steps, features;
* ``responses.jsonl``: the full response text of every stay.

With ``samples`` K > 1 (sampled decoding) each stay gets K responses, and its probability is their mean: one
response's probability moves with the text the model happened to write, often as much as it moves between
patients, and the mean estimates the policy's own prediction. ``predictions.csv`` then holds that mean
(``well_formed``: every response was; ``features``: the first response's), ``samples.csv`` one row per response,
and the metrics add ``probability_sd_within`` (the mean spread of a stay's K probabilities) beside
``probability_sd_between`` (the spread of the stays' probabilities).

A stay whose response yields no probability (free-form only) is scored 0.5, and counted in the rates.
The same function backs the CLI command, the pipeline component and the tests.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.data.cohort import Cohort
from eagrl.llm.backends import GenerationBackend, make_backend
from eagrl.llm.prompt import build_prompt, encode
from eagrl.llm.structured import StructuredGenerator
from eagrl.metrics import evaluate_binary

log = logging.getLogger(__name__)

SAMPLES = "samples.csv"  # one row per response, written beside predictions.csv when a stay gets several


def evaluate_zero_shot(
    cohort: Cohort,
    out_dir: str | Path,
    model_cfg: ModelConfig | None = None,
    gen_cfg: GenerationConfig | None = None,
    *,
    split: str = "test",
    max_stays: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    backend: GenerationBackend | None = None,
    samples: int = 1,
) -> dict:
    """Score every stay of ``split`` with the base model (``samples`` responses a stay); write and return the
    metrics."""
    model_cfg, gen_cfg = model_cfg or ModelConfig(), gen_cfg or GenerationConfig()
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if samples > 1 and gen_cfg.temperature <= 0:
        raise ValueError(f"{samples} samples a stay need sampled decoding (generation.temperature > 0); greedy "
                         "decoding writes the same response each time")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stay_ids = cohort.sample_ids(split, max_stays, seed)  # all, or a label-stratified sample
    backend = backend or make_backend(model_cfg, gen_cfg)
    tok = backend.tokenizer
    generator = StructuredGenerator(backend, gen_cfg, cohort.features)

    t0 = time.perf_counter()
    records = [cohort.patient(s) for s in stay_ids]
    prompts = [build_prompt(r, cohort.features, dataset=cohort.dataset, task=cohort.task, cfg=gen_cfg,
                            tokenizer=tok) for r in records]
    ids = [encode(p, tok) for p in prompts]
    groups = []
    for start in range(0, len(ids), gen_cfg.batch_size):
        chunk = ids[start:start + gen_cfg.batch_size]
        seeds = [gen_cfg.seed + start + i for i in range(len(chunk))]
        groups += generator.generate(chunk, n=samples, seed=seeds)
        log.info("zero-shot %s: %d/%d stays", gen_cfg.prompt_style, len(groups), len(ids))
    seconds = time.perf_counter() - t0

    labels = np.array([r.label for r in records], dtype=int)
    responses = [r for group in groups for r in group]  # stay-major: the K responses of a stay are adjacent
    each = np.array([r.probability if r.probability is not None else 0.5 for r in responses],
                    dtype=float).reshape(len(ids), samples)
    probs = each.mean(axis=1)
    well_each = np.array([r.well_formed for r in responses], dtype=bool).reshape(len(ids), samples)
    parsed = np.array([r.parsed.probability is not None for r in responses], dtype=bool)
    written = sum(int(np.sum(r.mask)) for r in responses)

    metrics: dict = {}
    if len(set(labels.tolist())) == 2:
        metrics.update(evaluate_binary(labels, probs, prefix=f"{split}_", metrics=("auroc", "auprc", "brier"),
                                       n_boot=n_boot, seed=seed))
    else:
        log.warning("split %s has a single class; AUROC/AUPRC are undefined", split)
    metrics.update({
        f"{split}_well_formed_rate": float(well_each.mean()),
        f"{split}_parsed_rate": float(parsed.mean()),
        f"{split}_n_stays": len(stay_ids),
        "prompt_tokens_mean": float(np.mean([len(i) for i in ids])),
        "steps_mean": float(np.mean([r.n_steps for r in responses])),
        "model_tokens_per_response": written / len(responses),
        "seconds": seconds,
        "model_tokens_per_second": written / seconds if seconds > 0 else 0.0,
        "samples": samples,
        "probability_sd_between": float(probs.std()),
    })
    if samples > 1:
        metrics["probability_sd_within"] = float(each.std(axis=1).mean())
    _write(out, metrics, stay_ids, labels, probs, each, well_each, groups)
    _log_mlflow(metrics)
    return metrics


def _write(out: Path, metrics: dict, stay_ids, labels, probs, each, well_each, groups) -> None:
    """``probs``: a stay's probability; ``each``/``well_each``: (stays, K) probability and well-formed flag of each
    response."""
    from eagrl.metrics import metrics_json

    (out / "metrics.json").write_text(json.dumps(metrics_json(metrics), indent=1, sort_keys=True))
    pd.DataFrame({
        "stay_id": stay_ids, "label": labels, "probability": probs, "well_formed": well_each.all(axis=1),
        "n_steps": [float(np.mean([r.n_steps for r in g])) if len(g) > 1 else g[0].n_steps for g in groups],
        "features": ["; ".join(g[0].parsed.features) for g in groups],
    }).to_csv(out / "predictions.csv", index=False)
    samples = out / SAMPLES
    if groups and len(groups[0]) > 1:
        pd.DataFrame([{"stay_id": sid, "sample": j, "label": y, "probability": p[j], "well_formed": ok[j],
                       "n_steps": r.n_steps, "features": "; ".join(r.parsed.features)}
                      for sid, y, p, ok, g in zip(stay_ids, labels, each, well_each, groups) for j, r in enumerate(g)]
                     ).to_csv(samples, index=False)
    elif samples.exists():
        samples.unlink()  # left by an earlier K > 1 scoring into this folder: not of these predictions
    with open(out / "responses.jsonl", "w", encoding="utf-8") as fh:
        for sid, g in zip(stay_ids, groups):
            for j, r in enumerate(g):
                rec = {"stay_id": sid, "text": r.text, "probability": r.probability}
                fh.write(json.dumps(rec if len(g) == 1 else {**rec, "sample": j}) + "\n")


def _log_mlflow(metrics: dict) -> None:
    """Log into the active MLflow run, if the caller opened one (the stage wrapper does)."""
    try:
        import mlflow
    except ImportError:  # pragma: no cover - a bare GPU worker may run without the tracking stack
        return

    from eagrl.tracking.mlflow_run import flat_numbers

    if mlflow.active_run() is not None:
        mlflow.log_metrics(flat_numbers(metrics))


def evaluate_trained(peft_model, tokenizer, cohort: Cohort, out_dir: str | Path, model_cfg: ModelConfig,
                     gen_cfg: GenerationConfig, *, split: str, max_stays: int | None, n_boot: int, seed: int,
                     fit_max_stays: int | None = 0, style: str = "pqd") -> dict:
    """P_QD on held-out stays of a policy just trained (SFT, RL): its adapter folded in, the transformers backend.

    Fit before generalisation: with ``fit_max_stays`` (None: all; 0: none) the same policy is also scored on that
    many of the *train* stays (a label-stratified sample; SFT and RL train there), into ``out_dir``'s sibling
    ``fit-train``; those metrics are the ``train_*`` keys. A policy that cannot rank its own training stays has a
    bug or a broken readout, which no learning rate fixes."""
    gen_cfg = heldout_generation(gen_cfg, style)
    backend = merged_backend(peft_model, tokenizer, model_cfg, gen_cfg)  # training is over: fold the adapter in
    metrics = evaluate_zero_shot(cohort, out_dir, model_cfg, gen_cfg, split=split, max_stays=max_stays, n_boot=n_boot,
                                 seed=seed, backend=backend)
    if fit_max_stays != 0 and split != "train":
        metrics.update(evaluate_zero_shot(cohort, Path(out_dir).parent / "fit-train", model_cfg, gen_cfg, split="train",
                                          max_stays=fit_max_stays, n_boot=n_boot, seed=seed, backend=backend))
    return metrics


def merged_backend(peft_model, tokenizer, model_cfg: ModelConfig, gen_cfg: GenerationConfig) -> GenerationBackend:
    """A generation backend over ``peft_model`` with its adapter folded in (in place: pass a copy to keep training
    it), in eval mode, with the float32 head where the model config asks for it."""
    from eagrl.llm.loading import LoadedModel, float32_head, merge_adapter

    merged = merge_adapter(peft_model, model_cfg.merge_dtype)
    merged.eval()
    if model_cfg.float32_head:
        float32_head(merged)
    return make_backend(model_cfg, gen_cfg, loaded=LoadedModel(merged, tokenizer, model_cfg.source, None))


def heldout_generation(gen_cfg: GenerationConfig, style: str = "pqd") -> GenerationConfig:
    """The settings of a just-trained policy's held-out check: P_QD (the direct fine-tune: vanilla) on the in-process
    transformers model."""
    return gen_cfg.model_copy(update={"prompt_style": style, "backend": "transformers"})
