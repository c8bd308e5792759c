"""The request-time policy (proofs/prefill.md): which members a request uses, with which windows,
decided from its prompt length and horizon before any drafter is prefilled. Pure: no torch.

Built on the committed SmolLM2 profile with its 4-bit llama.cpp member, with prefill curves and
windowed acceptance set here (the committed profile predates their measurement): per-token prefill
costs as this project measured them on its CPU (the 4-bit drafter's prefill dearer than the float32
target's)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from polyplan.documents import Profile
from polyplan.documents.files import DocumentError
from polyplan.documents.profile import PrefillCurve
from polyplan.documents.traces import Traces
from polyplan.executor.adaptive import AdaptiveController
from polyplan.executor.control import RoundTiming
from polyplan.planner.policy import PRIOR_STRENGTH_RANGE, START_SAFETY, WINDOWED_START_SAFETY, Policy
from polyplan.planner.policy_build import build_policy, prompt_length_table

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "smollm2-llamacpp-cpu.json"
NAMES = ["smollm2-135m", "smollm2-135m:q4"]
PER_TOKEN = {"smollm2-135m": 0.0028, "smollm2-135m:q4": 0.0045}


def profile_with(per_token=PER_TOKEN, factor: float | None = None) -> Profile:
    prof = copy.deepcopy(Profile.load(PROFILE))
    prof.prefill = {n: PrefillCurve([128, 2048], [t * 128 + 0.01, t * 2048 + 0.01]) for n, t in per_token.items()}
    if factor is not None:
        full = {"greedy_sum": 100.0, "sampling_sum": 100.0, "positions": 100}
        part = {"greedy_sum": 100.0 * factor, "sampling_sum": 100.0 * factor, "positions": 100}
        prof.windows = {
            "sink": 4,
            "sizes": [256],
            "prompts": ["a"],
            "by_drafter": {NAMES[1]: {"full": full, "256": part}},
        }
    return prof


def make_policy(prof: Profile) -> Policy:
    traces = Traces.of_profile(prof, PROFILE)
    return build_policy(prof, NAMES, [8], mode="greedy", context=113.875, traces=traces)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return make_policy(profile_with())


def test_short_prompts_run_the_plan_long_prompts_with_short_answers_skip_the_drafter(policy):
    short = policy.start(dict(policy.priors), 100, 64)
    assert short is not None and short.decision.members == (0, 1)
    long = policy.start(dict(policy.priors), 3000, 16)
    assert long.decision.members == (0,)
    assert long.prediction.request_s == pytest.approx(long.prediction.autoregressive_request_s)


def test_the_start_follows_the_break_even_theorem(policy):
    """The drafter is used exactly when its prefill is repaid with the safety margin to spare."""
    req = policy.requests
    for prompt in (200, 800, 1600, 3000):
        for horizon in (8, 32, 64, 256, 1024):
            first = policy.start(dict(policy.priors), prompt, horizon)
            chain = req.request((0, 1), policy.tables[1].gammas[-1], dict(policy.priors), prompt, horizon)
            if first.decision.members == (0,):
                # nothing with the drafter (at any gammas the table gives) was clearly faster
                assert chain.request_s * (1 + START_SAFETY) >= chain.autoregressive_request_s * 0.97
            else:
                p = first.prediction
                assert p.request_s * (1 + START_SAFETY) < p.autoregressive_request_s
                assert horizon >= p.break_even_tokens


def test_a_free_drafter_prefill_never_sends_a_request_to_the_target_alone():
    policy = make_policy(profile_with({"smollm2-135m": 0.0028, "smollm2-135m:q4": 0.0}))
    for prompt in (100, 1000, 4000):
        assert policy.start(dict(policy.priors), prompt, 64).decision.members == (0, 1)


def test_windows_are_chosen_when_they_keep_enough_acceptance():
    keeps = make_policy(profile_with(factor=0.98))
    first = keeps.start(dict(keeps.priors), 3000, 256)
    assert first.decision.members == (0, 1) and first.windows == {1: 256}
    assert first.prediction.drafter_prefill_s[0] == pytest.approx(PER_TOKEN[NAMES[1]] * 260 + 0.01, rel=1e-6)
    # a short prompt is not cut by the window: the whole prompt is read
    assert keeps.start(dict(keeps.priors), 200, 256).prediction.drafter_prefill_s[0] == pytest.approx(
        PER_TOKEN[NAMES[1]] * 200 + 0.01, rel=0.05
    )
    loses = make_policy(profile_with(factor=0.2))
    assert loses.start(dict(loses.priors), 3000, 256).windows.get(1) is None


def test_a_window_measured_by_answer_position_is_priced_at_the_requests_horizon():
    """A window loses acceptance early in the answer and little once the answer fills it: measured
    by position, its factor is the mean over the answer's first H tokens, so long answers get the
    window and short ones do not (the same overall factor would price both alike)."""
    from polyplan.planner.request_model import mean_over_answer

    assert mean_over_answer([[0, 0.5], [32, 0.75], [64, 1.0]], 32) == pytest.approx(0.5)
    assert mean_over_answer([[0, 0.5], [32, 0.75], [64, 1.0]], 128) == pytest.approx((16 + 24 + 64) / 128)
    assert mean_over_answer([[0, 0.5]], 1000) == pytest.approx(0.5)  # the last step reaches on

    prof = profile_with(factor=0.5)
    row = prof.windows["by_drafter"][NAMES[1]]
    row["full"]["by_position"] = {"0": [32.0, 32.0, 32], "32": [32.0, 32.0, 32], "64": [36.0, 36.0, 36]}
    row["256"]["by_position"] = {"0": [8.0, 8.0, 32], "32": [16.0, 16.0, 32], "64": [36.0, 36.0, 36]}
    assert prof.window_factor_by_position(NAMES[1], 256, "greedy") == [[0, 0.25], [32, 0.5], [64, 1.0]]
    by_position = make_policy(prof)
    req = by_position.requests
    assert req.factor(1, 256) == 0.5  # no horizon: the overall factor
    assert req.factor(1, 256, 16) == pytest.approx(0.25)
    assert req.factor(1, 256, 256) == pytest.approx((32 * 0.25 + 32 * 0.5 + 192) / 256)
    assert req.to_dict()["window_options"] == type(req).from_dict(req.to_dict()).to_dict()["window_options"]
    option = req.window_options[NAMES[1]][0]  # a record in memory, the same lists in the plan
    assert (option.window, option.factor, option.by_position) == (256, 0.5, ((0, 0.25), (32, 0.5), (64, 1.0)))
    assert req.to_dict()["window_options"][NAMES[1]] == [[256, 0.5, [[0, 0.25], [32, 0.5], [64, 1.0]]]]
    flat = make_policy(profile_with(factor=0.5))
    long_answer = by_position.start(dict(by_position.priors), 3000, 512)
    assert long_answer.windows.get(1) == 256 and long_answer.decision.members == (0, 1)
    assert flat.start(dict(flat.priors), 3000, 512).windows.get(1) is None
    # a short answer reads the window where it keeps least: the target runs alone
    assert by_position.start(dict(by_position.priors), 3000, 16).decision.members == (0,)


def test_a_windowed_drafter_must_be_predicted_clearly_faster():
    """A window's share of the acceptance is uncertain: a windowed start needs WINDOWED_START_SAFETY
    over the target alone, an unwindowed one START_SAFETY."""
    keeps = make_policy(profile_with(factor=0.98))
    req = keeps.requests
    seen = set()
    for horizon in range(8, 400, 8):
        first = keeps.start(dict(keeps.priors), 3000, horizon)
        gain = first.prediction.autoregressive_request_s / first.prediction.request_s - 1
        windowed = bool(first.windows.get(1)) and first.decision.members == (0, 1)
        if windowed:
            assert gain > WINDOWED_START_SAFETY
        elif first.decision.members == (0,):
            # nothing windowed was predicted that much faster
            best = min(
                req.request((0, 1), (g,), dict(keeps.priors), 3000, horizon, {1: 256}).request_s for g in range(1, 17)
            )
            assert first.prediction.autoregressive_request_s <= best * (1 + WINDOWED_START_SAFETY) * 1.001
        seen.add("window" if windowed else first.decision.members)
    assert {"window", (0,)} <= seen  # both sides of the threshold were reached


def test_prompt_length_table_rows(policy):
    rows = prompt_length_table(policy, [64, 256])
    assert len(rows) == 12 and {r["max_new_tokens"] for r in rows} == {64, 256}
    at64 = [r for r in rows if r["max_new_tokens"] == 64]
    assert at64[0]["members"] == NAMES and at64[-1]["members"] == NAMES[:1]
    for r in rows:
        assert r["end_to_end_speedup"] >= 1.0 - 1e-9  # the start never predicts a loss
        assert r["request_s"] <= r["autoregressive_request_s"] + 1e-9


def test_policy_round_trip_keeps_the_request_model(policy):
    again = Policy.from_dict(policy.to_dict())
    for prompt, horizon in ((100, 64), (3000, 16), (1500, 256)):
        a, b = policy.start(dict(policy.priors), prompt, horizon), again.start(dict(again.priors), prompt, horizon)
        assert a.decision == b.decision and a.prediction.request_s == pytest.approx(b.prediction.request_s)


def test_the_safety_margins_and_the_prior_strength_range_travel_with_the_plan(policy):
    """They are calibrated on one machine: the plan stores the values it was made with, and a
    policy read back decides with them, not with this polyplan's constants."""
    doc = policy.to_dict()
    assert (doc["start_safety"], doc["windowed_start_safety"]) == (START_SAFETY, WINDOWED_START_SAFETY)
    assert doc["prior_strength_range"] == list(PRIOR_STRENGTH_RANGE)
    doc.update(start_safety=2.0, windowed_start_safety=3.0, prior_strength_range=[2.0, 64.0])
    stored = Policy.from_dict(doc)
    assert (stored.safety, stored.windowed_safety, stored.prior_strength_range) == (2.0, 3.0, (2.0, 64.0))
    assert stored.start_safety(False) == 2.0 and stored.start_safety(True) == 3.0
    assert Policy.from_dict(stored.to_dict()) == stored
    # the drafter is predicted faster, but not 3x: a margin of 200% declines it
    first = policy.start(dict(policy.priors), 100, 64)
    assert first.decision.members == (0, 1)
    assert first.prediction.autoregressive_request_s < first.prediction.request_s * 3
    assert stored.start(dict(stored.priors), 100, 64).decision.members == (0,)
    doc.update(prior_strength_range=[64.0, 2.0])
    with pytest.raises(DocumentError, match="prior strength range"):
        Policy.from_dict(doc)


