"""The learning ladder: does the policy learn where the answer is known, then on TJH? One JSON line last per rung.

Each rung runs the real stages in order (the functions `eagrl run`, the KFP components and the CLI call) in its
own workspace, on the default profile's model and settings (``--set KEY=VALUE`` changes any of them):

* ``synthetic``: the project's planted-cause cohort (:mod:`eagrl.data.synthetic`; the outcome is caused by two
  labs among twenty): validate, prepare, expert, zero-shot, MCTS, SFT, EAG-RL and the GRPO baseline from the same
  SFT start, and the direct fine-tune (the answer slot alone, no reasoning). It prints
  ``{"rung": "synthetic", "auroc_sft": .., "auroc_eagrl": .., "r_att_truth_eagrl": .., "r_att_truth_grpo": ..}``
  plus the zero-shot, GRPO and direct AUROCs, each trained policy's AUROC on its own training stays (fit before
  generalisation), and each stage's seconds. ``r_att_truth`` is the mean Jaccard overlap of the features a
  policy named on the test stays with the planted causes.
* ``tjh``: the same chain on TJH mortality (``../shared/data/tjh`` or ``$EAGRL_SHARED_DATA``), printing the
  table's AUROCs.

    .venv/bin/python benchmarks/bench_learning.py --rung synthetic --workspace /tmp/ladder-syn
    .venv/bin/python benchmarks/bench_learning.py --rung tjh --workspace /tmp/ladder-tjh --set mcts.max_stays=64

A rerun in the same workspace reuses every finished stage (the stage contract), so a rung can be resumed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

RUNGS = {"synthetic": {"data.dataset": "synthetic", "data.task": "mortality"},
         "tjh": {"data.dataset": "tjh", "data.task": "mortality"}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config(rung: str, workspace: Path, sets: list[str]):
    from eagrl.cli import build_config

    return build_config("default", sets=[f"{k}={v}" for k, v in RUNGS[rung].items()] + list(sets),
                        workspace=workspace)


def named_overlap(predictions: Path, truth: set[str]) -> float:
    """Mean Jaccard of the features each stay's response named (predictions.csv) with ``truth``."""
    from eagrl.llm.rewards import r_att

    df = pd.read_csv(predictions)
    named = [[n.strip() for n in str(f).split(";") if n.strip()] if isinstance(f, str) else [] for f in df["features"]]
    return float(sum(r_att(n, truth) for n in named) / max(len(named), 1))


def run_rung(rung: str, workspace: Path, sets: list[str], skip: set[str]) -> dict:
    from eagrl.data.stage import prepare, validate
    from eagrl.expert.stage import expert_stage
    from eagrl.mcts.stage import mcts_stage
    from eagrl.rl.stage import rl_stage
    from eagrl.sft.stage import direct_stage, sft_stage
    from eagrl.zeroshot.stage import zeroshot_stage

    workspace.mkdir(parents=True, exist_ok=True)
    cfg = config(rung, workspace, sets)
    out = workspace / "out"
    seconds: dict[str, float] = {}
    results = {}

    def stage(name: str, fn, c=None, **kw):
        t0 = time.perf_counter()
        log(f"{rung}: {name} ...")
        res = fn(c or cfg, out if name not in ("grpo",) else workspace / "out-grpo", **kw)
        seconds[name] = round(time.perf_counter() - t0, 1)
        log(f"{rung}: {name} {res.status} in {seconds[name]:.0f} s: {res.message}")
        if res.status != "succeeded":
            raise SystemExit(f"{name} failed: {res.message}")
        results[name] = res
        return res

    stage("validate", validate)
    stage("prepare", prepare)
    stage("expert", expert_stage)
    if "zeroshot" not in skip:
        stage("zeroshot", zeroshot_stage)
    stage("mcts", mcts_stage)
    stage("sft", sft_stage)
    stage("eag-rl", rl_stage)
    if "grpo" not in skip:
        grpo = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"variant": "grpo"})})
        (workspace / "out-grpo").mkdir(exist_ok=True)
        sft_status = out / "sft"
        link = workspace / "out-grpo" / "sft"
        if not link.exists():
            link.symlink_to(sft_status.resolve())  # GRPO starts from the same SFT adapter
        stage("grpo", rl_stage, grpo)
    if "direct" not in skip:
        stage("direct", direct_stage)

    def m(name: str, key: str):
        res = results.get(name)
        return None if res is None else res.metrics.get(key)

    line = {"rung": rung, "auroc_zeroshot": m("zeroshot", "test_auroc"),
            "auroc_sft": m("sft", "test_auroc"), "auroc_eagrl": m("eag-rl", "test_auroc"),
            "auroc_grpo": m("grpo", "test_auroc"), "auroc_direct": m("direct", "test_auroc"),
            "fit_auroc_sft": m("sft", "train_auroc"), "fit_auroc_eagrl": m("eag-rl", "train_auroc"),
            "fit_auroc_direct": m("direct", "train_auroc"), "seconds": seconds}
    if rung == "synthetic":
        from eagrl.data import synthetic

        # the causes of the recipe the cohort came from (data.data_path), the packaged one's by default
        truth = set(synthetic.planted_causes(synthetic.load_recipe(cfg.data.data_path
                                                                   or synthetic.default_recipe_path())))
        for name, key in (("eag-rl", "r_att_truth_eagrl"), ("grpo", "r_att_truth_grpo"), ("sft", "r_att_truth_sft")):
            res = results.get(name)
            line[key] = None if res is None else named_overlap(Path(res.outputs["heldout"]) / "predictions.csv",
                                                               truth)
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rung", choices=list(RUNGS), default="synthetic")
    ap.add_argument("--workspace", type=Path, default=None, help="default: runs/ladder-<rung>")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--skip", action="append", default=[], choices=["zeroshot", "grpo", "direct"])
    args = ap.parse_args()
    # the stages' progress lines through their own single handler (a root handler as well printed each one twice)
    os.environ.setdefault("EAGRL_LOG_LEVEL", "INFO")
    from eagrl.stage import progress_logging

    progress_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ws = (args.workspace or Path("runs") / f"ladder-{args.rung}").resolve()
    line = run_rung(args.rung, ws, args.sets, set(args.skip))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
