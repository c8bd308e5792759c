"""Draft-tree theory: Theorem 1 against the simulator of the executor's walk, Theorem 2 against
brute force, and the planner's choice of tree size in the regimes where trees pay and do not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from polyplan.errors import UserError
from polyplan.theory.simulator import simulate_tree_verifications
from polyplan.theory.trees import (
    best_first_tree,
    choose_tree,
    expected_accepted,
    linear_shape,
    predict_tree_round,
)

rates_strategy = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4).map(
    lambda xs: [x / max(1.0, sum(xs) * 1.05) for x in xs]
)


@settings(max_examples=25, deadline=None)
@given(rates=rates_strategy, nodes=st.integers(1, 12), depth=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_expected_accepted_matches_the_simulated_walk(rates, nodes, depth, seed):
    shape = best_first_tree(rates, nodes, depth, max_passes=nodes + 1)
    accepted = simulate_tree_verifications(shape.parents, shape.ranks, rates, 4000, np.random.default_rng(seed))
    stderr = max(accepted.std(ddof=1) / np.sqrt(accepted.size), 1e-3)
    assert abs(accepted.mean() - expected_accepted(shape, rates)) < 5 * stderr


def test_simulator_check_can_fail():
    """The comparison above detects a wrong formula: ranks ignored (every node as rank 1)."""
    rates = [0.5, 0.3]
    shape = best_first_tree(rates, 8, 4, max_passes=9)
    accepted = simulate_tree_verifications(shape.parents, shape.ranks, rates, 4000, np.random.default_rng(0))
    wrong = expected_accepted(shape.__class__(shape.parents, (1,) * shape.nodes, shape.passes), rates)
    stderr = accepted.std(ddof=1) / np.sqrt(accepted.size)
    assert abs(accepted.mean() - wrong) > 5 * stderr


def test_linear_tree_is_the_capped_geometric_sum():
    alpha = 0.8
    assert expected_accepted(linear_shape(5), [alpha]) == pytest.approx(sum(alpha**d for d in range(1, 6)))


def test_best_first_respects_the_budgets():
    shape = best_first_tree([0.6, 0.25, 0.1], 12, 5)
    assert shape.nodes == 12 and shape.depth <= 5 and shape.passes <= 5
    # with 3 ranked candidates per node, 5 passes open at most 15 nodes
    assert best_first_tree([0.6, 0.25, 0.1], 20, 5).nodes == 15
    wide = best_first_tree([0.6, 0.25, 0.1], 12, 5, max_passes=13)
    assert expected_accepted(wide, [0.6, 0.25, 0.1]) >= expected_accepted(shape, [0.6, 0.25, 0.1])


def test_trees_pay_on_flat_verifiers_and_unsure_drafters_only():
    def flat(n):
        return 0.045 * (1 + 0.26 * (n - 1) / 31)

    def compute_bound(n):
        return 0.045 * n

    unsure = [0.6, 0.2, 0.08]
    choice = choose_tree(unsure, 6, flat, 0.005)
    prediction = choice.tree
    assert (
        choice.nodes > 1 and prediction.tokens_per_pass > predict_tree_round(unsure, 1, 6, flat, 0.005).tokens_per_pass
    )
    assert "tree of" in choice.reason
    choice = choose_tree(unsure, 6, compute_bound, 0.005)
    assert choice.nodes == 1 and choice.reason.startswith("linear")


def test_bad_rates_are_one_clear_error():
    with pytest.raises(UserError, match="sum to at most 1"):
        expected_accepted(linear_shape(3), [0.8, 0.5])
