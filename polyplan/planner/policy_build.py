"""Building the adaptive executor's policy when a plan is made (proofs/adaptive-control.md), and
the plan's table per prompt-length range that its start decides.

``build_policy`` tabulates, for every order-keeping subset of the plan's members that starts with
the target (``subsets``), the best gammas and the exact model's time per token over a grid of the
subset's pairs' acceptance, with the estimator's constants: each pair's prior, its strength
(``prior_strengths``: empirical Bayes from the profile's traces) and its forgetting window. The
policy itself, its per-round rule and its (de)serialisation live in ``polyplan.planner.policy``.
Pure Python: it never loads a model."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from itertools import combinations, pairwise
from typing import Any

from polyplan.documents.files import DocumentError
from polyplan.documents.profile import Profile
from polyplan.documents.traces import Traces
from polyplan.planner.chains import chain_problem
from polyplan.planner.policy import DEFAULT_MARGIN, PRIOR_STRENGTH_RANGE, Pair, Policy, SettingTable
from polyplan.planner.request_model import PROMPT_LENGTH_EDGES, finite, request_model
from polyplan.theory.control import alpha_axis, grid_error, pair_window, points_per_axis, setting_table

#: tokens between changes of the text's character (a paragraph, a code block): the forgetting
#: window of each pair is pair_window(n0, SEGMENT_TOKENS) = sqrt((n0 + 1) * 128); see the proof
SEGMENT_TOKENS = 128.0
#: prior strength (pseudo-trials) of a pair whose prompt-to-prompt spread is unknown
DEFAULT_PRIOR_STRENGTH = 8.0
#: forgetting windows are kept in this range (committed tokens)
WINDOW_RANGE = (8.0, 256.0)
#: a second table set is built at the profile's longest latency context when it is this many times
#: the plan's (the target's pass widths cost differently there: jumps in T(n) move)
LONG_CONTEXT_RATIO = 4.0
#: grid cells per subset table (the axis is the finest whose grid fits; 17 points at most)
CELL_BUDGET = 300


def subsets(names: Sequence[str], profile: Profile) -> list[tuple[int, ...]]:
    """Every order-keeping subset of the plan's members that starts with the target and that the
    profile can predict (acceptance measured for every adjacent pair), autoregressive first."""
    out = []
    for size in range(len(names)):
        for rest in combinations(range(1, len(names)), size):
            members = (0, *rest)
            if chain_problem(profile, tuple(names[m] for m in members)) is None:
                out.append(members)
    return out


def prior_strengths(
    profile: Profile,
    names: Sequence[str],
    pairs: Sequence[Pair],
    mode: str,
    traces: Traces | None,
    strength_range: tuple[float, float] = PRIOR_STRENGTH_RANGE,
) -> dict[Pair, float]:
    """Empirical Bayes: the Beta prior whose variance is the profile's prompt-to-prompt variance of
    each pair's acceptance (per-prompt means of the traces, less their own binomial noise):
    ``n0 = m (1 - m) / v - 1``, clamped to ``strength_range``; DEFAULT_PRIOR_STRENGTH without traces."""
    out = {pair: DEFAULT_PRIOR_STRENGTH for pair in pairs}
    if traces is None or len(traces.bounds()) < 2:
        return out
    bounds = [(a, b) for a, b in traces.bounds() if b - a >= 2]
    for v, d in pairs:
        trace = traces.pair(mode, names[v], names[d])
        if trace is None or len(bounds) < 2:
            continue
        means = [float(sum(trace[a:b])) / (b - a) for a, b in bounds]
        m = sum(means) / len(means)
        spread = sum((x - m) ** 2 for x in means) / (len(means) - 1)
        noise = sum(x * (1 - x) / (b - a) for x, (a, b) in zip(means, bounds, strict=True)) / len(means)
        between = spread - noise
        lo, hi = strength_range
        out[(v, d)] = hi if between <= 0 else min(hi, max(lo, m * (1 - m) / between - 1))
    return out


def build_policy(
    profile: Profile,
    names: Sequence[str],
    gammas: Sequence[int],
    *,
    mode: str,
    context: float,
    max_gamma: int = 16,
    traces: Traces | None = None,
    cell_budget: int = CELL_BUDGET,
    margin: float = DEFAULT_MARGIN,
    windows: Mapping[str, Sequence[int]] | None = None,
    reserves: Sequence[str] = (),
) -> Policy:
    """Tabulate the best setting over acceptance estimates for the plan ``names`` / ``gammas``;
    ``reserves`` (point-mass drafters, no prefill) join the subsets a request may run, never the
    plan's own setting."""
    from polyplan.planner.predictors import IidPredictor  # the latency curves at the context, memoised

    started = time.perf_counter()
    plan_names = list(names)
    names = plan_names + [r for r in reserves if r not in plan_names]
    predictor = IidPredictor(profile, mode=mode, context=context)
    members_list = subsets(names, profile)
    full = tuple(range(len(plan_names)))
    if full not in members_list:
        raise DocumentError(f"the profile cannot predict the plan's chain {' <- '.join(plan_names)}")
    pairs = sorted({p for m in members_list for p in pairwise(m)})
    priors = {(v, d): profile.pair(names[v], names[d]).alpha(mode) for v, d in pairs}
    strengths = prior_strengths(profile, names, pairs, mode, traces, PRIOR_STRENGTH_RANGE)
    windows = {
        p: min(WINDOW_RANGE[1], max(WINDOW_RANGE[0], pair_window(n0, SEGMENT_TOKENS))) for p, n0 in strengths.items()
    }
    # the profile's prompts are one workload: their prior never outweighs this generation's
    # own evidence over one window
    strengths = {p: min(n0, windows[p]) for p, n0 in strengths.items()}
    min_pass = profile.candidate(names[0]).min_pass
    tables = subset_tables(predictor, names, members_list, min_pass, max_gamma, cell_budget)
    long_context = long_table_context(profile, names[0], context)
    long_tables = []
    if long_context is not None:
        at_long = IidPredictor(profile, mode=mode, context=long_context)
        long_tables = subset_tables(at_long, names, members_list, min_pass, max_gamma, cell_budget)
    chain = tuple(plan_names)
    points = points_per_axis(len(plan_names) - 1, cell_budget)
    latency = in_chain(predictor.latencies(chain), min_pass)
    g, t = setting_table([alpha_axis(points)] * (len(plan_names) - 1), latency, max_gamma, list(gammas), list(gammas))
    plan_table = SettingTable(full, points, g, t, grid_error(points, g, t, latency, max_gamma, fixed=True))
    policy = Policy(
        names=names,
        mode=mode,
        context=float(context),
        max_gamma=max_gamma,
        priors=priors,
        prior_strength=strengths,
        window=windows,
        margin=float(margin),
        plan=plan_table,
        tables=tables,
        point_mass=[profile.candidate(n).point_mass for n in names],
        requests=request_model(profile, names, traces, windows, mode),
        prior_strength_range=PRIOR_STRENGTH_RANGE,
        long_context=long_context,
        long_tables=long_tables,
    )
    policy.build_seconds = time.perf_counter() - started
    return policy


