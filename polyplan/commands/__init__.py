"""Command-line subcommands, one module per group; polyplan.cli assembles them."""

from __future__ import annotations


def sampling_filters(top_k: int | None, top_p: float | None) -> tuple[int | None, float | None]:
    """``--top-k`` / ``--top-p`` as the API takes them: the command line also spells "off" as
    top-k 0 and top-p 1 (the profile command's defaults); everywhere past the CLI, off is None."""
    return (None if top_k == 0 else top_k), (None if top_p == 1.0 else top_p)
