"""Draft trees are lossless: greedy output is token-identical to the target's, sampled output
follows the target's distribution exactly (the chi-square test of test_executor_sampling with
trees at the bottom of two- and three-level chains), and a broken multi-draft rejection is caught."""

from __future__ import annotations

import pytest
import torch

import polyplan.executor.tree as tree_module
from polyplan import Chain
from polyplan.errors import UserError
from polyplan.executor.sampling import SamplingParams
from polyplan.executor.tree import ROOT, DraftTree, build_tree, walk_greedy
from polyplan.models.model_drafter import ModelDrafter

from test_executor_sampling import (
    CLOSE,
    FAR,
    OTHER,
    PROMPT,
    TARGET,
    L,
    N,
    chi_square_p,
    exact_distribution,
    sample_counts,
)
from tiny_models import CountingPointMass, perturbed_copy, tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_family():
    target = tiny_llama(vocab_size=32, num_layers=2, logit_scale=3.0, seed=1)
    return target, perturbed_copy(target, 0.05, seed=3), perturbed_copy(target, 0.15, seed=2)


@pytest.mark.parametrize(
    "depth,gammas,trees",
    [
        pytest.param(2, [4], [6], id="depth2-tree6"),
        pytest.param(2, [3], [12], id="depth2-tree12"),
        pytest.param(3, [4, 3], [1, 8], id="depth3-tree-at-bottom"),
        pytest.param(3, [4, 3], [5, 6], id="depth3-trees-on-both-drafters"),
        pytest.param(4, [5, 3, 2], [1, 1, 6], id="depth4-tree-at-bottom"),
    ],
)
def test_greedy_trees_are_token_identical_to_the_target(tiny_family, depth, gammas, trees):
    target, close, far = tiny_family
    members = [target, close, far, perturbed_copy(target, 0.3, seed=4)][:depth]
    prompt = [2, 5, 7, 9]
    reference = Chain([target]).generate(prompt, max_new_tokens=40, eos_token_id=[]).tokens
    result = Chain(members, gammas, tree_nodes=trees).generate(prompt, max_new_tokens=40, eos_token_id=[])
    assert result.tokens == reference
    bottom = result.stats.levels[-1]
    assert bottom.tree_rounds > 0 and bottom.tree_nodes_drafted > bottom.tree_rounds


def test_a_tree_accepts_more_per_target_pass_than_its_main_path(tiny_family):
    """Same drafter, same depth: siblings only add chances, so the target's passes can only drop."""
    target, _, far = tiny_family
    prompt = [2, 5, 7, 9]
    linear = Chain([target, far], [4]).generate(prompt, max_new_tokens=60, eos_token_id=[])
    tree = Chain([target, far], [4], tree_nodes=[16]).generate(prompt, max_new_tokens=60, eos_token_id=[])
    assert tree.tokens == linear.tokens
    assert tree.stats.levels[0].forward_passes < linear.stats.levels[0].forward_passes
    assert tree.stats.levels[1].tree_branch_wins > 0


def table_tree_chain(depth: int, gammas: list[int], trees: list[int]) -> Chain:
    members = [TARGET.drafter("target"), CLOSE.drafter("close"), FAR.drafter("far"), OTHER.drafter("other")][:depth]
    return Chain(members, gammas, tree_nodes=trees)


TREE_CASES = [
    pytest.param(2, [3], [5], SamplingParams(1.0), id="depth2-tree5-t1.0"),
    pytest.param(2, [2], [8], SamplingParams(0.8, top_k=4), id="depth2-tree8-topk4"),
    pytest.param(3, [3, 2], [1, 6], SamplingParams(1.0), id="depth3-tree-verified-by-the-middle"),
    pytest.param(3, [3, 2], [4, 5], SamplingParams(1.2, top_p=0.9), id="depth3-trees-at-two-levels-topp"),
]


@pytest.mark.parametrize("depth,gammas,trees,params", TREE_CASES)
def test_sampled_trees_follow_the_target_distribution(depth, gammas, trees, params):
    dist = exact_distribution(TARGET.logits_after, params, PROMPT, L)
    counts = sample_counts(table_tree_chain(depth, gammas, trees), params, N, L)
    p_value = chi_square_p(dist, counts, N)
    assert p_value > 1e-3, f"tree chain output differs from the target's distribution (p={p_value:.2e})"


