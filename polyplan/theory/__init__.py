"""polyplan.theory — the mathematics of staged (polybasic) speculative decoding. No torch.

Public API (the planner relies on these names):

- ``predict_chain(alpha, gamma, latency) -> ChainPrediction``: exact expected time per token, speedup,
  target mean acceptance length, ``L_1..L_k`` for any depth (float fast path, ~0.3 ms at depth 4).
- ``predict_chain_exact`` (Fractions) and ``predict_chain_symbolic`` (sympy): the same model.
- ``search_gammas(alpha, latency, max_gamma=16) -> (gammas, ChainPrediction)``.
- ``optimal_gamma_two_level(alpha, cost_ratio)``: integer optimum and the Lambert-W continuous one.
- ``insertion_gain(alpha, gamma, latency, position, new_alpha_above, new_alpha_below, new_latency,
  new_gamma) -> InsertionResult``: exact change and the paper's sufficient condition.
- ``simulate_chain(alpha_or_traces, gamma, latency, n_tokens, rng) -> SimulationResult``: the staged loop
  with Bernoulli acceptances (scalar rates or per-position traces).
- ``total_time`` / ``time_per_token``: the accounting theorem ``T(N) = N sum_i T_i / L_i``.
- ``predict_request(...) -> RequestPrediction``, ``break_even_horizon``, ``expected_horizon``: whole
  requests with every member's prefill and the generation horizon (proofs/prefill.md);
  ``simulate_request`` runs one in the simulator.

Conventions (docs/staged-decoding.md): ``alpha = [a_1..a_(k-1)]`` (a_1 = target vs M2),
``gamma = [g_2..g_k]``, ``latency = [T_1..T_k]``, each a constant or a callable ``T_i(n)`` of the
new tokens a pass scores (1 for a bottom drafting pass, d + 1 for verifying d tokens).
The theorems, with their proofs in proofs/, are listed by ``polyplan.theory.theorems.THEOREMS``.
"""

from polyplan.theory.accounting import time_per_token, total_time
from polyplan.theory.chain_model import (
    ChainPrediction,
    predict_chain,
    predict_chain_exact,
    predict_chain_symbolic,
)
from polyplan.theory.gamma import TwoLevelOptimum, optimal_gamma_two_level, search_gammas
from polyplan.theory.insertion import InsertionResult, inserted_chain, insertion_gain
from polyplan.theory.latency import Latency
from polyplan.theory.prefill import RequestPrediction, break_even_horizon, expected_horizon, predict_request
from polyplan.theory.simulator import SimulationResult, simulate_chain, simulate_request

__all__ = [
    "ChainPrediction",
    "InsertionResult",
    "Latency",
    "RequestPrediction",
    "SimulationResult",
    "TwoLevelOptimum",
    "break_even_horizon",
    "expected_horizon",
    "inserted_chain",
    "insertion_gain",
    "optimal_gamma_two_level",
    "predict_chain",
    "predict_chain_exact",
    "predict_chain_symbolic",
    "predict_request",
    "search_gammas",
    "simulate_chain",
    "simulate_request",
    "time_per_token",
    "total_time",
]
