"""The plan's draft stops: when a drafter's greedy draft for the target ends before its gamma
(polyplan.executor.draft_stop runs it; proofs/draft-stop.md derives the bound).

Per model drafter the profile counts the target's greedy agreement in bins of the drafter's
top-two logit gap (``AcceptancePair.gap_bins``); each bin's rate is smoothed towards the drafter's
mean and the rates made nondecreasing in the gap. The rule stops drafting once ``S``, the product of
the drafted tokens' calibrated acceptance (the chance they are all accepted), falls below

    stop_below = (T_d(1) + slope_target) / (alpha * t)        (polyplan.theory.draft_stop.stop_bound)

where one more drafted token costs a drafter pass ``T_d(1)`` and a one-token wider verification
(the target's mean slope over the plan's gamma), and returns, in expectation, ``S * alpha``
accepted tokens worth the plan's predicted time per token ``t`` each. Pure Python, no torch."""

from __future__ import annotations

from typing import Any

from polyplan.documents.files import DocumentError
from polyplan.documents.profile import Profile
from polyplan.planner.predictors import Estimate, Predictor
from polyplan.theory.draft_stop import stop_bound

#: pseudo-positions at the drafter's mean acceptance each bin's count is smoothed with: a bin the
#: profile saw a handful of times stays near the mean instead of at 0 or 1
PRIOR_POSITIONS = 4.0


def draft_stop_rules(profile: Profile, predictor: Predictor, best: Estimate, mode: str) -> dict[str, dict[str, Any]]:
    """Drafter name -> ``DraftStop`` document, for the plan's model drafters whose agreement with the
    target the profile binned by gap; {} for sampling plans (the stop reads greedy agreement)."""
    if mode != "greedy" or len(best.chain) < 2 or best.time_per_token <= 0:
        return {}
    target = best.chain[0]
    curves = predictor.latencies(best.chain)
    gamma = best.gammas[0]  # the target verifies level 1's blocks
    slope = max(0.0, (curves[0](gamma + 1) - curves[0](1)) / gamma)
    rules: dict[str, dict[str, Any]] = {}
    for name, curve in zip(best.chain[1:], curves[1:], strict=True):
        try:
            pair = profile.pair(target, name)
        except DocumentError:
            continue
        bins = pair.gap_bins
        if not bins or not sum(bins.get("positions", [])) or pair.greedy <= 0:
            continue
        alpha = pair.greedy
        smoothed = [
            ((agreed + PRIOR_POSITIONS * alpha) / (n + PRIOR_POSITIONS), n + PRIOR_POSITIONS)
            for agreed, n in zip(bins["agreed"], bins["positions"], strict=True)
        ]
        acceptance = [round(a, 4) for a in _nondecreasing(smoothed)]
        rules[name] = {
            "edges": [float(e) for e in bins["edges"]],
            "acceptance": acceptance,
            "stop_below": round(stop_bound(curve(1), slope, alpha, best.time_per_token), 4),
        }
    return rules


def _nondecreasing(rates: list[tuple[float, float]]) -> list[float]:
    """The weighted least-squares nondecreasing fit to ``(rate, weight)`` per bin (pooled adjacent
    violators): a drafter surer of its token is never less likely to match the target, so a bin the
    profile saw a few lucky times does not rank above a wider gap's."""
    blocks: list[list[float]] = []  # [rate, weight, bins pooled]
    for rate, weight in rates:
        blocks.append([rate, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            r2, w2, n2 = blocks.pop()
            r1, w1, n1 = blocks.pop()
            blocks.append([(r1 * w1 + r2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [rate for rate, _, n in blocks for _ in range(int(n))]
