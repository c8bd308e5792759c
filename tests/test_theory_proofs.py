"""Every theorem's identity holds symbolically; every proof file exists and names its function."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

from polyplan.theory import acceptance, gamma
from polyplan.theory.theorems import THEOREMS, find_theorem

PROOFS = Path(__file__).resolve().parents[1] / "proofs"


@pytest.mark.parametrize("theorem", THEOREMS, ids=lambda t: t.name)
def test_theorem_identity_holds_symbolically(theorem):
    assert theorem.check() is True


@pytest.mark.parametrize("theorem", THEOREMS, ids=lambda t: t.name)
def test_proof_file_names_its_implementation(theorem):
    proof = PROOFS / f"{theorem.name}.md"
    assert proof.is_file(), f"missing {proof}"
    text = proof.read_text()
    assert f"`{theorem.implementation}`" in text
    module_name, function_name = theorem.implementation.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module_name), function_name))
    assert "$" in text  # LaTeX math
    assert theorem.latex()


def test_every_proof_file_is_listed():
    names = {t.name for t in THEOREMS} | {"README", "latency-convention"}
    assert {p.stem for p in PROOFS.glob("*.md")} == names


def test_moment_polynomials_equal_the_summed_pmf_expressions():
    for g_value in range(1, 7):
        mean, second = acceptance.moment_polynomials(g_value, include_bonus=False)
        assert sp.simplify(mean.as_expr() - acceptance.mean_accepted_expression().subs(acceptance.g, g_value)) == 0
        assert (
            sp.simplify(second.as_expr() - acceptance.second_moment_accepted_expression().subs(acceptance.g, g_value))
            == 0
        )


def test_stability_statement_numerically():
    """CV[A] falls everywhere; CV[X] peaks at a*(g) (1/3 for g = 1) and falls after it."""
    assert acceptance.acceptance_length_cv_peak(1) == pytest.approx(1 / 3)
    cv = sp.lambdify((acceptance.a, acceptance.g), acceptance.cv_expression(), "numpy")
    cv_accepted = sp.lambdify((acceptance.a, acceptance.g), acceptance.cv_expression(include_bonus=False), "numpy")
    rates = np.linspace(0.01, 0.99, 99)
    for g_value in (1, 3, 8):
        assert np.all(np.diff(cv_accepted(rates, g_value)) < 0)
        peak = acceptance.acceptance_length_cv_peak(g_value)
        after = rates[rates > peak + 1e-3]
        before = rates[rates < peak - 1e-3]
        assert np.all(np.diff(cv(after, g_value)) < 0) and np.all(np.diff(cv(before, g_value)) > 0)


def test_stability_check_can_fail():
    """The sign test is not vacuous: CV[X] (with the bonus) is *not* decreasing on all of (0, 1)."""
    num = acceptance.cv_squared_derivative_numerator(2, include_bonus=True)
    assert acceptance._roots_inside_unit_interval(num) == 1


def test_rate_comparison_check_reads_the_named_expression(monkeypatch):
    """The proof names ``rate_comparison_expression``; the check must stand or fall with it."""
    from polyplan.theory import theorems

    p, q = sp.symbols("p q", nonnegative=True)
    monkeypatch.setattr(acceptance, "rate_comparison_expression", lambda: sp.Min(p, q) - 2 * p * q)
    assert theorems._check_rate_comparison() is False


@settings(derandomize=True, database=None, deadline=None, max_examples=60)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8), st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8))
def test_speculative_sampling_rate_is_at_least_exact_match(raw_p, raw_q):
    n = min(len(raw_p), len(raw_q))
    p, q = np.array(raw_p[:n]) + 1e-3, np.array(raw_q[:n]) + 1e-3
    p, q = (p / p.sum()).tolist(), (q / q.sum()).tolist()
    ss, em = acceptance.speculative_sampling_rate(p, q), acceptance.exact_match_rate(p, q)
    assert ss >= em - 1e-12
    # ... hence its accepted-token CV is no higher, at every block length
    if 0 < em < ss < 1:
        for block in (1, 4, 8):
            assert _accepted_cv(ss, block) <= _accepted_cv(em, block) + 1e-12


def _accepted_cv(rate: float, block: int) -> float:
    pmf = np.array(acceptance.capped_geometric_pmf(rate, block))
    counts = np.arange(block + 1)
    mean = (pmf * counts).sum()
    return float(np.sqrt((pmf * counts**2).sum() - mean**2) / mean)


def test_point_masses_make_the_two_rates_equal():
    assert (
        acceptance.speculative_sampling_rate([1, 0, 0], [0.2, 0.5, 0.3])
        == acceptance.exact_match_rate([1, 0, 0], [0.2, 0.5, 0.3])
        == 0.2
    )


@pytest.mark.parametrize("alpha,c", [(0.8, 0.1), (0.9, 0.05), (0.6, 0.3), (0.95, 0.02), (0.7, 0.5)])
def test_optimal_gamma_matches_brute_force(alpha, c):
    best = gamma.optimal_gamma_two_level(alpha, c, max_gamma=200)
    grid = np.arange(1, 201)
    values = (1 - alpha ** (grid + 1)) / ((1 - alpha) * (grid * c + 1))
    assert best.gamma == int(grid[values.argmax()])
    assert best.speedup == pytest.approx(values.max())
    assert best.continuous_gamma is not None
    # the integer optimum sits next to the continuous one (the objective is unimodal)
    assert abs(best.gamma - best.continuous_gamma) < 1 or best.gamma == 1
    fine = np.linspace(max(0.01, best.continuous_gamma - 1), best.continuous_gamma + 1, 2001)
    f = (1 - alpha ** (fine + 1)) / ((1 - alpha) * (fine * c + 1))
    assert math.isclose(fine[f.argmax()], best.continuous_gamma, abs_tol=2e-3)


def test_show_names_resolve():
    assert find_theorem("two-level").proof_file == "proofs/two-level.md"
