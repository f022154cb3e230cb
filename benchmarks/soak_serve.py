"""Soak `eagrl serve`: N concurrent clients (default 32) for a fixed time (default 10 minutes) on 127.0.0.1,
mixing valid clinical requests (real TJH test patients), OpenAI completions and chat requests, and malformed
ones (bad JSON, unknown features, missing fields, wrong types, no API key, an unknown route, a body over the
size limit), each with the status it must get. Reports requests, errors by kind, p50/p95/p99 latency and the
server's RSS (psutil, every --rss-every seconds) at the start and the end, and its growth from the end of the
second minute (or the first fifth of a shorter run) to the end. Targets: 0 unexpected answers; RSS growth
under 10%.

    .venv/bin/python benchmarks/soak_serve.py [--model tiny] [--clients 32] [--seconds 600] [--max-requests N]
        [--out soak.json]

Bounded: at most 64 clients, 3600 s and --max-requests requests (default 200,000); the server is a child
process bound to 127.0.0.1 only and is always stopped.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil

from eagrl.config import DataConfig
from eagrl.data.cohort import build_cohort
from eagrl.data.sources import get_source
from eagrl.serve.process import running_server
from eagrl.serve.schema import record_to_json

KEY = "soak-key"
MODEL = "eagrl-policy"
MAX_CLIENTS, MAX_SECONDS = 64, 3600
OK = {200}
CLIENT_ERROR = set(range(400, 500))


def tjh_patients(n: int = 64) -> list[dict]:
    cfg = DataConfig(dataset="tjh", task="mortality")
    src = get_source("tjh")
    cohort = build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg)
    return [record_to_json(cohort.patient(s)) for s in cohort.split_ids("test")[:n]]


def request_kinds(patients: list[dict], body_limit: int) -> list[tuple[str, float, object]]:
    """(kind, weight, maker): maker(rng) -> (method, path, headers, json or bytes, expected statuses)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    words = ["hemoglobin", "albumin", "lactate", "creatinine", "ferritin", "D-dimer", "the patient", "risk"]

    def clinical(rng):
        return "POST", "/clinical/v1/predict", auth, rng.choice(patients), OK

    def completion(rng):
        return "POST", "/openai/v1/completions", auth, {
            "model": MODEL, "prompt": f"Assess {rng.choice(words)} in a patient with", "max_tokens": 8,
            "temperature": 0}, OK

    def chat(rng):
        return "POST", "/openai/v1/chat/completions", auth, {
            "model": MODEL, "messages": [{"role": "user", "content": f"Is {rng.choice(words)} high?"}],
            "max_tokens": 8, "temperature": 0}, OK

    def bad_json(rng):
        return "POST", "/clinical/v1/predict", auth | {"content-type": "application/json"}, b'{"visits": [', {422}

    def unknown_feature(rng):
        return "POST", "/clinical/v1/predict", auth, {"visits": [{"time": "2020-01-01", "values": {"bogus": 1}}]}, {422}

    def no_visits(rng):
        return "POST", "/clinical/v1/predict", auth, {"age": 50}, {422}

    def wrong_type(rng):
        return "POST", "/openai/v1/completions", auth, {"model": MODEL, "prompt": "x", "max_tokens": "many"}, {422}

    def no_key(rng):
        return "POST", "/openai/v1/completions", {}, {"model": MODEL, "prompt": "x", "max_tokens": 4}, {401}

    def unknown_route(rng):
        return "GET", "/openai/v1/nothing-here", auth, None, {404}

    def too_large(rng):
        headers = auth | {"content-type": "application/json"}
        return "POST", "/clinical/v1/predict", headers, b" " * (body_limit + 1), {413}

    return [("clinical", 0.35, clinical), ("completion", 0.2, completion), ("chat", 0.15, chat),
            ("bad_json", 0.05, bad_json), ("unknown_feature", 0.05, unknown_feature), ("no_visits", 0.05, no_visits),
            ("wrong_type", 0.05, wrong_type), ("no_key", 0.04, no_key), ("unknown_route", 0.04, unknown_route),
            ("too_large", 0.02, too_large)]


