"""llama.cpp and torch share the machine's cores: which llama.cpp thread count runs best, and does a
llama.cpp pass slow the torch pass right after it (its threads spinning after their work)?

Measures, interleaved and repeated, at 64 cached tokens: the llama.cpp member's one-token and
16-token passes at each thread count, and the torch target's one-token pass alone, right after a
llama.cpp pass, right after a torch bf16 pass and after a 5 ms sleep. Run it once per environment
to compare (e.g. ``OMP_WAIT_POLICY=PASSIVE``: ggml's OpenMP threads then sleep instead of spin).

    .venv/bin/python benchmarks/llamacpp_threads.py [--pool smollm2] [--member smollm2-135m:q4]
                                                    [--threads 1,2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from polyplan.models.llamacpp_drafter import LlamaCppDrafter
from polyplan.profiler.machine import machine_facts
from polyplan.weights.pools import load_pool

CONTEXT = 64


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--member", default="smollm2-135m:q4", help="the llama.cpp member")
    ap.add_argument("--half", default="smollm2-135m:bf16", help="a torch member to interleave ('' for none)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    pool = load_pool(args.pool)
    target = pool.drafter(pool.target)
    base = pool.drafter(args.member)
    llamas = {
        t: LlamaCppDrafter(base.gguf_path, f"{args.member} threads={t}", threads=t, tokenizer=base.tokenizer)
        for t in (int(x) for x in args.threads.split(","))
    }
    half = pool.drafter(args.half) if args.half else None
    ids = torch.randint(0, target.vocab_size, (CONTEXT + 16,), generator=torch.Generator().manual_seed(0))
    for d in (target, *llamas.values(), *([half] if half else [])):
        d.reset()
        d.score(ids[:CONTEXT])

    def one(d, n: int) -> float:
        t0 = time.perf_counter()
        d.score(ids[CONTEXT : CONTEXT + n])
        dt = time.perf_counter() - t0
        d.rollback(CONTEXT)
        return dt

    samples: dict[str, list[float]] = {}
    for rep in range(args.repeats + 1):  # the first pass over everything is a warm-up
        rows: list[tuple[str, float]] = []
        for t, q in llamas.items():
            rows += [(f"llama.cpp T(1), {t} threads", one(q, 1)), (f"llama.cpp T(16), {t} threads", one(q, 16))]
        rows.append(("torch target T(1) alone", one(target, 1)))
        for t, q in llamas.items():
            one(q, 16)
            rows.append((f"torch target T(1) right after a llama.cpp pass ({t} threads)", one(target, 1)))
        if half is not None:
            one(half, 1)
            rows.append(("torch target T(1) right after a torch bf16 pass", one(target, 1)))
        time.sleep(0.005)
        rows.append(("torch target T(1) after a 5 ms sleep", one(target, 1)))
        if rep:
            for k, v in rows:
                samples.setdefault(k, []).append(v)

    m = machine_facts()
    env = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS") if k in os.environ}
    print(f"machine: {m.get('cpu')}, {m.get('cores')} cores, torch threads {torch.get_num_threads()}; env {env or '-'}")
    print(f"{args.repeats} repeats, {CONTEXT} cached tokens, medians (ms)\n")
    print("| pass | median ms | min ms |\n|---|---:|---:|")
    for k, v in samples.items():
        print(f"| {k} | {1000 * statistics.median(v):.1f} | {1000 * min(v):.1f} |")


if __name__ == "__main__":
    main()
