"""The mathematics of adapting a chain between target rounds (proof: proofs/adaptive-control.md).

A *setting* of a chain ``[M_1..M_k]`` is a subset of its members that keeps their order and
starts with the target, plus one gamma per drafter in it; ``(0,)`` is autoregressive decoding.
For KNOWN per-pair acceptance the best setting minimises the exact expected time per token
(``polyplan.theory.chain_model``) over subsets and gammas. This module holds the pieces the
planner's precomputed policy (``polyplan.planner.policy``) and the executor's adaptive
controller are built from:

* ``alpha_axis``: the acceptance grid, even in ``u = -log2(1 - alpha)`` (the model's time per
  token moves about as much per step of u near alpha = 0.98 as near 0.5);
* ``descend_gammas`` / ``setting_table``: the best gammas of one subset over a grid of its pairs'
  acceptances, each cell warm-started from its neighbour (a local descent instead of a search);
* ``interpolate``: multilinear interpolation in u of a table (the per-round lookup);
* the estimator's algebra: ``verification_evidence`` (a verification of d drafts that accepted a
  of them is a successes, and one failure when a < d), ``posterior_mean`` (Beta prior of
  strength n0, exponentially forgotten evidence), ``pair_window`` (the memory that minimises the
  estimate's mean square error on piecewise-constant acceptance),
  ``relax_tokens`` (how long a bypassed pair's estimate takes to drift back over a threshold:
  the re-probe interval) and ``transfer_bound`` (how far a point-mass drafter's acceptance by an
  intermediate level can be from its acceptance by the target).

Pure Python (no numpy, no torch): the lookup runs once per target round."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product

from polyplan.chain_text import chain_text
from polyplan.theory.chain_model import predict_chain
from polyplan.theory.latency import Latency

#: the largest u = -log2(1 - alpha) on the grid (alpha = 1 - 2**-8 = 0.996)
MAX_U = 8.0


def alpha_of_u(u: float) -> float:
    return 1.0 - 2.0 ** (-u)


def u_of_alpha(alpha: float) -> float:
    """``-log2(1 - alpha)``, clamped to ``[0, MAX_U]``."""
    if alpha <= 0.0:
        return 0.0
    if alpha >= 1.0 - 2.0 ** (-MAX_U):
        return MAX_U
    return -math.log2(1.0 - alpha)


def alpha_axis(points: int) -> list[float]:
    """``points`` acceptance values evenly spaced in u on ``[0, MAX_U]`` (alpha 0 .. 0.996)."""
    if points < 2:
        raise ValueError("an acceptance axis needs at least 2 points")
    return [alpha_of_u(MAX_U * i / (points - 1)) for i in range(points)]


def points_per_axis(dimensions: int, cell_budget: int, most: int = 17) -> int:
    """The finest axis (at most ``most`` points) whose ``dimensions``-fold grid fits the budget."""
    if dimensions <= 0:
        return 1
    return max(2, min(most, int(cell_budget ** (1.0 / dimensions) + 1e-9)))


# ---- the best gammas of one subset ---------------------------------------------------------------


def descend_gammas(
    alpha: Sequence[float],
    latency: Sequence[Latency],
    start: Sequence[int],
    max_gamma: int,
) -> tuple[tuple[int, ...], float]:
    """Coordinate descent on the exact model from ``start``: on each level in turn, the best of
    every gamma 1..max_gamma with the other levels held, until no level lowers the time per token.
    A whole line per level, not steps around the current gamma: measured pass times are not smooth
    in the pass width (on the family-26 AMD a verifier's 8-token pass costs what a 5-token one
    does, a 7-token one 20% more), so a local step search stops at a gamma a jump walls in
    (tested against the exhaustive search)."""
    memo: dict[tuple[int, ...], float] = {}

    def time_of(g: tuple[int, ...]) -> float:
        if g not in memo:
            memo[g] = float(predict_chain(alpha, list(g), latency).time_per_token)
        return memo[g]

    best = tuple(min(max(1, int(x)), max_gamma) for x in start)
    improved = True
    while improved:
        improved = False
        for level in range(len(best)):
            for value in range(1, max_gamma + 1):
                candidate = best[:level] + (value,) + best[level + 1 :]
                if time_of(candidate) < time_of(best) * (1 - 1e-12):
                    best, improved = candidate, True
    return best, time_of(best)


def setting_table(
    axes: Sequence[Sequence[float]],
    latency: Sequence[Latency],
    max_gamma: int,
    start: Sequence[int],
    fixed_gammas: Sequence[int] | None = None,
) -> tuple[list[tuple[int, ...]], list[float]]:
    """Best gammas and time per token of one subset at every point of the product grid of its
    pairs' acceptance axes (row-major, last axis fastest). Cells are visited in snake order so
    each warm-starts from an adjacent one. With ``fixed_gammas`` only the time is tabulated."""
    depth = len(latency)
    shape = [len(a) for a in axes]
    size = math.prod(shape)
    gammas: list[tuple[int, ...]] = [()] * size
    times: list[float] = [0.0] * size
    if depth == 1:
        t = float(predict_chain([], [], latency).time_per_token)
        return [()] * size, [t] * size
    warm = tuple(start)
    for index in snake_order(shape):
        alpha = [axes[d][i] for d, i in enumerate(index)]
        flat = flat_index(index, shape)
        if fixed_gammas is not None:
            gammas[flat] = tuple(fixed_gammas)
            times[flat] = float(predict_chain(alpha, list(fixed_gammas), latency).time_per_token)
            continue
        warm, times[flat] = descend_gammas(alpha, latency, warm, max_gamma)
        gammas[flat] = warm
    return gammas, times


def grid_error(
    points: int,
    gammas: Sequence[tuple[int, ...]],
    times: Sequence[float],
    latency: Sequence[Latency],
    max_gamma: int,
    fixed: bool = False,
) -> float:
    """What a table's lookup costs against the exact model, measured at the centre of every grid
    cell (the point farthest from the grid): ``max(t_run / t_cmp) * max(t_cmp / t_opt) - 1``, where
    the rule compares the interpolated time ``t_cmp``, runs the nearest node's gammas (time
    ``t_run``) and the exact optimum there is ``t_opt`` (local descent from those gammas; with
    ``fixed`` gammas the optimum is their own time). 0 for a table without pairs."""
    depth = len(latency) - 1
    if depth == 0:
        return 0.0
    shape = [points] * depth
    corners = corner_offsets(shape)
    axis_u = [MAX_U * i / (points - 1) for i in range(points)]
    run_over_cmp, cmp_over_opt = 1.0, 1.0
    for index in product(range(points - 1), repeat=depth):
        u = [(axis_u[i] + axis_u[i + 1]) / 2 for i in index]
        alpha = [alpha_of_u(x) for x in u]
        cells = [cell(axis_u, x) for x in u]
        compared = interpolate(times, shape, cells, corners)
        run_gammas = gammas[nearest(shape, cells)]
        run = float(predict_chain(alpha, list(run_gammas), latency).time_per_token)
        optimum = run if fixed else descend_gammas(alpha, latency, run_gammas, max_gamma)[1]
        run_over_cmp = max(run_over_cmp, run / compared)
        cmp_over_opt = max(cmp_over_opt, compared / optimum)
    return run_over_cmp * cmp_over_opt - 1.0


def snake_order(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Every index of the grid, consecutive ones adjacent (boustrophedon on each axis)."""
    if not shape:
        return [()]
    inner = snake_order(shape[1:])
    out = []
    for i in range(shape[0]):
        out.extend((i, *rest) for rest in (inner if i % 2 == 0 else inner[::-1]))
    return out


