"""Choosing speculation lengths.

Two levels: the improvement factor ``f(g) = (1 - a^(g+1)) / ((1 - a)(g c + 1))`` has first-order
condition ``a^(g+1) (c g + 1)(-ln a) = c (1 - a^(g+1))``, solved in closed form by the lower
branch of Lambert's W:  ``g* = (1 + W_{-1}(-a^(1/c - 1) / e)) / ln a - 1/c``  (0 < a < 1, 0 < c < 1).
The integer optimum is found numerically (``optimal_gamma_two_level``).
Any depth: ``search_gammas`` searches the exact chain model (exhaustive when small, coordinate
descent with restarts otherwise). Proof: proofs/optimal-gamma.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import sympy as sp

from polyplan.errors import UserError
from polyplan.theory.acceptance import a, c, g
from polyplan.theory.chain_model import ChainPrediction, predict_chain
from polyplan.theory.latency import Latency, validate_latencies
from polyplan.theory.two_level import improvement_factor


def first_order_condition() -> sp.Expr:
    """Numerator of ``d f / d g`` (its zero is the continuous optimum; the denominator is positive)."""
    return sp.numer(sp.together(sp.diff(improvement_factor(), g)))


def optimal_gamma_expression() -> sp.Expr:
    """``g* = (1 + W_{-1}(-a^(1/c-1)/e)) / ln a - 1/c``."""
    return (1 + sp.LambertW(-(a ** (1 / c - 1)) / sp.E, -1)) / sp.log(a) - 1 / c


@cache
def _numeric_forms() -> tuple[Callable[..., float], Callable[..., complex]]:
    """The fast paths, lambdified once from the expressions (deferred: deriving them takes ~1 s)."""
    return (
        sp.lambdify((a, g, c), improvement_factor(), "math"),
        sp.lambdify((a, c), optimal_gamma_expression(), "scipy"),
    )


@dataclass
class TwoLevelOptimum:
    gamma: int  # best integer speculation length in [1, max_gamma]
    speedup: float  # improvement factor at that gamma
    continuous_gamma: float | None  # root of the first-order condition (None when it does not exist)


def optimal_gamma_two_level(alpha: float, cost_ratio: float, max_gamma: int = 64) -> TwoLevelOptimum:
    """Best integer ``g`` for two levels at acceptance ``alpha`` and ``c = T2 / T1``."""
    if not 0 <= alpha < 1:
        raise UserError(f"alpha must lie in [0, 1), got {alpha}")
    if cost_ratio < 0:
        raise UserError(f"the cost ratio c = T2/T1 must be >= 0, got {cost_ratio}")
    _improvement, _continuous_optimum = _numeric_forms()
    values = [
        (_improvement(alpha, gg, cost_ratio) if alpha > 0 else 1 / (gg * cost_ratio + 1), gg)
        for gg in range(1, max_gamma + 1)
    ]
    best_value, best_gamma = max(values, key=lambda v: (v[0], -v[1]))
    continuous = None
    if 0 < alpha < 1 and 0 < cost_ratio < 1:
        root = complex(_continuous_optimum(alpha, cost_ratio))
        if abs(root.imag) < 1e-9 and math.isfinite(root.real):
            continuous = root.real
    return TwoLevelOptimum(gamma=best_gamma, speedup=float(best_value), continuous_gamma=continuous)


def search_gammas(
    alpha: Sequence[float],
    latency: Sequence[Latency],
    max_gamma: int = 16,
    *,
    min_gamma: int = 1,
    exhaustive_limit: int = 1024,
    objective: Callable[[ChainPrediction], float] | None = None,
) -> tuple[list[int], ChainPrediction]:
    """The speculation lengths ``[g_2..g_k]`` in ``[min_gamma, max_gamma]`` that minimise expected
    time per token (or ``objective``, lower is better) under the exact model.

    Exhaustive when ``(max_gamma - min_gamma + 1)^(k-1) <= exhaustive_limit`` (by default depth <= 3
    with gammas up to 16: 256 evaluations, ~70 ms); otherwise coordinate descent: from several starting points
    (all min, all max, all middle, the two-level optimum of each pair repeated) repeatedly
    re-optimise one level's gamma over its whole range with the others fixed until no single change
    improves; the best local optimum wins (~50 ms at depth 4, gammas up to 16). Coordinate descent is a
    heuristic: it matched the exhaustive optimum (4096 evaluations, ~1 s) on 15 of 15 random depth-4
    chains and is tested against it on small chains; every evaluation is memoised. Pass
    ``exhaustive_limit=16**3`` to force the exhaustive search at depth 4."""
    k = len(latency)
    if len(alpha) != k - 1:
        raise UserError(f"a chain of {k} models needs {k - 1} acceptance rates, got {len(alpha)}")
    validate_latencies(latency, k)
    if not 1 <= min_gamma <= max_gamma:
        raise UserError(f"need 1 <= min_gamma <= max_gamma, got {min_gamma}, {max_gamma}")
    score = objective or (lambda p: p.time_per_token)
    cache: dict[tuple[int, ...], tuple[float, ChainPrediction]] = {}

    def evaluate(gammas: tuple[int, ...]) -> float:
        if gammas not in cache:
            prediction = predict_chain(alpha, gammas, latency)
            cache[gammas] = (score(prediction), prediction)
        return cache[gammas][0]

    choices = range(min_gamma, max_gamma + 1)
    if k == 1:
        return [], predict_chain([], [], latency)
    if len(choices) ** (k - 1) <= exhaustive_limit:
        best = min(itertools.product(choices, repeat=k - 1), key=evaluate)
        return list(best), cache[best][1]
    middle = (min_gamma + max_gamma) // 2
    starts = {tuple([min_gamma] * (k - 1)), tuple([max_gamma] * (k - 1)), tuple([middle] * (k - 1))}
    for gg in (2, 4, 8):
        if min_gamma <= gg <= max_gamma:
            starts.add(tuple([gg] * (k - 1)))
    best_local: tuple[int, ...] | None = None
    for start in sorted(starts):
        current = list(start)
        improved = True
        while improved:
            improved = False
            for level in range(k - 1):

                def with_level(v: int, current: list[int] = current, level: int = level) -> tuple[int, ...]:
                    return tuple(current[:level] + [v] + current[level + 1 :])

                candidate = min(choices, key=lambda v: evaluate(with_level(v)))
                if evaluate(with_level(candidate)) < evaluate(tuple(current)):
                    current[level] = candidate
                    improved = True
        if best_local is None or evaluate(tuple(current)) < evaluate(best_local):
            best_local = tuple(current)
    assert best_local is not None
    return list(best_local), cache[best_local][1]
