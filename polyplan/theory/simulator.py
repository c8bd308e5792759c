"""A Monte-Carlo simulator of the staged algorithm itself, independent of the exact model.

It runs the loop of staged-decoding.md step by step — the bottom drafts ``g_k`` tokens one pass
each, an intermediate level fills a buffer from blocks it verifies one pass each until it holds
``>= g_j`` tokens, the target verifies and emits accepted + 1, everything unverified is discarded —
drawing each acceptance as a Bernoulli variable. Pass costs follow polyplan.theory.latency.

Acceptance per verifier level j is either a scalar rate (i.i.d.) or a 1-D array ``p`` indexed by
*output position*: the draft token that would become the t-th generated token (t = 0, 1, ...) is
accepted by level j with probability ``p[t]``. Measured per-position traces (0/1 greedy agreements
or per-position sampling rates) therefore replay through the very same loop — the optimizer's
trace-replay predictor uses this function; there is no second staged simulator. Positions past
the end of an array use the array's mean (only drafts beyond the last output token reach them
when ``n_tokens <= len(p)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polyplan.errors import UserError
from polyplan.theory.latency import Latency, pass_cost, validate_latencies


@dataclass
class SimulationResult:
    """Counts from one simulated run (levels 1..k as list indices 0..k-1)."""

    output_tokens: int
    passes: list[int]  # forward passes per level
    total_time: float
    round_tokens: np.ndarray  # tokens emitted per target round (the target's acceptance lengths)
    round_times: np.ndarray  # wall time per target round
    verification_lengths: list[list[int]] = field(default_factory=list)  # per verifier level: accepted + 1
    level_times: list[float] = field(default_factory=list)  # wall time spent in each level's passes
    round_passes: np.ndarray | None = None  # [round, level] forward passes per target round

    @property
    def rounds(self) -> int:
        return int(self.round_tokens.size)

    @property
    def tokens_per_pass(self) -> list[float]:
        return [self.output_tokens / p if p else float("inf") for p in self.passes]

    @property
    def time_per_token(self) -> float:
        return self.total_time / self.output_tokens

    @property
    def mean_acceptance_length(self) -> float:
        return float(self.round_tokens.mean()) if self.rounds else 1.0

    @property
    def time_per_token_stderr(self) -> float:
        """Standard error of time per token (rounds are i.i.d. renewals under i.i.d. acceptance)."""
        return ratio_stderr(self.round_times, self.round_tokens)

    @property
    def mean_acceptance_length_stderr(self) -> float:
        n = self.rounds
        return float(self.round_tokens.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")

    @property
    def passes_per_token(self) -> list[float]:
        return [p / self.output_tokens for p in self.passes]

    @property
    def passes_per_token_stderr(self) -> list[float]:
        assert self.round_passes is not None
        return [ratio_stderr(self.round_passes[:, i], self.round_tokens) for i in range(self.round_passes.shape[1])]


def ratio_stderr(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Delta-method standard error of sum(numerator) / sum(denominator) over i.i.d. pairs."""
    n = numerator.size
    if n < 2:
        return float("inf")
    ratio = numerator.sum() / denominator.sum()
    residual = numerator - ratio * denominator
    return float(np.sqrt(residual.var(ddof=1) / n) / denominator.mean())


def simulate_chain(
    alpha_or_traces: Sequence[float | np.ndarray],
    gamma: Sequence[int],
    latency: Sequence[Latency],
    n_tokens: int,
    rng: np.random.Generator | int | None = None,
    *,
    exact_length: bool = False,
    prefill_first_pass: bool = False,
) -> SimulationResult:
    """Simulate the staged loop until at least ``n_tokens`` tokens are emitted (the last round may
    overshoot; all emitted tokens are counted, so the accounting identity holds exactly).

    ``exact_length=True`` simulates one generation of ``max_new_tokens = n_tokens`` as the executor
    runs it: drafting is capped so no hand-up can carry the output past ``n_tokens`` (a level that
    may still add ``m`` tokens lets the level below add at most ``m - 1``, since every verification
    appends one token of its own). Short generations then pay for their truncated last round, which
    the steady-state model (and ``exact_length=False``) averages away.

    ``prefill_first_pass=True`` counts, but does not time, the first pass of every level: in a
    real generation that pass also carries the prompt, and decode-only timing (what ``polyplan
    bench`` reports) books it as the prompt's prefill. Over a 64-token generation the target runs
    only 5-9 passes, so charging the first one in full would over-predict its time by 1/9-1/5.

    ``alpha_or_traces[j-1]`` is level j's acceptance of level j+1's drafts: a float, or an array
    of per-output-position probabilities (see module doc). ``rng``: a Generator or a seed."""
    _check_chain(alpha_or_traces, gamma, latency, n_tokens)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return _StagedSimulation(alpha_or_traces, gamma, latency, rng, prefill_first_pass).run(n_tokens, exact_length)