def flat_index(index: Sequence[int], shape: Sequence[int]) -> int:
    flat = 0
    for i, n in zip(index, shape, strict=True):
        flat = flat * n + i
    return flat


# ---- the per-round lookup -------------------------------------------------------------------------


def cell(axis_u: Sequence[float], u: float) -> tuple[int, float]:
    """(lower node, weight of the upper node) of ``u`` on an evenly spaced u axis."""
    steps = len(axis_u) - 1
    x = (u - axis_u[0]) / (axis_u[-1] - axis_u[0]) * steps
    if x <= 0.0:
        return 0, 0.0
    if x >= steps:
        return steps - 1, 1.0
    lo = int(x)
    return lo, x - lo


def corner_offsets(shape: Sequence[int]) -> list[tuple[tuple[int, ...], int]]:
    """The 2**d corners of a grid cell: (which axes take the upper node, flat offset)."""
    out = []
    for corner in product((0, 1), repeat=len(shape)):
        out.append((corner, flat_index(corner, shape)))
    return out


def interpolate(
    values: Sequence[float],
    shape: Sequence[int],
    cells: Sequence[tuple[int, float]],
    corners: Sequence[tuple[tuple[int, ...], int]] | None = None,
) -> float:
    """Multilinear interpolation of a row-major table at fractional grid coordinates
    (``corners``: ``corner_offsets(shape)``, precomputed by callers that look up often)."""
    base = flat_index([lo for lo, _ in cells], shape)
    total = 0.0
    for bits, offset in corners if corners is not None else corner_offsets(shape):
        weight = 1.0
        for (_, frac), bit in zip(cells, bits, strict=True):
            weight *= frac if bit else 1.0 - frac
        if weight:
            total += weight * values[base + offset]
    return total


