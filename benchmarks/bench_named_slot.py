"""Does text that names the causes before the answer slot let the slot learn a rule it cannot learn from the record?

The direct fine-tune reads the answer slot right after the record. On the planted-cause synthetic cohort it fits
its own training stays and ranks held-out stays at chance (docs/results.md, session 23): with a few hundred stays it
memorises stays rather than finding the two labs that decide. EAG-RL's premise is that reasoning which attends to
the expert's features helps. This script isolates that: the same LoRA, the same answer-slot loss and settings as
the direct stage (``cfg.sft``), with the response before ``<final_answer>`` holding

* nothing (the direct fine-tune),
* ``<important_features>`` naming ``--name`` (e.g. the expert's C_exp), after their record lines restated
  (``--restate``) as a policy that copies what it attends to would write them, or followed by them in the
  ``<evidence>`` block the framework writes with ``generation.evidence`` (``--evidence``),

and a control that restates labs that carry nothing. ``--only`` shows a record of those features alone: with the
planted causes it is the oracle record (a readout that cannot learn the rule from two lines has a broken training
path), with labs that carry nothing the null one. It trains on the train split (the restated text inserted,
not trained: only the slot is), then reads the slot teacher-forced on every stay and prints one JSON line: AUROC on
the training stays (fit) and on the held-out ones (val + test); every stay's probability goes to
``OUT/predictions.csv`` (``eagrl.metrics.paired_bootstrap`` compares two runs on the same stays).

    .venv/bin/python benchmarks/bench_named_slot.py --workspace WS --dataset synthetic \\
        --set data.data_path=RECIPE --name "Lactate; Albumin" --restate --set sft.epochs=3
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from bench_fit import auroc, slot_probabilities
from bench_slot_probe import before_slot, stay_prompts


def records(cohort, gen, tokenizer, named: list[str], restate: bool, only: list[str] | None = None,
            evidence: bool = False) -> list[dict]:
    """One direct-fine-tune record a stay (every split), with the response before the slot inserted; ``only``:
    the record shows these features alone (in that order)."""
    from eagrl.llm.prompt import encode
    from eagrl.sft.direct import direct_record

    prompts = stay_prompts(cohort, gen, tokenizer, order=only or None)
    return [direct_record(str(sid), int(label), encode(prompt, tokenizer), tokenizer,
                          before=before_slot(prompt.user, named, restate, evidence))
            for sid, label, prompt in zip(cohort.stays["stay_id"], cohort.stays["label"], prompts)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True, help="a workspace with the prepared cohort")
    ap.add_argument("--out", type=Path, default=None, help="where the adapter goes (default: WS/named-slot/<tag>)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--task", default="mortality")
    ap.add_argument("--name", default="", help="features named before the slot, ';'-separated")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--restate", action="store_true", help="restate those features' record lines before naming them")
    how.add_argument("--evidence", action="store_true", help="name those features, then restate their record lines "
                    "in the <evidence> block the framework writes with generation.evidence (the design's order)")
    ap.add_argument("--only", default="", help="the record shows these features alone, ';'-separated (an oracle "
                    "record with the planted causes, or a null one with labs that carry nothing)")
    ap.add_argument("--adapter", type=Path, default=None,
                    help="score this trained adapter (e.g. the direct stage's) on the same text instead of training")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from eagrl.cli import build_config
    from eagrl.data.cohort import Cohort
    from eagrl.llm.loading import load_model
    from eagrl.llm.structured import tokenizer_encode, yes_no_ids
    from eagrl.sft.direct import direct_generation
    from eagrl.sft.train import run_sft
    from eagrl.stage import progress_logging
    from eagrl.workspace import Workspace, model_config

    progress_logging()
    cfg = build_config(args.profile, sets=[f"data.dataset={args.dataset}", f"data.task={args.task}", *args.sets],
                       workspace=args.workspace)
    cohort = Cohort.load(Workspace.of(cfg).cohort_dir)
    named = [n.strip() for n in args.name.split(";") if n.strip()]
    only = [n.strip() for n in args.only.split(";") if n.strip()]
    for option, given in (("--name", named), ("--only", only)):
        unknown = [n for n in given if n not in {f.name for f in cohort.features}]
        if unknown:
            raise SystemExit(f"{option}: {unknown} are not features of the cohort "
                             f"({[f.name for f in cohort.features]})")
    if not set(named) <= set(only or named):
        raise SystemExit(f"--name {named}: a restated or named feature must be in the record (--only {only})")
    tag = "none"
    if named:
        kind = "evidence-" if args.evidence else "restate-" if args.restate else "name-"
        tag = kind + "-".join(n.replace(" ", "_") for n in named)
    if only:
        tag = "only-" + "-".join(n.replace(" ", "_") for n in only) + ("" if tag == "none" else "-" + tag)
    out = args.out or args.workspace / "named-slot" / (tag + ("-scored" if args.adapter else ""))
    if out.exists():
        raise SystemExit(f"{out} exists; pass another --out")
    mcfg = model_config(cfg)
    loaded = load_model(mcfg.model_copy(update={"adapter": str(args.adapter) if args.adapter else None}))
    recs = records(cohort, direct_generation(cfg.generation), loaded.tokenizer, named, args.restate, only,
                   args.evidence)
    train = (cohort.stays["split"] == "train").to_numpy()
    out.mkdir(parents=True)
    t0, steps, model = time.perf_counter(), 0, loaded.model
    if args.adapter is None:
        examples = out / "examples.jsonl"
        examples.write_text("".join(json.dumps(r) + "\n" for r, t in zip(recs, train) if t), encoding="utf-8")
        res = run_sft(mcfg, cfg.sft, examples, out / "train", loaded=loaded, readout="yesno")
        steps, model = int(res.metrics.get("optimizer_steps", 0)), res.model
    seconds = time.perf_counter() - t0
    model.eval()
    probs = slot_probabilities(model, recs, yes_no_ids(tokenizer_encode(loaded.tokenizer)))
    labels = cohort.stays["label"].to_numpy().astype(int)
    line = {"named": named, "restate": args.restate, "evidence": args.evidence, "only": only,
            "adapter": str(args.adapter or out / "train" / "adapter"),
            "n_train": int(train.sum()), "n_heldout": int((~train).sum()),
            "optimizer_steps": steps, "train_seconds": round(seconds, 1),
            "fit": auroc(labels[train], probs[train], 1000), "heldout": auroc(labels[~train], probs[~train], 1000)}
    (out / "result.json").write_text(json.dumps(line, indent=1), encoding="utf-8")
    pd.DataFrame({"stay_id": cohort.stays["stay_id"].astype(str), "split": cohort.stays["split"], "label": labels,
                  "prob": probs}).to_csv(out / "predictions.csv", index=False)  # for paired comparisons of runs
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
