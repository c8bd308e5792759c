"""Losslessness with adaptation ON: the chain's setting (members, gammas) changes between target
rounds, and the output is still the target's (proofs/adaptive-control.md, section 4).

* greedy: token identity with the target's own ``generate`` on tiny models, with a scripted
  controller that changes the setting every round (history-dependent too), and with the adaptive
  controller on a chain whose profile prior is wrong (so it really switches);
* sampling: the exact-distribution chi-square test of tests/test_executor_sampling.py on chains
  whose setting changes between rounds, including a choice that depends on past acceptance."""

from __future__ import annotations

import pytest

from polyplan import Chain
from polyplan.documents import AcceptancePair, Candidate, LatencyCurve, Profile
from polyplan.executor.adaptive import AdaptiveController
from polyplan.executor.control import RoundSetting
from polyplan.executor.sampling import SamplingParams
from polyplan.models.model_drafter import ModelDrafter
from polyplan.planner.policy_build import build_policy

from test_executor import CLOSE, PROMPTS, RANDOM, ROUGH, TARGET, VOCAB, hf_greedy
from test_executor_sampling import (
    CLOSE as T_CLOSE,
    FAR as T_FAR,
    OTHER as T_OTHER,
    PROMPT as T_PROMPT,
    TARGET as T_TARGET,
    L,
    N,
    chi_square_p,
    exact_distribution,
    sample_counts,
)
from tiny_models import CountingPointMass

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedController:
    """Cycles through ``settings``; with ``by_acceptance`` the step depends on whether the last
    target verification accepted its whole block (a choice that depends on the past)."""

    def __init__(self, settings: list[tuple[tuple[int, ...], tuple[int, ...]]], by_acceptance: bool = False) -> None:
        self.settings = [RoundSetting(m, g, f"scripted {i}") for i, (m, g) in enumerate(settings)]
        self.by_acceptance = by_acceptance

    def start(self, chain_size: int, prompt: list[int], max_new_tokens: int = 0) -> RoundSetting:
        self.i, self.all_accepted = 0, False
        return self.settings[0]

    def observe(self, verifier: int, drafter: int, drafted: int, accepted: int) -> None:
        if verifier == 0:
            self.all_accepted = accepted == drafted

    def next_round(self, tokens: list[int]) -> RoundSetting:
        self.i += 2 if self.by_acceptance and self.all_accepted else 1
        return self.settings[self.i % len(self.settings)]


DEPTH4 = [
    ((0,), ()),
    ((0, 1, 3), (4, 2)),
    ((0, 2), (3,)),
    ((0, 1, 2, 3), (5, 2, 3)),
    ((0, 3), (4,)),
    ((0, 1, 2), (2, 2)),
    ((0, 1), (6,)),
]


@pytest.mark.parametrize("by_acceptance", [False, True])
def test_greedy_identity_with_a_setting_changing_every_round(by_acceptance):
    members = [TARGET, CLOSE, ROUGH, CountingPointMass(VOCAB, [5, 6, 7])]
    chain = Chain(members, [5, 2, 3], controller=ScriptedController(DEPTH4, by_acceptance))
    for prompt in PROMPTS:
        result = chain.generate(prompt, max_new_tokens=48, eos_token_id=[])
        assert result.tokens == hf_greedy(prompt, 48), prompt
        assert len(result.stats.setting_changes) >= 5  # it really switched, mid-generation


def tiny_policy(prior: float):
    """A policy for TARGET <- CLOSE <- RANDOM <- cycle from a synthetic profile claiming ``prior``
    acceptance everywhere, with the real models' relative costs roughly (drafters cheap)."""
    names = ["t", "close", "random", "cycle"]
    cost = {"t": 0.010, "close": 0.004, "random": 0.001, "cycle": 0.00001}
    latency = {
        n: LatencyCurve([1, 2, 4, 8, 16, 32], [64], [[cost[n] * (1 + 0.05 * k) for k in range(6)]]) for n in names
    }
    pairs = [AcceptancePair(v, d, prior, prior, 100) for i, v in enumerate(names[:-1]) for d in names[i + 1 :]]
    profile = Profile(
        pool="tiny",
        target="t",
        candidates=[Candidate(n, point_mass=n == "cycle") for n in names],
        latency=latency,
        pairs=pairs,
    )
    return build_policy(profile, names, [4, 3, 2], mode="greedy", context=64)


