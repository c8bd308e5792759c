"""``polyplan run``: generate with a chain, streaming text as the target accepts it.

polyplan run "Once upon a time" --pool smollm2 --chain smollm2-135m,smollm2-135m:int8,prompt-lookup --gammas 6,3
polyplan run plan.json "Once upon a time"          # the plan's chain, adapted per round (--static: fixed)
echo "def fib(n):" | polyplan run --chain ./my-target,./my-draft --gammas 5 --stats
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from polyplan.chain_text import chain_text
from polyplan.commands import comma_ints, comma_list, sampling_filters
from polyplan.documents.profile import WINDOW_SINK
from polyplan.errors import UserError
from polyplan.weights import DEFAULT_POOL

if TYPE_CHECKING:  # annotations only: the executor imports torch, which the run command loads later
    from polyplan.executor.front import Chain
    from polyplan.executor.request import GenerationResult


def register(root: typer.Typer) -> None:
    root.command("run")(run_command)


def run_command(
    args: list[str] | None = typer.Argument(
        None,
        metavar="[PLAN.json] [PROMPT]",
        help="an optional plan file, then the prompt (else --prompt-file or stdin)",
    ),
    pool: str | None = typer.Option(None, "--pool", help=f"pool name or pool file (default: {DEFAULT_POOL})"),
    chain: str | None = typer.Option(
        None, "--chain", help="comma-separated members, target first: pool member names or model directories"
    ),
    gammas: str | None = typer.Option(None, "--gammas", help="one speculation length per drafter, e.g. 6,3"),
    tree_nodes: str | None = typer.Option(
        None,
        "--tree-nodes",
        help="draft tree size per drafter, e.g. 16,1 (1 = a linear draft; a tree is at most its gamma deep). "
        "With a plan: replaces the plan's tree sizes",
    ),
    window: int | None = typer.Option(
        None,
        "--window",
        help=f"with --chain: every model drafter reads only the first {WINDOW_SINK} and last WINDOW tokens "
        "(bounded prefill; the output is unchanged). A plan chooses windows per prompt itself.",
    ),
    plan: Path | None = typer.Option(None, "--plan", help="plan.json from `polyplan optimize` (chain + gammas)"),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", help="read the prompt from this file"),
    chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the tokenizer's chat template"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    temperature: float | None = typer.Option(None, "--temperature", help="0 = greedy (default, or the plan's)"),
    top_k: int | None = typer.Option(None, "--top-k", help="default or 0: off"),
    top_p: float | None = typer.Option(None, "--top-p", help="default or 1: off"),
    seed: int = typer.Option(0, "--seed"),
    static: bool = typer.Option(
        False, "--static", help="run a plan's chain unchanged (default: adapt members and gammas between rounds)"
    ),
    no_draft_stop: bool = typer.Option(
        False, "--no-draft-stop", help="draft every round to its gamma, ignoring the plan's draft stops"
    ),
    stats: bool = typer.Option(
        False, "--stats", help="print the per-level statistics table and when and why the chain changed (stderr)"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="print one JSON object (text, tokens, stats) instead of streaming"
    ),
    no_speed_memory: bool = typer.Option(
        False,
        "--no-speed-memory",
        help="price a plan's start at the profile's costs alone: neither read nor keep the members' "
        "speeds that earlier runs of this plan measured on this CPU (kept in the cache, faded by age)",
    ),
) -> None:
    """Generate text with a chain of drafters (lossless staged speculative decoding)."""
    plan, prompt = _plan_and_prompt(list(args or []), plan, prompt_file)
    the_chain, planned = _build(plan, chain, gammas, pool, static=static, tree_nodes=tree_nodes, window=window)
    if no_draft_stop:
        the_chain.draft_stop = {}
    if temperature is None:
        temperature = planned if planned is not None else 0.0
    top_k, top_p = sampling_filters(top_k, top_p)

    input_ids = _encode(the_chain.tokenizer, prompt, chat)
    speed_entry = None if plan is None or no_speed_memory else _recall_speeds(plan, pool, the_chain)
    streamer = None if as_json else _TextStreamer(the_chain.tokenizer)
    result = the_chain.generate(
        input_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stream=streamer,
    )
    if as_json:
        print(json.dumps(result_json(the_chain, result, with_start_speed=speed_entry is not None), indent=2))
    else:
        streamer.finish()
    # after the output: a cache that cannot be written must not cost this run its text
    kept = speed_entry is not None and _keep_speeds(speed_entry, the_chain)
    if stats:
        print_stats(result.stats, the_chain.gammas)
        print_setting_changes(result.stats, the_chain.names, the_chain.controller, kept=kept)


def _build(
    plan: Path | None,
    chain: str | None,
    gammas: str | None,
    pool: str | None,
    *,
    static: bool,
    tree_nodes: str | None,
    window: int | None,
):
    """The chain to run, from a plan or from --chain/--gammas, and the plan's temperature (None
    without a plan)."""
    from polyplan.assemble import ChainSpec, build_chain, default_members

    if plan is not None:
        if chain or gammas:
            raise UserError("give either a plan file or --chain/--gammas, not both")
        if window is not None:
            raise UserError("--window applies to --chain runs: a plan's start chooses each drafter's window per prompt")
        assembled = _assemble(plan, pool, static=static, tree_nodes=_tree_nodes(tree_nodes))
        return assembled.chain, assembled.spec.temperature
    members = comma_list(chain) or list(default_members(pool))
    spec = ChainSpec(members, comma_ints(gammas, "--gammas", "6,3"), pool, tree_nodes=_tree_nodes(tree_nodes))
    return build_chain(spec, window=window), None


@functools.cache
def _speed_machine() -> dict:
    from polyplan.cpu import cpu_features, cpu_model, usable_cores

    return {"cpu": cpu_model(), "cpu_features": cpu_features(), "usable_cores": usable_cores()}


def _recall_speeds(plan_path: Path, pool: str | None, chain: Chain) -> Path | None:
    """Hand the adaptive controller the members' speeds earlier runs of this plan measured here
    (documents/speeds.py): one run is one request in a fresh process, and without them every
    run's start would price the chain at the profile's costs however the machine has drifted.
    The cache entry to keep this run's speeds in; None for a chain that measures none (a static
    plan, or a policy without a request model)."""
    from polyplan.documents.speeds import load_speeds, speeds_path

    speed = getattr(chain.controller, "speed", None)
    if speed is None or chain.controller.policy.requests is None:
        return None
    path = speeds_path(plan_path, pool)
    earlier = load_speeds(path, _speed_machine(), chain.names)
    if earlier is not None:
        speed.restore(chain.names, earlier)
    return path


def _keep_speeds(path: Path, chain: Chain) -> bool:
    """Keep this run's speed evidence (earlier runs' included, faded) for the next run; a cache
    that cannot be written costs the next run its evidence, not this run its output."""
    from polyplan.documents.files import DocumentError
    from polyplan.documents.speeds import save_speeds

    try:
        save_speeds(path, _speed_machine(), chain.names, chain.controller.speed.evidence(chain.names))
    except (DocumentError, OSError) as e:
        print(f"note: member speeds not kept for the next run ({e})", file=sys.stderr)
        return False
    return True


def result_json(chain: Chain, result: GenerationResult, with_start_speed: bool = False) -> dict[str, Any]:
    """``--json``: the generation as one object (text, tokens, stats); ``with_start_speed``: with
    the speed factors the run's start priced the chain at (``start_speed``; ``{}``: the profile's
    costs; a prefill factor stays 1.0, a run's one prefill per member being its cold first pass)."""
    doc = {
        "chain": chain.names,
        # the chain's gammas; per level what the rounds really used (an adaptive plan
        # changes them): gammas_used, gamma -> blocks built with it
        "gammas": chain.gammas,
        "tree_nodes": chain.tree_nodes,
        "gammas_used": [lv.to_dict()["gammas_used"] for lv in result.stats.levels[1:]],
        "text": result.text,
        "tokens": result.tokens,
        "finish_reason": result.finish_reason,
        "stats": result.stats.to_dict(),
    }
    if with_start_speed:
        doc["start_speed"] = dict(chain.controller.factors)
    return doc


