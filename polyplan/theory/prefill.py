"""Whole requests: prefill, horizon and when a drafter pays (proofs/prefill.md).

The chain-model theorem prices one output token in steady state. A request also pays, once, every
member's prefill over the prompt, and it is only ``H`` tokens long, where the horizon ``H`` is
``min(max_new_tokens, L_eos)`` (a random variable: answers end when they end). With members
prefilled lazily (only when the chain first uses them) and drafter ``i`` reading a window of
``w_i(c) = min(c, sink_i + window_i)`` prompt tokens:

    E[T_S(c)] = P_1(c) + sum_{i in D(S)} P_i(w_i(c)) + E[H] * t_S(c + (E[H] - 1) / 2)

for the setting ``S`` (target plus drafters ``D(S)``), ``t_S`` its expected time per token (the
chain-model theorem) at the mean context of the decode, exact when ``t_S`` is linear in the
context. The target alone is ``E[T_AR] = P_1(c) + E[H] T_1(1)``. Hence the break-even theorem:
``S`` beats the target alone iff ``sum_i P_i(w_i(c)) < E[H] (T_1(1) - t_S)``, i.e. iff the horizon
exceeds ``H* = sum_i P_i(w_i(c)) / (T_1(1) - t_S)`` (never when ``t_S >= T_1(1)``). Inserting one
more model ``j`` pays iff ``P_j(w_j(c)) < E[H] (t_S - t_S')``; bringing ``j`` in after ``h`` tokens
pays iff ``P_j(w_j(c + h)) < E[H - h | H > h] (t_S - t_S')``.

Pure Python (+ sympy for the statement); no torch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sympy as sp

from polyplan.errors import UserError

#: a prefill cost: seconds for a prompt of c tokens, or a constant number of seconds per token
PrefillCost = float | int | Callable[[float], float]


def prefill_seconds(cost: PrefillCost, tokens: float) -> float:
    """``P(c)``: a curve at ``c``, or ``c`` times a per-token constant (0 tokens cost nothing)."""
    if tokens <= 0:
        return 0.0
    return float(cost(tokens)) if callable(cost) else float(cost) * tokens


def window_context(prompt_tokens: float, window: int | None, sink: int = 0) -> float:
    """Prompt tokens a drafter prefills: all of them, or its sink plus window when shorter."""
    return float(prompt_tokens) if window is None else float(min(prompt_tokens, sink + window))


def expected_horizon(max_new_tokens: int, lengths: Sequence[int] = (), observed_up_to: int | None = None) -> float:
    """``E[min(max_new_tokens, L_eos)]`` from observed generation lengths.

    ``lengths`` are answers generated with at most ``observed_up_to`` tokens: one shorter than that
    ended (EOS), one that reached it is censored. Beyond the observed range the end-of-sequence
    hazard is taken constant at its observed rate (ends per generated token), a geometric tail:
    ``E[min(H, L)] = sum_{h < H} P(L > h)``. No lengths: ``max_new_tokens``."""
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not lengths:
        return float(max_new_tokens)
    cap = observed_up_to if observed_up_to is not None else max(lengths)
    if cap < 1 or any(n < 0 or n > cap for n in lengths):
        raise UserError(f"generation lengths must lie in [0, {cap}]")
    ended = sum(1 for n in lengths if n < cap)
    hazard = ended / max(1, sum(lengths))  # ends per generated token (a censored answer ends none)
    total = 0.0
    for h in range(max_new_tokens):
        if h < cap:
            total += sum(1 for n in lengths if n > h) / len(lengths)  # P(L > h), observed
        else:
            survive_cap = sum(1 for n in lengths if n >= cap) / len(lengths)
            total += survive_cap * (1 - hazard) ** (h - cap + 1)
    return total


@dataclass
class RequestPrediction:
    """Expected time of one request under a setting (seconds), beside the target alone."""

    prompt_tokens: float
    horizon: float  # E[new tokens]
    target_prefill_s: float
    drafter_prefill_s: list[float]  # per drafter in chain order (0: not used or model-free)
    time_per_token_s: float  # the setting's decode time per token at the mean decode context
    decode_s: float
    request_s: float
    autoregressive_time_per_token_s: float
    autoregressive_request_s: float
    end_to_end_speedup: float
    decode_speedup: float
    #: horizon at which the drafters' prefill is repaid (inf: never, the chain decodes no faster)
    break_even_tokens: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if math.isinf(d["break_even_tokens"]):
            d["break_even_tokens"] = None
        return d


def break_even_horizon(drafter_prefill_s: float, ar_time_per_token: float, time_per_token: float) -> float:
    """``H* = sum P_i / (T_1(1) - t_S)``: the chain wins iff the expected horizon exceeds it."""
    saving = ar_time_per_token - time_per_token
    if drafter_prefill_s <= 0:
        return 0.0 if saving > 0 else math.inf
    return drafter_prefill_s / saving if saving > 0 else math.inf


def predict_request(
    target_prefill_s: float,
    drafter_prefill_s: Sequence[float],
    horizon: float,
    time_per_token_s: float,
    ar_time_per_token_s: float,
    prompt_tokens: float = 0.0,
) -> RequestPrediction:
    """``E[T_S(c)]`` and the target alone's from prefills already evaluated at their windows."""
    if horizon < 0 or time_per_token_s <= 0 or ar_time_per_token_s <= 0:
        raise UserError("need a horizon >= 0 and positive times per token")
    extra = float(sum(drafter_prefill_s))
    decode = horizon * time_per_token_s
    request = target_prefill_s + extra + decode
    ar = target_prefill_s + horizon * ar_time_per_token_s
    return RequestPrediction(
        prompt_tokens=float(prompt_tokens),
        horizon=float(horizon),
        target_prefill_s=float(target_prefill_s),
        drafter_prefill_s=[float(x) for x in drafter_prefill_s],
        time_per_token_s=float(time_per_token_s),
        decode_s=decode,
        request_s=request,
        autoregressive_time_per_token_s=float(ar_time_per_token_s),
        autoregressive_request_s=ar,
        end_to_end_speedup=ar / request if request > 0 else 1.0,
        decode_speedup=ar_time_per_token_s / time_per_token_s,
        break_even_tokens=break_even_horizon(extra, ar_time_per_token_s, time_per_token_s),
    )


