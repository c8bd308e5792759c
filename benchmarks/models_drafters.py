"""Per-token latency and greedy acceptance of every drafter in a pool against its target.

    .venv/bin/python benchmarks/models_drafters.py --pool smollm2 [--prompts 4] [--new-tokens 48]
        [--context 128] [--repeats 15] [--out results.json]

* latency: one new token after a context of ``--context`` tokens (KV cache filled, then
  score 1 token + roll back, median of ``--repeats``); for model-free drafters the time of
  ``propose(context, 1)``.
* greedy acceptance: the target continues each eval prompt greedily; at every generated
  position a drafter "accepts" when its own greedy next token (argmax, or its 1-token
  proposal for point-mass drafters; no proposal counts as a miss) equals the target's. This is
  the per-token alpha of greedy speculative decoding.
Eval prompts only (the n-gram table is fitted on the fit split).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from polyplan.data.prompt_file import prompt_set
from polyplan.weights import load_pool
from polyplan.weights.ngram_fit import chat_prompt_ids, greedy_generations


def latency_ms(drafter, context: list[int], repeats: int) -> float:
    if drafter.point_mass:
        drafter.reset()
        drafter.propose(context[:-1], 1)  # index the context once, like a running decode
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            drafter.propose(context, 1)
            times.append(time.perf_counter() - t)
            drafter.rollback(len(context) - 1)
        return statistics.median(times) * 1e3
    ids = torch.tensor(context, device=drafter.device)
    drafter.reset()
    drafter.score(ids[:-1])
    drafter.score(ids[-1:])  # warm-up
    drafter.rollback(len(context) - 1)
    times = []
    for _ in range(repeats):
        if drafter.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        drafter.score(ids[-1:])
        if drafter.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        drafter.rollback(len(context) - 1)
    drafter.reset()
    return statistics.median(times) * 1e3


def greedy_acceptance(drafter, sequences: list[tuple[int, list[int]]]) -> float:
    hits = total = 0
    for prompt_len, seq in sequences:
        targets = seq[prompt_len:]
        if drafter.point_mass:
            drafter.reset()
            for i, tok in enumerate(targets):
                hits += drafter.propose(seq[: prompt_len + i], 1) == [tok]
        else:
            drafter.reset()
            logits = drafter.score(torch.tensor(seq[:-1], device=drafter.device))
            drafter.reset()
            guesses = logits[prompt_len - 1 :].argmax(-1).cpu().tolist()
            hits += sum(g == t for g, t in zip(guesses, targets, strict=True))
        total += len(targets)
    return hits / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompts-file", default=None, help="your own prompt file (default: the built-in eval set)")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--members", nargs="*", help="default: every member")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()

    pool = load_pool(args.pool)
    names = args.members or pool.names
    target = pool.drafter(pool.target)
    tok = pool.tokenizer
    prompts = prompt_set(args.prompts_file).select(limit=args.prompts)
    full = greedy_generations(target.model, tok, [p.text for p in prompts], args.new_tokens)
    sequences = [(len(chat_prompt_ids(tok, p.text)), s) for p, s in zip(prompts, full, strict=True)]
    # a ~context-token context: eval prompts and their continuations, concatenated
    context = [t for _, s in sequences for t in s]
    while len(context) < args.context:
        context = context + context
    context = context[: args.context]

    rows = []
    for name in names:
        d = pool.drafter(name)
        row = {
            "member": name,
            "kind": pool.member(name).kind,
            "dtype": pool.member(name).dtype,
            "derivation": pool.member(name).derivation,
            "latency_ms": latency_ms(d, context, args.repeats),
            "greedy_acceptance": 1.0 if name == pool.target else greedy_acceptance(d, sequences),
        }
        rows.append(row)
        print(
            f"{name:28s} {row['latency_ms']:9.3f} ms/token   greedy acceptance {row['greedy_acceptance']:.3f}",
            flush=True,
        )

    meta = {
        "pool": pool.name,
        "target": pool.target,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}",
        "load_average": os.getloadavg(),
        "context": args.context,
        "prompts": [p.id for p in prompts],
        "generated_tokens": sum(len(s) - n for n, s in sequences),
    }
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
