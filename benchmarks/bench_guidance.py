"""Expert guidance ablation of Stage 1: mean R_att of the selected trajectories with and without the expert.

Runs the MCTS stage twice on the same stays with the same seeds and budget (N, T, b), once guided by the
expert's C_exp (R = lam * R_cls + (1 - lam) * R_att) and once without (R_att = 0 in the search reward), then
compares the selected sets on R_att measured against C_exp (``r_att_expert``, the same yardstick for both):
each mean with its percentile-bootstrap 95% interval, and the difference with a bootstrap interval that
resamples patients (paired: the same patients in both arms). The stores are the stage's own, so a second call
resumes instead of searching again.

    .venv/bin/python benchmarks/bench_guidance.py --workspace WS --profile default --dataset tjh --task mortality \
        --set mcts.max_stays=40 [--set ...]

The workspace must hold the prepared cohort and the trained expert (``eagrl data prepare``, ``eagrl expert train``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def per_patient(selected: list[dict], key: str = "r_att_expert") -> dict[str, float]:
    """Each patient's mean ``key`` over its selected trajectories."""
    groups: dict[str, list[float]] = {}
    for s in selected:
        groups.setdefault(s["stay_id"], []).append(float(s[key]))
    return {sid: float(np.mean(v)) for sid, v in groups.items()}


def paired_difference(a: dict[str, float], b: dict[str, float], n_boot: int = 1000, seed: int = 0):
    """Mean of a - b over patients present in both, with a patient-resampling bootstrap interval."""
    ids = sorted(set(a) & set(b))
    d = np.array([a[i] - b[i] for i in ids])
    if d.size == 0:
        return float("nan"), [float("nan"), float("nan")], 0
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    return float(d.mean()), [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))], int(d.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--dataset", default="tjh")
    ap.add_argument("--task", default="mortality")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", type=Path, default=None, help="stage outputs (default WS/runs/guidance)")
    args = ap.parse_args()

    from eagrl.cli import build_config
    from eagrl.mcts.cohort_search import mean_ci
    from eagrl.mcts.select import trains_text
    from eagrl.mcts.stage import mcts_stage

    out = args.out or args.workspace / "runs" / "guidance"
    arms = {}
    for arm, guided in (("guided", True), ("unguided", False)):
        cfg = build_config(args.profile, args.dataset, None, args.task,
                           [*args.sets, f"mcts.expert_guidance={str(guided).lower()}"], args.workspace)
        res = mcts_stage(cfg, out / arm)
        selected = [r for r in (json.loads(x) for x in Path(res.outputs["selected"]).read_text().splitlines()
                                if x.strip()) if trains_text(r)]  # not the slot-only rollouts
        arms[arm] = {"selected": selected, "metrics": res.metrics, "cfg": cfg}
        print(f"{arm}: {res.message}", flush=True)

    cfg = arms["guided"]["cfg"]
    print(f"\n{args.dataset}/{args.task}, model {cfg.model.source}, N={cfg.mcts.rollouts}, "
          f"T={cfg.mcts.resolved_depth(cfg.generation.depth)}, b={cfg.mcts.branching}, seed {cfg.mcts.seed}, "
          f"{arms['guided']['metrics']['n_patients']} stays")
    print(
        f"{'arm':<10}{'selected':>9}  {'R_att vs C_exp (selected)':<30}{'R_cls (selected)':<26}"
        f"{'all trajectories R_att':>22}"
    )
    for arm, a in arms.items():
        sel = a["selected"]
        r_att, r_att_ci = mean_ci([s["r_att_expert"] for s in sel])
        r_cls, r_cls_ci = mean_ci([s["r_cls"] for s in sel])
        print(
            f"{arm:<10}{len(sel):>9}  {r_att:.3f} [{r_att_ci[0]:.3f}, {r_att_ci[1]:.3f}]{'':<9}"
            f"{r_cls:.3f} [{r_cls_ci[0]:.3f}, {r_cls_ci[1]:.3f}]{'':<5}{a['metrics']['all_r_att_expert_mean']:>22.3f}"
        )
    diff, ci, n = paired_difference(per_patient(arms["guided"]["selected"]), per_patient(arms["unguided"]["selected"]))
    print(f"guided - unguided, per-patient mean R_att over {n} patients selected in both arms: "
          f"{diff:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]")


if __name__ == "__main__":
    main()
