"""Grouped heads in torch's kernel against transformers' SDPA, per pass size and context, on CPU.

polyplan runs a CPU model with grouped key/value heads under ``polyplan_sdpa_gqa``
(polyplan/models/attention.py): a pass of several tokens over a cache no longer copies the cache
once per query head. This times T(n, c) of one model both ways, alternating the two within each
round (the order flipped every round, so the machine's drift hits both alike), and checks that
every pass returns bit-identical logits both ways.

    .venv/bin/python benchmarks/cpu_gqa_attention.py [--pool smollm2] [--member NAME] [--rounds 6] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from polyplan.documents.files import atomic_write_bytes
from polyplan.models.attention import GQA_ON_CPU
from polyplan.profiler.machine import machine_facts
from polyplan.weights.pools import load_pool

WAYS = {"transformers' sdpa": "sdpa", "grouped in the kernel": GQA_ON_CPU}


def time_passes(drafter, context: int, new_tokens: list[int], repeats: int) -> tuple[dict[int, float], dict]:
    """Median seconds of ``repeats`` passes per n after ``context`` random tokens, and the logits."""
    ids = torch.randint(0, drafter.vocab_size, (context + max(new_tokens),), generator=torch.Generator().manual_seed(0))
    drafter.reset()
    drafter.score(ids[:context], last=1)
    medians, logits = {}, {}
    for n in new_tokens:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            logits[n] = drafter.score(ids[context : context + n])
            times.append(time.perf_counter() - t0)
            drafter.rollback(context)
        medians[n] = statistics.median(times)
    drafter.reset()
    return medians, logits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--member", help="a model member of the pool (default: its target)")
    ap.add_argument("--contexts", default="64,512,2048")
    ap.add_argument("--new-tokens", default="1,4,8,16")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()

    pool = load_pool(args.pool)
    drafter = pool.drafter(args.member or pool.target)
    config = drafter.model.config
    if config._attn_implementation != GQA_ON_CPU:
        raise SystemExit(f"{drafter.name} does not run {GQA_ON_CPU} here ({config._attn_implementation})")
    contexts = [int(c) for c in args.contexts.split(",")]
    new_tokens = [int(n) for n in args.new_tokens.split(",")]
    samples: dict[str, dict[str, list[float]]] = {w: {} for w in WAYS}
    mismatches = []
    for r in range(args.rounds):
        for c in contexts:
            seen = {}
            for way in list(WAYS)[:: 1 if r % 2 == 0 else -1]:
                config._attn_implementation = WAYS[way]
                medians, seen[way] = time_passes(drafter, c, new_tokens, args.repeats)
                for n, s in medians.items():
                    samples[way].setdefault(f"T({n},{c})", []).append(s)
            mismatches += [f"T({n},{c})" for n in new_tokens if not torch.equal(*(seen[w][n] for w in WAYS))]
    config._attn_implementation = GQA_ON_CPU
    ms = {w: {k: 1000 * statistics.median(v) for k, v in per.items()} for w, per in samples.items()}
    base, new = list(WAYS)
    print(f"{drafter.name}, ms per pass (median of {args.rounds} rounds): {base} -> {new}")
    for key in ms[base]:
        print(f"  {key:10s} {ms[base][key]:7.1f} -> {ms[new][key]:7.1f}  ({ms[new][key] / ms[base][key]:.2f}x)")
    print("logits bit-identical in every pass" if not mismatches else f"logits differ at {sorted(set(mismatches))}")
    if args.output:
        doc = {"machine": machine_facts(), "member": drafter.name, "ms": ms, "mismatches": sorted(set(mismatches))}
        atomic_write_bytes(args.output, json.dumps(doc, indent=1).encode())


if __name__ == "__main__":
    main()
