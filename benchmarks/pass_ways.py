"""One model's passes two ways, per pass size and context, on CPU: T(n, c) and the logits.

``--compare attention``: grouped heads in torch's kernel (``polyplan_sdpa_gqa``,
polyplan/models/attention.py) against transformers' SDPA, which copies the cache once per query
head in a masked pass; the logits must be bit-identical.
``--compare matmuls``: the linear layers routed by row count as this machine's probe chooses
(polyplan/models/matmul_routes.py) against ``F.linear`` at every row count; the logits agree to
rounding (their largest difference and the argmax agreement are reported).

The two ways alternate within each round (the order flipped every round, so the machine's drift
hits both alike).

    .venv/bin/python benchmarks/pass_ways.py --compare attention|matmuls [--pool smollm2] [--member NAME]
        [--rounds 6] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from polyplan.documents.files import atomic_write_bytes
from polyplan.models.attention import GQA_ON_CPU
from polyplan.profiler.machine import machine_facts
from polyplan.weights.pools import load_pool


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


def attention_ways(drafter) -> dict[str, Callable[[], None]]:
    config = drafter.model.config
    if config._attn_implementation != GQA_ON_CPU:
        raise SystemExit(f"{drafter.name} does not run {GQA_ON_CPU} here ({config._attn_implementation})")
    return {
        "transformers' sdpa": lambda: setattr(config, "_attn_implementation", "sdpa"),
        "grouped in the kernel": lambda: setattr(config, "_attn_implementation", GQA_ON_CPU),
    }


def matmul_ways(drafter) -> dict[str, Callable[[], None]]:
    routes = drafter.probe_matmul_routes()
    if routes is None:
        raise SystemExit(f"{drafter.name} has no routable linear layers")
    print(f"{drafter.name}: {routes.describe()}")
    return {"F.linear": lambda: drafter.use_matmul_routes(None), "routed": lambda: drafter.use_matmul_routes(routes)}


def compare(drafter, ways: dict[str, Callable[[], None]], contexts, new_tokens, rounds, repeats):
    """Per way, T(n,c) samples per round; and per pass, the two ways' largest logit difference and
    whether their argmaxes agree."""
    samples: dict[str, dict[str, list[float]]] = {w: {} for w in ways}
    diffs: dict[str, float] = {}
    argmax_agree = True
    for r in range(rounds):
        for c in contexts:
            seen = {}
            for way in list(ways)[:: 1 if r % 2 == 0 else -1]:
                ways[way]()
                medians, seen[way] = time_passes(drafter, c, new_tokens, repeats)
                for n, s in medians.items():
                    samples[way].setdefault(f"T({n},{c})", []).append(s)
            a, b = (seen[w] for w in ways)
            for n in new_tokens:
                diffs[f"T({n},{c})"] = max(diffs.get(f"T({n},{c})", 0.0), float((a[n] - b[n]).abs().max()))
                argmax_agree &= bool(torch.equal(a[n].argmax(-1), b[n].argmax(-1)))
    list(ways.values())[-1]()
    return samples, diffs, argmax_agree


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", choices=("attention", "matmuls"), required=True)
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--member", help="a model member of the pool (default: its target)")
    ap.add_argument("--contexts", default="64,512,2048")
    ap.add_argument("--new-tokens", default="1,2,3,4,7,8,16")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()

    pool = load_pool(args.pool)
    drafter = pool.drafter(args.member or pool.target)
    ways = (attention_ways if args.compare == "attention" else matmul_ways)(drafter)
    contexts = [int(c) for c in args.contexts.split(",")]
    new_tokens = [int(n) for n in args.new_tokens.split(",")]
    samples, diffs, agree = compare(drafter, ways, contexts, new_tokens, args.rounds, args.repeats)
    ms = {w: {k: 1000 * statistics.median(v) for k, v in per.items()} for w, per in samples.items()}
    base, new = list(ways)
    print(f"{drafter.name}, ms per pass (median of {args.rounds} rounds): {base} -> {new}")
    for key in ms[base]:
        print(f"  {key:10s} {ms[base][key]:7.1f} -> {ms[new][key]:7.1f}  ({ms[new][key] / ms[base][key]:.2f}x)")
    identical = [k for k, d in diffs.items() if d == 0.0]
    print(
        f"logits bit-identical in {len(identical)} of {len(diffs)} pass kinds; largest difference "
        f"{max(diffs.values()):.3g}; argmax {'the same' if agree else 'DIFFERS'} in every pass"
    )
    if args.output:
        doc = {
            "machine": machine_facts(),
            "member": drafter.name,
            "compare": args.compare,
            "ms": ms,
            "largest_logit_difference": diffs,
            "argmax_agree": agree,
        }
        atomic_write_bytes(args.output, json.dumps(doc, indent=1).encode())


if __name__ == "__main__":
    main()