def subset_tables(
    predictor: Any,
    names: Sequence[str],
    members_list: Sequence[tuple[int, ...]],
    min_pass: int,
    max_gamma: int,
    cell_budget: int,
) -> list[SettingTable]:
    """Each subset's best gammas and time per token over its acceptance grid, with the latency
    curves at the predictor's context."""
    tables = []
    for members in members_list:
        chain = tuple(names[m] for m in members)
        latency = in_chain(predictor.latencies(chain), min_pass)
        points = max(2, points_per_axis(len(members) - 1, cell_budget))
        axes = [alpha_axis(points)] * (len(members) - 1)
        start = [max(1, min(max_gamma, 4))] * (len(members) - 1)
        g, t = setting_table(axes, latency, max_gamma, start)
        tables.append(SettingTable(members, points, g, t, grid_error(points, g, t, latency, max_gamma)))
    return tables


def long_table_context(profile: Profile, target: str, context: float) -> float | None:
    """The context of the policy's long-prompt tables: the longest the target's latency was
    measured at, where that is at least LONG_CONTEXT_RATIO times the plan's (else None: one set)."""
    curve = profile.latency.get(target)
    longest = float(max(curve.context)) if curve is not None and curve.context else 0.0
    return longest if longest >= LONG_CONTEXT_RATIO * max(float(context), 1.0) else None


