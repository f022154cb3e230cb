"""Prepare + validate PhysioNet 2012 (12,000 ICU stays): stays/s, peak memory, and the reader against a
naive per-record baseline measured in the same run. Target: the whole set in under 60 s on 2 cores.

    .venv/bin/python benchmarks/bench_data.py [--data-path ../shared/data/physionet2012]
"""
from __future__ import annotations

import argparse
import io
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd

from eagrl.config import load_config
from eagrl.data import stage as stages
from eagrl.data.sources import get_source


def naive_read_set(root: Path, set_: str) -> int:
    """The obvious loader: one pandas.read_csv per record file (the baseline)."""
    rows = 0
    with tarfile.open(root / f"set-{set_}.tar.gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".txt"):
                rows += len(pd.read_csv(io.BytesIO(tar.extractfile(member).read())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-path", type=Path, default=None)
    args = ap.parse_args()
    src = get_source("physionet2012")
    root = args.data_path or src.default_path()

    t = time.perf_counter()
    naive_rows = naive_read_set(root, "a")
    naive_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = src.read(root, sets=("a",))
    ours_s = time.perf_counter() - t
    print(f"reader, set A (4,000 records): per-record read_csv {naive_s:.2f} s ({naive_rows:,} rows), "
          f"eagrl {ours_s:.2f} s ({len(ours['events']):,} rows): {naive_s / ours_s:.1f}x faster")

    with tempfile.TemporaryDirectory() as ws:
        cfg = load_config("default", {"data.dataset": "physionet2012", "data.task": "mortality",
                                      "data.data_path": str(root), "workspace": ws})
        t = time.perf_counter()
        result = stages.prepare(cfg, Path(ws) / "out")  # validate (3 GX gates) + cohort + DVC + MLflow
        total = time.perf_counter() - t
    n = result.metrics["n_stays"]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"prepare + validate, all sets: {n:,} stays kept of 12,000 in {total:.1f} s "
          f"= {12000 / total:,.0f} stays/s; peak RSS {peak_mib:,.0f} MiB; target < 60 s: "
          f"{'met' if total < 60 else 'MISSED'}")


if __name__ == "__main__":
    main()
