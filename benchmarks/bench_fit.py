"""Fit before generalisation: does a trained policy's answer slot separate the stays it trained on, and from what?

The SFT stage reports its policy's AUROC on its own training stays after the policy wrote its own reasoning
(``train_auroc`` in ``OUT/sft/metrics.json``). This script reads the same slot on the searched trajectories the
policy was trained on, teacher-forced (the prompt, the searched reasoning, ``<final_answer>``; the slot's
P(yes) / (P(yes) + P(no)), the readout of :mod:`eagrl.llm.structured`), for the trained policy and for the base
model. Three numbers answer three questions:

* trained policy on the searched text high, on its own text (the stage's figure) low: the slot learned to read the
  searched text, which the policy does not write itself;
* base model on the searched text high: the search (selected by R_cls, which knows the label) wrote the label into
  the reasoning, so the text leaks what the slot is trained to say;
* trained policy on the searched text low too: the slot did not fit (a bug, or too little training).

The store holds every rollout of every training stay, the selected one (best R, which knows the label) and the
others: the same readings on the rollouts SFT did not train on separate what the text carries from what the
patient's data does.

    .venv/bin/python benchmarks/bench_fit.py --store WS/data/trajectories/tjh-mortality/<mode>-<digest> \\
        --adapter OUT/sft/train/adapter --profile default --dataset tjh --task mortality

Prints one JSON line last: the AUROC (with its interval) of the base model's slot (as the search read it) and
of the trained policy's slot, on the selected rollouts and on the others.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def slot_probabilities(model, records: list[dict], yes_no: tuple[list[int], list[int]], batch: int = 4) -> np.ndarray:
    """P(yes) / (P(yes) + P(no)) at each record's answer slot, teacher-forced on its prompt and searched response."""
    import torch

    from eagrl.sft.train import answer_slot_logprob

    yes, no = yes_no
    contexts = [list(r["prompt_ids"]) + list(r["token_ids"][:r["readout_index"]]) for r in records]
    out = []
    with torch.no_grad():
        for i in range(0, len(contexts), batch):
            chunk = contexts[i:i + batch]
            width = max(len(c) for c in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, c in enumerate(chunk):  # left padding: every slot is the last position
                ids[j, width - len(c):] = torch.tensor(c)
                mask[j, width - len(c):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
            out.extend(answer_slot_logprob(logits, yes, no)[:, 1].exp().tolist())  # (no, yes): P(yes)
            print(f"\r  {min(i + batch, len(contexts))}/{len(contexts)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return np.asarray(out)


def rollouts(store: Path) -> list[dict]:
    """Every searched trajectory of the store (``trajectories.jsonl``), flat: stay, label, prompt, response, slot, the
    search's own reading of it (``probability``, the base model's slot) and whether SFT trained on it (selected)."""
    from eagrl.mcts.select import trains_text

    selected = {(r["stay_id"], r["rollout"]) for r in read_jsonl(store / "selected.jsonl")
                if trains_text(r)}  # slot-only records (mcts.slot_rollouts: all) trained the slot alone
    out = []
    for row in read_jsonl(store / "trajectories.jsonl")[1:]:  # line 1 is the store's header
        for t in row["trajectories"]:
            if t.get("readout_index") is None or t.get("probability") is None:
                continue
            out.append({"stay_id": row["stay_id"], "label": int(row["label"]), "prompt_ids": row["prompt_ids"],
                        "token_ids": t["token_ids"], "readout_index": t["readout_index"],
                        "searched_p": float(t["probability"]),
                        "selected": (row["stay_id"], t["rollout"]) in selected})
    return out


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def auroc(labels: np.ndarray, probs: np.ndarray, n_boot: int) -> dict:
    from eagrl.metrics import evaluate_binary

    m = evaluate_binary(labels, probs, n_boot=n_boot, seed=0, metrics=("auroc",))
    return {"auroc": round(float(m["auroc"]), 4), "ci": [round(float(x), 4) for x in m["auroc_ci"]],
            "mean_p_pos": round(float(probs[labels == 1].mean()), 4),
            "mean_p_neg": round(float(probs[labels == 0].mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, type=Path,
                    help="the search's store folder (trajectories.jsonl and selected.jsonl: what SFT trained on)")
    ap.add_argument("--adapter", required=True, help="the SFT stage's adapter folder")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--dataset", default="tjh")
    ap.add_argument("--task", default="mortality")
    ap.add_argument("--check", type=int, default=8, help="rollouts on which the base model's slot is read again, to "
                                                         "check this script's reading against the search's own")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()

    from eagrl.config import build_config
    from eagrl.llm.loading import load_model
    from eagrl.llm.structured import tokenizer_encode, yes_no_ids
    from eagrl.workspace import model_config

    cfg = build_config(args.profile, {"data.dataset": args.dataset, "data.task": args.task})
    rows = rollouts(args.store)
    labels = np.asarray([r["label"] for r in rows])
    chosen = np.asarray([r["selected"] for r in rows])
    searched = np.asarray([r["searched_p"] for r in rows])
    result = {"n_rollouts": len(rows), "n_selected": int(chosen.sum()),
              "n_positive_selected": int(labels[chosen].sum())}

    t0 = time.perf_counter()
    base = load_model(model_config(cfg))
    again = slot_probabilities(base.model, rows[:args.check], yes_no_ids(tokenizer_encode(base.tokenizer)))
    result["check_max_abs_diff"] = round(float(np.abs(again - searched[:args.check]).max()), 5)
    del base
    sft = load_model(model_config(cfg).model_copy(update={"adapter": args.adapter}))
    trained = slot_probabilities(sft.model, rows, yes_no_ids(tokenizer_encode(sft.tokenizer)))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    for who, probs in (("base", searched), ("sft", trained)):
        for part, keep in (("selected", chosen), ("not_selected", ~chosen)):
            if keep.any() and len(set(labels[keep])) == 2:
                result[f"{who}_on_{part}"] = auroc(labels[keep], probs[keep], args.n_boot)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
