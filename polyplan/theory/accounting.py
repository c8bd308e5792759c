"""The accounting theorem: ``T(N) = N * sum_i T_i / L_i`` (proofs/accounting.md).

Every forward pass of model i costs ``T_i`` (constant), and ``L_i = N / P_i`` is output tokens per
pass of model i over the run (``P_i`` passes). Then the total time is ``sum_i P_i T_i`` — nothing
but a regrouping; it holds for every run, not only in expectation, which is why the tests check it
exactly on simulated counts. With ``T_i(n)`` the same identity holds with ``T_i`` replaced by the
mean pass time of model i over the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy as sp


def accounting_expression(depth: int) -> tuple[sp.Expr, sp.Expr]:
    """``(sum_i P_i T_i, N sum_i T_i / L_i)`` with ``L_i = N / P_i``: equal after simplification."""
    n = sp.Symbol("N", positive=True)
    passes = sp.symbols(f"P_1:{depth + 1}", positive=True)
    times = sp.symbols(f"T_1:{depth + 1}", positive=True)
    tokens_per_pass = [n / p for p in passes]
    total = sum(p * t for p, t in zip(passes, times, strict=True))
    return total, n * sum(t / per_pass for t, per_pass in zip(times, tokens_per_pass, strict=True))


def total_time(output_tokens: Any, tokens_per_pass: Sequence[Any], latency: Sequence[Any]) -> Any:
    """``N * sum_i T_i / L_i`` (exact for Fraction inputs)."""
    return output_tokens * sum((t / per_pass for t, per_pass in zip(latency, tokens_per_pass, strict=True)), 0)


def time_per_token(tokens_per_pass: Sequence[Any], latency: Sequence[Any]) -> Any:
    """``sum_i T_i / L_i``: the expected time per token when ``L_i`` are the model's expectations."""
    return sum((t / per_pass for t, per_pass in zip(latency, tokens_per_pass, strict=True)), 0)
