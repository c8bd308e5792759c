"""Classic (dualistic) speculative decoding, k = 2, in closed form (Leviathan et al. 2023).

One round: the drafter M2 spends ``g`` passes of ``T2``, the target one pass of ``T1`` and emits
``(1 - a^(g+1)) / (1 - a)`` tokens in expectation. With cost ratio ``c = T2 / T1`` the walltime
improvement factor (= speedup) is ``(1 - a^(g+1)) / ((1 - a)(g c + 1))``.
All expressions are built from acceptance.mean_acceptance_length_expression (the one copy of the
capped-geometric mean); ``general_model_difference`` shows that the general chain model of
chain_model.py gives exactly these for k = 2. Proof: proofs/two-level.md.
"""

from __future__ import annotations

import sympy as sp

from polyplan.theory.acceptance import a, c, g, mean_acceptance_length_expression
from polyplan.theory.chain_model import predict_chain_symbolic

T1, T2 = sp.symbols("T_1 T_2", positive=True)


def expected_tokens_per_round() -> sp.Expr:
    """``(1 - a^(g+1)) / (1 - a)``: the target's mean acceptance length = L_1."""
    return mean_acceptance_length_expression(g)


def round_time() -> sp.Expr:
    """``g T2 + T1`` (constant latencies)."""
    return g * T2 + T1


def time_per_token() -> sp.Expr:
    return round_time() / expected_tokens_per_round()


def improvement_factor() -> sp.Expr:
    """Speedup over autoregressive decoding with ``c = T2 / T1``: ``(1-a^(g+1)) / ((1-a)(g c + 1))``."""
    return sp.simplify((T1 / time_per_token()).subs(T2, c * T1))


def general_model_difference(gamma_value: int) -> sp.Expr:
    """General chain model minus the closed form for k = 2 at a concrete ``g``; simplifies to 0."""
    general = predict_chain_symbolic([a], [gamma_value], [T1, T2])
    closed = time_per_token().subs(g, gamma_value)
    return sp.simplify(general.time_per_token - closed)
