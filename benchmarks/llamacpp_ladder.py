"""The quantization ladder in llama.cpp builds side by side: prefill and batched-pass cost per
GGUF type, in a portable (AVX2) build and a build for this CPU (AVX-512), interleaved.

Each round runs one child process per build (``PYTHONPATH`` puts that build's llama_cpp first);
a child measures every member once, median of ``--repeats`` passes each: prefill of 128 and 512
tokens from empty, and T(n) for n = 1, 8, 16, 32 at 128 cached tokens. Rounds alternate the build
order; the table shows the median over rounds (ms) and T(8)/T(1).

    .venv/bin/python benchmarks/llamacpp_ladder.py --pool POOL --members a,b,c \\
        --builds portable=,avx512=/path/to/site-packages-with-the-avx512-wheel [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PREFILLS = (128, 512)
PASSES = (1, 8, 16, 32)
CONTEXT = 128


def child(pool_name: str, members: list[str], repeats: int) -> dict:
    import torch

    from polyplan.models.llamacpp_runtime import build_features
    from polyplan.weights.pools import load_pool

    pool = load_pool(pool_name)
    out: dict = {"build": build_features(), "members": {}}
    ids = torch.randint(0, 49152, (1024,), generator=torch.Generator().manual_seed(0))
    for name in members:
        d = pool.drafter(name)
        row: dict[str, float] = {}
        for c in PREFILLS:
            times = []
            for _ in range(repeats):
                d.reset()
                t0 = time.perf_counter()
                d.score(ids[:c], last=1)
                times.append(time.perf_counter() - t0)
            row[f"prefill_{c}"] = statistics.median(times)
        d.reset()
        d.score(ids[:CONTEXT], last=1)
        for n in PASSES:
            times = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                d.score(ids[CONTEXT : CONTEXT + n])
                times.append(time.perf_counter() - t0)
                d.rollback(CONTEXT)
            row[f"T({n})"] = statistics.median(times[1:])
        out["members"][name] = row
        d.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", required=True)
    ap.add_argument("--members", required=True)
    ap.add_argument("--builds", default="installed=", help="name=PYTHONPATH entries, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    members = args.members.split(",")
    if args.child:
        print(json.dumps(child(args.pool, members, args.repeats)))
        return
    builds = dict(b.split("=", 1) for b in args.builds.split(","))
    rounds: dict[str, list[dict]] = {b: [] for b in builds}
    features: dict[str, str] = {}
    for r in range(args.rounds):
        order = list(builds) if r % 2 == 0 else list(reversed(builds))
        for b in order:
            env = dict(os.environ)
            if builds[b]:
                env["PYTHONPATH"] = builds[b] + os.pathsep + env.get("PYTHONPATH", "")
            cmd = [sys.executable, __file__, "--child", "--pool", args.pool, "--members", args.members]
            proc = subprocess.run([*cmd, "--repeats", str(args.repeats)], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"build {b} failed: {proc.stderr.strip().splitlines()[-1:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            features[b] = got["build"]
            rounds[b].append(got["members"])
            print(f"round {r + 1}/{args.rounds}: {b} done", file=sys.stderr)
    from polyplan.cpu import cpu_model, usable_cores

    result: dict = {"cpu": cpu_model(), "cores": usable_cores(), "rounds": args.rounds, "builds": {}}
    cols = [f"prefill_{c}" for c in PREFILLS] + [f"T({n})" for n in PASSES]
    print(f"\n{cpu_model()}, {usable_cores()} threads, {args.rounds} interleaved rounds, medians in ms\n")
    print("| build | member | " + " | ".join(cols) + " | T(8)/T(1) | prefill/token at 512 |")
    print("|---|---|" + "---:|" * (len(cols) + 2))
    for b in builds:
        result["builds"][b] = {"features": features[b], "members": {}}
        for m in members:
            med = {c: statistics.median(r[m][c] for r in rounds[b]) for c in cols}
            result["builds"][b]["members"][m] = med
            cells = " | ".join(f"{1000 * med[c]:.1f}" for c in cols)
            ratio = med["T(8)"] / med["T(1)"]
            print(f"| {b} | {m} | {cells} | {ratio:.2f} | {1000 * med['prefill_512'] / 512:.2f} |")
    for b, f in features.items():
        print(f"\n{b}: {f}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
