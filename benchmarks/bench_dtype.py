"""How fast is the policy model in bfloat16 against float32 on this CPU? Checks what ``model.dtype: auto`` chose.

bfloat16 is about 2x faster than float32 for generation on a CPU with bfloat16 instructions (AVX-512 BF16, AMX).
On a CPU without them PyTorch emulates bfloat16 and the same work is several times slower (docs/results.md,
session 24: 4x a forward pass, 13x a training step on an AVX2 CPU), so the default profile's ``auto`` takes float32
there (``eagrl.config.llm.auto_dtype``); the JSON line says which one ``auto`` picks on this machine.
This times one forward pass (no gradient) and one forward + backward pass (every weight trainable, the worst case
of a LoRA step) of a ``--tokens``-token sequence in each dtype, the median of ``--repeats``, and prints one JSON
line last with the CPU's bfloat16 flags and each dtype's seconds as a ratio to float32's.

    .venv/bin/python benchmarks/bench_dtype.py [--source smollm2-135m] [--tokens 520] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=520, help="sequence length (the compact prompt is ~510 tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import torch

    from eagrl.config.llm import ModelConfig, auto_dtype, cpu_bf16_flags
    from eagrl.llm.loading import load_model

    ids = torch.randint(100, 10000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    seconds = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(ModelConfig(source=args.source, dtype=dtype)).model

        def forward():
            with torch.no_grad():
                model(input_ids=ids)

        def train_step():
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()

        seconds[dtype] = {"forward": round(timed(forward, args.repeats), 3),
                          "forward_backward": round(timed(train_step, args.repeats), 3)}
        print(f"{dtype}: {seconds[dtype]}", flush=True)
    base = seconds["float32"]
    line = {"source": args.source, "tokens": args.tokens, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": cpu_bf16_flags(), "auto_dtype": auto_dtype("cpu"), "threads": torch.get_num_threads(),
            "seconds": seconds,
            "ratio_to_float32": {d: {k: round(v / base[k], 2) for k, v in s.items()} for d, s in seconds.items()}}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
