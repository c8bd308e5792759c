"""AdaptiveController on synthetic observe()/next_round() streams (no model runs).

The policy is the committed SmolLM2 plan's (target fp32 <- bf16 <- n-gram, gammas 11, 5). A round
is emulated from its setting: the target verifies a block of gamma_2 tokens from the level below
with i.i.d. acceptance; the n-gram is shadow-checked through a scripted proposer."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from polyplan.documents import Profile
from polyplan.documents.traces import Traces
from polyplan.executor.adaptive import AdaptiveController
from polyplan.executor.control import RoundTiming
from polyplan.planner.policy_build import build_policy
from polyplan.theory.control import relax_tokens

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "smollm2-cpu.json"
NAMES = ["smollm2-135m", "smollm2-135m:bf16", "ngram"]
PROMPT = list(range(1000, 1040))


@pytest.fixture(scope="module")
def policy():
    profile = Profile.load(PROFILE)
    traces = Traces.of_profile(profile, PROFILE)
    return build_policy(profile, NAMES, [11, 5], mode="greedy", context=113.875, traces=traces)


class World:
    """Committed tokens are 0, 1, 2, ...; the n-gram's guess at position t is right with
    probability ``a_pm`` (decided once per position); the target accepts bf16 drafts at ``a_model``."""

    def __init__(self, a_model: float, a_pm: float, seed: int = 0) -> None:
        self.a_model, self.a_pm = a_model, a_pm
        self.rng = random.Random(seed)
        self.right: dict[int, bool] = {}
        self.tokens = list(PROMPT)
        self.proposals = 0

    def propose(self, context: list[int], n: int) -> list[int]:
        self.proposals += 1
        t = len(context)
        if t not in self.right:
            self.right[t] = self.rng.random() < self.a_pm
        return [self.token(t) if self.right[t] else -1][:n]

    def token(self, t: int) -> int:
        return PROMPT[t] if t < len(PROMPT) else t

    def round(self, controller: AdaptiveController, setting) -> None:
        members, gammas = setting.members, setting.gammas
        if len(members) == 1:
            new = 1
        else:
            top_drafter, g = members[1], gammas[0]
            rate = self.a_model if top_drafter == 1 else self.a_pm
            accepted = 0
            while accepted < g and self.rng.random() < rate:
                accepted += 1
            controller.observe(0, top_drafter, g, accepted)
            if len(members) == 3:
                controller.observe(1, 2, gammas[1], 0 if self.rng.random() > self.a_pm else gammas[1])
            new = accepted + 1
        at = len(self.tokens)  # (not read inside the generator: extend grows the list as it goes)
        self.tokens.extend(self.token(at + i) for i in range(new))

    def run(self, controller: AdaptiveController, rounds: int) -> list:
        setting = controller.start(3, list(PROMPT))
        history = [setting]
        for _ in range(rounds):
            self.round(controller, setting)
            setting = controller.next_round(self.tokens)
            history.append(setting)
        return history


def test_starts_on_the_plan_at_the_profiles_acceptance(policy):
    setting = AdaptiveController(policy).start(3, PROMPT)
    assert (setting.members, setting.gammas) == ((0, 1, 2), (11, 5))
    assert "plan" in setting.reason


def test_stays_on_the_plan_where_the_profile_fits(policy):
    world = World(0.982, 0.47, seed=3)
    history = world.run(AdaptiveController(policy, {2: world.propose}), 40)
    assert sum(s.members == (0, 1, 2) for s in history) >= 0.9 * len(history)


def test_a_useless_ngram_is_dropped_or_cut_to_gamma_one(policy):
    world = World(0.982, 0.02, seed=4)
    controller = AdaptiveController(policy, {2: world.propose})
    history = world.run(controller, 30)
    late = history[10:]
    assert all(s.members == (0, 1) or (s.members == (0, 1, 2) and s.gammas[1] == 1) for s in late)
    assert controller.alpha[(0, 2)] < 0.15 and controller.alpha[(1, 2)] < 0.15


def test_autoregressive_when_nothing_is_accepted(policy):
    world = World(0.0, 0.0, seed=5)
    controller = AdaptiveController(policy, {2: world.propose})
    history = world.run(controller, 200)
    assert history[-1].members == (0,)
    assert "autoregressive" in history[-1].reason


def test_a_bypassed_model_drafter_is_re_probed_after_the_predicted_interval(policy):
    """bf16 useless: it is driven out; with no evidence while bypassed its estimate relaxes to the
    prior and the level is re-tried after about relax_tokens (then driven out again)."""
    world = World(0.0, 0.0, seed=6)
    controller = AdaptiveController(policy, {2: world.propose})
    setting = controller.start(3, list(PROMPT))
    pair = (0, 1)
    out_at = back_at = None
    for _ in range(400):
        world.round(controller, setting)
        setting = controller.next_round(world.tokens)
        if out_at is None and setting.members == (0,):
            out_at, trials, estimate = len(world.tokens), controller.trials[pair], controller.alpha[pair]
        elif out_at is not None and 1 in setting.members:
            back_at = len(world.tokens)
            break
    assert out_at is not None and back_at is not None, "a bypassed drafter must be re-tried"
    threshold = next(
        a / 1000
        for a in range(500, 1000)
        if 1
        in policy.decide(
            {(0, 1): a / 1000, (0, 2): controller.alpha[(0, 2)], (1, 2): controller.alpha[(1, 2)]}, current=(0,)
        ).members
    )
    predicted = relax_tokens(
        policy.window[pair], trials, estimate, threshold, policy.priors[pair], policy.prior_strength[pair]
    )
    assert 10 < predicted < 1000
    assert 0.7 * predicted - 2 <= back_at - out_at <= 1.3 * predicted + 2


def test_estimates_converge_to_the_true_rate(policy):
    """With a weak prior and a long memory the posterior mean tracks the evidence without bias
    (the capped-geometric evidence: accepted successes, one failure per rejection). Every round
    runs the plan's setting whatever the controller would choose, so both pairs gather evidence."""
    import copy

    weak = copy.deepcopy(policy)
    weak.prior_strength = {p: 1.0 for p in weak.priors}
    weak.window = {p: 5000.0 for p in weak.priors}
    world = World(0.6, 0.3, seed=7)
    controller = AdaptiveController(weak, {2: world.propose})
    plan = controller.start(3, list(PROMPT))
    assert (plan.members, plan.gammas) == ((0, 1, 2), (11, 5))
    for _ in range(600):
        world.round(controller, plan)
        controller.next_round(world.tokens)
    assert controller.trials[(0, 1)] > 1000 and controller.trials[(0, 2)] > 1000
    assert controller.alpha[(0, 2)] == pytest.approx(0.3, abs=0.04)
    assert controller.alpha[(0, 1)] == pytest.approx(0.6, abs=0.05)