def test_a_plan_made_before_the_margins_were_stored_decides_with_todays(policy):
    doc = policy.to_dict()
    for key in ("start_safety", "windowed_start_safety", "prior_strength_range"):
        del doc[key]
    old = Policy.from_dict(doc)
    assert (old.safety, old.windowed_safety) == (START_SAFETY, WINDOWED_START_SAFETY)
    stored = Policy.from_dict(policy.to_dict())  # the tables' times as the plan stores them
    assert old.prior_strength_range == PRIOR_STRENGTH_RANGE and old == stored
    for prompt, horizon in ((100, 64), (3000, 16), (3000, 256), (1500, 256)):
        assert old.start(dict(old.priors), prompt, horizon) == stored.start(dict(stored.priors), prompt, horizon)


def test_without_prefill_curves_the_start_leaves_it_to_the_tables():
    policy = make_policy(Profile.load(PROFILE))
    assert policy.start(dict(policy.priors), 3000, 64) is None
    controller = AdaptiveController(policy)
    assert controller.start(2, [1] * 3000, 64).members == (0, 1)  # the plan, as before


def test_controller_starts_alone_and_prices_the_cold_drafter(policy):
    controller = AdaptiveController(policy)
    prompt = [1] * 3000
    setting = controller.start(2, prompt, 16)
    assert setting.members == (0,) and "least expected request time" in setting.reason
    assert controller.cold_cost()[1] > 0
    tokens = list(prompt)
    for _ in range(15):  # one token per round; the drafter never pays for its prefill now
        tokens.append(7)
        assert controller.next_round(tokens).members == (0,)
    short = AdaptiveController(policy).start(2, [1] * 50, 64)
    assert short.members == (0, 1)


