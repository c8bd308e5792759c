"""Pass latency: a constant ``T_i`` or a curve ``T_i(n)`` of the new tokens a forward pass scores.

Which ``n`` each kind of pass is charged (the convention every predictor and the simulator share;
see proofs/latency-convention.md):

- a *drafting* pass of the bottom level scores one new token: ``T_k(1)``;
- a *verification* pass of a block of ``d`` drafted tokens (target or intermediate level) scores
  ``d + 1`` tokens (the verifier's pending last token plus the block): ``T_i(d + 1)``;
- autoregressive decoding (k = 1) is one pass per token: ``T_1(1)``.

The one or two catch-up tokens a level may additionally carry after a block it drafted was fully
accepted above ride along in the next pass and are not charged: ``T_i(n)`` is nearly flat for
small ``n`` (staged-decoding.md), and for constant latencies the convention is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from polyplan.errors import UserError

LatencyCurveLike = Callable[[int], Any]
Latency = float | int | LatencyCurveLike


def pass_cost(latency: Latency, new_tokens: int) -> Any:
    """Time of one forward pass scoring ``new_tokens`` tokens: the constant, or the curve at ``n``."""
    if callable(latency):
        return latency(new_tokens)
    return latency


def validate_latencies(latency: Sequence[Latency], depth: int) -> None:
    """Raise ``UserError`` unless there is one non-negative constant or callable per level."""
    if len(latency) != depth:
        raise UserError(f"need {depth} latencies (one per model in the chain), got {len(latency)}")
    for i, t in enumerate(latency, start=1):
        if callable(t):
            continue
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise UserError(f"latency of M{i} must be a number or a callable T(n), got {t!r}") from None
        if not math.isfinite(value) or value < 0:
            raise UserError(f"latency of M{i} must be a finite number >= 0, got {t!r}")
        if i == 1 and value == 0:
            raise UserError("latency of the target M1 must be > 0 (speedup is measured against it)")


def validate_chain(
    alpha: Sequence[Any], gamma: Sequence[int], latency: Sequence[Latency], *, allow_alpha_one: bool = True
) -> int:
    """Check the shapes and ranges of a chain description; return its depth k = len(latency)."""
    k = len(latency)
    if k < 1:
        raise UserError("a chain needs at least the target: give one latency per model")
    if len(alpha) != k - 1:
        raise UserError(f"a chain of {k} models needs {k - 1} acceptance rates (alpha), got {len(alpha)}")
    if len(gamma) != k - 1:
        raise UserError(f"a chain of {k} models needs {k - 1} speculation lengths (gamma), got {len(gamma)}")
    for j, a in enumerate(alpha, start=1):
        try:
            value = float(a)
        except (TypeError, ValueError):
            raise UserError(f"alpha_{j} must be a number, got {a!r}") from None
        upper_ok = value <= 1 if allow_alpha_one else value < 1
        if not (value >= 0 and upper_ok):
            bound = "[0, 1]" if allow_alpha_one else "[0, 1)"
            raise UserError(f"alpha_{j} must lie in {bound}, got {a!r}")
    for j, g in enumerate(gamma, start=2):
        if isinstance(g, bool) or not isinstance(g, int) and not (hasattr(g, "__index__")):
            raise UserError(f"gamma_{j} must be an integer >= 1, got {g!r}")
        if int(g) < 1:
            raise UserError(f"gamma_{j} must be an integer >= 1, got {g!r}")
    validate_latencies(latency, k)
    return k