def test_negative_control_top_choices_as_samples_is_detected(monkeypatch):
    """A natural bug: building the tree from the drafter's top choices (the greedy tree) under
    sampling, while the rejection test assumes the children were drawn from q -- the chi-square
    test must reject it."""
    original = tree_module._Expanded.draw

    def top_choice(self, generator):
        if self.greedy:
            return original(self, generator)
        token = int(self.remaining.argmax())
        self.remaining[token] = 0.0
        self.drawn += 1
        return token, float(self.dist[token])

    monkeypatch.setattr(tree_module._Expanded, "draw", top_choice)
    params = SamplingParams(1.0)
    dist = exact_distribution(TARGET.logits_after, params, PROMPT, L)
    counts = sample_counts(Chain([TARGET.drafter("t"), OTHER.drafter("o")], [3], tree_nodes=[10]), params, N, L)
    assert chi_square_p(dist, counts, N) < 1e-6


def test_tree_attention_scores_each_node_as_its_own_sequence():
    model = tiny_llama(vocab_size=16, num_layers=2, logit_scale=3.0)
    tree_drafter, reference = ModelDrafter(model, "tree"), ModelDrafter(model, "ref")
    prompt, tokens, parents = [2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [-1, -1, 0, 0, 2, 1]
    tree_drafter.score(torch.tensor(prompt[:3]))
    rows = tree_drafter.score_tree(torch.tensor(prompt[3:]), torch.tensor(tokens), parents)
    tree = DraftTree(base=len(prompt))
    for token, parent in zip(tokens, parents, strict=True):
        tree.add(parent, token)
    for node in range(-1, len(tokens)):
        reference.reset()
        sequence = prompt + [tokens[i] for i in tree.path_to(node)]
        torch.testing.assert_close(reference.score(torch.tensor(sequence))[-1], rows[node + 1], atol=1e-4, rtol=1e-4)
    tree_drafter.keep_tree_path([0, 2, 4])
    assert tree_drafter.processed == len(prompt) + 3
    reference.reset()
    expected = reference.score(torch.tensor(prompt + [7, 9, 11, 13]))[-1]
    torch.testing.assert_close(tree_drafter.score(torch.tensor([13]))[-1], expected, atol=1e-4, rtol=1e-4)


def test_greedy_tree_is_best_first_by_path_probability():
    """A drafter sure of its first token and unsure of the second: the budget goes to the second
    position's alternatives, not to a deeper main path."""
    logits = {(): [9.0, 0.0, 0.0, 0.0], (0,): [1.0, 0.9, 0.8, -9.0]}

    def expand(tree, node):
        return torch.tensor(logits.get(tuple(tree.tokens[i] for i in tree.path_to(node)), [0.0] * 4))

    tree = build_tree(0, torch.tensor(logits[()]), expand, SamplingParams(0.0), 4, 5, set(), None)
    assert tree.tokens == [0, 0, 1, 2] and tree.parents == [ROOT, 0, 0, 0]
    assert walk_greedy(tree, [0, 1, 3, 3, 3]) == ([0, 2], 3)


def test_bad_tree_sizes_name_the_level(tiny_family):
    target, close, far = tiny_family
    with pytest.raises(UserError, match=r"level 2 .*tree_nodes must be an integer >= 1"):
        Chain([target, far], [3], tree_nodes=[0])
    with pytest.raises(UserError, match="needs 1 tree sizes"):
        Chain([target, far], [3], tree_nodes=[2, 2])
    with pytest.raises(UserError, match=r"level 2 \(cycle\).*model-free"):
        Chain([target, CountingPointMass(32, [3, 4])], [3], tree_nodes=[4])
    with pytest.raises(UserError, match=r"level 3 .*verified by level 2 \(mid\).*cannot score a tree"):
        Chain([target, _NoTrees(close), far], [3, 2], tree_nodes=[1, 4])
    with pytest.raises(UserError, match="exceeds the member's context"):
        Chain([target, tiny_llama(vocab_size=32, max_position_embeddings=8)], [3], tree_nodes=[9])


class _NoTrees(ModelDrafter):
    """A scoring member that cannot verify trees (as a llama.cpp member)."""

    verifies_trees = False

    def __init__(self, model):
        super().__init__(model, "mid")
