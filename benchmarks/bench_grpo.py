"""Time per RL optimiser step: EAG-RL's trainer against TRL's stock GRPOTrainer, same model, batch, G and lengths.

Three trainers run in the same process on the same patients, one after the other, each for ``--batches``
generation batches (``--prompts`` patients x ``--group`` responses, cut into ``--updates`` optimiser steps), after
one warm-up batch each:

* ``stock``: TRL's GRPOTrainer as shipped: its own sampling (``model.generate``) of exactly L new tokens per
  response (``min_new_tokens = max_completion_length = L``), L being the mean response length EAG-RL's
  structured rollouts produced in the warm-up, and a fixed clip range;
* ``stock+rollout``: the stock GRPOTrainer with EAG-RL's structured rollouts as its ``rollout_func``: the
  same sampling as EAG-RL, so the ratio to it isolates what the adaptive clipping itself costs;
* ``eag-rl``: :class:`eagrl.rl.trainer.EAGRLTrainer` with eps(tau) (KL logging off, as the others do not
  compute it; it is timed separately as ``eag-rl+kl``);
* ``stock@padded``: the stock trainer sampling exactly the length EAG-RL's batch is padded to (its longest
  response). TRL's log-prob and loss passes run on padded tensors, so this arm computes on the same shapes as
  EAG-RL's training passes, while ``stock`` (the mean length) computes on shorter ones.

It prints seconds per optimiser step of each and the ratios eag-rl / stock (target <= 1.0) and
eag-rl / stock+rollout (the clipping overhead, expected ~1.0).

    .venv/bin/python benchmarks/bench_grpo.py                    # SmolLM2-135M, 2 patients x G=4, 2 batches
    .venv/bin/python benchmarks/bench_grpo.py --model tiny       # seconds, for a smoke check
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def random_reward(completions, **_):
    import random

    return [random.random() for _ in completions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--max-prompt-tokens", type=int, default=768)
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from support.llm import tjh_cohort
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    from eagrl.config.llm import GenerationConfig, ModelConfig
    from eagrl.config.rl import RLConfig
    from eagrl.llm.loading import attach_lora, load_model
    from eagrl.rl.rollout import StructuredRollout, r_att, r_cls
    from eagrl.rl.train import build_trainer, prompt_table, training_args

    cohort = tjh_cohort(40)
    names = [f.name for f in cohort.features]
    c_exp = {str(s): names[:5] for sp in ("train", "val", "test") for s in cohort.split_ids(sp)}
    micro = args.prompts * args.group // args.updates
    n_steps = args.batches * args.updates
    rl = RLConfig(num_generations=args.group, prompts_per_batch=args.prompts, micro_batch_size=micro,
                  updates_per_batch=args.updates, log_kl=False, max_stays=args.prompts * (args.batches + 1))
    gen = GenerationConfig(depth=3, compact=True, compact_last_values=3, max_prompt_tokens=args.max_prompt_tokens,
                           max_subquestion_tokens=24, max_answer_tokens=32, max_features_tokens=32)
    mcfg = ModelConfig(source=args.model, device=args.device,
                       dtype="bfloat16" if torch.cuda.is_available() else "float32")
    loaded = load_model(mcfg)
    base = loaded.model
    tok = loaded.tokenizer
    cuda = loaded.device.type == "cuda"
    prompts, rows = prompt_table(cohort, c_exp, rl, gen, tok)
    print(f"model {args.model} on {loaded.device}; {args.prompts} patients x G={args.group} per batch, "
          f"{args.updates} optimiser steps per batch, {args.batches} timed batches ({n_steps} steps) after 1 warm-up")

    def timed(make, label):
        with tempfile.TemporaryDirectory() as tmp:
            warm = make(Path(tmp) / "w", args.updates)
            warm.train()
            trainer = make(Path(tmp) / "t", args.updates * args.batches)
            t0 = time.perf_counter()
            trainer.train()
            seconds = (time.perf_counter() - t0) / trainer.state.global_step
            lengths = [v for h in trainer.state.log_history for k, v in h.items() if k == "completions/mean_length"]
        print(f"  {label:<14} {seconds:7.2f} s / optimiser step   (model-written tokens a response "
              f"{sum(lengths) / max(len(lengths), 1):.0f})")
        return seconds, trainer

    def eagrl(clip: bool, kl: bool):
        cfg = rl.model_copy(update={"variant": "eag-rl" if clip else "eag-rl-no-adaptive-clip", "log_kl": kl})

        def make(out, steps):
            model = attach_lora(copy.deepcopy(base), mcfg)
            c = cfg.model_copy(update={"max_steps": steps})
            roll = StructuredRollout(prompts, cohort.features, gen, seed=0)
            return build_trainer(model, tok, c, rows, roll, out, cuda)
        return make

    def stock(length: int | None):
        def make(out, steps):
            model = attach_lora(copy.deepcopy(base), mcfg)
            c = rl.model_copy(update={"variant": "grpo", "max_steps": steps})
            targs = training_args(c, out, cuda)
            targs.save_strategy = "no"
            kwargs, rewards = {}, [r_cls, r_att]
            if length is None:  # the stock trainer driving EAG-RL's structured rollouts
                kwargs["rollout_func"] = StructuredRollout(prompts, cohort.features, gen, seed=0)
                data = rows
            else:  # the stock trainer sampling itself: the templated prompt text, exactly `length` new tokens
                targs.max_completion_length = length
                targs.generation_kwargs = {"min_new_tokens": length}
                targs.reward_weights = None
                data = [{**r, "prompt": tok.decode(prompts[r["prompt"]])} for r in rows]
                rewards = [random_reward]  # free text has no parsed answer; any non-constant reward drives the update
            trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=targs, train_dataset=Dataset.from_list(data),
                                  processing_class=tok, **kwargs)
            trainer.remove_callback(PrinterCallback)
            return trainer
        return make

    results = {}
    results["eag-rl"], trainer = timed(eagrl(True, False), "eag-rl")
    keys = [r["prompt"] for r in rows[:args.prompts] for _ in range(args.group)]
    sampled = trainer.rollout_func(keys, trainer)["completion_ids"]  # whole responses, scaffold included
    length = sum(map(len, sampled)) / len(sampled)
    padded = max(map(len, sampled))  # TRL's loss and log-prob passes run on the batch padded to its longest
    print(f"  (EAG-RL responses: {length:.0f} tokens with the scaffold, the batch padded to {padded}; the stock "
          "trainer samples exactly the mean, then exactly the padded length)")
    results["stock+rollout"], _ = timed(stock(None), "stock+rollout")
    results["stock"], _ = timed(stock(max(int(round(length)), 1)), "stock")
    results["stock@padded"], _ = timed(stock(padded), "stock@padded")
    results["eag-rl+kl"], _ = timed(eagrl(True, True), "eag-rl+kl")
    print(f"ratio eag-rl / stock GRPOTrainer:          {results['eag-rl'] / results['stock']:.2f}  (target <= 1.0)")
    print(f"ratio eag-rl / stock at the padded length: {results['eag-rl'] / results['stock@padded']:.2f}  "
          "(the same tensor shapes in TRL's training passes)")
    print(f"ratio eag-rl / stock with the same rollouts: {results['eag-rl'] / results['stock+rollout']:.2f}  "
          "(the cost of eps(tau))")
    print(f"ratio eag-rl with KL logging / without:    {results['eag-rl+kl'] / results['eag-rl']:.2f}")


if __name__ == "__main__":
    main()
