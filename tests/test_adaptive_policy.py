"""The adaptive executor's precomputed policy and the estimator's algebra (pure: no torch).

Built on the committed SmolLM2 profile (target fp32 <- bf16 <- n-gram plan, gammas 11, 5)."""

from __future__ import annotations

import json
import math
import random
from itertools import pairwise
from pathlib import Path

import pytest

from polyplan.documents import Plan, Profile
from polyplan.documents.files import DocumentError
from polyplan.documents.traces import Traces
from polyplan.planner.policy import Policy
from polyplan.planner.policy_build import build_policy, policy_for_plan, subsets
from polyplan.planner.predictors import IidPredictor
from polyplan.theory import search_gammas
from polyplan.theory.control import (
    MAX_U,
    alpha_axis,
    evaluate_setting,
    pair_window,
    posterior_mean,
    relax_tokens,
    setting_table,
    transfer_bound,
    transfer_strength,
    u_of_alpha,
    verification_evidence,
)

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "smollm2-cpu.json"
PLAN = ROOT / "profiles" / "smollm2-cpu.plan.json"
NAMES = ["smollm2-135m", "smollm2-135m:bf16", "ngram"]
#: grid points per acceptance axis of the plan's tables (CELL_BUDGET 300: 17 for one or two pairs)
GRID_POINTS = 17


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.load(PROFILE)


@pytest.fixture(scope="module")
def policy(profile) -> Policy:
    traces = Traces.of_profile(profile, PROFILE)
    return build_policy(profile, NAMES, [11, 5], mode="greedy", context=113.875, traces=traces)


def test_every_order_keeping_subset_with_the_target_is_a_candidate(profile):
    assert subsets(NAMES, profile) == [(0,), (0, 1), (0, 2), (0, 1, 2)]


