"""G samples from one long patient prompt: prefix reuse against re-encoding the prompt for each sample.

Three ways to draw G = 8 samples of 128 new tokens from one ~1,000-token TJH patient prompt, same seeds
(so the same tokens come out of all three, which the script checks):

* ``reuse``: the prompt is encoded once; its keys/values are copied into the G rows of one decoding batch;
* ``reencode_batched``: the prompt is repeated G times in the batch and encoded G times (what
  ``generate(num_return_sequences=G)`` does);
* ``reencode_each``: each sample on its own, prompt encoded again every time (no sharing at all).

Prints new tokens/s of each and the speed-up of reuse over each baseline (target >= 3x).

    .venv/bin/python benchmarks/bench_generate.py [--dtype bfloat16] [--threads 1] [--model tiny]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from eagrl.config import DataConfig
from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.data.cohort import build_cohort
from eagrl.data.sources import get_source
from eagrl.llm.backends.base import SamplingParams, sample_seed
from eagrl.llm.backends.transformers_backend import TransformersBackend
from eagrl.llm.loading import load_model
from eagrl.llm.prompt import build_prompt, encode


def patient_prompt(tokenizer, target: int) -> list[int]:
    """The first TJH test patient whose prompt, cut to ``target`` tokens by the budget, is at least 90% of it."""
    src = get_source("tjh")
    cfg = DataConfig(dataset="tjh", task="mortality")
    cohort = build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg)
    gen = GenerationConfig(max_prompt_tokens=target)
    for sid in cohort.split_ids("test"):
        p = build_prompt(cohort.patient(sid), cohort.features, dataset="tjh", task="mortality", cfg=gen,
                         tokenizer=tokenizer)
        if p.n_tokens >= 0.9 * target:
            return encode(p, tokenizer)
    raise SystemExit(f"no TJH test patient has a prompt of about {target} tokens")


def run(backend: TransformersBackend, mode: str, ids: list[int], seeds: list[int], params: SamplingParams):
    backend.store.clear()
    t = time.perf_counter()
    if mode == "reencode_each":
        samples = [backend.generate([ids], params, seed=[s])[0][0] for s in seeds]
    else:  # one call, G rows; reuse shares the prompt's keys/values, reencode_batched has no store
        samples = [group[0] for group in backend.generate([ids] * len(seeds), params, seed=seeds)]
    return samples, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model.source (tiny: a quick dry run)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--modes", default="reuse,reencode_batched,reencode_each")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(ModelConfig(source=args.model, dtype=args.dtype))
    ids = patient_prompt(loaded.tokenizer, args.prompt_tokens)
    seeds = [sample_seed(args.seed, j) for j in range(args.samples)]
    params = SamplingParams(max_tokens=args.new_tokens, temperature=1.0, ignore_eos=True)
    backends = {
        "reuse": TransformersBackend(loaded.model, loaded.tokenizer, batch_size=args.samples,
                                     prefix_cache_tokens=4 * len(ids) + 2 * args.samples * args.new_tokens),
        "reencode_batched": TransformersBackend(loaded.model, loaded.tokenizer, batch_size=args.samples,
                                                prefix_cache_tokens=0),
        "reencode_each": TransformersBackend(loaded.model, loaded.tokenizer, batch_size=1, prefix_cache_tokens=0),
    }
    backends["reuse"].generate([ids[:32]], SamplingParams(max_tokens=2))  # warm-up (allocator, kernels)

    print(f"model={args.model} dtype={args.dtype} threads={torch.get_num_threads()} prompt={len(ids)} tokens "
          f"G={args.samples} new_tokens={args.new_tokens}")
    results, outputs = {}, {}
    for mode in args.modes.split(","):
        samples, seconds = run(backends[mode], mode, ids, seeds, params)
        n_new = sum(len(s.token_ids) for s in samples)
        results[mode] = {"seconds": round(seconds, 2), "new_tokens": n_new, "tokens_per_s": round(n_new / seconds, 2)}
        outputs[mode] = [s.token_ids for s in samples]
        print(f"{mode:>17}: {seconds:7.1f} s  {n_new / seconds:7.1f} new tokens/s")
    if "reuse" in results:
        for mode in list(results):
            if mode != "reuse":
                same = sum(a == b for a, b in zip(outputs["reuse"], outputs[mode]))
                ratio = results["reuse"]["tokens_per_s"] / results[mode]["tokens_per_s"]
                results[f"speedup_vs_{mode}"] = round(ratio, 2)
                print(f"reuse / {mode}: {ratio:.2f}x  (identical samples: {same}/{args.samples})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
