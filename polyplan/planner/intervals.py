"""How sure a prediction is: an interval of time per token and speedup from the profile's own spread.

The profile records two kinds of spread, and the interval resamples both (a bootstrap):

* **prompt to prompt acceptance** -- the profiled prompts are resampled with replacement. The replay
  predictor's unit is one prompt's replayed generations; the i.i.d. predictor's unit is one prompt
  at its own mean rate (per-segment means of the traces), else one category at its rate
  (the profile's ``by_category``, weighted by positions), else there is no acceptance spread.
* **latency** -- each grid point T_i(n, c) is the median of ``repeats`` timed passes with their
  interquartile range recorded (the raw repeats are not). A replicate draws every grid point's
  median from its sampling distribution, normal with standard error ``1.2533 * sigma / sqrt(repeats)``
  where ``sigma = IQR / 1.349`` (both constants are the normal distribution's), independently per
  grid point, and re-reads the curve at the plan's context by the same interpolation.

It is cheap because the simulator draws its random numbers for acceptance only: a plan's passes
are simulated once per prompt and counted by size n, and a replicate re-times the counts
(time = sum of count(model, n) * T*_model(n)) and re-weights the prompts. All plans share the same
replicates (paired draws). The interval is the point estimate times the replicate quantiles of
replicate / unresampled replicate, so it sits around the predictor's own estimate (for the
i.i.d. predictor the exact model's, not the per-prompt simulation's) and, with few prompts where a
percentile interval can miss its centre, is widened to contain it. It is the spread of the
workload-average prediction -- how sure the planner is of the mean over prompts like the
profiled ones -- not the spread of single prompts. Pure Python + numpy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from polyplan.documents.profile import LatencyCurve, Profile
from polyplan.documents.traces import Traces
from polyplan.errors import UserError
from polyplan.planner.chains import Chain
from polyplan.planner.predictors import Estimate, IidPredictor, Predictor, ReplayPredictor

#: normal-distribution constants: sigma = IQR / 1.349; the median's standard error is 1.2533 sigma / sqrt(n)
IQR_PER_SIGMA = 1.349
MEDIAN_SE_FACTOR = 1.2533
#: a drawn median never goes below this fraction of the measured one (the normal tail is not a latency)
MIN_LATENCY_FRACTION = 0.1
#: output tokens simulated per acceptance group for the i.i.d. predictor
TOKENS_PER_GROUP = 1024


@dataclass(frozen=True)
class Interval:
    """A plan's quantile interval: ``time_per_token`` (low, high) seconds and ``speedup`` (low, high)."""

    quantiles: tuple[float, float]
    time_per_token: tuple[float, float]
    speedup: tuple[float, float]

    @property
    def pessimistic_time(self) -> float:
        """The worst plausible time per token: the upper quantile."""
        return self.time_per_token[1]

    def as_dict(self) -> dict:
        return {
            "quantiles": list(self.quantiles),
            "time_per_token_s": list(self.time_per_token),
            "speedup": list(self.speedup),
        }


@dataclass
class PassCounts:
    """One plan's simulated passes per acceptance group: ``passes[g][(model, n)]`` forward passes
    scoring ``n`` new tokens and ``tokens[g]`` output tokens, each group scaled by ``scale[g]``
    (how much of the workload it stands for)."""

    tokens: np.ndarray
    passes: list[Counter]
    scale: np.ndarray


@dataclass(frozen=True)
class AcceptanceGroups:
    """Where the acceptance spread comes from: group labels, per group the rate of every measured
    (verifier, drafter) pair, and each group's weight in the workload."""

    source: str  # "prompts" | "categories" | "none"
    labels: tuple[str, ...]
    alphas: dict[tuple[str, str], np.ndarray]
    weights: np.ndarray


