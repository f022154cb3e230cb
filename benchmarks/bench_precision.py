"""One trained adapter scored three ways on the same stays: unmerged in float32, merged in float32, merged in bfloat16.

Issue "Defects under the learning path" (2): a float32 LoRA merged into bfloat16 weights loses the small part of
its update, so what SFT and RL learned was partly rounded away before the evaluation and the server scored it.
The project now merges in float32 (``model.merge_dtype``); this script shows the three figures side by side on
the answer slot's readout (vanilla prompt, one forward pass a stay) and prints one JSON line last:
``{"auroc_unmerged_fp32", "auroc_merged_fp32", "auroc_merged_bf16", "served_path": "merged_fp32", ...}``, plus the
largest probability difference of each merged way against the unmerged one.

    .venv/bin/python benchmarks/bench_precision.py --cohort WS/data/cohorts/tjh-mortality --adapter DIR [--profile P]
    .venv/bin/python benchmarks/bench_precision.py --cohort ... --train-stays 96   # trains a direct adapter first
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from eagrl.config import load_config
from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.data.cohort import Cohort
from eagrl.llm.loading import load_model
from eagrl.llm.parse import FINAL
from eagrl.llm.prompt import build_prompt, encode
from eagrl.llm.structured import tokenizer_encode, yes_no_ids
from eagrl.metrics import auroc
from eagrl.sft.direct import direct_generation
from eagrl.sft.train import answer_slot_logprob


def readout(model, tok, cohort: Cohort, stays: list[str], gen: GenerationConfig) -> np.ndarray:
    """P(yes) / (P(yes) + P(no)) at the slot after <final_answer>, one forward pass a stay."""
    enc = tokenizer_encode(tok)
    yes, no = yes_no_ids(enc)
    out = []
    with torch.no_grad():
        for sid in stays:
            p = build_prompt(cohort.patient(sid), cohort.features, dataset=cohort.dataset, task=cohort.task, cfg=gen,
                             tokenizer=tok)
            ids = encode(p, tok) + enc(f"<{FINAL}>")
            logits = model(torch.tensor([ids]), logits_to_keep=1).logits[:, -1]
            out.append(float(answer_slot_logprob(logits, yes, no)[0, 1].exp()))  # (no, yes): P(yes)
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--adapter", type=Path, default=None)
    ap.add_argument("--source", default="smollm2-135m")
    ap.add_argument("--train-stays", type=int, default=96, help="without --adapter: train a direct adapter on these")
    ap.add_argument("--split", default="test")
    ap.add_argument("--profile", default="default", help="the profile whose generation settings (prompt serialisation, "
                    "token budget) the adapter was trained with")
    args = ap.parse_args()
    cohort = Cohort.load(args.cohort)
    gen = direct_generation(load_config(args.profile).generation)  # the prompts the adapter was trained on
    adapter = args.adapter
    if adapter is None:
        from eagrl.config.sft import SFTConfig
        from eagrl.sft.direct import write_direct_examples
        from eagrl.sft.train import run_sft

        work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
        mcfg = ModelConfig(source=args.source, dtype="bfloat16")
        loaded = load_model(mcfg)
        path = write_direct_examples(cohort, "train", gen, loaded.tokenizer, work / "ex.jsonl",
                                     max_stays=args.train_stays)
        adapter = run_sft(mcfg, SFTConfig(epochs=1, batch_size=4, grad_accumulation=1, learning_rate=3e-4), path,
                          work / "sft", loaded=loaded, readout="yesno").adapter_dir
    from peft import PeftModel

    stays = cohort.split_ids(args.split)
    labels = [int(cohort.patient(s).label) for s in stays]
    base = load_model(ModelConfig(source=args.source, dtype="bfloat16", float32_head=False))
    unmerged = PeftModel.from_pretrained(base.model.float(), str(adapter)).eval()  # the reference: float32, unmerged
    p_ref = readout(unmerged, base.tokenizer, cohort, stays, gen)
    served = load_model(ModelConfig(source=args.source, dtype="bfloat16", adapter=str(adapter)))  # merge_dtype float32
    p_fp32 = readout(served.model, served.tokenizer, cohort, stays, gen)
    lossy = load_model(ModelConfig(source=args.source, dtype="bfloat16", adapter=str(adapter), merge_dtype="model"))
    p_bf16 = readout(lossy.model, lossy.tokenizer, cohort, stays, gen)
    line = {
        "stays": len(stays),
        "auroc_unmerged_fp32": auroc(labels, p_ref),
        "auroc_merged_fp32": auroc(labels, p_fp32),
        "auroc_merged_bf16": auroc(labels, p_bf16),
        "served_path": "merged_fp32",
        "max_abs_dp_merged_fp32": float(np.abs(p_fp32 - p_ref).max()),
        "max_abs_dp_merged_bf16": float(np.abs(p_bf16 - p_ref).max()),
        "adapter": str(adapter),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
