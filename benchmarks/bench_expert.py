"""One ConCare training epoch: the vectorised all-prefix pass against a per-visit-prefix loop.

The public reference implementations recompute the model for every visit prefix (quadratic in visits).
Both variants below train on the same loss (BCE at every valid visit + DeCov) from the same weights; the
script checks their outputs agree to 1e-5 and prints the time of one epoch of each and the ratio
(target >= 5x).

    .venv/bin/python benchmarks/bench_expert.py [--dataset tjh] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from eagrl.config import DataConfig
from eagrl.data.cohort import build_cohort
from eagrl.data.sources import get_source
from eagrl.expert.config import ExpertConfig
from eagrl.expert.model import ConCare
from eagrl.expert.train import batches, to_tensors


def per_prefix(model: ConCare, x, mask, demo):
    """The baseline: one forward pass per visit prefix, as the reference code does."""
    logits, attn, decov = [], [], 0.0
    for t in range(x.shape[1]):
        out = model(x[:, : t + 1], mask[:, : t + 1], demo)
        logits.append(out.logit)
        attn.append(out.attention)
        decov = decov + out.decov
    return torch.stack(logits, 1), torch.stack(attn, 1), decov / x.shape[1]


def vectorised(model: ConCare, x, mask, demo):
    out = model(x, mask, demo, every_visit=True)
    return out.logit, out.attention, out.decov


def loss_fn(logit, y, mask, decov, w):
    target = y[:, None].expand_as(logit)
    bce = F.binary_cross_entropy_with_logits(logit[mask], target[mask])
    return bce + w * decov


def epoch(model, data, forward, cfg, seed=0):
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for b in batches(data, cfg.batch_size, gen):
        logit, _, decov = forward(model, b["x"], b["mask"], b["demo"])
        loss = loss_fn(logit, b["y"], b["mask"], decov, cfg.decov_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="tjh")
    ap.add_argument("--task", default="mortality")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dcfg = DataConfig(dataset=args.dataset, task=args.task)
    src = get_source(args.dataset)
    cohort = build_cohort(src.to_raw(src.read(src.default_path()), dcfg), dcfg)
    data = to_tensors(cohort.tensors("train"))
    cfg = ExpertConfig(dropout=0.0, batch_size=args.batch_size, progress=False)
    torch.manual_seed(0)
    base = ConCare(len(cohort.feature_names), 2, cfg).train()

    # same weights, same inputs: the two computations agree
    probe = {k: v[:32] for k, v in data.items()}
    with torch.no_grad():
        a = per_prefix(base, probe["x"], probe["mask"], probe["demo"])
        b = vectorised(base, probe["x"], probe["mask"], probe["demo"])
    m = probe["mask"]
    err = max((a[0][m] - b[0][m]).abs().max().item(), (a[1][m] - b[1][m]).abs().max().item())
    print(f"{cohort.dataset}: {len(data['y'])} train stays, up to {data['x'].shape[1]} visits, "
          f"{data['x'].shape[2]} features; max |difference| of outputs {err:.2e} ({'ok' if err < 1e-5 else 'MISMATCH'})")

    loop_s = epoch(copy.deepcopy(base), data, per_prefix, cfg)
    vec_s = epoch(copy.deepcopy(base), data, vectorised, cfg)
    print(f"one epoch: per-prefix loop {loop_s:.2f} s, vectorised {vec_s:.2f} s: "
          f"{loop_s / vec_s:.1f}x faster (target >= 5x)")


if __name__ == "__main__":
    main()
