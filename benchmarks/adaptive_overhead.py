"""What the adaptive controller costs per round: time in start/next_round (estimates, shadow checks,
table lookup) and in observe, against the mean time of a target round, on a plan run as
`polyplan run PLAN` runs it.

    .venv/bin/python benchmarks/adaptive_overhead.py profiles/smollm2-cpu.plan.json [--prompts 3]
                                                    [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import time

import polyplan
from polyplan.data import load_prompts


class TimedObserve:
    """Wraps a controller's observe() with a clock (the wrapper's own cost is included)."""

    def __init__(self, controller) -> None:
        self.inner, self.seconds, self.calls = controller, 0.0, 0

    def start(self, chain_size, prompt, max_new_tokens=0):
        return self.inner.start(chain_size, prompt, max_new_tokens)

    def observe(self, *args) -> None:
        t = time.perf_counter()
        self.inner.observe(*args)
        self.seconds += time.perf_counter() - t
        self.calls += 1

    def next_round(self, tokens):
        return self.inner.next_round(tokens)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plan")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    chain = polyplan.Chain.from_plan(args.plan)
    controller = chain.controller
    timed = TimedObserve(controller)
    tok = chain.tokenizer
    rows = []
    for prompt in load_prompts("eval", limit=args.prompts):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt.text}], add_generation_prompt=True, tokenize=True
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        controller.seconds, timed.seconds, timed.calls = 0.0, 0.0, 0
        result = chain.generate(list(ids), max_new_tokens=args.max_new_tokens, controller=timed)
        rounds = result.stats.levels[0].num_drafts or result.stats.levels[0].forward_passes
        decide = controller.seconds + timed.seconds
        rows.append(
            {
                "prompt": prompt.id,
                "tokens": result.stats.new_tokens,
                "rounds": rounds,
                "wall_s": result.stats.wall_time_s,
                "round_ms": 1e3 * result.stats.wall_time_s / max(rounds, 1),
                "decide_us_per_round": 1e6 * decide / max(rounds, 1),
                "observe_calls": timed.calls,
                "decide_fraction": decide / result.stats.wall_time_s,
                "setting_changes": len(result.stats.setting_changes),
            }
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
