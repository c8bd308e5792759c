"""``polyplan profile``: measure a pool's latency curves and acceptance matrix into a profile."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from polyplan.commands import comma_ints, comma_list, sampling_filters
from polyplan.documents.profile import WINDOW_SINK
from polyplan.errors import UserError
from polyplan.weights import DEFAULT_POOL

DEFAULTS_NOTE = "Defaults profile the embedded SmolLM2 pool (9 members) in 3-5 minutes on a 2-core CPU."

# the options of `polyplan profile`; their defaults are ProfileSettings' (polyplan.profiler.session, not
# imported here: it loads torch), which tests/test_profiler_cli.py holds them to
_POOL = typer.Option(DEFAULT_POOL, "--pool", "-p", help="Built-in pool name or pool file.")
_OUTPUT = typer.Option(
    None,
    "--output",
    "-o",
    help="Profile to write (default profiles/<pool>-<device>.json). "
    "An unfinished one with the same settings is resumed.",
)
_MEMBERS = typer.Option(None, "--members", help="Comma-separated subset of members (the target is always included).")
_PROMPTS = typer.Option(8, "--prompts", help="Eval prompts for acceptance (round-robin over categories).")
_PROMPTS_FILE = typer.Option(
    None,
    "--prompts-file",
    help="Measure acceptance on your own prompts: JSONL with text or turns "
    "(optional category, id) or plain text, one prompt per line (default: the built-in eval set).",
)
_MAX_NEW_TOKENS = typer.Option(
    64,
    "--max-new-tokens",
    help="Length of each reference continuation (replay predicts generations up to this long from measured traces).",
)
_NEW_TOKENS = typer.Option(
    "1,2,3,4,5,6,7,8,9,12,16,17,32",
    "--new-tokens",
    help="Latency grid: new tokens per pass (dense where verifications run: T(n) is not smooth in n).",
)
_CONTEXTS = typer.Option(
    "64,512,2048",
    "--contexts",
    help="Latency grid: cached tokens (fewer timed passes past 512; a context that is also a "
    "--prefill-contexts length past 512, or any with --warmup 0, times its prefill as it builds the cache).",
)
_PREFILL_CONTEXTS = typer.Option(
    "32,128,512,2048",
    "--prefill-contexts",
    help="Prompt lengths whose prefill P(c) is measured (one pass from an empty cache; '' skips).",
)
_PREFILL_REPEATS = typer.Option(
    3,
    "--prefill-repeats",
    help="Timed prefills per prompt length (at most 512 // length, about 512 prompt tokens per length; at least one).",
)
_WINDOWS = typer.Option(
    "256",
    "--windows",
    help=f"Drafter windows whose cost in acceptance is measured on long prompts (sink of {WINDOW_SINK} "
    "tokens + the last W; '' skips).",
)
_WINDOW_PROMPTS = typer.Option(
    3,
    "--window-prompts",
    help="Long prompts for it: your --prompts-file's longer than the window, else built-in ones.",
)
_WINDOW_DRAFTERS = typer.Option(
    2,
    "--window-drafters",
    help="Drafters it measures: those ranked fastest under the target by the acceptance measured "
    "(0: every model drafter).",
)
_REPEATS = typer.Option(5, "--repeats", help="Timed passes per grid point (median and IQR).")
_WARMUP = typer.Option(
    1, "--warmup", help="Untimed passes per pass size first, at the first context; and per prefill length up to 512."
)
_TEMPERATURE = typer.Option(1.0, "--temperature", help="Sampling acceptance temperature (0: greedy).")
_TOP_K = typer.Option(None, "--top-k", help="Top-k of the processed distributions (default or 0: off).")
_TOP_P = typer.Option(None, "--top-p", help="Top-p of the processed distributions (default or 1: off).")
_BLOCK = typer.Option(
    8,
    "--block",
    help="Teacher-force shape-sensitive models in blocks of this "
    "many tokens, the verifier's run-time shape (0: one pass); others "
    "take one pass per reference.",
)
_EXTRA_BLOCKS = typer.Option(
    "5",
    "--extra-blocks",
    help="More block sizes: the eval prompts take "
    "turns over --block and these, so a shape-sensitive model's "
    "acceptance (bf16/fp16, llama.cpp; its argmax flips with the pass "
    "shape at near-ties) mixes the shapes ('' for none).",
)
_CATEGORIES = typer.Option(None, "--categories", help="Comma-separated prompt categories.")
_BUDGET = typer.Option(None, "--budget", help="Stop after about this many seconds (between units); rerun to resume.")
_RANDOM_WEIGHTS = typer.Option(
    False,
    "--random-weights",
    help="Latency only, of each architecture with random weights (marked in the profile).",
)
_SCREEN = typer.Option(
    True,
    "--screen/--no-screen",
    help="Measure no further a member slower than the target at every pass size (it cannot pay).",
)
_FORCE = typer.Option(
    False, "--force", help="Start over even if the output was measured with other settings (overwrites it)."
)
_SHOW = typer.Option(False, "--show", help="Only print the summary of an existing profile -o.")


def _int_list(text: str, what: str) -> list[int]:
    values = comma_ints(text, what)
    if not values:
        raise UserError(f"{what} needs at least one value")
    return values


def _print_summary(profile, path: Path, elapsed: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from polyplan.profiler.views import acceptance_matrix, latency_grid

    console = Console()
    state = "complete" if profile.complete else "INCOMPLETE (rerun the same command to resume)"
    took = f" in {elapsed:.0f} s" if elapsed is not None else ""
    console.print(
        f"[bold]{path}[/bold]: {state}{took}; pool {profile.pool}, target {profile.target}, "
        f"{profile.machine.get('cpu')} / {profile.machine.get('gpu') or 'no GPU'}, "
        f"{profile.machine.get('torch_threads')} torch threads"
    )
    if profile.latency:
        ctx = min(min(c.context) for c in profile.latency.values())
        grid = latency_grid(profile, ctx)
        table = Table(title=f"forward time, ms (median), {ctx} cached tokens")
        table.add_column("candidate")
        for n in grid.columns:
            table.add_column(f"n={n}", justify="right")
        for name, row in grid.iterrows():
            table.add_row(str(name), *[f"{v:.1f}" for v in row])
        console.print(table)
    exact = profile.machine.get("exact")
    if exact is not None:
        from polyplan.models.exactness import ExactProbe

        console.print(f"{exact.get('member')} as target: {ExactProbe.from_dict(exact).summary()}", highlight=False)
    _print_matmul_routes(console, profile.machine.get("matmul_routes") or {})
    for name, why in profile.screened.items():
        console.print(f"screened out: {name}, {why} (--no-screen measures it)", highlight=False)
    if profile.prefill:
        lengths = sorted({c for curve in profile.prefill.values() for c in curve.context})
        table = Table(title="prefill, ms per prompt (median; one pass from an empty cache)")
        table.add_column("candidate")
        for c in lengths:
            table.add_column(f"{c} tokens", justify="right")
        for name, curve in profile.prefill.items():
            measured = dict(zip(curve.context, curve.median_s, strict=True))
            table.add_row(name, *[f"{measured[c] * 1e3:.0f}" if c in measured else "-" for c in lengths])
        console.print(table)
    sizes = profile.window_sizes()
    if sizes:
        measured_on = len(profile.windows.get("prompts", []))
        table = Table(title=f"what a window keeps of the target's acceptance ({measured_on} long prompts)")
        table.add_column("drafter")
        for w in sizes:
            table.add_column(f"window {w}: greedy / sampling", justify="right")
        for name in profile.windows.get("by_drafter", {}):
            cells = []
            for w in sizes:
                g, smp = profile.window_factor(name, w, "greedy"), profile.window_factor(name, w, "sampling")
                cells.append("-" if g is None else f"{g:.2f} / {smp:.2f}")
            table.add_row(name, *cells)
        console.print(table)
    if profile.pairs:
        for mode in ("greedy", "sampling"):
            m = acceptance_matrix(profile, mode)
            title = f"{mode} acceptance (rows verify, columns draft)" + (
                f", T={profile.temperature:g}" if mode == "sampling" else ""
            )
            table = Table(title=title)
            table.add_column("verifier \\ drafter")
            for c in m.columns:
                table.add_column(str(c), justify="right")
            for name, row in m.iterrows():
                table.add_row(str(name), *["-" if v != v else f"{v:.2f}" for v in row])
            console.print(table)
        positions = max(p.positions for p in profile.pairs)
        console.print(f"{positions} teacher-forced positions per pair; traces: {profile.traces}")
    workload = profile.settings.get("workload")
    if workload:
        from polyplan.data.prompt_file import describe_workload

        console.print(f"workload: {describe_workload(workload)}")


def register(root: typer.Typer) -> None:
    root.command("profile", epilog=DEFAULTS_NOTE)(profile_command)


def profile_command(
    pool: str = _POOL,
    output: Path | None = _OUTPUT,
    members: str | None = _MEMBERS,
    prompts: int = _PROMPTS,
    prompts_file: Path | None = _PROMPTS_FILE,
    max_new_tokens: int = _MAX_NEW_TOKENS,
    new_tokens: str = _NEW_TOKENS,
    contexts: str = _CONTEXTS,
    prefill_contexts: str = _PREFILL_CONTEXTS,
    prefill_repeats: int = _PREFILL_REPEATS,
    windows: str = _WINDOWS,
    window_prompts: int = _WINDOW_PROMPTS,
    window_drafters: int = _WINDOW_DRAFTERS,
    repeats: int = _REPEATS,
    warmup: int = _WARMUP,
    temperature: float = _TEMPERATURE,
    top_k: int | None = _TOP_K,
    top_p: float | None = _TOP_P,
    block: int = _BLOCK,
    extra_blocks: str = _EXTRA_BLOCKS,
    categories: str | None = _CATEGORIES,
    budget: float | None = _BUDGET,
    random_weights: bool = _RANDOM_WEIGHTS,
    screen: bool = _SCREEN,
    force: bool = _FORCE,
    show: bool = _SHOW,
) -> None:
    """Measure latency curves T(n, c) and the teacher-forced acceptance matrix of a pool."""
    started = time.monotonic()
    if show:
        return _show(output)
    _refuse_unreadable(output, force)
    top_k, top_p = sampling_filters(top_k, top_p)
    settings = _settings(
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        new_tokens=_int_list(new_tokens, "--new-tokens"),
        contexts=_int_list(contexts, "--contexts"),
        prefill_contexts=_optional_ints(prefill_contexts, "--prefill-contexts"),
        prefill_repeats=prefill_repeats,
        windows=_optional_ints(windows, "--windows"),
        window_prompts=window_prompts,
        window_drafters=window_drafters,
        repeats=repeats,
        warmup=warmup,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        block=block,
        extra_blocks=_optional_ints(extra_blocks, "--extra-blocks"),
        categories=[c.strip() for c in categories.split(",")] if categories else None,
        prompts_file=str(prompts_file) if prompts_file is not None else None,
        random_weights=random_weights,
        screen=screen,
    )
    inputs, output = _load_inputs(pool, members, settings, output)
    outcome = _measure(inputs, output, settings, budget_s=budget, force=force, started=started)
    _print_summary(outcome.profile, output, time.monotonic() - started)
    if outcome.stopped_by_budget:
        _stderr_console().print(f"[yellow]time budget of {budget:g} s reached: rerun the same command to continue")


def _optional_ints(text: str, what: str) -> list[int]:
    """A list option whose '' skips what it lists."""
    return _int_list(text, what) if text.strip() else []


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _show(output: Path | None) -> None:
    """``--show``: the summary of an existing profile, nothing measured."""
    from polyplan.documents.profile import Profile

    if output is None:
        raise UserError("--show needs the profile to print: -o FILE")
    _print_summary(Profile.load(output), output, None)


def _refuse_unreadable(output: Path | None, force: bool) -> None:
    """A truncated or newer output file is refused before any model loads (``--force`` overwrites it)."""
    from polyplan.documents.profile import Profile

    if output is not None and output.exists() and not force:
        Profile.load(output)


def _settings(**values):
    """The checked ProfileSettings; a bad ``--prompts-file`` fails here, before any model loads."""
    from polyplan.profiler.session import ProfileSettings

    settings = ProfileSettings(**values)
    settings.validate()
    if settings.prompts_file is not None:
        from polyplan.data.prompt_file import read_prompt_file

        read_prompt_file(Path(settings.prompts_file)).select(settings.categories, settings.prompts)
    return settings


def _load_inputs(pool: str, members: str | None, settings, output: Path | None):
    """The pool's members loaded (a spinner on stderr), its n-gram fit warnings, and the output
    path (default ``profiles/<pool>-<device>[-random].json``)."""
    from polyplan.profiler.pool_inputs import inputs_from_pool
    from polyplan.weights.pools import load_pool

    the_pool = load_pool(pool)
    member_list = comma_list(members) if members else None
    with _stderr_console().status("loading models...") as status:
        inputs = inputs_from_pool(
            the_pool, member_list, random_weights=settings.random_weights, log=lambda msg: status.update(msg)
        )
    prompts_file = Path(settings.prompts_file) if settings.prompts_file is not None else None
    for warning in fit_overlap_warnings(the_pool, [d.name for d in inputs.drafters], prompts_file):
        print(warning, file=sys.stderr)
    if output is None:
        device = "cuda" if inputs.target_drafter.device.type == "cuda" else "cpu"
        output = Path("profiles") / f"{inputs.pool}-{device}{'-random' if settings.random_weights else ''}.json"
    return inputs, output


def _measure(inputs, output: Path, settings, *, budget_s: float | None, force: bool, started: float):
    """run_profile with a progress bar per stage on stderr; Ctrl-C is exit 130, what was measured kept."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from polyplan.profiler.session import run_profile

    columns = [TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=_stderr_console(), transient=False) as bar:
            return run_profile(
                inputs, output, settings, budget_s=budget_s, force=force, progress=_rich_hooks(bar), started_at=started
            )
    except KeyboardInterrupt:
        print(
            f"polyplan: interrupted; measured units are saved in {output}: rerun the same command to resume",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None


def _rich_hooks(bar):
    """The profiling session's ProgressHooks drawn as rich progress bars."""
    from polyplan.profiler.session import ProgressHooks

    class RichHooks(ProgressHooks):
        def __init__(self) -> None:
            self.tasks = {}

        def begin(self, stage: str, total: int) -> None:
            if total:
                self.tasks[stage] = bar.add_task(stage, total=total)

        def advance(self, stage: str, amount: int = 1) -> None:
            if stage in self.tasks:
                bar.advance(self.tasks[stage], amount)

        def note(self, message: str) -> None:
            bar.console.print(f"[yellow]{message}")

    return RichHooks()


def fit_overlap_warnings(pool, names: list[str], prompts_file: Path | None) -> list[str]:
    """One line per n-gram member whose table was fitted on prompts this profile measures on: its
    acceptance would be inflated (it has seen the answers). None on the built-in set, whose fit
    and eval splits are disjoint."""
    from polyplan.data.prompt_file import prompt_set

    if prompts_file is None:
        return []
    measured = {p.text for p in prompt_set(prompts_file, "eval").prompts}
    out = []
    for name in names:
        spec = pool.member(name)
        fit_file = spec.options.get("fit_prompts_file") if spec.source == "ngram" else None
        if not fit_file:
            continue
        shared = measured & {p.text for p in prompt_set(fit_file, "fit").prompts}
        if shared:
            out.append(
                f"warning: {name} was fitted on {len(shared)} of the prompts profiled here ({fit_file}): its "
                "acceptance will be inflated; fit and profile on different prompts "
                '(or mark them "split": "fit" / "eval")'
            )
    return out


def _print_matmul_routes(console: Any, recorded: dict[str, Any]) -> None:
    """Per member, the matmul routes the profile probed (polyplan/models/matmul_routes.py)."""
    from polyplan.models.matmul_routes import MatmulRoutes

    for name, doc in recorded.items():
        console.print(f"{name}: {MatmulRoutes.from_dict(doc).describe()}", highlight=False)
