"""Benchmark: what profiling the embedded SmolLM2 pool with default settings costs.

Run:  .venv/bin/python benchmarks/profile_smollm2.py [--out DIR] [extra `polyplan profile` options]

Times the whole `polyplan profile` command (model loading included) into a fresh file and prints
one JSON line with the wall time, the phase split and the machine. Target: <= 120 s on the
project's 2-core CPU with default settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from polyplan.documents.profile import Profile

LIMIT_S = 120.0


def main(argv: list[str]) -> int:
    out_dir = Path(tempfile.mkdtemp(prefix="polyplan-profile-bench-"))
    if argv[:1] == ["--out"]:
        out_dir, argv = Path(argv[1]), argv[2:]
    out = out_dir / "smollm2-cpu.json"
    cmd = [sys.executable, "-m", "polyplan.cli", "profile", "--pool", "smollm2", "-o", str(out), "--force", *argv]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return proc.returncode
    prof = Profile.load(out)
    result = {
        "benchmark": "profile_smollm2",
        "wall_s": round(wall, 1),
        "measuring_s": prof.settings.get("elapsed_s"),
        "limit_s": LIMIT_S,
        "within_limit": wall <= LIMIT_S,
        "complete": prof.complete,
        "candidates": [c.name for c in prof.candidates],
        "positions_per_pair": max((p.positions for p in prof.pairs), default=0),
        "settings": {k: v for k, v in prof.settings.items() if k not in ("members",)},
        "machine": prof.machine,
        "created": prof.created,
        "extra_args": argv,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