def test_horizon_uses_the_workloads_answer_lengths(policy):
    req = policy.requests
    assert req.lengths and req.observed_up_to == 64
    assert req.horizon(64) == pytest.approx(sum(min(64, n) for n in req.lengths) / len(req.lengths))
    assert req.horizon(256) >= req.horizon(64)


def test_a_plan_edited_after_its_policy_is_rebuilt_or_run_static(tmp_path):
    """issue 20 item 2: the stored policy is checked against the plan's members, gammas and mode."""
    import json

    from polyplan.assemble import plan_policy, stale_policy
    from polyplan.documents import Plan

    plan_path = ROOT / "profiles" / "smollm2-llamacpp-cpu.plan.json"
    plan = Plan.load(plan_path)
    stored = plan_policy(plan, plan_path)
    assert stale_policy(stored, plan) is None
    doc = json.loads(plan_path.read_text())
    doc["gammas"] = [g + 1 for g in doc["gammas"]]
    doc["profile"]["path"] = "nowhere/profile.json"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    notes: list[str] = []
    # its profile is not at hand: one note, then the plan runs static
    assert plan_policy(Plan.load(edited), edited, notes.append) is None
    assert len(notes) == 1 and "policy made for another plan (gammas" in notes[0]
    doc["profile"]["path"] = str(ROOT / "profiles" / "smollm2-llamacpp-cpu.json")
    edited.write_text(json.dumps(doc))
    notes.clear()
    rebuilt = plan_policy(Plan.load(edited), edited, notes.append)
    assert rebuilt is not None and list(rebuilt.plan.gammas[0]) == doc["gammas"]
    assert "rebuilding it from" in notes[0]


