"""1,000 bootstrap resamples of AUROC and AUPRC on 100,000 predictions: vectorised against scikit-learn in a loop.

Scores are rounded to 3 decimals by default, as the structured readout's probabilities are (few distinct
values, many ties). The baseline is what one writes without :mod:`eagrl.metrics`: draw the same
(R, n) index matrix, then call ``roc_auc_score`` and ``average_precision_score`` on each resample. The
vectorised path (``bootstrap_distribution``) counts, by one ``bincount`` per chunk of resamples, how many
positives and negatives of each distinct score every resample drew, and reads both statistics from those
counts (cumulative sums over the sorted distinct scores). The script checks that both give the same values on every
resample (to 1e-9) and prints both times and the ratio.

    .venv/bin/python benchmarks/bench_metrics.py                     # n = 100,000, 1,000 resamples
    .venv/bin/python benchmarks/bench_metrics.py --n 20000 --boot 200  # quicker
    .venv/bin/python benchmarks/bench_metrics.py --decimals -1         # every score distinct (worst case)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from eagrl.metrics import bootstrap_distribution, bootstrap_indices


def data(n: int, seed: int = 0, decimals: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Labels at 20% prevalence and probabilities rounded to ``decimals`` (ties, as an LLM's readout has;
    a negative value keeps every score distinct, the worst case for the tie-grouped statistics)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.float64)
    s = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    return y, (np.round(s, decimals) if decimals >= 0 else s)


def sklearn_loop(y, s, idx) -> dict[str, np.ndarray]:
    au, ap = np.empty(len(idx)), np.empty(len(idx))
    for r, i in enumerate(idx):
        au[r] = roc_auc_score(y[i], s[i])
        ap[r] = average_precision_score(y[i], s[i])
    return {"auroc": au, "auprc": ap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="predictions")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decimals", type=int, default=3, help="round the scores (negative: all distinct)")
    args = parser.parse_args()

    y, s = data(args.n, args.seed, args.decimals)
    print(f"n = {args.n:,} predictions ({int(y.sum()):,} positive, {np.unique(s).size:,} distinct scores), "
          f"{args.boot:,} resamples, AUROC + AUPRC")

    t0 = time.perf_counter()
    fast = bootstrap_distribution(y, s, metrics=("auroc", "auprc"), n_boot=args.boot, seed=args.seed)
    t_fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    idx = bootstrap_indices(args.n, args.boot, args.seed)  # the very resamples the vectorised path drew
    slow = sklearn_loop(y, s, idx)
    t_slow = time.perf_counter() - t0

    for m in ("auroc", "auprc"):
        gap = float(np.max(np.abs(fast[m] - slow[m])))
        if gap > 1e-9:
            raise SystemExit(f"{m}: vectorised and scikit-learn disagree by {gap:.2e} on some resample")
    lo, hi = np.percentile(fast["auroc"], [2.5, 97.5])
    print(f"AUROC 95% interval [{lo:.4f}, {hi:.4f}]; every resample equal to scikit-learn's (max gap < 1e-9)")
    print(f"scikit-learn loop: {t_slow:8.2f} s")
    print(f"vectorised:        {t_fast:8.2f} s")
    print(f"ratio:             {t_slow / t_fast:8.1f}x")


if __name__ == "__main__":
    main()
