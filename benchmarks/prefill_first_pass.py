"""Is a process's first prefill of a length slower than the later ones (and does a warm-up take it out)?

One fresh process per call: load a pool's members (all that a profile measured prefill for, as
``polyplan profile`` has them loaded), then two rounds of the profiler's own ``measure_prefill`` at
each length (32, 128, 512 by default; ``--repeats`` interleaved passes, median), the first round
``--mode cold`` (timed as profiles before 2026-12-08 timed them) or ``--mode warm`` (after one
untimed prefill of the length, as the profiler times them now). Run it several times alternating
the modes, since one process can only be fresh once:

    for m in cold warm cold warm; do .venv/bin/python benchmarks/prefill_first_pass.py --mode $m; done

Prints one JSON line per call: per round and length, each reported member's median seconds. No
timing is asserted; the machine is shared, so compare rounds of the same process and calls of
one loop only.
"""

from __future__ import annotations

import argparse
import json
import statistics

from polyplan.profiler.latency import measure_prefill
from polyplan.weights import load_pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["cold", "warm"], required=True)
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--members", default="smollm2-135m,smollm2-135m:bf16,smollm2-135m:q4,smollm2-135m:q8_0")
    ap.add_argument("--report", default="smollm2-135m,smollm2-135m:q8_0", help="members whose times are printed")
    ap.add_argument("--lengths", default="32,128,512")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pool = load_pool(args.pool)
    drafters = pool.drafters(args.members.split(","))
    report = args.report.split(",")
    rounds = []
    for first in (True, False):
        row = {}
        for length in (int(x) for x in args.lengths.split(",")):
            warmup = 1 if first and args.mode == "warm" else 0
            samples = measure_prefill(drafters, length, args.repeats, warmup=warmup)
            row[length] = {n: round(statistics.median(samples[n]), 4) for n in report}
        rounds.append(row)
    print(json.dumps({"mode": args.mode, "first_round": rounds[0], "second_round": rounds[1]}), flush=True)


if __name__ == "__main__":
    main()
