"""How to time T(1): a member's one-token pass timed three ways, side by side, per round.

1. as profiles before ``settings.one_token_runs`` timed it: the latency grid of every member (1, 2,
   ..., 32 new tokens each, members in turn), T(1) the first pass after other members' passes;
2. as the profile times it now: the same grid, an untimed one-token pass of the member first;
3. in a decode loop: the member alone, one token after another on a growing cache (what a draft
   and the target decoding alone pay), the first pass dropped.

The three are taken in each of ``--rounds`` rounds, one after another, so the machine's drift hits
them alike; compare within a round. Prints a table and writes JSON with ``-o``.

    .venv/bin/python benchmarks/one_token_runs.py [--pool smollm2] [--context 64] [--rounds 3] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from polyplan.documents.files import atomic_write_bytes
from polyplan.profiler.latency import measure_context
from polyplan.profiler.machine import machine_facts
from polyplan.profiler.settings import DENSE_NEW_TOKENS
from polyplan.weights.pools import load_pool


def decode_loop_ms(drafter, context: int, steps: int = 16) -> float:
    """Median ms of one-token passes on a growing cache after ``context`` tokens (the first dropped)."""
    ids = torch.randint(0, drafter.vocab_size, (context + steps,), generator=torch.Generator().manual_seed(1))
    drafter.reset()
    drafter.score(ids[:context], last=1)
    times = []
    for i in range(context, context + steps):
        with drafter.decoding_alone():
            t0 = time.perf_counter()
            drafter.score(ids[i : i + 1])
            times.append(time.perf_counter() - t0)
    drafter.reset()
    return 1000 * statistics.median(times[1:])


def one_round(drafters, target: str, context: int, first: bool) -> dict[str, dict[str, float]]:
    """T(1) in ms per model member, the three ways."""
    grid = list(DENSE_NEW_TOKENS)
    ways = {}
    for name, runs in (("after other passes", False), ("one of a run", True)):
        rows = measure_context(drafters, context, grid, 5, 1 if first else 0, target=target, one_token_runs=runs)
        ways[name] = {n: 1000 * r.median_s[0] for n, r in rows.items()}
    models = [d for d in drafters if not d.point_mass]
    ways["decode loop"] = {d.name: decode_loop_ms(d, context) for d in models}
    return {d.name: {way: ways[way][d.name] for way in ways} for d in models}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()

    pool = load_pool(args.pool)
    drafters = [pool.drafter(n) for n in pool.names]
    rounds = [one_round(drafters, pool.target, args.context, i == 0) for i in range(args.rounds)]
    ways = list(rounds[0][pool.target])
    print(f"T(1) in ms at {args.context} cached tokens, per round: " + " | ".join(ways))
    for name in rounds[0]:
        cells = [" / ".join(f"{r[name][w]:.1f}" for r in rounds) for w in ways]
        print(f"{name:24s} " + " | ".join(cells))
    if args.output:
        doc = {"machine": machine_facts(), "context": args.context, "rounds": rounds}
        atomic_write_bytes(args.output, json.dumps(doc, indent=1).encode())


if __name__ == "__main__":
    main()
