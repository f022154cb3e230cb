"""`eagrl serve` under load on the CPU path: 16 concurrent clients for 60 s against the batched server, then
the same load against one-request-at-a-time serving (--max-batch-size 1), in the same run. Prints
requests/s, p50/p95 latency and errors for each, and the throughput ratio. Targets: 0 errors; batched
>= 2x the one-at-a-time throughput.

    .venv/bin/python benchmarks/bench_serve.py [--model tiny|smollm2-135m|PATH] [--route clinical|completions]
        [--clients 16] [--seconds 60] [--threads 1]

The clinical route gets real TJH test patients (canonical JSON); the completions route gets short prompts
with 16 new tokens each (greedy).
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from eagrl.config import DataConfig
from eagrl.data.cohort import build_cohort
from eagrl.data.sources import get_source
from eagrl.serve.process import running_server
from eagrl.serve.schema import record_to_json

KEY = "bench-key"


def tjh_patients(n: int = 64) -> list[dict]:
    cfg = DataConfig(dataset="tjh", task="mortality")
    src = get_source("tjh")
    cohort = build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg)
    return [record_to_json(cohort.patient(s)) for s in cohort.split_ids("test")[:n]]


def requests_for(route: str) -> tuple[str, list[dict]]:
    if route == "clinical":
        return "/clinical/v1/predict", tjh_patients()
    words = ["hemoglobin", "albumin", "lactate", "creatinine", "the patient", "risk of death", "ferritin", "D-dimer"]
    return "/openai/v1/completions", [{"model": "eagrl-policy", "prompt": f"Assess {w} in a patient with",
                                       "max_tokens": 16, "temperature": 0} for w in words]


async def load(url: str, path: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        k = i
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                r = await http.post(url + path, json=bodies[k % len(bodies)])
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1
            k += clients

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / wall,
            "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "wall": wall}


def run(model: str, profile: str, route: str, batch: int, clients: int, seconds: float, threads: int,
        log: Path) -> dict:
    path, bodies = requests_for(route)
    args = ["--model", model, "--profile", profile, "--max-batch-size", str(batch), "--max-wait-ms", "20",
            "--timeout", "600", "--set", f"generation.cpu_threads={threads}"]
    with running_server(*args, log_path=log, env={"EAGRL_API_KEY": KEY}) as url:
        asyncio.run(load(url, path, bodies[:2], 2, 5))  # warm-up: first-call allocations, readout vocab
        return asyncio.run(load(url, path, bodies, clients, seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--profile", default=None, help="default: smoke for tiny, else default")
    ap.add_argument("--route", choices=("clinical", "completions"), default="clinical")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--batch", type=int, default=16, help="max batch size of the batched server")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits busy shared CPUs)")
    a = ap.parse_args()
    profile = a.profile or ("smoke" if a.model == "tiny" else "default")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, batch in (("batched", a.batch), ("one at a time", 1)):
            results[name] = r = run(a.model, profile, a.route, batch, a.clients, a.seconds, a.threads,
                                     Path(tmp) / f"{batch}.log")
            print(f"{name:>14} (max batch {batch:>2}): {r['rps']:6.2f} req/s  p50 {r['p50'] * 1000:7.0f} ms  "
                  f"p95 {r['p95'] * 1000:7.0f} ms  {r['requests']} ok, {r['errors']} errors in {r['wall']:.0f} s",
                  flush=True)
    ratio = results["batched"]["rps"] / results["one at a time"]["rps"]
    errors = sum(r["errors"] for r in results.values())
    print(f"{a.route} route, model {a.model}, {a.clients} clients x {a.seconds:.0f} s: batched / one-at-a-time "
          f"throughput {ratio:.2f}x (target >= 2x: {'met' if ratio >= 2 else 'MISSED'}); errors {errors} "
          f"(target 0: {'met' if errors == 0 else 'MISSED'})")


if __name__ == "__main__":
    main()
