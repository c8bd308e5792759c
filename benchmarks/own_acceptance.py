"""Rule 3 of the time guard (proofs/adaptive-control.md, section 5) on real prompts.

When the guard measures speculation losing while the request accepts less than the profile's
prompts did, the controller re-chooses on the request's own acceptance (weak priors: shorter
gammas) before falling back to the target alone. This measures it per prompt, interleaved in a
rotating order: the target alone, the plan as `polyplan run` runs it (rule 3 on) and the same
policy with rule 3 off. Wall times are end to end (prefills included); the plan's tokens must
equal the target's. Reports the median and worst speed against the target alone, and how often
rule 3 acted.

    .venv/bin/python benchmarks/own_acceptance.py PLAN --prompts-file F.jsonl [--prompts-file G.jsonl]
        [--max-new-tokens 64] [--repeats 2] [-o results.json]

Benchmark-only: the switched-off controller lives here."""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import polyplan
from polyplan.data.prompt_file import prompt_set
from polyplan.executor.adaptive import AdaptiveController
from polyplan.executor.control import RoundSetting
from polyplan.profiler.pool_inputs import chat_encoder

RULE3 = "accepts less than profiled"


class WithoutRule3(AdaptiveController):
    """The plan's controller with rule 3 off: a verdict always falls back to the target alone."""

    def _on_own_acceptance(self) -> RoundSetting | None:
        return None


def measure(chain: Any, alone: Any, controllers: dict[str, Any], ids: list[int], n: int, repeat: int) -> dict:
    """One prompt, every method once, in an order that rotates with ``repeat``."""
    names = ["alone", *controllers]
    names = names[repeat % len(names) :] + names[: repeat % len(names)]
    row: dict[str, Any] = {}
    for name in names:
        if name == "alone":
            result = alone.generate(ids, max_new_tokens=n)
        else:
            result = chain.generate(ids, max_new_tokens=n, controller=controllers[name])
            row[f"{name}_rule3"] = sum(RULE3 in c["reason"] for c in result.stats.setting_changes)
        row[f"{name}_s"] = result.stats.wall_time_s
        row[f"{name}_tokens"] = list(result.tokens)
    for name in controllers:
        assert row[f"{name}_tokens"] == row["alone_tokens"], f"{name}: the output differs from the target's"
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plan")
    ap.add_argument("--prompts-file", action="append", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    chain = polyplan.Chain.from_plan(args.plan)
    plan_controller = chain.controller
    controllers = {"plan": plan_controller, "without": WithoutRule3(plan_controller.policy, plan_controller.shadow)}
    alone = polyplan.Chain([chain.drafters[0]], tokenizer=chain.tokenizer)
    encode = chat_encoder(chain.tokenizer)  # as `polyplan bench` and the profiler encode prompts
    prompts = [(p.id, encode(p.text)) for f in args.prompts_file for p in prompt_set(f).prompts]
    alone.generate(prompts[0][1], max_new_tokens=8)
    rows = []
    for pid, ids in prompts:
        runs = [measure(chain, alone, controllers, ids, args.max_new_tokens, r) for r in range(args.repeats)]
        row: dict[str, Any] = {"prompt": pid, "new_tokens": len(runs[0]["alone_tokens"])}
        for name in ("alone", *controllers):
            row[f"{name}_s"] = statistics.median(r[f"{name}_s"] for r in runs)
        for name in controllers:
            row[f"{name}_x"] = row["alone_s"] / row[f"{name}_s"]
            row[f"{name}_rule3"] = sum(r[f"{name}_rule3"] for r in runs)
        rows.append(row)
        print(
            f"{pid}: {row['new_tokens']} tokens, alone {row['alone_s']:.2f} s, plan {row['plan_x']:.2f}x "
            f"(rule 3 acted {row['plan_rule3']}x), without rule 3 {row['without_x']:.2f}x",
            flush=True,
        )
    summary = {}
    for name in controllers:
        xs = [r[f"{name}_x"] for r in rows]
        summary[name] = {"median_x": statistics.median(xs), "worst_x": min(xs), "below_0.95": sum(x < 0.95 for x in xs)}
        print(f"{name}: median {statistics.median(xs):.2f}x, worst {min(xs):.2f}x of the target alone")
    acted = sum(r["plan_rule3"] > 0 for r in rows)
    print(f"rule 3 acted on {acted} of {len(rows)} prompts")
    if args.output:
        with open(args.output, "w") as f:
            record = {"plan": args.plan, "prompts_files": args.prompts_file, "summary": summary, "rows": rows}
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