def acceptance_groups(profile: Profile, traces: Traces | None, mode: str) -> AcceptanceGroups:
    """Per-prompt rates from the traces when they exist, else per-category rates from the profile."""
    if traces is not None and traces.bounds():
        keep = [(i, (a, b)) for i, (a, b) in enumerate(traces.bounds()) if b > a]
        bounds = [ab for _, ab in keep]
        alphas = {}
        for p in profile.pairs:
            tr = traces.pair(mode, p.verifier, p.drafter)
            if tr is not None:
                alphas[(p.verifier, p.drafter)] = np.array(traces.prompt_means(tr, bounds))
        ids = traces.prompt_ids
        labels = tuple(ids[i] if i < len(ids) else f"prompt {i}" for i, _ in keep)
        if alphas and keep:
            return AcceptanceGroups("prompts", labels, alphas, np.array([b - a for a, b in bounds], dtype=float))
    cats = None
    for p in profile.pairs:
        have = {c for c, v in p.by_category.items() if v.get("positions", 0) > 0}
        cats = have if cats is None else cats & have
    if cats:
        labels = tuple(sorted(cats))
        alphas = {
            (p.verifier, p.drafter): np.array([float(p.by_category[c][mode]) for c in labels]) for p in profile.pairs
        }
        first = profile.pairs[0]
        weights = np.array([float(first.by_category[c]["positions"]) for c in labels])
        return AcceptanceGroups("categories", labels, alphas, weights)
    alphas = {(p.verifier, p.drafter): np.array([p.alpha(mode)]) for p in profile.pairs}
    return AcceptanceGroups("none", ("all",), alphas, np.ones(1))


class _CountingCurve:
    """A latency curve that counts the passes it is asked to time."""

    def __init__(self, name: str, curve, counter: Counter) -> None:
        self.name, self.curve, self.counter = name, curve, counter

    def __call__(self, n: float) -> float:
        self.counter[(self.name, int(n))] += 1
        return self.curve(n)


def count_passes(
    predictor: Predictor, chain: Chain, gammas: Sequence[int], groups: AcceptanceGroups | None = None
) -> PassCounts:
    """Simulate ``chain`` at ``gammas`` once and count its passes per acceptance group."""
    curves = predictor.latencies(chain)
    if isinstance(predictor, ReplayPredictor):
        n_groups = len(predictor.segments) - 1
        counters = [Counter() for _ in range(n_groups)]
        tokens = np.zeros(n_groups)
        if len(chain) == 1:
            for g, n in enumerate(predictor.segment_lengths()):
                _autoregressive(counters[g], chain[0], n, predictor.horizon)
                tokens[g] = n
        else:

            def latency_for(g: int):
                return [_CountingCurve(name, c, counters[g]) for name, c in zip(chain, curves, strict=True)]

            for g, sim in predictor.replay(chain, gammas, latency_for):
                tokens[g] += sim.output_tokens
        return PassCounts(tokens, counters, np.ones(n_groups))
    if not isinstance(predictor, IidPredictor):
        raise UserError(f"no uncertainty interval for the {predictor.name} predictor")
    groups = groups or acceptance_groups(predictor.profile, None, predictor.mode)
    n_groups = len(groups.labels)
    counters = [Counter() for _ in range(n_groups)]
    tokens = np.zeros(n_groups)
    for g in range(n_groups):
        if len(chain) == 1:
            _autoregressive(counters[g], chain[0], TOKENS_PER_GROUP, predictor.horizon)
            tokens[g] = TOKENS_PER_GROUP
            continue
        try:
            alphas = [float(groups.alphas[(u, d)][g]) for u, d in pairwise(chain)]
        except KeyError:
            alphas = predictor.alphas(chain)
        latency = [_CountingCurve(name, c, counters[g]) for name, c in zip(chain, curves, strict=True)]
        tokens[g] = sum(s.output_tokens for s in predictor.simulate(chain, gammas, alphas, latency, TOKENS_PER_GROUP))
    # each group stands for its share of the workload, whatever number of tokens was simulated for it
    scale = groups.weights / groups.weights.sum() * tokens.sum() / np.maximum(tokens, 1)
    return PassCounts(tokens, counters, scale)


def _autoregressive(counter: Counter, target: str, tokens: int, horizon: int | None) -> None:
    # at a horizon each generation's first token comes with the prefill (not timed)
    counter[(target, 1)] += tokens if horizon is None else tokens * (horizon - 1) / horizon


def _basis_weights(curve: LatencyCurve, n: float, context: float) -> np.ndarray:
    """w such that curve(n, context) == w . (its medians, flattened): the interpolation is linear."""
    rows, cols = len(curve.context), len(curve.new_tokens)
    w = np.zeros(rows * cols)
    for i in range(rows * cols):
        basis = [[1.0 if r * cols + c == i else 0.0 for c in range(cols)] for r in range(rows)]
        w[i] = LatencyCurve(curve.new_tokens, curve.context, basis)(n, context)
    return w


