"""``polyplan plot theory|profile|plan|bench|all``: write the notebooks' figures as PNG files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from polyplan.errors import UserError

app = typer.Typer(help="Write figures (PNG) of the theory, a profile, a plan or bench results.", no_args_is_help=True)

#: what ``polyplan plot all`` reads when not told otherwise (the committed documents)
DEFAULT_PROFILE = Path("profiles/smollm2-cpu.json")
DEFAULT_PLAN = Path("profiles/smollm2-cpu.plan.json")
DEFAULT_BENCH = Path("benchmarks/results/smollm2-cpu.json")
DOC_FIGURES_DIR = Path("docs/figures")

OUT_HELP = "folder to write the PNG files into (created if needed)"
DPI_HELP = "resolution of the PNG files"
GRID_HELP = "points per axis of the theory maps (time grows with its square)"


def _report(written) -> None:
    console = Console(highlight=False)
    for path in written.paths:
        console.print(f"wrote {path}", soft_wrap=True)
    for reason in written.skipped:
        console.print(f"[yellow]skipped[/yellow] {reason}", soft_wrap=True)


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")


def _check_output(out: Path, dpi: int) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not 20 <= dpi <= 600:
        raise UserError(f"--dpi must be between 20 and 600, got {dpi}")


def _check_mode(mode: str) -> None:
    if mode not in ("greedy", "sampling"):
        raise UserError(f"--mode must be 'greedy' or 'sampling', not {mode!r}")


@app.command("theory")
def theory_command(
    out: Path = typer.Option(Path("figures"), "--out", help=OUT_HELP),
    dpi: int = typer.Option(100, "--dpi", help=DPI_HELP),
    grid: int = typer.Option(40, "--grid", help=GRID_HELP),
) -> None:
    """Speedup surfaces (2 and 3 levels), where a third model pays, acceptance stability, model vs simulation."""
    _check_output(out, dpi)
    from polyplan.plots.writers import write_theory_figures

    _report(write_theory_figures(out, dpi=dpi, grid=grid))


@app.command("profile")
def profile_command(
    profile: Path = typer.Argument(..., help="profile.json written by `polyplan profile`"),
    out: Path = typer.Option(Path("figures"), "--out", help=OUT_HELP),
    mode: str = typer.Option("greedy", "--mode", help="acceptance to show: greedy | sampling"),
    dpi: int = typer.Option(100, "--dpi", help=DPI_HELP),
) -> None:
    """Latency curves T(n, c) and the acceptance heatmaps (verifier x drafter, pair x category)."""
    _check_output(out, dpi)
    from polyplan.plots.writers import write_profile_figures

    _check_mode(mode)
    _check_file(profile, "profile")
    _report(write_profile_figures(profile, out, mode=mode, dpi=dpi))


@app.command("plan")
def plan_command(
    plan: Path = typer.Argument(..., help="plan.json written by `polyplan optimize`"),
    out: Path = typer.Option(Path("figures"), "--out", help=OUT_HELP),
    profile: Path | None = typer.Option(
        None, "--profile", help="the plan's profile (default: the path the plan records)"
    ),
    dpi: int = typer.Option(100, "--dpi", help=DPI_HELP),
) -> None:
    """The Pareto front of chains (time per token vs models used) and the chosen plan's breakdown."""
    _check_output(out, dpi)
    from polyplan.plots.writers import write_plan_figures

    _check_file(plan, "plan")
    if profile is not None:
        _check_file(profile, "profile")
    _report(write_plan_figures(plan, out, profile_path=profile, dpi=dpi))


@app.command("bench")
def bench_command(
    results: Path = typer.Argument(..., help="results .json written by `polyplan bench`"),
    out: Path = typer.Option(Path("figures"), "--out", help=OUT_HELP),
    plan: Path | None = typer.Option(None, "--plan", help="the plan bench ran (default: the path the results record)"),
    dpi: int = typer.Option(100, "--dpi", help=DPI_HELP),
) -> None:
    """Predicted against measured time per token, measured speedups, per-level L_i against the plan."""
    _check_output(out, dpi)
    from polyplan.plots.writers import write_bench_figures

    _check_file(results, "bench results")
    if plan is not None:
        _check_file(plan, "plan")
    _report(write_bench_figures(results, out, plan_path=plan, dpi=dpi))


@app.command("all")
def all_command(
    out: Path = typer.Option(DOC_FIGURES_DIR, "--out", help=OUT_HELP),
    profile: Path = typer.Option(DEFAULT_PROFILE, "--profile", help="profile to plot"),
    plan: Path | None = typer.Option(
        None,
        "--plan",
        help=f"plan to plot (default: {DEFAULT_PLAN} if committed, else the "
        "plan `polyplan optimize PROFILE` makes, computed in memory)",
    ),
    bench: Path | None = typer.Option(
        None, "--bench", help=f"bench results to plot (default: {DEFAULT_BENCH}; skipped if absent)"
    ),
    dpi: int = typer.Option(100, "--dpi", help=DPI_HELP),
    grid: int = typer.Option(40, "--grid", help=GRID_HELP),
) -> None:
    """Regenerate every figure the docs show (run from the repository root: reads the committed files)."""
    _check_output(out, dpi)
    from polyplan.plots.writers import (
        DOC_FIGURES,
        WrittenFigures,
        write_bench_figures,
        write_plan_figures,
        write_profile_figures,
        write_theory_figures,
    )

    _check_file(profile, "profile")
    for path, what in ((plan, "plan"), (bench, "bench results")):
        if path is not None:
            _check_file(path, what)
    if plan is None and DEFAULT_PLAN.is_file():
        plan = DEFAULT_PLAN
    if bench is None and DEFAULT_BENCH.is_file():
        bench = DEFAULT_BENCH
    written = write_theory_figures(out, dpi=dpi, grid=grid)
    written += write_profile_figures(profile, out, dpi=dpi)
    written += write_plan_figures(plan, out, profile_path=profile, dpi=dpi)
    if bench is not None:
        written += write_bench_figures(bench, out, plan_path=plan, dpi=dpi)
    stale = [reason for reason in written.skipped if reason.split(":")[0] in DOC_FIGURES]
    if bench is None:  # not an error: the bench figures simply wait for committed results
        written += WrittenFigures(
            skipped=[f"bench figures: no bench results ({DEFAULT_BENCH} not committed; give --bench)"]
        )
    _report(written)
    if stale:
        raise UserError(f"{len(stale)} figure(s) the docs show not regenerated: {'; '.join(stale)}")
