"""Does the frozen policy model's answer slot carry a cohort's outcome? Linear probes before any training.

A LoRA readout learns quickly what the base model's hidden state at the answer slot already holds linearly, and
slowly (or, at a few hundred stays, not at all) what it does not. This script reads that state for every stay of a
prepared cohort, in the direct fine-tune's prompt (vanilla style, the compact record, then ``<final_answer>``), at
several layers, fits a class-balanced logistic regression on the train split and scores the val and test splits;
the same regression on each stay's last values (``last_values``, the table's tabular row) is the reference, and the
number of HIGH/LOW flags in each stay's record (no fitting: the count is the score) the cue a severity reading
would use (``--flags-only``: that alone, in seconds).
Run it before spending hours on a cohort: TJH mortality probes at 0.97-0.99 held out, the planted-cause synthetic
cohort at 0.45-0.63 (docs/results.md, session 22), where no trained LLM row fitted its own training stays.

    .venv/bin/python benchmarks/bench_slot_probe.py --workspace WS --dataset tjh --task mortality
    .venv/bin/python benchmarks/bench_slot_probe.py --workspace WS --dataset synthetic --task mortality \\
        --set data.data_path=/path/to/recipe-folder

The cohort is the workspace's prepared one (``eagrl data prepare`` first). Prints one JSON line last: per layer and
regularisation C, the train and held-out AUROC (and the last values'), and the seconds taken.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

LAYERS = (6, 12, 18, 24, 30)
CS = (0.01, 0.1)


def before_slot(prompt_user: str, named: list[str], restate: bool, evidence: bool = False) -> str:
    """What the response holds before ``<final_answer>``: nothing, or ``<important_features>`` naming ``named``
    (as the structured policy writes it), after their record lines restated when ``restate``, or followed by the
    ``<evidence>`` block the framework writes with ``generation.evidence`` when ``evidence``."""
    from eagrl.llm.structured import evidence_block, evidence_lines

    if not named:
        return ""
    if evidence:
        return f"<important_features>{'; '.join(named)}</important_features>\n{evidence_block(prompt_user, named)}\n"
    lines = evidence_lines(prompt_user, named)
    said = ("<answer>" + " ".join(line[2:] + "." for line in lines) + "</answer>\n") if restate else ""
    return f"{said}<important_features>{'; '.join(named)}</important_features>\n"


def stay_prompts(cohort, gen_cfg, tokenizer, order=None) -> list:
    """The prompt of every stay, in ``cohort.stays`` order (``order``: the features shown, all by default)."""
    from eagrl.llm.prompt import build_prompt

    return [build_prompt(cohort.patient(sid), cohort.features, dataset=cohort.dataset, task=cohort.task, cfg=gen_cfg,
                         tokenizer=tokenizer, order=order) for sid in cohort.stays["stay_id"]]


def flag_count(prompt_user: str) -> int:
    """The record lines flagged HIGH or LOW (the compact serialisation marks each last value outside its reference
    range): on TJH this count alone ranks mortality about as well as any trained row (docs/results.md, session 24)."""
    return sum(bool(re.search(r", (HIGH|LOW)\b", line)) for line in prompt_user.splitlines() if line.startswith("- "))


def slot_states(model, tokenizer, prompts, layers, named=(), restate=False) -> dict[int, list]:
    """{layer: [hidden state at the answer slot of each prompt, in order]}."""
    import torch

    from eagrl.llm.prompt import encode

    out: dict[int, list] = {layer: [] for layer in layers}
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            tail = tokenizer.encode(before_slot(prompt.user, list(named), restate) + "<final_answer>",
                                    add_special_tokens=False)
            ids = torch.tensor([encode(prompt, tokenizer) + tail])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # (L+1) x (1, T, H)
            for layer in layers:
                out[layer].append(hidden[layer][0, -1].float().numpy())
            if (i + 1) % 50 == 0:
                print(f"[{time.strftime('%H:%M:%S')}] {i + 1}/{len(prompts)} stays read", file=sys.stderr, flush=True)
    return out


def probe(states, labels, train) -> tuple[float, float, dict]:
    """(train AUROC, held-out AUROC) of a class-balanced logistic regression on standardised states, per C."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.asarray(states)
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    res = {}
    for c in CS:
        lr = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(x[train], labels[train])
        p = lr.predict_proba(x)[:, 1]
        res[str(c)] = {"train": round(float(roc_auc_score(labels[train], p[train])), 3),
                       "heldout": round(float(roc_auc_score(labels[~train], p[~train])), 3)}
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True, help="a workspace with the prepared cohort")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--dataset", default="tjh")
    ap.add_argument("--task", default="mortality")
    ap.add_argument("--layers", default=",".join(map(str, LAYERS)))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--name", default="", help="features the response names before the slot, ';'-separated "
                    "(e.g. the expert's C_exp), as <important_features> does")
    ap.add_argument("--restate", action="store_true", help="the response also restates those features' lines")
    ap.add_argument("--flags-only", action="store_true", help="only the flag-count reference: no hidden states")
    args = ap.parse_args(argv)

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from eagrl.cli import build_config
    from eagrl.data.cohort import Cohort
    from eagrl.evaluate.tabular import last_values
    from eagrl.llm.loading import load_model
    from eagrl.sft.direct import direct_generation
    from eagrl.workspace import Workspace, model_config

    cfg = build_config(args.profile, sets=[f"data.dataset={args.dataset}", f"data.task={args.task}", *args.sets],
                       workspace=args.workspace)
    cohort = Cohort.load(Workspace.of(cfg).cohort_dir)
    loaded = load_model(model_config(cfg).model_copy(update={"dtype": "float32"}))  # the probe reads float32 states
    layers = [] if args.flags_only else [int(x) for x in args.layers.split(",")]
    t0 = time.perf_counter()
    named = [n.strip() for n in args.name.split(";") if n.strip()]
    gen = direct_generation(cfg.generation)
    prompts = stay_prompts(cohort, gen, loaded.tokenizer)
    states = slot_states(loaded.model, loaded.tokenizer, prompts, layers, named, args.restate) if layers else {}
    labels = cohort.stays["label"].to_numpy().astype(int)
    train = (cohort.stays["split"] == "train").to_numpy()
    flags = np.array([flag_count(p.user) for p in prompts])
    line = {"dataset": args.dataset, "task": args.task, "named": named, "restate": args.restate,
            "n_train": int(train.sum()), "n_heldout": int((~train).sum()),
            "layers": {str(layer): probe(states[layer], labels, train) for layer in layers},
            "last_values": probe(last_values(cohort, [str(s) for s in cohort.stays["stay_id"]]), labels, train),
            "flags_mean": round(float(flags.mean()), 2),
            "flag_count": {"train": round(float(roc_auc_score(labels[train], flags[train])), 3),
                           "heldout": round(float(roc_auc_score(labels[~train], flags[~train])), 3)},
            "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
