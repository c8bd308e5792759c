"""``polyplan quickstart``: the whole pipeline on one pool, profile -> optimize -> run.

It calls the same commands a user would type, so what it prints and writes is exactly what
``polyplan profile``, ``polyplan optimize`` and ``polyplan run`` print and write. A last step runs
the plan and the target alone on the demo prompt, interleaved, and prints both speeds and their
ratio: the speedup on this machine, said plainly when speculation did not pay."""

from __future__ import annotations

from pathlib import Path

import typer

from polyplan.chain_text import chain_names, gammas_text
from polyplan.weights import DEFAULT_POOL

DEFAULT_PROMPT = (
    "Summarize in two sentences: Speculative decoding lets a small draft model propose several "
    "tokens that a large target model then checks in a single forward pass. Accepted tokens are "
    "kept, the first rejected one is replaced by the target's own choice, and the output is "
    "distributed exactly as if the target had generated it alone."
)


def register(root: typer.Typer) -> None:
    @root.command()
    def quickstart(
        pool: str = typer.Option(DEFAULT_POOL, help="pool name or pool file"),
        out: Path = typer.Option(Path("polyplan-out"), help="folder for profile.json and plan.json"),
        prompt: str = typer.Option(DEFAULT_PROMPT, help="prompt for the final run (chat template applied)"),
        max_new_tokens: int = typer.Option(128, help="tokens to generate in the final run"),
    ) -> None:
        """Profile a pool, pick the fastest lossless chain, and run it: the main job in one command.

        A second call reuses the finished profile (the profiler resumes and finds nothing to do)."""
        from rich.console import Console

        console = Console(stderr=True)
        command = typer.main.get_command(root)
        stem = Path(pool).stem
        profile_path, plan_path = out / f"{stem}.profile.json", out / f"{stem}.plan.json"
        steps = [
            (
                "1/4 profile: latency and prefill curves, acceptance of every pair",
                ["profile", "--pool", pool, "-o", str(profile_path)],
            ),
            (
                "2/4 optimize: subset, order and gammas",
                ["optimize", str(profile_path), "-o", str(plan_path), "--max-new-tokens", str(max_new_tokens)],
            ),
            (
                "3/4 run the chosen chain",
                ["run", str(plan_path), prompt, "--chat", "--stats", "--max-new-tokens", str(max_new_tokens)],
            ),
        ]
        for title, args in steps:
            console.rule(f"[bold]{title}")
            console.print("$ polyplan " + " ".join(a if " " not in a else repr(a[:40] + "...") for a in args))
            code = command.main(args, standalone_mode=False, prog_name="polyplan")
            if isinstance(code, int) and code != 0:
                raise typer.Exit(code)
        console.rule("[bold]4/4 the plan vs the target alone on this prompt, on this machine")
        _compare_with_target(plan_path, prompt, max_new_tokens, console)
        console.rule("[bold]done")
        console.print(
            f"profile: {profile_path}\nplan:    {plan_path}\n"
            f"next:    polyplan bench {plan_path}   (measure it against autoregressive and HF assisted)"
        )


def _compare_with_target(plan_path: Path, prompt: str, max_new_tokens: int, console) -> None:
    """Time the plan and its target alone on the demo prompt (interleaved) and say which won."""
    from polyplan.assemble import assemble_plan
    from polyplan.bench.head_to_head import plan_vs_target, verdict
    from polyplan.commands.run import _encode
    from polyplan.documents.plan import Plan

    plan = Plan.load(plan_path)  # read once: the chain below is built from this document
    if len(plan.names) == 1:
        console.print("the plan is the target alone (no drafter pays here): nothing to compare")
        return
    assembled = assemble_plan(plan, plan_path)  # exactly as `polyplan run PLAN` runs it (adaptive)
    chain = assembled.chain
    ids = _encode(chain.tokenizer, prompt, chat=True)
    h = plan_vs_target(chain, ids, max_new_tokens, temperature=assembled.spec.temperature or 0.0)
    label = f"{chain_names(plan.names)} (gammas {gammas_text(plan.gammas)})"
    if assembled.policy is not None and assembled.policy.reserves:
        label += f", reserve {', '.join(assembled.policy.reserves)}"
    console.print(f"plan {label}: {h.plan_tokens_per_s:.1f} tokens/s", highlight=False)
    console.print(f"target {chain.names[0]} alone: {h.target_tokens_per_s:.1f} tokens/s", highlight=False)
    same = "same output" if h.same_output else "outputs differ (sampling)"
    console.print(
        f"ratio: {h.speedup:.2f}x ({h.plan_tokens // h.repeats} tokens per run, {h.repeats} interleaved "
        f"runs each, {same})",
        highlight=False,
    )
    style = "green" if h.speedup >= 1.05 else "bold yellow"
    console.print(f"[{style}]{verdict(h)}[/{style}]", highlight=False)
    if h.speedup < 1.05:
        console.print(
            "one prompt is one sample: `polyplan bench PLAN --prompts-file YOURS.jsonl` measures your "
            "traffic; where the plan loses, `polyplan run --chain TARGET` decodes without speculating",
            highlight=False,
        )
