"""Which batch-invariant regime makes a half-precision target exact on THIS machine, if any.

A half-precision target's logits for a token depend, under torch's CPU kernels, on the shape of
the pass the token shares (docs/staged-decoding.md, "Exact half precision"). A chain feeds the
target other pass shapes than the target decoding alone, so bit-identity between the two holds
only in a regime where a token's logits do not depend on its pass. Which regime that is is a fact
about the CPU's kernels, not about polyplan: on AMD Zen 4 with AVX-512 bf16, eager attention and
at least two rows per matmul suffice; on an Intel Xeon with AMX, oneDNN's bf16 kernels depend on
the number of rows, and that regime fails. So it is probed on the running machine, never assumed:

* :data:`CANDIDATES`, cheapest first: two rows at least (short passes padded), then every pass at
  one fixed width (every matmul sees one shape; a longer pass is cut into pieces of that width)
  with attention in float32 (whose rows do not depend on the number of keys).
* :func:`probe_exact` scores the same tokens split into passes in several ways, in each regime,
  and keeps the first regime whose rows agree bit for bit across every split.

The result is recorded in the profile (``machine["exact"]``), copied into the plan, printed by
``profile``, ``run`` and ``bench``, and applied to the target by ``polyplan run`` / ``bench``.
Where no regime holds the chain stays lossless in distribution (every level verifies), but its
greedy output may differ from the target decoding alone at near-ties, and polyplan says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ExactRegime:
    """How a target scores every pass after its prefill (``ModelDrafter.exact_regime``).

    ``attention``: "eager" (transformers' eager attention in the model's dtype) or "float32" (the
    same, with scores, softmax and weighted sum in float32); ``rows``: the fewest rows of a pass (a
    shorter one gets padding tokens after it, dropped from the cache: causal, so the real rows never
    see them); ``fixed``: every pass has exactly ``rows`` rows (a longer pass is scored as
    consecutive pieces of ``rows``)."""

    rows: int = 2
    fixed: bool = False
    attention: str = "eager"

    def describe(self) -> str:
        rows = f"every pass {self.rows} rows" if self.fixed else f">= {self.rows} rows"
        return f"{self.attention} attention, {rows}"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "fixed": self.fixed, "attention": self.attention}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExactRegime:
        return cls(int(d.get("rows", 2)), bool(d.get("fixed", False)), str(d.get("attention", "eager")))


#: the regime measured to hold on AMD Zen 4 (AVX-512 bf16): the default before a probe says otherwise
TWO_ROWS = ExactRegime(2, False)
#: one shape for every matmul (a gamma-15 verification, 16 tokens, fits one pass) and attention in
#: float32: on an Intel Xeon with AMX (2026-12-07) bf16 attention still rounded a row differently
#: with the number of keys, eager attention at a fixed width 0.375 apart; this regime held
FIXED_WIDTH = ExactRegime(16, True, "float32")
#: cheapest first: a pass padded to 16 rows costs the 135M float model ~2.5x, a flat AMX bf16 one ~1.2x
CANDIDATES = (TWO_ROWS, FIXED_WIDTH)

#: ways of feeding the same tokens after the prefill (a piece of one token, several, more than a
#: fixed width): a regime holds when every split gives every token bitwise the same logits
PROBE_SPLITS = ((20,), (1,) * 20, (5, 3, 4, 8), (2, 1, 9, 1, 7), (17, 3))
PROBE_START = 24


@dataclass(frozen=True)
class ExactProbe:
    """What :func:`probe_exact` found: the regime that holds here (None: none of the candidates)."""

    regime: ExactRegime | None
    reason: str

    @property
    def holds(self) -> bool:
        return self.regime is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "holds": self.holds,
            "regime": None if self.regime is None else self.regime.to_dict(),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExactProbe:
        regime = d.get("regime")
        return cls(None if not regime else ExactRegime.from_dict(regime), str(d.get("reason", "")))

    def summary(self) -> str:
        if self.regime is None:
            return f"NOT token-identical to the target alone on this machine ({self.reason})"
        return f"token-identical to the target alone on this machine ({self.regime.describe()}, probed)"


def probe_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """Tokens to probe with: real text where a tokenizer is at hand (real activations), else a ramp."""
    need = PROBE_START + max(sum(s) for s in PROBE_SPLITS)
    ids: list[int] = []
    if tokenizer is not None:
        text = "def area(r):\n    return 3.14159 * r * r\n\nThe quick brown fox jumps over the lazy dog. "
        ids = list(tokenizer(text)["input_ids"])
    if not ids:
        ids = [(7 * i + 3) % vocab_size for i in range(need)]
    return (ids * (need // len(ids) + 1))[:need]


def _rows_of_split(drafter: Any, ids: torch.Tensor, split: Sequence[int]) -> torch.Tensor:
    drafter.reset()
    drafter.score(ids[:PROBE_START], last=1)
    out, pos = [], PROBE_START
    for k in split:
        out.append(drafter.score(ids[pos : pos + k]))
        pos += k
    return torch.cat(out)


def first_mismatch(drafter: Any, ids: Sequence[int], regime: ExactRegime) -> str | None:
    """None when every split of :data:`PROBE_SPLITS` agrees bit for bit in ``regime``, else what differed."""
    tokens = torch.tensor(list(ids), dtype=torch.long)
    saved = drafter.exact_regime
    drafter.exact_regime = regime
    try:
        with drafter.as_target():
            reference = _rows_of_split(drafter, tokens, PROBE_SPLITS[0])
            for split in PROBE_SPLITS[1:]:
                got = _rows_of_split(drafter, tokens, split)
                if not torch.equal(got, reference):
                    diff = float((got - reference).abs().max())
                    flips = int((got.argmax(-1) != reference.argmax(-1)).sum())
                    pieces = "+".join(map(str, split))
                    return f"passes {pieces} vs one pass: logits up to {diff:.3g} apart, {flips} argmax flips"
    finally:
        drafter.exact_regime = saved
        drafter.reset()
    return None


def probe_exact(
    drafter: Any, ids: Sequence[int] | None = None, candidates: Sequence[ExactRegime] = CANDIDATES
) -> ExactProbe:
    """Probe ``drafter`` (a ``ModelDrafter``) on this machine, with the torch threads in force now,
    and set its ``exact_regime`` to the first candidate that holds (None where none does)."""
    if ids is None:
        ids = probe_ids(getattr(drafter, "tokenizer", None), drafter.vocab_size)
    failures = []
    runs = getattr(drafter, "runs_regime", None)
    for regime in candidates:
        if runs is not None and not runs(regime):
            failures.append(f"{regime.describe()}: not run (this model type's code was not read for its attention)")
            continue
        mismatch = first_mismatch(drafter, ids, regime)
        if mismatch is None:
            drafter.exact_regime = regime
            splits = len(PROBE_SPLITS)
            return ExactProbe(regime, f"{splits} splits of {sum(PROBE_SPLITS[0])} tokens agree bit for bit")
        failures.append(f"{regime.describe()}: {mismatch}")
    drafter.exact_regime = None
    return ExactProbe(None, "; ".join(failures))
