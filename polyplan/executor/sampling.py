"""Logits processing and verification: the ONE place that defines ``p`` at every level.

Temperature, then top-k, then top-p (the order transformers applies its warpers in), so a
level's processed distribution is what ``generate(do_sample=True, ...)`` would sample from.
Greedy decoding (temperature 0) never computes a softmax: it compares argmaxes.

Verification is speculative sampling (Leviathan et al. 2023; Chen et al. 2023): draft token x,
drawn from q, is accepted with probability min(1, p(x)/q(x)); the first rejected position is
replaced by a sample from norm(max(0, p - q)); if every draft is accepted the verifier adds a
bonus token from its own p. Everything stays on the device: the caller syncs once per block."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from polyplan.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """What the user asked for; defines the processed distribution p of every chain member."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)) or self.temperature < 0:
            raise UserError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise UserError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None and not (0.0 < float(self.top_p) <= 1.0):
            raise UserError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Processed next-token probabilities (float32) for each row of ``logits``."""
        x = logits.float()
        if self.temperature != 1.0:
            x = x / self.temperature
        vocab = x.shape[-1]
        if self.top_k is not None and self.top_k < vocab:
            kth = torch.topk(x, self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            sorted_x, order = torch.sort(x, dim=-1, descending=False)
            cumulative = sorted_x.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cumulative <= (1.0 - self.top_p)
            remove_sorted[..., -1] = False  # always keep the most likely token
            remove = remove_sorted.scatter(-1, order, remove_sorted)
            x = x.masked_fill(remove, float("-inf"))
        return torch.softmax(x, dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``probs`` (unnormalised is fine): LongTensor of shape [rows]."""
    return torch.multinomial(probs, 1, generator=generator).view(-1)


def first_false(ok: torch.Tensor) -> torch.Tensor:
    """Index of the first False in a 1-D bool tensor, or its length if all True (0-dim, on device)."""
    bad = ~ok
    return torch.where(bad.any(), bad.to(torch.int32).argmax(), ok.shape[0]).to(torch.long)


def verify_greedy(logits: torch.Tensor, draft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` [m+1, V] scores the m draft tokens and one more position.

    Returns (accepted count, next token) as 0-dim device tensors: the draft is accepted up to the
    first position where it differs from the verifier's argmax; the next token is that argmax."""
    best = logits.argmax(dim=-1)
    m = draft.shape[0]
    accepted = first_false(best[:m] == draft) if m else torch.zeros((), dtype=torch.long, device=logits.device)
    return accepted, best.gather(0, accepted.view(1)).view(())


def verify_sampled(
    p: torch.Tensor, q: torch.Tensor | None, draft: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling of ``draft`` (m tokens drawn from ``q`` [m, V]) against ``p`` [m+1, V].

    Returns (accepted count, next token) as 0-dim device tensors. The next token is the
    correction sampled from norm(max(0, p - q)) at the first rejection, or the bonus from p[m]."""
    m = draft.shape[0]
    if m == 0:
        return torch.zeros((), dtype=torch.long, device=p.device), sample(p[-1:], generator).view(())
    idx = draft.view(m, 1)
    p_x = p[:m].gather(1, idx).view(m)
    q_x = q.gather(1, idx).view(m)
    u = torch.rand(m, generator=generator, device=p.device)
    accepted = first_false(u * q_x < p_x)  # u < p/q without dividing; q_x > 0 for drawn tokens
    residual = torch.cat([(p[:m] - q).clamp_min(0.0), p[m:]])  # last row: bonus from p itself
    row = residual.index_select(0, accepted.view(1))
    # p == q up to rounding can leave an all-zero residual: fall back to p (the limit case)
    row = torch.where(row.sum() > 0, row, p.index_select(0, accepted.view(1)))
    return accepted, sample(row, generator).view(())
