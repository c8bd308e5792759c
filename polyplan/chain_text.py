"""How a chain is written for people: one formatter for every table, log line and label.

Two notations, each for its place. In a sentence a chain reads target first, each drafter after
the model that verifies it: ``target <- middle <- bottom (4,2)``, or ``target alone``. A table
column headed "chain" (target first) lists the members only: ``target > middle > bottom``.
Pure Python, no imports: every layer may use it (the executor included)."""

from __future__ import annotations

from collections.abc import Iterable

#: between the members of a chain in a sentence (each drafter follows the model it drafts for)
ARROW = " <- "
#: between the members in a table column or figure label (target first)
COLUMN = " > "


def chain_names(names: Iterable[str]) -> str:
    """``a <- b <- c``: the members of a chain in a sentence."""
    return ARROW.join(names)


def chain_column(names: Iterable[str]) -> str:
    """``a > b > c``: the members of a chain in a table column or a figure label."""
    return COLUMN.join(names)


def gammas_text(gammas: Iterable[object], sep: str = ",") -> str:
    """``4,2``: one speculation length per drafter."""
    return sep.join(map(str, gammas))


def chain_text(names: Iterable[str], gammas: Iterable[int], *, gamma_sep: str = ",", alone: str = "alone") -> str:
    """``a <- b <- c (4,2)``, or ``a alone`` for the target without drafters."""
    names = list(names)
    if len(names) == 1:
        return f"{names[0]} {alone}"
    return f"{chain_names(names)} ({gammas_text(gammas, gamma_sep)})"