def _check_chain(
    alpha_or_traces: Sequence[float | np.ndarray], gamma: Sequence[int], latency: Sequence[Latency], n_tokens: int
) -> None:
    """One acceptance entry and one gamma >= 1 per drafter, valid latencies, at least one token."""
    k = len(latency)
    if len(alpha_or_traces) != k - 1 or len(gamma) != k - 1:
        raise UserError(f"a chain of {k} models needs {k - 1} acceptance entries and {k - 1} gammas")
    if any(int(g) < 1 for g in gamma):
        raise UserError("every gamma must be >= 1")
    validate_latencies(latency, k)
    if n_tokens < 1:
        raise UserError("n_tokens must be >= 1")


class _StagedSimulation:
    """The staged loop run on Bernoulli acceptances: what each level's passes cost and counted, and
    the acceptance lengths of every verification (levels 0..k-1, 0 the target)."""

    def __init__(
        self,
        alpha_or_traces: Sequence[float | np.ndarray],
        gamma: Sequence[int],
        latency: Sequence[Latency],
        rng: np.random.Generator,
        prefill_first_pass: bool,
    ) -> None:
        self.k = len(latency)
        self.latency = latency
        self.rng = rng
        self.prefill_first_pass = prefill_first_pass
        self.acceptance = [_AcceptanceSource(x) for x in alpha_or_traces]
        self.gammas = [int(g) for g in gamma]
        self.passes = [0] * self.k
        self.level_times = [0.0] * self.k
        self.verification_lengths: list[list[int]] = [[] for _ in range(self.k - 1)]

    def charge(self, level: int, new_tokens: int) -> float:
        free = self.prefill_first_pass and self.passes[level] == 0
        cost = 0.0 if free else float(pass_cost(self.latency[level], new_tokens))
        self.passes[level] += 1
        self.level_times[level] += cost
        return cost

    def verify(self, level: int, start: int, block: int) -> int:
        """Accepted prefix length when ``level`` verifies ``block`` drafts at output positions start.."""
        if block == 0:
            return 0
        probs = self.acceptance[level].at(start, block)
        rejected = np.flatnonzero(self.rng.random(block) >= probs)
        return int(rejected[0]) if rejected.size else block

    def draft(self, level: int, start: int, room: float) -> tuple[int, float]:
        """One call of ``level`` (>= 1, 0-based) allowed to hand up at most ``room`` tokens:
        returns (block length handed up, time spent)."""
        if level == self.k - 1:  # bottom: g_k autoregressive passes
            n = int(min(self.gammas[level - 1], room))
            return n, sum(self.charge(level, 1) for _ in range(n))
        buffer, spent = 0, 0.0
        while buffer < self.gammas[level - 1] and buffer < room:
            block, t = self.draft(level + 1, start + buffer, room - buffer - 1)
            spent += t + self.charge(level, block + 1)
            accepted = self.verify(level, start + buffer, block)
            self.verification_lengths[level].append(accepted + 1)
            buffer += accepted + 1
        return buffer, spent

    def round(self, produced: int, n_tokens: int, exact_length: bool) -> tuple[float, int]:
        """One target round after ``produced`` output tokens: (time spent, tokens emitted)."""
        if self.k == 1:
            return self.charge(0, 1), 1
        block, spent = self.draft(1, produced, n_tokens - produced - 1 if exact_length else np.inf)
        spent += self.charge(0, block + 1)
        emitted = self.verify(0, produced, block) + 1
        self.verification_lengths[0].append(emitted)
        return spent, emitted

    def run(self, n_tokens: int, exact_length: bool) -> SimulationResult:
        """Target rounds until at least ``n_tokens`` tokens are emitted, each round's counts kept."""
        produced = 0
        round_tokens: list[int] = []
        round_times: list[float] = []
        round_passes: list[list[int]] = []
        while produced < n_tokens:
            passes_before = list(self.passes)
            spent, emitted = self.round(produced, n_tokens, exact_length)
            produced += emitted
            round_tokens.append(emitted)
            round_times.append(spent)
            round_passes.append([after - before for after, before in zip(self.passes, passes_before, strict=True)])
        return SimulationResult(
            output_tokens=produced,
            passes=self.passes,
            total_time=float(sum(round_times)),
            round_tokens=np.asarray(round_tokens),
            round_times=np.asarray(round_times),
            verification_lengths=self.verification_lengths,
            level_times=self.level_times,
            round_passes=np.asarray(round_passes, dtype=np.int64).reshape(-1, self.k),
        )


