"""Write the figures of one document (or of the theory) as PNG files: what ``polyplan plot`` runs.

Each ``write_*`` returns a ``WrittenFigures``: the paths it wrote and, for figures a document cannot
support yet (an unfinished profile without acceptance pairs, bench results without per-level
statistics), why each was skipped. File names are stable (docs/*.md link them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polyplan.bench.results import load_results
from polyplan.documents.plan import Plan
from polyplan.documents.profile import Profile
from polyplan.errors import UserError
from polyplan.plots import bench as bench_plots, plan as plan_plots, profile as profile_plots, theory as theory_plots
from polyplan.plots.canvas import DEFAULT_DPI, save_figure

#: the figures docs/*.md show (committed in docs/figures/); `polyplan plot all` fails if one is not written
DOC_FIGURES = (
    "speedup-surfaces.png",
    "insertion-region.png",
    "acceptance-stability.png",
    "model-vs-simulation.png",
    "latency-curves.png",
    "acceptance-heatmap.png",
    "pareto-front.png",
    "plan-breakdown.png",
    "predicted-vs-measured.png",
)


@dataclass
class WrittenFigures:
    paths: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<file name>: <why>"

    def __add__(self, other: WrittenFigures) -> WrittenFigures:
        return WrittenFigures(self.paths + other.paths, self.skipped + other.skipped)


def _save(fig, out: Path, name: str, dpi: int) -> Path:
    return save_figure(fig, Path(out) / name, dpi=dpi)


def write_theory_figures(out: str | Path, *, dpi: int = DEFAULT_DPI, grid: int = 40) -> WrittenFigures:
    """``grid``: points per axis of the speedup and insertion maps (time grows with its square)."""
    if not 4 <= grid <= 200:
        raise UserError(f"--grid must be between 4 and 200 points per axis, got {grid}")
    alphas, costs = np.linspace(0.02, 0.98, grid + grid // 4), np.linspace(0.01, 0.6, grid)
    insertion = theory_plots.insertion_grid(np.linspace(0.3, 0.99, grid), np.linspace(0.02, 0.6, grid))
    return WrittenFigures(
        [
            _save(theory_plots.speedup_surfaces(alphas, costs), out, "speedup-surfaces.png", dpi),
            _save(theory_plots.insertion_region(insertion), out, "insertion-region.png", dpi),
            _save(theory_plots.acceptance_stability(), out, "acceptance-stability.png", dpi),
            _save(theory_plots.model_vs_simulation(), out, "model-vs-simulation.png", dpi),
        ]
    )


def write_profile_figures(
    profile_path: str | Path, out: str | Path, *, mode: str = "greedy", dpi: int = DEFAULT_DPI
) -> WrittenFigures:
    profile = Profile.load(profile_path)
    written = WrittenFigures([_save(profile_plots.latency_curves(profile), out, "latency-curves.png", dpi)])
    if profile.pairs:
        written.paths.append(_save(profile_plots.acceptance_heatmap(profile, mode), out, "acceptance-heatmap.png", dpi))
    else:
        unfinished = "" if profile.complete else " (unfinished: rerun `polyplan profile` to resume)"
        written.skipped.append(f"acceptance-heatmap.png: {profile_path} has no acceptance measurements{unfinished}")
    return written


def find_plan_profile(plan: Plan, plan_path: str | Path) -> Path | None:
    """The profile a plan was made from, if it is still on disk: its recorded path as given
    (relative to the working directory), else the same file name beside the plan."""
    recorded = plan.profile.get("path")
    if not recorded:
        return None
    for candidate in (Path(recorded), Path(plan_path).parent / Path(recorded).name):
        if candidate.is_file():
            return candidate
    return None


def plan_options_from_profile(plan: Plan, profile: Profile) -> list[plan_plots.PlanOption]:
    """Every plannable chain of the profile at its best gammas (i.i.d. predictor, the plan's mode,
    context and max gamma): the full picture behind the plan's short list of runners-up."""
    from polyplan.planner import make_predictor, search

    predictor = make_predictor("iid", profile, mode=plan.mode, context=plan.settings.get("context"))
    result = search(
        profile,
        predictor,
        max_gamma=int(plan.settings.get("max_gamma", 16)),
        all_orders=bool(plan.settings.get("all_orders", False)),
    )
    return plan_plots.options_from_estimates(result.ranked)


def write_plan_figures(
    plan_path: str | Path | None, out: str | Path, *, profile_path: str | Path | None = None, dpi: int = DEFAULT_DPI
) -> WrittenFigures:
    """The Pareto front (every chain of the profile when the profile is found, else the plan's own
    short list) and, with the profile, the chosen plan's per-level time breakdown.
    ``plan_path=None``: the plan ``polyplan optimize`` makes from ``profile_path`` with its defaults."""
    if plan_path is None:
        if profile_path is None:
            raise UserError("need a plan or a profile to plan from")
        from polyplan.planner import optimize

        plan = optimize(profile_path)[0]
    else:
        plan = Plan.load(plan_path)
    found = Path(profile_path) if profile_path is not None else find_plan_profile(plan, plan_path)
    profile = Profile.load(found) if found is not None else None
    if profile is not None and profile.target != plan.target:
        raise UserError(f"profile {found} has target {profile.target!r} but the plan's target is {plan.target!r}")
    if profile is not None:
        options = plan_options_from_profile(plan, profile)
        title = f"Every chain of pool {profile.pool!r} at its best gammas ({plan.mode}, iid model)"
    else:
        options = plan_plots.options_from_plan(plan)
        title = "The plan's chain and runners-up (profile not found: short list only)"
    written = WrittenFigures(
        [_save(plan_plots.pareto_front(options, chosen=plan.names, title=title), out, "pareto-front.png", dpi)]
    )
    if profile is not None:
        written.paths.append(_save(plan_plots.plan_breakdown(plan, profile), out, "plan-breakdown.png", dpi))
    else:
        written.skipped.append("plan-breakdown.png: the plan's profile was not found (give --profile)")
    return written


def find_results_plan(results: dict, results_path: str | Path) -> Path | None:
    """The plan a bench run measured, if still on disk (its recorded path, else beside the results)."""
    recorded = results.get("plan", {}).get("path")
    if not recorded:
        return None
    for candidate in (Path(recorded), Path(results_path).parent / Path(recorded).name):
        if candidate.is_file():
            return candidate
    return None


def write_bench_figures(
    results_path: str | Path, out: str | Path, *, plan_path: str | Path | None = None, dpi: int = DEFAULT_DPI
) -> WrittenFigures:
    """Predicted vs measured time per token, measured speedups and, when the plan is found and a
    method recorded per-level statistics, measured against predicted L_i."""
    results = load_results(results_path)
    written = WrittenFigures(
        [
            _save(bench_plots.predicted_vs_measured(results), out, "predicted-vs-measured.png", dpi),
            _save(bench_plots.speedups(results), out, "bench-speedups.png", dpi),
        ]
    )
    name = "levels-measured-vs-predicted.png"
    found = Path(plan_path) if plan_path is not None else find_results_plan(results, results_path)
    comparisons = bench_plots.level_comparisons(results, Plan.load(found)) if found is not None else []
    if comparisons:
        written.paths.append(_save(bench_plots.levels_measured_vs_predicted(comparisons), out, name, dpi))
    elif found is None:
        written.skipped.append(f"{name}: the plan the bench ran was not found (give --plan)")
    else:
        written.skipped.append(f"{name}: no method with per-level statistics ran the plan's chain")
    return written