def in_chain(latency: list[Any], min_pass: int) -> list[Any]:
    """The latencies of a setting as the chain runs it: a target that pads its passes to
    ``min_pass`` tokens pays T(min_pass) for shorter ones, an empty block (its rounds alone) too."""
    if min_pass <= 1:
        return latency
    target = latency[0]
    return [lambda n, t=target: t(max(n, min_pass)), *latency[1:]]


def policy_for_plan(plan: Any, profile: Profile, traces: Mapping[str, Any] | None = None) -> Policy:
    """The policy of a plan document (``polyplan.documents.plan.Plan``) rebuilt from its profile."""
    return build_policy(
        profile,
        plan.names,
        plan.gammas,
        mode=plan.mode,
        context=float(plan.settings.get("context") or 0.0),
        max_gamma=int(plan.settings.get("max_gamma") or 16),
        traces=traces,
        reserves=reserve_drafters(profile, plan.names, plan.mode),
    )


def reserve_drafters(profile: Profile, names: Sequence[str], mode: str) -> list[str]:
    """The reserve a plan's policy carries: the point-mass drafter outside the chain with the best
    acceptance by the target on the profile's long prompts, where that is more than on its own
    prompts (it copies from long prompts: rag, summaries, code edits). None where no drafter's
    long-prompt acceptance was measured (profiles before it), or the chain ends in a point-mass
    drafter (a second one could only replace it)."""
    if len(names) < 2 or profile.candidate(names[-1]).point_mass:
        return []
    best, best_alpha = None, 0.0
    for c in profile.candidates:
        factor = profile.long_prompt_factor(c.name, mode) if c.name not in names else None
        if factor is None or factor <= 1.0:
            continue
        alpha = profile.pair(names[0], c.name).alpha(mode) * factor
        if alpha > best_alpha:
            best, best_alpha = c.name, alpha
    return [] if best is None else [best]


def prompt_length_table(policy: Policy, horizons: Sequence[int]) -> list[dict[str, Any]]:
    """What a request runs per prompt-length range (at the range's middle) and max_new_tokens,
    as the policy's start decides it at the profile's acceptance, with its predicted end-to-end
    speedup: the plan's table (empty without prefill curves)."""
    rows: list[dict[str, Any]] = []
    lo = 0
    for edge in PROMPT_LENGTH_EDGES:
        at = (lo + edge) // 2
        for horizon in horizons:
            first = policy.start(dict(policy.priors), at, int(horizon))
            if first is None:
                return []
            d, p = first.decision, first.prediction
            rows.append(
                {
                    "prompt_tokens": [lo, edge],
                    "at": at,
                    "max_new_tokens": int(horizon),
                    "expected_new_tokens": round(p.horizon, 1),
                    "members": [policy.names[m] for m in d.members],
                    "gammas": list(d.gammas),
                    "windows": {policy.names[m]: w for m, w in first.windows.items() if w and m in d.members},
                    "request_s": p.request_s,
                    "autoregressive_request_s": p.autoregressive_request_s,
                    "end_to_end_speedup": p.end_to_end_speedup,
                    "decode_speedup": p.decode_speedup,
                    "drafter_prefill_s": sum(p.drafter_prefill_s),
                    "break_even_tokens": finite(p.break_even_tokens),
                }
            )
        lo = edge
    return rows
