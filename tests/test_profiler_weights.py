"""Profile the real embedded SmolLM2 pool with tiny settings."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.weights


def test_profile_real_smollm2_pool(smollm2_pool, tmp_path):
    from polyplan.documents.profile import Profile
    from polyplan.profiler import ProfileSettings, load_traces, run_profile
    from polyplan.profiler.pool_inputs import inputs_from_pool

    members = ["smollm2-135m", "smollm2-135m:bf16", "prompt-lookup"]
    inputs = inputs_from_pool(smollm2_pool, members)
    settings = ProfileSettings(
        prompts=2,
        max_new_tokens=16,
        new_tokens=[1, 4],
        contexts=[32],
        repeats=1,
        warmup=0,
        block=4,
        screen=False,  # one repeat: whether bf16 is 10% slower than float32 is this CPU's and the moment's
    )
    out = tmp_path / "smollm2.json"
    outcome = run_profile(inputs, out, settings)
    prof = Profile.load(out)
    assert outcome.complete and prof.complete
    assert prof.target == "smollm2-135m" and [c.name for c in prof.candidates] == members
    assert prof.candidate("smollm2-135m").params > 100_000_000
    assert prof.candidate("smollm2-135m:bf16").dtype == "bfloat16"
    for name in members:
        assert all(v > 0 for v in prof.latency[name].median_s[0])
    # a bf16 copy of the target agrees with it almost everywhere; prompt lookup far less often
    bf16 = prof.pair("smollm2-135m", "smollm2-135m:bf16")
    assert bf16.greedy > 0.8 and bf16.sampling > 0.8
    lookup = prof.pair("smollm2-135m", "prompt-lookup")
    assert lookup.greedy < bf16.greedy
    # references are the target's real text: chat-formatted prompts give a decodable answer
    traces = load_traces(out)
    tokens = traces["tokens"][traces["segments"][0] : traces["segments"][1]]
    text = smollm2_pool.tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
    assert len(text.strip()) > 10
    assert np.isclose(traces["greedy/smollm2-135m/smollm2-135m:bf16"].mean(), bf16.greedy)
