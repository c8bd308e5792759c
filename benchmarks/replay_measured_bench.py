"""Replay a bench measured on another machine through today's planner: what would the adaptive
start choose for each of its prompts, what would that have cost (the measured time of the method
that runs that setting there), and how far off was its request-time prediction?

For a machine this session cannot run on (the Intel Xeon with AMX whose profile, plan and bench
are in ``../shared/measurements/``): the profile is re-planned with today's optimizer (or a given
plan is used), each prompt's start is decided at its prompt length and the bench's
``max_new_tokens``, and the request is priced at the time the bench measured for the same setting:
the target alone -> the autoregressive run, the plan's two-level chain -> the static two-level run
(the same members, gamma within 2, no window; any other setting the bench did not run is reported
as not measured). Without ``--plan`` the profile is re-planned over the members the bench's plan
has, so every setting the start can choose was measured. The start sees only what a request shows
before it runs (prompt length, max_new_tokens), so this is the start as it would have run there;
what a round does later (the guard, the controller) is not replayed. Its request-time prediction
is compared at the tokens each run wrote. Figures are medians over the bench's repeats; end to
end means the bench's whole request times, prefills counted.

    .venv/bin/python benchmarks/replay_measured_bench.py PROFILE BENCH.json [--plan PLAN.json]
                                                         [--speed] [-o replay.json]

``--speed``: price the start at the speed the bench measured at its start (its calibration,
``settings.speed``), as ``polyplan run`` and ``bench`` do, instead of the profile's."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from polyplan.documents import Plan
from polyplan.errors import UserError
from polyplan.planner import optimize
from polyplan.planner.policy import Policy


def measured_seconds(bench: dict[str, Any]) -> dict[str, dict[str, float]]:
    """prompt -> method -> median whole-request seconds over the repeats."""
    runs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in bench["runs"]:
        runs[r["prompt"]][r["method"]].append(float(r["seconds"]))
    return {p: {m: statistics.median(v) for m, v in by.items()} for p, by in runs.items()}


def prompt_lengths(bench: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """prompt -> (prompt tokens, new tokens) from the bench's request records."""
    out: dict[str, tuple[int, int]] = {}
    for r in bench["requests"]["runs"]:
        out.setdefault(r["prompt"], (int(r["prompt_tokens"]), int(r["new_tokens"])))
    return out


def method_of_setting(bench: dict[str, Any], names: list[str], members: tuple[int, ...], gammas: tuple[int, ...]):
    """The bench method that ran this setting: the target alone -> autoregressive; a two-level
    setting -> the static method with that chain (its gamma may differ: reported)."""
    chain = [names[m] for m in members]
    if len(chain) == 1:
        return "autoregressive", None
    for m in bench["methods"]:
        if m["engine"] == "polyplan" and list(m["chain"]) == chain and m["name"] != "polyplan-plan":
            return m["name"], list(m.get("gammas") or [])
    return None, None