class LatencyDraws:
    """``draws`` replicates of every model's grid of medians (shared by all plans: paired)."""

    def __init__(self, profile: Profile, context: float, draws: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.profile, self.context = profile, context
        self.grids: dict[str, np.ndarray] = {}
        self.spread = False
        for name in sorted(profile.latency):
            curve = profile.latency[name]
            median = np.asarray(curve.median_s, dtype=float).ravel()
            se = np.zeros_like(median)
            if curve.spread_s and curve.repeats and curve.repeats > 1:
                iqr = np.asarray(curve.spread_s, dtype=float).ravel()
                if iqr.shape == median.shape:
                    se = MEDIAN_SE_FACTOR * (np.nan_to_num(iqr) / IQR_PER_SIGMA) / math.sqrt(curve.repeats)
            self.spread |= bool(np.any(se > 0))
            z = rng.standard_normal((draws, median.size))
            self.grids[name] = np.maximum(median + se * z, MIN_LATENCY_FRACTION * median)
        self._weights: dict[tuple[str, int], np.ndarray] = {}

    def weights(self, key: tuple[str, int]) -> np.ndarray:
        if key not in self._weights:
            self._weights[key] = _basis_weights(self.profile.latency[key[0]], key[1], self.context)
        return self._weights[key]

    def times(self, keys: Sequence[tuple[str, int]]) -> np.ndarray:
        """[draws, len(keys)]: each replicate's T*_model(n) at the context."""
        return np.stack([self.grids[m] @ self.weights((m, n)) for m, n in keys], axis=1)


@dataclass
class IntervalSet:
    """Intervals of several plans on shared replicates, and what spread they resampled."""

    intervals: list[Interval]
    sources: dict


def plan_intervals(
    predictor: Predictor,
    estimates: Sequence[Estimate],
    *,
    traces: Traces | None = None,
    quantiles: tuple[float, float] = (0.1, 0.9),
    draws: int = 2000,
    seed: int = 0,
) -> IntervalSet:
    """The quantile intervals of time per token and speedup of each estimate (see module doc)."""
    lo_q, hi_q = quantiles
    if not 0.0 < lo_q < hi_q < 1.0:
        raise UserError(f"interval quantiles must satisfy 0 < low < high < 1, got {quantiles}")
    if draws < 10:
        raise UserError(f"need at least 10 bootstrap draws, got {draws}")
    groups = (
        None if isinstance(predictor, ReplayPredictor) else acceptance_groups(predictor.profile, traces, predictor.mode)
    )
    lat = LatencyDraws(predictor.profile, predictor.context, draws, seed)
    target = predictor.profile.target
    ar_ratio = lat.times([(target, 1)])[:, 0] / predictor.latencies((target,))[0](1)
    out = []
    n_groups = None
    for e in estimates:
        counts = count_passes(predictor, e.chain, e.gammas, groups)
        live = counts.tokens > 0  # a replayed reference too short to simulate (the same for every plan)
        counts = PassCounts(
            counts.tokens[live], [c for c, k in zip(counts.passes, live, strict=True) if k], counts.scale[live]
        )
        n_groups = len(counts.tokens)
        # the same prompt resamples for every plan (common random numbers)
        weights = np.random.default_rng(seed + 1).multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=draws)
        keys = sorted({k for c in counts.passes for k in c})
        per_group = np.array([[c.get(k, 0) for k in keys] for c in counts.passes], dtype=float)
        per_group *= counts.scale[:, None]
        tokens = counts.tokens * counts.scale
        medians = np.array([predictor.latencies((m,))[0](n) for m, n in keys])
        base = float(per_group.sum(axis=0) @ medians) / float(tokens.sum())
        time = np.einsum("bf,bf->b", weights @ per_group, lat.times(keys)) / np.maximum(weights @ tokens, 1e-12)
        ratio = time / base
        t_lo, t_hi = np.quantile(ratio, [lo_q, hi_q]) * e.time_per_token
        s_lo, s_hi = np.quantile(ar_ratio / ratio, [lo_q, hi_q]) * e.speedup
        out.append(
            Interval(
                quantiles=(lo_q, hi_q),
                time_per_token=(float(min(t_lo, e.time_per_token)), float(max(t_hi, e.time_per_token))),
                speedup=(float(min(s_lo, e.speedup)), float(max(s_hi, e.speedup))),
            )
        )
    if isinstance(predictor, ReplayPredictor):
        source, labels = "prompts", len(predictor.segments) - 1
    else:
        source, labels = groups.source, len(groups.labels)
    sources = {
        "acceptance": source if labels > 1 else "none",
        "groups": labels,
        "latency": "median standard error from the interquartile range of the repeats" if lat.spread else "none",
        "draws": draws,
        "seed": seed,
    }
    return IntervalSet(out, sources)
