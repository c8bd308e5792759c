"""How long a full `polyplan optimize` search takes over a 5-candidate pool (goal: < 5 s).

Synthetic profile (target, three model drafters of decreasing cost, one prompt-lookup drafter),
every pair measured, per-position traces for the replay predictor. Times the whole optimize()
call (search + insertion analysis + exports), median of --repeats runs, for the default order and
--all-orders, with the iid predictor and (once) the replay predictor.

    .venv/bin/python benchmarks/optimize_speed.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from polyplan.documents import AcceptancePair, Candidate, LatencyCurve, Profile
from polyplan.documents.traces import Traces
from polyplan.planner import optimize

NEW = [1, 2, 4, 8, 16, 32]
COSTS = {"target": 0.160, "m1": 0.055, "m2": 0.020, "m3": 0.006, "ngram": 0.0002}


def synthetic_profile(folder: Path, trace_len: int = 2000, segments: int = 10) -> Path:
    rng = np.random.default_rng(0)
    names = list(COSTS)
    pairs, traces = [], {"segments": np.linspace(0, trace_len, segments + 1).astype(np.int64)}
    for v, d in itertools.permutations(names, 2):
        if v == "ngram" or d == "target":
            continue
        a = float(np.clip(0.95 - 0.1 * abs(names.index(v) - names.index(d)) - rng.uniform(0, 0.1), 0.2, 0.95))
        pairs.append(AcceptancePair(verifier=v, drafter=d, greedy=a, sampling=0.9 * a, positions=trace_len))
        for mode, rate in (("greedy", a), ("sampling", 0.9 * a)):
            traces[f"{mode}/{v}/{d}"] = (rng.random(trace_len) < rate).astype(np.float32)
    prof = Profile(
        pool="synthetic-5",
        target="target",
        candidates=[Candidate(name=n, point_mass=(n == "ngram")) for n in names],
        latency={
            n: LatencyCurve(new_tokens=NEW, context=[128, 512], median_s=[[t * (1 + 0.02 * (k - 1)) for k in NEW]] * 2)
            for n, t in COSTS.items()
        },
        pairs=pairs,
        traces="profile.traces.npz",
    )
    Traces(traces).save(folder / "profile.traces.npz")
    path = folder / "profile.json"
    prof.save(path)
    return path


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = synthetic_profile(Path(d))
        for label, kw, reps in [
            ("iid, cost order", {}, args.repeats),
            ("iid, all orders", {"all_orders": True}, args.repeats),
            ("replay, cost order", {"predictor": "replay"}, 1),
        ]:
            secs, (plan, result) = timed(lambda kw=kw: optimize(path, **kw), reps)
            rows.append(
                {
                    "search": label,
                    "seconds": secs,
                    "chains": len(result.ranked),
                    "chosen": plan.names,
                    "gammas": plan.gammas,
                    "within_5s": secs < 5.0,
                }
            )
            print(
                f"{label:22s} {secs:7.2f} s  {len(result.ranked):3d} chains  -> {' > '.join(plan.names)} {plan.gammas}"
            )
    doc = {"machine": f"{platform.processor() or platform.machine()}, python {sys.version.split()[0]}", "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