def print_setting_changes(stats, names: list[str], controller, kept: bool = False) -> None:
    """When and why an adaptive chain changed its members or gammas (stderr); ``kept``: the
    members' speeds were kept for the next run of the plan."""
    changes = getattr(stats, "setting_changes", None) or []
    if controller is None and not changes:
        return
    lines = []
    for change in changes:
        setting = chain_text(change["members"], change["gammas"])
        lines.append(f"  at token {change['at_token']}: {setting}: {change['reason']}")
    seconds = getattr(controller, "seconds", None)
    cost = (
        ""
        if not seconds or not stats.wall_time_s
        else (f"; deciding took {seconds * 1e3:.2f} ms ({100 * seconds / stats.wall_time_s:.2f}% of wall time)")
    )
    print(f"chain settings: {len(changes)} change(s){cost}", file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr)
    started_at = _decode_factors_text(getattr(controller, "factors", None) or {})
    if started_at:
        print(
            f"start priced at the decode speeds earlier runs measured (over the profile's): {started_at}",
            file=sys.stderr,
        )
    speed = getattr(controller, "speed", None)
    measured = speed.summary(names) if speed is not None else ""
    if measured:
        later = "the next request and the next run of this plan" if kept else "the next request"
        print(f"time in the chain / as profiled (re-times {later}): {measured}", file=sys.stderr)
    if changes and list(changes[-1]["members"]) == names[:1]:
        print("adaptation ended on autoregressive decoding: speculation did not pay on this prompt", file=sys.stderr)


