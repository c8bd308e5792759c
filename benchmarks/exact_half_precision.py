"""Exact half precision: is a chain over a bf16/fp16 target token for token the target decoding alone?

    .venv/bin/python benchmarks/exact_half_precision.py --pool smollm2 \
        --chain smollm2-135m:bf16,smollm2-135m:q4 --gammas 8 --max-new-tokens 64

For each prompt (taken in turn from several prompt files: code, QA, math, translation, long
documents) and for the target's exact regime off and on (the regime ``probe_exact`` finds on this
machine, as ``polyplan profile`` does; the two-row regime where none holds), greedy:
``Chain([target])``, ``Chain([target, drafter...])`` and transformers' ``generate`` on the same
weights. Prints how many outputs agree and the median time of each run, interleaved
(off/on per prompt), so the cost of the exact regime is measured side by side."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from polyplan import Chain
from polyplan.data.prompt_file import prompt_set
from polyplan.models.exactness import TWO_ROWS, probe_exact
from polyplan.weights import load_pool

FILES = [
    "benchmarks/prompts/qa-code.jsonl",
    "benchmarks/prompts/translation-math.jsonl",
    "benchmarks/prompts/long-context.jsonl",
    None,  # the built-in eval set
]


def varied_prompts(n: int) -> list[str]:
    """``n`` prompts, one from each file in turn."""
    pools = [[p.text for p in prompt_set(f).select(limit=n)] for f in FILES]
    out: list[str] = []
    for i in range(n):
        for texts in pools:
            if i < len(texts) and len(out) < n:
                out.append(texts[i])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--chain", default="smollm2-135m:bf16,smollm2-135m:q4", help="target first")
    ap.add_argument("--gammas", default="8")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()

    pool = load_pool(args.pool)
    tok = pool.tokenizer
    members = pool.drafters(args.chain.split(","))
    target = members[0]
    gammas = [int(g) for g in args.gammas.split(",")]
    probe = probe_exact(target)
    print(f"exact regime probed: {probe.summary()}", flush=True)
    regime = probe.regime or TWO_ROWS
    alone, chain = Chain([target], [], tokenizer=tok), Chain(members, gammas, tokenizer=tok)
    texts = varied_prompts(args.prompts)
    rows = []
    for i, text in enumerate(texts):
        ids = tok(text)["input_ids"]
        with torch.inference_mode():
            ref = target.model.generate(
                torch.tensor([ids]), max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=None
            )[0, len(ids) :].tolist()
        row = {"prompt": i, "prompt_tokens": len(ids)}
        for exact in (False, True):
            target.exact_regime = regime if exact else None
            key = "exact" if exact else "default"
            t0 = time.perf_counter()
            a = alone.generate(ids, max_new_tokens=args.max_new_tokens, eos_token_id=[]).tokens
            t1 = time.perf_counter()
            c = chain.generate(ids, max_new_tokens=args.max_new_tokens, eos_token_id=[]).tokens
            t2 = time.perf_counter()
            row[key] = {
                "chain_equals_alone": a == c,
                "alone_equals_generate": a == ref,
                "chain_equals_generate": c == ref,
                "alone_s": t1 - t0,
                "chain_s": t2 - t1,
            }
        rows.append(row)
        print(json.dumps(row), flush=True)

    summary = {}
    for key in ("default", "exact"):
        counts = ("chain_equals_alone", "alone_equals_generate", "chain_equals_generate")
        summary[key] = {k: sum(r[key][k] for r in rows) for k in counts}
        summary[key]["alone_s_median"] = statistics.median(r[key]["alone_s"] for r in rows)
        summary[key]["chain_s_median"] = statistics.median(r[key]["chain_s"] for r in rows)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "chain": args.chain,
        "gammas": gammas,
        "exact_probe": probe.to_dict(),
        "prompts": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "summary": summary,
        "rows": rows,
    }
    print(json.dumps(summary, indent=1))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
