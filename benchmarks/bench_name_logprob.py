"""Does SFT teach the policy the names the search selected? Log-probability of each selected record's
``<important_features>`` field, in its own context, under the base model and an adapter (and of ``--alt``, the
names the trained policy writes greedily instead, in the same place). One JSON line: the mean over the records.

A policy that does not learn to name the expert's C_exp never puts their lines in the evidence block
(``generation.evidence``), so the slot never reads them (docs/results.md, session 26).

    .venv/bin/python benchmarks/bench_name_logprob.py --workspace WS --set data.dataset=synthetic \\
        --trajectories WS/data/trajectories/.../selected.jsonl --adapter WS/out/sft/train/adapter --alt "Bilirubin; ALT"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def field_logprob(model, prompt_ids: list[int], before: list[int], target: list[int]) -> float:
    """Summed log-probability of ``target`` after ``prompt_ids + before`` (full vocabulary, teacher-forced)."""
    import torch

    full = torch.tensor([prompt_ids + before + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0, -len(target) - 1:-1].float(), -1)
    return float(logp[torch.arange(len(target)), torch.tensor(target)].sum())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--trajectories", type=Path, required=True, help="the search's selected.jsonl")
    ap.add_argument("--adapter", type=Path, required=True)
    ap.add_argument("--alt", default="", help="other names scored in the same place (e.g. what the policy writes)")
    ap.add_argument("--n", type=int, default=40, help="the first N selected records (those that train their text)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from eagrl.cli import build_config
    from eagrl.llm.loading import load_model
    from eagrl.llm.parse import FEATURES
    from eagrl.llm.structured import tokenizer_encode
    from eagrl.sft.data import read_trajectories
    from eagrl.workspace import model_config

    cfg = build_config(args.profile, sets=args.sets, workspace=args.workspace)
    recs = [r for r in read_trajectories(args.trajectories) if r.get("train_text") is not False][:args.n]
    line: dict = {"records": len(recs), "alt": args.alt}
    for name, adapter in (("base", None), ("adapter", str(args.adapter))):
        loaded = load_model(model_config(cfg).model_copy(update={"adapter": adapter}))
        enc, dec, model = tokenizer_encode(loaded.tokenizer), loaded.tokenizer.decode, loaded.model.eval()
        head, close, alt = enc(f"<{FEATURES}>"), f"</{FEATURES}>", enc(args.alt) if args.alt else []
        named, other = [], []
        for r in recs:
            ids = r["token_ids"]
            k = next(i for i in range(len(ids)) if ids[i:i + len(head)] == head) + len(head)
            end = next(i for i in range(k, len(ids)) if not r["mask"][i])  # the field: model-written up to the close
            field = ids[k:end]
            assert dec(ids[end:]).startswith(close), dec(ids[k:end + 8])
            named.append(field_logprob(model, r["prompt_ids"], ids[:k], field))
            if alt:
                other.append(field_logprob(model, r["prompt_ids"], ids[:k], alt))
        line[name] = {"selected_names": round(sum(named) / len(named), 3),
                      "alt": round(sum(other) / len(other), 3) if other else None}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