def _decode_factors_text(factors: dict) -> str:
    """``{"q4": {"decode": 1.1, "prefill": 1.0}}`` -> ``q4 1.10`` (in ``polyplan run`` only decode
    speeds carry over: a member's one prefill per run is its first, cold pass, left out)."""
    return "; ".join(f"{n} {f['decode']:.2f}" for n, f in factors.items())


def _tree_nodes(text: str | None) -> list[int] | None:
    """``--tree-nodes 16,1`` -> ``[16, 1]``; not given -> None (every drafter linear)."""
    return comma_ints(text, "--tree-nodes", "16,1") if text else None


def _assemble(plan_path: Path, pool: str | None, *, static: bool, tree_nodes: list[int] | None):
    """The plan, read once, as ``polyplan run`` runs it (``polyplan.assemble.assemble_plan``)."""
    from polyplan.assemble import assemble_plan
    from polyplan.documents.plan import Plan

    plan = Plan.load(plan_path)
    _warn_if_other_machine(plan, plan_path)
    return assemble_plan(plan, plan_path, pool=pool, static=static, tree_nodes=tree_nodes)


def _warn_if_other_machine(plan, plan_path: Path) -> None:
    """One line on stderr when the plan was profiled on another CPU or GPU model (before loading)."""
    from polyplan.profiler.machine import other_machine_warning

    warning = other_machine_warning(plan.profile, plan_path)
    if warning:
        print(warning, file=sys.stderr)


def _plan_and_prompt(args: list[str], plan: Path | None, prompt_file: Path | None) -> tuple[Path | None, str]:
    """``[PLAN.json] [PROMPT]``: the plan (a first argument naming a .json file, else ``--plan``)
    and the prompt (the next argument, else ``--prompt-file`` or stdin)."""
    if args and plan is None and args[0].endswith(".json") and Path(args[0]).is_file():
        plan = Path(args.pop(0))
    if len(args) > 1:
        raise UserError(f"expected at most one prompt argument, got {len(args)} (quote the prompt)")
    return plan, _read_prompt(args[0] if args else None, prompt_file)


def _read_prompt(argument: str | None, prompt_file: Path | None) -> str:
    if argument is not None and prompt_file is not None:
        raise UserError("give the prompt as an argument or with --prompt-file, not both")
    if prompt_file is not None:
        try:
            return prompt_file.read_text()
        except OSError as e:
            raise UserError(f"cannot read the prompt file {prompt_file}: {e.strerror}") from None
    if argument is not None:
        return argument
    if sys.stdin is not None and not sys.stdin.isatty():
        return sys.stdin.read()
    raise UserError("no prompt: pass it as an argument, with --prompt-file, or on stdin")


