"""Draft stops (polyplan.executor.draft_stop): the output is the target's whatever the rule, the
rule ends drafts where the drafter is unsure and only there, and the planner and profiler feed it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyplan import Chain
from polyplan.documents.profile import GAP_EDGES
from polyplan.executor.draft_stop import DraftStop, draft_stops
from polyplan.profiler.recorder import _gap_bins

from tiny_models import perturbed_copy, tiny_llama

VOCAB = 32
TARGET = tiny_llama(vocab_size=VOCAB, num_layers=2, seed=1, logit_scale=3.0)
ROUGH = perturbed_copy(TARGET, 0.08, seed=3)
PROMPTS = [[3, 5, 7], [0, 9, 9, 9, 2, 11, 30], list(range(2, 30))]
EDGES = (0.0, 0.5, 1.0, 2.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rule(stop_below: float, acceptance: tuple[float, ...] = (0.5, 0.8, 0.95, 0.99)) -> DraftStop:
    return DraftStop(EDGES, acceptance, stop_below)


def test_acceptance_is_read_from_the_gaps_bin():
    r = rule(0.5)
    assert [r.acceptance_at(g) for g in (0.0, 0.49, 0.5, 1.5, 7.0)] == [0.5, 0.5, 0.8, 0.95, 0.99]
    assert DraftStop.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    "edges, acceptance, bound",
    [
        ((0.1, 1.0), (0.5, 1.0), 0.5),
        ((0.0, 1.0), (0.5,), 0.5),
        ((0.0, 1.0, 0.5), (0.5, 0.6, 0.7), 0.5),
        ((0.0, 1.0), (0.5, 1.2), 0.5),
        ((0.0, 1.0), (0.5, 1.0), 1.5),
    ],
)
def test_a_malformed_rule_is_refused(edges, acceptance, bound):
    with pytest.raises(ValueError):
        DraftStop(edges, acceptance, bound)


def test_the_target_never_gets_a_rule():
    stops = draft_stops({"t": rule(0.5), "d": rule(0.4)}, ["t", "d", "x"])
    assert list(stops) == [1] and stops[1].stop_below == 0.4


@pytest.mark.parametrize("stop_below", [0.3, 0.7, 1.0])
def test_greedy_output_is_the_targets_and_drafts_end_early(stop_below):
    plain = Chain([TARGET, ROUGH], gammas=[8])
    stopping = Chain([TARGET, ROUGH], gammas=[8], draft_stop={plain.drafters[1].name: rule(stop_below)})
    stops = drafted_plain = drafted = 0
    for prompt in PROMPTS:
        want = Chain([TARGET]).generate(prompt, max_new_tokens=40).tokens
        a, b = plain.generate(prompt, max_new_tokens=40), stopping.generate(prompt, max_new_tokens=40)
        assert a.tokens == want and b.tokens == want
        stops += b.stats.levels[1].draft_stops
        drafted_plain += a.stats.levels[0].num_draft_tokens / a.stats.levels[0].num_drafts
        drafted += b.stats.levels[0].num_draft_tokens / b.stats.levels[0].num_drafts
        if stop_below == 1.0:  # every token's chance is below 1: no draft is longer than one token
            assert b.stats.levels[0].num_draft_tokens <= b.stats.levels[0].num_drafts
    assert stops > 0 and drafted < drafted_plain  # shorter drafts per round, never another output


def test_a_sure_drafter_is_never_stopped():
    sure = (1.0, 1.0, 1.0, 1.0)
    chain = Chain([TARGET, ROUGH], gammas=[8])
    chain.draft_stop = {chain.drafters[1].name: rule(0.99, sure)}
    out = chain.generate(PROMPTS[1], max_new_tokens=40)
    assert out.stats.levels[1].draft_stops == 0


def test_sampling_and_deeper_bottoms_ignore_the_rule():
    two = Chain([TARGET, ROUGH], gammas=[6])
    two.draft_stop = {two.drafters[1].name: rule(1.0)}
    sampled = two.generate(PROMPTS[0], max_new_tokens=30, temperature=1.0, seed=3)
    assert sampled.stats.levels[1].draft_stops == 0  # the rule reads greedy agreement only
    three = Chain([TARGET, perturbed_copy(TARGET, 0.01, seed=2), ROUGH], gammas=[6, 3])
    three.draft_stop = {three.drafters[2].name: rule(1.0)}
    greedy = three.generate(PROMPTS[0], max_new_tokens=30)
    assert greedy.stats.levels[2].draft_stops == 0  # its calibration is against the target, not level 1


def test_the_model_drafters_gap_is_its_top_two_logits():
    chain = Chain([TARGET, ROUGH], gammas=[4])
    d = chain.drafters[1]
    ids = torch.tensor(PROMPTS[1])
    d.reset()
    logits = d.score(ids)[-1]
    d.reset()
    token, gap = d.score_argmax_gap(ids)
    top = logits.topk(2)
    assert int(token) == int(top.indices[0]) and gap == pytest.approx(float(top.values[0] - top.values[1]), abs=1e-5)
    assert d.processed == len(PROMPTS[1])


def test_gap_bins_count_agreement_per_bin():
    greedy = np.array([1.0, 0.0, 1.0, 1.0, 0.5], dtype=np.float32)
    gaps = np.array([0.01, 0.02, 0.3, 5.0, 0.07], dtype=np.float32)
    bins = _gap_bins(greedy, gaps)
    assert bins["edges"] == list(GAP_EDGES)
    assert bins["positions"] == [2, 1, 0, 1, 0, 0, 0, 1]
    assert bins["agreed"] == [1.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert _gap_bins(greedy, gaps[:3]) == {}  # a resumed run's older traces have no gaps: no bins


def gap_profile(with_bins: bool = True):
    """A two-member synthetic profile whose drafter disagrees only at small gaps."""
    from polyplan.documents import AcceptancePair, Candidate, LatencyCurve, Profile

    new = [1, 2, 4, 8, 16, 32]
    costs = {"target": 0.06, "draft": 0.01}
    positions = [100, 100, 100, 100, 100, 100, 100, 200]
    agreed = [50, 70, 80, 95, 100, 100, 100, 200]
    bins = {"edges": list(GAP_EDGES), "positions": positions, "agreed": agreed} if with_bins else {}
    return Profile(
        pool="synthetic",
        target="target",
        candidates=[Candidate(name=n, source=f"org/{n}", dtype="float32") for n in costs],
        latency={
            n: LatencyCurve(new_tokens=new, context=[64, 512], median_s=[[t * (1 + 0.02 * (k - 1)) for k in new]] * 2)
            for n, t in costs.items()
        },
        pairs=[
            AcceptancePair(
                verifier="target", drafter="draft", greedy=895 / 900, sampling=0.9, positions=900, gap_bins=bins
            )
        ],
        temperature=1.0,
        machine={"summary": "synthetic"},
    )


def test_the_plan_carries_a_calibrated_stop_at_the_theorems_bound(tmp_path):
    from polyplan.planner import optimize
    from polyplan.planner.draft_stop import PRIOR_POSITIONS
    from polyplan.theory.draft_stop import stop_bound

    path = tmp_path / "p.json"
    gap_profile().save(path)
    plan, _ = optimize(path, predictor="iid")
    assert plan.names == ["target", "draft"]
    rule = DraftStop.from_dict(plan.draft_stop["draft"])
    alpha = 895 / 900
    assert rule.acceptance[0] == pytest.approx((50 + PRIOR_POSITIONS * alpha) / (100 + PRIOR_POSITIONS), abs=1e-4)
    assert rule.acceptance[-1] == pytest.approx(1.0, abs=1e-3)
    t_target = [0.06 * (1 + 0.02 * (k - 1)) for k in (1, plan.gammas[0] + 1)]
    slope = (t_target[1] - t_target[0]) / plan.gammas[0]
    want = stop_bound(0.01, slope, alpha, plan.time_per_token)
    assert rule.stop_below == pytest.approx(want, abs=1e-4) and 0 < rule.stop_below < 1
    assert plan.__class__.from_dict(plan.to_dict()).draft_stop == plan.draft_stop


def test_no_stop_without_bins_or_when_sampling(tmp_path):
    from polyplan.planner import optimize

    old = tmp_path / "old.json"
    gap_profile(with_bins=False).save(old)
    assert optimize(old, predictor="iid")[0].draft_stop == {}
    new = tmp_path / "new.json"
    gap_profile().save(new)
    assert optimize(new, predictor="iid", mode="sampling")[0].draft_stop == {}


def test_stop_bound_is_the_pass_cost_over_the_expected_return():
    from polyplan.theory.draft_stop import check_draft_stop, stop_bound

    assert check_draft_stop(4)
    assert stop_bound(0.01, 0.002, 0.96, 0.025) == pytest.approx(0.012 / (0.96 * 0.025))
    assert stop_bound(0.05, 0.0, 0.5, 0.02) == 1.0  # a pass never pays: one token a round
    with pytest.raises(ValueError):
        stop_bound(0.01, 0.0, 0.0, 0.02)


def test_calibration_never_falls_as_the_gap_grows():
    from polyplan.planner.draft_stop import _nondecreasing

    assert _nondecreasing([(0.5, 10), (0.9, 10), (0.7, 30), (1.0, 5)]) == pytest.approx([0.5, 0.75, 0.75, 1.0])
    assert _nondecreasing([(0.2, 1), (0.4, 1)]) == [0.2, 0.4]
