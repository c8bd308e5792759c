"""``polyplan quickstart``: the whole pipeline on one pool, profile -> optimize -> run.

It calls the same commands a user would type, so what it prints and writes is exactly what
``polyplan profile``, ``polyplan optimize`` and ``polyplan run`` print and write."""

from __future__ import annotations

from pathlib import Path

import typer

DEFAULT_PROMPT = (
    "Summarize in two sentences: Speculative decoding lets a small draft model propose several "
    "tokens that a large target model then checks in a single forward pass. Accepted tokens are "
    "kept, the first rejected one is replaced by the target's own choice, and the output is "
    "distributed exactly as if the target had generated it alone."
)


def register(root: typer.Typer) -> None:
    @root.command()
    def quickstart(
        pool: str = typer.Option("smollm2", help="pool name or pool file"),
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
            ("1/3 profile: latency curves and acceptance of every pair",
             ["profile", "--pool", pool, "-o", str(profile_path)]),
            ("2/3 optimize: subset, order and gammas",
             ["optimize", str(profile_path), "-o", str(plan_path), "--max-new-tokens", str(max_new_tokens)]),
            ("3/3 run the chosen chain", ["run", str(plan_path), prompt, "--chat", "--stats",
                                          "--max-new-tokens", str(max_new_tokens)]),
        ]
        for title, args in steps:
            console.rule(f"[bold]{title}")
            console.print("$ polyplan " + " ".join(a if " " not in a else repr(a[:40] + "...") for a in args))
            code = command.main(args, standalone_mode=False, prog_name="polyplan")
            if isinstance(code, int) and code != 0:
                raise typer.Exit(code)
        console.rule("[bold]done")
        console.print(f"profile: {profile_path}\nplan:    {plan_path}\n"
                      f"next:    polyplan bench {plan_path}   (measure it against autoregressive and HF assisted)")