def test_a_padded_target_alone_in_a_chain_costs_its_padded_pass():
    """issue 20 item 3: inside a chain a llama.cpp target pads every pass (an empty block too) to
    min_pass tokens; its T(1) is its one-token decoding alone, the wrong price for its rounds alone."""
    from polyplan.planner.predictors import IidPredictor

    path = ROOT / "profiles" / "qwen-coder-llamacpp-target-cpu.json"
    prof = copy.deepcopy(Profile.load(path))
    names = ["qwen2.5-coder-1.5b:q4", "qwen2.5-coder-0.5b:q4"]
    curve = prof.latency[names[0]]
    context = 100.0
    plain = build_policy(prof, names, [4], mode="greedy", context=context)
    prof.candidates[0].min_pass = 8
    padded = build_policy(prof, names, [4], mode="greedy", context=context)
    alone = next(t for t in padded.tables if t.members == (0,))
    assert alone.times[0] == pytest.approx(curve(8, context))
    assert next(t for t in plain.tables if t.members == (0,)).times[0] == pytest.approx(curve(1, context))
    assert curve(8, context) > 1.5 * curve(1, context)  # the difference matters on this CPU
    assert padded.requests.target_min_pass == 8
    assert IidPredictor(prof, context=context).autoregressive_time() == pytest.approx(curve(1, context))


@pytest.mark.parametrize("factor", [None, 0.98])
def test_a_drafter_the_start_declined_is_not_brought_in_on_the_same_estimates(factor):
    """Later rounds price a cold drafter with the start's margin on the request's time: with no new
    evidence about it, no round takes the bet the start declined (found on a long summary: the
    start left the windowed drafter out, the next round brought it in at a 12% per-token gain)."""
    policy = make_policy(profile_with(factor=factor))
    declined = 0
    for prompt in (800, 1600, 3000):
        for horizon in (16, 32, 48, 64, 96, 128):
            controller = AdaptiveController(policy)
            tokens = [1] * prompt
            if controller.start(2, tokens, horizon).members != (0,):
                continue
            declined += 1
            for _ in range(horizon - 1):
                tokens.append(1)
                assert controller.next_round(tokens).members == (0,), (prompt, horizon, len(tokens))
    assert declined >= 3  # the start declined the drafter often enough for this to say something


