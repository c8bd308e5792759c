"""Whole-request theory (proofs/prefill.md) against the staged simulator with prefill added."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from polyplan.errors import UserError
from polyplan.theory import break_even_horizon, expected_horizon, predict_chain, predict_request, simulate_request
from polyplan.theory.prefill import check_break_even, prefill_seconds, window_context
from polyplan.theory.theorems import find_theorem

DETERMINISTIC = settings(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def requests(draw):
    k = draw(st.integers(2, 3))
    alpha = [draw(st.sampled_from([0.5, 0.7, 0.85, 0.95])) for _ in range(k - 1)]
    gamma = [draw(st.integers(1, 6)) for _ in range(k - 1)]
    latency = [1.0] + [draw(st.sampled_from([0.3, 0.1, 0.03])) for _ in range(k - 1)]
    prefill = [draw(st.sampled_from([0.0, 5.0, 20.0])) for _ in range(k)]
    horizon = draw(st.sampled_from([128, 256]))
    return alpha, gamma, latency, prefill, horizon


def _simulated_mean(alpha, gamma, latency, prefill, horizon, seed, runs):
    rng = np.random.default_rng(seed)
    times = [simulate_request(alpha, gamma, latency, prefill, horizon, rng) for _ in range(runs)]
    return float(np.mean(times)), float(np.std(times, ddof=1) / math.sqrt(runs))


@settings(DETERMINISTIC, max_examples=25)
@given(requests(), st.integers(0, 2**32 - 1))
def test_request_time_matches_the_simulated_staged_loop(request, seed):
    """Theorem 1: prefills plus E[H] t_S, up to one round's time (the renewal remainder)."""
    alpha, gamma, latency, prefill, horizon = request
    chain = predict_chain(alpha, gamma, latency)
    predicted = predict_request(prefill[0], prefill[1:], horizon, chain.time_per_token, latency[0])
    mean, stderr = _simulated_mean(alpha, gamma, latency, prefill, horizon, seed, 60)
    assert abs(mean - predicted.request_s) <= float(chain.round_time) + 5 * stderr


@settings(DETERMINISTIC, max_examples=20)
@given(requests(), st.integers(0, 2**32 - 1))
def test_break_even_decides_which_request_is_faster(request, seed):
    """Theorem 2: the chain beats the target alone exactly for horizons beyond H*; checked at
    horizons well on either side, where the renewal remainder cannot flip the verdict."""
    alpha, gamma, latency, prefill, _ = request
    chain = predict_chain(alpha, gamma, latency)
    extra = sum(prefill[1:])
    h_star = break_even_horizon(extra, latency[0], chain.time_per_token)
    if not math.isfinite(h_star) or h_star < 4:
        return
    for horizon, chain_wins in ((max(1, int(h_star / 3)), False), (int(h_star * 3) + 8, True)):
        if horizon > 400:
            continue
        chain_mean, se1 = _simulated_mean(alpha, gamma, latency, prefill, horizon, seed, 40)
        alone_mean = prefill[0] + horizon * latency[0]  # one pass per token, deterministic
        assert (chain_mean < alone_mean) == chain_wins, (horizon, h_star, chain_mean, alone_mean, se1)


def test_break_even_horizon_edges():
    assert break_even_horizon(10.0, 1.0, 0.5) == pytest.approx(20.0)
    assert break_even_horizon(10.0, 1.0, 1.0) == math.inf  # no saving per token: never
    assert break_even_horizon(0.0, 1.0, 0.5) == 0.0  # free drafter: always
    assert break_even_horizon(0.0, 1.0, 2.0) == math.inf


def test_symbolic_statement_holds():
    assert check_break_even(1) and check_break_even(3)
    assert find_theorem("prefill").check()


