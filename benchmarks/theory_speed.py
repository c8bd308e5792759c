"""How fast is the exact chain model? (The optimizer calls it thousands of times.)

    .venv/bin/python benchmarks/theory_speed.py [--repeats 200] [--json]

Times ``predict_chain`` at depth 4 over a grid of gammas up to 16 (constant latencies and latency
curves), the exact Fraction path at depth 3, and a full ``search_gammas`` at depth 4. Reports the
median and the worst per-evaluation time. Run it on a quiet machine; figures from a loaded one are
provisional.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone

from polyplan.theory import predict_chain, predict_chain_exact, search_gammas

ALPHA4 = [0.9, 0.8, 0.7]
LATENCY4 = [1.0, 0.3, 0.1, 0.02]
CURVES4 = [lambda n, t=t: t * (1 + 0.02 * n) for t in LATENCY4]


def per_call_seconds(fn, repeats: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    for name, gamma, latency in [
        ("depth4_gamma16_constant", [16, 16, 16], LATENCY4),
        ("depth4_gamma16_curves", [16, 16, 16], CURVES4),
        ("depth4_gamma8_4_2_constant", [8, 4, 2], LATENCY4),
    ]:
        times = per_call_seconds(
            lambda gamma=gamma, latency=latency: predict_chain(ALPHA4, gamma, latency), args.repeats
        )
        results[name] = {"median_ms": 1e3 * statistics.median(times), "max_ms": 1e3 * max(times)}
    # every gamma combination 1..16 at depth 4 (the exhaustive search's workload), one call each
    start = time.perf_counter()
    best, _ = search_gammas(ALPHA4, LATENCY4, max_gamma=16, exhaustive_limit=16**3)
    elapsed = time.perf_counter() - start
    results["search_gammas_depth4_exhaustive_4096"] = {
        "total_s": elapsed,
        "per_eval_ms": 1e3 * elapsed / 16**3,
        "best": best,
    }
    start = time.perf_counter()
    best, _ = search_gammas(ALPHA4, LATENCY4, max_gamma=16, exhaustive_limit=1)
    results["search_gammas_depth4_coordinate_descent"] = {"total_s": time.perf_counter() - start, "best": best}
    times = per_call_seconds(lambda: predict_chain_exact([0.9, 0.6], [6, 3], [1, 0.3, 0.02]), 20)
    results["exact_fraction_depth3_gamma6_3"] = {"median_ms": 1e3 * statistics.median(times)}
    machine = {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return
    print(f"machine: {machine}")
    for name, r in results.items():
        print(f"{name:45s} " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