def test_shadowed_pair_ignores_observed_verifications(policy):
    """The n-gram under the target is measured by the shadow checks only: a verification reported
    through observe() moves the bf16 level's estimate by its capped-geometric evidence (3 accepted
    of 10: 3 successes in 4 trials) and leaves the n-gram's where it was."""
    world = World(0.98, 0.5, seed=8)
    controller = AdaptiveController(policy, {2: world.propose})
    controller.start(3, PROMPT)
    before = controller.estimates()
    controller.observe(0, 2, 10, 10)  # counted by the shadow checks instead
    controller.observe(0, 1, 10, 3)
    controller.next_round(list(PROMPT))  # no token committed: no decay, no shadow check
    after = controller.estimates()
    assert after[(0, 2)] == before[(0, 2)]
    n0 = policy.prior_strength[(0, 1)]
    assert after[(0, 1)] == pytest.approx((n0 * before[(0, 1)] + 3) / (n0 + 4), rel=1e-12)
    assert controller.trials[(0, 1)] == 4 and controller.trials[(0, 2)] == 0


def test_the_shadow_checks_every_committed_token_once(policy):
    world = World(0.98, 0.5, seed=9)
    controller = AdaptiveController(policy, {2: world.propose})
    world.run(controller, 20)
    assert world.proposals == len(world.tokens) - len(PROMPT)


def test_a_new_generation_starts_from_the_prior(policy):
    world = World(0.0, 0.0, seed=10)
    controller = AdaptiveController(policy, {2: world.propose})
    world.run(controller, 100)
    again = controller.start(3, PROMPT)
    assert (again.members, again.gammas) == ((0, 1, 2), (11, 5))
    assert controller.trials[(0, 2)] == 0


