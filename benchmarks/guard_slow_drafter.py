"""The time guard (proofs/adaptive-control.md, section 5) against a drafter slowed at run time.

The plan's drafter is made slower than its profile says by sleeping in every forward pass it runs
(``score``): the acceptance is unchanged, so the acceptance-driven policy keeps speculating; only
measured round times can tell. Per prompt, interleaved: the target alone, the plan as `polyplan run`
runs it (adaptive, guard on), and the same controller with the guard off. Reports each one's
wall time and its speed against the target alone (the plan's tokens must equal the target's).

    .venv/bin/python benchmarks/guard_slow_drafter.py profiles/smollm2-ladder-cpu.plan.json \\
        [--prompts 4] [--max-new-tokens 64] [--slow 0,1.0,2.0] [-o results.json]

``--slow``: each drafter pass sleeps this multiple of the target alone's measured time per token
(0: no slowdown, the guard must then cost nothing). Benchmark-only: the wrapper lives here."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import polyplan
from polyplan.data import load_prompts
from polyplan.executor.control import RoundSetting
from polyplan.executor.guard import SpeedGuard
from polyplan.profiler.pool_inputs import chat_encoder


class NoGuard(SpeedGuard):
    """The guard switched off: the policy's setting always runs."""

    def apply(self, setting: RoundSetting, rechoose: Any = None) -> RoundSetting:
        return setting


class Slowed:
    """Sleeps ``delay`` seconds in every forward pass of ``drafter`` (while ``delay`` > 0): its
    ``score`` and its greedy ``score_argmax`` (the executor's greedy drafting calls the latter)."""

    def __init__(self, drafter: Any) -> None:
        self.drafter, self.delay = drafter, 0.0
        for name in ("score", "score_argmax"):
            setattr(drafter, name, self._slowed(getattr(drafter, name)))

    def _slowed(self, forward: Any) -> Any:
        def slowed(*args: Any, **kwargs: Any) -> Any:
            if self.delay > 0:
                time.sleep(self.delay)
            return forward(*args, **kwargs)

        return slowed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plan")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--slow", default="0,1.0,2.0", help="drafter sleep per pass, in target-alone times per token")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    chain = polyplan.Chain.from_plan(args.plan)
    guarded = chain.controller
    unguarded = type(guarded)(guarded.policy, guarded.shadow)
    unguarded.guard = NoGuard()
    alone = polyplan.Chain([chain.drafters[0]], tokenizer=chain.tokenizer)
    slowed = [Slowed(d) for d in chain.drafters[1:] if not d.point_mass]
    encode = chat_encoder(chain.tokenizer)  # as `polyplan bench` and the profiler encode prompts
    prompts = [encode(p.text) for p in load_prompts("eval", limit=args.prompts)]
    n = args.max_new_tokens
    warm = alone.generate(prompts[0], max_new_tokens=n, eos_token_id=[])
    per_token = warm.stats.decode_time_s / max(1, warm.stats.new_tokens)
    print(f"target alone: {per_token * 1e3:.1f} ms/token (warm-up); chain {chain!r}")
    rows = []
    for factor in [float(x) for x in args.slow.split(",")]:
        for s in slowed:
            s.delay = factor * per_token
        for i, ids in enumerate(prompts):
            ref = alone.generate(ids, max_new_tokens=n)
            row: dict[str, Any] = {"slow": factor, "prompt": i, "alone_s": ref.stats.wall_time_s}
            for name, controller in (("guard", guarded), ("no_guard", unguarded)):
                result = chain.generate(ids, max_new_tokens=n, controller=controller)
                assert result.tokens == ref.tokens, f"prompt {i}: the plan's output differs from the target's"
                row[f"{name}_s"] = result.stats.wall_time_s
                row[f"{name}_x"] = ref.stats.wall_time_s / result.stats.wall_time_s
                row[f"{name}_changes"] = [
                    f"at {c['at_token']}: {'+'.join(c['members'])}: {c['reason'][:110]}"
                    for c in result.stats.setting_changes
                ]
            rows.append(row)
            print(
                f"slow {factor:.1f}x prompt {i}: alone {row['alone_s']:.2f} s, guard {row['guard_s']:.2f} s "
                f"({row['guard_x']:.2f}x), no guard {row['no_guard_s']:.2f} s ({row['no_guard_x']:.2f}x)",
                flush=True,
            )
        mine = [r for r in rows if r["slow"] == factor]
        for key in ("guard", "no_guard"):
            xs = [r[f"{key}_x"] for r in mine]
            median, worst = statistics.median(xs), min(xs)
            print(f"slow {factor:.1f}x {key}: median {median:.2f}x, worst {worst:.2f}x of the target alone")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"plan": args.plan, "target_alone_ms_per_token": per_token * 1e3, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
