"""Capped-geometric acceptance: one verification of a block of ``g`` drafted tokens at rate ``a``.

Under i.i.d. acceptance with probability ``a`` the number of accepted tokens ``A`` is capped
geometric: ``P(A = i) = a^i (1 - a)`` for ``i < g`` and ``P(A = g) = a^g``. The *acceptance length*
is ``X = A + 1`` (accepted tokens plus the verifier's own correction or bonus token).

Everything here is a sympy expression first; the numeric helpers below evaluate the same pmf and
are tested against the expressions (tests/test_theory_symbolic.py). Proofs:
proofs/capped-geometric.md, proofs/stability.md, proofs/speculative-sampling-rate.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy as sp

a, g, i, c = sp.symbols("alpha gamma i c", positive=True)


def pmf_expression() -> sp.Piecewise:
    """``P(A = i)`` for the number of accepted tokens among ``g`` drafted (symbolic in a, g, i)."""
    return sp.Piecewise((a**i * (1 - a), i < g), (a**g, sp.Eq(i, g)), (0, True))


def mean_accepted_expression(g_value: int | sp.Expr = g) -> sp.Expr:
    """``E[A] = a (1 - a^g) / (1 - a)``, derived by summing the pmf."""
    s = sp.summation(i * a**i * (1 - a), (i, 0, g_value - 1)) + g_value * a**g_value
    return sp.simplify(s)


def mean_acceptance_length_expression(g_value: int | sp.Expr = g) -> sp.Expr:
    """``E[X] = E[A] + 1 = (1 - a^(g+1)) / (1 - a)`` (Leviathan et al. 2023, eq. 1)."""
    return sp.simplify(mean_accepted_expression(g_value) + 1)


def second_moment_accepted_expression(g_value: int | sp.Expr = g) -> sp.Expr:
    s = sp.summation(i**2 * a**i * (1 - a), (i, 0, g_value - 1)) + g_value**2 * a**g_value
    return sp.simplify(s)


def variance_expression(g_value: int | sp.Expr = g) -> sp.Expr:
    """``Var[X] = Var[A]`` (the +1 shifts, it does not spread)."""
    m = mean_accepted_expression(g_value)
    return sp.simplify(second_moment_accepted_expression(g_value) - m**2)


def cv_expression(g_value: int | sp.Expr = g, *, include_bonus: bool = True) -> sp.Expr:
    """Coefficient of variation of the acceptance length ``X`` (or of ``A`` with include_bonus=False)."""
    mean = mean_acceptance_length_expression(g_value) if include_bonus else mean_accepted_expression(g_value)
    return sp.sqrt(variance_expression(g_value)) / mean


def cv_squared_derivative_numerator(g_value: int, *, include_bonus: bool) -> sp.Poly:
    """Numerator polynomial of ``d(CV^2)/da`` for a concrete ``g``; its sign is the sign of dCV/da."""
    cv2 = sp.cancel(variance_expression(g_value) /
                    (mean_acceptance_length_expression(g_value) if include_bonus
                     else mean_accepted_expression(g_value)) ** 2)
    num, den = sp.fraction(sp.together(sp.diff(cv2, a)))
    return sp.Poly(sp.expand(num), a), sp.Poly(sp.expand(den), a)


def accepted_cv_is_decreasing(g_value: int) -> bool:
    """Stability theorem, checked exactly for one ``g``: CV[A] strictly falls on 0 < a < 1.

    The numerator of d(CV^2)/da has no root in (0, 1) and is negative at a = 1/2, the
    denominator is a square (positive)."""
    num, den = cv_squared_derivative_numerator(g_value, include_bonus=False)
    half = sp.Rational(1, 2)
    roots_inside = num.count_roots(0, 1) - (1 if num.eval(0) == 0 else 0) - (1 if num.eval(1) == 0 else 0)
    return roots_inside == 0 and (num.eval(half) / den.eval(half)) < 0


def acceptance_length_cv_peak(g_value: int) -> float:
    """The rate ``a*`` where CV[X] peaks: CV[X] rises on (0, a*) and falls on (a*, 1).

    (At a = 0 every verification yields exactly one token, so CV[X] = 0 there.)"""
    num, _ = cv_squared_derivative_numerator(g_value, include_bonus=True)
    roots = [r for r in num.real_roots() if 0 < r < 1]
    if len(roots) != 1:
        raise ArithmeticError(f"expected exactly one interior critical point for g={g_value}, got {roots}")
    return float(roots[0])


# --- numeric pmf (the one place the generic chain model and the simulator's tests get it) ---

def capped_geometric_pmf(rate: Any, block: int, powers: Sequence[Any] | None = None) -> list[Any]:
    """``[P(A = 0), ..., P(A = block)]`` for any number type (float, Fraction, sympy)."""
    if powers is None:
        powers = [rate**n for n in range(block + 1)]
    one_minus = 1 - rate
    return [powers[n] * one_minus for n in range(block)] + [powers[block]]


def mean_acceptance_length(rate: Any, block: int) -> Any:
    """``E[X] = sum_{n=0}^{block} a^n`` (= (1 - a^(block+1)) / (1 - a) for a != 1), no division."""
    total = 0
    term = 1
    for _ in range(block + 1):
        total = total + term
        term = term * rate
    return total


# --- speculative sampling versus exact-match sampling ---

def speculative_sampling_rate(p: Sequence[float], q: Sequence[float]) -> float:
    """Acceptance rate of speculative sampling: ``sum_x min(p(x), q(x))`` = 1 - TV(p, q)."""
    _check_distributions(p, q)
    return float(sum(min(px, qx) for px, qx in zip(p, q)))


def exact_match_rate(p: Sequence[float], q: Sequence[float]) -> float:
    """Acceptance rate when the verifier samples its own token and accepts on a match: ``sum_x p q``."""
    _check_distributions(p, q)
    return float(sum(px * qx for px, qx in zip(p, q)))


def _check_distributions(p: Sequence[float], q: Sequence[float]) -> None:
    if len(p) != len(q):
        raise ValueError("p and q must be over the same vocabulary")
    for dist in (p, q):
        if any(x < 0 for x in dist) or abs(sum(dist) - 1) > 1e-9:
            raise ValueError("p and q must be probability distributions")


def rate_comparison_expression() -> sp.Expr:
    """Per-token gap ``min(p, q) - p q`` with p, q in [0, 1]; it is >= 0 (proofs/speculative-sampling-rate.md)."""
    p, q = sp.symbols("p q", nonnegative=True)
    return sp.Min(p, q) - p * q
