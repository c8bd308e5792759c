"""A plan's reserve drafter: a point-mass drafter outside the plan's chain (prompt lookup) whose
acceptance the profile measured on long prompts. The request model scales its acceptance by the
prompt's length; the start runs it instead of the plan's drafter where the drafter's prefill is
not repaid and the reserve's acceptance is. Pure: no torch (the committed SmolLM2 profile with
prefill curves and long-prompt rows set here)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from polyplan.documents import Profile
from polyplan.documents.profile import LONG_PROMPT_FACTOR_RANGE, PrefillCurve
from polyplan.documents.traces import Traces
from polyplan.executor.adaptive import WINDOWED_PRIOR_STRENGTH, AdaptiveController
from polyplan.planner.policy import Policy
from polyplan.planner.policy_build import build_policy, reserve_drafters
from polyplan.planner.request_model import RequestModel

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "smollm2-llamacpp-cpu.json"
NAMES = ["smollm2-135m", "smollm2-135m:q4"]
LOOKUP = "prompt-lookup"
#: per-token prefill, seconds: the 4-bit drafter's dearer than the float32 target's (as measured here)
PER_TOKEN = {"smollm2-135m": 0.0028, "smollm2-135m:q4": 0.0045}
LONG_TOKENS = [800, 900]


def profile_with(long_rate: float | None) -> Profile:
    """The committed profile with prefill curves and, unless None, prompt lookup's greedy
    agreement with the target on the long prompts (``long_rate``)."""
    prof = copy.deepcopy(Profile.load(PROFILE))
    prof.prefill = {n: PrefillCurve([128, 2048], [t * 128 + 0.01, t * 2048 + 0.01]) for n, t in PER_TOKEN.items()}
    if long_rate is not None:
        full = {"greedy_sum": 100.0 * long_rate, "sampling_sum": 100.0 * long_rate, "positions": 100}
        # by answer position it copies more as the answer grows (it copies from the answer too)
        rates = {"0": 0.6 * long_rate, "32": long_rate, "64": min(1.0, 1.2 * long_rate)}
        full["by_position"] = {b: [r * 32, r * 32, 32] for b, r in rates.items()}
        prof.windows = {"sink": 4, "sizes": [256], "prompts": ["a", "b"], "prompt_tokens": LONG_TOKENS}
        prof.windows["by_drafter"] = {LOOKUP: {"full": full}}
    return prof


def make_policy(prof: Profile) -> Policy:
    traces = Traces.of_profile(prof, PROFILE)
    reserves = reserve_drafters(prof, NAMES, "greedy")
    return build_policy(prof, NAMES, [8], mode="greedy", context=113.875, traces=traces, reserves=reserves)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return make_policy(profile_with(0.7))


def test_the_long_prompt_factor_is_measured_against_the_profiles_own_prompts():
    prof = profile_with(0.7)
    short = prof.pair(NAMES[0], LOOKUP).alpha("greedy")
    assert prof.long_prompt_factor(LOOKUP, "greedy") == pytest.approx(0.7 / short)
    assert prof.long_prompt_tokens() == pytest.approx(850.0)
    # model drafters and unmeasured point-mass drafters have none; a wild rate is kept in range
    assert prof.long_prompt_factor(NAMES[1], "greedy") is None and prof.long_prompt_factor("ngram", "greedy") is None
    assert profile_with(None).long_prompt_factor(LOOKUP, "greedy") is None
    prof.pairs = [p for p in prof.pairs if p.drafter != LOOKUP or p.verifier != NAMES[0]]
    assert prof.long_prompt_factor(LOOKUP, "greedy") is None  # nothing to compare with


def test_the_factor_grows_with_log_prompt_length_between_the_two_measured_lengths(policy):
    req = policy.requests
    short, long, factor, by_position = req.prompt_factors[LOOKUP]
    assert long == pytest.approx(850.0) and 0 < short < long and factor > 1
    assert [b for b, _ in by_position] == [0, 32, 64] and by_position[0][1] < by_position[2][1]
    m = policy.names.index(LOOKUP)
    assert req.prompt_factor(m, short / 2) == 1.0 and req.prompt_factor(m, short) == 1.0
    middle = math.sqrt(short * long)
    assert req.prompt_factor(m, middle) == pytest.approx(1 + (factor - 1) / 2)
    assert req.prompt_factor(m, long) == pytest.approx(factor) and req.prompt_factor(m, 10 * long) == pytest.approx(
        factor
    )
    assert req.prompt_factor(1, 5000) == 1.0  # the model drafter has none
    # over an answer's first tokens, the buckets it spans: a long answer copies more
    assert req.prompt_factor(m, long, horizon=32) == pytest.approx(by_position[0][1])
    spread = (32 * by_position[0][1] + 32 * by_position[1][1] + 192 * by_position[2][1]) / 256
    assert req.prompt_factor(m, long, horizon=256) == pytest.approx(spread)
    assert req.prompt_factor(m, long, horizon=256) > req.prompt_factor(m, long, horizon=64)
    scaled = req.at_prompt(dict(policy.priors), 10 * long)
    assert scaled[(0, m)] == pytest.approx(min(1.0, policy.priors[(0, m)] * factor))
    assert scaled[(0, 1)] == policy.priors[(0, 1)]


def test_the_reserve_is_the_best_long_prompt_point_mass_drafter_and_only_where_measured():
    assert reserve_drafters(profile_with(0.7), NAMES, "greedy") == [LOOKUP]
    assert reserve_drafters(profile_with(None), NAMES, "greedy") == []  # profiles before the measurement
    short = profile_with(None).pair(NAMES[0], LOOKUP).alpha("greedy")
    assert reserve_drafters(profile_with(short * 0.9), NAMES, "greedy") == []  # long prompts do not help it
    assert reserve_drafters(profile_with(0.7), [NAMES[0], LOOKUP], "greedy") == []  # the chain ends in one


def test_the_policy_runs_the_plan_on_short_prompts_and_the_reserve_on_long_ones(policy):
    assert policy.names == [*NAMES, LOOKUP] and policy.reserves == [LOOKUP]
    assert policy.plan.members == (0, 1)
    assert {t.members for t in policy.tables} == {(0,), (0, 1), (0, 2), (0, 1, 2)}
    short = policy.start(dict(policy.priors), 100, 64)
    assert short is not None and short.decision.members == (0, 1)
    long = policy.start(dict(policy.priors), 3000, 256)
    assert long is not None and long.decision.members == (0, 2)
    # it pays no prefill and is predicted faster than the target alone by the start's margin
    p = long.prediction
    assert sum(p.drafter_prefill_s) == 0.0 and p.request_s * (1 + policy.safety) < p.autoregressive_request_s


def test_the_long_prompt_factor_prices_the_reserve_at_the_prompts_length(policy):
    """The same policy with the factor taken away prices the reserve at its short-prompt
    acceptance: a slower request than the start predicts for it with the factor."""
    without = make_policy(profile_with(0.7))
    assert without.requests is not None
    without.requests.prompt_factors = {}
    at = policy.start(dict(policy.priors), 3000, 256)
    assert at is not None and at.decision.members == (0, 2)
    priced = without.requests.request((0, 2), at.decision.gammas, dict(without.priors), 3000, 256)
    assert at.prediction.request_s < 0.95 * priced.request_s


def test_the_reserve_travels_with_the_plan_and_old_policies_read_without_it(policy):
    again = Policy.from_dict(policy.to_dict())
    assert again.names == policy.names and again.reserves == [LOOKUP] and again.plan.members == (0, 1)
    assert again.requests is not None and again.requests.prompt_factors == policy.requests.prompt_factors
    doc = policy.requests.to_dict()
    del doc["prompt_factors"]
    assert RequestModel.from_dict(doc).prompt_factors == {}
    doc["prompt_factors"] = {LOOKUP: [80.0, 850.0, 2.0]}  # as plans stored it before by position
    assert RequestModel.from_dict(doc).prompt_factors == {LOOKUP: [80.0, 850.0, 2.0, []]}
    doc["prompt_factors"] = {LOOKUP: [900.0, 850.0, 2.0]}
    with pytest.raises(Exception, match="bad prompt factor"):
        RequestModel.from_dict(doc)


def test_the_controller_starts_long_requests_on_the_reserve_with_a_scaled_weak_prior(policy):
    m = policy.names.index(LOOKUP)
    controller = AdaptiveController(policy, shadow={m: lambda context, n: []})
    setting = controller.start(len(policy.names), list(range(3000)), 256)
    assert setting.members == (0, m)
    factor = policy.requests.prompt_factor(m, 3000, controller.horizon)
    assert controller.prior_factor[(0, m)] == pytest.approx(factor)
    assert controller.estimates()[(0, m)] == pytest.approx(min(1.0, policy.priors[(0, m)] * factor))
    # its own evidence (shadow checks on every committed token) moves it: the prior weighs a
    # handful of tokens, and each check counts against what the profile saw at that answer
    # position (early tokens copy less): 20 early misses cost less than 20 misses of a flat rate
    prompt = list(range(3000))
    before = controller.estimates()[(0, m)]
    controller.next_round([*prompt, *range(20)])  # 20 committed tokens it would not have proposed
    after = controller.estimates()[(0, m)]
    flat = before * WINDOWED_PRIOR_STRENGTH / (WINDOWED_PRIOR_STRENGTH + 20)
    assert flat < after < 0.8 * before
    short = controller.start(len(policy.names), list(range(60)), 64)
    assert short.members == (0, 1) and controller.prior_factor[(0, m)] == 1.0


def test_the_factor_is_kept_in_range():
    lo, hi = LONG_PROMPT_FACTOR_RANGE
    assert profile_with(1.0).long_prompt_factor(LOOKUP, "greedy") <= hi
    assert profile_with(0.0).long_prompt_factor(LOOKUP, "greedy") == lo


def test_optimize_names_the_reserve_it_measured(tmp_path):
    """The committed family-26 AMD profile measured its point-mass drafters on long prompts: its
    plan carries the best as a reserve and `polyplan optimize` says so, with the factor."""
    import json
    import os
    import subprocess
    import sys

    profile = ROOT / "profiles" / "epyc-fam26" / "smollm2.profile.json"
    out = tmp_path / "plan.json"
    r = subprocess.run(
        [sys.executable, "-m", "polyplan.cli", "optimize", str(profile), "-o", str(out), "--choose", "robust"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    reserves = doc["policy"]["names"][len(doc["chain"]) :]
    assert len(reserves) == 1 and f"reserve: {reserves[0]} (no prefill" in r.stdout
    policy = Policy.from_dict(doc["policy"])
    assert policy.reserves == reserves and policy.requests.prompt_factors[reserves[0]][2] > 1


def test_a_plan_still_to_prefill_does_not_win_a_tie(policy):
    """Rule 1 keeps the plan's setting within the margin of the best; when its drafter must still
    prefill, only where it is the best outright and faster than the target alone: a near-tie
    keeps the current members (here the reserve, which prefills nothing)."""
    alpha = {**policy.priors, (0, 2): 0.0, (1, 2): 0.0}  # the reserve copies nothing here
    alone = next(t for t in policy.tables if t.members == (0,)).time_at_alpha(alpha)
    drafting = min(
        policy.plan.time_at_alpha(alpha), next(t for t in policy.tables if t.members == (0, 1)).time_at_alpha(alpha)
    )
    # its prefill spread over the request puts every setting with the drafter just above the
    # target alone: within rule 1's margin of the best, and still the target alone runs
    above = policy.decide(alpha, cold_cost={1: alone - drafting + 0.005 * alone})
    assert above.members == (0,)
    below = policy.decide(alpha, cold_cost={1: alone - drafting - 0.005 * alone})
    assert below.members == (0, 1)


def test_a_prefill_the_start_declined_waits_for_the_requests_own_evidence(policy):
    """The start ran the reserve rather than prefill the model drafter; a round that would bring the
    drafter in pays a prefill it cannot take back, so it waits until the request has committed as
    many tokens as the reserve's prior weighs (WINDOWED_PRIOR_STRENGTH): the first rounds' noise
    does not take the bet the start declined. Here the reserve is made to copy nothing."""
    m = policy.names.index(LOOKUP)
    controller = AdaptiveController(policy, shadow={m: lambda context, n: []})
    prompt = list(range(1000))
    assert controller.start(len(policy.names), prompt, 256).members == (0, m)
    measured = controller.estimates
    controller.estimates = lambda: {**measured(), (0, m): 0.05, (1, m): 0.05}
    answered = int(WINDOWED_PRIOR_STRENGTH)
    for n in range(1, answered):
        assert 1 not in controller.next_round([*prompt, *range(10**5, 10**5 + n)]).members
    assert controller.next_round([*prompt, *range(10**5, 10**5 + answered)]).members == (0, 1)


def test_a_drafter_the_policy_prefills_is_judged_on_its_own_rounds(policy):
    """The reserve's rounds measured slower than the target alone's prediction (a passage with
    nothing to copy); when the request's own evidence then brings the model drafter in, paying its
    prefill, those rounds are no verdict on it: the guard lets it run and judges its own rounds."""
    from polyplan.executor.control import RoundTiming

    m = policy.names.index(LOOKUP)
    controller = AdaptiveController(policy, shadow={m: lambda context, n: []})
    prompt = list(range(1000))
    assert controller.start(len(policy.names), prompt, 256).members == (0, m)
    measured = controller.estimates
    answered = int(WINDOWED_PRIOR_STRENGTH)
    tokens = [*prompt, *range(10**5, 10**5 + answered - 1)]
    assert controller.next_round(tokens).members == (0, m)
    for _ in range(2):  # two of its rounds, one token each at five times the target alone's prediction
        controller.observe_round(RoundTiming(5 * controller.guard.predicted, 1, 0.0))
    controller.estimates = lambda: {**measured(), (0, m): 0.05, (1, m): 0.05}
    assert controller.next_round([*tokens, 0]).members == (0, 1)