def nearest(shape: Sequence[int], cells: Sequence[tuple[int, float]]) -> int:
    flat = 0
    for (lo, frac), n in zip(cells, shape, strict=True):
        flat = flat * n + lo + (1 if frac >= 0.5 else 0)
    return flat


# ---- the estimator ---------------------------------------------------------------------------------


def verification_evidence(drafted: int, accepted: int) -> tuple[int, int]:
    """(successes, Bernoulli trials) of one verification under i.i.d. acceptance: the drafts are
    tested in order until the first rejection, so ``accepted`` successes and one failure unless
    all were accepted; the likelihood is ``alpha**a * (1 - alpha)**[a < d]``. (``accepted /
    drafted`` would count untested drafts after a rejection as failures: biased low.)"""
    return accepted, accepted + (1 if accepted < drafted else 0)


def posterior_mean(prior_mean: float, prior_strength: float, successes: float, trials: float) -> float:
    """Mean of the Beta posterior: prior Beta(n0 m0, n0 (1 - m0)) plus (forgotten) evidence."""
    return (prior_strength * prior_mean + successes) / (prior_strength + trials)


def pair_window(prior_strength: float, segment_tokens: float) -> float:
    """The memory W (tokens) minimising ``variance / (2 W) + jump**2 W / (2 H)`` -- the noise of an
    exponential average of memory W plus its lag after the acceptance jumps by ``jump`` once per
    ``H`` tokens, ``W* = sqrt(variance * H) / jump`` -- for a pair whose acceptance jumps, when the
    text changes character, by its prompt-to-prompt standard deviation: with a Beta prior of
    strength n0 matched to that spread, ``variance / jump**2 = n0 + 1``, so ``W = sqrt((n0 + 1) H)``."""
    return math.sqrt((prior_strength + 1.0) * segment_tokens)


def relax_tokens(
    window: float, trials: float, estimate: float, threshold: float, prior_mean: float, prior_strength: float
) -> float:
    """Tokens until a pair with no new evidence drifts from the posterior ``estimate`` (built on
    ``trials`` forgotten trials) up over ``threshold`` towards ``prior_mean``: the re-probe
    interval of a bypassed drafter. The evidence decays as ``exp(-t / W)``. Infinite when the
    prior itself is below the threshold (the pair is then never re-tried)."""
    if threshold <= estimate:
        return 0.0
    if prior_mean <= threshold:
        return math.inf
    data_mean = (estimate * (prior_strength + trials) - prior_strength * prior_mean) / trials
    # solve (n0 m0 + f N d) / (n0 + f N) = threshold for the surviving fraction f
    fraction = prior_strength * (prior_mean - threshold) / (trials * (threshold - data_mean))
    return max(0.0, -window * math.log(fraction)) if 0 < fraction < 1 else 0.0


def transfer_bound(alpha_target_intermediate: float) -> float:
    """``|alpha(M_j, pm) - alpha(M_1, pm)| <= 1 - alpha(M_1, M_j)`` for a point-mass drafter pm:
    its proposal x is accepted by level i with probability p_i(x) (greedy: 1{x = argmax p_i}),
    and |p_1(x) - p_j(x)| <= TV(p_1, p_j) = 1 - sum min(p_1, p_j) (greedy: P(argmaxes differ))."""
    return 1.0 - alpha_target_intermediate


def transfer_strength(prior_mean: float, bound: float, shadow_strength: float, cap: float) -> float:
    """Pseudo-trials of the prior of ``(M_j, pm)`` centred on the shadow estimate of ``(M_1, pm)``.

    Its error is the transfer's (at most ``bound``, taken as a standard deviation) plus the shadow
    estimate's own: a Beta posterior over ``shadow_strength`` pseudo-trials (prior plus forgotten
    evidence) has variance ``m (1 - m) / (shadow_strength + 1)``. The Beta of that total variance
    has strength ``m (1 - m) / variance - 1``, kept in ``[1, cap]``."""
    spread = prior_mean * (1.0 - prior_mean)
    variance = max(bound, 1e-3) ** 2 + spread / (shadow_strength + 1.0)
    return min(cap, max(1.0, spread / variance - 1.0))


def describe(members: Sequence[int], gammas: Sequence[int], names: Sequence[str]) -> str:
    return chain_text([names[m] for m in members], gammas, gamma_sep=", ", alone="alone (autoregressive)")


def evaluate_setting(alpha: Sequence[float], gammas: Sequence[int], latency: Sequence[Latency]) -> float:
    """Exact expected time per token of one setting (alpha: its adjacent pairs, top first)."""
    return float(predict_chain(list(alpha), list(gammas), list(latency)).time_per_token)