def test_the_bench_splits_a_request_time_miss_into_prefills_and_decode(policy):
    """A run whose prefills took what was predicted and whose decode took twice as long shows a
    0% prefill error and a 50% decode error (the miss over what was measured); the target alone
    (transformers generate, no per-level record) gets only the whole request's error."""
    from polyplan.bench.predictions import request_predictions
    from polyplan.bench.report import request_error_text
    from polyplan.bench.results import AUTOREGRESSIVE, RunRecord

    ids = list(range(100))
    p = policy.start(dict(policy.priors), len(ids), 64, exact_horizon=True).prediction
    assert p.drafter_prefill_s[0] > 0  # the start uses the drafter on a short prompt
    levels = [
        {"name": NAMES[0], "prefill_time_s": p.target_prefill_s},
        {"name": NAMES[1], "prefill_time_s": p.drafter_prefill_s[0]},
    ]
    prefill = p.target_prefill_s + p.drafter_prefill_s[0]
    plan_s = prefill + 2 * p.decode_s
    records = [
        RunRecord("polyplan-plan", "a", 0, 64, plan_s, levels=levels),
        RunRecord(AUTOREGRESSIVE, "a", 0, 64, p.autoregressive_request_s * 1.1),
    ]
    out = request_predictions(records, policy, [("a", ids)], 64)
    plan, alone = out["errors"]["polyplan-plan"], out["errors"][AUTOREGRESSIVE]
    assert plan["prefill_median_error"] == pytest.approx(0.0, abs=1e-9)
    assert plan["decode_median_error"] == pytest.approx(0.5)
    assert plan["median_error"] == pytest.approx(p.decode_s / plan_s)
    assert alone["median_error"] == pytest.approx(0.1 / 1.1) and "prefill_median_error" not in alone
    assert "prefill 0.0%, decode 50.0%" in request_error_text(out["errors"])
    # the target's first pass also verified a first draft block of 15 tokens: its prefill is
    # compared with P at 115 tokens and the decode keeps the rest of the prediction
    first_pass = policy.requests.prefill_s(0, 115)
    levels = [dict(levels[0], prefill_tokens=115, prefill_time_s=first_pass), levels[1]]
    records[0] = RunRecord("polyplan-plan", "a", 0, 64, plan_s, levels=levels)
    row = request_predictions(records, policy, [("a", ids)], 64)["runs"][0]
    assert first_pass > p.target_prefill_s
    assert row["predicted_prefill_s"] == pytest.approx(first_pass + p.drafter_prefill_s[0])
    assert row["predicted_prefill_s"] + row["predicted_decode_s"] == pytest.approx(p.request_s)


def test_the_target_alone_in_polyplans_loop_is_priced_as_the_target_alone(policy):
    """``bench --also TARGET``: a row of the target alone in polyplan's own loop gets the target
    alone's price, its prefill without any drafter's, beside generate()'s row."""
    from polyplan.bench.predictions import request_predictions
    from polyplan.bench.results import AUTOREGRESSIVE, RunRecord

    ids = list(range(100))
    p = policy.start(dict(policy.priors), len(ids), 64, exact_horizon=True).prediction
    alone_s = p.autoregressive_request_s
    levels = [{"name": NAMES[0], "prefill_time_s": p.target_prefill_s, "prefill_tokens": 100}]
    records = [
        RunRecord(AUTOREGRESSIVE, "a", 0, 64, alone_s * 1.25),
        RunRecord("also-1", "a", 0, 64, alone_s, levels=levels),
    ]
    out = request_predictions(records, policy, [("a", ids)], 64, alone=["also-1"])
    assert out["errors"]["also-1"]["median_error"] == pytest.approx(0.0, abs=1e-9)
    assert out["errors"][AUTOREGRESSIVE]["median_error"] == pytest.approx(0.2)
    row = next(r for r in out["runs"] if r["method"] == "also-1")
    assert row["setting"] == [NAMES[0]] and row["predicted_s"] == pytest.approx(alone_s)
    assert row["predicted_prefill_s"] == pytest.approx(p.target_prefill_s)
    # without the name it is not priced at all
    assert "also-1" not in request_predictions(records, policy, [("a", ids)], 64)["errors"]


