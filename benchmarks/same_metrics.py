"""Do two runs of the pipeline give the same metrics? Every ``metrics.json`` under one run folder against the same file
under the other, value by value; timings (seconds, rates) are left out, since they measure the machine, not the code.

Used to show that a refactoring changed no behaviour: run the smoke pipeline before and after, same seed, then

    .venv/bin/python benchmarks/same_metrics.py RUN_BEFORE RUN_AFTER

It prints one line per differing or missing value and a JSON summary last; exit 1 when any value differs. Folders
whose names carry a run key (``rl/eag-rl-<key>``) are matched by their name without the key; a changed key is printed
as a note (a key names a run, it is not a metric), not as every metric missing.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

TIMING = re.compile(r"(^|_)(seconds|secs|s|wall|time|per_s|per_second|per_minute|throughput|elapsed)(_|$)")
KEYED = re.compile(r"^(?P<stem>.+)-(?P<key>[0-9a-f]{10})$")


def _unkeyed(rel: Path) -> tuple[str, dict[str, str]]:
    """The relative path with run keys taken out of folder names, and the keys by folder stem."""
    parts, keys = [], {}
    for part in rel.parts:
        m = KEYED.match(part)
        if m:
            keys[m["stem"]] = m["key"]
            part = m["stem"] + "-<key>"
        parts.append(part)
    return "/".join(parts), keys


def collect(run: Path) -> tuple[dict[str, dict], dict[str, str]]:
    files, keys = {}, {}
    for path in sorted(run.rglob("metrics.json")):
        name, found = _unkeyed(path.relative_to(run))
        files[name] = json.loads(path.read_text())
        keys.update(found)
    return files, keys


def same(a, b, tol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    return a == b


def compare(before: Path, after: Path, tol: float = 0.0) -> tuple[list[str], dict]:
    fa, ka = collect(before)
    fb, kb = collect(after)
    notes = [f"note: run key of {stem}: {ka.get(stem)} -> {kb.get(stem)}" for stem in sorted(set(ka) | set(kb))
             if ka.get(stem) != kb.get(stem)]
    problems: list[str] = []
    compared = 0
    for name in sorted(set(fa) | set(fb)):
        if name not in fa or name not in fb:
            problems.append(f"{name}: only in {'after' if name not in fa else 'before'}")
            continue
        for key in sorted(set(fa[name]) | set(fb[name])):
            if TIMING.search(key):
                continue
            va, vb = fa[name].get(key), fb[name].get(key)
            compared += 1
            if va is None or vb is None or not same(va, vb, tol):
                problems.append(f"{name} {key}: {va} -> {vb}")
    return problems, {"files": len(set(fa) & set(fb)), "values": compared, "differ": len(problems), "notes": notes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--tol", type=float, default=0.0, help="relative tolerance (default 0: identical values)")
    args = ap.parse_args()
    for run in (args.before, args.after):
        if not run.is_dir():
            print(f"same_metrics: {run} is not a run folder", file=sys.stderr)
            return 2
    problems, summary = compare(args.before, args.after, args.tol)
    for line in [*summary.pop("notes"), *problems]:
        print(line)
    print(json.dumps(summary))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
