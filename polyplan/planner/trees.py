"""Draft-tree sizes for a chosen chain: where a tree pays, by the theory of polyplan.theory.trees.

The bottom drafter of the plan drafts a tree when (1) the plan decodes greedily (the profile's rank
rates a_1, a_2, ... are greedy agreements), (2) every member above it verifies trees (transformers
members; llama.cpp members score one sequence per pass), (3) the profile measured the pair's rank
rates and (4) Corollary 3 of proofs/draft-trees.md predicts a tree of some size faster than the
linear draft, with the verifier's measured T(n) at the plan's context. Otherwise it stays linear
and the plan says why."""

from __future__ import annotations

from typing import Any

import numpy as np

from polyplan.documents.profile import Profile
from polyplan.documents.traces import Traces
from polyplan.theory.trees import TreeShape, choose_tree, predict_tree_round

#: node budgets compared (each with every depth from the linear gamma to max_gamma)
TREE_SIZES = (8, 12, 16, 24, 31)


def rank_traces(traces: Traces | None, verifier: str, drafter: str) -> list[np.ndarray]:
    """Per reference, the rank of the verifier's argmax among the drafter's choices at each position
    (0: below the measured ranks); [] when the traces have none (profiled before draft trees)."""
    ranks = None if traces is None else traces.pair("ranks", verifier, drafter)
    if ranks is None:
        return []
    return traces.split(ranks.astype(np.int64))


def replay_tokens_per_pass(ranks: list[np.ndarray], shape: TreeShape) -> float:
    """Tokens per verifier pass of a fixed tree ``shape`` replayed on measured rank traces: each
    round walks the tree along the trace's ranks (the child of the measured rank, while the tree has
    one) and the next round starts after the accepted nodes and the verifier's own token. Unlike the
    i.i.d. formula this keeps where the drafter is unsure together (hard stretches of text)."""
    child = {(p, r): i for i, (p, r) in enumerate(zip(shape.parents, shape.ranks, strict=True))}
    tokens = rounds = 0
    for trace in ranks:
        t = 0
        while t < len(trace):
            node, accepted = -1, 0
            while t + accepted < len(trace):
                nxt = child.get((node, int(trace[t + accepted])))
                if nxt is None:
                    break
                node, accepted = nxt, accepted + 1
            tokens += accepted + 1
            rounds += 1
            t += accepted + 1
    return tokens / rounds if rounds else 1.0


def _pair_model(
    profile: Profile, verifier: str, drafter: str, context: float | None, traces: Traces | None
) -> dict[str, Any] | None:
    """The inputs of the tree theory for one pair (rank rates, latencies at ``context``, the replay
    of its rank traces when there are any), None when the profile lacks its rates or curves."""
    pair = next((p for p in profile.pairs if p.verifier == verifier and p.drafter == drafter), None)
    if pair is None or not pair.rank_rates or verifier not in profile.latency or drafter not in profile.latency:
        return None
    curve = profile.latency[verifier]
    ranks = rank_traces(traces, verifier, drafter)
    return {
        "rank_rates": pair.rank_rates,
        "verifier_latency": lambda n: curve(n, context),
        "drafter_latency": profile.latency[drafter](1, context),
        "tokens_per_pass": (lambda shape: replay_tokens_per_pass(ranks, shape)) if ranks else None,
    }


def plan_trees(
    profile: Profile,
    chain: list[str],
    gammas: list[int],
    mode: str,
    context: float | None,
    traces: Traces | None = None,
    max_gamma: int = 16,
) -> tuple[list[int], list[int], dict[str, Any]]:
    """Tree size per drafter (1 = linear), the gammas (a tree may want its bottom deeper than the
    linear optimum) and the reasoning recorded in the plan. Tokens per verifier pass come from the
    rank traces replayed when the profile has them, else from the i.i.d. formula (Theorem 1)."""
    sizes = [1] * len(gammas)
    if len(chain) < 2:
        return sizes, list(gammas), {}
    bottom, verifier = chain[-1], chain[-2]
    doc: dict[str, Any] = {"level": len(chain), "member": bottom, "nodes": 1}
    candidate = {c.name: c for c in profile.candidates}
    not_trees = [n for n in chain[:-1] if candidate[n].backend != "transformers" or candidate[n].point_mass]
    model = _pair_model(profile, verifier, bottom, context, traces)
    if mode != "greedy":
        doc["reason"] = "linear: rank rates are measured for greedy decoding only"
    elif candidate[bottom].point_mass:
        doc["reason"] = f"linear: {bottom} is model-free and cannot rank alternatives"
    elif not_trees:
        doc["reason"] = f"linear: {', '.join(not_trees)} cannot verify a tree (llama.cpp scores one sequence per pass)"
    elif model is None:
        doc["reason"] = "linear: the profile has no rank rates or latency curves for this pair (profiled before trees)"
    else:
        choice = choose_tree(
            gamma=gammas[-1],
            max_depth=max_gamma,
            sizes=TREE_SIZES,
            largest=max(profile.latency[verifier].new_tokens) - 1,  # nodes + the re-fed token, as measured
            **model,
        )
        doc.update(
            nodes=choice.nodes,
            rank_rates=[round(a, 4) for a in model["rank_rates"]],
            acceptance_from="rank traces replayed" if model["tokens_per_pass"] else "i.i.d. rank rates",
            linear_tokens_per_pass=round(choice.linear.tokens_per_pass, 3),
            tree_tokens_per_pass=round(choice.tree.tokens_per_pass, 3),
            predicted_gain=round(choice.gain, 4),
            reason=choice.reason,
        )
        if choice.nodes > 1:
            sizes[-1] = choice.nodes
            gammas = [*gammas[:-1], choice.depth]
            doc["depth"] = choice.depth
    return sizes, list(gammas), doc


def tree_time_ratio(
    profile: Profile,
    chain: list[str],
    gammas: list[int],
    nodes: int,
    context: float | None,
    traces: Traces | None = None,
) -> float | None:
    """Predicted time per token of the bottom drafting a tree of ``nodes`` over drafting linearly
    (as the planner estimates it), None when the profile lacks the pair's rank rates or latency."""
    model = _pair_model(profile, chain[-2], chain[-1], context, traces) if len(chain) >= 2 else None
    if model is None:
        return None
    tree = predict_tree_round(nodes=nodes, max_depth=gammas[-1], **model)
    linear = predict_tree_round(nodes=1, max_depth=gammas[-1], **model)
    return tree.time_per_token / linear.time_per_token
