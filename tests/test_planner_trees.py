"""The planner gives the bottom drafter a tree where the theory says it pays, and says why not
elsewhere (sampling plans, llama.cpp verifiers, profiles without rank rates, compute-bound verifiers)."""

from __future__ import annotations

from dataclasses import replace

from polyplan.documents.plan import Plan
from polyplan.planner import optimize
from polyplan.planner.trees import plan_trees

from test_planner import curve, make_profile, save


def tree_profile(slope: float, rank_rates=(0.6, 0.2, 0.08, 0.03), backend: str = "transformers"):
    prof = make_profile({"target": 0.1, "draft": 0.004}, {("target", "draft"): (rank_rates or (0.6,))[0]})
    prof.latency["target"] = curve(0.1, slope)
    prof.pairs = [replace(p, rank_rates=list(rank_rates)) for p in prof.pairs]
    prof.candidates = [replace(c, backend=backend) if c.name == "target" else c for c in prof.candidates]
    return prof


def test_a_flat_verifier_and_an_unsure_drafter_get_a_tree():
    sizes, gammas, doc = plan_trees(tree_profile(slope=0.01), ["target", "draft"], [6], "greedy", 64)
    assert sizes[0] > 1 and doc["nodes"] == sizes[0] and gammas[0] == doc["depth"] >= 6
    assert doc["tree_tokens_per_pass"] > doc["linear_tokens_per_pass"] and doc["predicted_gain"] > 0
    assert doc["reason"].startswith(f"tree of {sizes[0]}")


def test_a_compute_bound_verifier_stays_linear_and_says_why():
    sizes, gammas, doc = plan_trees(tree_profile(slope=1.0), ["target", "draft"], [6], "greedy", 64)
    assert sizes == [1] and gammas == [6] and doc["reason"].startswith("linear: no tree beats it")


def test_no_tree_where_it_cannot_run_or_was_not_measured():
    cases = [
        (tree_profile(0.01), "sampling", "greedy decoding only"),
        (tree_profile(0.01, backend="llama.cpp"), "greedy", "cannot verify a tree"),
        (tree_profile(0.01, rank_rates=()), "greedy", "no rank rates"),
    ]
    for prof, mode, why in cases:
        sizes, _, doc = plan_trees(prof, ["target", "draft"], [6], mode, 64)
        assert sizes == [1] and why in doc["reason"], doc


def test_optimize_records_the_tree_in_the_plan_and_run_reads_it(tmp_path):
    from polyplan.assemble import ChainSpec

    path = save(tmp_path, tree_profile(slope=0.01))
    plan, _ = optimize(path, predictor="iid", max_gamma=8)
    assert plan.tree_nodes and plan.tree_nodes[-1] > 1 and plan.trees["nodes"] == plan.tree_nodes[-1]
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.tree_nodes == plan.tree_nodes
    assert ChainSpec.of_plan(loaded).tree_nodes == plan.tree_nodes


def test_replay_keeps_hard_stretches_together():
    """Ranks clustered in a hard stretch: the replayed tree gains more than the i.i.d. formula with
    the same average rates (the reason the planner replays when it can)."""
    import numpy as np

    from polyplan.planner.trees import replay_tokens_per_pass
    from polyplan.theory.trees import best_first_tree, expected_accepted, linear_shape

    easy, hard = np.ones(200, dtype=np.int64), np.tile([2, 1, 2, 2, 1, 2, 0, 2], 25)
    ranks = [np.concatenate([easy, hard])]
    rates = [float((ranks[0] == r).mean()) for r in (1, 2, 3)]
    tree, linear = best_first_tree(rates, 16, 6), linear_shape(6)
    replay_gain = replay_tokens_per_pass(ranks, tree) / replay_tokens_per_pass(ranks, linear)
    iid_gain = (1 + expected_accepted(tree, rates)) / (1 + expected_accepted(linear, rates))
    assert replay_gain > iid_gain > 1
