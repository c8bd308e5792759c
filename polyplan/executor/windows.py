"""Per-call windows: a drafter whose context one request overflows drafts from a window that fits,
for that call only (the chain keeps its members as built). A drafter only proposes, so the output
is unchanged; the target and a model-free drafter cannot be windowed and the request is refused."""

from __future__ import annotations

from collections.abc import Sequence

from polyplan.errors import UserError
from polyplan.models.drafter import Drafter


def call_members(drafters: Sequence[Drafter], prompt_len: int, max_new_tokens: int) -> tuple[list[Drafter], list[str]]:
    """This call's members (windowed where the request overflows them) and a note per window."""
    total = prompt_len + max_new_tokens
    notes = []
    drafters = list(drafters)
    for i, d in enumerate(drafters):
        if d.max_context is not None and total > d.max_context:
            if i == 0 or d.point_mass:
                raise UserError(
                    f"{prompt_len} prompt tokens + {max_new_tokens} new tokens exceed the context of "
                    f"{d.name} ({d.max_context} tokens): shorten the prompt or lower max_new_tokens"
                )
            # a drafter only proposes: it drafts from a window that fits (output unchanged)
            from polyplan.documents.profile import WINDOW_SINK
            from polyplan.models.windowed import WindowedDrafter

            window = max(1, d.max_context // 2)
            drafters[i] = WindowedDrafter(d, window, min(WINDOW_SINK, window - 1))
            notes.append(
                f"{d.name}: {total} tokens exceed its context of {d.max_context}: it drafts from its "
                f"first {min(WINDOW_SINK, window - 1)} and last {window} tokens"
            )
    return drafters, notes
