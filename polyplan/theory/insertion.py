"""Inserting one model into a chain: the exact condition and the paper's sufficient condition.

Insert a candidate ``M_new`` at position ``j`` (2 <= j <= k + 1): it becomes level j, drafting for
old level ``j - 1`` (its verifier) and verifying old level j (now j + 1), if any. The acceptance
between old levels ``j - 1`` and ``j`` is replaced by ``new_alpha_above`` (M_{j-1} verifies M_new)
and ``new_alpha_below`` (M_new verifies old M_j; absent when inserting at the bottom), and M_new
gets speculation length ``new_gamma`` (a threshold, or the draft count at the bottom).

By the accounting theorem time per token is ``sum_i T_i / L_i``, so with ``L'`` the new chain's
values the exact change is

    Delta = T_new / L_new + sum_{i old} T_i (1/L'_i - 1/L_i)        (insert iff Delta < 0).

Wang et al. (2025) state the condition as ``T_new / L_new < T_v / L_v - T_v / L'_v`` for the
verifier ``v = j - 1``: the new model must cost less per output token than it saves its verifier.
That form equals ``Delta < 0`` exactly when no other level's ``T_i / L_i`` changes; in general it is
sufficient together with "no other level's T/L grows" (``sufficient_condition``). Both are given
here as sympy expressions and as numbers. Proof: proofs/insertion.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp

from polyplan.errors import UserError
from polyplan.theory.chain_model import ChainPrediction, predict_chain, predict_chain_exact
from polyplan.theory.latency import Latency, validate_chain


@dataclass
class InsertionResult:
    """Before/after predictions and both forms of the condition (levels indexed from 1)."""

    before: ChainPrediction
    after: ChainPrediction
    position: int
    change: Any  # after.time_per_token - before.time_per_token (< 0: insertion helps)
    new_model_cost: Any  # T_new / L_new, time the new model adds per output token
    verifier_saving: Any  # T_v / L_v - T_v / L'_v for the verifier v = position - 1
    other_levels_change: Any  # sum over the other old levels of T_i / L'_i - T_i / L_i
    paper_condition: bool  # new_model_cost < verifier_saving (Wang et al.'s form)
    sufficient_condition: bool  # paper_condition and no other old level's T/L grows
    improves: bool  # change < 0: the exact condition

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "change": float(self.change),
            "time_per_token_before": float(self.before.time_per_token),
            "time_per_token_after": float(self.after.time_per_token),
            "speedup_before": float(self.before.speedup),
            "speedup_after": float(self.after.speedup),
            "new_model_cost": float(self.new_model_cost),
            "verifier_saving": float(self.verifier_saving),
            "other_levels_change": float(self.other_levels_change),
            "paper_condition": self.paper_condition,
            "sufficient_condition": self.sufficient_condition,
            "improves": self.improves,
            "gamma_after": list(self.after.gamma),
            "alpha_after": [float(x) for x in self.after.alpha],
        }


def inserted_chain(
    alpha: Sequence[Any],
    gamma: Sequence[int],
    latency: Sequence[Latency],
    position: int,
    new_alpha_above: Any,
    new_alpha_below: Any | None,
    new_latency: Latency,
    new_gamma: int,
) -> tuple[list[Any], list[int], list[Latency]]:
    """The (alpha, gamma, latency) of the chain with the candidate inserted at ``position``."""
    k = len(latency)
    if not 2 <= position <= k + 1:
        raise UserError(f"position must be between 2 (just below the target) and {k + 1} (the bottom), got {position}")
    at_bottom = position == k + 1
    if at_bottom and new_alpha_below is not None:
        raise UserError("a model inserted at the bottom verifies nobody: leave new_alpha_below out")
    if not at_bottom and new_alpha_below is None:
        raise UserError(
            f"inserting at position {position} needs new_alpha_below (the new model verifying old M{position})"
        )
    j = position
    alpha_after = (
        list(alpha[: j - 2]) + [new_alpha_above] + ([] if at_bottom else [new_alpha_below]) + list(alpha[j - 1 :])
    )
    gamma_after = list(gamma[: j - 2]) + [int(new_gamma)] + list(gamma[j - 2 :])
    latency_after = list(latency[: j - 1]) + [new_latency] + list(latency[j - 1 :])
    return alpha_after, gamma_after, latency_after


def insertion_gain(
    alpha: Sequence[Any],
    gamma: Sequence[int],
    latency: Sequence[Latency],
    position: int,
    new_alpha_above: Any,
    new_alpha_below: Any | None,
    new_latency: Latency,
    new_gamma: int,
    *,
    exact: bool = False,
) -> InsertionResult:
    """Evaluate inserting a candidate at ``position`` (see module doc). ``exact=True`` uses Fractions.

    The per-level terms ``T_i / L_i`` are ``ChainPrediction.level_time_per_token`` (with latency curves:
    each level's expected pass time per output token), so the decomposition is an identity."""
    validate_chain(alpha, gamma, latency)
    predict = predict_chain_exact if exact else predict_chain
    after_chain = inserted_chain(
        alpha, gamma, latency, position, new_alpha_above, new_alpha_below, new_latency, new_gamma
    )
    before = predict(alpha, gamma, latency)
    after = predict(*after_chain)
    before_terms = list(before.level_time_per_token)
    after_terms = list(after.level_time_per_token)
    j = position
    new_model_cost = after_terms[j - 1]
    old_after = after_terms[: j - 1] + after_terms[j:]  # drop the new level; old levels in order
    verifier = j - 2  # index of the verifier among old levels
    verifier_saving = before_terms[verifier] - old_after[verifier]
    other_change = sum((old_after[i] - before_terms[i] for i in range(len(before_terms)) if i != verifier), 0)
    others_do_not_grow = all(old_after[i] <= before_terms[i] for i in range(len(before_terms)) if i != verifier)
    paper = new_model_cost < verifier_saving
    change = after.time_per_token - before.time_per_token
    return InsertionResult(
        before=before,
        after=after,
        position=position,
        change=change,
        new_model_cost=new_model_cost,
        verifier_saving=verifier_saving,
        other_levels_change=other_change,
        paper_condition=bool(paper),
        sufficient_condition=bool(paper and others_do_not_grow),
        improves=bool(change < 0),
    )


def insertion_condition_expression(depth: int, verifier: int) -> tuple[sp.Expr, sp.Expr]:
    """Symbolic ``(Delta, paper_gap)`` for a chain of ``depth`` old levels and verifier index v (1-based).

    ``Delta = T_new / L_new + sum_i T_i (1/L'_i - 1/L_i)``; ``paper_gap = T_new/L_new - (T_v/L_v - T_v/L'_v)``;
    ``Delta - paper_gap = sum_{i != v} T_i (1/L'_i - 1/L_i)`` (zero when the other levels keep their L)."""
    t = sp.symbols(f"T_1:{depth + 1}", positive=True)
    l_before = sp.symbols(f"L_1:{depth + 1}", positive=True)
    l_after = sp.symbols(f"Lp_1:{depth + 1}", positive=True)
    t_new, l_new = sp.symbols("T_new L_new", positive=True)
    delta = t_new / l_new + sum(t[i] * (1 / l_after[i] - 1 / l_before[i]) for i in range(depth))
    v = verifier - 1
    paper_gap = t_new / l_new - (t[v] / l_before[v] - t[v] / l_after[v])
    return delta, paper_gap
