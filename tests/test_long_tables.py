"""The policy's second table set, at the profile's longest latency context: on long prompts the
target's passes cost more and differently by width, so a request decoding there takes its gammas
(at the start and every round) from tables priced at that context. Pure: no torch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from polyplan.documents import Profile
from polyplan.documents.profile import LatencyCurve, PrefillCurve
from polyplan.planner.policy import Policy
from polyplan.planner.policy_build import LONG_CONTEXT_RATIO, build_policy, long_table_context

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "smollm2-cpu.json"
NAMES = ["smollm2-135m", "prompt-lookup"]


def with_jagged_long_context(prof: Profile) -> Profile:
    """The target's curve with a third context at 2048 where an 8-token pass costs what a 5-token
    one does and a 5-token pass jumps (the shape measured on the family-26 AMD, exaggerated):
    the best gamma there differs from the short context's."""
    prof = copy.deepcopy(prof)
    curve = prof.latency[NAMES[0]]
    n = curve.new_tokens
    row = [0.05 + 0.001 * k if k not in (3, 4, 5, 6, 7) else 0.05 + 0.03 for k in n]
    prof.latency[NAMES[0]] = LatencyCurve(
        new_tokens=list(n), context=[*curve.context, 2048], median_s=[*curve.median_s, row]
    )
    for name, c in list(prof.latency.items()):
        if name != NAMES[0] and 2048 not in c.context:
            prof.latency[name] = LatencyCurve(
                new_tokens=list(c.new_tokens), context=[*c.context, 2048], median_s=[*c.median_s, c.median_s[-1]]
            )
    prof.prefill = {NAMES[0]: PrefillCurve([128, 2048], [0.3, 4.0])}  # the drafter is point-mass: none
    return prof


@pytest.fixture(scope="module")
def profile() -> Profile:
    return with_jagged_long_context(Profile.load(PROFILE))


@pytest.fixture(scope="module")
def policy(profile) -> Policy:
    return build_policy(profile, NAMES, [4], mode="greedy", context=113.875)


def test_a_long_set_is_built_where_the_profile_measured_far_enough(profile):
    assert long_table_context(profile, NAMES[0], 113.875) == 2048.0
    assert long_table_context(profile, NAMES[0], 2048 / LONG_CONTEXT_RATIO + 1) is None
    short_only = copy.deepcopy(profile)
    short_only.latency[NAMES[0]] = LatencyCurve(new_tokens=[1, 2], context=[64, 128], median_s=[[0.1, 0.2]] * 2)
    assert long_table_context(short_only, NAMES[0], 113.875) is None


def test_requests_take_the_table_set_of_their_decode_context(policy):
    assert policy.long_context == 2048.0
    assert [t.members for t in policy.long_tables] == [t.members for t in policy.tables]
    assert policy.tables_at(None) is policy.tables and policy.tables_at(150) is policy.tables
    assert policy.tables_at(2000) is policy.long_tables
    short = policy.start(dict(policy.priors), 100, 64)
    long = policy.start(dict(policy.priors), 3000, 256)
    assert short.context < 200 and long.context > 3000


def test_the_long_set_prices_the_long_contexts_pass_widths(policy):
    """At 2048 an 8-token pass costs what a 1-token one does and 4-8 tokens jump: the long
    tables never pick a gamma whose pass (gamma + 1 tokens) lands in the jump, the short ones do
    somewhere on their grid; a request decoding at 3000 tokens runs the long set's gammas."""
    pair = (0, 1)
    table = next(t for t in policy.long_tables if t.members == pair)
    assert not any(3 <= g[0] + 1 <= 7 for g in table.gammas)
    short = next(t for t in policy.tables if t.members == pair)
    assert any(3 <= g[0] + 1 <= 7 for g in short.gammas)
    for alpha in (0.5, 0.7, 0.9):
        at = {(0, 1): alpha}
        decision = policy.decide(at, start=policy.start(at, 3000, 256))
        if decision.members == pair:
            assert decision.gammas in table.gammas
            assert not 3 <= decision.gammas[0] + 1 <= 7


def test_the_long_set_travels_with_the_plan_and_old_policies_have_none(policy):
    again = Policy.from_dict(policy.to_dict())
    assert again.long_context == policy.long_context
    assert [t.gammas for t in again.long_tables] == [t.gammas for t in policy.long_tables]
    doc = policy.to_dict()
    del doc["long_context"], doc["long_settings"]
    old = Policy.from_dict(doc)
    assert old.long_tables == [] and old.tables_at(3000) is old.tables