def _encode(tokenizer, prompt: str, chat: bool) -> list[int]:
    if tokenizer is None:
        raise UserError("no tokenizer for this chain: the target must come from a pool or a model directory with one")
    if chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids and getattr(tokenizer, "bos_token_id", None) is not None:
        ids = [tokenizer.bos_token_id]  # an empty prompt still has a beginning
    return list(ids)


class _TextStreamer:
    """Prints the text of accepted tokens as they arrive. Decodes the whole output each time and
    prints the new suffix, holding back an incomplete UTF-8 sequence (shown as U+FFFD)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = 0

    def __call__(self, new_tokens: list[int]) -> None:
        self.tokens.extend(new_tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        sys.stdout.write(text[self.printed :])
        sys.stdout.flush()
        self.printed = len(text)

    def finish(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        sys.stdout.write(text[self.printed :] + "\n")
        sys.stdout.flush()


def print_stats(stats, gammas: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{stats.new_tokens} tokens in {stats.wall_time_s:.2f} s "
        f"({stats.tokens_per_second:.1f} tok/s), overhead {100 * stats.overhead_fraction:.1f}%"
    )
    for col in (
        "lvl",
        "model",
        "gamma",
        "passes",
        "L_i",
        "drafts",
        "drafted",
        "accepted",
        "rate",
        "accept len",
        "model s",
        "prefill",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    for i, lv in enumerate(stats.levels):
        table.add_row(
            str(i + 1),
            lv.name,
            _gammas_cell(lv),
            str(lv.forward_passes),
            f(lv.tokens_per_pass, ".2f"),
            str(lv.num_drafts),
            str(lv.num_draft_tokens),
            str(lv.num_accepted_tokens),
            f(lv.draft_acceptance_rate, ".3f"),
            f(lv.mean_acceptance_length, ".2f"),
            f(lv.model_time_s, ".3f"),
            "-" if not lv.prefill_tokens else f"{lv.prefill_tokens} tok {lv.prefill_time_s:.2f} s",
        )
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    console.print(table)
    console.print(
        "L_i = output tokens per forward pass; accept len = mean acceptance length incl. the +1 token; "
        "prefill = a member's first pass (lazy: a member the request never used has none)"
    )
    decode_rate = stats.new_tokens / stats.decode_time_s if stats.decode_time_s else 0.0
    console.print(
        f"end to end {stats.wall_time_s:.2f} s = prefills {stats.prefill_time_s:.2f} s + decode "
        f"{stats.decode_time_s:.2f} s ({decode_rate:.1f} tok/s)"
    )
    for i, lv in enumerate(stats.levels):
        if lv.tree_rounds:
            console.print(tree_line(i + 1, lv))
        if lv.draft_stops:
            console.print(
                f"draft stops at level {i + 1} ({lv.name}): {lv.draft_stops} of its drafts ended before their gamma "
                "(it was unsure of its tokens)"
            )
    for note in stats.notes:
        console.print(f"note: {note}")
    hist = stats.levels[0].acceptance_length_histogram
    if hist:
        console.print("target acceptance-length histogram: " + ", ".join(f"{k}:{v}" for k, v in sorted(hist.items())))


def tree_line(level_number: int, lv) -> str:
    """What a tree-drafting level did: nodes drafted, passes, path accepted, where branches won."""
    rounds = lv.tree_rounds
    wins = ", ".join(f"depth {d}: {n}" for d, n in sorted(lv.tree_branch_wins_by_depth.items()))
    return (
        f"trees at level {level_number} ({lv.name}): {rounds} trees of {lv.tree_nodes_drafted / rounds:.1f} nodes, "
        f"{lv.tree_expansions / rounds:.1f} drafter passes each; accepted path {lv.tree_nodes_accepted / rounds:.2f} "
        f"nodes per tree; a branch (not the drafter's first choice) won {lv.tree_branch_wins} times"
        + (f" ({wins})" if wins else "")
    )


def _gammas_cell(level) -> str:
    """The gamma a level ran with, or every gamma it used under adaptation (gamma x blocks)."""
    used = level.gammas_used
    if not used:
        return "-" if level.gamma is None else str(level.gamma)
    if len(used) == 1:
        return str(next(iter(used)))
    return " ".join(f"{g}x{n}" for g, n in sorted(used.items()))
