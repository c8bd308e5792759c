"""How sure the planner is: intervals from the profile's own spread, and the robust choice among
near-equal plans (polyplan/planner/intervals.py, choice.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from polyplan.documents import LatencyCurve, Plan
from polyplan.documents.traces import Traces
from polyplan.planner import IidPredictor, ReplayPredictor, optimize, search
from polyplan.planner.choice import choose
from polyplan.planner.intervals import acceptance_groups, count_passes, plan_intervals

from test_planner import make_profile, save

REPO = Path(__file__).resolve().parents[1]


def segment_traces(rates: dict[tuple[str, str], list[float]], *, length: int = 200, seed: int = 0) -> Traces:
    """0/1 greedy traces, one segment (prompt) per rate, each position accepted with that rate."""
    rng = np.random.default_rng(seed)
    segments = len(next(iter(rates.values())))
    out = {"segments": np.arange(segments + 1, dtype=np.int64) * length}
    for (v, d), per_prompt in rates.items():
        out[f"greedy/{v}/{d}"] = np.concatenate([(rng.random(length) < r).astype(np.float32) for r in per_prompt])
    return Traces(out)


def with_latency_spread(prof, iqr_fraction: float = 0.1, repeats: int = 5):
    for name, c in prof.latency.items():
        prof.latency[name] = LatencyCurve(
            c.new_tokens, c.context, c.median_s, [[m * iqr_fraction for m in row] for row in c.median_s], repeats
        )
    return prof


TWO = {"target": 1.0, "draft": 0.05}


def two_level(per_prompt: list[float], *, latency_spread: bool = True):
    prof = make_profile(TWO, {("target", "draft"): float(np.mean(per_prompt))})
    if latency_spread:
        with_latency_spread(prof)
    return prof, segment_traces({("target", "draft"): per_prompt})


QUANTILES = [(0.25, 0.75), (0.1, 0.9), (0.02, 0.98)]


@pytest.mark.parametrize("kind", ["replay", "iid"])
def test_interval_is_a_percentile_spread_around_the_estimate(kind):
    """The interval is made of the replicates' quantiles: wider quantiles give a strictly wider
    interval on both sides, and with six disagreeing prompts the point estimate lies strictly
    inside (not on a bound the interval was widened to). The target alone does not depend on
    acceptance: its time spreads by latency only, and its speedup over itself is 1 in every
    replicate (the plans share their latency draws)."""
    prof, tr = two_level([0.9, 0.5, 0.8, 0.6, 0.95, 0.4])
    pred = ReplayPredictor(prof, tr, horizon=64) if kind == "replay" else IidPredictor(prof, horizon=64)
    plan, alone = pred.best(("target", "draft")), pred.best(("target",))
    sets = [plan_intervals(pred, [plan, alone], traces=tr, quantiles=q).intervals for q in QUANTILES]
    for (narrow, _), (wide, _) in pairwise(sets):
        assert wide.time_per_token[0] < narrow.time_per_token[0] and narrow.time_per_token[1] < wide.time_per_token[1]
        assert wide.speedup[0] < narrow.speedup[0] and narrow.speedup[1] < wide.speedup[1]
    for iv, _ in sets:
        lo, hi = iv.time_per_token
        assert lo < plan.time_per_token < hi and lo < hi
        assert iv.speedup[0] < plan.speedup < iv.speedup[1]
    for _, iv in sets:
        assert alone.time_per_token * 0.8 < iv.time_per_token[0] < alone.time_per_token < iv.time_per_token[1]
        assert iv.speedup == pytest.approx((1.0, 1.0), abs=1e-12)


def test_replay_interval_is_the_bootstrap_of_the_prompts_own_replays():
    """Without latency spread, each replicate of the replay predictor is the mean of resampled
    prompts' own time per token (every prompt replays the same number of tokens here): the bounds
    are the quantiles of that bootstrap, drawn here independently from each prompt replayed on its
    own, and the speedup bounds are the target's time over the time bounds."""
    prof, tr = two_level([0.9, 0.5, 0.8, 0.6, 0.95, 0.4], latency_spread=False)
    pred = ReplayPredictor(prof, tr, horizon=64)
    e = pred.best(("target", "draft"))
    key = "greedy/target/draft"
    per_prompt = np.array(
        [
            ReplayPredictor(prof, Traces({"segments": np.array([0, len(part)]), key: part}), horizon=64)
            .predict(e.chain, e.gammas)
            .time_per_token
            for part in tr.per_prompt("greedy", "target", "draft")
        ]
    )
    assert per_prompt.mean() == pytest.approx(e.time_per_token, rel=1e-9)
    rng = np.random.default_rng(12345)
    means = per_prompt[rng.integers(0, len(per_prompt), size=(50_000, len(per_prompt)))].mean(axis=1)
    target_time = pred.best(("target",)).time_per_token
    for q in QUANTILES:
        iv = plan_intervals(pred, [e], traces=tr, quantiles=q).intervals[0]
        # 2000 replicates of a discrete bootstrap (six prompts) against 50000: within a tenth of
        # the prompts' spread (a wrong quantile or resampling is off by several tenths)
        assert iv.time_per_token == pytest.approx(tuple(np.quantile(means, q)), abs=0.1 * per_prompt.std()), q
        lo, hi = iv.time_per_token
        assert iv.speedup == pytest.approx((target_time / hi, target_time / lo), rel=1e-3)