def tiny_adaptive_chain(prior: float) -> Chain:
    cycle = CountingPointMass(VOCAB, [5, 6, 7], name="cycle")
    members = [ModelDrafter(TARGET, "t"), ModelDrafter(CLOSE, "close"), ModelDrafter(RANDOM, "random"), cycle]
    controller = AdaptiveController(tiny_policy(prior), {3: cycle.propose})
    return Chain(members, [4, 3, 2], controller=controller)


def test_greedy_identity_with_the_adaptive_controller_when_the_prior_is_wrong():
    chain = tiny_adaptive_chain(0.9)  # the random drafter and the cycle are far worse than claimed
    changed = 0
    for prompt in PROMPTS:
        result = chain.generate(prompt, max_new_tokens=64, eos_token_id=[])
        assert result.tokens == hf_greedy(prompt, 64), prompt
        # the first entry is the setting the generation starts with; later ones are changes
        first, *later = result.stats.setting_changes
        assert first["at_token"] == 0
        assert all(c["at_token"] > 0 for c in later)
        changed += len(later)
        for change in result.stats.setting_changes:
            assert change["reason"] and change["members"][0] == "t"
    assert changed >= 1  # the controller did change the chain mid-generation
    assert chain.controller.alpha[(0, 3)] < 0.5  # and learned that the cycle is bad


def test_greedy_identity_with_the_time_guard_switching(monkeypatch):
    """The guard acting on measured round times changes settings between rounds only: on a clock
    that ticks one second per reading (each forward reads it twice), every round looks ~100x slower
    than the policy predicts the target alone, so the guard falls back to measure the target alone,
    and then holds it or speculates again on measured times; the output stays the target's."""
    import types

    from polyplan.executor import chain as chain_module, clock as clock_module

    ticks = iter(range(10**9))
    fake_time = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    monkeypatch.setattr(chain_module, "time", fake_time)
    monkeypatch.setattr(clock_module, "time", fake_time)  # the forward clocks read the same clock
    chain = tiny_adaptive_chain(0.9)
    guarded = 0
    for prompt in PROMPTS:
        result = chain.generate(prompt, max_new_tokens=64, eos_token_id=[])
        assert result.tokens == hf_greedy(prompt, 64), prompt
        reasons = [c["reason"] for c in result.stats.setting_changes]
        guarded += sum("fell back" in r for r in reasons)
    assert guarded >= len(PROMPTS)


SAMPLING_SETTINGS = [
    ((0, 1, 2), (3, 2)),
    ((0,), ()),
    ((0, 2), (2,)),
    ((0, 1, 2, 3), (2, 2, 1)),
    ((0, 1), (4,)),
    ((0, 3), (3,)),
]


@pytest.mark.parametrize(
    "params,by_acceptance",
    [
        pytest.param(SamplingParams(1.0), False, id="t1.0-cycle"),
        pytest.param(SamplingParams(0.8, top_k=3), True, id="t0.8-topk3-by-acceptance"),
    ],
)
def test_sampling_is_the_target_distribution_with_settings_changing_between_rounds(params, by_acceptance):
    members = [T_TARGET.drafter("target"), T_CLOSE.drafter("close"), T_FAR.drafter("far"), T_OTHER.drafter("other")]
    chain = Chain(members, [3, 2, 1], controller=ScriptedController(SAMPLING_SETTINGS, by_acceptance))
    dist = exact_distribution(T_TARGET.logits_after, params, T_PROMPT, L)
    counts = sample_counts(chain, params, N, L)
    p_value = chi_square_p(dist, counts, N)
    assert p_value > 1e-3, f"adaptive chain output differs from the target's distribution (p={p_value:.2e})"
