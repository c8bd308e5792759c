"""Draft trees: one level drafts a tree of tokens, the level above verifies it in one pass.

Semantics and the proof of losslessness: docs/staged-decoding.md ("Draft trees") and
proofs/draft-trees.md. In short:

* **Building** (``build_tree``), best first, EAGLE-2 style: a node's *value* is the drafter's
  probability of the path to it. Two kinds of step compete in one priority queue: *draw the next
  child* of an expanded node (priority: the node's value times the largest probability among the
  tokens not drawn there yet) and *expand* a drawn node (one drafter pass over the path to it gives
  its distribution; priority: its value). The tree grows to ``nodes`` tokens, ``max_depth`` deep.
  Greedy: a node's children are its most probable tokens in order. Sampling: they are drawn from
  the drafter's processed distribution WITHOUT replacement, and whether a next child is drawn never
  depends on that child's own value (only on what was drawn before it): the condition under which
  the recursive rejection below is exact.
* **Verifying** (``walk_greedy``, ``walk_sampled``): the verifier scores every node in one pass
  (tree attention). Greedy: follow the child equal to the verifier's argmax while there is one;
  the argmax after the last accepted node is the verifier's own token. Sampling: at each node the
  children are tested in draw order by recursive rejection sampling (SpecInfer; multi-candidate
  speculative decoding without replacement): accept child x with probability
  min(1, p(x)/q(x)); on rejection p <- norm(max(p - q, 0)) and x is removed from q. The first
  accepted child is followed; when all are rejected the residual p gives the own token, at a leaf
  the verifier's p gives the bonus.

Host work: the tree's shape lives on the host (a few small lists); each expansion reads the top
candidates of one row. Everything of vocabulary size stays on the device."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from polyplan.executor.sampling import SamplingParams

#: at most this many children per node (EAGLE-2 uses top-k with k around 8-10)
MAX_CHILDREN = 8

ROOT = -1


@dataclass
class DraftTree:
    """Nodes ``0..n-1`` in the order they were drawn (a parent always precedes its children)."""

    #: W position of the depth-1 nodes (the first position after the committed prefix)
    base: int
    tokens: list[int] = field(default_factory=list)
    #: parent index per node, ``ROOT`` (-1) for depth 1
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    #: children in draw order per node; key ``ROOT`` for the depth-1 nodes
    children: dict[int, list[int]] = field(default_factory=lambda: {ROOT: []})
    #: sampling only: the drafter's processed distribution at each expanded node (key ROOT too)
    q: dict[int, torch.Tensor] = field(default_factory=dict)
    #: the nodes the drafter's cache covers after ``base``, in order (a root-to-node path)
    drafter_path: list[int] = field(default_factory=list)
    #: drafter passes spent expanding nodes (the root's included)
    expansions: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depth(self) -> int:
        return max(self.depths, default=0)

    def path_to(self, node: int) -> list[int]:
        path = []
        while node != ROOT:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def add(self, parent: int, token: int) -> int:
        node = len(self.tokens)
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(1 if parent == ROOT else self.depths[parent] + 1)
        self.children[parent].append(node)
        self.children[node] = []
        return node

    def rank(self, node: int) -> int:
        """1 for a node drawn first among its siblings, 2 for the second, ..."""
        return self.children[self.parents[node]].index(node) + 1


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class _Expanded:
    """A node whose distribution is known: what is left to draw among its children. Greedy: the
    drafter's top choices with their probabilities under its own softmax (read once, on the host);
    sampling: its processed q, drawn tokens zeroed in ``remaining``."""

    def __init__(self, value: float, logits: torch.Tensor, params: SamplingParams) -> None:
        self.value = value
        self.greedy = params.greedy
        self.drawn = 0
        if self.greedy:
            # probabilities of the top tokens only: no softmax over the vocabulary
            top, ids = torch.topk(logits.float(), min(MAX_CHILDREN, logits.shape[-1]))
            probs = torch.exp(top - torch.logsumexp(logits.float(), dim=-1))
            self.candidates = list(zip(ids.tolist(), probs.tolist(), strict=True))
        else:
            self.dist = params.probs(logits.view(1, -1))[0]
            self.remaining = self.dist.clone()

    def best_left(self) -> float:
        """Largest probability among the tokens not drawn yet (0 when none can be drawn)."""
        if self.drawn >= MAX_CHILDREN:
            return 0.0
        if self.greedy:
            return self.candidates[self.drawn][1] if self.drawn < len(self.candidates) else 0.0
        return float(self.remaining.max())

    def draw(self, generator: torch.Generator | None) -> tuple[int, float]:
        """The next child's token and its drafter probability."""
        if self.greedy:
            token, prob = self.candidates[self.drawn]
        else:
            token = int(torch.multinomial(self.remaining, 1, generator=generator))
            prob = float(self.dist[token])
            self.remaining[token] = 0.0
        self.drawn += 1
        return token, prob


