"""What the profile predicts for each compared method: time per decoded token (both predictors,
re-predicted at the bench's own context and length) and the adaptive plan's request time."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyplan.bench.methods import BenchMethod
from polyplan.bench.results import (
    AUTOREGRESSIVE,
    REFERENCE,
    RunRecord,
)
from polyplan.documents.plan import Plan
from polyplan.documents.profile import Profile
from polyplan.errors import UserError


def request_predictions(
    records: list[RunRecord],
    policy: Any,
    prompts: Sequence[tuple[str, list[int]]],
    max_new_tokens: int,
    speed: Mapping[str, Any] | None = None,
    alone: Sequence[str] = (),
    generate_unpriced: bool = False,
) -> dict[str, Any] | None:
    """The adaptive plan's predicted request time (proofs/prefill.md, the setting its start picks)
    beside the measured one, per prompt, given the horizon each run actually had (the answer's
    length is the workload's, not the model's to predict per prompt); and the target alone's.
    ``speed``: per member, the machine's speed now against the profile's (profiler/calibrate.py):
    the same settings are then also predicted on curves scaled by it (``calibrated_*``). ``alone``:
    methods that run the target alone in polyplan's own loop (``bench --also TARGET``), priced as
    the target alone too (``autoregressive`` is transformers' generate(), another loop than the
    one the model prices). Where the adaptive plan's runs carry the speed factors their start
    re-timed the request model by (the chain's own passes in earlier requests: ``RunRecord.
    start_speed``), each is also priced on that model, for the setting its start chose
    (``retimed_*``): no calibration pass, only what the chain measured before each request.
    ``generate_unpriced``: the profile's target alone is not ``generate``'s decoding (an exact
    target's padded passes, :func:`alone_as_verified`), so that row is not priced."""
    if policy is None or getattr(policy, "requests", None) is None or not policy.requests.knows_prefill:
        return None
    at_speed = policy.requests.at_speed({n: f.as_dict() for n, f in speed.items()}) if speed else None
    priced = ["polyplan-plan", *([] if generate_unpriced else [AUTOREGRESSIVE]), *alone]
    calibrated: dict[str, list[float]] = {m: [] for m in priced}
    retimed: dict[str, list[float]] = {m: [] for m in priced}
    rows: list[dict[str, Any]] = []
    errors: dict[str, list[float]] = {m: [] for m in priced}
    parts = {m: {"prefill": [], "decode": []} for m in errors}
    for pid, ids in prompts:
        for method in errors:
            mine = [r for r in records if r.prompt == pid and r.method == method]
            if not mine:
                continue
            horizon = int(statistics.median(r.new_tokens for r in mine))
            first = policy.start(dict(policy.priors), len(ids), horizon, exact_horizon=True)
            if first is None:
                return None
            p = first.prediction
            alone_now = method != "polyplan-plan"
            predicted = p.autoregressive_request_s if alone_now else p.request_s
            measured = statistics.median(r.seconds for r in mine)
            errors[method].append(_error(predicted, measured))
            row = {
                "prompt": pid,
                "method": method,
                "prompt_tokens": len(ids),
                "new_tokens": horizon,
                "setting": [policy.names[m] for m in ((0,) if alone_now else first.decision.members)],
                "predicted_s": predicted,
                "measured_s": measured,
            }
            if at_speed is not None:
                # the setting the run's start picked (on the profile's costs), priced at today's speed
                members = (0,) if alone_now else first.decision.members
                gammas = () if alone_now else first.decision.gammas
                now = _priced(at_speed, policy, members, gammas, first.windows, len(ids), horizon)
                row["calibrated_predicted_s"] = now
                calibrated[method].append(_error(now, measured))
            chain_speed = None if alone_now else _retimed_prediction(policy, len(ids), horizon, mine)
            if chain_speed is not None:
                row["retimed_predicted_s"] = chain_speed
                retimed[method].append(_error(chain_speed, measured))
            # Where a miss comes from: the prefills (latency model) or the decode (latency and the
            # acceptance this prompt had, which the profile's workload can only average).
            split = _prefill_and_decode(policy, alone_now, mine, p, predicted)
            if split is not None:
                row |= split
                parts[method]["prefill"].append(_error(split["predicted_prefill_s"], split["measured_prefill_s"]))
                if split["measured_decode_s"] > 0:
                    parts[method]["decode"].append(_error(split["predicted_decode_s"], split["measured_decode_s"]))
            rows.append(row)
    summary = _error_summary(errors, calibrated, parts, retimed)
    return {"note": "predicted at the horizon each run had (its new tokens)", "errors": summary, "runs": rows}


def _error(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured


def _retimed_prediction(policy: Any, prompt_tokens: int, horizon: int, mine: list[RunRecord]) -> float | None:
    """The median over runs of each run's request time on the request model re-timed by the factors
    that run started at: the setting its start chose on them (at the expected horizon), priced at
    the horizon the run had, as the other prices are. None when the runs carry no factors (a static
    chain, or results from before them)."""
    predicted = []
    for r in mine:
        if r.start_speed is None or r.start_setting is None:
            continue
        model = policy.requests.at_speed(r.start_speed) if r.start_speed else policy.requests
        s = r.start_setting
        windows = {int(m): w for m, w in s["windows"]}
        predicted.append(_priced(model, policy, s["members"], s["gammas"], windows, prompt_tokens, horizon))
    return statistics.median(predicted) if predicted else None


def _priced(
    model: Any,
    policy: Any,
    members: Sequence[int],
    gammas: Sequence[int],
    windows: Mapping[int, int | None],
    prompt_tokens: int,
    horizon: int,
) -> float:
    """Seconds of a request of exactly ``horizon`` new tokens in one setting (its drafters on the
    start's ``windows``, None: all of the prompt), on ``model``'s costs at the policy's priors."""
    members = tuple(members)
    chosen = {m: windows.get(m) for m in members[1:]}
    return model.request(members, tuple(gammas), dict(policy.priors), prompt_tokens, horizon, chosen, True).request_s


def _prefill_and_decode(
    policy: Any, alone: bool, mine: list[RunRecord], p: Any, predicted: float
) -> dict[str, float] | None:
    """The request time predicted and measured, split into the prefills and the decode, where the
    executor measured its prefills (None where it did not)."""
    prefills = [_measured_prefill_s(r) for r in mine]
    if not all(x is not None for x in prefills):
        return None
    # the executor's target prefill is its first pass, which also verifies the first draft
    # block: compare it with P at the tokens that pass read, the rest counts as decode
    target_tokens = [r.levels[0].get("prefill_tokens") for r in mine]  # levels: checked above
    target_prefill = (
        policy.requests.prefill_s(0, statistics.median(target_tokens))
        if not alone and all(target_tokens)
        else p.target_prefill_s
    )
    predicted_prefill = target_prefill + (0.0 if alone else sum(p.drafter_prefill_s))
    return {
        "predicted_prefill_s": predicted_prefill,
        "measured_prefill_s": statistics.median(prefills),
        "predicted_decode_s": predicted - predicted_prefill,
        "measured_decode_s": statistics.median(r.seconds - x for r, x in zip(mine, prefills, strict=True)),
    }


def _error_summary(
    errors: dict[str, list[float]],
    calibrated: dict[str, list[float]],
    parts: dict[str, dict[str, list[float]]],
    retimed: dict[str, list[float]],
) -> dict[str, dict[str, float]]:
    """Per method: the median and largest relative error of its request time (at the speed
    measured now too, as the executor re-timed it, and of its prefills and decode apart, where
    there are)."""
    summary = {}
    for m, e in errors.items():
        if not e:
            continue
        summary[m] = {"median_error": statistics.median(e), "max_error": max(e)}
        if calibrated[m]:
            summary[m] |= {
                "calibrated_median_error": statistics.median(calibrated[m]),
                "calibrated_max_error": max(calibrated[m]),
            }
        if retimed[m]:
            summary[m] |= {"retimed_median_error": statistics.median(retimed[m]), "retimed_max_error": max(retimed[m])}
        for part, pe in parts[m].items():
            if pe:
                summary[m][f"{part}_median_error"] = statistics.median(pe)
    return summary


def _measured_prefill_s(record: RunRecord) -> float | None:
    """The prefill seconds the executor measured over all members of one run (None without them)."""
    if not record.levels or any("prefill_time_s" not in lv for lv in record.levels):
        return None
    return float(sum(lv["prefill_time_s"] for lv in record.levels))


def alone_as_verified(target: Any) -> bool:
    """True when the profile timed ``target``'s one-token pass as it verifies: a half-precision
    target in its exact regime (``as_target``; on an AMX Xeon every pass 16 rows, 1.24x the
    one-token ``generate``), not a llama.cpp target, whose T(1) is its one-token kernels."""
    return bool(getattr(target, "exact_as_target", False)) and not getattr(target, "pads_passes", False)


def attach_predictions(
    methods: Sequence[BenchMethod],
    plan: Plan,
    profile: Profile | None,
    profile_path: Path | None,
    context: float,
    max_new_tokens: int | None = None,
    verified_alone: bool = False,
) -> dict[str, Any]:
    """Both predictors' time per token for every polyplan method, re-predicted at the bench's
    actual mean context and generation length when the profile is at hand (else the plan's
    stored predictions). ``verified_alone``: the profile timed the target's one-token pass in
    its verification numerics (:func:`alone_as_verified`), so the target alone is predicted on
    the lossless reference row, not on transformers' ``generate``."""
    note: dict[str, Any] = {"context": context, "max_new_tokens": max_new_tokens, "source": "plan"}
    predictors = {}
    if profile is not None:
        from polyplan.documents.traces import Traces
        from polyplan.planner.predictors import make_predictor
        from polyplan.planner.trees import tree_time_ratio

        note["source"] = "profile"
        try:
            traces = Traces.of_profile(profile, profile_path) if profile.traces else None
        except UserError:
            traces = None
        for name in ("iid", "replay"):
            if name == "replay" and traces is None:
                continue
            predictors[name] = make_predictor(
                name, profile, mode=plan.mode, context=context, traces=traces, horizon=max_new_tokens
            )
    for m in methods:
        s = m.spec
        if s.engine == "transformers" and s.name != AUTOREGRESSIVE and None in s.gammas:
            continue  # adaptive schedule: no fixed-gamma prediction
        if s.name == (AUTOREGRESSIVE if verified_alone else REFERENCE):
            # the profile timed T_target(1) in one of the two ways the target decodes alone: an
            # exact half-precision target as it verifies (the lossless reference row), a padded
            # llama.cpp target in its one-token kernels (the autoregressive row)
            continue
        if s.speed_reference:
            continue  # not a chain of the plan's pool: llama.cpp's own loop, outside the theory
        chain, gammas = tuple(s.chain), tuple(g for g in s.gammas if g is not None)
        if predictors:
            # a tree at the bottom: the linear chain's prediction times the tree theory's ratio
            trees = [n for n in s.tree_nodes if n > 1]
            ratio = (
                tree_time_ratio(profile, list(chain), list(gammas), s.tree_nodes[-1], context, traces) if trees else 1.0
            )
            if ratio is None:
                continue  # no rank rates measured: no prediction for a tree
            for name, p in predictors.items():
                e = p.predict(chain, gammas)
                s.predicted[name] = e.time_per_token * ratio
                s.predicted_levels[name] = {
                    "tokens_per_pass": [x if math.isfinite(x) else None for x in e.tokens_per_pass],
                    "mean_acceptance_length": e.mean_acceptance_length,
                }
        else:
            if s.name == "polyplan-plan":
                s.predicted = {k: v["time_per_token_s"] for k, v in plan.predictions.items()}
            elif s.name == AUTOREGRESSIVE or list(s.chain) == [plan.target]:
                s.predicted = {k: v["autoregressive_time_per_token_s"] for k, v in plan.predictions.items()}
    return note