def simulate_request(
    alpha_or_traces: Sequence[float | np.ndarray],
    gamma: Sequence[int],
    latency: Sequence[Latency],
    prefill_s: Sequence[float],
    horizon: int,
    rng: np.random.Generator | int | None = None,
) -> float:
    """Wall time of ONE request of ``horizon`` new tokens: every member's prefill (seconds, already
    evaluated at its window; 0 for a member the request never uses) and the staged loop run as the
    executor runs a generation of that length (``exact_length``)."""
    if len(prefill_s) != len(latency):
        raise UserError(f"need one prefill time per member ({len(latency)}), got {len(prefill_s)}")
    if horizon < 1:
        return float(sum(prefill_s))
    run = simulate_chain(alpha_or_traces, gamma, latency, horizon, rng, exact_length=True)
    return float(sum(prefill_s)) + run.total_time


class _AcceptanceSource:
    """A scalar rate or a per-position array, read as probabilities for a block of positions."""

    def __init__(self, value: float | np.ndarray) -> None:
        if np.ndim(value) == 0:
            rate = float(value)
            if not 0 <= rate <= 1:
                raise UserError(f"acceptance rate must lie in [0, 1], got {value!r}")
            self.rate: float | None = rate
            self.trace = None
        else:
            trace = np.asarray(value, dtype=np.float64)
            if trace.ndim != 1 or trace.size == 0:
                raise UserError("an acceptance trace must be a non-empty 1-D array")
            if np.any((trace < 0) | (trace > 1)) or not np.all(np.isfinite(trace)):
                raise UserError("acceptance trace values must lie in [0, 1]")
            self.rate = None
            self.trace = trace
            self.fill = float(trace.mean())

    def at(self, start: int, block: int) -> Any:
        if self.trace is None:
            return self.rate
        end = start + block
        if end <= self.trace.size:
            return self.trace[start:end]
        inside = self.trace[start:] if start < self.trace.size else self.trace[:0]
        return np.concatenate([inside, np.full(block - inside.size, self.fill)])


def simulate_tree_verifications(
    parents: Sequence[int], ranks: Sequence[int], rank_rates: Sequence[float], rounds: int, rng: np.random.Generator
) -> np.ndarray:
    """Accepted nodes of ``rounds`` verifications of one draft tree, walked as the executor walks it:
    at each node the verifier's token is the drafter's rank-r candidate with probability
    ``rank_rates[r-1]`` (none of them with the rest); the walk follows the child of that rank while
    the tree has one (polyplan.theory.trees, Theorem 1)."""
    rates = np.asarray(rank_rates, dtype=float)
    if rates.ndim != 1 or rates.size == 0 or (rates < 0).any() or rates.sum() > 1 + 1e-9:
        raise UserError(f"rank acceptance rates must be in [0, 1] and sum to at most 1, got {list(rank_rates)}")
    outcome = np.append(rates, max(0.0, 1.0 - rates.sum()))
    child = {(int(p), int(r)): i for i, (p, r) in enumerate(zip(parents, ranks, strict=True))}
    accepted = np.zeros(rounds, dtype=np.int64)
    for k in range(rounds):
        node, n = -1, 0
        while True:
            rank = int(rng.choice(outcome.size, p=outcome / outcome.sum())) + 1
            nxt = child.get((node, rank))
            if nxt is None:
                break
            node, n = nxt, n + 1
        accepted[k] = n
    return accepted
