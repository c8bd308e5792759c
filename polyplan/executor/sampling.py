"""Logits processing and verification: the ONE place that defines ``p`` at every level.

Temperature, then top-k, then top-p (the order transformers applies its warpers in), so a
level's processed distribution is what ``generate(do_sample=True, ...)`` would sample from.
Greedy decoding (temperature 0) never computes a softmax: it compares argmaxes.

Verification is speculative sampling (Leviathan et al. 2023; Chen et al. 2023): draft token x,
drawn from q, is accepted with probability min(1, p(x)/q(x)); the first rejected position is
replaced by a sample from norm(max(0, p - q)); if every draft is accepted the verifier adds a
bonus token from its own p. Everything stays on the device: the caller syncs once per block.

Cost on CPU (measured under load, 49k vocabulary): a full sort of the vocabulary per position was
~90% of ``probs`` with top-p. Top-p needs only the tokens ranked above the cut, so on CPU the
candidates come from ``topk`` over a growing bound until they hold ``top_p`` of the mass -- the
same kept set as the sort (see ``_top_p_probs``). On CUDA the sort stays: it is cheap there and
the bound's check would cost a host sync per call. A model-free drafter's q is a point mass
(``POINT_MASS``): its acceptance test and residual are computed without a one-hot [m, V] q."""

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
            if x.device.type == "cpu":
                return _top_p_probs(x, float(self.top_p))
            sorted_x, order = torch.sort(x, dim=-1, descending=False)
            cumulative = sorted_x.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cumulative <= (1.0 - self.top_p)
            remove_sorted[..., -1] = False  # always keep the most likely token
            remove = remove_sorted.scatter(-1, order, remove_sorted)
            x = x.masked_fill(remove, float("-inf"))
        return torch.softmax(x, dim=-1)


#: first candidate-set size tried for top-p on CPU; multiplied by 8 until the candidates hold top_p
TOP_P_CANDIDATES = 64


def _top_p_probs(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """Softmax of ``x`` [rows, V] restricted to its top-p set, as transformers' TopPLogitsWarper
    (the sort in ``SamplingParams.probs``) keeps it, without sorting the vocabulary.

    The warper sorts ascending and removes token j when the ascending cumulative mass up to and
    including j is <= 1 - top_p; that cumulative is 1 - (mass of the tokens ranked above j), so
    j is kept exactly when the mass ranked above it is < top_p (the most likely token always is).
    Every token outside the ``k`` most likely has at least the candidates' mass above it, so once
    the candidates hold >= top_p of the mass none outside is kept and the candidates decide alone.
    Ties at the cut are ordered arbitrarily, as by the sort."""
    vocab = x.shape[-1]
    log_total = torch.logsumexp(x, dim=-1, keepdim=True)
    k = min(TOP_P_CANDIDATES, vocab)
    while True:
        values, index = torch.topk(x, k, dim=-1)  # descending
        mass = torch.exp(values - log_total)
        if k == vocab or bool((mass.sum(dim=-1) >= top_p).all()):
            break
        k = min(k * 8, vocab)
    # the mass above each candidate in float64: the cut is decided at least as precisely as the
    # reference's float32 cumulative sum over the whole vocabulary
    mass64 = mass.double()
    above = mass64.cumsum(dim=-1) - mass64
    keep = above < top_p
    keep[..., 0] = True
    kept = values.masked_fill(~keep, float("-inf"))
    out = torch.zeros_like(x)
    return out.scatter_(-1, index, torch.softmax(kept, dim=-1))


class PointMass:
    """The q of a model-free drafter: probability 1 on each drafted token. Stands in for a one-hot
    [m, V] tensor in :func:`verify_sampled`."""

    def __repr__(self) -> str:
        return "POINT_MASS"


POINT_MASS = PointMass()


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
    p: torch.Tensor, q: torch.Tensor | PointMass | None, draft: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling of ``draft`` (m tokens drawn from ``q`` [m, V]) against ``p`` [m+1, V].

    Returns (accepted count, next token) as 0-dim device tensors. The next token is the
    correction sampled from norm(max(0, p - q)) at the first rejection, or the bonus from p[m].
    ``q = POINT_MASS``: the drafts are deterministic proposals (q one-hot at each)."""
    m = draft.shape[0]
    if m == 0:
        return torch.zeros((), dtype=torch.long, device=p.device), sample(p[-1:], generator).view(())
    idx = draft.view(m, 1)
    p_x = p[:m].gather(1, idx).view(m)
    if isinstance(q, PointMass):
        return _verify_point_mass(p, p_x, idx, generator)
    q_x = q.gather(1, idx).view(m)
    u = torch.rand(m, generator=generator, device=p.device)
    accepted = first_false(u * q_x < p_x)  # u < p/q without dividing; q_x > 0 for drawn tokens
    residual = torch.cat([(p[:m] - q).clamp_min(0.0), p[m:]])  # last row: bonus from p itself
    row = residual.index_select(0, accepted.view(1))
    # p == q up to rounding can leave an all-zero residual: fall back to p (the limit case)
    row = torch.where(row.sum() > 0, row, p.index_select(0, accepted.view(1)))
    return accepted, sample(row, generator).view(())


def _verify_point_mass(
    p: torch.Tensor, p_x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``verify_sampled`` with q one-hot at the drafted tokens, computed on one row instead of m.

    The same random draws and the same arithmetic as the general path: q(x) = 1, so the test
    u * q(x) < p(x) is u < p(x); max(0, p - q) is p with the drafted token's entry max(0, p(x) - 1)
    = 0 and every other entry p itself. Only the row that is sampled from is built."""
    m = idx.shape[0]
    u = torch.rand(m, generator=generator, device=p.device)
    accepted = first_false(u < p_x)
    row = p.index_select(0, accepted.view(1)).clone()  # [1, V]: p at the first rejection (or the bonus row)
    # zero the drafted token at that row (the bonus row m has no draft: index_fill a dummy there)
    at = torch.cat([idx.view(m), idx.new_zeros(1)]).index_select(0, accepted.view(1))
    zeroed = row.scatter(1, at.view(1, 1), 0.0)
    row = torch.where(accepted < m, zeroed, row)
    row = torch.where(row.sum() > 0, row, p.index_select(0, accepted.view(1)))
    return accepted, sample(row, generator).view(())
