"""``WindowedDrafter``: a scoring drafter that drafts from a bounded context.

A drafter only proposes; the level above verifies against its own full-context distribution. So a
drafter may condition on less than the whole sequence without touching losslessness
(docs/staged-decoding.md, "Windowed drafters"): what it loses is acceptance, what it saves is
prefill. Here the member sees the first ``sink`` tokens of the sequence (attention sinks, as in
StreamingLLM: the start of a chat prompt, its system turn) followed by the last ``window`` tokens,
laid out contiguously: the inner model gets ``seq[:sink] + seq[cut:]`` as an ordinary sequence,
so the same wrapper serves transformers and llama.cpp members without any position surgery.

When the window is applied: whenever the inner model has to (re)build its state -- the first pass
of a generation (its prefill, which lazy prefill makes happen only when the chain first uses the
member) and after a rollback into the part it never saw -- and when the inner model's own context
would overflow. Tokens appended after that extend the inner state as usual (the window bounds
what a prefill costs; it does not slide token by token, which would cost a re-prefill per slide).

The wrapper keeps the whole virtual sequence (token ids on the inner device, no host sync) so it
can rebuild at any time; ``processed`` counts virtual tokens, as the executor expects."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import torch

from polyplan.documents.profile import WINDOW_SINK
from polyplan.errors import UserError
from polyplan.models.drafter import Drafter

_T = TypeVar("_T")


def check_window(name: str, window: int, sink: int, max_context: int | None = None) -> None:
    """One clear error for a window that cannot work (raised at pool load and CLI parsing)."""
    for what, value in (("window", window), ("sink", sink)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name}: {what} must be an integer, got {value!r}")
    if window <= 0:
        raise UserError(f"{name}: window must be >= 1 token, got {window}")
    if sink < 0 or sink >= window:
        raise UserError(f"{name}: sink must be >= 0 and smaller than the window ({window}), got {sink}")
    if max_context is not None and sink + window > max_context:
        raise UserError(f"{name}: window {window} + sink {sink} exceeds the member's context of {max_context} tokens")


class WindowedDrafter(Drafter):
    """``inner`` (a scoring drafter, never the target) drafting from its first ``sink`` and last
    ``window`` tokens; ``window=None`` reads everything until :meth:`set_window` gives it one."""

    point_mass = False
    bounded_context = True

    def __init__(self, inner: Drafter, window: int | None, sink: int = WINDOW_SINK) -> None:
        if inner.point_mass:
            raise UserError(f"{inner.name} is model-free: a window applies to model drafters only")
        self.inner = inner
        self.sink = int(sink)
        self.window: int | None = None
        self.set_window(window)
        self.name = inner.name
        self.vocab_size = inner.vocab_size
        self.device = inner.device
        self.tokenizer = inner.tokenizer
        self._tokens = torch.empty(0, dtype=torch.long, device=self.device)
        self._processed = 0
        #: virtual index where the inner state's tail starts (None: the inner state is the whole
        #: sequence); the inner state is then ``seq[:sink] + seq[cut:processed]``
        self._cut: int | None = None
        self._stale = False
        #: passes that (re)built the inner state from a window, for statistics
        self.rebuilds = 0

    @property
    def eos_token_ids(self) -> list[int]:
        return self.inner.eos_token_ids

    @property
    def pads_passes(self) -> bool:  # type: ignore[override]
        return self.inner.pads_passes

    def decoding_alone(self) -> AbstractContextManager[None]:
        return self.inner.decoding_alone()

    def probe_matmul_routes(self) -> Any:
        return self.inner.probe_matmul_routes()

    def use_matmul_routes(self, routes: Any) -> None:
        self.inner.use_matmul_routes(routes)

    @property
    def matmuls_routed(self) -> bool:  # type: ignore[override]
        return self.inner.matmuls_routed

    def describe(self) -> str:
        return self.name if self.window is None else f"{self.name} (window {self.window}, sink {self.sink})"

    def set_window(self, window: int | None) -> None:
        if self._processed_or_zero():
            raise ValueError(f"{self.name}: the window changes only before the first pass of a sequence")
        if window is not None:
            check_window(self.inner.name, window, self.sink, self.inner.max_context)
        self.window = None if window is None else int(window)

    def _processed_or_zero(self) -> int:
        return getattr(self, "_processed", 0)

    def reset(self) -> None:
        self.inner.reset()
        self._processed = 0
        self._cut = None
        self._stale = False

    def _store(self, new_ids: torch.Tensor) -> int:
        end = self._processed + int(new_ids.shape[0])
        if end > self._tokens.shape[0]:
            grown = torch.empty(max(2 * self._tokens.shape[0], end, 256), dtype=torch.long, device=self.device)
            grown[: self._processed] = self._tokens[: self._processed]
            self._tokens = grown
        self._tokens[self._processed : end] = new_ids.to(self.device, non_blocking=True)
        return end

    def _rebuild_needed(self, n: int) -> bool:
        if self.window is None:
            return False
        if self._stale or self.inner.processed == 0:
            return True
        limit = self.inner.max_context
        return limit is not None and self.inner.processed + n > limit

    def _unwindowed(self, new_ids: torch.Tensor) -> bool:
        """True (and ``new_ids`` counted) when the inner model takes ``new_ids`` as they are, with
        nothing kept: an empty pass, or no window for this sequence (set_window comes only before
        its first pass), so there is nothing to rebuild from and the decode loop pays no copy."""
        n = int(new_ids.shape[0])
        if n and self.window is not None:
            return False
        self._processed += n
        return True

    def _advance(self, new_ids: torch.Tensor, rows: int) -> tuple[int, torch.Tensor | None]:
        """Store ``new_ids`` (non-empty, with a window) and, where the inner state must be
        (re)built, reset it and give what it is rebuilt from: the sink and the last ``max(window,
        rows)`` tokens, so every row asked for has a real position. Returns the virtual length after
        the pass and that content (None: the inner model takes ``new_ids`` on its state as it is).
        The caller runs the inner pass, then sets ``_processed`` to the length."""
        end = self._store(new_ids)
        if not self._rebuild_needed(int(new_ids.shape[0])):
            return end, None
        keep = max(self.window, rows)
        if self.inner.processed:
            self.inner.reset()
        if end > self.sink + keep:
            self._cut = end - keep
            content = torch.cat([self._tokens[: self.sink], self._tokens[self._cut : end]])
            self.rebuilds += 1
        else:
            self._cut = None
            content = self._tokens[:end]
        self._stale = False
        return end, content

    def score(self, new_ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
        if self._unwindowed(new_ids):
            return self.inner.score(new_ids, last=last)
        n = int(new_ids.shape[0])
        rows = n if last is None else min(last, n)
        end, content = self._advance(new_ids, rows)
        logits = self.inner.score(new_ids, last=last) if content is None else self.inner.score(content, last=rows)
        self._processed = end
        return logits[-rows:]

    def score_argmax(self, new_ids: torch.Tensor) -> torch.Tensor:
        """The inner drafter's own greedy path (llama.cpp's argmax without copying the row) on
        the same content ``score(new_ids, last=1)`` would feed it: the same token, the same state."""
        return self._last_only(new_ids, self.inner.score_argmax)

    def score_argmax_gap(self, new_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
        """:meth:`score_argmax` with the inner drafter's top-two logit gap."""
        return self._last_only(new_ids, self.inner.score_argmax_gap)

    def _last_only(self, new_ids: torch.Tensor, inner_pass: Callable[[torch.Tensor], _T]) -> _T:
        """``inner_pass`` (a pass that reads the last row only) on the content the window feeds."""
        if self._unwindowed(new_ids):
            return inner_pass(new_ids)
        end, content = self._advance(new_ids, 1)
        out = inner_pass(new_ids if content is None else content)
        self._processed = end
        return out

    def rollback(self, length: int) -> None:
        if length < 0 or length > self._processed:
            raise ValueError(f"cannot roll {self.name} back from {self._processed} to {length} tokens")
        if length == self._processed:
            return
        if self._cut is None and not self._stale:
            self.inner.rollback(length)
        elif length > self._cut:
            self.inner.rollback(self.sink + length - self._cut)
        else:
            self._stale = True  # back into the part the inner state never saw: rebuild on the next pass
        self._processed = length

    @property
    def max_context(self) -> int | None:
        # with a window the inner state re-windows before it overflows; without one it is the inner's
        return self.inner.max_context if self.window is None else None


def windowed(drafter: Drafter, window: int | None, sink: int = WINDOW_SINK) -> Drafter:
    """``drafter`` drafting from a window, or as it is when ``window`` is None."""
    return drafter if window is None else WindowedDrafter(drafter, window, sink)


def window_of(drafter: Any) -> tuple[int, int] | None:
    """(window, sink) of a windowed drafter, None for one that sees the whole sequence."""
    if isinstance(drafter, WindowedDrafter) and drafter.window is not None:
        return drafter.window, drafter.sink
    return None