def server_process(port: int) -> psutil.Process:
    """The `eagrl serve` child listening on ``port`` (this process started it)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "serve" in child.cmdline() and str(port) in child.cmdline():
                return child
        except psutil.Error:
            continue
    raise RuntimeError(f"no eagrl serve child on port {port}")


async def soak(url: str, kinds, clients: int, seconds: float, max_requests: int, server: psutil.Process,
               rss_every: float, seed: int) -> dict:
    names = [k[0] for k in kinds]
    weights = [k[1] for k in kinds]
    makers = {k[0]: k[2] for k in kinds}
    latencies: dict[str, list[float]] = {n: [] for n in names}
    counts: Counter = Counter()
    unexpected: Counter = Counter()
    examples: dict[str, str] = {}
    rss: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds
    sent = 0

    async def sample_rss() -> None:
        while time.perf_counter() < deadline and sent < max_requests:
            rss.append((time.perf_counter() - t0, server.memory_info().rss))
            await asyncio.sleep(rss_every)

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        rng = random.Random(seed * 1000 + i)
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            kind = rng.choices(names, weights)[0]
            method, path, headers, body, expected = makers[kind](rng)
            kw = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
            t = time.perf_counter()
            try:
                r = await http.request(method, url + path, headers=headers, **kw)
                status = r.status_code
                detail = r.text[:200]
            except httpx.HTTPError as exc:
                status, detail = type(exc).__name__, str(exc)[:200]
            latencies[kind].append(time.perf_counter() - t)
            counts[(kind, status)] += 1
            if status not in expected:
                unexpected[(kind, status)] += 1
                examples.setdefault(f"{kind} -> {status}", detail)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(sample_rss(), *(client(i, http) for i in range(clients)))
    rss.append((time.perf_counter() - t0, server.memory_info().rss))
    wall = time.perf_counter() - t0

    def pct(values: list[float]) -> dict:
        if not values:
            return {"n": 0}
        a = np.array(values) * 1000
        return {"n": len(values), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
                "p99_ms": float(np.percentile(a, 99))}

    valid = [x for k in ("clinical", "completion", "chat") for x in latencies[k]]
    malformed = [x for k in names if k not in ("clinical", "completion", "chat") for x in latencies[k]]
    ref_t = min(120.0, seconds / 5)  # the second minute's end, or a fifth of a shorter run
    ref = next((m for t, m in rss if t >= ref_t), rss[-1][1])
    return {
        "clients": clients, "seconds": round(wall, 1), "requests": sum(counts.values()),
        "requests_per_s": sum(counts.values()) / wall,
        "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(counts.items(), key=str)},
        "unexpected": sum(unexpected.values()),
        "unexpected_by_kind": {f"{k} {s}": n for (k, s), n in unexpected.items()}, "unexpected_examples": examples,
        "latency_all": pct(valid + malformed), "latency_valid": pct(valid), "latency_malformed": pct(malformed),
        "latency_by_kind": {k: pct(v) for k, v in latencies.items()},
        "rss_start_mb": rss[0][1] / 2**20, "rss_end_mb": rss[-1][1] / 2**20, "rss_ref_s": ref_t,
        "rss_ref_mb": ref / 2**20, "rss_growth_from_ref": rss[-1][1] / ref - 1,
        "rss_timeline_mb": [(round(t), round(m / 2**20, 1)) for t, m in rss],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--profile", default=None, help="default: smoke for tiny, else default")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=16, help="the server's --max-batch-size")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of the server")
    ap.add_argument("--rss-every", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the full result as JSON here")
    a = ap.parse_args()
    if not (1 <= a.clients <= MAX_CLIENTS and 0 < a.seconds <= MAX_SECONDS and a.max_requests > 0):
        ap.error(f"--clients must lie in 1..{MAX_CLIENTS}, --seconds in (0, {MAX_SECONDS}], --max-requests > 0")
    profile = a.profile or ("smoke" if a.model == "tiny" else "default")
    body_limit = 1_000_000
    kinds = request_kinds(tjh_patients(), body_limit)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        args = ["--model", a.model, "--profile", profile, "--max-batch-size", str(a.batch), "--max-wait-ms", "20",
                "--timeout", "600", "--max-body-bytes", str(body_limit), "--set", f"generation.cpu_threads={a.threads}"]
        with running_server(*args, log_path=log, env={"EAGRL_API_KEY": KEY}) as url:
            server = server_process(int(url.rsplit(":", 1)[1]))
            asyncio.run(soak(url, kinds[:3], 2, 5, 50, server, 5, a.seed))  # warm-up: first-call allocations
            result = asyncio.run(soak(url, kinds, a.clients, a.seconds, a.max_requests, server, a.rss_every, a.seed))
        result["server_log_tail"] = log.read_text()[-2000:] if result["unexpected"] else ""
    result.update(model=a.model, profile=profile, batch=a.batch, threads=a.threads)
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))
    la, lv = result["latency_all"], result["latency_valid"]
    print(f"{result['requests']} requests from {a.clients} clients in {result['seconds']:.0f} s "
          f"({result['requests_per_s']:.1f}/s); unexpected answers {result['unexpected']} "
          f"(target 0: {'met' if result['unexpected'] == 0 else 'MISSED'}) {result['unexpected_by_kind']}")
    print(f"latency all p50/p95/p99 {la['p50_ms']:.0f}/{la['p95_ms']:.0f}/{la['p99_ms']:.0f} ms; valid "
          f"{lv['p50_ms']:.0f}/{lv['p95_ms']:.0f}/{lv['p99_ms']:.0f} ms")
    print("by kind and status: " + ", ".join(f"{k}: {n}" for k, n in result["by_kind_and_status"].items()))
    growth = result["rss_growth_from_ref"]
    print(f"server RSS {result['rss_start_mb']:.0f} MB at the start, {result['rss_ref_mb']:.0f} MB at "
          f"{result['rss_ref_s']:.0f} s, {result['rss_end_mb']:.0f} MB at the end: {growth:+.1%} since "
          f"{result['rss_ref_s']:.0f} s (target < 10%: {'met' if growth < 0.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
