"""Command-line subcommands, one module per group; polyplan.cli assembles them."""

from __future__ import annotations

from polyplan.errors import UserError


def comma_list(text: str | None) -> list[str]:
    """A comma-separated option as its parts, stripped, blank ones dropped: ``"a, b,"`` ->
    ``["a", "b"]``; None or "" -> []."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def comma_ints(text: str | None, what: str, example: str = "") -> list[int]:
    """A comma-separated option of integers (as :func:`comma_list`: None or "" -> []); anything
    else is one error line naming the option ``what`` (and an ``example`` such as "6,3", if given)."""
    try:
        return [int(part) for part in comma_list(text)]
    except ValueError:
        such_as = f" such as {example}" if example else ""
        raise UserError(f"{what} must be comma-separated integers{such_as}, got {text!r}") from None


def sampling_filters(top_k: int | None, top_p: float | None) -> tuple[int | None, float | None]:
    """``--top-k`` / ``--top-p`` as the API takes them: the command line also spells "off" as
    top-k 0 and top-p 1 (the profile command's defaults); everywhere past the CLI, off is None."""
    return (None if top_k == 0 else top_k), (None if top_p == 1.0 else top_p)