def test_warm_started_tables_match_the_exhaustive_search(profile):
    latency = IidPredictor(profile, context=113.875).latencies(tuple(NAMES))
    axis = alpha_axis(7)
    gammas, times = setting_table([axis, axis], latency, 16, [4, 4])
    rng = random.Random(0)
    for flat in rng.sample(range(len(times)), 8):
        alpha = [axis[flat // 7], axis[flat % 7]]
        _, exact = search_gammas(alpha, latency, max_gamma=16)
        assert times[flat] <= float(exact.time_per_token) * 1.005, (alpha, gammas[flat])


def test_the_plan_setting_is_chosen_at_the_profiles_acceptance(policy):
    decision = policy.decide(policy.priors)
    assert (decision.members, decision.gammas, decision.rule) == ((0, 1, 2), (11, 5), "plan")


def test_autoregressive_when_nothing_is_accepted(policy):
    decision = policy.decide({pair: 0.0 for pair in policy.priors})
    assert decision.members == (0,) and decision.gammas == ()


def test_a_useless_ngram_under_a_good_bf16_level_is_turned_down(policy):
    alpha = {(0, 1): 0.98, (0, 2): 0.02, (1, 2): 0.02}
    # a point-mass draft at gamma 1 costs nothing, so the n-gram may stay, but only at gamma 1:
    # from scratch (and staying) it is kept at gamma 1; already without it, the chain stays without it
    decisions = {current: policy.decide(alpha, current) for current in (None, (0, 1, 2), (0, 1))}
    for decision in decisions.values():
        assert decision.members in ((0, 1), (0, 1, 2))
    kept, dropped = decisions[None], decisions[(0, 1)]
    assert kept.members == (0, 1, 2) and kept.gammas[-1] == 1 and kept.rule == "best"
    assert (decisions[(0, 1, 2)].members, decisions[(0, 1, 2)].gammas) == (kept.members, kept.gammas)
    assert dropped.members == (0, 1) and dropped.rule == "stay"
    # staying without the n-gram costs less than the margin
    assert kept.time_per_token <= dropped.time_per_token <= kept.time_per_token * (1 + policy.margin)


def test_a_great_ngram_drops_the_bf16_level(policy):
    decision = policy.decide({(0, 1): 0.98, (0, 2): 0.95, (1, 2): 0.95})
    assert decision.members == (0, 2) and decision.gammas[0] >= 12


def exact_best(predictor, profile, alpha) -> float:
    """The exact model's fastest setting over every subset (exhaustive gamma search) at ``alpha``."""
    best = math.inf
    for members in subsets(NAMES, profile):
        latency = predictor.latencies(tuple(NAMES[m] for m in members))
        if len(members) == 1:
            best = min(best, evaluate_setting([], [], latency))
        else:
            _, exact = search_gammas([alpha[p] for p in pairwise(members)], latency, max_gamma=16)
            best = min(best, float(exact.time_per_token))
    return best


def on_grid(i_model: int, i_pm: int) -> dict[tuple[int, int], float]:
    axis = alpha_axis(GRID_POINTS)
    return {(0, 1): axis[i_model], (0, 2): axis[i_pm], (1, 2): axis[i_pm]}


def test_decisions_at_grid_points_are_the_exact_model_within_the_margin(policy, profile):
    """At the tables' own grid points nothing is interpolated: the decision's time is the exact
    model's time of the decision's setting, and it is within the margin of the exact optimum."""
    assert {t.points for t in policy.tables if len(t.members) > 1} == {GRID_POINTS} == {policy.plan.points}
    predictor = IidPredictor(profile, context=113.875)
    rules = set()
    for i_model, i_pm in ((16, 5), (14, 8), (10, 3), (6, 6), (3, 1)):
        alpha = on_grid(i_model, i_pm)
        decision = policy.decide(alpha)
        rules.add(decision.rule)
        latency = predictor.latencies(tuple(NAMES[m] for m in decision.members))
        exact = evaluate_setting([alpha[p] for p in pairwise(decision.members)], decision.gammas, latency)
        assert decision.time_per_token == pytest.approx(exact, rel=1e-9), (alpha, decision)
        best = exact_best(predictor, profile, alpha)
        assert decision.best_time_per_token == pytest.approx(best, rel=1e-9), (alpha, decision)
        limit = best * (1 + policy.margin) * policy.plan_offset()
        assert decision.time_per_token <= limit * (1 + 1e-9), (alpha, decision)
    assert rules == {"plan", "best"}  # both branches of the rule were exercised


def test_decisions_off_the_grid_are_bounded_by_the_exact_model_at_the_cells_corners(policy, profile):
    """Between grid points the lookup interpolates. The exact optimum is monotone in acceptance,
    so the best time at ``alpha`` lies between the exact optima at the corners of its grid cell
    (every pair at its lower node, every pair at its upper node); the decision, within the margin
    of the interpolated best, may be no faster than the upper corner's optimum and no slower than
    the margin over the lower corner's. The interpolated best lies strictly between the two."""
    predictor = IidPredictor(profile, context=113.875)
    axis_u = [MAX_U * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
    for a_model, a_pm in ((0.98, 0.3), (0.9, 0.5), (0.7, 0.47)):
        alpha = {(0, 1): a_model, (0, 2): a_pm, (1, 2): a_pm}
        nodes = {p: max(i for i, u in enumerate(axis_u[:-1]) if u <= u_of_alpha(a)) for p, a in alpha.items()}
        assert all(axis_u[i] <= u_of_alpha(alpha[p]) < axis_u[i + 1] for p, i in nodes.items())
        slow = exact_best(predictor, profile, on_grid(nodes[(0, 1)], nodes[(0, 2)]))
        fast = exact_best(predictor, profile, on_grid(nodes[(0, 1)] + 1, nodes[(0, 2)] + 1))
        best = exact_best(predictor, profile, alpha)
        assert fast <= best <= slow  # the monotonicity the bound rests on
        decision = policy.decide(alpha)
        limit = slow * (1 + policy.margin) * policy.plan_offset()
        assert fast <= decision.time_per_token <= limit, (alpha, decision, fast, slow)
        # interpolated, not read off a corner: strictly inside the corners' range
        assert fast < decision.best_time_per_token < slow, (alpha, decision, fast, slow)


def test_what_runs_at_a_cells_centre_is_within_the_stated_bound(policy, profile):
    """Proposition 2's lookup term: the rule compares interpolated times but runs the nearest node's
    gammas; at every cell's centre (where ``grid_error`` is measured) the exact time of what runs is
    within (1 + margin) * plan offset * (1 + grid error) of the exact optimum (0.5%: the local descent
    against the exhaustive search)."""
    predictor = IidPredictor(profile, context=113.875)
    errors = [t.grid_error for t in [policy.plan, *policy.tables]]
    # the policy's bound also covers its long-context tables
    every = errors + [t.grid_error for t in policy.long_tables]
    assert all(e is not None and e >= 0 for e in every) and policy.grid_error() == max(every)
    assert max(errors) > 0  # the lookup is not free: the nearest node's gammas cost something between nodes
    axis_u = [MAX_U * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
    worst = 0.0
    for i_model, i_pm in ((15, 4), (13, 7), (9, 2), (5, 5), (2, 0), (15, 12)):
        a_model = 1 - 2 ** -((axis_u[i_model] + axis_u[i_model + 1]) / 2)
        a_pm = 1 - 2 ** -((axis_u[i_pm] + axis_u[i_pm + 1]) / 2)
        alpha = {(0, 1): a_model, (0, 2): a_pm, (1, 2): a_pm}
        decision = policy.decide(alpha)
        latency = predictor.latencies(tuple(NAMES[m] for m in decision.members))
        run = evaluate_setting([alpha[p] for p in pairwise(decision.members)], decision.gammas, latency)
        best = exact_best(predictor, profile, alpha)
        bound = (1 + policy.margin) * policy.plan_offset() * (1 + policy.grid_error())
        assert run <= best * bound * 1.005, (alpha, decision, run / best, bound)
        worst = max(worst, run / best)
    assert worst > 1.0  # the points are off the grid: something is lost


def test_the_plan_is_not_overridden_on_the_prior_alone(policy):
    """The plan was chosen at the priors (by replay); where the i.i.d. model prices it slower than its
    best there, rule 1 widens by that offset: at the priors the plan stands; once the estimates move
    its standing by more than the margin, it does not."""
    doubted = Policy.from_dict(policy.to_dict())
    best_at_prior = min(t.time_at_alpha(doubted.priors) for t in doubted.tables)
    factor = 1.06 * best_at_prior / doubted.plan.time_at_alpha(doubted.priors)
    doubted.plan.times = [t * factor for t in doubted.plan.times]
    assert doubted.plan_offset() == pytest.approx(1.06)
    assert doubted.decide(doubted.priors).rule == "plan"
    lower = {pair: a * 0.5 for pair, a in doubted.priors.items()}
    assert doubted.decide(lower).rule != "plan"
    capped = Policy.from_dict(policy.to_dict())
    capped.plan.times = [t * 3 for t in capped.plan.times]
    assert capped.plan_offset() == 1.25 and capped.decide(capped.priors).rule != "plan"


def test_the_transferred_prior_counts_the_shadow_estimates_own_variance():
    m, bound = 0.6, 0.05
    weak, strong = transfer_strength(m, bound, 2.0, 256.0), transfer_strength(m, bound, 1e9, 256.0)
    assert weak < strong  # a shadow estimate on few trials is a weaker centre
    assert strong == pytest.approx(m * (1 - m) / bound**2 - 1, rel=1e-6)  # the transfer bound alone
    assert transfer_strength(m, bound, 20.0, 256.0) == pytest.approx(m * (1 - m) / (bound**2 + m * (1 - m) / 21) - 1)
    assert transfer_strength(m, 0.0, 1e12, 256.0) == 256.0 and transfer_strength(m, 0.5, 0.0, 256.0) == 1.0


def test_policy_round_trips_through_the_plan_json(policy, tmp_path):
    plan = Plan.load(PLAN)
    plan.policy = policy.to_dict()
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Policy.from_dict(Plan.load(path).policy)
    for alpha in (
        {(0, 1): 0.98, (0, 2): 0.47, (1, 2): 0.47},
        {(0, 1): 0.5, (0, 2): 0.1, (1, 2): 0.1},
        {(0, 1): 0.93, (0, 2): 0.8, (1, 2): 0.75},
    ):
        a, b = again.decide(alpha), policy.decide(alpha)
        assert (a.members, a.gammas, a.rule) == (b.members, b.gammas, b.rule)
        assert a.time_per_token == pytest.approx(b.time_per_token, rel=1e-6)


def test_old_plans_without_a_policy_still_load():
    doc = json.loads(PLAN.read_text())
    doc.pop("policy", None)
    plan = Plan.from_dict(doc)
    assert plan.policy is None
    assert "policy" not in plan.to_dict()


def test_malformed_policy_is_one_clear_error(policy):
    doc = policy.to_dict()
    doc["settings"][0]["times"] = [-1.0]
    with pytest.raises(DocumentError, match="policy"):
        Policy.from_dict(doc)
    with pytest.raises(DocumentError, match="policy"):
        Policy.from_dict({"version": 1})


def test_policy_for_plan_rebuilds_from_the_profile(profile):
    plan = Plan.load(PLAN)
    rebuilt = policy_for_plan(plan, profile)
    assert rebuilt.names == plan.names and rebuilt.decide(rebuilt.priors).members == (0, 1, 2)


def test_prior_strength_and_window_follow_the_profiles_spread(policy):
    # the bf16 copy agrees with the target on every prompt: a strong prior, a long memory;
    # the n-gram's acceptance varies from prompt to prompt: a weak prior, a short memory
    assert policy.prior_strength[(0, 1)] > 50 and policy.window[(0, 1)] > 100
    assert policy.prior_strength[(0, 2)] < 4 and 8 <= policy.window[(0, 2)] < 30
    for pair in policy.priors:
        assert policy.prior_strength[pair] <= policy.window[pair]
    assert policy.window[(0, 2)] == pytest.approx(pair_window(policy.prior_strength[(0, 2)], 128.0))


# ---- the estimator's algebra ----------------------------------------------------------------------


def test_verification_evidence_estimates_alpha_without_bias():
    rng = random.Random(1)
    for alpha in (0.3, 0.7, 0.95):
        s = n = naive_s = naive_n = 0
        for _ in range(20000):
            d = 6
            a = 0
            while a < d and rng.random() < alpha:
                a += 1
            ds, dn = verification_evidence(d, a)
            s, n = s + ds, n + dn
            naive_s, naive_n = naive_s + a, naive_n + d
        assert s / n == pytest.approx(alpha, abs=0.01)
        assert naive_s / naive_n < alpha - 0.02  # accepted / drafted is biased low


def test_relax_tokens_matches_the_decay_of_the_evidence():
    window, trials, prior, n0 = 20.0, 30.0, 0.9, 5.0
    estimate = posterior_mean(prior, n0, 0.4 * trials, trials)
    t = relax_tokens(window, trials, estimate, 0.7, prior, n0)
    f = math.exp(-t / window)
    assert posterior_mean(prior, n0, 0.4 * trials * f, trials * f) == pytest.approx(0.7)
    assert relax_tokens(window, trials, estimate, 0.95, prior, n0) == math.inf


def test_transfer_bound_holds_on_the_profiles_traces(profile):
    traces = Traces.of_profile(profile, PROFILE)
    top = traces.pair("greedy", "smollm2-135m", "ngram")
    mid = traces.pair("greedy", "smollm2-135m:bf16", "ngram")
    agree = traces.pair("greedy", "smollm2-135m", "smollm2-135m:bf16")
    for a, b in traces.bounds():
        gap = abs(float(top[a:b].mean()) - float(mid[a:b].mean()))
        assert gap <= transfer_bound(float(agree[a:b].mean())) + 1e-9


def test_u_axis_is_even_in_log_of_rejection():
    axis = alpha_axis(17)
    assert axis[0] == 0.0 and axis[-1] == pytest.approx(1 - 2**-8)
    steps = [u_of_alpha(b) - u_of_alpha(a) for a, b in pairwise(axis)]
    assert max(steps) - min(steps) < 1e-9
