"""``polyplan bench plan.json``: the plan against autoregressive decoding and transformers
assisted generation, side by side on the eval prompts (thin wrapper over polyplan.bench.runner)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from polyplan.chain_text import chain_column
from polyplan.commands import comma_list


def register(root: typer.Typer) -> None:
    root.command("bench")(bench_command)


def bench_command(
    plan_path: Path = typer.Argument(..., metavar="PLAN", help="plan.json written by `polyplan optimize`"),
    output: Path = typer.Option(
        Path("bench.json"), "-o", "--output", help="results JSON (a .md table is written beside it)"
    ),
    markdown: Path | None = typer.Option(None, "--markdown", help="Markdown table path (default: OUTPUT with .md)"),
    pool: str | None = typer.Option(None, "--pool", help="pool name or file (default: the profile's pool)"),
    prompts: int = typer.Option(8, "--prompts", help="eval prompts to run (round-robin over categories)"),
    prompts_file: Path | None = typer.Option(
        None,
        "--prompts-file",
        help="your own prompts: JSONL with text or turns (optional category, id) or plain "
        "text, one per line (default: the built-in eval set)",
    ),
    repeats: int = typer.Option(3, "--repeats", help="passes over the prompts; figures are medians over repeats"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="tokens generated per prompt"),
    seed: int = typer.Option(0, "--seed"),
    grid: bool = typer.Option(False, "--grid", help="also run runners-up and gamma neighbours: measures the regret"),
    static: bool = typer.Option(
        False,
        "--static",
        help="run the plan static only (default: adaptive, as `polyplan run` runs it, beside the static plan)",
    ),
    no_hf: bool = typer.Option(False, "--no-hf", help="skip transformers assisted generation"),
    no_llamacpp_alone: bool = typer.Option(
        False,
        "--no-llamacpp-alone",
        help="skip the speed reference: the GGUF of the target's own weights decoded by llama.cpp alone "
        "(not lossless; run by default where the pool has that GGUF and llama-cpp-python is installed)",
    ),
    also: list[str] = typer.Option(
        [],
        "--also",
        metavar="CHAIN/GAMMAS(/TREE_NODES)",
        help="also run this static chain in the same interleaved run (CHAIN/GAMMAS, or "
        "CHAIN/GAMMAS/TREE_NODES for trees), e.g. 'smollm2-135m,smollm2-135m:q4_0/16' (target first; repeatable); "
        "the target's name alone runs the target alone in polyplan's own loop, as the request model prices it",
    ),
) -> None:
    """Measure a plan: tokens/s, speedup, acceptance per level, predicted vs measured time per token."""
    from polyplan.bench.report import save_markdown
    from polyplan.bench.results import save_results
    from polyplan.bench.runner import run_bench
    from polyplan.documents.plan import Plan
    from polyplan.weights import load_pool

    console = Console(stderr=True)
    plan = Plan.load(plan_path)
    md = markdown or output.with_suffix(".md")
    _check_before_measuring(plan, plan_path, (output, md), prompts_file)
    the_pool = load_pool(pool or plan.profile.get("pool", ""))
    doc = run_bench(
        plan,
        plan_path,
        pool=the_pool,
        prompts=prompts,
        repeats=repeats,
        max_new_tokens=max_new_tokens,
        seed=seed,
        grid=grid,
        hf=not no_hf,
        llamacpp_alone=not no_llamacpp_alone,
        log=lambda m: console.print(f"[dim]{m}[/dim]"),
        prompts_file=prompts_file,
        static=static,
        also=[parse_also(a, plan.target) for a in also],
    )
    save_results(output, doc)
    save_markdown(md, doc)
    print_table(doc)
    print(f"wrote {output} and {md}")
    if not doc.get("complete", True):
        print(f"polyplan: {doc.get('stopped')}; what was measured is in {output}", file=sys.stderr)
        raise typer.Exit(130)


def _check_before_measuring(plan, plan_path: Path, outputs: tuple[Path, Path], prompts_file: Path | None) -> None:
    """What fails fails before minutes of measuring, not after: unwritable outputs, a bad prompt
    file; a plan profiled on another machine is one warning line on stderr."""
    from polyplan.documents.files import check_writable
    from polyplan.profiler.machine import other_machine_warning

    for path in outputs:
        check_writable(path)
    if prompts_file is not None:
        from polyplan.data.prompt_file import read_prompt_file

        read_prompt_file(prompts_file)  # a bad file fails before any model loads
    warning = other_machine_warning(plan.profile, plan_path)
    if warning:
        print(warning, file=sys.stderr)  # one line, never wrapped


def parse_also(text: str, target: str) -> tuple[list[str], list[int], list[int]]:
    """``a,b,c/4,2`` -> (["a", "b", "c"], [4, 2], []); ``a,b/8/16``: a draft tree of 16 nodes at
    the drafter; ``a`` (the target): the target alone; anything else is one error line."""
    from polyplan.errors import UserError

    if text.strip() == target:
        return [target], [], []  # the target alone in polyplan's own loop: what the request model prices
    parts = text.split("/")
    names = comma_list(parts[0])

    def ints(i: int) -> list[int]:
        try:
            return [int(g) for g in comma_list(parts[i])] if i < len(parts) else []
        except ValueError:
            return [0]

    gammas, trees = ints(1), ints(2)
    n_drafters = len(names) - 1
    if (
        len(parts) not in (2, 3)
        or len(names) < 2
        or len(gammas) != n_drafters
        or min(gammas) < 1
        or (len(parts) == 3 and (len(trees) != n_drafters or min(trees) < 1))
    ):
        raise UserError(
            f"--also {text!r}: give the chain (target first), one gamma >= 1 per drafter and optionally one "
            "tree size >= 1 per drafter, as 'target,drafter/16', 'target,middle,bottom/4,2' or 'target,drafter/8/16', "
            "or the target's name alone"
        )
    if names[0] != target:
        raise UserError(f"--also {text!r}: the chain must start with the plan's target {target}")
    return names, gammas, trees


def print_table(doc: dict) -> None:
    table = Table(
        title="polyplan bench: end to end (every prefill counted) first, then decode only; medians over repeats"
    )
    for col in (
        "method",
        "chain",
        "gammas",
        "end to end",
        "worst prompt",
        "decode speedup",
        "decode tok/s",
        "accept len",
        "ms/token",
        "pred iid",
        "pred replay",
        "= AR",
    ):
        table.add_column(col, justify="left" if col in ("method", "chain") else "right")

    def f(x, spec, scale=1.0):
        return "-" if x is None else format(x * scale, spec)

    for m in doc["methods"]:
        me, pr = m["measured"], m["predicted"]
        mal = me.get("mean_acceptance_length")
        table.add_row(
            m["label"],
            chain_column(m["chain"]),
            ",".join("auto" if g is None else str(g) for g in m["gammas"]) or "-",
            f(me.get("end_to_end_speedup"), ".2f"),
            f(me.get("worst_prompt_end_to_end_speedup"), ".2f"),
            f(me.get("speedup"), ".2f"),
            f(me.get("tokens_per_s"), ".1f"),
            " / ".join(f(x, ".2f") for x in mal) if mal else "-",
            f(me.get("time_per_token_s"), ".2f", 1e3),
            f(pr.get("iid"), ".2f", 1e3),
            f(pr.get("replay"), ".2f", 1e3),
            f(me.get("matches_autoregressive"), ".2f"),
        )
    Console().print(table)
    from polyplan.bench.report import (
        alone_lines,
        category_rows,
        length_rows,
        request_error_text,
        speed_reference_lines,
        speed_text,
    )

    for line in speed_reference_lines(doc) + alone_lines(doc):
        Console().print(line, highlight=False)
    _print_rows(
        "per prompt length: end to end speedup / worst prompt / decode speedup", "prompt tokens", *length_rows(doc)
    )
    req = doc.get("requests")
    if req and req.get("errors"):
        Console().print("request time predicted vs measured: " + request_error_text(req["errors"]))
        speed = speed_text(doc.get("settings", {}).get("speed"))
        if speed:
            Console().print(speed)
    workload = (doc.get("workload") or {}).get("name", "?")
    _print_rows(f"per category ({workload}): speedup (tok/s)", "category", *category_rows(doc))
    r = doc.get("regret")
    if r:
        Console().print(f"regret of the chosen plan vs best measured ({r['best_measured']}): {r['regret'] * 100:.1f}%")


def _print_rows(title: str, first: str, labels: list[str], rows: list[list[str]]) -> None:
    """One table of per-group rows (group, prompts, a cell per method); nothing without rows."""
    if not rows:
        return
    table = Table(title=title)
    for col in (first, "prompts", *labels):
        table.add_column(col, justify="left" if col == first else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
