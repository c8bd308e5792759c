"""Draft-tree sizes for a chosen chain: where a tree pays, by the theory of polyplan.theory.trees.

The bottom drafter of the plan drafts a tree when (1) the plan decodes greedily (the profile's rank
rates a_1, a_2, ... are greedy agreements), (2) every member above it verifies trees (transformers
members; llama.cpp members score one sequence per pass), (3) the profile measured the pair's rank
rates and (4) Corollary 3 of proofs/draft-trees.md predicts a tree of some size faster than the
linear draft, with the verifier's measured T(n) at the plan's context. Otherwise it stays linear
and the plan says why."""

from __future__ import annotations

from typing import Any

from polyplan.documents.profile import Profile
from polyplan.theory.trees import choose_tree_nodes, predict_tree_round

#: node budgets compared (1 = linear); 31 nodes + the re-fed token is the profile's largest pass
TREE_SIZES = (1, 8, 12, 16, 24, 31)


def plan_trees(
    profile: Profile, chain: list[str], gammas: list[int], mode: str, context: float | None
) -> tuple[list[int], dict[str, Any]]:
    """Tree size per drafter (1 = linear) and the reasoning recorded in the plan."""
    sizes = [1] * len(gammas)
    if len(chain) < 2:
        return sizes, {}
    bottom, verifier = chain[-1], chain[-2]
    doc: dict[str, Any] = {"level": len(chain), "member": bottom, "nodes": 1}
    candidate = {c.name: c for c in profile.candidates}
    not_trees = [n for n in chain[:-1] if candidate[n].backend != "transformers" or candidate[n].point_mass]
    pair = next((p for p in profile.pairs if p.verifier == verifier and p.drafter == bottom), None)
    if mode != "greedy":
        doc["reason"] = "linear: rank rates are measured for greedy decoding only"
    elif candidate[bottom].point_mass:
        doc["reason"] = f"linear: {bottom} is model-free and cannot rank alternatives"
    elif not_trees:
        doc["reason"] = f"linear: {', '.join(not_trees)} cannot verify a tree (llama.cpp scores one sequence per pass)"
    elif pair is None or not pair.rank_rates:
        doc["reason"] = "linear: the profile has no rank rates for this pair (profiled before draft trees)"
    elif verifier not in profile.latency or bottom not in profile.latency:
        doc["reason"] = "linear: the profile has no latency curve for the pair"
    else:
        curve, drafter_curve = profile.latency[verifier], profile.latency[bottom]
        nodes, prediction, why = choose_tree_nodes(
            pair.rank_rates,
            gammas[-1],
            lambda n: curve(n, context),
            drafter_curve(1, context),
            candidates=[n for n in TREE_SIZES if n < max(curve.new_tokens)],
        )
        _, linear, _ = choose_tree_nodes(
            pair.rank_rates, gammas[-1], lambda n: curve(n, context), drafter_curve(1, context), candidates=[1]
        )
        sizes[-1] = nodes
        doc.update(
            nodes=nodes,
            rank_rates=[round(a, 4) for a in pair.rank_rates],
            reason=why,
            linear_tokens_per_pass=round(linear.tokens_per_pass, 3),
            tree_tokens_per_pass=round(prediction.tokens_per_pass, 3),
            predicted_gain=round(linear.time_per_token / prediction.time_per_token - 1, 4),
        )
    return sizes, doc


def tree_time_ratio(
    profile: Profile, chain: list[str], gammas: list[int], nodes: int, context: float | None
) -> float | None:
    """Predicted time per token of the bottom drafting a tree of ``nodes`` over drafting linearly
    (Corollary 3 of proofs/draft-trees.md for the bottom pair), None when the profile lacks the pair's
    rank rates or latency curves."""
    if len(chain) < 2:
        return None
    pair = next((p for p in profile.pairs if p.verifier == chain[-2] and p.drafter == chain[-1]), None)
    if pair is None or not pair.rank_rates or chain[-2] not in profile.latency or chain[-1] not in profile.latency:
        return None
    curve, t_draft = profile.latency[chain[-2]], profile.latency[chain[-1]](1, context)
    tree = predict_tree_round(pair.rank_rates, nodes, gammas[-1], lambda n: curve(n, context), t_draft)
    linear = predict_tree_round(pair.rank_rates, 1, gammas[-1], lambda n: curve(n, context), t_draft)
    return tree.time_per_token / linear.time_per_token