def test_counted_passes_re_time_to_the_predictors_own_estimate():
    """The interval re-times counted passes; at the measured medians they must give back exactly
    what the replay predictor predicted (otherwise the interval is about another plan)."""
    prof, tr = two_level([0.9, 0.5, 0.8, 0.6])
    pred = ReplayPredictor(prof, tr, horizon=64)
    for chain, gammas in [(("target", "draft"), (3,)), (("target", "draft"), (9,))]:
        counts = count_passes(pred, chain, gammas)
        time = sum(n_passes * prof.latency[m](n, pred.context) for c in counts.passes for (m, n), n_passes in c.items())
        assert time / counts.tokens.sum() == pytest.approx(pred.predict(chain, gammas).time_per_token, rel=1e-9)


def test_no_spread_in_the_profile_means_no_interval_width():
    prof, tr = two_level([0.7] * 1, latency_spread=False)  # one prompt, latency without repeats' spread
    pred = ReplayPredictor(prof, tr, horizon=64)
    e = pred.best(("target", "draft"))
    iv = plan_intervals(pred, [e], traces=tr).intervals[0]
    assert iv.time_per_token == pytest.approx((e.time_per_token, e.time_per_token), rel=1e-9)


def _width(pred, chain, traces) -> float:
    e = pred.best(chain)
    lo, hi = plan_intervals(pred, [e], traces=traces).intervals[0].time_per_token
    return (hi - lo) / e.time_per_token


@pytest.mark.parametrize("kind", ["replay", "iid"])
def test_interval_widens_when_prompts_disagree_more(kind):
    """Same mean acceptance, more prompt-to-prompt spread: a wider interval."""
    widths = []
    for per_prompt in ([0.7] * 8, [0.8, 0.6] * 4, [0.95, 0.45] * 4):
        prof, tr = two_level(per_prompt)
        pred = ReplayPredictor(prof, tr, horizon=64) if kind == "replay" else IidPredictor(prof, horizon=64)
        widths.append(_width(pred, ("target", "draft"), tr))
    assert widths[0] < widths[1] < widths[2], widths
    assert widths[2] > 2 * widths[0], widths


def test_iid_without_traces_uses_the_profiles_categories():
    widths = []
    for rates in ({"chat": 0.7, "code": 0.7, "math": 0.7}, {"chat": 0.95, "code": 0.45, "math": 0.7}):
        prof = with_latency_spread(make_profile(TWO, {("target", "draft"): 0.7}))
        prof.pairs[0].by_category = {c: {"greedy": a, "sampling": a, "positions": 100} for c, a in rates.items()}
        assert acceptance_groups(prof, None, "greedy").source == "categories"
        widths.append(_width(IidPredictor(prof, horizon=64), ("target", "draft"), None))
    assert widths[1] > 2 * widths[0], widths


