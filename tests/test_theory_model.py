"""The exact chain model against the staged simulator, the exact path, closed forms and accounting."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings, strategies as st

from polyplan.errors import UserError
from polyplan.theory import (
    predict_chain,
    predict_chain_exact,
    predict_chain_symbolic,
    simulate_chain,
    time_per_token,
    total_time,
)
from polyplan.theory.acceptance import a as a_sym, capped_geometric_pmf, g as g_sym, i as i_sym, pmf_expression

DETERMINISTIC = settings(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def chains(draw, min_depth: int = 1, max_depth: int = 4, curves: bool = True):
    k = draw(st.integers(min_depth, max_depth))
    alpha = [draw(st.sampled_from([0.0, 0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])) for _ in range(k - 1)]
    gamma = [draw(st.integers(1, 6)) for _ in range(k - 1)]
    latency: list = [1.0] + [draw(st.sampled_from([0.5, 0.2, 0.1, 0.05, 0.01, 0.0])) for _ in range(k - 1)]
    if curves and draw(st.booleans()):  # T_i(n) = T_i (1 + n / 8): rising with the new tokens
        latency = [lambda n, t=t: t * (1 + n / 8) for t in latency]
    return alpha, gamma, latency


def _agree(estimate: float, stderr: float, expected: float, z: float = 5.0) -> bool:
    return abs(estimate - expected) <= z * stderr + 1e-9 * max(1.0, abs(expected))


@settings(DETERMINISTIC, max_examples=40)
@given(chains(), st.integers(0, 2**32 - 1))
def test_exact_model_agrees_with_simulator(chain, seed):
    alpha, gamma, latency = chain
    prediction = predict_chain(alpha, gamma, latency)
    sim = simulate_chain(alpha, gamma, latency, 4000, rng=seed)
    assert _agree(sim.time_per_token, sim.time_per_token_stderr, prediction.time_per_token)
    assert _agree(sim.mean_acceptance_length, sim.mean_acceptance_length_stderr, prediction.mean_acceptance_length)
    for measured, stderr, expected in zip(
        sim.passes_per_token, sim.passes_per_token_stderr, prediction.passes_per_token, strict=True
    ):
        assert _agree(measured, stderr, expected)
    assert sum(prediction.level_time_per_token) == pytest.approx(prediction.time_per_token, rel=1e-12)
    # the whole distribution of the target's acceptance length, bin by bin
    histogram = np.bincount(sim.round_tokens, minlength=len(prediction.acceptance_length_distribution))
    assert histogram.size == len(prediction.acceptance_length_distribution)
    for count, prob in zip(histogram, prediction.acceptance_length_distribution, strict=True):
        stderr = np.sqrt(max(prob * (1 - prob), 1e-12) / sim.rounds)
        assert abs(count / sim.rounds - prob) <= 5 * stderr + 1e-9


def test_level_time_split_with_latency_curves():
    curves = [lambda n: 1.0 + 0.1 * n, lambda n: 0.2 + 0.05 * n, lambda n: 0.02]
    prediction = predict_chain([0.85, 0.6], [5, 3], curves)
    sim = simulate_chain([0.85, 0.6], [5, 3], curves, 60_000, rng=7)
    measured = [t / sim.output_tokens for t in sim.level_times]
    assert measured == pytest.approx(prediction.level_time_per_token, rel=0.02)


def test_three_levels_long_simulation():
    """The k = 3 reference case against a long run (tight: 1.5e5 tokens)."""
    alpha, gamma, latency = [0.9, 0.6], [6, 3], [1.0, 0.3, 0.02]
    prediction = predict_chain(alpha, gamma, latency)
    sim = simulate_chain(alpha, gamma, latency, 150_000, rng=12345)
    assert sim.time_per_token_stderr < 0.005 * prediction.time_per_token
    assert _agree(sim.time_per_token, sim.time_per_token_stderr, prediction.time_per_token, z=4)
    for measured, stderr, expected in zip(
        sim.passes_per_token, sim.passes_per_token_stderr, prediction.passes_per_token, strict=True
    ):
        assert _agree(measured, stderr, expected, z=4)
    # The handed-up block length distribution: M2 hands up 6..9 tokens.
    np.testing.assert_allclose(
        prediction.target_block_length[6:], [0.45184, 0.271104, 0.17945856, 0.09759744], rtol=1e-12
    )
    assert sum(prediction.target_block_length[:6]) == 0


def test_reference_question_two_levels_by_hand():
    """Leviathan: alpha 0.8, gamma 4, T = (1, 0.1) -> 3.3616 tokens per target pass, 1.4 per round."""
    p = predict_chain([0.8], [4], [1.0, 0.1])
    assert p.mean_acceptance_length == pytest.approx(1 + 0.8 + 0.64 + 0.512 + 0.4096, rel=1e-14)
    assert p.time_per_token == pytest.approx(1.4 / 3.3616, rel=1e-14)
    assert p.speedup == pytest.approx(3.3616 / 1.4, rel=1e-14)
    assert p.tokens_per_pass == pytest.approx([3.3616, 3.3616 / 4], rel=1e-14)
    exact = predict_chain_exact([0.8], [4], [1, Fraction(1, 10)])
    assert exact.time_per_token == Fraction(875, 2101)


def test_autoregressive_chain():
    p = predict_chain([], [], [0.7])
    assert (p.time_per_token, p.speedup, p.mean_acceptance_length, p.tokens_per_pass) == (0.7, 1.0, 1.0, [1.0])
    sim = simulate_chain([], [], [0.7], 50, rng=0)
    assert sim.output_tokens == 50 and sim.passes == [50]


@DETERMINISTIC
@given(chains(curves=False), st.lists(st.integers(1, 99), min_size=3, max_size=3))
def test_exact_rational_path_equals_float_path(chain, hundredths):
    alpha, gamma, latency = chain
    alpha = [h / 100 for h in hundredths[: len(alpha)]]
    exact = predict_chain_exact(alpha, gamma, latency)
    floats = predict_chain(alpha, gamma, latency)
    assert isinstance(exact.time_per_token, Fraction)
    assert float(exact.time_per_token) == pytest.approx(floats.time_per_token, rel=1e-12)
    assert [float(x) for x in exact.tokens_per_pass] == pytest.approx(floats.tokens_per_pass, rel=1e-12)
    assert sum(exact.target_block_length) == (1 if len(latency) > 1 else 0)
    # accounting theorem in expectation, exactly: time per token = sum_i T_i / L_i
    exact_latency = [Fraction(str(t)) for t in latency]
    assert exact.time_per_token == time_per_token(exact.tokens_per_pass, exact_latency)
    assert sum(exact.level_time_per_token) == exact.time_per_token
    assert exact.level_time_per_token == [t / n for t, n in zip(exact_latency, exact.tokens_per_pass, strict=True)]


@settings(DETERMINISTIC, max_examples=50)
@given(chains(), st.integers(0, 2**32 - 1))
def test_accounting_identity_holds_exactly_on_simulated_counts(chain, seed):
    alpha, gamma, latency = chain
    sim = simulate_chain(alpha, gamma, latency, 300, rng=seed)
    n = sim.output_tokens
    tokens_per_pass = [Fraction(n, p) if p else None for p in sim.passes]
    used = [i for i, p in enumerate(sim.passes) if p]
    # Mean pass time of each level over the run (= T_i for constant latencies), exactly.
    mean_pass = [Fraction(sim.level_times[i]) / sim.passes[i] for i in used]
    lhs = sum(Fraction(sim.level_times[i]) for i in used)
    assert total_time(n, [tokens_per_pass[i] for i in used], mean_pass) == lhs
    assert float(lhs) == pytest.approx(sim.total_time, rel=1e-12, abs=1e-12)
    if not any(callable(t) for t in latency):
        exact_t = [Fraction(t) for t in latency]
        assert total_time(n, [tokens_per_pass[i] for i in used], [exact_t[i] for i in used]) == sum(
            p * t for p, t in zip(sim.passes, exact_t, strict=True)
        )
    assert int(sim.round_tokens.sum()) == n and sim.round_passes.sum(axis=0).tolist() == sim.passes


@pytest.mark.parametrize("gamma", [1, 2, 3, 5])
def test_two_level_general_model_is_leviathan_symbolically(gamma):
    a, t1, t2 = sp.symbols("a T_1 T_2", positive=True)
    p = predict_chain_symbolic([a], [gamma], [t1, t2])
    assert sp.simplify(p.mean_acceptance_length - (1 - a ** (gamma + 1)) / (1 - a)) == 0
    assert sp.simplify(p.time_per_token - (gamma * t2 + t1) * (1 - a) / (1 - a ** (gamma + 1))) == 0


def test_numeric_pmf_is_the_sympy_pmf():
    for gamma in range(1, 6):
        for rate in (Fraction(0), Fraction(1, 3), Fraction(9, 10)):
            numeric = capped_geometric_pmf(rate, gamma)
            symbolic = [
                pmf_expression().subs({a_sym: sp.Rational(rate.numerator, rate.denominator), g_sym: gamma, i_sym: n})
                for n in range(gamma + 1)
            ]
            assert [sp.Rational(x.numerator, x.denominator) for x in numeric] == symbolic
            assert sum(numeric) == 1


def test_block_length_support_grows_with_thresholds():
    p = predict_chain([0.9, 0.8, 0.7], [3, 4, 5], [1, 0.5, 0.2, 0.1])
    support = [d for d, q in enumerate(p.target_block_length) if q > 0]
    assert support[0] == 3 and support[-1] == 3 + 4 + 5
    assert sum(p.target_block_length) == pytest.approx(1.0, abs=1e-12)


def test_perfect_acceptance_is_deterministic():
    """alpha = 1 everywhere: the target takes exactly the block plus a bonus every round."""
    p = predict_chain([1.0, 1.0], [5, 2], [1.0, 0.1, 0.01])
    # M2 fills from blocks of 2 (+1 bonus each = 3 per verification) until >= 5: 6 tokens, 2 verifications.
    assert p.target_block_length[6] == 1.0 and p.mean_acceptance_length == 7.0
    assert p.passes_per_token == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    sim = simulate_chain([1.0, 1.0], [5, 2], [1.0, 0.1, 0.01], 70, rng=0)
    assert sim.passes == [10, 20, 40] and sim.output_tokens == 70


def test_exact_length_caps_drafting_like_the_executor():
    """``exact_length``: one generation of exactly n tokens, no level handing up past the end.
    alpha = 1, gammas (4, 2), n = 10. Round 1: M2 may hand up 9; it asks M3 for 2 (room 8),
    verifies (buffer 3), asks for 2 more (room 5), buffer 6 >= 4: the target emits 7. Round 2:
    room 2 for M2: M3 drafts 1 (room 1), M2 verifies (buffer 2 = room): the target emits 3."""
    sim = simulate_chain([1.0, 1.0], [4, 2], [1.0, 0.1, 0.01], 10, rng=0, exact_length=True)
    assert sim.round_tokens.tolist() == [7, 3]
    assert sim.passes == [2, 3, 5] and sim.output_tokens == 10
    # decode-only: the first pass of every level carries the prompt and is not timed
    decode = simulate_chain([1.0, 1.0], [4, 2], [1.0, 0.1, 0.01], 10, rng=0, exact_length=True, prefill_first_pass=True)
    assert decode.passes == sim.passes
    assert decode.total_time == pytest.approx(sim.total_time - (1.0 + 0.1 + 0.01))
    # without the cap the second round overshoots to 14 tokens
    assert simulate_chain([1.0, 1.0], [4, 2], [1.0, 0.1, 0.01], 10, rng=0).output_tokens == 14


@DETERMINISTIC
@given(chains(curves=False), st.integers(1, 40), st.integers(0, 2**16))
def test_exact_length_emits_exactly_n_tokens(chain, n, seed):
    alpha, gamma, latency = chain
    sim = simulate_chain(alpha, gamma, latency, n, rng=seed, exact_length=True)
    assert sim.output_tokens == n == int(sim.round_tokens.sum())
    free = simulate_chain(alpha, gamma, latency, n, rng=seed)
    assert free.output_tokens >= n


def test_trace_replay_with_per_position_arrays():
    """0/1 traces replay deterministically; a constant array behaves like the scalar."""
    trace = np.ones(200)
    trace[[3, 10]] = 0.0  # the drafts at output positions 3 and 10 are rejected by the target
    sim = simulate_chain([trace], [4], [1.0, 0.1], 20, rng=0)
    # round 1: positions 0..3 drafted, 3 rejected -> emits 4 (0,1,2 + correction at 3)
    # round 2: positions 4..7 all accepted -> 5 (bonus at 8); round 3: 9..12, 10 rejected -> 2;
    # round 4: 11..14 -> 5; round 5: 16..19 -> 5
    assert sim.round_tokens.tolist() == [4, 5, 2, 5, 5]
    constant = simulate_chain([np.full(30_000, 0.7), 0.5], [4, 3], [1.0, 0.2, 0.05], 20_000, rng=3)
    expected = predict_chain([0.7, 0.5], [4, 3], [1.0, 0.2, 0.05])
    assert _agree(constant.time_per_token, constant.time_per_token_stderr, expected.time_per_token)


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError):
        predict_chain([0.5], [2, 3], [1, 0.1])
    with pytest.raises(UserError):
        predict_chain([1.5], [2], [1, 0.1])
    with pytest.raises(UserError):
        predict_chain([0.5], [0], [1, 0.1])
    with pytest.raises(UserError):
        predict_chain([0.5], [2], [1, -0.1])
    with pytest.raises(UserError):
        simulate_chain([np.array([0.5, 2.0])], [2], [1, 0.1], 10)
    with pytest.raises(UserError):
        predict_chain([0.5], [2], [0.0, 0.1])  # speedup is relative to the target's pass time
    with pytest.raises(UserError):
        predict_chain([0.5], [2], [lambda n: 0.0, 0.1])
    assert predict_chain([0.5], [2], [1.0, 0.0]).time_per_token == pytest.approx(1 / 1.75)  # a free drafter


def test_three_levels_by_hand():
    """a = (1/2, 1/2), g = (2, 1), T = (1, 1/2, 1/10). M3 drafts 1 token; M2 gains 1 or 2 tokens per
    verification (prob 1/2 each) and hands up at >= 2: D = 2 w.p. 3/4, D = 3 w.p. 1/4, after 3/2
    verifications on average. Target: E[tokens] = 3/4 * 7/4 + 1/4 * 15/8 = 57/32; round time
    1 + 3/2 * 1/2 + 3/2 * 1/10 = 19/10; time per token = (19/10) / (57/32) = 16/15."""
    p = predict_chain_exact([Fraction(1, 2), Fraction(1, 2)], [2, 1], [1, Fraction(1, 2), Fraction(1, 10)])
    assert p.target_block_length == [0, 0, Fraction(3, 4), Fraction(1, 4)]
    assert p.mean_acceptance_length == Fraction(57, 32)
    assert p.round_time == Fraction(19, 10)
    assert p.time_per_token == Fraction(16, 15)
    assert p.passes_per_token == [
        Fraction(32, 57),
        Fraction(3, 2) / Fraction(57, 32),
        Fraction(3, 2) / Fraction(57, 32),
    ]
    assert p.level_acceptance_length == [Fraction(57, 32), Fraction(3, 2)]
    # X = A + 1 on D = 2 (3/4) or D = 3 (1/4): P(X=1) = 1/2, P(X=2) = 1/4, P(X=3) = 3/4*1/4 + 1/4*1/8, ...
    assert p.acceptance_length_distribution == [0, Fraction(1, 2), Fraction(1, 4), Fraction(7, 32), Fraction(1, 32)]
    assert sum(x * q for x, q in enumerate(p.acceptance_length_distribution)) == p.mean_acceptance_length
