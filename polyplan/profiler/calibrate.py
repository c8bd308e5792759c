"""The machine's speed now against a profile's: a few timed passes per member at points the
profile measured, as factors on its latency and prefill curves.

A profile is a fact about one machine at one time, and this project's CPUs drift: the same VM ran
the same passes 1.5x slower or faster within hours (docs/results.md). A prediction made from the
profile's absolute seconds then misses by the drift, not by anything the theory got wrong. These
factors let a bench say both: the error as profiled, and the error at the speed measured now."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from polyplan.documents.profile import LatencyCurve, PrefillCurve
from polyplan.models.drafter import Drafter
from polyplan.profiler.latency import measure_context, measure_prefill
from polyplan.profiler.settings import prefill_warmup_passes

#: the new-token counts timed per member: a decoding pass and a verification-sized one
CALIBRATION_NEW_TOKENS = (1, 8)
#: the longest profiled prefill length a calibration re-times
CALIBRATION_PREFILL_MAX = 512


@dataclass(frozen=True)
class SpeedFactor:
    """Measured now / the profile's, for one member (1.0: as profiled; 0.8: 20% faster now)."""

    decode: float
    prefill: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_speed(
    drafters: Sequence[Drafter],
    latency: Mapping[str, LatencyCurve],
    prefill: Mapping[str, PrefillCurve],
    target: str,
    repeats: int = 3,
    seed: int = 0,
    one_token_runs: bool = True,
    prefill_warmup: bool = True,
) -> dict[str, SpeedFactor]:
    """Factors for every model member with curves: T(n) at the profile's first context for n in
    CALIBRATION_NEW_TOKENS (``repeats`` interleaved passes after one warm-up, the target in its
    verification numerics beyond one token, as profiled) and a prefill at the profile's longest
    prefill length up to 512 tokens (``_prefill_length``), each median divided by the profile's
    own value there. ``prefill_warmup``: that prefill timed after an untimed one of its length, as
    the profile timed its prefills (settings.prefill_warmup; False for profiles from before it).
    ``one_token_runs``: T(1) timed as the profile timed it (settings.one_token_runs; False for
    profiles from before it), or the ratio would read the change of method as the machine's."""
    models = [d for d in drafters if not d.point_mass and d.name in latency]
    if not models:
        return {}
    context = min(latency[d.name].context[0] for d in models)
    rows = measure_context(
        models, context, CALIBRATION_NEW_TOKENS, repeats, 1, seed=seed, target=target, one_token_runs=one_token_runs
    )
    with_prefill = [d for d in models if d.name in prefill]
    lengths = {d.name: _prefill_length(prefill[d.name]) for d in with_prefill}
    prefill_samples: dict[str, list[float]] = {}
    for length in sorted(set(lengths.values())):
        group = [d for d in with_prefill if lengths[d.name] == length]
        # a prefill of 512 tokens takes about a second here: one is as steady as several short ones
        # warmed up where the profile's prefills were, so that the ratio reads the machine's
        # drift, not a cold first pass
        warmup = prefill_warmup_passes(length, 1, prefill_warmup)
        prefill_samples |= measure_prefill(
            group, length, repeats=1 if length >= 512 else repeats, seed=seed, warmup=warmup
        )
    factors = {}
    for d in models:
        curve = latency[d.name]
        ratios = [
            measured / curve(n, context)
            for n, measured in zip(CALIBRATION_NEW_TOKENS, rows[d.name].median_s, strict=True)
            if curve(n, context) > 0
        ]
        decode = statistics.median(ratios) if ratios else 1.0  # a curve of zeros: nothing to scale
        samples = prefill_samples.get(d.name)
        profiled = prefill[d.name](lengths[d.name]) if samples else 0.0
        factors[d.name] = SpeedFactor(
            decode=float(decode),
            prefill=float(statistics.median(samples) / profiled) if samples and profiled > 0 else float(decode),
        )
    return factors


def _prefill_length(curve: PrefillCurve) -> int:
    """The profile's longest prefill length up to 512 tokens (512 by default), else its shortest: a
    128-token prefill read 5-20% above the profile's own value in repeated calibrations where 512
    tokens read 0.92-1.07 (2026-12-03, SmolLM2), its fixed per-pass costs a larger and more variable
    share; a 2048-token one takes seconds."""
    upto = [c for c in curve.context if c <= CALIBRATION_PREFILL_MAX]
    return max(upto) if upto else min(curve.context)


def median_factors(runs: Sequence[Mapping[str, SpeedFactor]]) -> dict[str, SpeedFactor]:
    """Per member, the median of several calibrations' factors (one per bench repeat)."""
    names = sorted({n for r in runs for n in r})
    return {
        n: SpeedFactor(
            decode=statistics.median(r[n].decode for r in runs if n in r),
            prefill=statistics.median(r[n].prefill for r in runs if n in r),
        )
        for n in names
    }


def plan_calibrator(
    policy: Any, loaded: Mapping[str, Drafter], plan_profile: Mapping[str, Any], target: str, seed: int
) -> tuple[Callable[[int], None] | None, list[dict[str, SpeedFactor]]]:
    """What measures, before each bench repeat, a plan's members' speed now against its profile's
    (its policy's request model: curves the start prices with), and the list it appends to; no
    calibration (None) without a request model. ``plan_profile``: the plan's record of its profile,
    which says how the profile timed T(1) and its prefills (a calibration times them alike)."""
    calibrations: list[dict[str, SpeedFactor]] = []
    if policy is None or policy.requests is None:
        return None, calibrations
    req = policy.requests
    one_token_runs = bool(plan_profile.get("one_token_runs", False))
    prefill_warmup = bool(plan_profile.get("prefill_warmup", False))

    def calibrate(rep: int) -> None:
        members = [loaded[n] for n in req.names if n in loaded]
        calibrations.append(
            measure_speed(
                members,
                req.latency,
                req.prefill,
                target,
                seed=seed + rep,
                one_token_runs=one_token_runs,
                prefill_warmup=prefill_warmup,
            )
        )

    return calibrate, calibrations
