"""``polyplan optimize profile.json -o plan.json``: thin wrapper over polyplan.planner.optimize."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from polyplan.chain_text import chain_column, chain_text
from polyplan.commands import comma_list
from polyplan.errors import UserError

#: --export's choices -> the key of the plan's exports they print
EXPORTS = {"hf": "transformers", "vllm": "vllm", "llama-server": "llama_server"}


def register(root: typer.Typer) -> None:
    root.command("optimize")(optimize_command)


def optimize_command(
    profile: Path = typer.Argument(..., help="profile.json written by `polyplan profile`"),
    output: Path = typer.Option(Path("plan.json"), "-o", "--output", help="where to write the plan"),
    top: int = typer.Option(5, "--top", help="runners-up to keep and show"),
    mode: str = typer.Option("greedy", "--mode", help="acceptance to plan for: greedy | sampling"),
    predictor: str = typer.Option(
        "auto",
        "--predictor",
        help="replay (trace replay; the default when the profile has traces) | iid (exact i.i.d. model)",
    ),
    max_gamma: int = typer.Option(16, "--max-gamma", help="largest gamma tried per level"),
    max_new_tokens: int = typer.Option(
        64,
        "--max-new-tokens",
        help="generation length to plan for (short generations pay for a cut-short last round); "
        "0: the steady state of an unbounded generation",
    ),
    context: float | None = typer.Option(
        None, "--context", help="KV-cache length to read latency curves at (default: from the profile)"
    ),
    all_orders: bool = typer.Option(False, "--all-orders", help="try every chain order (small pools)"),
    export: str | None = typer.Option(
        None, "--export", help=f"also print the best two-level sub-plan for: {' | '.join(EXPORTS)}"
    ),
    choose: str = typer.Option(
        "robust",
        "--choose",
        help="which near-best plan to run: robust (of the plans whose uncertainty intervals overlap the best "
        "point estimate's, those no prompt length punishes -- whole requests priced per prompt length, prefills "
        "counted -- then the best pessimistic 90th-percentile time per token) | point (the best point estimate)",
    ),
    near: float = typer.Option(
        0.10,
        "--near",
        help="plans whose predicted time per token is within this fraction of the best get an interval and are "
        "considered by --choose",
    ),
    json_out: bool = typer.Option(False, "--json", help="print the plan as JSON instead of tables"),
    members: str | None = typer.Option(
        None,
        "--members",
        help="plan from only these profiled members (comma-separated; the target is always in), e.g. to "
        "leave out a drafter that is the target's own weights",
    ),
) -> None:
    """Pick the fastest lossless chain (subset, order, gammas) from a profile and write plan.json."""
    from polyplan.planner import optimize

    if export is not None and export not in EXPORTS:
        *others, last = map(repr, EXPORTS)
        raise UserError(f"--export must be {', '.join(others)} or {last}, not {export!r}")
    if max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    plan, result = optimize(
        profile,
        mode=mode,
        predictor=predictor,
        max_gamma=max_gamma,
        context=context,
        all_orders=all_orders,
        top=top,
        max_new_tokens=max_new_tokens or None,
        choose=choose,
        tolerance=near,
        members=comma_list(members) if members is not None else None,
    )
    plan.save(output)
    if json_out:
        print(json.dumps(plan.to_dict(), indent=2))
        return
    print_plan(plan, export)
    Console().print(f"wrote {output}")


def print_plan(plan, export: str | None) -> None:
    """The plan as optimize shows it: warnings, the ranked plans, why each model is in or out, the
    other predictor's figure and the ``--export`` asked for."""
    console = Console()
    _print_warnings(console, plan)
    console.print(_plans_table(plan))
    _print_choice(console, plan)
    _print_prompt_lengths(console, plan)
    if plan.trees:
        console.print(f"draft tree at level {plan.trees['level']} ({plan.trees['member']}): {plan.trees['reason']}")
    _print_reserves(console, plan)
    console.print(_insertion_table(plan))
    for other, p in plan.predictions.items():
        if other != plan.settings["predictor"]:
            console.print(f"{other} predictor for the same plan: {p['time_per_token_s'] * 1e3:.2f} ms/token")
    if export:
        _print_export(console, plan, export)


def _print_reserves(console: Console, plan) -> None:
    """The policy's reserve drafters and what the profile's long prompts did to their acceptance."""
    policy = plan.policy or {}
    names = policy.get("names") or []
    factors = (policy.get("requests") or {}).get("prompt_factors") or {}
    for name in names[len(plan.names) :]:
        row = factors.get(name)
        measured = f": acceptance x{row[2]:.2f} on the profile's long prompts (~{row[1]:.0f} tokens)" if row else ""
        console.print(f"reserve: {name} (no prefill; a request may run it instead of the plan's drafters){measured}")


def _print_warnings(console: Console, plan) -> None:
    """What the plan was made from that it should not have been: an unfinished profile, unread
    traces, random weights."""
    if not plan.profile.get("complete", True):
        console.print(
            "[yellow]warning: the profile is unfinished (rerun `polyplan profile` to complete it); "
            "this plan uses what was measured so far[/yellow]"
        )
    if plan.settings.get("unread_traces"):
        console.print(
            f"[yellow]warning: {plan.settings['unread_traces']}: planned with the i.i.d. predictor "
            "instead of replay[/yellow]"
        )
    if plan.profile.get("random_weights"):
        console.print(
            f"[yellow]warning: latency of {', '.join(plan.profile['random_weights'])} was measured with "
            "random weights[/yellow]"
        )


