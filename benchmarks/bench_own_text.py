"""SFT's second phase on an existing SFT adapter: does the answer slot, trained after the policy's own text, fit?

The SFT stage runs the phase itself (``sft.own_text_epochs``, :mod:`eagrl.sft.own_text`) after training on the
search's trajectories. This script starts from an adapter a finished SFT stage saved, so the phase can be measured
without repeating the first (about 35 minutes on 2 cores for TJH): it loads the adapter trainable, calls the same
``train_slot_on_own_text`` the stage calls, and scores the result with the stage's held-out check (P_QD on the test
split, and on its own training stays: fit before generalisation).

    .venv/bin/python benchmarks/bench_own_text.py --adapter OUT/sft/train/adapter --workspace WS \\
        --profile default --dataset tjh --task mortality --out /tmp/own-text [--set sft.own_text_epochs=2]

Prints one JSON line last: the slot's AUROC on every training stay after the policy's own text before the phase
(``own_text_auroc_before``), then the test and own-training-stay AUROCs after it, and the phase's seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, required=True, help="an SFT stage's train/adapter folder")
    ap.add_argument("--workspace", type=Path, required=True, help="the workspace whose prepared cohort it trained on")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--dataset", default="tjh")
    ap.add_argument("--task", default="mortality")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from peft import PeftModel

    from eagrl.cli import build_config
    from eagrl.data.cohort import Cohort
    from eagrl.llm.loading import load_model
    from eagrl.scoring.policy import evaluate_trained
    from eagrl.sft.own_text import train_slot_on_own_text
    from eagrl.stage import progress_logging
    from eagrl.workspace import Workspace, model_config

    progress_logging()  # the phase's progress lines (EAGRL_LOG_LEVEL)
    cfg = build_config(args.profile, sets=[f"data.dataset={args.dataset}", f"data.task={args.task}", *args.sets],
                       workspace=args.workspace)
    if cfg.sft.own_text_epochs <= 0:
        cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"own_text_epochs": 1.0})})
    cohort = Cohort.load(Workspace.of(cfg).cohort_dir)
    mcfg = model_config(cfg)
    loaded = load_model(mcfg.model_copy(update={"adapter": None}))
    model = PeftModel.from_pretrained(loaded.model, str(args.adapter), is_trainable=True)

    t0 = time.perf_counter()
    phase = train_slot_on_own_text(model, loaded.tokenizer, cohort, mcfg, cfg.sft, cfg.generation, args.out,
                                   seed=cfg.evaluate.seed)
    seconds = time.perf_counter() - t0
    held = evaluate_trained(model, loaded.tokenizer, cohort, args.out / "heldout", mcfg, cfg.generation,
                            split=cfg.sft.eval_split, max_stays=cfg.sft.eval_max_stays, n_boot=cfg.sft.eval_n_boot,
                            seed=cfg.evaluate.seed, fit_max_stays=cfg.sft.fit_max_stays)
    split = cfg.sft.eval_split
    row = {"adapter": str(args.adapter), "own_text_epochs": cfg.sft.own_text_epochs, **phase.metrics,
           "phase_seconds": round(seconds, 1), f"{split}_auroc": held.get(f"{split}_auroc"),
           f"{split}_auroc_ci": held.get(f"{split}_auroc_ci"), "train_auroc": held.get("train_auroc"),
           "train_auroc_ci": held.get("train_auroc_ci"), "train_n_stays": held.get("train_n_stays")}
    print(json.dumps(row, default=float), flush=True)
    (args.out / "bench_own_text.json").write_text(json.dumps(row, indent=1, default=float))
    return row


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
