"""polyplan.plots: every figure draws the numbers the theory (or the document) gives, and
``polyplan plot`` writes them; bad input is one line. Synthetic documents only (no weights)."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import polyplan.plots as plots
from polyplan.bench.results import save_results
from polyplan.documents import AcceptancePair, Candidate, LatencyCurve, Plan, Profile
from polyplan.planner import IidPredictor, optimize
from polyplan.theory import optimal_gamma_two_level, predict_chain, search_gammas
from polyplan.theory.acceptance import capped_geometric_pmf

NEW_TOKENS = [1, 2, 4, 8, 16, 32]
COSTS = {"target": 1.0, "mid": 0.25, "tiny": 0.01, "lookup": 0.0005}
GREEDY = {
    ("target", "mid"): 0.92,
    ("target", "tiny"): 0.55,
    ("mid", "tiny"): 0.85,
    ("target", "lookup"): 0.30,
    ("mid", "lookup"): 0.32,
    ("tiny", "lookup"): 0.35,
}
CATEGORIES = {"code": 1.05, "chat": 0.9, "math": 1.0}


def synthetic_profile(slope: float = 0.01) -> Profile:
    """A pool where a middle model helps: T(n) = T(1) (1 + slope (n - 1)) at two contexts."""

    def curve(t1: float) -> LatencyCurve:
        row = [t1 * (1 + slope * (n - 1)) for n in NEW_TOKENS]
        return LatencyCurve(
            new_tokens=NEW_TOKENS,
            context=[64, 512],
            median_s=[row, [1.1 * x for x in row]],
            spread_s=[[0.05 * x for x in row]] * 2,
            repeats=5,
        )

    pairs = [
        AcceptancePair(
            verifier=v,
            drafter=d,
            greedy=a,
            sampling=0.9 * a,
            positions=1000,
            by_category={
                c: {"greedy": min(0.99, a * f), "sampling": 0.9 * a * f, "positions": 300}
                for c, f in CATEGORIES.items()
            },
        )
        for (v, d), a in GREEDY.items()
    ]
    return Profile(
        pool="synthetic",
        target="target",
        candidates=[Candidate(name=n, source=f"org/{n}", point_mass=n == "lookup") for n in COSTS],
        latency={n: curve(t) for n, t in COSTS.items()},
        pairs=pairs,
        temperature=1.0,
        machine={"summary": "synthetic"},
    )


def bench_document(plan: Plan) -> dict:
    """Bench results with known errors: the plan runs 30% slower than predicted, two-level 20%."""
    ar = plan.prediction["autoregressive_time_per_token_s"]

    def method(name, chain, gammas, measured, predicted, tokens_per_pass=None):
        return {
            "name": name,
            "label": name,
            "engine": "polyplan",
            "chain": chain,
            "gammas": gammas,
            "measured": {
                "time_per_token_s": measured,
                "speedup": ar / measured,
                "mean_acceptance_length": None,
                "tokens_per_pass": tokens_per_pass,
            },
            "predicted": predicted,
            "error": {k: abs(v - measured) / measured for k, v in predicted.items()},
        }

    two = plan.two_level
    return {
        "created": "2026-11-25T18:00:00+00:00",
        "machine": {"summary": "synthetic"},
        "plan": {"path": "plan.json"},
        "settings": {},
        "regret": None,
        "runs": [],
        "methods": [
            method("autoregressive", ["target"], [], ar, {"iid": ar}),
            method(
                "two-level",
                two["chain"],
                two["gammas"],
                two["time_per_token_s"] * 1.2,
                {"iid": two["time_per_token_s"]},
            ),
            method(
                "plan",
                plan.names,
                plan.gammas,
                plan.time_per_token * 1.3,
                {"iid": plan.time_per_token, "replay": plan.time_per_token * 1.25},
                [0.8 * x for x in plan.prediction["tokens_per_pass"]],
            ),
        ],
    }


def write_documents(folder: Path) -> tuple[Path, Path, Path]:
    """profile.json, plan.json and bench.json of the synthetic pool in ``folder``."""
    profile_path, plan_path, bench_path = folder / "profile.json", folder / "plan.json", folder / "bench.json"
    synthetic_profile().save(profile_path)
    plan, _ = optimize(profile_path)
    plan.save(plan_path)
    save_results(bench_path, bench_document(plan))
    return profile_path, plan_path, bench_path


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> tuple[Path, Path, Path]:
    return write_documents(tmp_path_factory.mktemp("plot-documents"))


# ---------------------------------------------------------------------------------------------- theory


def test_two_level_surface_breaks_even_on_the_diagonal_and_peaks_in_the_corner():
    alphas = np.linspace(0.05, 0.95, 19)
    costs = np.linspace(0.013, 0.493, 13)  # never equal to an alpha: break-even is a tie there
    speedup, best = plots.two_level_speedup_grid(alphas, costs)
    # speedup > 1 iff a > c (a^i <= a makes the drafted tokens worth less than g c otherwise)
    assert np.array_equal(speedup > 1, alphas[None, :] > costs[:, None])
    assert np.unravel_index(speedup.argmax(), speedup.shape) == (0, len(alphas) - 1)
    assert np.all(np.diff(speedup, axis=1) > 0) and np.all(np.diff(speedup, axis=0) < 0)
    for i, j in [(0, 18), (5, 10), (12, 3)]:
        optimum = optimal_gamma_two_level(alphas[j], costs[i], max_gamma=32)
        assert best[i, j] == optimum.gamma
        assert speedup[i, j] == pytest.approx(predict_chain([alphas[j]], [optimum.gamma], [1.0, costs[i]]).speedup)


def test_speedup_surfaces_draw_both_grids():
    alphas, costs = np.linspace(0.05, 0.95, 10), np.linspace(0.02, 0.5, 8)
    fig = plots.speedup_surfaces(alphas, costs, max_gamma_three=6)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    two, _ = plots.two_level_speedup_grid(alphas, costs)
    three, gammas = plots.three_level_speedup_grid(alphas, costs, max_gamma=6)
    np.testing.assert_allclose(images[0].get_array(), two)
    np.testing.assert_allclose(images[1].get_array(), three)
    best, prediction = search_gammas([alphas[7], alphas[7]], [1.0, costs[2], costs[2] ** 2], max_gamma=6)
    assert list(gammas[2, 7]) == best and three[2, 7] == pytest.approx(prediction.speedup)


def test_insertion_region_pays_for_good_cheap_middle_models_only():
    alphas, costs = np.linspace(0.4, 0.98, 8), np.linspace(0.02, 0.6, 7)
    grid = plots.insertion_grid(alphas, costs, max_gamma=8)
    assert grid.gain[0, -1] > 1.5  # accurate and cheap: a clear gain
    assert grid.gain[-1, 0] < 1  # inaccurate and expensive: a loss
    assert np.all(np.diff(grid.gain, axis=1) >= -1e-12)  # better acceptance never hurts
    assert np.all(np.diff(grid.gain, axis=0) <= 1e-12)  # higher cost never helps
    _, base = search_gammas([0.55], [1.0, 0.02], max_gamma=8)
    _, three = search_gammas([alphas[3], 0.75], [1.0, costs[2], 0.02], max_gamma=8)
    assert grid.gain[2, 3] == pytest.approx(base.time_per_token / three.time_per_token)
    fig = plots.insertion_region(grid)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), np.log2(grid.gain))


def test_acceptance_cv_matches_the_pmf_and_speculative_sampling_is_steadier():
    for rate in (0.2, 0.5, 0.9):
        pmf = np.array(capped_geometric_pmf(rate, 4))
        accepted = np.arange(5)
        mean, var = (pmf * accepted).sum(), (pmf * accepted**2).sum() - (pmf * accepted).sum() ** 2
        assert plots.acceptance_cv(rate, 4, include_bonus=False) == pytest.approx(np.sqrt(var) / mean)
        assert plots.acceptance_cv(rate, 4, include_bonus=True) == pytest.approx(np.sqrt(var) / (mean + 1))
    rates = np.linspace(0.05, 0.95, 50)
    assert np.all(np.diff(plots.acceptance_cv(rates, 6, include_bonus=False)) < 0)
    pairs = plots.random_distribution_pairs(n_pairs=30, seed=1)
    em = np.array([p.exact_match for p in pairs])
    ss = np.array([p.speculative_sampling for p in pairs])
    assert np.all(ss >= em - 1e-12) and np.any(ss > em + 0.1)
    fig = plots.acceptance_stability(pairs=pairs)
    scatter = fig.axes[1].collections[0].get_offsets()
    assert len(scatter) == 30 and np.all(scatter[:, 1] <= scatter[:, 0] + 1e-9)


def test_exact_model_agrees_with_simulation():
    checks = plots.model_vs_simulation_data(np.array([0.3, 0.6, 0.9]), n_tokens=3000, seed=3)
    assert [len(c.exact) for c in checks] == [3, 3, 3]
    for check in checks:
        assert np.all(np.abs(check.simulated - check.exact) < 5 * check.stderr + 1e-3), check.label
    fig = plots.model_vs_simulation(checks)
    lines = [line for line in fig.axes[0].lines if len(line.get_xdata()) == 3]
    np.testing.assert_allclose(lines[0].get_ydata(), checks[0].exact)


# ---------------------------------------------------------------------------------------------- profile


def test_latency_curves_draw_every_context_of_every_candidate():
    profile = synthetic_profile()
    fig = plots.latency_curves(profile)
    lines = fig.axes[0].lines
    assert len(lines) == 4 * 2
    np.testing.assert_allclose(lines[1].get_ydata(), np.array(profile.latency["target"].median_s[1]) * 1e3)
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(plots.profile.UserError):
        plots.latency_curves(profile, names=["nobody"])


def test_acceptance_heatmaps_hold_the_measured_rates():
    profile = synthetic_profile()
    verifiers, drafters, matrix = plots.acceptance_matrix(profile, "greedy")
    assert verifiers == ["target", "mid", "tiny"] and drafters == ["mid", "tiny", "lookup"]
    assert matrix[0, 0] == 0.92 and matrix[1, 1] == 0.85 and np.isnan(matrix[1, 0]) and np.isnan(matrix[2, 0])
    labels, categories, by_category = plots.category_matrix(profile, "sampling")
    assert categories == ["chat", "code", "math"] and len(labels) == len(GREEDY)
    assert by_category[0, 1] == pytest.approx(0.9 * 0.92 * 1.05)
    fig = plots.acceptance_heatmap(profile, "greedy")
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.ma.filled(shown, np.nan), matrix)
    assert len(fig.axes[1].images) == 1


# ---------------------------------------------------------------------------------------------- plan


def test_pareto_front_keeps_only_undominated_chains():
    P = plots.PlanOption
    options = [
        P(("t",), (), 1.0),
        P(("t", "a"), (4,), 0.5),
        P(("t", "b"), (4,), 0.7),
        P(("t", "a", "b"), (4, 2), 0.6),
        P(("t", "a", "c"), (4, 2), 0.4),
        P(("t", "a", "b", "c"), (4, 2, 1), 0.45),
    ]
    front = plots.pareto_options(options)
    assert [o.chain for o in front] == [("t",), ("t", "a"), ("t", "a", "c")]
    fig = plots.pareto_front(options, chosen=("t", "a", "c"))
    line = next(line for line in fig.axes[0].lines if len(line.get_xdata()) == 3)
    np.testing.assert_allclose(line.get_ydata(), [1000, 500, 400])


def test_plan_options_and_breakdown(documents):
    profile_path, plan_path, _ = documents
    plan, profile = Plan.load(plan_path), Profile.load(profile_path)
    options = plots.options_from_plan(plan)
    assert options[0].chain == tuple(plan.names) and options[0].time_per_token == pytest.approx(plan.time_per_token)
    assert any(o.models == 1 for o in options)
    terms = plots.level_breakdown(plan, profile)
    assert len(terms) == len(plan.names) and all(t > 0 for t in terms)
    # the breakdown is the theory's steady state (the plan's own figures are at its 64-token horizon)
    steady = IidPredictor(profile, mode=plan.mode, context=plan.settings["context"]).predict(plan.names, plan.gammas)
    assert sum(terms) == pytest.approx(steady.time_per_token)


def test_breakdown_with_flat_latency_is_cost_times_passes_per_token(tmp_path):
    flat = synthetic_profile(slope=0.0)
    flat.save(tmp_path / "flat.json")
    plan, _ = optimize(tmp_path / "flat.json")
    terms = plots.level_breakdown(plan, flat)
    alphas = [flat.pair(u, d).greedy for u, d in pairwise(plan.names)]
    costs = [flat.latency[n](1, plan.settings["context"]) for n in plan.names]
    prediction = predict_chain(alphas, plan.gammas, costs)
    np.testing.assert_allclose(
        terms, [t * p for t, p in zip(costs, prediction.passes_per_token, strict=True)], rtol=1e-9
    )


# ---------------------------------------------------------------------------------------------- bench


def test_predicted_vs_measured_shows_each_prediction(documents):
    from polyplan.bench.results import load_results

    results = load_results(documents[2])
    points = plots.prediction_points(results)
    assert [(p.method, p.predictor) for p in points] == [
        ("autoregressive", "iid"),
        ("two-level", "iid"),
        ("plan", "iid"),
        ("plan", "replay"),
    ]
    errors = {(p.method, p.predictor): p.relative_error for p in points}
    assert errors[("plan", "iid")] == pytest.approx(1 / 1.3 - 1) and errors[("autoregressive", "iid")] == 0
    fig = plots.predicted_vs_measured(results)
    bars = [patch.get_width() for patch in fig.axes[1].patches]
    np.testing.assert_allclose(bars, [e * 100 for e in errors.values()])
    assert len(plots.speedups(results).axes[0].patches) == 3
    with pytest.raises(plots.bench.UserError):
        plots.predicted_vs_measured({"methods": []})


def test_levels_measured_against_the_plans_prediction(documents):
    from polyplan.bench.results import load_results

    results, plan = load_results(documents[2]), Plan.load(documents[1])
    comparisons = plots.level_comparisons(results, plan)
    assert [c.method for c in comparisons] == ["plan"]  # the only method with per-level statistics
    (plan_levels,) = comparisons
    assert plan_levels.chain == tuple(plan.names)
    np.testing.assert_allclose(plan_levels.measured, 0.8 * np.array(plan.predictions["iid"]["tokens_per_pass"]))
    fig = plots.levels_measured_vs_predicted(comparisons)
    np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches], plan_levels.measured)
    with pytest.raises(plots.bench.UserError):
        plots.levels_measured_vs_predicted([])


# ---------------------------------------------------------------------------------------------- CLI


def polyplan(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polyplan.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_plot_all_writes_every_doc_figure(documents, tmp_path):
    profile_path, plan_path, bench_path = documents
    out = tmp_path / "figures"
    run = polyplan(
        "plot",
        "all",
        "--out",
        str(out),
        "--profile",
        str(profile_path),
        "--plan",
        str(plan_path),
        "--bench",
        str(bench_path),
        "--dpi",
        "40",
        "--grid",
        "6",
    )
    assert run.returncode == 0, run.stderr
    from polyplan.plots.writers import DOC_FIGURES

    for name in (*DOC_FIGURES, "bench-speedups.png", "levels-measured-vs-predicted.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name


def test_cli_plot_plan_finds_its_profile_and_profile_plot_runs(documents, tmp_path):
    profile_path, plan_path, _ = documents
    run = polyplan("plot", "plan", str(plan_path), "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "plan-breakdown.png").is_file() and (tmp_path / "pareto-front.png").is_file()
    run = polyplan("plot", "profile", str(profile_path), "--out", str(tmp_path), "--mode", "sampling")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "latency-curves.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "missing.json"], "does not exist"),
        (["bench", "{plan}"], "polyplan.bench"),
        (["plan", "{bench}"], "polyplan.plan"),
        (["profile", "{profile}", "--mode", "argmax"], "--mode"),
        (["profile", "{profile}", "--out", "{profile}"], "not a folder"),
        (["bench", "{bench}", "--dpi", "0"], "--dpi"),
        (["theory", "--grid", "1"], "--grid"),
        (["all", "--profile", "nowhere.json"], "does not exist"),
    ],
)
def test_cli_plot_bad_input_is_one_line(documents, tmp_path, args, message, monkeypatch, capsys):
    """In-process through the console entry point (a subprocess per case would cost seconds each)."""
    from polyplan.cli import main

    profile_path, plan_path, bench_path = documents
    names = {"profile": str(profile_path), "plan": str(plan_path), "bench": str(bench_path)}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["polyplan", "plot", *[a.format(**names) for a in args]])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_unfinished_profile_writes_latency_and_says_why_the_heatmap_is_missing(tmp_path):
    from polyplan.plots.writers import write_profile_figures

    partial = synthetic_profile()
    partial.pairs, partial.complete = [], False
    partial.save(tmp_path / "partial.json")
    written = write_profile_figures(tmp_path / "partial.json", tmp_path / "out")
    assert [p.name for p in written.paths] == ["latency-curves.png"]
    assert len(written.skipped) == 1 and "no acceptance measurements" in written.skipped[0]
    assert "rerun `polyplan profile`" in written.skipped[0]
