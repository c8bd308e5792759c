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
from functools import cache
from typing import Any

import sympy as sp

a, c = sp.symbols("alpha c", positive=True)
g = sp.Symbol("gamma", positive=True, integer=True)
i = sp.Symbol("i", nonnegative=True, integer=True)


def _rate_below_one(expr: sp.Expr) -> sp.Expr:
    """Sums over ``a^i`` come back as Piecewise((..., Eq(a, 1)), (..., True)); we keep 0 < a < 1."""
    expr = sp.piecewise_fold(expr)
    if isinstance(expr, sp.Piecewise):
        expr = expr.args[-1][0]
    return expr


def pmf_expression() -> sp.Piecewise:
    """``P(A = i)`` for the number of accepted tokens among ``g`` drafted (symbolic in a, g, i)."""
    return sp.Piecewise((a**i * (1 - a), i < g), (a**g, sp.Eq(i, g)), (0, True))


@cache
def _moment_of_accepted(power: int) -> sp.Expr:
    """``E[A^power]`` for symbolic g, by summing the pmf (for 0 < a < 1)."""
    s = sp.summation(i**power * a**i * (1 - a), (i, 0, g - 1)) + g**power * a**g
    return sp.simplify(_rate_below_one(s))


def _at(expr: sp.Expr, g_value: int | sp.Expr) -> sp.Expr:
    return expr if g_value is g else sp.cancel(expr.subs(g, g_value))


def mean_accepted_expression(g_value: int | sp.Expr = g) -> sp.Expr:
    """``E[A] = a (1 - a^g) / (1 - a)``, derived by summing the pmf."""
    return _at(_moment_of_accepted(1), g_value)


def mean_acceptance_length_expression(g_value: int | sp.Expr = g) -> sp.Expr:
    """``E[X] = E[A] + 1 = (1 - a^(g+1)) / (1 - a)`` (Leviathan et al. 2023, eq. 1)."""
    return (
        sp.factor(sp.simplify(mean_accepted_expression(g_value) + 1))
        if g_value is g
        else sp.cancel(mean_accepted_expression(g_value) + 1)
    )


def second_moment_accepted_expression(g_value: int | sp.Expr = g) -> sp.Expr:
    return _at(_moment_of_accepted(2), g_value)


def variance_expression(g_value: int | sp.Expr = g) -> sp.Expr:
    """``Var[X] = Var[A]`` (the +1 shifts, it does not spread)."""
    m = mean_accepted_expression(g_value)
    difference = second_moment_accepted_expression(g_value) - m**2
    return sp.factor(sp.simplify(difference)) if g_value is g else sp.factor(sp.cancel(difference))


def cv_expression(g_value: int | sp.Expr = g, *, include_bonus: bool = True) -> sp.Expr:
    """Coefficient of variation of the acceptance length ``X`` (or of ``A`` with include_bonus=False)."""
    mean = mean_acceptance_length_expression(g_value) if include_bonus else mean_accepted_expression(g_value)
    return sp.sqrt(variance_expression(g_value)) / mean


def moment_polynomials(g_value: int, *, include_bonus: bool) -> tuple[sp.Poly, sp.Poly]:
    """``(E[Y], E[Y^2])`` as polynomials in a for a concrete g, Y = X (with bonus) or A.

    Tail sums: ``E[A] = sum_{n=1}^g a^n`` and ``E[A^2] = sum_{n=1}^g (2n - 1) a^n`` (P(A >= n) = a^n);
    tests check they equal the summed-pmf expressions above."""
    first = sp.Poly(sum(a**n for n in range(1, g_value + 1)), a)
    second = sp.Poly(sum((2 * n - 1) * a**n for n in range(1, g_value + 1)), a)
    if include_bonus:
        second = second + 2 * first + 1
        first = first + 1
    return first, second


def cv_squared_derivative_numerator(g_value: int, *, include_bonus: bool) -> sp.Poly:
    """A polynomial with the sign of ``d CV / d a`` on 0 < a < 1, for a concrete g.

    ``CV^2 = E[Y^2] / m^2 - 1`` so ``d(CV^2)/da = (E[Y^2]' m - 2 E[Y^2] m') / m^3`` with m > 0."""
    m, second = moment_polynomials(g_value, include_bonus=include_bonus)
    return second.diff(a) * m - 2 * second * m.diff(a)


def accepted_cv_is_decreasing(g_value: int) -> bool:
    """Stability theorem, checked exactly for one ``g``: CV[A] strictly falls on 0 < a < 1.

    The numerator of d(CV^2)/da has no root in the open interval (0, 1) and is negative at 1/2."""
    num = cv_squared_derivative_numerator(g_value, include_bonus=False)
    return _roots_inside_unit_interval(num) == 0 and num.eval(sp.Rational(1, 2)) < 0


def _roots_inside_unit_interval(poly: sp.Poly) -> int:
    return poly.count_roots(0, 1) - (1 if poly.eval(0) == 0 else 0) - (1 if poly.eval(1) == 0 else 0)


def acceptance_length_cv_peak(g_value: int) -> float:
    """The rate ``a*`` where CV[X] peaks: CV[X] rises on (0, a*) and falls on (a*, 1).

    (At a = 0 every verification yields exactly one token, so CV[X] = 0 there.)"""
    num = cv_squared_derivative_numerator(g_value, include_bonus=True)
    roots = [r for r in num.real_roots() if 0 < r < 1]
    if len(roots) != 1 or not num.eval(sp.Rational(1, 10**6)) > 0:
        raise ArithmeticError(f"expected one interior maximum of CV[X] for g={g_value}, got roots {roots}")
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
    return float(sum(min(px, qx) for px, qx in zip(p, q, strict=True)))


def exact_match_rate(p: Sequence[float], q: Sequence[float]) -> float:
    """Acceptance rate when the verifier samples its own token and accepts on a match: ``sum_x p q``."""
    _check_distributions(p, q)
    return float(sum(px * qx for px, qx in zip(p, q, strict=True)))


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
