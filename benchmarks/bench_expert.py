"""One training epoch of the vectorised ConCare against a per-visit-prefix loop, same weights.

The public reference implementations (pyehr ``models/concare.py``) compute the whole network once for
every visit prefix x[:, :t] to get a prediction at each visit, which is quadratic in the number of visits.
The baseline below does exactly that with this project's layers (so the only difference is the prefix
loop); the vectorised model gives all T prefix predictions in one pass (``every_visit=True``).

Both train one epoch from the same weights, on the same batches, with the reference's objective: BCE of
every valid visit's prediction against the stay label. Dropout and DeCov are off here so the two paths
optimise the identical function (DeCov's batch differs: the reference recomputes ended stays at every later
prefix, the vectorised pass keeps only distinct queries); both still compute DeCov in the forward pass.
The script checks that the predictions agree to 1e-5 before training and that the weights still agree
after the epoch, then prints the times and the ratio. It also times the last-visit path that
``eagrl.expert.train`` uses (one query per stay), against the same prefix loop.

    .venv/bin/python benchmarks/bench_expert.py              # TJH train split (73 features, up to 13 visits)
    .venv/bin/python benchmarks/bench_expert.py --synthetic --stays 512 --visits 24
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from eagrl.expert.config import ExpertConfig
from eagrl.expert.model import ConCare
from eagrl.expert.train import batches, seed_everything, to_tensors


def prefix_loop(model: ConCare, x, mask, demo) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's way: rerun the network on every prefix x[:, :t], keep its last-visit output."""
    logits, decov = [], 0.0
    t_max = x.shape[1]
    for t in range(1, t_max + 1):
        out = model(x[:, :t], mask[:, :t], demo)  # recomputes GRUs and every attention on t visits
        logits.append(out.logit)
        decov = decov + out.decov
    return torch.stack(logits, dim=1), decov / t_max  # (B, T), ()


def vectorised(model: ConCare, x, mask, demo) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x, mask, demo, every_visit=True)
    return out.logit, out.decov  # (B, T), ()


def last_visit(model: ConCare, x, mask, demo) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x, mask, demo)
    return out.logit[:, None], out.decov  # (B, 1), ()


def train_epoch(model: ConCare, data: dict, cfg: ExpertConfig, forward, per_visit: bool = True) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    start = time.perf_counter()
    for b in batches(data, cfg.batch_size, gen):
        logits, decov = forward(model, b["x"], b["mask"], b["demo"])
        if per_visit:  # every valid visit predicts the stay's label
            y = b["y"][:, None].expand_as(logits)
            bce = F.binary_cross_entropy_with_logits(logits[b["mask"]], y[b["mask"]])
        else:
            bce = F.binary_cross_entropy_with_logits(logits[:, 0], b["y"])
        loss = bce + cfg.decov_weight * decov
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def load_data(args) -> dict[str, np.ndarray]:
    if not args.synthetic:
        try:
            from eagrl.config import DataConfig
            from eagrl.data.cohort import build_cohort
            from eagrl.data.sources import get_source

            cfg = DataConfig(dataset="tjh", task="mortality")
            src = get_source("tjh")
            return build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg).tensors("train")
        except Exception as exc:  # noqa: BLE001 - a benchmark falls back to data of the same shape
            print(f"TJH unavailable ({exc}); using synthetic data")
    rng = np.random.default_rng(0)
    n, t, f = args.stays, args.visits, args.features
    lengths = rng.integers(2, t + 1, n)
    mask = np.arange(t)[None, :] < lengths[:, None]
    return {
        "x": (rng.normal(size=(n, t, f)) * mask[:, :, None]).astype(np.float32),
        "mask": mask,
        "demo": rng.normal(size=(n, 2)).astype(np.float32),
        "y": (rng.random(n) < 0.4).astype(np.float32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", action="store_true", help="random data instead of the TJH train split")
    ap.add_argument("--stays", type=int, default=256)
    ap.add_argument("--visits", type=int, default=13)
    ap.add_argument("--features", type=int, default=73)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    arrays = load_data(args)
    data = to_tensors(arrays)
    n, t_max, f = data["x"].shape
    cfg = ExpertConfig(hidden=args.hidden, ff_hidden=args.hidden, dropout=0.0, decov_weight=0.0, progress=False)
    seed_everything(cfg.seed)
    base = ConCare(f, data["demo"].shape[1], cfg)
    print(f"data: {n} stays, up to {t_max} visits (median {int(np.median(arrays['mask'].sum(1)))}), "
          f"{f} features; H={cfg.hidden}, batch {cfg.batch_size}, {torch.get_num_threads()} threads")

    # Same weights, same outputs: every valid visit's prediction, in eval mode.
    model = copy.deepcopy(base).eval()
    with torch.no_grad():
        loop_logit, _ = prefix_loop(model, data["x"], data["mask"], data["demo"])
        vec_logit, _ = vectorised(model, data["x"], data["mask"], data["demo"])
    m = data["mask"]
    diff = (torch.sigmoid(loop_logit[m]) - torch.sigmoid(vec_logit[m])).abs().max().item()
    print(f"max |p_loop - p_vectorised| over {int(m.sum())} visit predictions: {diff:.2e}")
    assert diff <= 1e-5, "the vectorised model disagrees with the prefix loop"

    # One training epoch each, from the same weights on the same batches.
    m_loop, m_vec, m_last = (copy.deepcopy(base) for _ in range(3))
    t_loop = train_epoch(m_loop, data, cfg, prefix_loop)
    t_vec = train_epoch(m_vec, data, cfg, vectorised)
    t_last = train_epoch(m_last, data, cfg, last_visit, per_visit=False)
    w_diff = max((a - b).abs().max().item() for a, b in zip(m_loop.parameters(), m_vec.parameters()))
    print(f"max |w_loop - w_vectorised| after the epoch: {w_diff:.2e}")
    print(f"one epoch, prediction at every visit:  prefix loop {t_loop:7.2f} s   vectorised {t_vec:6.2f} s   "
          f"ratio {t_loop / t_vec:5.1f}x")
    print(f"one epoch, prediction at the last visit (eagrl's training): {t_last:6.2f} s   "
          f"ratio to the prefix loop {t_loop / t_last:5.1f}x")


if __name__ == "__main__":
    main()
