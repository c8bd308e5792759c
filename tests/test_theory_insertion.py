"""The insertion condition: decomposition, chain surgery, and the sign of the simulated change."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from polyplan.errors import UserError
from polyplan.theory import inserted_chain, insertion_gain, predict_chain, simulate_chain


def test_inserted_chain_layout():
    alpha, gamma, latency = [0.9, 0.6], [6, 3], [1.0, 0.3, 0.02]
    assert inserted_chain(alpha, gamma, latency, 2, 0.95, 0.8, 0.5, 4) == (
        [0.95, 0.8, 0.6],
        [4, 6, 3],
        [1.0, 0.5, 0.3, 0.02],
    )
    assert inserted_chain(alpha, gamma, latency, 3, 0.7, 0.65, 0.1, 5) == (
        [0.9, 0.7, 0.65],
        [6, 5, 3],
        [1.0, 0.3, 0.1, 0.02],
    )
    assert inserted_chain(alpha, gamma, latency, 4, 0.5, None, 0.001, 2) == (
        [0.9, 0.6, 0.5],
        [6, 3, 2],
        [1.0, 0.3, 0.02, 0.001],
    )
    assert inserted_chain([], [], [1.0], 2, 0.7, None, 0.1, 4) == ([0.7], [4], [1.0, 0.1])
    for bad in ((1, 0.5, 0.5), (5, 0.5, None), (4, 0.5, 0.5), (3, 0.5, None)):
        with pytest.raises(UserError):
            inserted_chain(alpha, gamma, latency, bad[0], bad[1], bad[2], 0.1, 2)


@pytest.mark.parametrize("exact", [False, True])
def test_decomposition_sums_to_the_exact_change(exact):
    r = insertion_gain(
        [0.6],
        [4],
        [1, Fraction(1, 50)] if exact else [1.0, 0.02],
        2,
        Fraction(17, 20) if exact else 0.85,
        Fraction(7, 10) if exact else 0.7,
        Fraction(1, 5) if exact else 0.2,
        4,
        exact=exact,
    )
    total = r.new_model_cost - r.verifier_saving + r.other_levels_change
    if exact:
        assert r.change == total and isinstance(r.change, Fraction)
    else:
        assert r.change == pytest.approx(total, abs=1e-12)
    assert not r.sufficient_condition or r.improves  # sufficient really is sufficient


def test_a_slower_candidate_changes_the_chain_for_the_worse():
    """Only the new level's cost depends on its latency: the change grows with it, linearly, and once
    the candidate stops paying for itself no slower one does."""
    latencies = [0.0, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8]
    results = [insertion_gain([0.6], [4], [1.0, 0.02], 2, 0.85, 0.7, c, 4) for c in latencies]
    changes = [r.change for r in results]
    assert changes == sorted(changes) and len(set(changes)) == len(changes)
    slope = (changes[-1] - changes[0]) / (latencies[-1] - latencies[0])
    assert changes == pytest.approx([changes[0] + slope * c for c in latencies], abs=1e-12)
    improves = [r.improves for r in results]
    assert improves[0] and not improves[-1]
    assert improves == sorted(improves, reverse=True)  # True ... True, False ... False


def test_decomposition_with_latency_curves():
    curve = lambda n: 0.2 + 0.01 * n  # noqa: E731
    r = insertion_gain([0.6], [4], [lambda n: 1 + 0.02 * n, 0.02], 2, 0.85, 0.7, curve, 4)
    assert r.change == pytest.approx(r.new_model_cost - r.verifier_saving + r.other_levels_change, abs=1e-12)


def test_autoregressive_target_gains_a_drafter():
    r = insertion_gain([], [], [1.0], 2, 0.8, None, 0.1, 4)
    assert r.change == pytest.approx(1.4 / 3.3616 - 1.0)
    assert r.improves and r.paper_condition and r.sufficient_condition


def _random_insertion(rng):
    k = int(rng.integers(1, 4))
    alpha = rng.uniform(0.3, 0.95, k - 1).round(2).tolist()
    gamma = rng.integers(1, 6, k - 1).tolist()
    latency = [1.0] + sorted(rng.uniform(0.01, 0.6, k - 1).round(3).tolist(), reverse=True)
    position = int(rng.integers(2, k + 2))
    above = round(float(rng.uniform(0.3, 0.98)), 2)
    below = None if position == k + 1 else round(float(rng.uniform(0.3, 0.98)), 2)
    new_latency = round(float(rng.uniform(0.0, 0.8)), 3)
    return alpha, gamma, latency, position, above, below, new_latency, int(rng.integers(1, 6))


def test_condition_predicts_the_sign_of_the_simulated_change():
    """Simulate before and after; where the simulated change is clearly resolved (> 5 standard errors
    apart from zero by the model), the exact condition must predict its sign — and the paper's
    sufficient condition must never claim an improvement that the simulation contradicts."""
    rng = np.random.default_rng(2024)
    decisive = 0
    for case in range(40):
        alpha, gamma, latency, position, above, below, new_latency, new_gamma = _random_insertion(rng)
        r = insertion_gain(alpha, gamma, latency, position, above, below, new_latency, new_gamma)
        before = simulate_chain(alpha, gamma, latency, 3000, rng=case)
        after = simulate_chain(
            r.after.alpha,
            r.after.gamma,
            [*latency[: position - 1], new_latency, *latency[position - 1 :]],
            3000,
            rng=case + 1000,
        )
        simulated = after.time_per_token - before.time_per_token
        stderr = np.hypot(after.time_per_token_stderr, before.time_per_token_stderr)
        if abs(r.change) > 5 * stderr:
            decisive += 1
            assert np.sign(simulated) == np.sign(r.change), (case, r.change, simulated, stderr)
            if r.sufficient_condition:
                assert simulated < 0
    assert decisive >= 20, decisive  # 39 of the 40 cases are decisive


def test_exact_model_prefers_the_better_insertion():
    base = predict_chain([0.6], [4], [1.0, 0.02])
    good = insertion_gain([0.6], [4], [1.0, 0.02], 2, 0.9, 0.75, 0.05, 4)
    bad = insertion_gain([0.6], [4], [1.0, 0.02], 2, 0.3, 0.75, 0.5, 4)
    assert good.before.time_per_token == base.time_per_token
    assert good.improves and not bad.improves
    assert not bad.paper_condition
