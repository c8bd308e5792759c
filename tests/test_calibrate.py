"""The speed calibration (profiler/calibrate.py) on tiny random models: a member that sleeps a
known time per pass against curves that claim another, so the factor is the sleep's, not the CPU's."""

from __future__ import annotations

import pytest

from polyplan.documents.profile import LatencyCurve, PrefillCurve
from polyplan.profiler.calibrate import SpeedFactor, measure_speed, median_factors

from tiny_models import SlowCopy, tiny_llama


def test_factors_are_time_now_over_the_profiles():
    model = tiny_llama(vocab_size=64, seed=0, max_position_embeddings=256)
    target, drafter = SlowCopy(model, "t", 0.03), SlowCopy(model, "d", 0.02)
    # profiled: "t" 10 ms a pass and a prefill, "d" 40 ms a pass, so now "t" takes 3x and "d" half
    latency = {
        "t": LatencyCurve([1, 8], [16, 64], [[0.01, 0.01], [0.01, 0.01]]),
        "d": LatencyCurve([1, 8], [16, 64], [[0.04, 0.04], [0.04, 0.04]]),
    }
    prefill = {"t": PrefillCurve([32, 128], [0.01, 0.01])}
    factors = measure_speed([target, drafter], latency, prefill, "t", repeats=3)
    assert set(factors) == {"t", "d"}
    # the sleep sets a floor; the tiny model's own compute (about a millisecond) and a stall add
    assert 2.95 < factors["t"].decode < 6 and 2.95 < factors["t"].prefill < 6
    assert 0.49 < factors["d"].decode < 1.5
    assert factors["d"].prefill == factors["d"].decode  # no prefill curve: the decode factor
    assert target.processed == 0 and drafter.processed == 0  # caches left empty for the next request


def test_median_over_repeats():
    runs = [
        {"a": SpeedFactor(1.0, 2.0)},
        {"a": SpeedFactor(3.0, 1.0), "b": SpeedFactor(0.5, 0.5)},
        {"a": SpeedFactor(2.0, 3.0)},
    ]
    out = median_factors(runs)
    assert out["a"] == SpeedFactor(2.0, 2.0) and out["b"] == SpeedFactor(0.5, 0.5)
    assert out["a"].as_dict() == {"decode": 2.0, "prefill": 2.0}
    assert median_factors([]) == {}
    with pytest.raises(TypeError):
        SpeedFactor(1.0)  # both factors, always
