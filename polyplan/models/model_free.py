"""Model-free drafters: prompt lookup and an n-gram table. Point-mass proposals, bottom level only.

Both keep an incremental index of the sequence they have seen, so ``propose`` costs
O(max n-gram size + n) per call, not a scan of the context:

* :class:`SuffixIndex` maps every k-gram (min_n <= k <= max_n) of the sequence to the start
  positions of its continuations. A k-gram is indexed only once a token follows it, so the
  sequence's own suffix never matches itself; rollback pops exactly the entries it added.
* :class:`PromptLookupDrafter` copies the continuation of the longest suffix that occurred
  before (most recent occurrence), like transformers' ``prompt_lookup_num_tokens``.
* :class:`NgramDrafter` chains longest-suffix lookups token by token: first in the context
  itself (online), then in a table fitted on the target's own generations, backing off to
  shorter suffixes.

The caller passes the whole context to ``propose``; the drafter syncs its index with it
(it must extend what was seen since the last ``reset``/``rollback``; a context that diverges
in its last tokens is detected and the index rebuilt from the common prefix).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from polyplan.errors import UserError
from polyplan.models.drafter import Drafter

_DIVERGENCE_CHECK = 8  # tail tokens compared to detect a context that is not an extension


class SuffixIndex:
    """Incremental k-gram -> continuation-positions index over a growing token sequence."""

    def __init__(self, min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise UserError(f"n-gram sizes need 1 <= min <= max, got min={min_n}, max={max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self.tokens: list[int] = []
        self._positions: dict[tuple[int, ...], list[int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def append(self, token: int) -> None:
        p = len(self.tokens)  # `token` starts the continuation of every k-gram ending before it
        toks = self.tokens
        for k in range(self.min_n, min(self.max_n, p) + 1):
            self._positions.setdefault(tuple(toks[p - k : p]), []).append(p)
        toks.append(token)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.append(int(t))

    def truncate(self, length: int) -> None:
        """Forget tokens from ``length`` on, undoing exactly what ``append`` recorded for them."""
        toks = self.tokens
        for p in range(len(toks) - 1, length - 1, -1):
            for k in range(self.min_n, min(self.max_n, p) + 1):
                key = tuple(toks[p - k : p])
                lst = self._positions[key]
                lst.pop()
                if not lst:
                    del self._positions[key]
        del toks[length:]

    def sync(self, context: Sequence[int]) -> None:
        """Make the index cover exactly ``context``: append the new tail, or rebuild from the
        common prefix when ``context`` does not extend what was indexed."""
        n_seen = len(self.tokens)
        if len(context) >= n_seen:
            lo = max(0, n_seen - _DIVERGENCE_CHECK)
            if [int(t) for t in context[lo:n_seen]] == self.tokens[lo:n_seen]:
                self.extend(context[n_seen:])
                return
        common = 0
        for a, b in zip(self.tokens, context, strict=False):
            if a != int(b):
                break
            common += 1
        self.truncate(common)
        self.extend(context[common:])

    def continuation(self, suffix: Sequence[int]) -> int | None:
        """Start position of the most recent continuation of ``suffix`` (a tuple), or None."""
        lst = self._positions.get(tuple(suffix))
        return lst[-1] if lst else None

    def longest_match(self, tail: Sequence[int]) -> int | None:
        """Continuation start of the longest suffix of ``tail`` (max_n down to min_n) that
        occurred earlier with a continuation, or None."""
        L = len(tail)
        for k in range(min(self.max_n, L), self.min_n - 1, -1):
            pos = self.continuation(tail[L - k :])
            if pos is not None:
                return pos
        return None


class _PointMassDrafter(Drafter):
    point_mass = True

    def __init__(self, name: str, vocab_size: int, min_n: int, max_n: int) -> None:
        self.name = name
        self.vocab_size = int(vocab_size)
        self.device = torch.device("cpu")
        self._index = SuffixIndex(min_n, max_n)

    @property
    def processed(self) -> int:
        return len(self._index)

    def reset(self) -> None:
        self._index = SuffixIndex(self._index.min_n, self._index.max_n)

    def rollback(self, length: int) -> None:
        if not 0 <= length <= len(self._index):
            raise ValueError(f"rollback to {length} but {self.name} has processed {len(self._index)} tokens")
        self._index.truncate(length)

    @staticmethod
    def _as_list(context: Sequence[int] | torch.Tensor) -> Sequence[int]:
        return context.tolist() if isinstance(context, torch.Tensor) else context


class PromptLookupDrafter(_PointMassDrafter):
    """Copy up to ``n`` tokens that followed the most recent earlier occurrence of the longest
    context suffix (between ``min_ngram`` and ``max_ngram`` tokens). No match: no proposal."""

    def __init__(self, vocab_size: int, name: str = "prompt-lookup", min_ngram: int = 1, max_ngram: int = 3) -> None:
        super().__init__(name, vocab_size, min_ngram, max_ngram)

    def propose(self, context: Sequence[int] | torch.Tensor, n: int) -> list[int]:
        idx = self._index
        idx.sync(self._as_list(context))
        if n <= 0 or not idx.tokens:
            return []
        start = idx.longest_match(idx.tokens[-idx.max_n :])
        if start is None:
            return []
        return idx.tokens[start : start + n]


class NgramTable:
    """Most frequent next token for every k-gram (1 <= k <= order-1) of a corpus."""

    def __init__(self, order: int, best_next: Mapping[tuple[int, ...], int]) -> None:
        self.order = order
        self.best_next = dict(best_next)

    @classmethod
    def fit(cls, sequences: Sequence[Sequence[int]], order: int) -> NgramTable:
        if order < 2:
            raise UserError(f"an n-gram table needs order >= 2, got {order}")
        counts: dict[tuple[int, ...], dict[int, int]] = {}
        for seq in sequences:
            seq = [int(t) for t in seq]
            for p in range(1, len(seq)):
                nxt = seq[p]
                for k in range(1, min(order - 1, p) + 1):
                    c = counts.setdefault(tuple(seq[p - k : p]), {})
                    c[nxt] = c.get(nxt, 0) + 1
        # ties go to the smaller token id: deterministic across runs
        best = {ctx: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for ctx, c in counts.items()}
        return cls(order, best)

    def lookup(self, tail: Sequence[int]) -> int | None:
        """Next token after the longest suffix of ``tail`` the table knows, or None."""
        L = len(tail)
        for k in range(min(self.order - 1, L), 0, -1):
            nxt = self.best_next.get(tuple(tail[L - k :]))
            if nxt is not None:
                return nxt
        return None

    def to_json(self) -> dict:
        return {"order": self.order, "entries": [[*ctx, nxt] for ctx, nxt in self.best_next.items()]}

    @classmethod
    def from_json(cls, doc: dict) -> NgramTable:
        return cls(int(doc["order"]), {tuple(e[:-1]): int(e[-1]) for e in doc["entries"]})

    def __len__(self) -> int:
        return len(self.best_next)


class NgramDrafter(_PointMassDrafter):
    """Propose ``n`` tokens one at a time, each the continuation of the longest known suffix of
    (context + tokens proposed so far): the context's own n-grams first (most recent
    occurrence, online), then the fitted ``table``, backing off to shorter suffixes."""

    def __init__(
        self, vocab_size: int, table: NgramTable | None = None, name: str = "ngram", order: int | None = None
    ) -> None:
        order = order or (table.order if table else 4)
        super().__init__(name, vocab_size, 1, order - 1)
        self.table = table or NgramTable(order, {})

    def propose(self, context: Sequence[int] | torch.Tensor, n: int) -> list[int]:
        idx = self._index
        idx.sync(self._as_list(context))
        k_max = idx.max_n
        tail = idx.tokens[-k_max:] if idx.tokens else []
        out: list[int] = []
        for _ in range(max(n, 0)):
            nxt = None
            L = len(tail)
            for k in range(min(k_max, L), 0, -1):
                suffix = tail[L - k :]
                pos = idx.continuation(suffix)
                if pos is not None:
                    nxt = idx.tokens[pos]
                    break
                nxt = self.table.best_next.get(tuple(suffix))
                if nxt is not None:
                    break
            if nxt is None:
                break
            out.append(nxt)
            tail = (tail + [nxt])[-k_max:]
        return out