def test_wrong_chain_size_is_refused(policy):
    with pytest.raises(ValueError, match="3 members"):
        AdaptiveController(policy).start(2, PROMPT)


def test_decision_cost_counts_start_and_every_round_only(policy, monkeypatch):
    """``seconds`` (the decision cost the run statistics report) is the time inside start() and
    next_round(), each call counted once, and nothing in observe(): on a clock that ticks one
    second per reading, 201 calls cost 201 s. (How small it is on a real clock is measured by
    benchmarks/adaptive_overhead.py, not here.)"""
    import types

    from polyplan.executor import adaptive

    ticks = iter(range(10**6))
    monkeypatch.setattr(adaptive, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    world = World(0.982, 0.47, seed=11)
    controller = AdaptiveController(policy, {2: world.propose})
    world.run(controller, 200)
    assert controller.rounds == 200
    assert controller.seconds == 201.0


def test_a_windowed_drafters_prior_weighs_like_a_handful_of_verifications(policy):
    """What a window keeps of a pair's acceptance is measured on a few prompts: with a window the
    pair's prior is weak, so this request's own evidence moves the estimate within a few rounds
    (a summary's source outside the window drafted at 0.3 where the profile's factor said 0.7)."""
    from polyplan.executor.adaptive import WINDOWED_PRIOR_STRENGTH

    pair = (0, 1)
    plain, windowed = AdaptiveController(policy), AdaptiveController(policy)
    for c in (plain, windowed):
        c.start(3, list(PROMPT))
    windowed.prior_factor = {pair: 0.7}
    assert policy.prior_strength[pair] > 4 * WINDOWED_PRIOR_STRENGTH  # the unwindowed prior is strong
    for c in (plain, windowed):
        c.successes[pair], c.trials[pair] = 10.0, 30.0  # acceptance 1/3 over 30 trials
    prior = policy.priors[pair] * 0.7
    want = (WINDOWED_PRIOR_STRENGTH * prior + 10.0) / (WINDOWED_PRIOR_STRENGTH + 30.0)
    assert windowed.estimates()[pair] == pytest.approx(want)
    assert windowed.estimates()[pair] < 0.5 < plain.estimates()[pair]


# ---- the time guard (proofs/adaptive-control.md, section 5): round times fed directly ----------


def timed_run(controller, world, rounds, alone, spec, first=None, timing=None, cost=None):
    """``world.run`` with each round's time reported through observe_round: a round of the target
    alone takes ``alone`` s per token, a speculative one ``spec(done, committed)`` s (``done``:
    tokens committed before it), or ``cost(setting)`` s where given; the request's first round (its
    prefill) takes ``first`` if given. ``timing(i, seconds, committed)`` makes the RoundTiming
    (default: the time alone, as on CUDA). Returns the settings and, per round, (speculative,
    committed, seconds)."""
    setting = controller.start(3, list(PROMPT))
    history, rounds_run = [setting], []
    for i in range(rounds):
        before = len(world.tokens)
        world.round(controller, setting)
        committed = len(world.tokens) - before
        speculative = len(setting.members) > 1
        if not speculative:
            seconds = alone * committed
        else:
            seconds = cost(setting) if cost else spec(before - len(PROMPT), committed)
        seconds = first if i == 0 and first is not None else seconds
        controller.observe_round(timing(i, seconds, committed) if timing else RoundTiming(seconds, committed))
        rounds_run.append((speculative, committed, seconds))
        setting = controller.next_round(world.tokens)
        history.append(setting)
    return history, rounds_run


def per_token(rate):
    return lambda done, committed: rate * committed


def speculated_share(rounds_run) -> float:
    return sum(r[1] for r in rounds_run if r[0]) / sum(r[1] for r in rounds_run)


def test_guard_falls_back_when_speculation_is_measured_slower_than_the_target_alone(policy):
    """The Xeon case: acceptance as profiled, but every speculative token costs 1.5x the target
    alone's. After one warm round past the prefill round (even its best case, every draft accepted,
    is not clearly faster than the prediction) the guard stops speculating to measure the target
    alone; measured faster, it holds it; probes then fail on measurements (backoff doubles)."""
    world = World(0.982, 0.47, seed=21)
    controller = AdaptiveController(policy, {2: world.propose})
    controller.start(3, list(PROMPT))
    alone = controller.predicted_alone()
    history, rounds_run = timed_run(controller, world, 300, alone, per_token(1.5 * alone))
    falls = [i for i in range(1, len(history)) if history[i].members == (0,) and len(history[i - 1].members) > 1]
    assert falls[0] == 2  # the prefill round is not evidence (not timed apart here)
    assert "fell back to measure the target alone" in history[falls[0]].reason
    # the probes are judged on measurements
    assert len(falls) > 1 and all("measured: fell back" in history[i].reason for i in falls[1:])
    # the first stretch and each probe: a prefill/catch-up round and one or two measured ones
    assert speculated_share(rounds_run) < 0.3
    assert controller.guard.backoff > 32


def test_guard_keeps_speculating_when_it_is_measured_faster(policy):
    """Speculation at half the target alone's predicted time, each round costing the same whatever
    it commits (so the per-token rate is as noisy as acceptance), after a prefill round 100x
    longer: it never falls back."""
    world = World(0.982, 0.47, seed=22)
    controller = AdaptiveController(policy, {2: world.propose})
    controller.start(3, list(PROMPT))
    alone = controller.predicted_alone()
    history, _ = timed_run(controller, world, 200, alone, lambda done, c: 0.5 * alone * 10.7, first=100 * alone)
    assert all(len(s.members) > 1 for s in history)


def test_guard_measures_the_target_alone_when_the_prediction_cannot_tell(policy):
    """The machine is 1.3x slower than profiled for every member; speculation still beats the target
    alone (1.15x vs 1.3x its predicted time) but not its prediction. The guard measures the target
    alone for two rounds, finds it slower than speculation, and speculates for the rest."""
    from polyplan.executor.guard import GUARD_MIN_ROUNDS

    world = World(0.982, 0.47, seed=23)
    controller = AdaptiveController(policy, {2: world.propose})
    controller.start(3, list(PROMPT))
    predicted = controller.predicted_alone()
    history, rounds_run = timed_run(controller, world, 150, 1.3 * predicted, per_token(1.15 * predicted))
    alone_rounds = [r for r in rounds_run if not r[0]]
    assert len(alone_rounds) == GUARD_MIN_ROUNDS
    back = next(s for s in history if len(s.members) > 1 and s.reason.startswith("the target alone measured"))
    assert "ms speculating: back; " in back.reason and "ms/token predicted" in back.reason  # then the policy's
    assert all(len(s.members) > 1 for s in history[-100:])


def test_guard_speculates_again_when_a_probe_measures_it_faster(policy):
    """Speculation slow for the first 40 tokens (a drafter slowed by other load), fast after: the
    guard falls back, its probe after the backoff finds speculation faster, and it stays."""
    world = World(0.982, 0.47, seed=24)
    controller = AdaptiveController(policy, {2: world.propose})
    controller.start(3, list(PROMPT))
    alone = controller.predicted_alone()

    def spec(done: int, committed: int) -> float:
        return (1.5 if done < 40 else 0.5) * alone * committed

    history, rounds_run = timed_run(controller, world, 120, alone, spec)
    assert any(s.members == (0,) for s in history[:8])
    assert any(s.reason.startswith("probe after") for s in history)
    assert all(len(s.members) > 1 for s in history[-40:])


def test_guard_probes_a_losing_speculation_logarithmically_often(policy):
    """Backoff doubles at each fall-back: over ~1000 tokens of a speculation that always loses, a
    handful of probes (32, 64, 128, 256, 512 tokens apart), each a few rounds."""
    from polyplan.executor.guard import GUARD_BACKOFF

    world = World(0.982, 0.47, seed=25)
    controller = AdaptiveController(policy, {2: world.propose})
    controller.start(3, list(PROMPT))
    alone = controller.predicted_alone()
    history, rounds_run = timed_run(controller, world, 1000, alone, per_token(1.3 * alone))
    falls = sum(1 for a, b in zip(history, history[1:], strict=False) if len(a.members) > 1 and b.members == (0,))
    tokens = sum(r[1] for r in rounds_run)
    assert tokens > 900
    assert falls <= 2 + math.log2(tokens / GUARD_BACKOFF)
    assert speculated_share(rounds_run) < 0.15


def test_a_new_request_forgets_the_guards_measurements(policy):
    world = World(0.982, 0.47, seed=26)
    controller = AdaptiveController(policy, {2: world.propose})
    controller.start(3, list(PROMPT))
    alone = controller.predicted_alone()
    timed_run(controller, world, 40, alone, per_token(1.5 * alone))
    again = controller.start(3, list(PROMPT))
    assert again.members == (0, 1, 2) and controller.guard.held_until is None
    assert controller.guard.alone.rounds == 0 and controller.guard.backoff == 32


def test_a_timed_prefill_is_taken_out_and_the_first_round_counts(policy):
    """Where the chain times each pass (CPU), the request's first round is its prefill plus a
    round like the others: with the prefill subtracted it is evidence, so the guard acts a round
    earlier than when only the round's whole time is known."""
    controller = AdaptiveController(policy)
    controller.start(3, list(PROMPT))
    alone, prefill = controller.predicted_alone(), 50 * controller.predicted_alone()

    def timing(i, seconds, committed):
        return RoundTiming(seconds + (prefill if i == 0 else 0.0), committed, prefill if i == 0 else 0.0)

    def first_fall(timing) -> int:
        world = World(0.982, 0.47, seed=27)
        controller = AdaptiveController(policy, {2: world.propose})
        history, _ = timed_run(controller, world, 40, alone, per_token(1.5 * alone), timing=timing)
        return next(i for i in range(1, len(history)) if history[i].members == (0,))

    assert first_fall(timing) == 1  # the first round, its prefill taken out, is evidence
    assert first_fall(None) == 2  # untimed, the request's first round is left out


def test_the_targets_own_passes_rescale_the_prediction(policy):
    """The machine runs the target twice as fast as profiled (another CPU): speculation at 0.75x of
    the profile's target alone is then 1.5x the target alone now. The target's verification passes,
    timed against the profile's curve, halve the prediction, so the guard measures the target alone
    and holds it; without them it would trust the stale prediction and keep speculating."""
    curve = policy.requests.latency[policy.names[0]]
    controller = AdaptiveController(policy)
    controller.start(3, list(PROMPT))
    alone = controller.predicted_alone()

    def run(with_target_passes: bool):
        world = World(0.982, 0.47, seed=28)
        controller = AdaptiveController(policy, {2: world.propose})

        def timing(i, seconds, committed):
            passes = ((0, 0.5 * curve(16, 200), 16, 200),) if with_target_passes else ()
            return RoundTiming(seconds, committed, 0.0, passes)

        return timed_run(controller, world, 60, 0.5 * alone, per_token(0.75 * alone), timing=timing)

    calibrated, _ = run(True)
    stale, _ = run(False)
    assert any(s.members == (0,) for s in calibrated[:4])
    assert "fell back to measure the target alone" in next(s.reason for s in calibrated if s.members == (0,))
    assert all(len(s.members) > 1 for s in stale)


def _run_costed(controller, world, rounds, alone, verify, per_draft):
    """``timed_run`` where a speculative round costs a verification (``verify`` s) plus ``per_draft``
    s per drafted token of the top drafter, so shorter gammas are cheaper rounds."""
    return timed_run(
        controller, world, rounds, alone, None, cost=lambda setting: verify + per_draft * setting.gammas[0]
    )


def test_guard_rechooses_on_the_requests_own_acceptance_before_falling_back(policy, monkeypatch):
    """Rule 3 (the quickstart demo's case): these requests accept 0.8 where the profile said 0.98.
    At the plan's long gammas speculation is not clearly faster than the target alone's prediction;
    the verdict, judged on the measured rate, re-chooses on the request's own acceptance (weak
    priors): shorter gammas, cheaper rounds (here 1.7x the target alone's speed at the best gamma).
    Over ten seeded requests they run faster than the same requests without rule 3, which fall
    back to the target alone more often."""

    def run(seed: int, rule3: bool):
        world = World(0.80, 0.47, seed=seed)
        controller = AdaptiveController(policy, {2: world.propose})
        if not rule3:
            monkeypatch.setattr(controller, "_on_own_acceptance", lambda: None)
        controller.start(3, list(PROMPT))
        alone = controller.predicted_alone()
        history, rounds_run = _run_costed(controller, world, 40, alone, 0.8 * alone, 0.3 * alone)
        seconds = sum(r[2] for r in rounds_run) / sum(r[1] for r in rounds_run) / alone
        return history, seconds

    with_rule, without = zip(*[(run(seed, True), run(seed, False)) for seed in range(31, 41)], strict=True)
    rechosen = 0
    for history, _ in with_rule:
        for k in (i for i, s in enumerate(history) if "accepts less than profiled" in s.reason):
            assert len(history[k].members) > 1 and history[k].gammas[0] < history[k - 1].gammas[0]
            rechosen += 1
    assert rechosen >= 5
    per_token = sum(s for _, s in with_rule) / len(with_rule)
    per_token_without = sum(s for _, s in without) / len(without)
    assert per_token < per_token_without  # measured 0.78 against 0.83 of the target alone's time


def test_rule3_rechooses_only_where_the_request_accepts_less_than_its_estimates(policy):
    """Rule 3's test of acceptance: after rounds that accepted as profiled (or better) the loss is
    time, not acceptance, so there is nothing to re-choose and the priors stay as strong; after
    rounds that accepted 0.6 the re-choice on weak priors drafts less."""
    for rate, rechosen in ((0.995, False), (0.6, True)):
        world = World(rate, 0.47, seed=32)
        controller = AdaptiveController(policy, {2: world.propose})
        history = world.run(controller, 3)
        other = controller._on_own_acceptance()
        assert (other is not None) == rechosen and controller._doubted == rechosen
        if other is not None:
            assert len(other.members) > 1 and other.gammas[0] < history[-1].gammas[0]


def test_guard_brings_back_a_shadow_checked_setting_when_its_acceptance_rises():
    """A point-mass drafter's acceptance is measured on every committed token while the target
    runs alone: when the policy's prediction for its setting falls by GUARD_EVIDENCE_GAIN below the
    one it was stopped at (it reached a passage it can copy), the hold ends early; a setting with a
    model drafter (no prediction passed: no evidence while held) waits for the probe."""
    from polyplan.executor.control import RoundSetting
    from polyplan.executor.guard import GUARD_EVIDENCE_GAIN, SpeedGuard

    guard = SpeedGuard()
    guard.start(0.05)
    reserve = RoundSetting((0, 2), (7,), "the reserve")
    for _ in range(3):  # warm speculative rounds at 0.1 s per token: twice the target alone's prediction
        guard.observe(0.2, 2, True, False, 8)
    assert guard.apply(reserve, None, 0.04).members == (0,)
    assert guard.apply(reserve, None, 0.04 * (1 - GUARD_EVIDENCE_GAIN / 2)).members == (0,)
    assert guard.apply(reserve, None, None).members == (0,)
    back = guard.apply(reserve, None, 0.04 * (1 - 2 * GUARD_EVIDENCE_GAIN))
    assert back.members == (0, 2) and "own acceptance rose" in back.reason


def test_guard_probes_a_point_mass_setting_at_a_steady_interval():
    """A model drafter's setting gets no evidence while held, so a loser is probed ever less often
    (the backoff doubles); a point-mass drafter's acceptance is measured on every token held and
    its lulls pass (it copies in bursts): its probes stay GUARD_BACKOFF tokens apart."""
    from polyplan.executor.control import RoundSetting
    from polyplan.executor.guard import GUARD_BACKOFF, SpeedGuard

    def holds(setting: RoundSetting, predicted: float | None) -> list[int]:
        guard, spans = SpeedGuard(), []
        guard.start(0.05)
        for _ in range(3):
            for _ in range(3):  # speculation at twice the target alone's prediction
                guard.observe(0.2, 2, True, False, 8)
                if guard.apply(setting, None, predicted).members == (0,):
                    break
            assert guard.held_until is not None
            spans.append(guard.held_until - guard.done)
            while guard.apply(setting, None, predicted).members == (0,):
                guard.observe(0.05, 1, False, False)  # the target alone, as predicted
        return spans

    assert holds(RoundSetting((0, 2), (7,), "the reserve"), 0.04) == [GUARD_BACKOFF] * 3
    assert holds(RoundSetting((0, 1), (7,), "a model drafter"), None) == [
        GUARD_BACKOFF,
        2 * GUARD_BACKOFF,
        4 * GUARD_BACKOFF,
    ]
