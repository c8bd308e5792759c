"""``polyplan theory ...``: predict, show, insert, gammas, simulate — thin wrappers over polyplan.theory.

The ``predict`` output is a contract (docs/staged-decoding.md): with ``--json`` one JSON object
with at least time_per_token, speedup, mean_acceptance_length and tokens_per_pass.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from polyplan.errors import UserError

app = typer.Typer(
    help="The theory of staged speculative decoding: predict, show theorems, evaluate insertions.", no_args_is_help=True
)

ALPHA_HELP = "acceptance rates a_1..a_(k-1), comma-separated (a_1: target vs M2); empty for k = 1"
GAMMA_HELP = "speculation lengths g_2..g_k, comma-separated; empty for k = 1"
LATENCY_HELP = "seconds (or any unit) per forward pass T_1..T_k, comma-separated (target first)"


def _numbers(text: str, what: str) -> list[float]:
    text = text.strip()
    if not text:
        return []
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise UserError(f"{what}: {part.strip()!r} is not a number (give a comma-separated list)") from None
    return out


def _integers(text: str, what: str) -> list[int]:
    values = _numbers(text, what)
    if any(v != int(v) for v in values):
        raise UserError(f"{what} must be whole numbers, got {text!r}")
    return [int(v) for v in values]


def _parse_chain(alpha: str, gamma: str, latency: str) -> tuple[list[float], list[int], list[float]]:
    from polyplan.theory.latency import validate_chain

    alphas, gammas, latencies = _numbers(alpha, "--alpha"), _integers(gamma, "--gamma"), _numbers(latency, "--latency")
    if not latencies:
        raise UserError("--latency is required: one pass time per model, target first (e.g. 1.0,0.3,0.02)")
    validate_chain(alphas, gammas, latencies, allow_alpha_one=False)
    return alphas, gammas, latencies


def _fmt(x: Any) -> str:
    return f"{float(x):.6g}"


@app.command()
def predict(
    alpha: str = typer.Option("", "--alpha", help=ALPHA_HELP),
    gamma: str = typer.Option("", "--gamma", help=GAMMA_HELP),
    latency: str = typer.Option(..., "--latency", help=LATENCY_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    exact: bool = typer.Option(False, "--exact", help="rational arithmetic (inputs read as decimals)"),
    prefill: str = typer.Option(
        "",
        "--prefill",
        help="prefill cost per prompt token of each model P_1..P_k, comma-separated (same unit as "
        "--latency): adds the whole request's time (proofs/prefill.md)",
    ),
    prompt_tokens: int | None = typer.Option(None, "--prompt-tokens", help="prompt length c for the request time"),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="horizon H of the request (new tokens; default 64 with --prefill)"
    ),
    window: str = typer.Option(
        "", "--window", help="per drafter M_2..M_k: tokens it prefills at most (its window + sink; 0: all)"
    ),
) -> None:
    """Expected time per token, speedup, acceptance length and L_i of a chain (i.i.d. acceptance);
    with --prefill and --prompt-tokens also the whole request: prefills + decode, its end-to-end
    speedup over the target alone and the break-even horizon."""
    from polyplan.theory import predict_chain, predict_chain_exact

    alphas, gammas, latencies = _parse_chain(alpha, gamma, latency)
    prediction = (predict_chain_exact if exact else predict_chain)(alphas, gammas, latencies)
    request = _request(prefill, prompt_tokens, max_new_tokens, window, latencies, prediction)
    if json_out:
        out = prediction.to_dict()
        if request is not None:
            out["request"] = request.to_dict()
            out["end_to_end_speedup"] = request.end_to_end_speedup
            out["request_time"] = request.request_s
            out["break_even_tokens"] = out["request"]["break_even_tokens"]
        print(json.dumps(out))
        return
    console = Console()
    k = len(latencies)
    console.print(
        f"chain of {k} model{'s' if k > 1 else ''}: time per token [bold]{_fmt(prediction.time_per_token)}"
        f"[/bold], speedup [bold]{_fmt(prediction.speedup)}[/bold], target mean acceptance length "
        f"[bold]{_fmt(prediction.mean_acceptance_length)}[/bold]"
    )
    table = Table()
    for col in ("level", "T_i", "alpha", "gamma", "L_i", "passes/token", "time share"):
        table.add_column(col, justify="right")
    for i in range(k):
        share = (
            latencies[i] * float(prediction.passes_per_token[i]) / float(prediction.time_per_token)
            if float(prediction.time_per_token) > 0
            else 0.0
        )
        table.add_row(
            f"M{i + 1}",
            _fmt(latencies[i]),
            _fmt(alphas[i]) if i < k - 1 else "-",
            str(gammas[i - 1]) if i > 0 else "-",
            _fmt(prediction.tokens_per_pass[i]),
            _fmt(prediction.passes_per_token[i]),
            f"{share:.1%}",
        )
    console.print(table)
    console.print(
        "[dim]alpha: rate at which M_i accepts M_(i+1)'s drafts; L_i: output tokens per pass of M_i; "
        "time share: T_i/L_i over time per token[/dim]"
    )
    if exact:
        console.print(f"exact time per token: {prediction.time_per_token}")
    if request is not None:
        be = request.break_even_tokens
        console.print(
            f"request of {request.prompt_tokens:g} prompt + {request.horizon:g} new tokens: "
            f"[bold]{_fmt(request.request_s)}[/bold] (prefills {_fmt(request.target_prefill_s)} + "
            f"{_fmt(sum(request.drafter_prefill_s))} for the drafters, decode {_fmt(request.decode_s)}) vs "
            f"{_fmt(request.autoregressive_request_s)} for the target alone: end-to-end speedup "
            f"[bold]{_fmt(request.end_to_end_speedup)}[/bold]; the drafters pay for their prefill after "
            + ("never (no decode saving)" if be == float("inf") else f"{_fmt(be)} new tokens")
        )


def _request(prefill: str, prompt_tokens: int | None, max_new_tokens: int | None, window: str, latencies, prediction):
    """The request-time prediction when --prefill/--prompt-tokens ask for it, else None."""
    if not prefill.strip() and prompt_tokens is None:
        if max_new_tokens is not None or window.strip():
            raise UserError("--max-new-tokens and --window describe a request: give --prefill and --prompt-tokens too")
        return None
    from polyplan.theory.prefill import predict_request, prefill_seconds, window_context

    costs = _numbers(prefill, "--prefill")
    if len(costs) != len(latencies):
        raise UserError(f"--prefill needs one cost per model ({len(latencies)}), got {len(costs)}")
    if any(c < 0 for c in costs):
        raise UserError("--prefill costs must be >= 0")
    if prompt_tokens is None or prompt_tokens < 0:
        raise UserError("--prompt-tokens (>= 0) is required with --prefill")
    horizon = 64 if max_new_tokens is None else max_new_tokens
    if horizon < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {horizon}")
    windows = _integers(window, "--window") if window.strip() else [0] * (len(latencies) - 1)
    if len(windows) != len(latencies) - 1 or any(w < 0 for w in windows):
        raise UserError(f"--window needs one value >= 0 per drafter ({len(latencies) - 1})")
    drafters = [
        prefill_seconds(c, window_context(prompt_tokens, w or None)) for c, w in zip(costs[1:], windows, strict=True)
    ]
    return predict_request(
        prefill_seconds(costs[0], prompt_tokens),
        drafters,
        horizon,
        float(prediction.time_per_token),
        latencies[0],
        prompt_tokens,
    )


@app.command()
def show(
    name: str | None = typer.Argument(None, help="one theorem (default: all)"),
    latex: bool = typer.Option(False, "--latex", help="print the statements in LaTeX"),
    check: bool = typer.Option(False, "--check", help="also verify each identity symbolically"),
) -> None:
    """The theorems, their implementing functions and proof files."""
    from polyplan.theory.theorems import THEOREMS, find_theorem

    theorems = [find_theorem(name)] if name else THEOREMS
    console = Console()
    for t in theorems:
        if latex:
            print(f"% {t.title} ({t.proof_file}, {t.implementation})")
            print(f"\\[ {t.latex()} \\]")
            continue
        body = f"{t.statement}\n\n[dim]implemented by[/dim] {t.implementation}\n[dim]proof[/dim] {t.proof_file}"
        if check:
            body += "\n[dim]symbolic check[/dim] " + ("[green]holds[/green]" if t.check() else "[red]FAILS[/red]")
        console.print(Panel(body, title=f"[bold]{t.title}[/bold]  [dim]({t.name})[/dim]", expand=False))


@app.command()
def insert(
    alpha: str = typer.Option("", "--alpha", help=ALPHA_HELP),
    gamma: str = typer.Option("", "--gamma", help=GAMMA_HELP),
    latency: str = typer.Option(..., "--latency", help=LATENCY_HELP),
    position: int = typer.Option(..., "--position", help="level the new model takes: 2 (below the target) .. k+1"),
    new_alpha_above: float = typer.Option(..., "--new-alpha-above", help="acceptance of the new model by its verifier"),
    new_alpha_below: float | None = typer.Option(
        None, "--new-alpha-below", help="acceptance by the new model of the level below (omit at the bottom)"
    ),
    new_latency: float = typer.Option(..., "--new-latency", help="pass time of the new model"),
    new_gamma: int = typer.Option(..., "--new-gamma", help="speculation length of the new model"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    exact: bool = typer.Option(False, "--exact", help="rational arithmetic"),
) -> None:
    """Evaluate inserting one model into a chain: exact change and the paper's sufficient condition."""
    from polyplan.theory import insertion_gain

    alphas, gammas, latencies = _parse_chain(alpha, gamma, latency)
    for value, flag in ((new_alpha_above, "--new-alpha-above"), (new_alpha_below, "--new-alpha-below")):
        if value is not None and not 0 <= value < 1:
            raise UserError(f"{flag} must lie in [0, 1), got {value}")
    if new_latency < 0:
        raise UserError(f"--new-latency must be >= 0, got {new_latency}")
    if new_gamma < 1:
        raise UserError(f"--new-gamma must be >= 1, got {new_gamma}")
    result = insertion_gain(
        alphas, gammas, latencies, position, new_alpha_above, new_alpha_below, new_latency, new_gamma, exact=exact
    )
    if json_out:
        print(json.dumps(result.to_dict()))
        return
    console = Console()
    table = Table(title=f"insert a model at position {position}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("alpha", ",".join(_fmt(x) for x in alphas), ",".join(_fmt(x) for x in result.after.alpha))
    table.add_row("gamma", ",".join(map(str, gammas)), ",".join(map(str, result.after.gamma)))
    table.add_row("time per token", _fmt(result.before.time_per_token), _fmt(result.after.time_per_token))
    table.add_row("speedup", _fmt(result.before.speedup), _fmt(result.after.speedup))
    table.add_row(
        "L_i",
        ", ".join(_fmt(x) for x in result.before.tokens_per_pass),
        ", ".join(_fmt(x) for x in result.after.tokens_per_pass),
    )
    console.print(table)
    verdict = "[green]helps[/green]" if result.improves else "[red]does not help[/red]"
    console.print(f"exact: change in time per token {_fmt(result.change)} -> inserting {verdict}")
    console.print(
        f"paper's condition: new model's T/L {_fmt(result.new_model_cost)} "
        f"{'<' if result.paper_condition else '>='} verifier's saving {_fmt(result.verifier_saving)}; "
        f"other levels' T/L change {_fmt(result.other_levels_change)}; sufficient condition "
        f"{'holds' if result.sufficient_condition else 'does not hold'}"
    )


@app.command()
def gammas(
    alpha: str = typer.Option("", "--alpha", help=ALPHA_HELP),
    latency: str = typer.Option(..., "--latency", help=LATENCY_HELP),
    max_gamma: int = typer.Option(16, "--max-gamma", help="largest gamma tried per level"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Best speculation lengths for a chain under the exact model (and the two-level closed form)."""
    from polyplan.theory import optimal_gamma_two_level, search_gammas

    alphas = _numbers(alpha, "--alpha")
    latencies = _numbers(latency, "--latency")
    if max_gamma < 1:
        raise UserError(f"--max-gamma must be >= 1, got {max_gamma}")
    _parse_chain(alpha, ",".join(["1"] * len(alphas)), latency)
    best, prediction = search_gammas(alphas, latencies, max_gamma=max_gamma)
    out = prediction.to_dict()
    if len(latencies) == 2 and latencies[0] > 0:
        two = optimal_gamma_two_level(alphas[0], latencies[1] / latencies[0], max_gamma=max_gamma)
        out["continuous_gamma_two_level"] = two.continuous_gamma
    if json_out:
        print(json.dumps(out))
        return
    Console().print(
        f"best gamma {best}: time per token {_fmt(prediction.time_per_token)}, speedup "
        f"{_fmt(prediction.speedup)}, mean acceptance length {_fmt(prediction.mean_acceptance_length)}"
        + (
            f" (continuous two-level optimum {out['continuous_gamma_two_level']:.3f})"
            if out.get("continuous_gamma_two_level") is not None
            else ""
        )
    )


@app.command()
def simulate(
    alpha: str = typer.Option("", "--alpha", help=ALPHA_HELP),
    gamma: str = typer.Option("", "--gamma", help=GAMMA_HELP),
    latency: str = typer.Option(..., "--latency", help=LATENCY_HELP),
    tokens: int = typer.Option(100_000, "--tokens", help="output tokens to simulate"),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Monte-Carlo run of the staged loop with Bernoulli acceptances, beside the exact prediction."""
    from polyplan.theory import predict_chain, simulate_chain

    alphas, gammas_, latencies = _parse_chain(alpha, gamma, latency)
    if tokens < 1:
        raise UserError(f"--tokens must be >= 1, got {tokens}")
    sim = simulate_chain(alphas, gammas_, latencies, tokens, rng=seed)
    exact = predict_chain(alphas, gammas_, latencies)
    out = {
        "output_tokens": sim.output_tokens,
        "passes": sim.passes,
        "total_time": sim.total_time,
        "time_per_token": sim.time_per_token,
        "time_per_token_stderr": sim.time_per_token_stderr,
        "mean_acceptance_length": sim.mean_acceptance_length,
        "tokens_per_pass": sim.tokens_per_pass,
        "predicted_time_per_token": exact.time_per_token,
    }
    if json_out:
        print(json.dumps(out))
        return
    Console().print(
        f"simulated {sim.output_tokens} tokens: time per token {_fmt(sim.time_per_token)} "
        f"± {_fmt(sim.time_per_token_stderr)} (exact model {_fmt(exact.time_per_token)}), "
        f"L_i {[round(x, 4) for x in sim.tokens_per_pass]}"
    )
