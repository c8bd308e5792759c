"""Which of the near-best plans to run: the best point estimate, or the best worst plausible case.

The search ranks plans by predicted time per token. The plans within ``tolerance`` of the best
(at most ``SHORTLIST`` of them) get uncertainty intervals (polyplan.planner.intervals). A plan is
*near-equal* to the point-best when its interval overlaps the point-best's (its optimistic
quantile is no slower than the point-best's pessimistic one): the profile cannot tell them apart.
Rule ``robust`` runs the near-equal plan whose pessimistic quantile (upper quantile of time per
token) is lowest -- the plan whose worst plausible case is best; ties go to the better point
estimate. Rule ``point`` runs the point-best (the intervals are still reported).

Near-equal plans can differ where the time per token does not look: a drafter whose decode ties
another's may prefill a long prompt at twice its cost (SmolLM2's Q4_1 copy against its Q8_0 copy
on a Zen 5 EPYC: 4.6 s against 2.5 s for 2048 tokens, at 1% apart per token). So where the
planner can price whole requests (``request_times``: each plan's predicted request time per prompt
length, as its adaptive start would run it), rule ``robust`` first keeps the near-equal plans whose
worst regret over those prompt lengths (request time over the best near-equal plan's at that
length) is within ``REGRET_TIE`` of the least, then takes the best worst plausible case among
them. Pure Python."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from polyplan.chain_text import chain_column, gammas_text
from polyplan.documents.traces import Traces
from polyplan.errors import UserError
from polyplan.planner.intervals import Interval, plan_intervals
from polyplan.planner.predictors import Estimate, Predictor

RULES = ("robust", "point")
#: plans considered at most (each costs one simulation of its passes)
SHORTLIST = 6
#: default: plans whose point estimate is within this fraction of the best's are considered
DEFAULT_TOLERANCE = 0.10
#: near-equal plans whose worst regret over prompt lengths is within this of the least are tied
REGRET_TIE = 0.02

#: a plan's predicted request time per prompt length (the same lengths for every plan), or None
RequestTimes = Callable[[Estimate], Sequence[float] | None]


@dataclass
class Choice:
    """The decision and why: the candidates considered, their point estimates and intervals."""

    rule: str
    tolerance: float
    chosen: Estimate
    point_best: Estimate
    candidates: list[tuple[Estimate, Interval, bool]]  # (plan, interval, near-equal to the point-best)
    sources: dict = field(default_factory=dict)
    reason: str = ""
    #: near-equal plan (chain, gammas) -> its worst request-time regret over prompt lengths
    regrets: dict[tuple, float] = field(default_factory=dict)

    def interval_of(self, e: Estimate) -> Interval | None:
        for c, iv, _ in self.candidates:
            if c.chain == e.chain and c.gammas == e.gammas:
                return iv
        return None

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "tolerance": self.tolerance,
            "quantiles": list(self.candidates[0][1].quantiles) if self.candidates else [],
            "spread": self.sources,
            "candidates": [
                {
                    "chain": list(e.chain),
                    "gammas": list(e.gammas),
                    "time_per_token_s": e.time_per_token,
                    "speedup": e.speedup,
                    "interval": iv.as_dict(),
                    "near_equal": near,
                    "chosen": e.chain == self.chosen.chain and e.gammas == self.chosen.gammas,
                    **(
                        {"prompt_length_regret": self.regrets[(e.chain, e.gammas)]}
                        if (e.chain, e.gammas) in self.regrets
                        else {}
                    ),
                }
                for e, iv, near in self.candidates
            ],
            "reason": self.reason,
        }


def choose(
    predictor: Predictor,
    ranked: Sequence[Estimate],
    *,
    rule: str = "robust",
    tolerance: float = DEFAULT_TOLERANCE,
    traces: Traces | None = None,
    quantiles: tuple[float, float] = (0.1, 0.9),
    draws: int = 2000,
    seed: int = 0,
    request_times: RequestTimes | None = None,
) -> Choice:
    """Pick the plan to run from ``ranked`` (fastest point estimate first)."""
    if rule not in RULES:
        raise UserError(f"--choose must be one of {', '.join(RULES)}, not {rule!r}")
    if not 0.0 <= tolerance <= 1.0:
        raise UserError(f"the near-best tolerance must be between 0 and 1, got {tolerance}")
    if not ranked:
        raise UserError("no plannable chain to choose from")
    best = ranked[0]
    shortlist = [e for e in ranked[:SHORTLIST] if e.time_per_token <= best.time_per_token * (1 + tolerance)]
    ivs = plan_intervals(predictor, shortlist, traces=traces, quantiles=quantiles, draws=draws, seed=seed)
    best_iv = ivs.intervals[0]
    candidates = [
        (e, iv, iv.time_per_token[0] <= best_iv.pessimistic_time)
        for e, iv in zip(shortlist, ivs.intervals, strict=True)
    ]
    near = [(e, iv) for e, iv, ok in candidates if ok]
    regrets = prompt_length_regrets([e for e, _ in near], request_times) if request_times else {}
    chosen = best
    if rule == "robust":
        if regrets:
            least = min(regrets.values())
            near = [(e, iv) for e, iv in near if regrets[(e.chain, e.gammas)] <= least + REGRET_TIE]
        chosen = min(near, key=lambda c: (c[1].pessimistic_time, c[0].time_per_token))[0]
    reason = _reason(rule, tolerance, chosen, best, candidates) + _regret_reason(regrets, chosen, best)
    return Choice(rule, tolerance, chosen, best, candidates, ivs.sources, reason, regrets)


def prompt_length_regrets(plans: Sequence[Estimate], request_times: RequestTimes) -> dict[tuple, float]:
    """Each plan's worst ratio, over the priced prompt lengths, of its request time to the least of
    ``plans`` at that length; empty when fewer than two plans can be priced alike."""
    times = {(e.chain, e.gammas): request_times(e) for e in plans}
    if len(times) < 2 or any(not t for t in times.values()) or len({len(t) for t in times.values()}) != 1:
        return {}
    columns = list(zip(*times.values(), strict=True))
    least = [min(c) for c in columns]
    return {k: max(t / lo for t, lo in zip(ts, least, strict=True)) for k, ts in times.items()}


def _regret_reason(regrets: dict[tuple, float], chosen: Estimate, best: Estimate) -> str:
    if not regrets:
        return ""
    mine, theirs = regrets[(chosen.chain, chosen.gammas)], regrets.get((best.chain, best.gammas))
    text = f"; over prompt lengths its request time is at most {(mine - 1) * 100:.1f}% above the best near-equal plan's"
    if theirs is not None and (chosen.chain, chosen.gammas) != (best.chain, best.gammas):
        text += f" (the point-best's: {(theirs - 1) * 100:.1f}%)"
    return text


def _reason(
    rule: str, tolerance: float, chosen: Estimate, best: Estimate, candidates: list[tuple[Estimate, Interval, bool]]
) -> str:
    q = int(round(candidates[0][1].quantiles[1] * 100))
    near = sum(1 for *_, ok in candidates if ok)
    iv = {(e.chain, e.gammas): i for e, i, _ in candidates}
    pess = iv[(chosen.chain, chosen.gammas)].pessimistic_time
    if rule == "point":
        return (
            f"rule point: the best point estimate ({_ms(best.time_per_token)}/token; p{q} {_ms(pess)}), "
            f"{near} plan(s) within the interval of it"
        )
    if chosen is best or (chosen.chain, chosen.gammas) == (best.chain, best.gammas):
        if near == 1:
            return (
                f"rule robust: no other plan within {tolerance:.0%} of the best point estimate overlaps its "
                f"interval; it runs ({_ms(best.time_per_token)}/token, p{q} {_ms(pess)})"
            )
        return (
            f"rule robust: of {near} near-equal plans the point-best also has the best worst plausible case "
            f"(p{q} {_ms(pess)}/token)"
        )
    best_pess = iv[(best.chain, best.gammas)].pessimistic_time
    return (
        f"rule robust: of {near} near-equal plans (intervals overlapping the point-best's), "
        f"{chain_column(chosen.chain)} ({gammas_text(chosen.gammas)}) has the best worst plausible case: "
        f"p{q} {_ms(pess)}/token vs {_ms(best_pess)} for the point-best {chain_column(best.chain)} "
        f"({gammas_text(best.gammas)}), at a point estimate "
        f"{(chosen.time_per_token / best.time_per_token - 1) * 100:.1f}% slower"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"
