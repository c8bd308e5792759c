"""search_gammas: exhaustive on small grids, coordinate descent checked against it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from polyplan.errors import UserError
from polyplan.theory import optimal_gamma_two_level, predict_chain, search_gammas


def test_two_levels_agree_with_closed_form_optimum():
    best, prediction = search_gammas([0.8], [1.0, 0.1], max_gamma=16)
    assert best == [optimal_gamma_two_level(0.8, 0.1, max_gamma=16).gamma] == [6]
    assert prediction.gamma == best


def test_exhaustive_is_the_true_minimum():
    alpha, latency = [0.85, 0.6], [1.0, 0.25, 0.03]
    best, prediction = search_gammas(alpha, latency, max_gamma=8)
    brute = min(
        itertools.product(range(1, 9), repeat=2), key=lambda gs: predict_chain(alpha, gs, latency).time_per_token
    )
    assert tuple(best) == brute
    assert prediction.time_per_token == predict_chain(alpha, brute, latency).time_per_token


@pytest.mark.parametrize("seed", range(8))
def test_coordinate_descent_finds_the_exhaustive_optimum_on_small_chains(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 5))
    alpha = rng.uniform(0.4, 0.95, k - 1).round(3).tolist()
    latency = [1.0] + sorted(rng.uniform(0.005, 0.5, k - 1).round(4).tolist(), reverse=True)
    exhaustive, p_exhaustive = search_gammas(alpha, latency, max_gamma=6)
    descent, p_descent = search_gammas(alpha, latency, max_gamma=6, exhaustive_limit=1)
    # a heuristic: it must reach the optimum's value closely (here: exactly on these seeds)
    assert p_descent.time_per_token <= p_exhaustive.time_per_token * (1 + 1e-3)


def test_custom_objective_and_latency_curves():
    curve = [lambda n: 1.0 + 0.05 * n, lambda n: 0.1 + 0.01 * n]
    best, prediction = search_gammas([0.8], curve, max_gamma=12, objective=lambda p: -p.speedup)
    values = {g: predict_chain([0.8], [g], curve).speedup for g in range(1, 13)}
    assert best == [max(values, key=values.get)]


def test_single_model_and_bad_input():
    assert search_gammas([], [1.0])[0] == []
    with pytest.raises(UserError):
        search_gammas([0.5], [1.0])
    with pytest.raises(UserError):
        search_gammas([0.5], [1.0, 0.1], max_gamma=0)
