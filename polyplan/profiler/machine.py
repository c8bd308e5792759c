"""Facts about the machine a profile was measured on: latency means nothing without them."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from polyplan.cpu import cpu_features, cpu_model, usable_cores
from polyplan.models.llamacpp_runtime import build_features


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def machine_facts(device: torch.device | str | None = None) -> dict[str, Any]:
    """CPU, cores, torch threads, GPU, library versions: everything a latency figure depends on."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "gpu": None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        # llama.cpp members' latency depends on it (None when the extra is not installed)
        "llama_cpp_python": _version("llama-cpp-python"),
        # the kernels it was built with (a portable AVX2 or an AVX-512 build of the same version)
        "llama_cpp_build": build_features() if _version("llama-cpp-python") else None,
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):
        facts["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        facts["gpu"] = props.name
        facts["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        facts["cuda"] = torch.version.cuda
    return facts


def machine_fingerprint(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts that must match for two measurements to be merged into one profile."""
    keys = (
        "cpu",
        "cpu_features",
        "cores",
        "device",
        "gpu",
        "torch",
        "transformers",
        "llama_cpp_python",
        "llama_cpp_build",
    )
    return {k: facts.get(k) for k in keys}


def current_models(recorded: dict[str, Any]) -> dict[str, Any]:
    """This machine's CPU model and, when ``recorded`` ran on a GPU, its GPU model: cheap facts
    (no model loads) to compare with a profile's."""
    gpu = None
    if recorded.get("gpu") or recorded.get("device") == "cuda":
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_features": cpu_features(), "gpu": gpu}


def _describe(facts: dict[str, Any], features: bool = False) -> str:
    cpu = str(facts.get("cpu") or "an unknown CPU")
    f = facts.get("cpu_features")
    if features and f:
        flags = " ".join(f.get("flags") or []) or "no listed flags"
        cpu += f" (family {f.get('family')} model {f.get('model')}: {flags})"
    return cpu + (f" with {facts['gpu']}" if facts.get("gpu") else "")


def other_machine_warning(
    plan_profile: dict[str, Any], plan_path: str | Path, current: dict[str, Any] | None = None
) -> str | None:
    """One line when the plan's profile (``plan.profile``) was measured on another CPU or GPU
    model than this machine's, saying how to re-profile here; None when they match or the plan
    does not say (``current``: this machine's facts, looked up when None)."""
    recorded = plan_profile.get("machine") or {}
    if not recorded.get("cpu"):
        return None
    current = current if current is not None else current_models(recorded)
    differs = recorded.get("cpu") != current.get("cpu")
    # one CPU name, other matmul features (e.g. AVX-512 bf16 on one EPYC and not on another)
    same_name_other_features = (
        not differs
        and bool(recorded.get("cpu_features"))
        and bool(current.get("cpu_features"))
        and recorded["cpu_features"] != current["cpu_features"]
    )
    differs = differs or same_name_other_features
    if recorded.get("gpu") or recorded.get("device") == "cuda":
        differs = differs or recorded.get("gpu") != current.get("gpu")
    if not differs:
        return None
    pool = plan_profile.get("pool") or "POOL"
    here = f"{pool}-this-machine.profile.json"
    return (
        f"warning: {plan_path} was profiled on {_describe(recorded, same_name_other_features)}, but this machine "
        f"is {_describe(current, same_name_other_features)}: "
        f"its timings and choice of chain may not hold here; re-profile: polyplan profile --pool {pool} -o {here} "
        f"&& polyplan optimize {here} -o {plan_path}"
    )


def with_exactness(facts: dict[str, Any], target: Any, note: Callable[[str], None]) -> dict[str, Any]:
    """``facts`` with ``"exact"``: which batch-invariant regime makes ``target`` exact on this machine
    (polyplan.models.exactness), probed once per profile (a resumed one reads what it recorded).
    The target takes that regime for the rest of the profile: its latency is timed as a chain runs it."""
    if not getattr(target, "exact", False):
        return facts
    from polyplan.models.exactness import ExactProbe, probe_exact

    recorded = facts.get("exact")
    if recorded is not None:
        target.exact_regime = ExactProbe.from_dict(recorded).regime
        return facts
    probe = probe_exact(target)
    note(f"{target.name} as target: {probe.summary()}")
    return {**facts, "exact": {"member": target.name, **probe.to_dict()}}


def with_matmul_routes(
    facts: dict[str, Any],
    drafters: Sequence[Any],
    note: Callable[[str], None],
    probe: bool = True,
    exact_target: str | None = None,
) -> dict[str, Any]:
    """``facts`` with ``"matmul_routes"``: per member with routable linear layers, the routes that run
    them fastest on this machine (polyplan.models.matmul_routes), probed once per profile (a resumed one
    reads what it recorded; ``probe`` False: a resumed profile from before the routes, whose latency
    was timed unrouted, stays unrouted). Each member takes its routes for the rest of the profile:
    its latency is timed as a chain runs it. ``exact_target``: a target in an exact regime, which
    never routes (not probed)."""
    from polyplan.models.matmul_routes import MatmulRoutes

    recorded = dict(facts.get("matmul_routes") or {})
    for d in drafters:
        if d.name == exact_target:
            continue
        if d.name in recorded:
            d.use_matmul_routes(MatmulRoutes.from_dict(recorded[d.name]))
            continue
        routes = d.probe_matmul_routes() if probe else None
        if routes is None:
            continue
        d.use_matmul_routes(routes)
        recorded[d.name] = routes.to_dict()
        note(f"{d.name}: {routes.describe()}")
    return {**facts, "matmul_routes": recorded} if recorded else facts
