"""Regret and prediction error of a plan: run a grid of plans (the chosen one, its runners-up, and
its gammas moved by +-1 per level) interleaved on the eval prompts, and compare the chosen plan
with the best measured one (goal: regret <= 3%), plus |predicted - measured| / measured for both
predictors over every grid point (goal: <= 5%), of time per token and of speedup (the latter
immune to the machine running faster or slower than when the profile was taken).

    .venv/bin/python benchmarks/regret.py plan.json [--prompts 8] [--repeats 3] [--max-new-tokens 64]
                                          [--pool NAME] [-o regret.json]

Same machinery as ``polyplan bench plan.json --grid`` (polyplan.bench.runner); this script adds
the per-predictor error summary over the grid."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from polyplan.bench.report import markdown_table, save_markdown
from polyplan.bench.results import save_results
from polyplan.bench.runner import run_bench
from polyplan.documents import Plan
from polyplan.errors import UserError
from polyplan.weights import load_pool


def error_summary(doc: dict) -> dict:
    """Median and max prediction error per predictor over the polyplan grid points, and whether
    each predictor ranks the grid the same way the measurement does (its own regret)."""
    polyplan = [m for m in doc["methods"] if m["engine"] == "polyplan" and m["measured"].get("time_per_token_s")]
    out = {}
    for name in ("iid", "replay"):
        errs = [m["error"][name] for m in polyplan if name in m["error"]]
        if not errs:
            continue
        picked = min((m for m in polyplan if name in m["predicted"]), key=lambda m: m["predicted"][name])
        best = min(m["measured"]["time_per_token_s"] for m in polyplan)
        speedup_errs = [m["error_speedup"][name] for m in polyplan if name in m.get("error_speedup", {})]
        out[name] = {
            "median_error": statistics.median(errs),
            "max_error": max(errs),
            "median_speedup_error": statistics.median(speedup_errs) if speedup_errs else None,
            "max_speedup_error": max(speedup_errs) if speedup_errs else None,
            "points": len(errs),
            "picks": picked["name"],
            "regret_of_its_pick": picked["measured"]["time_per_token_s"] / best - 1,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan", type=Path)
    ap.add_argument("--pool", default=None)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompts-file", default=None, help="your own prompt file (default: the built-in eval set)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, default=Path("regret.json"))
    args = ap.parse_args()
    try:
        plan = Plan.load(args.plan)
        pool = load_pool(args.pool or plan.profile.get("pool", ""))
        doc = run_bench(
            plan,
            args.plan,
            pool=pool,
            prompts=args.prompts,
            repeats=args.repeats,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            grid=True,
            hf=False,
            log=lambda m: print(m, file=sys.stderr),
            prompts_file=args.prompts_file,
        )
    except UserError as e:
        sys.exit(f"regret.py: error: {e}")
    doc["prediction_error"] = error_summary(doc)
    save_results(args.output, doc)
    save_markdown(args.output.with_suffix(".md"), doc)
    print(markdown_table(doc))
    for name, s in doc["prediction_error"].items():
        speedup = (
            ""
            if s["median_speedup_error"] is None
            else f" (speedup: median {s['median_speedup_error'] * 100:.1f}%, max {s['max_speedup_error'] * 100:.1f}%)"
        )
        print(
            f"{name}: median error {s['median_error'] * 100:.1f}%, max {s['max_error'] * 100:.1f}%{speedup} over "
            f"{s['points']} plans; its pick {s['picks']} has regret {s['regret_of_its_pick'] * 100:.1f}%"
        )


if __name__ == "__main__":
    main()
