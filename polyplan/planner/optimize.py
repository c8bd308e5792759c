"""``optimize``: profile in, plan document out."""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict
from pathlib import Path

from polyplan.documents.plan import Plan, file_sha256
from polyplan.documents.profile import Profile
from polyplan.documents.traces import Traces
from polyplan.errors import UserError
from polyplan.planner.chains import Chain, chain_problem, unit_cost
from polyplan.planner.choice import DEFAULT_TOLERANCE, RULES, Choice, RequestTimes, choose as choose_plan
from polyplan.planner.draft_stop import draft_stop_rules
from polyplan.planner.exports import llama_server_export, transformers_export, vllm_export
from polyplan.planner.policy_build import build_policy, prompt_length_table, reserve_drafters
from polyplan.planner.predictors import PREDICTORS, Estimate, Predictor, make_predictor
from polyplan.planner.search import SearchResult, search, with_best
from polyplan.planner.trees import plan_trees

#: the generation length planned for by default: what `polyplan bench` generates per prompt
DEFAULT_HORIZON = 64


def optimize(
    profile_path: str | Path,
    *,
    mode: str = "greedy",
    predictor: str = "auto",
    max_gamma: int = 16,
    max_new_tokens: int | None = DEFAULT_HORIZON,
    context: float | None = None,
    all_orders: bool = False,
    top: int = 5,
    profile: Profile | None = None,
    choose: str = "robust",
    tolerance: float = DEFAULT_TOLERANCE,
    members: list[str] | None = None,
) -> tuple[Plan, SearchResult]:
    """Search the profile's pool and return the plan document (not yet saved) and the search.
    ``predictor="auto"`` replays the profile's traces when it has them, else the i.i.d. model;
    ``max_new_tokens``: the generation length planned for (None: an unbounded generation's steady
    state); ``choose``: ``robust`` or ``point`` (polyplan.planner.choice); ``members``: plan from
    only these profiled members (and the target)."""
    profile_path = Path(profile_path)
    profile = profile or Profile.load(profile_path)
    planned_from = None if members is None else list(members)
    profile = profile if planned_from is None else profile.restricted(planned_from)
    _check_options(top, predictor, choose)
    traces, unread_traces = _read_traces(profile, profile_path, predictor)
    predictor = ("replay" if traces is not None else "iid") if predictor == "auto" else predictor
    if context is None and traces is not None:
        context = decoding_context(traces, max_new_tokens)
    # plans are ranked by what a request of the workload costs: decode plus each drafter's prefill
    prompt_length = workload_prompt_length(traces) if profile.prefill else None

    def predictor_of(name: str, at: float | None) -> Predictor:
        return make_predictor(
            name, profile, mode=mode, context=at, traces=traces, horizon=max_new_tokens, prompt_length=prompt_length
        )

    pred = predictor_of(predictor, context)
    result = search(profile, pred, max_gamma=max_gamma, all_orders=all_orders)
    horizons = sorted({max_new_tokens or DEFAULT_HORIZON, 256})
    priced = plan_request_times(profile, mode, pred.context, max_gamma, traces, horizons)
    choice = choose_plan(pred, result.ranked, rule=choose, tolerance=tolerance, traces=traces, request_times=priced)
    result = with_best(profile, pred, result, choice.chosen, max_gamma)
    others = [
        predictor_of(o, pred.context)
        for o in ("iid", "replay")
        if o != pred.name and (o == "iid" or traces is not None)
    ]
    plan = Plan(
        chain=[_member(profile, n) for n in result.best.chain],
        gammas=list(result.best.gammas),
        prediction=_with_interval(_prediction(profile, pred, result.best), choice, result.best),
        settings={
            "mode": mode,
            "predictor": pred.name,
            **({"unread_traces": unread_traces} if unread_traces else {}),
            "max_gamma": max_gamma,
            "max_new_tokens": max_new_tokens,
            "context": pred.context,
            "all_orders": all_orders,
            "temperature": profile.temperature,
            "choose": choose,
            "tolerance": tolerance,
            "members": planned_from,
            # the prompt length whose drafter prefills the ranking counts (None: decode time only)
            "prompt_length": prompt_length,
        },
        profile=_profile_record(profile, profile_path),
        predictions=_predictions(profile, pred, others, result),
        insertion=[v.as_dict() for v in result.insertion],
        runners_up=[_with_interval(e.as_dict(), choice, e) for e in _others(result.ranked, result.best)[:top]],
        two_level=result.best_two_level.as_dict() if result.best_two_level else None,
        exports=_exports(profile, pred, result.best, max_gamma, mode),
        choice=choice.as_dict(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    _add_trees_and_policy(plan, profile, pred.context, max_gamma, traces, horizons)
    plan.draft_stop = draft_stop_rules(profile, pred, result.best, mode)
    plan.validate()
    return plan, result


def _check_options(top: int, predictor: str, choose: str) -> None:
    if top < 0:
        raise UserError(f"--top must be >= 0, got {top}")
    if predictor not in ("auto", *PREDICTORS):
        raise UserError(f"predictor must be auto or one of {', '.join(PREDICTORS)}, not {predictor!r}")
    if choose not in RULES:
        raise UserError(f"--choose must be one of {', '.join(RULES)}, not {choose!r}")


def _read_traces(profile: Profile, profile_path: Path, predictor: str) -> tuple[Traces | None, str | None]:
    """The profile's traces, and why ``--predictor auto`` could not replay the ones it names."""
    if predictor == "replay" and profile.traces_path(profile_path) is None:
        raise UserError(f"{profile_path}: the profile has no traces sidecar; use --predictor iid")
    if predictor not in ("auto", "replay") and profile.traces_path(profile_path) is None:
        return None, None
    try:
        return Traces.of_profile(profile, profile_path), None
    except UserError as e:
        if predictor == "replay":
            raise
        return None, str(e) if profile.traces else None


def _predictions(profile: Profile, pred: Predictor, others: list[Predictor], result: SearchResult) -> dict:
    """The chosen plan as every predictor prices it (and the best two-level plan, by the others), so
    bench can say which one was right."""
    out = {pred.name: _prediction(profile, pred, result.best)}
    for alt in others:
        out[alt.name] = _prediction(profile, alt, alt.predict(result.best.chain, result.best.gammas))
        if result.best_two_level is not None:
            two = result.best_two_level
            out[alt.name]["two_level"] = _prediction(profile, alt, alt.predict(two.chain, two.gammas))
    return out


def _profile_record(profile: Profile, profile_path: Path) -> dict:
    return {
        "path": str(profile_path),
        "sha256": file_sha256(profile_path) if profile_path.exists() else "",
        "pool": profile.pool,
        "target": profile.target,
        "machine": profile.machine,
        "created": profile.created,
        "complete": profile.complete,
        "random_weights": [c.name for c in profile.candidates if c.random_weights],
        # how its T(1) was timed: a bench's calibration times it the same way
        "one_token_runs": bool(profile.settings.get("one_token_runs", False)),
        # whether its prefills were timed after a warm-up: a bench's calibration times them alike
        "prefill_warmup": bool(profile.settings.get("prefill_warmup", False))
        and int(profile.settings.get("warmup", 1)) > 0,
        # the prompts whose acceptance this plan was chosen for (None: made before they were recorded)
        "workload": profile.settings.get("workload"),
    }


def _add_trees_and_policy(
    plan: Plan, profile: Profile, context: float, max_gamma: int, traces: Traces | None, horizons: list[int]
) -> None:
    """Draft trees at the bottom where the theory says they pay (proofs/draft-trees.md), then the
    adaptive executor's table (proofs/adaptive-control.md) and what a request runs per prompt
    length, prefills counted (proofs/prefill.md)."""
    plan.tree_nodes, plan.gammas, plan.trees = plan_trees(
        profile, plan.names, plan.gammas, plan.mode, context, traces=traces, max_gamma=max_gamma
    )
    if len(plan.names) > 1:
        policy = build_policy(
            profile,
            plan.names,
            plan.gammas,
            mode=plan.mode,
            context=context,
            max_gamma=max_gamma,
            traces=traces,
            reserves=reserve_drafters(profile, plan.names, plan.mode),
        )
        plan.policy = policy.to_dict()
        plan.by_prompt_length = prompt_length_table(policy, horizons)


def plan_request_times(
    profile: Profile, mode: str, context: float, max_gamma: int, traces: Traces | None, horizons: list[int]
) -> RequestTimes:
    """Each plan's predicted request time per row of the plan's prompt-length table (``horizons``
    new tokens), as the adaptive start of its own policy would run it, over the prompt lengths
    that every member's prefill curve reaches (no extrapolated prefills); None for a plan that
    cannot be priced so (no prefill curves, one member)."""

    def times(e: Estimate) -> list[float] | None:
        if len(e.chain) < 2 or any(n not in profile.prefill for n in e.chain if not profile.candidate(n).point_mass):
            return None
        reach = min(profile.prefill[n].context[-1] for n in e.chain if n in profile.prefill)
        policy = build_policy(
            profile, e.chain, e.gammas, mode=mode, context=context, max_gamma=max_gamma, traces=traces
        )
        rows = [r for r in prompt_length_table(policy, horizons) if r["at"] <= reach]
        return [float(r["request_s"]) for r in rows] or None

    return times


def _others(ranked: list[Estimate], best: Estimate) -> list[Estimate]:
    return [e for e in ranked if (e.chain, e.gammas) != (best.chain, best.gammas)]


def _with_interval(d: dict, choice: Choice, e: Estimate) -> dict:
    iv = choice.interval_of(e)
    return {**d, "interval": iv.as_dict()} if iv is not None else d


def _member(profile: Profile, name: str) -> dict:
    c = asdict(profile.candidate(name))
    keys = ("name", "source", "derivation", "dtype", "device", "point_mass", "random_weights", "backend", "gguf")
    return {k: c[k] for k in keys}


def _prediction(profile: Profile, pred: Predictor, e: Estimate) -> dict:
    return {
        **e.as_dict(),
        "drafter_prefill_s": pred.drafter_prefill(e.chain),
        "autoregressive_time_per_token_s": pred.autoregressive_time(),
        "alphas": pred.alphas(e.chain),
        "unit_latency_s": [unit_cost(profile, n, pred.context) for n in e.chain],
    }


def _exports(profile: Profile, pred: Predictor, best: Estimate, max_gamma: int, mode: str) -> dict:
    """The best two-level sub-plan of the chosen chain, for engines that run only two levels."""
    subs: list[Estimate] = []
    for drafter in best.chain[1:]:
        sub: Chain = (best.chain[0], drafter)
        if chain_problem(profile, sub) is None:
            subs.append(pred.best(sub, max_gamma))
    if not subs:
        return {"note": "the chosen plan is autoregressive decoding: nothing to export"}
    sub = min(subs, key=lambda e: e.time_per_token)
    target, drafter = _member(profile, sub.chain[0]), _member(profile, sub.chain[1])
    exports = {
        "sub_plan": sub.as_dict(),
        "transformers": transformers_export(target, drafter, sub.gammas[0], mode=mode, temperature=profile.temperature),
        "vllm": vllm_export(target, drafter, sub.gammas[0]),
    }
    server = llama_server_export(target, drafter, sub.gammas[0], mode=mode)
    if server is not None:
        exports["llama_server"] = server
    return exports


def workload_prompt_length(traces: Traces | None) -> float | None:
    """The mean prompt length of the profiled workload, or None when the traces do not record it."""
    return None if traces is None else traces.mean_prompt_length()


def decoding_context(traces: Traces, max_new_tokens: int | None = None) -> float | None:
    """The mean KV-cache length while decoding (``Traces.decoding_context``)."""
    return traces.decoding_context(max_new_tokens)
