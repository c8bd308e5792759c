"""Executor overhead: wall time minus time inside model forwards, as a share of decode time.

    .venv/bin/python benchmarks/executor_overhead.py --prompts 4 --max-new-tokens 128 --repeats 2

Runs each chain on the built-in eval prompts (SmolLM2 pool, greedy), interleaved per prompt, and
prints per chain the median overhead fraction, tokens/s and mean acceptance length. Overhead is
everything the executor does outside ``Drafter.score``: sampling/verification kernels, the one
host sync per verification, cache rollbacks, bookkeeping. Target: < 5% of decode time."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from polyplan import Chain
from polyplan.data.prompt_file import prompt_set
from polyplan.weights import load_pool

CHAINS = {
    "AR f32": (["smollm2-135m"], []),
    "f32<-bf16": (["smollm2-135m", "smollm2-135m:bf16"], [5]),
    "f32<-lookup": (["smollm2-135m", "prompt-lookup"], [4]),
    "f32<-bf16<-lookup": (["smollm2-135m", "smollm2-135m:bf16", "prompt-lookup"], [6, 3]),
    "f32<-int8<-lookup": (["smollm2-135m", "smollm2-135m:int8", "prompt-lookup"], [6, 3]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompts-file", default=None, help="your own prompt file (default: the built-in eval set)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chains", default=",".join(CHAINS), help="comma-separated keys of " + ", ".join(CHAINS))
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()

    pool = load_pool(args.pool)
    tok = pool.tokenizer
    chains = {k: Chain(pool.drafters(CHAINS[k][0]), CHAINS[k][1], tokenizer=tok) for k in args.chains.split(",")}
    prompts = [tok(p.text)["input_ids"] for p in prompt_set(args.prompts_file).select(limit=args.prompts)]
    rows: dict[str, list[dict]] = {k: [] for k in chains}
    for ch in chains.values():  # warm-up (first-call allocations, lazy imports)
        ch.generate(prompts[0], max_new_tokens=8, temperature=args.temperature)
    for _ in range(args.repeats):
        for ids in prompts:
            for k, ch in chains.items():  # interleaved: A B C A B C ...
                r = ch.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature, eos_token_id=[])
                rows[k].append(
                    {
                        "overhead_fraction": r.stats.overhead_fraction,
                        "tokens_per_second": r.stats.tokens_per_second,
                        "mean_acceptance_length": r.stats.levels[0].mean_acceptance_length or 1.0,
                        "wall_time_s": r.stats.wall_time_s,
                    }
                )
    summary = {k: {m: statistics.median(row[m] for row in v) for m in v[0]} for k, v in rows.items()}
    print(f"{'chain':22s} {'overhead %':>10s} {'tok/s':>8s} {'accept len':>10s}")
    for k, s in summary.items():
        print(
            f"{k:22s} {100 * s['overhead_fraction']:10.2f} {s['tokens_per_second']:8.2f} "
            f"{s['mean_acceptance_length']:10.2f}"
        )
    doc = {
        "benchmark": "executor_overhead",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.platform(),
        "cpu_count": torch.get_num_threads(),
        "args": vars(args),
        "summary": summary,
        "runs": rows,
    }
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
