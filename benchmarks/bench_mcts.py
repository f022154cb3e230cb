"""Stage-1 MCTS throughput: trajectories per minute with prefix reuse, against re-encoding the full context.

The same search (N = 8 rollouts, depth T = 7, b = 3, same seeds) on the first 4 TJH training patients, run
twice through :func:`eagrl.mcts.run_mcts`:

* ``reuse``: the backend keeps the keys/values of the prompt and of every node's path (prefix store), so a
  child or a rollout only computes its new tokens;
* ``reencode``: ``GenerationConfig.prefix_cache_tokens = 0``, so every expansion and every rollout encodes the
  whole context (prompt + path) again. Within one expansion or rollout the fused decoding loop
  (``generation.fused_decoding``, on in both arms) keeps its own cache across fields; with it off, every
  field and read-out would encode the context again too.

Prints completed trajectories per minute of each and the ratio (target >= 5x), and how many of the
responses came out identical (they should, up to float rounding flipping a sampled token). C_exp comes from
the expert's attention table when ``--attention`` names one; otherwise from a stand-in (each stay's 3 most
often measured features), which the output says: the reward, not the speed, depends on it.

``--parallel K`` runs both arms with ``mcts.parallel = K`` (K rollouts a round, simulated as one batch).

    .venv/bin/python benchmarks/bench_mcts.py [--model tiny|smollm2-135m] [--patients 4] [--threads 1] [--parallel 1]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pandas as pd

from eagrl.config import DataConfig
from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.data.cohort import build_cohort
from eagrl.data.sources import get_source
from eagrl.llm.backends import make_backend
from eagrl.llm.loading import load_model
from eagrl.mcts import MCTSConfig, run_mcts


def stand_in_attention(cohort, stay_ids, k: int = 3) -> pd.DataFrame:
    """C_exp stand-in: the k features measured most often in each stay (no trained expert needed)."""
    rows = []
    for sid in stay_ids:
        rec = cohort.patient(sid)
        counts = {f: int(np.sum(~np.isnan(np.asarray(v, dtype=float)))) for f, v in rec.values.items()}
        rows.append({"stay_id": sid, "c_exp": sorted(counts, key=lambda f: -counts[f])[:k]})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="model.source: tiny (default, random) or smollm2-135m")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--depth", type=int, default=7)
    ap.add_argument("--branching", type=int, default=3)
    ap.add_argument(
        "--parallel", type=int, default=1, help="mcts.parallel: rollouts simulated as one batch (both arms)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--max-prompt-tokens", type=int, default=3072)
    ap.add_argument("--attention", default=None, help="expert attention parquet (else a stand-in C_exp)")
    ap.add_argument("--only", choices=["reuse", "reencode"], default=None, help="run one mode only")
    args = ap.parse_args()

    cfg = DataConfig(dataset="tjh", task="mortality")
    src = get_source("tjh")
    cohort = build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg)
    stay_ids = cohort.split_ids("train")[:args.patients]
    if args.attention:
        from eagrl.expert.attention import read_attention

        table, c_exp_from = read_attention(args.attention), f"expert attention table {args.attention}"
    else:
        table, c_exp_from = stand_in_attention(cohort, stay_ids), "stand-in (3 most-measured features; no expert)"

    model_cfg = ModelConfig(source=args.model, dtype=args.dtype, device=args.device)
    loaded = load_model(model_cfg)
    mcts = MCTSConfig(rollouts=args.rollouts, depth=args.depth, branching=args.branching, parallel=args.parallel,
                      n_boot=0)
    results = {}
    for mode in ("reuse", "reencode"):
        if args.only and mode != args.only:
            continue
        gen = GenerationConfig(depth=args.depth, cpu_threads=args.threads, max_prompt_tokens=args.max_prompt_tokens,
                               prefix_cache_tokens=16384 if mode == "reuse" else 0)
        backend = make_backend(model_cfg, gen, loaded)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = run_mcts(cohort, table, model_cfg, gen, mcts, tmp, stay_ids=stay_ids, backend=backend,
                           progress=False)
            seconds = time.perf_counter() - t
            texts = [tr["text"] for line in res.trajectories_path.read_text().splitlines()[1:]
                     for tr in json.loads(line)["trajectories"]]
        m = res.metrics
        results[mode] = {"seconds": seconds, "trajectories": m["n_trajectories"],
                         "per_minute": 60.0 * m["n_trajectories"] / seconds, "nodes_mean": m["tree_nodes_mean"],
                         "steps_mean": m["response_steps_mean"], "texts": texts}
        print(f"{mode:>9}: {m['n_trajectories']} trajectories in {seconds:.1f} s = "
              f"{results[mode]['per_minute']:.1f} / min (tree nodes {m['tree_nodes_mean']:.1f}, "
              f"response steps {m['response_steps_mean']:.2f})", flush=True)
    summary = {"model": args.model, "patients": len(stay_ids), "N": args.rollouts, "T": args.depth,
               "b": args.branching, "parallel": args.parallel, "threads": args.threads, "c_exp": c_exp_from}
    if len(results) == 2:
        a, b = results["reuse"], results["reencode"]
        same = sum(x == y for x, y in zip(a["texts"], b["texts"]))
        summary.update({"reuse_per_minute": a["per_minute"], "reencode_per_minute": b["per_minute"],
                        "ratio": a["per_minute"] / b["per_minute"], "identical_responses": f"{same}/{len(a['texts'])}"})
        print(f"    ratio: {summary['ratio']:.2f}x (target >= 5x); "
              f"identical responses {summary['identical_responses']}")
    print(f"    C_exp: {c_exp_from}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