def replay(profile: Path, bench_path: Path, plan_path: Path | None, at_speed: bool) -> dict[str, Any]:
    bench = json.loads(bench_path.read_text())
    # by default today's optimizer over the members the bench ran, so every start it makes was measured
    members = [m["name"] if isinstance(m, dict) else m for m in bench["plan"]["chain"][1:]]
    plan = Plan.load(plan_path) if plan_path else optimize(profile, members=members)[0]
    if plan.policy is None:
        raise UserError("the plan has no adaptive policy (a one-member plan, or made before policies)")
    policy = Policy.from_dict(plan.policy)
    speed = bench["settings"].get("speed") or {}
    requests = policy.requests.at_speed(speed) if at_speed and speed and policy.requests else None
    max_new = int(bench["settings"]["max_new_tokens"])
    seconds, lengths = measured_seconds(bench), prompt_lengths(bench)
    rows = []
    for prompt, (prompt_tokens, new_tokens) in lengths.items():
        start = policy.start(dict(policy.priors), prompt_tokens, max_new, requests=requests)
        if start is None:
            raise UserError("the plan's policy has no prefill curves: nothing to decide a start with")
        members, gammas = tuple(start.decision.members), tuple(start.decision.gammas)
        method, bench_gammas = method_of_setting(bench, policy.names, members, gammas)
        windowed = any(start.windows.get(m) for m in members[1:])
        if bench_gammas and (windowed or any(abs(a - b) > 2 for a, b in zip(gammas, bench_gammas, strict=False))):
            method = None  # another gamma or a window: the bench did not run this setting
        # priced again at the tokens the run wrote (an answer that ended early is no forecast error)
        model = requests or policy.requests
        predicted = model.request(
            members, gammas, dict(policy.priors), prompt_tokens, new_tokens, start.windows, exact_horizon=True
        ).request_s
        ar, then = seconds[prompt].get("autoregressive"), seconds[prompt].get("polyplan-plan")
        now = seconds[prompt].get(method) if method else None
        rows.append(
            {
                "prompt": prompt,
                "prompt_tokens": prompt_tokens,
                "new_tokens": new_tokens,
                "start": [policy.names[m] for m in members],
                "gammas": list(gammas),
                "windows": {policy.names[m]: start.windows[m] for m in members[1:] if start.windows.get(m)},
                "priced_by": method,
                "bench_gammas": bench_gammas,
                "predicted_s": predicted,
                "replayed_s": now,
                "autoregressive_s": ar,
                "plan_then_s": then,
                "replayed_speedup": ar / now if ar and now else None,
                "plan_then_speedup": ar / then if ar and then else None,
                "prediction_error": abs(predicted - now) / now if now else None,
            }
        )
    return {
        "plan": {"chain": plan.names, "gammas": plan.gammas},
        "at_speed": bool(requests),
        "rows": rows,
        "summary": summary(rows),
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    priced = [r for r in rows if r["replayed_s"] is not None and r["autoregressive_s"]]
    if not priced:
        return {"priced": 0}
    ar = sum(r["autoregressive_s"] for r in priced)
    then = [r for r in priced if r["plan_then_s"]]
    return {
        "priced": len(priced),
        "of": len(rows),
        "end_to_end_speedup": ar / sum(r["replayed_s"] for r in priced),
        "worst_prompt": min(r["replayed_speedup"] for r in priced),
        "plan_then_end_to_end_speedup": ar / sum(r["plan_then_s"] for r in then) if len(then) == len(priced) else None,
        "plan_then_worst_prompt": min(r["plan_then_speedup"] for r in then) if then else None,
        "prediction_median_error": statistics.median(r["prediction_error"] for r in priced),
        "prediction_max_error": max(r["prediction_error"] for r in priced),
    }


def render(doc: dict[str, Any]) -> str:
    out = [
        f"plan replayed: {' <- '.join(doc['plan']['chain'])} ({','.join(map(str, doc['plan']['gammas']))}); "
        f"start priced at {'the bench calibration speed' if doc['at_speed'] else 'the profile speed'}",
        "",
        "| prompt | prompt tokens | new | start now | priced by | predicted s | replayed s | AR s | plan then s "
        "| replayed speedup | plan then |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in doc["rows"]:
        out.append(
            f"| {r['prompt']} | {r['prompt_tokens']} | {r['new_tokens']} | {' <- '.join(r['start'])} "
            f"({','.join(map(str, r['gammas'])) or '-'}){_windows(r)} | {r['priced_by'] or 'not measured'} | "
            f"{r['predicted_s']:.2f} | {f(r['replayed_s'], '.2f')} | {f(r['autoregressive_s'], '.2f')} | "
            f"{f(r['plan_then_s'], '.2f')} | {f(r['replayed_speedup'], '.2f')}x | {f(r['plan_then_speedup'], '.2f')}x |"
        )
    s = doc["summary"]
    if s.get("priced"):
        out += [
            "",
            f"{s['priced']} of {s['of']} prompts priced: replayed {s['end_to_end_speedup']:.2f}x end to end "
            f"(worst prompt {s['worst_prompt']:.2f}x); the plan as it ran then "
            f"{f(s['plan_then_end_to_end_speedup'], '.2f')}x (worst {f(s['plan_then_worst_prompt'], '.2f')}x); "
            f"request time predicted within {s['prediction_median_error']:.1%} median "
            f"(max {s['prediction_max_error']:.1%}) of the measured time of the setting chosen",
        ]
    return "\n".join(out)


def _windows(row: dict[str, Any]) -> str:
    return "".join(f", {n} window {w}" for n, w in row.get("windows", {}).items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("bench", type=Path)
    ap.add_argument("--plan", type=Path, default=None)
    ap.add_argument("--speed", action="store_true", help="price the start at the bench's calibrated speed")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        doc = replay(args.profile, args.bench, args.plan, args.speed)
    except (UserError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = render(doc)
    print(text)
    if args.output:
        args.output.write_text(json.dumps(doc, indent=1))
        args.output.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