def test_expected_horizon_is_the_sum_of_survival_probabilities():
    # no answer ends early: the horizon is max_new_tokens (no evidence of ends)
    assert expected_horizon(50, [64, 64, 64], 64) == pytest.approx(50)
    assert expected_horizon(200, [64, 64], 64) == pytest.approx(200)
    # below the cap: the empirical mean of min(H, L)
    lengths = [5, 20, 64, 64]
    assert expected_horizon(64, lengths, 64) == pytest.approx(np.mean([min(64, n) for n in lengths]))
    assert expected_horizon(10, lengths, 64) == pytest.approx(np.mean([min(10, n) for n in lengths]))
    # beyond the cap: geometric tail with the observed hazard (2 ends over 153 tokens)
    hazard = 2 / 153
    tail = sum(0.5 * (1 - hazard) ** (h - 63) for h in range(64, 100))
    assert expected_horizon(100, lengths, 64) == pytest.approx(np.mean([min(64, n) for n in lengths]) + tail)
    assert expected_horizon(64, [], None) == 64
    with pytest.raises(UserError):
        expected_horizon(64, [70], 64)


def test_windows_bound_what_a_drafter_prefills():
    assert window_context(1000, None) == 1000
    assert window_context(1000, 256, 4) == 260
    assert window_context(100, 256, 4) == 100
    assert prefill_seconds(0.002, 500) == pytest.approx(1.0)
    assert prefill_seconds(lambda c: 0.1 + 0.001 * c, 100) == pytest.approx(0.2)
    assert prefill_seconds(0.002, 0) == 0.0


def test_predict_request_fields():
    r = predict_request(0.5, [0.3, 0.0], 64, 0.02, 0.07, prompt_tokens=300)
    assert r.request_s == pytest.approx(0.5 + 0.3 + 64 * 0.02)
    assert r.autoregressive_request_s == pytest.approx(0.5 + 64 * 0.07)
    assert r.end_to_end_speedup == pytest.approx(r.autoregressive_request_s / r.request_s)
    assert r.break_even_tokens == pytest.approx(0.3 / 0.05)
    assert r.to_dict()["prompt_tokens"] == 300


def test_a_prefill_curve_below_its_shortest_length_keeps_that_lengths_cost_per_token():
    """llama.cpp's Q8_0 SmolLM2 as profiled: 0.289 s for 128 tokens, 1.52 s for 512 (its cost per
    token rises with length). The 128->512 slope alone would give 50 tokens 0.04 s; they took
    0.105-0.142 s. A flatter curve (fixed costs) keeps its own extrapolation."""
    from polyplan.documents.profile import PrefillCurve

    q8 = PrefillCurve([128, 512], [0.289, 1.52])
    assert q8(50) == pytest.approx(0.289 * 50 / 128)
    assert q8(128) == pytest.approx(0.289) and q8(320) == pytest.approx((0.289 + 1.52) / 2)
    flat = PrefillCurve([128, 512], [0.366, 1.306])
    assert flat(64) == pytest.approx(0.366 - (1.306 - 0.366) * 64 / 384)
    assert flat(0) == 0.0 and q8(1) > 0


def test_a_prefill_curve_past_its_longest_length_keeps_its_cost_per_token_rising():
    """llama.cpp's Q8_0 SmolLM2 on the family-26 AMD: 0.499 s for 512 tokens, 2.68 s for 2048; a
    2803-token prompt then took 4.82 s (bench). The last segment's line gives 3.75 s; the cost per
    token rising on as between 512 and 2048 gives 4.13 s. A curve whose cost per token falls keeps
    the line (never below it)."""
    from polyplan.documents.profile import PrefillCurve

    q8 = PrefillCurve([128, 512, 2048], [0.126, 0.499, 2.68])
    line = 2.68 + (2.68 - 0.499) / 1536 * (2803 - 2048)
    r0, r1 = 0.499 / 512, 2.68 / 2048
    assert q8(2803) == pytest.approx(2803 * (r1 + (r1 - r0) / 1536 * (2803 - 2048)))
    assert line < q8(2803) < 4.82 and q8(2048) == pytest.approx(2.68)
    falling = PrefillCurve([128, 512], [0.366, 1.306])  # fixed costs: the per-token cost falls
    assert falling(1024) == pytest.approx(1.306 + (1.306 - 0.366) / 384 * 512)