def decode_context(prompt_tokens: float, horizon: float) -> float:
    """The mean context over a decode of ``horizon`` tokens: ``c + (E[H] - 1) / 2``."""
    return float(prompt_tokens) + max(0.0, horizon - 1) / 2


# ---- the statement in sympy (polyplan theory show prefill --check) -------------------------------------

H, P1, t_ar, t_s, t_new = sp.symbols("H P_1 T_1 t_S t_S'", positive=True)


def request_time_expressions(drafters: int = 2) -> tuple[sp.Expr, sp.Expr, tuple[sp.Symbol, ...]]:
    """``(E[T_S], E[T_AR], (P_2, ...))`` with constant per-token times over the horizon."""
    prefills = sp.symbols(f"P_2:{drafters + 2}", positive=True)
    return P1 + sum(prefills) + H * t_s, P1 + H * t_ar, prefills


def check_break_even(drafters: int = 3) -> bool:
    """E[T_S] = E[T_AR] exactly at H = H*, the difference is linear in H with slope t_S - T_1
    (so below T_1 the chain wins for every longer horizon), and inserting one model with prefill
    P_new changes the request time by P_new + H (t_S' - t_S)."""
    chain, alone, prefills = request_time_expressions(drafters)
    root = sp.solve(sp.Eq(chain, alone), H)
    h_star = sum(prefills) / (t_ar - t_s)
    difference = sp.expand(chain - alone)
    p_new = sp.Symbol("P_new", positive=True)
    inserted = chain + p_new + H * (t_new - t_s)
    return (
        len(root) == 1
        and sp.simplify(root[0] - h_star) == 0
        and sp.simplify(sp.diff(difference, H) - (t_s - t_ar)) == 0
        and sp.simplify(sp.diff(difference, H, 2)) == 0
        and sp.simplify((inserted - chain) - (p_new + H * (t_new - t_s))) == 0
    )


def break_even_latex() -> str:
    chain, alone, prefills = request_time_expressions(2)
    return (
        rf"\mathbb{{E}}[T_S] = {sp.latex(chain)},\quad S \text{{ wins}} \iff "
        rf"\mathbb{{E}}[H] > H^* = {sp.latex(sum(prefills) / (t_ar - t_s))}"
    )
