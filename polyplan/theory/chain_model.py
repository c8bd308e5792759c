"""The exact expected time per output token of a staged chain of any depth k (i.i.d. acceptance).

Semantics: docs/staged-decoding.md, read literally. Levels are numbered 1 (target) .. k
(bottom); ``alpha[j-1]`` is the rate at which level j accepts tokens drafted by level j+1 and
``gamma[j-2]`` belongs to level j (j >= 2).

- The bottom level hands up exactly ``g_k`` tokens per call, at ``g_k`` drafting passes.
- An intermediate level j loops: ask level j+1 for a block D, verify it in one pass, append the
  accepted prefix + 1 own token (an increment ``I = A + 1`` with A capped geometric on D), and hand
  the buffer up as soon as it holds ``>= g_j`` tokens.
- The target verifies the block from level 2 and emits ``A + 1`` tokens; then every level is reset
  (everything unverified is discarded), so target rounds are i.i.d. renewals.

Because calls of level j+1 are i.i.d., the buffer of level j is a random walk with i.i.d.
increments; the hand-up length is its first-passage overshoot over ``g_j``. We propagate the whole
*distribution* of the handed-up block length level by level (bottom -> top), together with the
expected passes and time per call (Wald's identity). Renewal-reward over target rounds then gives
``time_per_token = E[round time] / E[tokens per round]`` and ``L_i = E[tokens] / E[passes of i]``.
Proof: proofs/chain-model.md.

``chain_moments`` is written once over any number type: floats (fast path used by the optimizer),
``fractions.Fraction`` (exact) or sympy expressions (symbolic; used to show the k = 2 case equals
Leviathan's closed form). It never compares or divides by a probability.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Generic, TypeVar

from polyplan.errors import UserError
from polyplan.theory.acceptance import capped_geometric_pmf, mean_acceptance_length
from polyplan.theory.latency import Latency, pass_cost, validate_chain

Number = TypeVar("Number")


@dataclass
class LevelCall(Generic[Number]):
    """What one call of a level (asking it for one block) costs, in expectation, and what it returns."""

    block_length: list[Number]  # block_length[d] = P(the handed-up block has d tokens)
    passes: list[Number]  # expected forward passes per call of this level and of each level below it
    time: Number  # expected wall time per call (this level and all below)
    level_times: list[Number] = field(default_factory=list)  # that time split by level (this, below...)
    verification_length: Number | None = None  # mean accepted + 1 per verification pass of this level


@dataclass
class ChainPrediction:
    """Expected behaviour of a chain under i.i.d. acceptance (numbers are float, or exact).

    - ``time_per_token``: expected wall time per output token (= sum_i T_i / L_i for constant T_i).
    - ``speedup``: ``T_1(1) / time_per_token`` (autoregressive time over chain time).
    - ``mean_acceptance_length``: the target's, accepted tokens + 1 per target pass (1 for k = 1).
    - ``tokens_per_pass``: ``[L_1, ..., L_k]``, output tokens per forward pass of each level.
    - ``passes_per_token``: ``[1/L_1, ..., 1/L_k]``.
    - ``level_acceptance_length``: mean accepted + 1 per verification pass of levels 1..k-1.
    - ``target_block_length``: ``P(D = d)`` of the block level 2 hands to the target (index d).
    - ``round_time``: expected wall time of one target round (one target pass and all drafting).
    - ``latency_at_one``: ``T_1(1)``, the autoregressive time per token.
    - ``acceptance_length_distribution``: ``P(X = x)`` of the target's acceptance length per round
      (index x = accepted + 1; index 0 unused), to compare with a measured histogram.
    - ``level_time_per_token``: expected time of each level's passes per output token; they sum to
      ``time_per_token`` (= ``T_i / L_i`` for constant latencies: the accounting theorem's terms).
    """

    time_per_token: Any
    speedup: Any
    mean_acceptance_length: Any
    tokens_per_pass: list[Any]
    passes_per_token: list[Any]
    level_acceptance_length: list[Any]
    target_block_length: list[Any]
    round_time: Any
    latency_at_one: Any
    level_time_per_token: list[Any] = field(default_factory=list)
    acceptance_length_distribution: list[Any] = field(default_factory=list)
    alpha: list[Any] = field(default_factory=list)
    gamma: list[int] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.tokens_per_pass)

    @property
    def mean_target_block_length(self) -> Any:
        return sum((d * p for d, p in enumerate(self.target_block_length)), 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: floats (exact values are converted, and also given as strings under ``exact``)."""
        raw = asdict(self)
        exact = any(isinstance(v, Fraction) for v in _flatten(list(raw.values())))
        out = {key: (value if key == "gamma" else _to_float(value)) for key, value in raw.items()}
        out["depth"] = self.depth
        out["mean_target_block_length"] = _to_float(self.mean_target_block_length)
        if exact:
            out["exact"] = {
                key: _to_str(value)
                for key, value in raw.items()
                if key not in ("alpha", "gamma", "target_block_length")
            }
        return out


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def _to_float(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_to_float(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _to_str(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_to_str(v) for v in value]
    return str(value)


def bottom_call(gamma_bottom: int, latency_bottom: Latency) -> LevelCall:
    """The bottom level: exactly ``g_k`` tokens at ``g_k`` drafting passes of ``T_k(1)``."""
    block = [0] * gamma_bottom + [1]
    passes = [gamma_bottom]
    time = gamma_bottom * pass_cost(latency_bottom, 1)
    return LevelCall(block_length=block, passes=passes, time=time, level_times=[time])


def intermediate_call(rate: Any, threshold: int, latency: Latency, below: LevelCall) -> LevelCall:
    """One call of an intermediate level, from the call distribution of the level below.

    ``increment[m]`` = P(one verification adds m tokens to the buffer), m = 1 .. max D + 1;
    ``visit[b]`` = P(the buffer ever holds exactly b tokens), b < threshold (each state is visited
    at most once because increments are >= 1), so E[verifications per call] = sum(visit) and the
    handed-up length is the first buffer size >= threshold."""
    max_block = len(below.block_length) - 1
    powers = [rate**n for n in range(max_block + 1)]
    increment: list[Any] = [0] * (max_block + 2)
    verify_time: Any = 0
    for d, p_d in enumerate(below.block_length):
        if p_d == 0:
            continue  # exact zero (structural), not a comparison of probabilities
        for accepted, p_a in enumerate(capped_geometric_pmf(rate, d, powers)):
            increment[accepted + 1] = increment[accepted + 1] + p_d * p_a
        verify_time = verify_time + p_d * pass_cost(latency, d + 1)
    visit: list[Any] = [1] + [0] * (threshold - 1)
    for b in range(1, threshold):
        total: Any = 0
        for m in range(1, min(b, max_block + 1) + 1):
            total = total + visit[b - m] * increment[m]
        visit[b] = total
    handed: list[Any] = [0] * (threshold + max_block + 1)
    for b in range(threshold):
        for m in range(max(1, threshold - b), max_block + 2):
            handed[b + m] = handed[b + m] + visit[b] * increment[m]
    verifications: Any = sum(visit[1:], visit[0])
    passes = [verifications] + [verifications * p for p in below.passes]
    mean_increment = sum((m * p for m, p in enumerate(increment)), 0)
    level_times = [verifications * verify_time] + [verifications * t for t in below.level_times]
    return LevelCall(
        block_length=handed,
        passes=passes,
        time=verifications * (below.time + verify_time),
        level_times=level_times,
        verification_length=mean_increment,
    )


def chain_moments(alpha: Sequence[Any], gamma: Sequence[int], latency: Sequence[Latency]) -> ChainPrediction:
    """The exact model over any number type (no validation: see ``predict_chain``)."""
    k = len(latency)
    t_one = pass_cost(latency[0], 1)
    if isinstance(t_one, (int, float, Fraction)) and not t_one > 0:
        raise UserError(f"the target's pass time T_1(1) must be > 0, got {t_one!r}")
    if k == 1:
        one = t_one * 0 + 1  # the unit of whatever number type the latencies are
        return ChainPrediction(
            time_per_token=t_one,
            speedup=one,
            mean_acceptance_length=one,
            tokens_per_pass=[one],
            passes_per_token=[one],
            level_acceptance_length=[],
            target_block_length=[],
            round_time=t_one,
            latency_at_one=t_one,
            level_time_per_token=[t_one],
            acceptance_length_distribution=[0 * one, one],
            alpha=list(alpha),
            gamma=list(gamma),
        )
    call = bottom_call(int(gamma[-1]), latency[-1])
    level_lengths: list[Any] = []
    for j in range(k - 1, 1, -1):  # intermediate levels, bottom-up
        call = intermediate_call(alpha[j - 1], int(gamma[j - 2]), latency[j - 1], call)
        level_lengths.insert(0, call.verification_length)
    # The target round.
    rate = alpha[0]
    tokens: Any = 0
    target_time: Any = 0
    max_block = len(call.block_length) - 1
    powers = [rate**n for n in range(max_block + 1)]
    emitted: list[Any] = [0] * (max_block + 2)
    for d, p_d in enumerate(call.block_length):
        if p_d == 0:
            continue
        tokens = tokens + p_d * mean_acceptance_length(rate, d)
        target_time = target_time + p_d * pass_cost(latency[0], d + 1)
        for accepted, p_a in enumerate(capped_geometric_pmf(rate, d, powers)):
            emitted[accepted + 1] = emitted[accepted + 1] + p_d * p_a
    round_time = call.time + target_time
    passes = [1] + list(call.passes)
    time_per_token = round_time / tokens
    return ChainPrediction(
        time_per_token=time_per_token,
        speedup=t_one / time_per_token,
        mean_acceptance_length=tokens,
        tokens_per_pass=[tokens / p for p in passes],
        passes_per_token=[p / tokens for p in passes],
        level_acceptance_length=[tokens] + level_lengths,
        target_block_length=list(call.block_length),
        round_time=round_time,
        latency_at_one=t_one,
        level_time_per_token=[target_time / tokens] + [t / tokens for t in call.level_times],
        acceptance_length_distribution=emitted,
        alpha=list(alpha),
        gamma=[int(x) for x in gamma],
    )


def predict_chain(
    alpha: Sequence[float], gamma: Sequence[int], latency: Sequence[float | Callable[[int], float]]
) -> ChainPrediction:
    """Exact expected behaviour of the chain, in floating point (the optimizer's fast path).

    ``alpha = [a_1..a_(k-1)]`` (a_1: target vs M2), ``gamma = [g_2..g_k]``, ``latency = [T_1..T_k]``
    each a constant (seconds per pass) or a callable ``T_i(n)`` of the new tokens the pass scores:
    a bottom drafting pass scores 1 token, a verification of a block of d tokens scores d + 1
    (polyplan.theory.latency). Every forward pass of a model counts as one pass. Raises UserError
    on bad input. O(sum(gamma)^2) work per level: ~0.3 ms at depth 4 with gammas of 16."""
    validate_chain(alpha, gamma, latency)
    floats = [_float_latency(t) for t in latency]
    return chain_moments([float(x) for x in alpha], [int(x) for x in gamma], floats)


def predict_chain_exact(alpha: Sequence[Any], gamma: Sequence[int], latency: Sequence[Any]) -> ChainPrediction:
    """The same model in exact rational arithmetic (``fractions.Fraction`` everywhere).

    Numbers are converted with ``to_fraction``: a float becomes the decimal it prints as
    (0.9 -> 9/10), a sympy Rational or int exactly; a callable latency must return such numbers."""
    validate_chain(alpha, gamma, latency)
    exact_latency = [(lambda n, f=t: to_fraction(f(n))) if callable(t) else to_fraction(t) for t in latency]
    return chain_moments([to_fraction(x) for x in alpha], [int(x) for x in gamma], exact_latency)


def predict_chain_symbolic(alpha: Sequence[Any], gamma: Sequence[int], latency: Sequence[Any]) -> ChainPrediction:
    """The same model over sympy expressions (alpha and latencies may be symbols); not simplified."""
    return chain_moments(list(alpha), [int(x) for x in gamma], list(latency))


def to_fraction(value: Any) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if isinstance(value, bool):
        raise TypeError("not a number")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(repr(value))
    if isinstance(value, str):
        return Fraction(value)
    if hasattr(value, "p") and hasattr(value, "q"):  # sympy Rational / Integer
        return Fraction(int(value.p), int(value.q))
    raise TypeError(f"cannot convert {value!r} to an exact fraction")


def _float_latency(t: Any) -> Any:
    if callable(t):
        return lambda n, f=t: float(f(n))
    return float(t)