def _span_title(plan) -> str:
    """The interval column's heading, e.g. ``p10-p90``."""
    quantiles = plan.choice.get("quantiles") or [0.1, 0.9]
    return f"p{quantiles[0] * 100:.0f}-p{quantiles[1] * 100:.0f}"


def _plans_table(plan) -> Table:
    """The chosen plan and its runners-up, one row each."""
    table = Table(
        title=f"polyplan plans for pool {plan.profile.get('pool')!r} "
        f"({plan.settings['mode']}, {plan.settings['predictor']} predictor, context {plan.settings['context']:g}, "
        f"{_horizon_text(plan.settings.get('max_new_tokens'))})"
    )
    for col in ("#", "chain (target first)", "gammas", "ms/token", "speedup", _span_title(plan), "accept len", "L_i"):
        table.add_column(col, justify="right" if col not in ("chain (target first)",) else "left")
    rows = [plan.prediction] + plan.runners_up
    for i, r in enumerate(rows, start=1):
        table.add_row(
            str(i),
            chain_column(r["chain"]),
            ",".join(map(str, r["gammas"])) or "-",
            f"{r['time_per_token_s'] * 1e3:.2f}",
            f"{r['speedup']:.2f}x",
            _span(r, "speedup", "{:.2f}"),
            f"{r['mean_acceptance_length']:.2f}",
            " ".join(f"{x:.2f}" for x in r["tokens_per_pass"]),
            style="bold green" if i == 1 else None,
        )
    return table


def _print_choice(console: Console, plan) -> None:
    """Why plan 1 was chosen, and the workload and prompt length it was planned for."""
    if plan.choice.get("reason"):
        console.print(
            f"{_span_title(plan)}: the speedup's interval under the profile's own spread "
            "(prompt-to-prompt acceptance, latency repeats)"
        )
        console.print(f"plan 1 chosen by {plan.choice['reason']}")
    from polyplan.data.prompt_file import describe_workload

    console.print(f"planned for the workload the profile measured: {describe_workload(plan.profile.get('workload'))}")
    if plan.settings.get("prompt_length") is not None:
        console.print(
            f"ms/token counts each drafter's prefill of the workload's mean prompt "
            f"({plan.settings['prompt_length']:.0f} tokens) once per generation; the target's own prefill is "
            "the same for every plan and left out"
        )


def _insertion_table(plan) -> Table:
    """Why each model is in or out: its gain and the paper's insertion condition."""
    ins = Table(title="why each model is in or out (insertion condition)")
    for col in ("model", "in?", "gain", "paper: T/L cost < verifier saving (ms/token)", "reason"):
        ins.add_column(col)
    for v in plan.insertion:
        gain = "-" if v["gain"] is None else f"{v['gain']:.3f}x"
        c = v.get("condition")
        paper = (
            "-"
            if not c
            else (
                f"{c['new_model_cost'] * 1e3:.2f} {'<' if c['paper_condition'] else '>='} "
                f"{c['verifier_saving'] * 1e3:.2f}"
            )
        )
        ins.add_row(v["model"], "yes" if v["included"] else "no", gain, paper, v["reason"])
    return ins


def _print_export(console: Console, plan, export: str) -> None:
    """The best two-level sub-plan as another engine's settings (JSON on stdout), or why there is none."""
    key = EXPORTS[export]
    if key in plan.exports:
        print(json.dumps(plan.exports[key], indent=2))
    elif key == "llama_server" and "sub_plan" in plan.exports:
        console.print("the best two-level sub-plan is not a pair of llama.cpp members: no llama-server export")
    else:
        console.print(plan.exports.get("note", "nothing to export"))


def _span(row: dict, key: str, fmt: str) -> str:
    """The row's uncertainty interval of ``key`` ("-" for plans that were not considered)."""
    iv = row.get("interval")
    if not iv:
        return "-"
    lo, hi = iv[key]
    return f"{fmt.format(lo)}-{fmt.format(hi)}"


def _horizon_text(max_new_tokens: int | None) -> str:
    return f"{max_new_tokens} new tokens" if max_new_tokens else "steady state"


def _print_prompt_lengths(console, plan) -> None:
    """The plan's table per prompt length: what a request runs and its predicted end-to-end speedup."""
    from rich.table import Table

    if not plan.by_prompt_length:
        if len(plan.names) > 1:
            console.print(
                "no prefill measurements in the profile: requests start with the plan whatever the prompt "
                "length (re-profile to let long prompts skip or window drafters)"
            )
        return
    table = Table(
        title="per prompt length, prefills counted (proofs/prefill.md; the adaptive start decides per request)"
    )
    for col in ("prompt tokens", "max new", "expected new", "runs", "windows", "end to end", "decode", "break-even"):
        table.add_column(col, justify="left" if col in ("runs", "windows") else "right")
    for r in plan.by_prompt_length:
        lo, hi = r["prompt_tokens"]
        chain = chain_text(r["members"], r["gammas"])
        windows = ", ".join(f"{n}: {w}" for n, w in r["windows"].items()) or "-"
        be = r.get("break_even_tokens")
        table.add_row(
            f"{lo}-{hi - 1}",
            str(r["max_new_tokens"]),
            f"{r['expected_new_tokens']:.0f}",
            chain,
            windows,
            f"{r['end_to_end_speedup']:.2f}x",
            f"{r['decode_speedup']:.2f}x",
            "-" if be is None or len(r["members"]) == 1 else f"{be:.0f} tokens",
        )
    console.print(table)
