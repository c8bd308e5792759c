"""Draft trees: expected accepted length, the optimal tree for a node budget, time per token.

Model (proofs/draft-trees.md). A drafter proposes at each node its candidates in rank order
(greedy: its most probable tokens; sampling: draws without replacement). ``rank_rates[r-1] = a_r``
is the probability that the verifier's token after a node is the drafter's rank-r candidate there
(greedy: the verifier's argmax equals it; sampling: the recursive rejection accepts the r-th draw),
the same at every node and independent across depths. The events for different ranks at one node
are disjoint, so ``sum_r a_r <= 1``; ``a_1`` is the linear chain's acceptance rate alpha.

* Theorem 1: E[accepted] = sum over nodes v of prod over the edges to v of a_rank(edge). Tokens per
  verifier pass are that + 1.
* Theorem 2: with a budget of n nodes and no other limit, the n nodes of largest path value form an
  optimal tree (values never rise along a path, so that set is closed under parents).
* Time per token of a two-level round: (T_v(n + 1) + passes * T_d) / (1 + E[accepted]) -- the
  accounting theorem with the tree's L (the verifier scores the re-fed last token and n nodes).

Pure Python and sympy; the executor's builder (polyplan.executor.tree) grows the same best-first
shape from the drafter's own probabilities.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy as sp

from polyplan.errors import UserError

#: the executor's cap on children per node (polyplan.executor.tree.MAX_CHILDREN)
MAX_CHILDREN = 8


def check_rank_rates(rank_rates: Sequence[float]) -> list[float]:
    rates = [float(a) for a in rank_rates]
    if not rates or any(not 0.0 <= a <= 1.0 for a in rates) or sum(rates) > 1.0 + 1e-9:
        raise UserError(f"rank acceptance rates must be in [0, 1] and sum to at most 1, got {rates}")
    return rates


@dataclass(frozen=True)
class TreeShape:
    """Nodes in the order best-first adds them; ``parents[i] = -1`` for a depth-1 node."""

    parents: tuple[int, ...]
    ranks: tuple[int, ...]
    #: drafter passes spent (the root's included): 1 + nodes that have children
    passes: int

    @property
    def nodes(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        depths: list[int] = []
        for p in self.parents:
            depths.append(1 if p < 0 else depths[p] + 1)
        return max(depths, default=0)


def expected_accepted(shape: TreeShape, rank_rates: Sequence[float]) -> float:
    """Theorem 1: expected accepted nodes of one verification of ``shape``."""
    rates = check_rank_rates(rank_rates)
    value: list[float] = []
    for parent, rank in zip(shape.parents, shape.ranks, strict=True):
        a = rates[rank - 1] if rank <= len(rates) else 0.0
        value.append(a * (1.0 if parent < 0 else value[parent]))
    return sum(value)


def expected_accepted_expression(parents: Sequence[int], ranks: Sequence[int]) -> sp.Expr:
    """Theorem 1 in sympy: symbols ``a1, a2, ...`` for the rank rates."""
    value: list[sp.Expr] = []
    for parent, rank in zip(parents, ranks, strict=True):
        a = sp.Symbol(f"a{rank}", positive=True)
        value.append(a * (1 if parent < 0 else value[parent]))
    return sp.Add(*value)


def best_first_tree(
    rank_rates: Sequence[float], nodes: int, max_depth: int, max_passes: int | None = None
) -> TreeShape:
    """The tree the executor grows when the drafter's path probabilities are the rank rates:
    best-first by path value, at most ``nodes`` nodes, ``max_depth`` deep and ``max_passes``
    drafter passes (default ``max_depth``, as the executor). Without the pass limit
    (``max_passes >= nodes``) it is optimal (Theorem 2)."""
    rates = check_rank_rates(rank_rates)
    if nodes < 1 or max_depth < 1:
        raise UserError(f"a tree needs nodes >= 1 and depth >= 1, got {nodes} and {max_depth}")
    passes_left = (max_depth if max_passes is None else max_passes) - 1  # the root's pass
    k = min(len(rates), MAX_CHILDREN)
    parents: list[int] = []
    ranks: list[int] = []
    depth: list[int] = []
    value: list[float] = []
    # a node is "open" once a pass gave its distribution; its next child is a queue entry
    queue: list[tuple[float, int, int, int]] = [(-rates[0], 0, -1, 1)]  # (-value, tie, parent, rank)
    tie = 1
    expanded = {-1}
    while queue and len(parents) < nodes:
        neg, _, parent, rank = heapq.heappop(queue)
        if parent not in expanded:
            if passes_left <= 0:
                continue
            passes_left -= 1
            expanded.add(parent)
        node = len(parents)
        parents.append(parent)
        ranks.append(rank)
        depth.append(1 if parent < 0 else depth[parent] + 1)
        value.append(-neg)
        base = 1.0 if parent < 0 else value[parent]
        if rank < k and rates[rank] > 0:
            heapq.heappush(queue, (-base * rates[rank], tie, parent, rank + 1))
            tie += 1
        if depth[node] < max_depth and rates[0] > 0:
            heapq.heappush(queue, (-value[node] * rates[0], tie, node, 1))
            tie += 1
    return TreeShape(tuple(parents), tuple(ranks), passes=len(expanded))


def linear_shape(gamma: int) -> TreeShape:
    return TreeShape(tuple(range(-1, gamma - 1)), (1,) * gamma, passes=gamma)


@dataclass(frozen=True)
class TreePrediction:
    shape: TreeShape
    expected_accepted: float
    tokens_per_pass: float  # L of the verifier: expected accepted + 1
    time_per_token: float
    speedup: float  # over the verifier decoding alone at T_v(1) per token


def predict_tree_round(
    rank_rates: Sequence[float],
    nodes: int,
    max_depth: int,
    verifier_latency: Callable[[int], float],
    drafter_latency: float,
    tokens_per_pass: Callable[[TreeShape], float] | None = None,
) -> TreePrediction:
    """Two levels, a tree at the bottom: time per token = (T_v(n + 1) + passes * T_d) / L, with L
    from Theorem 1, or from ``tokens_per_pass(shape)`` (e.g. measured traces replayed)."""
    shape = linear_shape(max_depth) if nodes <= 1 else best_first_tree(rank_rates, nodes, max_depth)
    per_pass = tokens_per_pass(shape) if tokens_per_pass else 1.0 + expected_accepted(shape, rank_rates)
    per_token = (verifier_latency(shape.nodes + 1) + shape.passes * drafter_latency) / per_pass
    return TreePrediction(shape, per_pass - 1.0, per_pass, per_token, verifier_latency(1) / per_token)


@dataclass(frozen=True)
class TreeChoice:
    nodes: int  # 1: linear
    depth: int  # the bottom's gamma: the linear one, or the deeper one the tree wants
    tree: TreePrediction
    linear: TreePrediction
    reason: str

    @property
    def gain(self) -> float:
        return self.linear.time_per_token / self.tree.time_per_token - 1


def choose_tree(
    rank_rates: Sequence[float],
    gamma: int,
    verifier_latency: Callable[[int], float],
    drafter_latency: float,
    *,
    max_depth: int | None = None,
    sizes: Sequence[int] = (8, 12, 16, 24, 31),
    largest: int | None = None,
    tokens_per_pass: Callable[[TreeShape], float] | None = None,
) -> TreeChoice:
    """The tree (size, depth from ``gamma`` to ``max_depth``) with the least predicted time per
    token, or the linear draft of depth ``gamma`` when none beats it, and why. A size must exceed
    its depth (smaller budgets only shorten the draft: the gamma's choice) and stay within
    ``largest`` (e.g. the widest pass the profile measured, less the re-fed token)."""

    def predict(nodes: int, depth: int) -> TreePrediction:
        return predict_tree_round(rank_rates, nodes, depth, verifier_latency, drafter_latency, tokens_per_pass)

    linear = predict(1, gamma)
    best = (linear, 1, gamma)
    for depth in range(gamma, max(gamma, max_depth or gamma) + 1):
        for nodes in sizes:
            if depth < nodes and (largest is None or nodes <= largest):
                tree = predict(nodes, depth)
                if tree.time_per_token < best[0].time_per_token:
                    best = (tree, nodes, depth)
    tree, nodes, depth = best
    if nodes == 1:
        second = rank_rates[1] if len(rank_rates) > 1 else 0.0
        reason = (
            "linear: no tree beats it (the verifier's extra width costs more than the "
            f"{second:.2f} second-choice acceptance returns)"
        )
    else:
        reason = (
            f"tree of {nodes} nodes, {depth} deep: {tree.tokens_per_pass:.2f} tokens per verifier pass vs "
            f"{linear.tokens_per_pass:.2f} linear, {linear.time_per_token / tree.time_per_token - 1:+.1%} predicted"
        )
    return TreeChoice(nodes, depth, tree, linear, reason)


def check_tree_theorems() -> bool:
    """Symbolic checks: a linear tree is the capped geometric sum; a main path with one rank-2
    sibling per depth gives sum_d a1^(d-1) (a1 + a2); best-first equals brute force on small cases."""
    a1, a2 = sp.symbols("a1 a2", positive=True)
    for g in range(1, 7):
        linear = linear_shape(g)
        if sp.simplify(expected_accepted_expression(linear.parents, linear.ranks) - a1 * (1 - a1**g) / (1 - a1)) != 0:
            return False
        parents, ranks = [], []
        for d in range(g):
            main_parent = -1 if d == 0 else 2 * (d - 1)
            parents += [main_parent, main_parent]
            ranks += [1, 2]
        closed = sum(a1 ** (d - 1) * (a1 + a2) for d in range(1, g + 1))
        if sp.simplify(expected_accepted_expression(parents, ranks) - closed) != 0:
            return False
    return _best_first_is_optimal_on_small_cases()


def _best_first_is_optimal_on_small_cases() -> bool:
    """Theorem 2 against exhaustive search over every tree of up to 5 nodes (3 ranks, depth 4)."""
    for rates in ([0.6, 0.2, 0.1], [0.9, 0.05, 0.03], [0.3, 0.3, 0.2], [0.5, 0.45, 0.0]):
        for n in range(1, 6):
            best = expected_accepted(best_first_tree(rates, n, 4, max_passes=n + 1), rates)
            if abs(best - _brute_force_best(rates, n, 4)) > 1e-12:
                return False
    return True


def _brute_force_best(rates: Sequence[float], n: int, max_depth: int) -> float:
    """Largest expected accepted length over all trees of exactly n nodes: grow every
    parent-closed node set, a node named by its rank path."""
    best = 0.0
    k = len(rates)

    def value(path: tuple[int, ...]) -> float:
        v = 1.0
        for r in path:
            v *= rates[r - 1]
        return v

    def grow(chosen: frozenset, seen: set) -> None:
        nonlocal best
        if chosen in seen:
            return
        seen.add(chosen)
        if len(chosen) == n:
            best = max(best, sum(value(p) for p in chosen))
            return
        frontier = {(*p, r) for p in [(), *chosen] for r in range(1, k + 1) if len(p) < max_depth}
        for node in frontier - chosen:
            if node[-1] == 1 or (*node[:-1], node[-1] - 1) in chosen:  # siblings in rank order
                grow(chosen | {node}, seen)

    grow(frozenset(), set())
    return best