def test_a_request_priced_at_the_speed_measured_now():
    """Curves scaled by a calibration's factors: every member twice as slow doubles the request
    exactly; a faster drafter alone leaves the target's prefill and the target alone's request as
    they were. The bench reports the error of both prices."""
    from polyplan.bench.predictions import request_predictions
    from polyplan.bench.report import request_error_text
    from polyplan.bench.results import AUTOREGRESSIVE, RunRecord
    from polyplan.profiler.calibrate import SpeedFactor

    policy = make_policy(profile_with())
    req, alpha = policy.requests, dict(policy.priors)
    base = req.request((0, 1), (8,), alpha, 600, 64, {}, True)
    slow = req.at_speed({n: {"decode": 2.0, "prefill": 2.0} for n in NAMES}).request(
        (0, 1), (8,), alpha, 600, 64, {}, True
    )
    assert slow.request_s == pytest.approx(2 * base.request_s)
    assert slow.autoregressive_request_s == pytest.approx(2 * base.autoregressive_request_s)
    fast = req.at_speed({NAMES[1]: {"decode": 0.5, "prefill": 0.5}}).request((0, 1), (8,), alpha, 600, 64, {}, True)
    assert fast.target_prefill_s == pytest.approx(base.target_prefill_s)
    assert fast.drafter_prefill_s[0] == pytest.approx(base.drafter_prefill_s[0] / 2)
    assert fast.autoregressive_request_s == pytest.approx(base.autoregressive_request_s)
    assert fast.request_s < base.request_s
    assert req.latency[NAMES[1]](1, 64) > 0 and req.at_speed({}).latency == req.latency  # the original kept

    ids = list(range(100))
    p = policy.start(alpha, len(ids), 64, exact_horizon=True).prediction
    records = [
        RunRecord("polyplan-plan", "a", 0, 64, 2 * p.request_s),
        RunRecord(AUTOREGRESSIVE, "a", 0, 64, 2 * p.autoregressive_request_s),
    ]
    speed = {n: SpeedFactor(decode=2.0, prefill=2.0) for n in NAMES}
    out = request_predictions(records, policy, [("a", ids)], 64, speed)
    for method in ("polyplan-plan", AUTOREGRESSIVE):
        e = out["errors"][method]
        assert e["median_error"] == pytest.approx(0.5) and e["calibrated_median_error"] == pytest.approx(0.0, abs=1e-9)
    assert out["runs"][0]["calibrated_predicted_s"] == pytest.approx(2 * p.request_s)
    assert "at the speed measured now 0.0%" in request_error_text(out["errors"])


def test_members_measured_slower_in_the_chain_re_time_the_next_start(policy):
    """Costs as the chain pays them: the drafter's passes in the chain take 8x what the profile's
    curve prices them at; the next request starts on the request model re-timed by that
    measurement (a ratio of sums), so the start leaves the drafter out. Prefills re-time alike."""
    names = policy.names
    curve = policy.requests.latency[names[1]]
    prompt = list(range(100))
    controller = AdaptiveController(policy)
    assert controller.start(2, prompt, 64).members == (0, 1)
    slow = tuple((1, 8.0 * curve(1, 120), 1, 120) for _ in range(9))  # the first, cold, is left out
    prefill = ((0, 2.0 * policy.requests.prefill_s(0, 99), 99),)
    controller.observe_round(RoundTiming(1.0, 10, 0.0, slow, prefill + prefill))
    factors = controller.speed.factors(names)
    assert factors[names[1]] == pytest.approx({"decode": 8.0, "prefill": 1.0})
    assert factors[names[0]] == pytest.approx({"decode": 1.0, "prefill": 2.0})
    again = controller.start(2, prompt, 64)
    assert again.members == (0,) and "least expected request time" in again.reason
    assert controller.target_prefill_s == pytest.approx(2.0 * policy.requests.prefill_s(0, len(prompt)))
    # the evidence fades with the requests that follow: SPEED_MEMORY per start
    assert controller.speed.decode[1][2] == pytest.approx(4.0)
    # as profiled, the same request still starts with the drafter
    assert AdaptiveController(policy).start(2, prompt, 64).members == (0, 1)


