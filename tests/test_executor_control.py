"""Round control: a controller may change members and gammas between target rounds without
changing the output (greedy token identity, sampled distribution), and bad settings are refused."""

from __future__ import annotations

import itertools

import pytest

from polyplan import Chain
from polyplan.executor.control import RoundSetting, StaticController
from polyplan.executor.sampling import SamplingParams

from test_executor import CLOSE, PROMPTS, RANDOM, ROUGH, TARGET, VOCAB, hf_greedy
from test_executor_sampling import (
    CLOSE as TABLE_CLOSE,
    FAR,
    PROMPT,
    TARGET as TABLE_TARGET,
    L,
    N,
    chi_square_p,
    exact_distribution,
    sample_counts,
)
from tiny_models import CountingPointMass

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Scripted:
    """Cycles through settings, one per round; records what it observed."""

    def __init__(self, settings: list[RoundSetting]) -> None:
        self.settings = settings
        self.observed: list[tuple[int, int, int, int]] = []

    def start(self, chain_size, prompt, max_new_tokens=0):
        self.cycle = itertools.cycle(self.settings)
        self.observed.clear()
        return next(self.cycle)

    def observe(self, verifier, drafter, drafted, accepted):
        assert 0 <= accepted <= drafted
        self.observed.append((verifier, drafter, drafted, accepted))

    def next_round(self, tokens):
        return next(self.cycle)


SWITCHING = [
    RoundSetting((0, 1, 2, 3), (5, 2, 1), "all"),
    RoundSetting((0,), (), "alone"),
    RoundSetting((0, 3), (4,), "bottom only"),
    RoundSetting((0, 2), (3,), "middle only"),
    RoundSetting((0, 1, 3), (2, 6), "skip a level"),
    RoundSetting((0, 2), (3,), "middle only"),  # 2 back after a round without it: cache catch-up
]


def test_switching_settings_keeps_greedy_output_identical():
    members = [TARGET, CLOSE, ROUGH, RANDOM]
    control = Scripted(SWITCHING)
    chain = Chain(members, [5, 2, 1], controller=control)
    for prompt in PROMPTS:
        result = chain.generate(prompt, max_new_tokens=40, eos_token_id=[])
        assert result.tokens == hf_greedy(prompt, 40), prompt
        changes = result.stats.setting_changes
        assert [c["reason"] for c in changes[:6]] == [s.reason for s in SWITCHING]
        assert changes[1]["members"] == chain.names[:1] and changes[1]["gammas"] == []
        # every observation is a pair that was adjacent in some setting
        adjacent = {(s.members[i], s.members[i + 1]) for s in SWITCHING for i in range(len(s.members) - 1)}
        assert {(v, d) for v, d, _, _ in control.observed} <= adjacent
        assert any(d == 3 and v == 0 for v, d, _, _ in control.observed)


def test_point_mass_bottom_switched_in_and_out():
    members = [TARGET, CLOSE, CountingPointMass(VOCAB, [5, 6, 7])]
    settings = [RoundSetting((0, 1, 2), (4, 3)), RoundSetting((0, 2), (5,)), RoundSetting((0,), ())]
    chain = Chain(members, [4, 3], controller=Scripted(settings))
    for prompt in PROMPTS:
        assert chain.generate(prompt, max_new_tokens=33, eos_token_id=[]).tokens == hf_greedy(prompt, 33)


def test_switching_settings_keeps_the_sampled_distribution():
    params = SamplingParams(1.0, top_k=4)
    dist = exact_distribution(TABLE_TARGET.logits_after, params, PROMPT, L)
    settings = [RoundSetting((0, 1, 2), (2, 1)), RoundSetting((0, 2), (2,)), RoundSetting((0,), ())]
    members = [TABLE_TARGET.drafter("target"), TABLE_CLOSE.drafter("close"), FAR.drafter("far")]
    chain = Chain(members, [2, 1], controller=Scripted(settings))
    counts = sample_counts(chain, params, N, L)
    assert chi_square_p(dist, counts, N) > 1e-3


def test_a_controller_bug_is_refused():
    chain = Chain([TARGET, CLOSE, CountingPointMass(VOCAB, [1])], [2, 2])
    bad = [
        RoundSetting((1, 2), (2,)),  # no target
        RoundSetting((0, 2, 1), (2, 2)),  # out of order
        RoundSetting((0, 1), ()),  # gamma missing
        RoundSetting((0, 1), (0,)),  # gamma < 1
        RoundSetting((0, 2, 3), (1, 1)),  # no member 3
    ]
    for setting in bad:
        with pytest.raises(ValueError):
            chain.generate([1, 2], max_new_tokens=4, controller=Scripted([setting]))


def test_static_controller_is_the_default():
    chain = Chain([TARGET, CLOSE], [3])
    result = chain.generate([4, 5], max_new_tokens=12, eos_token_id=[])
    assert result.stats.setting_changes == [{"at_token": 0, "members": chain.names, "gammas": [3], "reason": "static"}]
    explicit = chain.generate([4, 5], max_new_tokens=12, eos_token_id=[], controller=StaticController([3]))
    assert explicit.tokens == result.tokens
