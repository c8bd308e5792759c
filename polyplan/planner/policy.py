"""The adaptive executor's policy, precomputed when a plan is made (proofs/adaptive-control.md).

For every subset of the plan's members that keeps their order and starts with the target
(autoregressive decoding included), a table over a grid of its adjacent pairs' acceptance gives
the best gammas and the exact model's time per token (``polyplan.theory.control.setting_table``,
latency curves of the profile at the plan's context). A second table gives the time of the plan's
own setting (all members, the plan's gammas). Per target round the controller looks the current
acceptance estimates up (multilinear interpolation, microseconds) and applies the rule of
``Policy.decide``: keep the plan's setting while the model says it is within ``margin`` of the
best; else keep the current members (gammas follow the table) while they are within the margin;
else switch to the best. No search ever runs per round.

The estimator's constants live here too: each pair's prior (the profile's acceptance), its
strength (empirical Bayes from the profile's prompt-to-prompt spread when it has traces) and the
forgetting window; ``polyplan.planner.policy_build`` computes them and the tables when a plan is
made. Pure Python: the plan stores ``Policy.to_dict()``; the executor reads it back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise, product
from typing import Any

from polyplan.documents.files import DocumentError
from polyplan.planner.request_model import RequestModel
from polyplan.theory.control import (
    MAX_U,
    cell,
    corner_offsets,
    describe,
    interpolate,
    nearest,
    u_of_alpha,
)
from polyplan.theory.prefill import RequestPrediction, decode_context

POLICY_VERSION = 1
#: the prior strengths (pseudo-trials) empirical Bayes may give a pair (policy_build.prior_strengths)
PRIOR_STRENGTH_RANGE = (1.0, 1024.0)
#: stay with the plan's (or the current) members unless another setting is predicted this much faster
DEFAULT_MARGIN = 0.02
#: a request prefills drafters only when they are predicted at least this much faster than the target
#: alone over the whole request: the decision compares two predictions, each off by 5-7% median on
#: this project's CPU (bench, long prompts, 2026-12-03), and a prompt predicted 10% faster
#: (1111 tokens, 64 new) ran 0.93-1.02x of the target alone
START_SAFETY = 0.10
#: ... and at least this much when a drafter reads a window: what a window keeps of the acceptance
#: is measured on a few prompts and varies with the text (the window-256 Q8_0 drafter: 0.70 of its
#: acceptance on the profile's two long prompts, 0.31 of the target's tokens on a long summary)
WINDOWED_START_SAFETY = 0.15
#: the most the i.i.d. model's doubt about the (replay-chosen) plan at the priors may widen rule 1
PLAN_OFFSET_CAP = 1.25

Pair = tuple[int, int]


@dataclass
class SettingTable:
    """One subset of the plan's members over the grid of its adjacent pairs' acceptance."""

    members: tuple[int, ...]
    points: int  # grid points per axis (alpha_axis(points))
    gammas: list[tuple[int, ...]]  # row-major over the pairs' axes, last pair fastest
    times: list[float]  # expected seconds per output token at those gammas
    #: what the lookup costs against the exact model (theory.control.grid_error); None: not measured
    grid_error: float | None = None

    def __post_init__(self) -> None:
        # fixed views, computed once: the per-round lookup reads them
        self.pairs: list[Pair] = list(pairwise(self.members))
        self.shape: tuple[int, ...] = (self.points,) * (len(self.members) - 1)
        self.corners = corner_offsets(self.shape)

    def time_at(self, cells: Sequence[tuple[int, float]]) -> float:
        return interpolate(self.times, self.shape, cells, self.corners)

    def time_at_alpha(self, alpha: Mapping[Pair, float]) -> float:
        """The interpolated time at acceptance estimates ``alpha`` (every pair of the table)."""
        axis = _axis_u(self.points)
        return self.time_at([cell(axis, u_of_alpha(alpha[p])) for p in self.pairs])

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": list(self.members),
            "points": self.points,
            "gammas": [list(g) for g in self.gammas],
            "times": [float(f"{t:.7g}") for t in self.times],
            **({} if self.grid_error is None else {"grid_error": float(f"{self.grid_error:.4g}")}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SettingTable:
        members = tuple(int(m) for m in d["members"])
        table = cls(
            members,
            int(d["points"]),
            [tuple(int(x) for x in g) for g in d["gammas"]],
            [float(t) for t in d["times"]],
            None if d.get("grid_error") is None else float(d["grid_error"]),
        )
        size = table.points ** (len(members) - 1)
        if (
            not members
            or members[0] != 0
            or any(b <= a for a, b in pairwise(members))
            or table.points < 2
            or len(table.gammas) != size
            or len(table.times) != size
            or any(len(g) != len(members) - 1 or min(g, default=1) < 1 for g in table.gammas)
            or any(not math.isfinite(t) or t <= 0 for t in table.times)
        ):
            raise DocumentError(f"malformed policy table for members {list(members)}")
        return table


@dataclass(frozen=True)
class Decision:
    members: tuple[int, ...]
    gammas: tuple[int, ...]
    time_per_token: float  # the model's prediction for this setting at the estimates
    best_time_per_token: float  # the best setting's
    rule: str  # "plan", "stay" or "best"


@dataclass(frozen=True)
class StartOption:
    """One setting as the start prices it for one request: a table's members, the gammas its
    drafters get, the windows they read, and the expected request."""

    table: SettingTable
    gammas: tuple[int, ...]
    prediction: RequestPrediction
    #: the exact per-token time at the request's decode context over the table's
    scale: float
    windows: dict[int, int | None]

    @property
    def windowed(self) -> bool:
        return any(self.windows.get(m) for m in self.table.members[1:])


@dataclass(frozen=True)
class StartDecision:
    """The first round's setting of one request, chosen before any drafter is prefilled; later
    rounds price settings with it (:meth:`Policy.decide`)."""

    decision: Decision
    #: per setting (members): the exact per-token time at this request's decode context over the
    #: table's (at the prior estimates), so the per-round lookups price settings as the start did
    scale: dict[tuple[int, ...], float]
    #: the expected request (prefills + decode) of the chosen setting and of the target alone
    prediction: RequestPrediction
    horizon: float
    #: per member: the window it reads when a round first uses it in this request (None: all)
    windows: dict[int, int | None] = field(default_factory=dict)
    #: the request's mean decode context: which of the policy's table sets prices its rounds
    context: float | None = None
    #: the plan's own table (tabulated at the plan's context only) scaled to this request's context
    plan_scale: float | None = None


@dataclass
class Policy:
    #: the plan's members, target first, then its reserves: point-mass drafters the plan does not
    #: run but a request may (no prefill; e.g. prompt lookup on a long prompt it can copy from)
    names: list[str]
    mode: str
    context: float
    max_gamma: int
    priors: dict[Pair, float]  # the profile's acceptance of every (verifier, drafter) pair used
    prior_strength: dict[Pair, float]  # pseudo-trials, at most the pair's window
    window: dict[Pair, float]  # forgetting memory of each pair, committed tokens
    margin: float
    plan: SettingTable  # the plan's own setting at its fixed gammas
    tables: list[SettingTable]
    point_mass: list[bool] = field(default_factory=list)
    build_seconds: float = 0.0
    #: prefill curves, windows, latency curves and answer lengths: the request-time theorem
    #: (proofs/prefill.md); None in plans made before it (the start then ignores prefill)
    requests: RequestModel | None = None
    #: the margins the start asks of a setting that prefills drafters (START_SAFETY; with a window
    #: WINDOWED_START_SAFETY) and the range the prior strengths were clamped to: calibrated on one
    #: machine, so the plan stores the values it was made with (older plans: today's constants)
    safety: float = START_SAFETY
    windowed_safety: float = WINDOWED_START_SAFETY
    prior_strength_range: tuple[float, float] = PRIOR_STRENGTH_RANGE
    #: the same subsets tabulated at a long context (the profile's longest): on long prompts the
    #: target's passes cost more and differently by width, so the best gammas differ; empty in
    #: plans made before them (every request then uses ``tables``)
    long_context: float | None = None
    long_tables: list[SettingTable] = field(default_factory=list)
    _plan_offset: float | None = field(default=None, repr=False, compare=False)

    def tables_at(self, context: float | None) -> list[SettingTable]:
        """The table set for a request decoding at mean ``context`` (None: the plan's): the long
        set from the geometric middle of the two contexts on."""
        if not self.long_tables or context is None or self.long_context is None:
            return self.tables
        return self.long_tables if context >= math.sqrt(max(self.context, 1.0) * self.long_context) else self.tables

    @property
    def reserves(self) -> list[str]:
        """The members after the plan's own chain (``plan.members``)."""
        return self.names[len(self.plan.members) :]

    # ---- the per-round rule ---------------------------------------------------------------------
    def decide(
        self,
        alpha: Mapping[Pair, float],
        current: Sequence[int] | None = None,
        start: StartDecision | None = None,
        cold_cost: Mapping[int, float] | None = None,
        anchor: float = 0.0,
    ) -> Decision:
        """The setting for acceptance estimates ``alpha`` (every pair of ``self.priors``).

        ``start``: this request's (:meth:`start`): each setting's tabulated time is scaled to the
        request's context, and a setting that prefills a member must clear the margin the start
        asked of it (:meth:`start_safety`, windowed or not as the start gives the member a window),
        taken as at the start on the request's time, so a later round does not take, on the same
        estimates, the bet the start declined. ``cold_cost``: per member not yet prefilled in this
        request, its prefill spread over the tokens still expected (Corollary 3 of
        proofs/prefill.md); ``anchor``: the target's prefill per token still expected, the part of
        the request every setting shares."""
        scale = start.scale if start is not None else None
        tables = self.tables_at(start.context if start is not None else None)
        cold_safety = (
            {m: self.start_safety(bool(start.windows.get(m))) for m in cold_cost}
            if start is not None and cold_cost
            else None
        )
        cells: dict[tuple[Pair, int], tuple[int, float]] = {}

        def priced(table: SettingTable, t: float) -> float:
            if table is self.plan and start is not None and start.plan_scale is not None:
                t *= start.plan_scale
            elif scale:
                t *= scale.get(table.members, 1.0)
            if cold_cost:
                cold = [m for m in table.members if m in cold_cost]
                t += sum(cold_cost[m] for m in cold)
                if cold and cold_safety:
                    t = (t + anchor) * (1 + max(cold_safety.get(m, 0.0) for m in cold)) - anchor
            return t

        def at(table: SettingTable) -> list[tuple[int, float]]:
            out = []
            for pair in table.pairs:
                key = (pair, table.points)
                c = cells.get(key)
                if c is None:
                    c = cells[key] = cell(_axis_u(table.points), u_of_alpha(alpha[pair]))
                out.append(c)
            return out

        best, best_time, current_table, current_time = None, math.inf, None, math.inf
        current = tuple(current) if current is not None else None
        offset = self.plan_offset()
        alone_time = math.inf
        for table in tables:
            t = priced(table, table.time_at(at(table)))
            if t < best_time:
                best, best_time = table, t
            if table.members == current:
                current_table, current_time = table, t
            if table.members == (0,):
                alone_time = t
        assert best is not None
        plan_time = priced(self.plan, self.plan.time_at(at(self.plan)))
        # a plan whose drafters are still to prefill wins no near-tie: a prefill is a bet the
        # start takes only on a clear prediction, so it must be the best outright, and faster
        # than the target alone (the margin then keeps the current members instead)
        if bool(cold_cost) and any(m in cold_cost for m in self.plan.members):
            keep_plan = plan_time <= best_time and plan_time < alone_time
        else:
            keep_plan = plan_time <= best_time * (1 + self.margin) * offset
        if keep_plan:
            return Decision(self.plan.members, self.plan.gammas[0], plan_time, best_time, "plan")
        if current_table is not None and current_time <= best_time * (1 + self.margin):
            g = current_table.gammas[nearest(current_table.shape, at(current_table))]
            return Decision(current_table.members, g, current_time, best_time, "stay")
        return Decision(best.members, best.gammas[nearest(best.shape, at(best))], best_time, best_time, "best")

    def start_safety(self, windowed: bool) -> float:
        """How much faster than without it a setting must be predicted to pay a drafter's prefill."""
        return self.windowed_safety if windowed else self.safety

    def grid_error(self) -> float | None:
        """The largest lookup error of any table (None when a table was stored without it)."""
        errors = [t.grid_error for t in [self.plan, *self.tables, *self.long_tables]]
        return None if any(e is None for e in errors) else max(errors)

    def plan_offset(self) -> float:
        """How much slower than the best setting this policy's i.i.d. model prices the plan at the
        priors (>= 1, at most PLAN_OFFSET_CAP). The plan was chosen there, by the replay predictor
        when the profile has traces (it sees correlations the i.i.d. model does not): rule 1 keeps
        it until the estimates move its i.i.d. standing by more than the margin, so no round
        overrides the plan on the prior alone (proofs/adaptive-control.md)."""
        if self._plan_offset is None:
            best = min(t.time_at_alpha(self.priors) for t in self.tables)
            self._plan_offset = min(PLAN_OFFSET_CAP, max(1.0, self.plan.time_at_alpha(self.priors) / best))
        return self._plan_offset

    def start(
        self,
        alpha: Mapping[Pair, float],
        prompt_tokens: int,
        max_new_tokens: int,
        exact_horizon: bool = False,
        requests: RequestModel | None = None,
    ) -> StartDecision | None:
        """The setting with the least expected REQUEST time (prefills of the members it uses, on
        their windows, plus the decode over the workload's horizon) for this prompt length; None
        when the policy has no prefill curves (plans made before them: the tables decide).
        ``requests``: the request model to price with (default this policy's; the executor passes
        it re-timed at the speed it measured)."""
        req = requests or self.requests
        if req is None or not req.knows_prefill or max_new_tokens <= 0:
            return None
        horizon = float(max_new_tokens) if exact_horizon else req.horizon(max_new_tokens)
        context = decode_context(prompt_tokens, horizon)
        # a long prompt may raise a point-mass drafter's acceptance (the same for every setting)
        at_prompt = req.at_prompt(alpha, prompt_tokens, horizon)
        options = []
        for table in [self.plan, *self.tables_at(context)]:
            drafters = table.members[1:]
            candidates = []
            for combo in product(*(req.options(m) for m in drafters)):
                windows = dict(zip(drafters, combo, strict=True))
                # a window lowers its drafter's acceptance: the table's gammas at that acceptance
                seen = {(v, d): at_prompt[(v, d)] * req.factor(d, windows.get(d), horizon) for v, d in table.pairs}
                cells = [cell(_axis_u(table.points), u_of_alpha(seen[p])) for p in table.pairs]
                gammas = table.gammas[0] if table is self.plan else table.gammas[nearest(table.shape, cells)]
                prediction = req.request(
                    table.members, gammas, alpha, prompt_tokens, max_new_tokens, windows, exact_horizon
                )
                scale = prediction.time_per_token_s / table.time_at(cells)
                candidates.append(StartOption(table, gammas, prediction, scale, windows))
            options.append(min(candidates, key=lambda o: o.prediction.request_s))
        scales = {o.table.members: o.scale for o in options[1:]}
        alone = next(o for o in options[1:] if len(o.table.members) == 1)

        def cost(o: StartOption) -> float:
            # paying drafter prefill on a prediction: only when it is clearly faster than the
            # target alone (the request-time prediction errs by a few percent; more with a window);
            # a setting that prefills nothing (point-mass drafters) bets nothing up front
            if len(o.table.members) == 1 or not any(o.prediction.drafter_prefill_s):
                return o.prediction.request_s
            return o.prediction.request_s * (1 + self.start_safety(o.windowed))

        best = min(options[1:], key=cost)
        plan = options[0]
        chosen, rule = (
            (plan, "plan")
            if cost(plan) <= cost(best) * (1 + self.margin) and cost(plan) < cost(alone)
            else (best, "start")
        )
        # a member the start leaves out reads, if a later round brings it in, the window it has in
        # the cheapest setting that uses it
        windows: dict[int, int | None] = {}
        for o in sorted(options, key=lambda o: o.prediction.request_s, reverse=True):
            windows.update(o.windows)
        windows.update(chosen.windows)
        prediction = chosen.prediction
        decision = Decision(
            chosen.table.members,
            tuple(chosen.gammas),
            prediction.request_s / max(prediction.horizon, 1e-9),
            best.prediction.request_s / max(best.prediction.horizon, 1e-9),
            rule,
        )
        return StartDecision(decision, scales, prediction, prediction.horizon, windows, context, plan.scale)

    def reason(self, decision: Decision, alpha: Mapping[Pair, float]) -> str:
        """One line for the run statistics: the estimates and the model's verdict."""
        shown = ", ".join(f"{self.names[d]}->{self.names[v]} {alpha[(v, d)]:.2f}" for v, d in sorted(alpha))
        what = {
            "plan": "the plan's setting is within the margin of the best",
            "stay": "the current members are within the margin of the best",
            "best": "fastest predicted",
            "start": "least expected request time for this prompt (prefills counted)",
        }[decision.rule]
        return (
            f"{what}: {describe(decision.members, decision.gammas, self.names)} "
            f"{decision.time_per_token * 1e3:.1f} ms/token predicted (acceptance estimates: {shown})"
        )

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": POLICY_VERSION,
            "rule": "proofs/adaptive-control.md",
            "names": list(self.names),
            "point_mass": list(self.point_mass),
            "mode": self.mode,
            "context": self.context,
            "max_gamma": self.max_gamma,
            "margin": self.margin,
            "pairs": [
                {
                    "verifier": v,
                    "drafter": d,
                    "prior": self.priors[(v, d)],
                    "prior_strength": self.prior_strength[(v, d)],
                    "window_tokens": self.window[(v, d)],
                }
                for v, d in sorted(self.priors)
            ],
            "plan": self.plan.to_dict(),
            "settings": [t.to_dict() for t in self.tables],
            **(
                {"long_context": self.long_context, "long_settings": [t.to_dict() for t in self.long_tables]}
                if self.long_tables
                else {}
            ),
            "build_seconds": round(self.build_seconds, 3),
            "start_safety": self.safety,
            "windowed_start_safety": self.windowed_safety,
            "prior_strength_range": list(self.prior_strength_range),
            **({"requests": self.requests.to_dict()} if self.requests is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str = "plan policy") -> Policy:
        try:
            if int(d["version"]) > POLICY_VERSION:
                raise DocumentError(f"policy version {d['version']} is newer than this polyplan understands")
            pairs = {(int(p["verifier"]), int(p["drafter"])): p for p in d["pairs"]}
            policy = cls(
                names=[str(n) for n in d["names"]],
                mode=str(d["mode"]),
                context=float(d["context"]),
                max_gamma=int(d["max_gamma"]),
                priors={k: float(p["prior"]) for k, p in pairs.items()},
                prior_strength={k: float(p["prior_strength"]) for k, p in pairs.items()},
                window={k: float(p["window_tokens"]) for k, p in pairs.items()},
                margin=float(d["margin"]),
                plan=SettingTable.from_dict(d["plan"]),
                tables=[SettingTable.from_dict(t) for t in d["settings"]],
                long_context=float(d["long_context"]) if d.get("long_context") is not None else None,
                long_tables=[SettingTable.from_dict(t) for t in d.get("long_settings", [])],
                point_mass=[bool(x) for x in d.get("point_mass", [])],
                build_seconds=float(d.get("build_seconds", 0)),
                requests=RequestModel.from_dict(d["requests"]) if d.get("requests") else None,
                safety=float(d.get("start_safety", START_SAFETY)),
                windowed_safety=float(d.get("windowed_start_safety", WINDOWED_START_SAFETY)),
                prior_strength_range=_pair_of_floats(d.get("prior_strength_range", PRIOR_STRENGTH_RANGE)),
            )
        except DocumentError as e:
            raise DocumentError(f"{origin}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise DocumentError(f"{origin}: malformed policy ({type(e).__name__}: {e})") from None
        policy.validate(origin)
        return policy

    def validate(self, origin: str = "plan policy") -> None:
        k = len(self.names)
        if not self.tables or self.margin < 0:
            raise DocumentError(f"{origin}: a policy needs tables and a margin >= 0")
        lo, hi = self.prior_strength_range
        if not (self.safety >= 0 and self.windowed_safety >= 0 and 0 < lo <= hi):
            raise DocumentError(f"{origin}: start safety margins must be >= 0, the prior strength range 0 < lo <= hi")
        if self.long_tables and [t.members for t in self.long_tables] != [t.members for t in self.tables]:
            raise DocumentError(f"{origin}: the long-context tables must cover the same settings")
        for table in [self.plan, *self.tables, *self.long_tables]:
            if table.members[-1] >= k:
                raise DocumentError(f"{origin}: table members {list(table.members)} outside the chain of {k}")
            for pair in table.pairs:
                if pair not in self.priors:
                    raise DocumentError(f"{origin}: no prior for the pair {pair}")
        if self.plan.members != tuple(range(len(self.plan.members))):
            raise DocumentError(f"{origin}: the plan table must be the chain's first members (the rest are reserves)")
        for pair, a in self.priors.items():
            if not 0.0 <= a <= 1.0 or not self.prior_strength.get(pair, 0) > 0 or not self.window.get(pair, 0) > 0:
                raise DocumentError(f"{origin}: bad prior for the pair {pair}")


def _pair_of_floats(x: Sequence[Any]) -> tuple[float, float]:
    lo, hi = x
    return float(lo), float(hi)


def _axis_u(points: int, _cache: dict[int, list[float]] = {}) -> list[float]:  # noqa: B006 - a memo
    axis = _cache.get(points)
    if axis is None:
        axis = _cache[points] = [MAX_U * i / (points - 1) for i in range(points)]
    return axis
