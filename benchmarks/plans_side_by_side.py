"""Two or more plans of the same target, each run as `polyplan run` runs it (adaptive), against the
target alone: per prompt, interleaved in a rotating order, end to end (prefills included). Used to
compare plans made from two profiles of one pool (e.g. two latency grids) on the same prompts.

    .venv/bin/python benchmarks/plans_side_by_side.py A.plan.json B.plan.json \\
        --prompts-file F.jsonl [--prompts-file G.jsonl] [--demo] [--builtin]
        [--max-new-tokens 64] [--repeats 2] [-o out.json]

``--demo`` adds the quickstart's demo prompt, ``--builtin`` the built-in eval set's 8 prompts that
``polyplan bench`` runs. The plans' tokens must equal the target's."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import polyplan
from polyplan.commands.quickstart import DEFAULT_PROMPT
from polyplan.data.prompt_file import prompt_set
from polyplan.profiler.pool_inputs import chat_encoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plans", nargs="+")
    ap.add_argument("--prompts-file", action="append", default=[])
    ap.add_argument("--demo", action="store_true", help="add the quickstart's demo prompt")
    ap.add_argument("--builtin", action="store_true", help="add the built-in eval set (the profile's prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    names = [f"{i}:{Path(p).parent.name}/{Path(p).name}" for i, p in enumerate(args.plans)]
    chains = {name: polyplan.Chain.from_plan(path) for name, path in zip(names, args.plans, strict=True)}
    first = next(iter(chains.values()))
    alone = polyplan.Chain([first.drafters[0]], tokenizer=first.tokenizer)
    encode = chat_encoder(first.tokenizer)  # as `polyplan bench` and the profiler encode prompts
    prompts = [("demo", encode(DEFAULT_PROMPT))] if args.demo else []
    chosen = [*(prompt_set(None).select(limit=8) if args.builtin else [])]
    chosen += [p for f in args.prompts_file for p in prompt_set(f).prompts]
    prompts += [(p.id, encode(p.text)) for p in chosen]
    alone.generate(prompts[0][1], max_new_tokens=8)  # first-call costs out of the figures
    runs = {"alone": alone, **chains}
    rows = []
    for pid, ids in prompts:
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        reference = None
        for r in range(args.repeats):
            order = list(runs)[r % len(runs) :] + list(runs)[: r % len(runs)]
            for name in order:
                result = runs[name].generate(ids, max_new_tokens=args.max_new_tokens)
                seconds[name].append(result.stats.wall_time_s)
                reference = reference if reference is not None else list(result.tokens)
                assert list(result.tokens) == reference, f"{pid}: {name}'s output differs from the target's"
        row = {"prompt": pid, "tokens": len(reference or []), **{k: statistics.median(v) for k, v in seconds.items()}}
        row.update({f"{name}_x": row["alone"] / row[name] for name in chains})
        rows.append(row)
        shown = ", ".join(f"{name} {row[name + '_x']:.2f}x" for name in chains)
        print(f"{pid}: {row['tokens']} tokens, alone {row['alone']:.2f} s; {shown}", flush=True)
    for name in chains:
        xs = [r[f"{name}_x"] for r in rows]
        print(
            f"{name}: median {statistics.median(xs):.2f}x, worst {min(xs):.2f}x, "
            f"geometric mean {statistics.geometric_mean(xs):.2f}x of the target alone"
        )
    if args.output:
        record = {"plans": args.plans, "prompts_files": args.prompts_file, "demo": args.demo, "rows": rows}
        record.update({"max_new_tokens": args.max_new_tokens, "repeats": args.repeats})
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