def build_tree(
    base: int,
    root_logits: torch.Tensor,
    expand: Callable[[DraftTree, int], torch.Tensor],
    params: SamplingParams,
    nodes: int,
    max_depth: int,
    stop_tokens: set[int],
    generator: torch.Generator | None,
    max_passes: int | None = None,
) -> DraftTree:
    """Best-first draft tree of up to ``nodes`` tokens and depth ``max_depth`` (see module doc),
    built with at most ``max_passes`` drafter passes (the root's included; default ``max_depth``:
    what a linear draft of that depth costs, so a tree spends its extra nodes on the verifier's
    pass, not on the drafter's). Once the passes are spent, only siblings are drawn.

    ``root_logits`` [V]: the drafter's logits for position ``base``. ``expand(tree, node)`` runs one
    drafter pass so that it covers the path to ``node`` and returns the logits after it (it keeps
    ``tree.drafter_path`` up to date). Nodes whose token is in ``stop_tokens`` are never expanded."""
    tree = DraftTree(base=base)
    greedy = params.greedy

    expanded: dict[int, _Expanded] = {}
    value_of: dict[int, float] = {}
    order = itertools.count()
    queue: list[tuple[float, int, bool, int]] = []  # (-priority, tie, is_expand, node)

    def open_node(node: int, logits: torch.Tensor, value: float) -> None:
        expanded[node] = _Expanded(value, logits, params)
        if not greedy:
            tree.q[node] = expanded[node].dist
        best = expanded[node].best_left()
        if best > 0:
            heapq.heappush(queue, (-value * best, next(order), False, node))

    passes = max_depth if max_passes is None else max_passes
    tree.expansions = 1
    open_node(ROOT, root_logits, 1.0)
    while queue and len(tree) < nodes:
        _, _, is_expand, node = heapq.heappop(queue)
        if is_expand:
            if tree.expansions >= passes:
                continue
            tree.expansions += 1
            open_node(node, expand(tree, node), value_of[node])
            continue
        parent = expanded[node]
        token, prob = parent.draw(generator)
        child = tree.add(node, token)
        value_of[child] = parent.value * prob
        best = parent.best_left()
        if best > 0:
            heapq.heappush(queue, (-parent.value * best, next(order), False, node))
        if tree.depths[child] < max_depth and token not in stop_tokens and tree.expansions < passes:
            heapq.heappush(queue, (-value_of[child], next(order), True, child))
    return tree


def walk_greedy(tree: DraftTree, argmax: Sequence[int]) -> tuple[list[int], int]:
    """Accepted path (node indices) and the verifier's own token. ``argmax[0]`` is the verifier's
    choice after the committed prefix, ``argmax[1 + i]`` after node i."""
    path: list[int] = []
    node = ROOT
    while True:
        want = argmax[node + 1]
        match = next((c for c in tree.children.get(node, ()) if tree.tokens[c] == want), None)
        if match is None:
            return path, want
        path.append(match)
        node = match


def walk_sampled(tree: DraftTree, p: torch.Tensor, generator: torch.Generator) -> tuple[list[int], int]:
    """Recursive rejection sampling down the tree (module doc). ``p`` [1 + n, V]: the verifier's
    processed distributions after the prefix and after each node; ``tree.q`` the drafter's."""
    path: list[int] = []
    node = ROOT
    while True:
        target = p[node + 1]
        kids = tree.children.get(node, ())
        accepted = None
        if kids:
            q = tree.q[node].to(p.device).clone()
            q = q / q.sum()
            for child in kids:
                x = tree.tokens[child]
                u = torch.rand((), generator=generator, device=p.device)
                if bool(u * q[x] < target[x]):  # u < p/q without dividing; q(x) > 0 for a drawn token
                    accepted = child
                    break
                residual = (target - q).clamp_min(0.0)
                total = residual.sum()
                # p == q up to rounding leaves no residual: p itself is the limit
                target = residual / total if bool(total > 0) else target
                q[x] = 0.0
                left = q.sum()
                if not bool(left > 0):
                    break
                q = q / left
        if accepted is None:
            return path, int(torch.multinomial(target, 1, generator=generator))
        path.append(accepted)
        node = accepted