def robust_case():
    """Two drafters at equal cost: "bursty" is right on half the prompts and poor on the rest, "steady"
    is equally good everywhere. Bursty has the better point estimate (2% faster) but a much worse
    pessimistic case: its average rests on which prompts come."""
    costs = {"target": 1.0, "steady": 0.05, "bursty": 0.05}
    prof = make_profile(costs, {("target", "steady"): 0.7, ("target", "bursty"): 0.725})
    tr = segment_traces({("target", "steady"): [0.7] * 8, ("target", "bursty"): [0.95, 0.5] * 4})
    return prof, tr


def test_robust_choice_picks_the_better_pessimistic_case_where_point_choice_differs():
    prof, tr = robust_case()
    pred = ReplayPredictor(prof, tr, horizon=64)
    ranked = search(prof, pred).ranked
    assert ranked[0].chain == ("target", "bursty")  # the point estimate prefers bursty
    point = choose(pred, ranked, rule="point", traces=tr)
    robust = choose(pred, ranked, rule="robust", traces=tr)
    assert point.chosen.chain == ("target", "bursty")
    assert robust.chosen.chain == ("target", "steady")
    bursty, steady = point.interval_of(ranked[0]), robust.interval_of(robust.chosen)
    assert steady.pessimistic_time < bursty.pessimistic_time
    assert robust.chosen.time_per_token > ranked[0].time_per_token  # it gives up point estimate for safety
    assert "steady" in robust.reason and "worst plausible case" in robust.reason


def test_robust_choice_keeps_the_point_best_when_nothing_is_near(tmp_path):
    prof, tr = robust_case()
    pred = ReplayPredictor(prof, tr, horizon=64)
    ranked = search(prof, pred).ranked
    c = choose(pred, ranked, rule="robust", tolerance=0.0, traces=tr)  # only the point-best is considered
    assert c.chosen.chain == ("target", "bursty") and len(c.candidates) == 1


def test_optimize_records_the_choice_and_the_plan_round_trips(tmp_path):
    prof, tr = robust_case()
    prof.traces = "profile.traces.npz"
    tr.save(tmp_path / "profile.traces.npz")
    path = save(tmp_path, prof)
    plan, res = optimize(path)
    assert plan.names == ["target", "steady"] and res.best.chain == ("target", "steady")
    assert plan.settings["choose"] == "robust"
    choice = plan.choice
    assert choice["rule"] == "robust" and choice["quantiles"] == [0.1, 0.9]
    assert [c["chain"] for c in choice["candidates"]][:2] == [["target", "bursty"], ["target", "steady"]]
    assert [c["chosen"] for c in choice["candidates"]][:2] == [False, True]
    assert choice["spread"]["acceptance"] == "prompts" and choice["spread"]["groups"] == 8
    # the plan carries the chosen plan's interval; the runner-up whose average rests on which
    # prompts come has a much wider one, and a worse pessimistic time (why it was passed over)
    chosen = next(c for c in choice["candidates"] if c["chosen"])
    assert plan.prediction["interval"] == chosen["interval"]
    mine, bursty = plan.prediction["interval"], plan.runners_up[0]["interval"]
    width = {k: iv["speedup"][1] - iv["speedup"][0] for k, iv in (("steady", mine), ("bursty", bursty))}
    assert 0 < 2 * width["steady"] < width["bursty"], width
    assert mine["time_per_token_s"][1] < bursty["time_per_token_s"][1]
    # the point-best is now a runner-up, with its interval
    assert plan.runners_up[0]["chain"] == ["target", "bursty"] and "interval" in plan.runners_up[0]
    out = tmp_path / "plan.json"
    plan.save(out)
    again = Plan.load(out)
    assert again.choice == json.loads(json.dumps(plan.choice)) and again.to_dict() == json.loads(out.read_text())
    point, _ = optimize(path, choose="point")
    assert point.names == ["target", "bursty"] and point.choice["rule"] == "point"


def test_plans_written_before_intervals_still_load(tmp_path):
    old = json.loads((REPO / "profiles" / "smollm2-cpu.plan.json").read_text())
    old.pop("choice", None)
    old["prediction"].pop("interval", None)
    path = tmp_path / "old.plan.json"
    path.write_text(json.dumps(old))
    plan = Plan.load(path)
    assert plan.choice == {} and "interval" not in plan.prediction
    plan.save(tmp_path / "resaved.json")
    assert Plan.load(tmp_path / "resaved.json").names == plan.names