def test_the_measured_speeds_print_as_one_line(policy):
    controller = AdaptiveController(policy)
    controller.start(2, list(range(100)), 64)
    assert controller.speed.summary(policy.names) == ""
    curve = policy.requests.latency[policy.names[1]]
    cold = ((1, 10 * curve(1, 120), 1, 120),)  # a member's first pass in the process: left out
    passes = cold + tuple((1, 1.5 * curve(1, 120), 1, 120) for _ in range(4))
    prefill = (0, 2.0 * policy.requests.prefill_s(0, 99), 99)
    controller.observe_round(RoundTiming(1.0, 10, 0.0, passes, (prefill, prefill)))
    assert controller.speed.summary(policy.names) == "smollm2-135m prefill 2.00; smollm2-135m:q4 decode 1.50 (4 passes)"


def test_a_request_priced_as_the_executor_retimed_it_from_the_chains_own_passes():
    """The adaptive plan's runs carry the speed factors their start re-timed the request model by
    (the chain's passes in earlier requests): a run whose factors say twice as slow and that took
    twice the profile's prediction is predicted exactly that way; a run without factors (a static
    chain) gets no such price, and factors of {} (nothing measured yet) price as the profile."""
    from polyplan.bench.predictions import request_predictions
    from polyplan.bench.report import request_error_text
    from polyplan.bench.results import RunRecord

    policy = make_policy(profile_with())
    ids = list(range(100))
    first = policy.start(dict(policy.priors), len(ids), 64, exact_horizon=True)
    p, d = first.prediction, first.decision
    assert len(d.members) > 1  # a setting with a drafter, so its prefill and decode are both priced
    chosen = {"members": list(d.members), "gammas": list(d.gammas), "windows": sorted(first.windows.items())}
    slow = {n: {"decode": 2.0, "prefill": 2.0} for n in NAMES}
    records = [
        RunRecord("polyplan-plan", "a", 0, 64, 2 * p.request_s, start_speed=slow, start_setting=chosen),
        RunRecord("polyplan-plan", "a", 1, 64, 2 * p.request_s, start_speed=slow, start_setting=chosen),
    ]
    out = request_predictions(records, policy, [("a", ids)], 64)
    e = out["errors"]["polyplan-plan"]
    assert e["median_error"] == pytest.approx(0.5)
    assert e["retimed_median_error"] == pytest.approx(0.0, abs=1e-9)
    assert out["runs"][0]["retimed_predicted_s"] == pytest.approx(2 * p.request_s)
    assert "re-timed it from the chain's earlier passes 0.0%" in request_error_text(out["errors"])
    # one run measured nothing before its start: the median of the two runs' predictions
    records[1] = RunRecord("polyplan-plan", "a", 1, 64, 2 * p.request_s, start_speed={}, start_setting=chosen)
    row = request_predictions(records, policy, [("a", ids)], 64)["runs"][0]
    assert row["retimed_predicted_s"] == pytest.approx(1.5 * p.request_s)
    # the setting the run's start chose is what is priced, not what a start would choose after the fact
    alone = dict(chosen, members=[0], gammas=[], windows=[])
    records = [RunRecord("polyplan-plan", "a", 0, 64, 2 * p.request_s, start_speed={}, start_setting=alone)]
    row = request_predictions(records, policy, [("a", ids)], 64)["runs"][0]
    assert row["retimed_predicted_s"] == pytest.approx(p.autoregressive_request_s)
    # runs without factors: no re-timed price at all
    plain = [RunRecord("polyplan-plan", "a", 0, 64, 2 * p.request_s)]
    out = request_predictions(plain, policy, [("a", ids)], 64)
    assert "retimed_median_error" not in out["errors"]["polyplan-plan"]
    assert "retimed_predicted_s" not in out["runs"][0]
