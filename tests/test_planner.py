"""The planner on synthetic profiles: it picks the obviously best chain, respects the chain rules,
explains every model's place, and its gamma search finds the exhaustive optimum."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from polyplan.documents import AcceptancePair, Candidate, LatencyCurve, Profile
from polyplan.documents.traces import Traces
from polyplan.errors import UserError
from polyplan.planner import (
    IidPredictor,
    ReplayPredictor,
    chain_problem,
    enumerate_chains,
    optimize,
    search,
)
from polyplan.theory.chain_model import predict_chain

NEW = [1, 2, 4, 8, 16, 32]


def curve(t1: float, slope: float = 0.0) -> LatencyCurve:
    """Nearly flat in n (memory bound), like the measured curves: T(n) = t1 * (1 + slope * (n - 1))."""
    return LatencyCurve(new_tokens=NEW, context=[64, 512], median_s=[[t1 * (1 + slope * (n - 1)) for n in NEW]] * 2)


def make_profile(
    costs: dict[str, float],
    alphas: dict[tuple[str, str], float],
    *,
    target: str = "target",
    point_mass: tuple[str, ...] = (),
    sampling_factor: float = 0.9,
) -> Profile:
    """``costs``: T(1) per candidate (target included); ``alphas[(verifier, drafter)]`` greedy rates."""
    return Profile(
        pool="synthetic",
        target=target,
        candidates=[Candidate(name=n, source=f"org/{n}", point_mass=n in point_mass, dtype="bfloat16") for n in costs],
        latency={n: curve(t, 0.01) for n, t in costs.items()},
        pairs=[
            AcceptancePair(verifier=v, drafter=d, greedy=a, sampling=a * sampling_factor, positions=1000)
            for (v, d), a in alphas.items()
        ],
        temperature=1.0,
        machine={"summary": "synthetic"},
    )


def all_pairs(costs: dict[str, float], rate) -> dict[tuple[str, str], float]:
    """Every (more expensive verifier, cheaper drafter) pair, with ``rate(verifier, drafter)``."""
    names = sorted(costs, key=lambda n: -costs[n])
    return {(v, d): rate(v, d) for v, d in itertools.combinations(names, 2)}


# A pool where a middle model clearly helps (target slow, mid accurate, tiny cheap but weak vs target).
THREE_LEVEL_COSTS = {"target": 1.0, "mid": 0.25, "tiny": 0.01}
THREE_LEVEL_ALPHAS = {("target", "mid"): 0.92, ("target", "tiny"): 0.55, ("mid", "tiny"): 0.85}


def save(tmp_path, profile: Profile, name: str = "profile.json"):
    path = tmp_path / name
    profile.save(path)
    return path


def exhaustive_best(predictor: IidPredictor, chain, max_gamma: int):
    best = None
    for g in itertools.product(range(1, max_gamma + 1), repeat=len(chain) - 1):
        t = predict_chain(predictor.alphas(chain), list(g), predictor.latencies(chain)).time_per_token
        if best is None or t < best[0]:
            best = (t, g)
    return best


def test_picks_obviously_best_two_level_chain():
    costs = {"target": 1.0, "good": 0.05, "bad": 0.5}
    alphas = {("target", "good"): 0.9, ("target", "bad"): 0.3, ("bad", "good"): 0.5}
    prof = make_profile(costs, alphas)
    pred = IidPredictor(prof)
    res = search(prof, pred, max_gamma=16)
    assert res.best.chain == ("target", "good")
    t, g = exhaustive_best(pred, ("target", "good"), 16)
    assert res.best.gammas == g
    assert res.best.time_per_token == pytest.approx(t)
    assert res.best.speedup == pytest.approx(1.0 / t, rel=1e-9)
    # Ranked list is sorted and contains autoregressive with speedup 1.
    times = [e.time_per_token for e in res.ranked]
    assert times == sorted(times)
    ar = next(e for e in res.ranked if e.chain == ("target",))
    assert ar.speedup == pytest.approx(1.0)


def test_useful_middle_model_is_included_and_explained():
    prof = make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)
    res = search(prof, IidPredictor(prof), max_gamma=16)
    assert res.best.chain == ("target", "mid", "tiny")
    assert res.best_two_level is not None and len(res.best_two_level.chain) == 2
    assert res.best.time_per_token < res.best_two_level.time_per_token
    verdict = {v.model: v for v in res.insertion}
    assert verdict["mid"].included and verdict["mid"].gain > 1
    # "time without mid" is exactly the best chain without it.
    assert verdict["mid"].chain_compared == ("target", "tiny")
    assert verdict["mid"].time_compared == pytest.approx(
        next(e for e in res.ranked if e.chain == ("target", "tiny")).time_per_token
    )


def test_useless_middle_model_is_excluded_and_the_reason_says_why():
    costs = {"target": 1.0, "mid": 0.6, "draft": 0.03}
    alphas = {("target", "mid"): 0.8, ("target", "draft"): 0.8, ("mid", "draft"): 0.8}
    prof = make_profile(costs, alphas)
    res = search(prof, IidPredictor(prof), max_gamma=16)
    assert res.best.chain == ("target", "draft")
    v = next(v for v in res.insertion if v.model == "mid")
    assert not v.included
    assert v.gain is not None and v.gain < 1
    assert v.level == 2 and v.chain_compared == ("target", "mid", "draft")
    assert "stays out" in v.reason and "gain" in v.reason
    # The stated time with it matches an independent evaluation at its gammas.
    pred = IidPredictor(prof)
    t = predict_chain(pred.alphas(v.chain_compared), list(v.gammas_compared), pred.latencies(v.chain_compared))
    assert v.time_compared == pytest.approx(t.time_per_token)


def test_point_mass_drafter_only_at_the_bottom_in_every_order():
    costs = {"target": 1.0, "mid": 0.2, "small": 0.05, "ngram": 0.001}
    prof = make_profile(
        costs,
        all_pairs(costs, lambda v, d: 0.7) | {("ngram", "small"): 0.5, ("ngram", "mid"): 0.5},
        point_mass=("ngram",),
    )
    for all_orders in (False, True):
        chains = list(enumerate_chains(prof, context=64, all_orders=all_orders))
        assert chains, "no chains enumerated"
        for chain in chains:
            assert "ngram" not in chain[:-1], chain
    assert chain_problem(prof, ("target", "ngram", "small")) is not None
    res = search(prof, IidPredictor(prof), max_gamma=8, all_orders=True)
    assert "ngram" not in res.best.chain[:-1]


def test_default_order_puts_cheaper_models_lower():
    costs = {"target": 1.0, "b": 0.3, "a": 0.1, "c": 0.02}  # names not in cost order on purpose
    reverse = {(d, v): 0.8 for (v, d) in all_pairs(costs, lambda v, d: 0) if v != "target"}
    prof = make_profile(costs, all_pairs(costs, lambda v, d: 0.8) | reverse)
    chains = list(enumerate_chains(prof, context=64))
    assert len(chains) == 8  # every subset of the 3 non-targets, one order each
    for chain in chains:
        t1 = [costs[n] for n in chain]
        assert t1 == sorted(t1, reverse=True), chain
    assert len(list(enumerate_chains(prof, context=64, all_orders=True))) == 1 + 3 + 6 + 6


def test_chains_without_measured_pairs_are_skipped():
    costs = {"target": 1.0, "mid": 0.2, "tiny": 0.01}
    prof = make_profile(costs, {("target", "mid"): 0.9, ("target", "tiny"): 0.6})  # no (mid, tiny)
    chains = set(enumerate_chains(prof, context=64))
    assert chains == {("target",), ("target", "mid"), ("target", "tiny")}


def test_coordinate_search_matches_exhaustive_on_random_deep_chains():
    rnd = random.Random(1)
    for _ in range(4):
        costs = {
            "target": 1.0,
            "m2": rnd.uniform(0.2, 0.5),
            "m3": rnd.uniform(0.03, 0.15),
            "m4": rnd.uniform(0.001, 0.02),
        }
        alphas = all_pairs(costs, lambda v, d: rnd.uniform(0.5, 0.95))
        prof = make_profile(costs, alphas)
        pred = IidPredictor(prof)
        chain = ("target", "m2", "m3", "m4")
        est = pred.best(chain, max_gamma=8)
        t, _ = exhaustive_best(pred, chain, 8)
        assert est.time_per_token <= t * 1.005


def bernoulli_traces(prof: Profile, mode: str, *, segments: int, length: int, seed: int = 0) -> Traces:
    rng = np.random.default_rng(seed)
    out = {"segments": np.arange(segments + 1, dtype=np.int64) * length}
    for p in prof.pairs:
        a = p.alpha(mode)
        out[f"{mode}/{p.verifier}/{p.drafter}"] = (rng.random(segments * length) < a).astype(np.float32)
    return Traces(out)


def test_replay_agrees_with_iid_on_iid_bernoulli_traces():
    prof = make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)
    traces = bernoulli_traces(prof, "greedy", segments=20, length=400)
    iid = IidPredictor(prof)
    replay = ReplayPredictor(prof, traces, passes=2)
    for chain, gammas in [(("target", "mid"), (5,)), (("target", "mid", "tiny"), (6, 3)), (("target", "tiny"), (3,))]:
        a, b = iid.predict(chain, gammas), replay.predict(chain, gammas)
        assert b.time_per_token == pytest.approx(a.time_per_token, rel=0.04), chain
        assert b.mean_acceptance_length == pytest.approx(a.mean_acceptance_length, rel=0.05), chain


def test_replay_follows_the_trace_position_by_position():
    """Acceptance in runs (like a prompt-lookup drafter): 50 accepted positions, then 50 rejected.
    With gamma 8 a period of 100 tokens takes exactly 6 rounds in the run (9+9+9+9+9+6 tokens)
    and 49 one-token rounds after it, so the acceptance length is 100/55 -- not the i.i.d. value
    for the same mean rate 0.5."""
    costs = {"target": 1.0, "ngram": 0.001}
    prof = make_profile(costs, {("target", "ngram"): 0.5}, point_mass=("ngram",))
    runs = np.concatenate([np.ones(50), np.zeros(50)] * 40).astype(np.float32)
    traces = Traces({"greedy/target/ngram": runs, "segments": np.array([0, len(runs)])})
    iid, replay = IidPredictor(prof), ReplayPredictor(prof, traces, passes=1)
    a, b = iid.predict(("target", "ngram"), (8,)), replay.predict(("target", "ngram"), (8,))
    assert b.mean_acceptance_length == pytest.approx(100 / 55, rel=1e-3)
    assert a.mean_acceptance_length == pytest.approx((1 - 0.5**9) / 0.5)
    # The best gamma differs too: in runs of rejections long drafts are wasted only on the cheap drafter.
    assert b.time_per_token != pytest.approx(a.time_per_token, rel=0.02)


def test_optimize_writes_a_complete_plan(tmp_path):
    prof = make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)
    path = save(tmp_path, prof)
    plan, res = optimize(path, top=3)
    assert plan.names == ["target", "mid", "tiny"]
    assert plan.gammas == list(res.best.gammas)
    p = plan.prediction
    # T_target(1) = 1.0; over a 64-token generation the first token comes with the prefill
    assert p["autoregressive_time_per_token_s"] == pytest.approx(63 / 64)
    assert p["speedup"] == pytest.approx(63 / 64 / p["time_per_token_s"])
    assert len(p["tokens_per_pass"]) == 3 and p["tokens_per_pass"][0] == pytest.approx(p["mean_acceptance_length"])
    assert p["alphas"] == [0.92, 0.85]
    assert len(plan.runners_up) == 3
    assert plan.runners_up[0]["time_per_token_s"] >= p["time_per_token_s"]
    assert {v["model"] for v in plan.insertion} == {"mid", "tiny"}
    # the recorded two-level plan is the fastest single drafter (brute force over gamma) at a gamma
    # within the horizon simulator's noise (~1.5% standard error) of the brute-force best
    iid = IidPredictor(prof, horizon=64)
    fastest = min((iid.predict(("target", d), (g,)).time_per_token, d) for d in ("mid", "tiny") for g in range(1, 17))
    assert plan.two_level["chain"] == ["target", fastest[1]]
    recorded = iid.predict(tuple(plan.two_level["chain"]), tuple(plan.two_level["gammas"])).time_per_token
    assert plan.two_level["time_per_token_s"] == pytest.approx(recorded)
    assert fastest[0] <= recorded <= fastest[0] * 1.03
    assert "iid" in plan.predictions and "replay" not in plan.predictions  # no traces in this profile
    assert plan.profile["sha256"] and plan.check_profile(path)
    # a profile that does not say how it timed T(1) timed it the old way: its bench calibrates so
    assert plan.profile["one_token_runs"] is False
    assert plan.profile["prefill_warmup"] is False  # nor how it timed its prefills: cold


def test_optimize_with_replay_records_both_predictors(tmp_path):
    prof = make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)
    prof.traces = "profile.traces.npz"
    bernoulli_traces(prof, "greedy", segments=4, length=200).save(tmp_path / "profile.traces.npz")
    path = save(tmp_path, prof)
    plan, _ = optimize(path, predictor="replay", top=2)
    assert plan.settings["predictor"] == "replay"
    assert set(plan.predictions) == {"iid", "replay"}
    assert plan.predictions["replay"]["time_per_token_s"] == pytest.approx(plan.time_per_token)


def test_replay_without_traces_is_a_user_error(tmp_path):
    from polyplan.errors import UserError

    path = save(tmp_path, make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS))
    with pytest.raises(UserError, match="traces"):
        optimize(path, predictor="replay")


def test_cli_optimize_prints_table_and_writes_plan(tmp_path):
    path = save(tmp_path, make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS))
    out = tmp_path / "plan.json"
    r = subprocess.run(
        [sys.executable, "-m", "polyplan.cli", "optimize", str(path), "-o", str(out), "--top", "2", "--export", "vllm"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    assert "target > mid > tiny" in r.stdout
    assert '"speculative_config"' in r.stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == "polyplan.plan" and len(doc["runners_up"]) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.json"], "no such file"),
        (["{profile}", "--mode", "beam"], "mode"),
        (["{profile}", "--predictor", "oracle"], "predictor"),
        (["{profile}", "--max-gamma", "0"], "max-gamma"),
        (["{profile}", "--export", "onnx"], "export"),
    ],
)
def test_cli_optimize_bad_input_is_one_line(tmp_path, args, message):
    path = save(tmp_path, make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS))
    args = [a.format(profile=path) for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "polyplan.cli", "optimize", *args, "-o", str(tmp_path / "p.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_insertion_verdicts_carry_the_papers_condition():
    prof = make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)
    res = search(prof, IidPredictor(prof), max_gamma=16)
    mid = next(v for v in res.insertion if v.model == "mid")
    c = mid.condition
    # Inserting mid into (target, tiny) at the chosen gammas gives back exactly the chosen chain.
    assert c["time_per_token_after"] == pytest.approx(res.best.time_per_token)
    assert c["improves"] and c["time_per_token_before"] > c["time_per_token_after"]
    # The accounting decomposition: change = new model's cost - verifier saving + other levels.
    change = c["time_per_token_after"] - c["time_per_token_before"]
    assert change == pytest.approx(c["new_model_cost"] - c["verifier_saving"] + c["other_levels_change"])


def test_default_context_comes_from_the_profiled_references(tmp_path):
    prof = make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)
    prof.traces = "profile.traces.npz"
    traces = bernoulli_traces(prof, "greedy", segments=2, length=40).as_dict()
    Traces({**traces, "prompt_lengths": np.array([100, 60])}).save(tmp_path / "profile.traces.npz")
    plan, _ = optimize(save(tmp_path, prof), max_new_tokens=None)  # steady state: the references' middle
    assert plan.settings["context"] == pytest.approx(80 + 20)
    plan, _ = optimize(save(tmp_path, prof))  # the middle of the planned 64-token generation
    assert plan.settings["context"] == pytest.approx(80 + 32) and plan.settings["max_new_tokens"] == 64
    plan, _ = optimize(save(tmp_path, prof), context=300)
    assert plan.settings["context"] == 300


def test_horizon_truncates_the_last_round():
    """Perfect acceptance, gamma 7: a steady round emits 8 tokens; a 20-token generation runs
    8 + 8 + 4 (its last round cut short), so both predictors see 3 target passes, not 2.5. In
    decode-only time the first pass, which carries the prompt, is prefill: 2 passes are timed."""
    costs = {"target": 1.0, "ngram": 0.0}
    prof = make_profile(costs, {("target", "ngram"): 1.0}, point_mass=("ngram",))
    prof.settings["max_new_tokens"] = 40
    traces = Traces({"greedy/target/ngram": np.ones(80, dtype=np.float32), "segments": np.array([0, 40, 80])})
    for steady, short in [
        (IidPredictor(prof), IidPredictor(prof, horizon=20)),
        (ReplayPredictor(prof, traces), ReplayPredictor(prof, traces, horizon=20)),
    ]:
        assert steady.predict(("target", "ngram"), (7,)).tokens_per_pass[0] == pytest.approx(8.0)
        e = short.predict(("target", "ngram"), (7,))
        t = steady.latencies(("target",))[0]
        assert e.tokens_per_pass[0] == pytest.approx(20 / 3)
        assert e.time_per_token == pytest.approx((t(8) + t(4)) / 20)


def test_replay_horizon_keeps_references_that_ended_early():
    """A reference shorter than the profile's reference length stopped at end-of-sequence: at any
    horizon its prompt is replayed for its own length; full-length references run to the horizon."""
    costs = {"target": 1.0, "ngram": 0.0}
    prof = make_profile(costs, {("target", "ngram"): 0.5}, point_mass=("ngram",))
    prof.settings["max_new_tokens"] = 48
    traces = Traces({"greedy/target/ngram": np.ones(78, dtype=np.float32), "segments": np.array([0, 48, 78])})
    assert ReplayPredictor(prof, traces).segment_lengths() == [48, 30]
    assert ReplayPredictor(prof, traces, horizon=64).segment_lengths() == [64, 30]
    assert ReplayPredictor(prof, traces, horizon=16).segment_lengths() == [16, 16]


def test_horizon_search_is_no_worse_than_the_steady_state_gammas_at_that_horizon():
    prof = make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)
    traces = bernoulli_traces(prof, "greedy", segments=6, length=64)
    prof.settings["max_new_tokens"] = 64
    steady = ReplayPredictor(prof, traces).best(("target", "mid", "tiny"))
    short = ReplayPredictor(prof, traces, horizon=24)
    chosen = short.best(("target", "mid", "tiny"))
    assert chosen.time_per_token <= short.predict(("target", "mid", "tiny"), steady.gammas).time_per_token


@pytest.mark.parametrize("horizon", [0, -3, 2.5, True])
def test_bad_horizon_is_a_user_error(horizon):
    from polyplan.errors import UserError

    with pytest.raises(UserError, match="horizon"):
        IidPredictor(make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS), horizon=horizon)


def test_optimize_from_part_of_the_pool_plans_only_those_members(tmp_path):
    """--members: the pool without its best drafter (e.g. a copy of the target's own weights)
    plans from what is left, and says which members it was given."""
    prof = make_profile(THREE_LEVEL_COSTS, THREE_LEVEL_ALPHAS)
    path = save(tmp_path, prof)
    full, _ = optimize(path, top=3)
    assert "mid" in full.names
    plan, res = optimize(path, top=3, members=["tiny"])
    assert plan.names == ["target", "tiny"] and plan.settings["members"] == ["tiny"]
    assert {v["model"] for v in plan.insertion} == {"tiny"}
    assert all("mid" not in r["chain"] for r in plan.runners_up)
    # the profile on disk is untouched, and the plan still points at it
    assert plan.check_profile(path) and [c.name for c in Profile.load(path).candidates] == list(THREE_LEVEL_COSTS)
    with pytest.raises(UserError, match="the profile has no member 'huge'"):
        optimize(path, members=["huge"])


def test_each_generation_pays_its_drafters_prefill_once():
    """With the workload's prompt length, a plan's time per token at a horizon includes each
    drafter's prefill of the prompt, once per generation: it can decide between two drafters of
    nearly equal decode speed (a cheap-to-decode drafter whose prefill is dear loses)."""
    from polyplan.documents.profile import PrefillCurve

    costs = {"target": 1.0, "a": 0.05, "b": 0.06}
    alphas = {("target", "a"): 0.9, ("target", "b"): 0.9, ("a", "b"): 0.9}
    prof = make_profile(costs, alphas)
    prof.prefill = {
        "target": PrefillCurve([128, 512], [1.0, 4.0]),
        "a": PrefillCurve([128, 512], [5.0, 20.0]),
        "b": PrefillCurve([128, 512], [0.5, 2.0]),
    }
    decode_only = IidPredictor(prof, horizon=64)
    with_prefill = IidPredictor(prof, horizon=64, prompt_length=256)
    a0, b0 = decode_only.best(("target", "a")), decode_only.best(("target", "b"))
    assert a0.time_per_token < b0.time_per_token
    a1 = with_prefill.predict(("target", "a"), a0.gammas)
    b1 = with_prefill.predict(("target", "b"), b0.gammas)
    assert b1.time_per_token < a1.time_per_token
    # the same simulated generations, each 64 tokens long, plus one prefill of a 256-token prompt
    assert a1.time_per_token - a0.time_per_token == pytest.approx(prof.prefill["a"](256) / 64)
    assert with_prefill.drafter_prefill(("target", "a", "b")) == pytest.approx(10.0 + 1.0)
    # the target's own prefill is the same with or without a chain: never counted
    assert with_prefill.predict(("target",), ()).time_per_token == decode_only.predict(("target",), ()).time_per_token
    # the steady state (an unbounded generation) amortizes any prefill to nothing
    steady = IidPredictor(prof, horizon=None, prompt_length=256)
    assert steady.drafter_prefill(("target", "a")) == 0.0


def test_optimize_says_when_the_profiles_traces_are_missing(tmp_path):
    """A profile copied without its sidecar is planned with the i.i.d. model, and the command says so."""
    import shutil
    from pathlib import Path

    profile = Path(__file__).resolve().parents[1] / "profiles" / "smollm2-cpu.json"
    shutil.copy(profile, tmp_path / "copied.json")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "polyplan.cli",
            "optimize",
            str(tmp_path / "copied.json"),
            "-o",
            str(tmp_path / "p.json"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert r.returncode == 0, r.stderr
    assert "traces sidecar named by the profile is missing: planned with the i.i.d. predictor" in r.stdout
    assert json.loads((tmp_path / "p.json").read_text())["settings"]["predictor"] == "iid"