def test_cli_shows_the_interval_and_the_reason(tmp_path):
    prof, tr = robust_case()
    prof.traces = "profile.traces.npz"
    tr.save(tmp_path / "profile.traces.npz")
    path = save(tmp_path, prof)
    r = subprocess.run(
        [sys.executable, "-m", "polyplan.cli", "optimize", str(path), "-o", str(tmp_path / "plan.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert r.returncode == 0, r.stderr
    assert "p10-p90" in r.stdout and "chosen by rule robust" in r.stdout and "worst plausible" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "polyplan.cli",
            "optimize",
            str(path),
            "-o",
            str(tmp_path / "p.json"),
            "--choose",
            "luck",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--choose" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def prefill_case(quick_prefill_s_per_token: float, slow_prefill_s_per_token: float):
    """Two drafters of one cost and near one acceptance; "slowfill" (the point-best by a hair)
    reads prompts at ``slow_prefill_s_per_token``, "quickfill" at ``quick_prefill_s_per_token``."""
    from polyplan.documents.profile import PrefillCurve

    costs = {"target": 1.0, "slowfill": 0.05, "quickfill": 0.05}
    prof = make_profile(costs, {("target", "slowfill"): 0.81, ("target", "quickfill"): 0.79})
    lengths = [128, 512, 2048]
    per_token = {"target": 0.004, "slowfill": slow_prefill_s_per_token, "quickfill": quick_prefill_s_per_token}
    prof.prefill = {n: PrefillCurve(context=lengths, median_s=[c * x for x in lengths]) for n, c in per_token.items()}
    tr = segment_traces({("target", "slowfill"): [0.81] * 8, ("target", "quickfill"): [0.79] * 8})
    return prof, tr


def test_robust_choice_prefers_the_near_equal_plan_that_no_prompt_length_punishes(tmp_path):
    """Per token the two plans tie (the point estimate and the intervals cannot tell them apart);
    on a long prompt one drafter's prefill costs as much as the target's: the robust rule runs the
    other, says why, and records each plan's worst regret over prompt lengths."""
    prof, tr = prefill_case(0.001, 0.004)
    prof.traces = "profile.traces.npz"
    tr.save(tmp_path / "profile.traces.npz")
    path = save(tmp_path, prof)
    plan, _ = optimize(path)
    assert plan.names == ["target", "quickfill"]
    pred = ReplayPredictor(prof, tr, horizon=64)
    assert choose(pred, search(prof, pred).ranked, traces=tr).chosen.chain == ("target", "slowfill")
    regrets = {tuple(c["chain"]): c["prompt_length_regret"] for c in plan.choice["candidates"] if c["near_equal"]}
    assert regrets[("target", "quickfill")] < regrets[("target", "slowfill")]
    assert regrets[("target", "slowfill")] > 1.05 and "prompt lengths" in plan.choice["reason"]
    # the same prefills for both: the choice is the one the intervals alone make
    from polyplan.planner.optimize import plan_request_times

    prof, tr = prefill_case(0.001, 0.001)
    pred = ReplayPredictor(prof, tr, horizon=64)
    ranked = search(prof, pred).ranked
    priced = plan_request_times(prof, "greedy", pred.context, 16, tr, [64, 256])
    with_prices = choose(pred, ranked, traces=tr, request_times=priced)
    assert with_prices.chosen == choose(pred, ranked, traces=tr).chosen


def test_prompt_length_regrets_need_every_plan_priced_alike():
    from polyplan.planner.choice import prompt_length_regrets

    prof, tr = prefill_case(0.001, 0.004)
    pred = ReplayPredictor(prof, tr, horizon=64)
    a, b = search(prof, pred).ranked[:2]
    table = {a.chain: [1.0, 2.0], b.chain: [1.5, 1.0]}
    regrets = prompt_length_regrets([a, b], lambda e: table[e.chain])
    assert regrets == {(a.chain, a.gammas): 2.0, (b.chain, b.gammas): 1.5}
    assert prompt_length_regrets([a, b], lambda e: None if e is b else [1.0, 2.0]) == {}
    assert prompt_length_regrets([a], lambda e: [1.0]) == {}
