"""The one reader of ``/proc/cpuinfo``: the CPU's name, its matmul-relevant features and all its
flags. Pure Python (no torch), so the profiler's machine facts and the llama.cpp runtime probe
share it without a layer crossing."""

from __future__ import annotations

import math
import os
import platform
from typing import Any


def _first_cpuinfo_block() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` (lower-case keys; {} off Linux)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    block = _first_cpuinfo_block()
    return block.get("model name") or block.get("hardware") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Every feature flag the CPU reports: x86 ``flags`` or ARM ``Features`` ([] when unknown)."""
    block = _first_cpuinfo_block()
    return sorted(set((block.get("flags") or block.get("features") or "").split()))


#: instruction-set features that decide which matmul kernels run (bf16 and int8 speed above all):
#: two CPUs sold under one name ("AMD EPYC") can differ in them, and their relative costs with them
MATMUL_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "i8mm",
    "bf16",
)


def cpu_features() -> dict[str, Any] | None:
    """Family/model numbers and the :data:`MATMUL_FLAGS` the CPU reports (Linux only; None
    elsewhere)."""
    info = _first_cpuinfo_block()
    flags = set(cpu_flags())
    if not flags:
        return None
    return {
        "family": info.get("cpu family") or info.get("cpu architecture"),
        "model": info.get("model") or info.get("cpu part"),
        "flags": [f for f in MATMUL_FLAGS if f in flags],
    }


#: cgroup v2's CPU quota of this process's container ("max 100000", or "<quota> <period>")
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota
    (containers that see every host core but may use two)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open(CGROUP_CPU_MAX, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)
