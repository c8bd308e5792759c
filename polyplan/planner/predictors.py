"""The two ways the planner predicts a chain's time per token from a profile.

* ``IidPredictor`` -- the theory's exact model under i.i.d. Bernoulli acceptance with the
  profile's mean rate for each adjacent pair (``polyplan.theory.predict_chain``).
* ``ReplayPredictor`` -- trace replay: the theory's staged-algorithm simulator driven by the
  measured per-position acceptance probabilities of every pair, aligned on the same reference
  text. It keeps what the i.i.d. model throws away: acceptance varies along the text and is
  correlated between levels and positions (a prompt-lookup drafter is right in bursts, not i.i.d.).

Both use the profile's latency curves T_i(n, c) at one context ``c``, and both predict either the
steady state (``horizon=None``: the theory's time per token of an unbounded generation) or
generations of ``horizon`` new tokens as the executor runs them (drafting capped at the end, so
the last round is truncated), in decode-only time (each model's first pass carries the prompt
and is booked as prefill, as ``polyplan bench`` does). The horizon matters when acceptance
lengths are long: at 64 tokens a chain whose target emits ~16 tokens per pass runs 4-5 rounds,
and the cut-short last one lowers L_1 by an eighth. Pure Python + numpy."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from polyplan.documents.profile import Profile
from polyplan.documents.traces import Traces, pair_key
from polyplan.errors import UserError
from polyplan.planner.chains import Chain
from polyplan.theory import SimulationResult, predict_chain, search_gammas, simulate_chain

PREDICTORS = ("iid", "replay")
MODES = ("greedy", "sampling")


@dataclass(frozen=True)
class Estimate:
    """One predicted operating point: a chain with its gammas."""

    chain: Chain
    gammas: tuple[int, ...]
    time_per_token: float  # seconds per output token
    speedup: float  # over autoregressive decoding with the target alone
    mean_acceptance_length: float  # of the target's verifications, including the +1
    tokens_per_pass: tuple[float, ...]  # L_1..L_k
    predictor: str
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict:
        return {
            "chain": list(self.chain),
            "gammas": list(self.gammas),
            "time_per_token_s": self.time_per_token,
            "speedup": self.speedup,
            "mean_acceptance_length": self.mean_acceptance_length,
            "tokens_per_pass": list(self.tokens_per_pass),
            "predictor": self.predictor,
        }


class _MemoCurve:
    """T_i(n) at a fixed context; memoised because the exact model asks for the same n often."""

    def __init__(self, curve: Callable[[float, float], float], context: float) -> None:
        self._curve, self._context, self._memo = curve, context, {}

    def __call__(self, n: float) -> float:
        v = self._memo.get(n)
        if v is None:
            v = self._memo[n] = float(self._curve(n, self._context))
        return v


class Predictor(ABC):
    name: str

    def __init__(
        self,
        profile: Profile,
        *,
        mode: str = "greedy",
        context: float | None = None,
        horizon: int | None = None,
        prompt_length: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if horizon is not None and (isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1):
            raise UserError(f"the horizon (max new tokens) must be an integer >= 1, got {horizon!r}")
        self.profile, self.mode = profile, mode
        self.horizon = None if horizon is None else int(horizon)
        self.context = float(default_context(profile) if context is None else context)
        if self.context < 0:
            raise UserError(f"context must be >= 0, got {context}")
        self._curves = {n: _MemoCurve(c, self.context) for n, c in profile.latency.items()}
        self._best: dict[tuple[Chain, int], Estimate] = {}
        #: the workload's prompt length: at a horizon every generation also pays each drafter's
        #: prefill of the prompt (proofs/prefill.md), which can decide between two drafters of
        #: nearly equal decode speed; None leaves prefill out (decode time only)
        self.prompt_length = None if prompt_length is None else float(prompt_length)

    # ---- inputs of the theory --------------------------------------------------------------
    def alphas(self, chain: Chain) -> list[float]:
        return [self.profile.pair(u, d).alpha(self.mode) for u, d in pairwise(chain)]

    def latencies(self, chain: Chain) -> list[Callable[[float], float]]:
        return [self._curves[name] for name in chain]

    def autoregressive_time(self) -> float:
        """Time per token of the target alone (at the horizon, the first token is the prefill's)."""
        t1 = self._curves[self.profile.target](1)
        return t1 if self.horizon is None else t1 * (self.horizon - 1) / self.horizon

    def drafter_prefill(self, chain: Chain) -> float:
        """Seconds one generation spends prefilling the prompt into the chain's drafters (the
        target's prefill is the same with or without a chain, so it is left out); 0 without a
        prompt length, in the steady state, or for members whose prefill was not measured."""
        if self.prompt_length is None or self.horizon is None:
            return 0.0
        prefill = self.profile.prefill
        return sum(prefill[n](self.prompt_length) for n in chain[1:] if n in prefill)

    # ---- predictions --------------------------------------------------------------------------
    @abstractmethod
    def predict(self, chain: Chain, gammas: Sequence[int]) -> Estimate:
        """Predicted operating point of ``chain`` at ``gammas``."""

    @abstractmethod
    def _search(self, chain: Chain, max_gamma: int) -> Estimate:
        """The best gammas for ``chain`` (each in 1..max_gamma)."""

    def best(self, chain: Chain, max_gamma: int = 16) -> Estimate:
        """The chain at its best gammas (memoised: the insertion analysis asks again)."""
        key = (tuple(chain), max_gamma)
        if key not in self._best:
            if len(chain) == 1:
                self._best[key] = self.predict(chain, ())
            else:
                self._best[key] = self._search(tuple(chain), max_gamma)
        return self._best[key]

    def _descend(self, chain: Chain, start: Estimate, max_gamma: int) -> Estimate:
        """Coordinate descent on this predictor's ``predict`` from ``start`` (steps of 1 and 2)."""
        seen: dict[tuple[int, ...], Estimate] = {}

        def predict(gammas: Sequence[int]) -> Estimate:
            key = tuple(gammas)
            if key not in seen:
                seen[key] = self.predict(chain, key)
            return seen[key]

        best = predict(start.gammas)
        improved = True
        while improved:
            improved = False
            for level in range(len(chain) - 1):
                for step in (-2, -1, 1, 2):
                    g = list(best.gammas)
                    g[level] += step
                    if not 1 <= g[level] <= max_gamma:
                        continue
                    cand = predict(g)
                    if cand.time_per_token < best.time_per_token * (1 - 1e-9):
                        best, improved = cand, True
        return best

    def _from_simulations(self, chain: Chain, gammas: Sequence[int], sims) -> Estimate:
        # each simulated generation (one per horizon-long run or replayed prompt) prefills once
        time = sum(s.total_time for s in sims) + len(sims) * self.drafter_prefill(chain)
        tokens = sum(s.output_tokens for s in sims)
        rounds = sum(s.rounds for s in sims)
        passes = np.sum([np.asarray(s.passes, dtype=float) for s in sims], axis=0)
        if tokens == 0:
            raise UserError("the traces are too short to replay")
        return Estimate(
            chain=tuple(chain),
            gammas=tuple(int(g) for g in gammas),
            time_per_token=time / tokens,
            speedup=self.autoregressive_time() / (time / tokens),
            mean_acceptance_length=tokens / rounds,
            tokens_per_pass=tuple(tokens / p if p else math.inf for p in passes),
            predictor=self.name,
        )

    def _estimate(self, chain: Chain, gammas: Sequence[int], pred) -> Estimate:
        tpt = float(pred.time_per_token)
        return Estimate(
            chain=tuple(chain),
            gammas=tuple(int(g) for g in gammas),
            time_per_token=tpt,
            speedup=self.autoregressive_time() / tpt if tpt > 0 else math.inf,
            mean_acceptance_length=float(pred.mean_acceptance_length),
            tokens_per_pass=tuple(float(x) for x in pred.tokens_per_pass),
            predictor=self.name,
        )


def default_context(profile: Profile) -> float:
    """The context the latency curves are read at when the user does not say: the profile's
    recorded mean decoding context if it has one, else the target's smallest measured context."""
    for key in ("mean_context", "context"):
        v = profile.settings.get(key)
        if isinstance(v, (int, float)) and v >= 0:
            return float(v)
    return float(profile.latency[profile.target].context[0]) if profile.target in profile.latency else 0.0


class IidPredictor(Predictor):
    """Steady state: the exact model. At a horizon: the theory's simulator with the same i.i.d.
    rates over ``SIMULATED_TOKENS`` tokens of seeded generations (common random numbers, so gamma
    settings compare on the same draws; standard error about 1.5%)."""

    name = "iid"
    SIMULATED_TOKENS = 8192

    def __init__(self, profile: Profile, *, seed: int = 0, **kw) -> None:
        super().__init__(profile, **kw)
        self.seed = seed
        self._steady: dict[tuple[Chain, int], Estimate] = {}

    def predict(self, chain: Chain, gammas: Sequence[int]) -> Estimate:
        if self.horizon is None:
            pred = predict_chain(self.alphas(chain), list(gammas), self.latencies(chain))
            return self._estimate(chain, gammas, pred)
        if len(chain) == 1:  # autoregressive: the first token comes with the prompt's prefill
            return Estimate(
                chain=tuple(chain),
                gammas=(),
                time_per_token=self.autoregressive_time(),
                speedup=1.0,
                mean_acceptance_length=1.0,
                tokens_per_pass=(1.0,),
                predictor=self.name,
            )
        sims = self.simulate(chain, gammas, self.alphas(chain), self.latencies(chain))
        return self._from_simulations(chain, gammas, sims)

    def simulate(
        self,
        chain: Chain,
        gammas: Sequence[int],
        alphas: Sequence[float],
        latency: Sequence[Callable[[float], float]],
        tokens: int | None = None,
    ) -> list[SimulationResult]:
        """Seeded generations of ``chain`` at i.i.d. rates ``alphas``, about ``tokens`` output tokens
        in all: generations of ``horizon`` tokens as the executor runs them, or one long run in the
        steady state."""
        tokens = self.SIMULATED_TOKENS if tokens is None else tokens
        rng = np.random.default_rng(self.seed)
        if self.horizon is None:
            return [simulate_chain(list(alphas), list(gammas), latency, tokens, rng)]
        runs = max(1, -(-tokens // self.horizon))
        return [
            simulate_chain(
                list(alphas), list(gammas), latency, self.horizon, rng, exact_length=True, prefill_first_pass=True
            )
            for _ in range(runs)
        ]

    def steady_best(self, chain: Chain, max_gamma: int) -> Estimate:
        """The exact model's optimum (the theory's search: exhaustive to depth 3, coordinate
        descent with memoisation beyond), whatever the horizon."""
        key = (tuple(chain), max_gamma)
        if key not in self._steady:
            gammas, pred = search_gammas(self.alphas(chain), self.latencies(chain), max_gamma=max_gamma)
            self._steady[key] = self._estimate(chain, gammas, pred)
        return self._steady[key]

    def _search(self, chain: Chain, max_gamma: int) -> Estimate:
        # At a horizon the gammas stay the steady-state optimum, re-timed at the horizon: a
        # simulated descent per chain would cost ~1 s each (the replay predictor does descend).
        steady = self.steady_best(chain, max_gamma)
        return steady if self.horizon is None else self.predict(chain, steady.gammas)


class ReplayPredictor(Predictor):
    """Trace replay through ``polyplan.theory.simulate_chain``.

    Per level j the simulator gets the array of per-position acceptance probabilities of the pair
    (chain[j], chain[j+1]); all arrays come from teacher forcing on the same reference text, so
    position t is the same token at every level. Each reference segment is replayed separately
    (a drafter's luck does not carry from one prompt to the next) with common random numbers, so
    two gamma settings are compared on the same draws."""

    name = "replay"

    def __init__(
        self,
        profile: Profile,
        traces: Traces,
        *,
        mode: str = "greedy",
        context: float | None = None,
        horizon: int | None = None,
        seed: int = 0,
        passes: int | None = None,
        prompt_length: float | None = None,
    ) -> None:
        super().__init__(profile, mode=mode, context=context, horizon=horizon, prompt_length=prompt_length)
        self.traces, self.seed = traces, seed
        # 0/1 traces (greedy agreement) replay deterministically: one pass says it all.
        # Per-position probabilities (sampling; greedy at near-tie positions averaged over pass
        # shapes) are drawn, so average a few passes.
        measured = traces.mode_traces(mode)
        binary = all(np.isin(v, (0.0, 1.0)).all() for v in measured)
        self.passes = passes if passes is not None else (1 if binary else 4)
        if not measured:
            raise UserError(f"the traces hold no {mode} acceptance traces; re-run `polyplan profile`")
        seg = traces.segments
        self.segments = [int(x) for x in seg] if seg is not None and len(seg) >= 2 else [0, len(measured[0])]
        # A reference shorter than the profile's reference length stopped at end-of-sequence: a
        # generation of that prompt stops there too, whatever the horizon.
        reference_length = profile.settings.get("max_new_tokens")
        full = max(b - a for a, b in pairwise(self.segments))
        reference_length = int(reference_length) if isinstance(reference_length, int) else full
        self._ended = [b - a < reference_length for a, b in pairwise(self.segments)]
        self._iid = IidPredictor(profile, mode=mode, context=self.context, horizon=horizon, prompt_length=prompt_length)

    def level_traces(self, chain: Chain) -> list[np.ndarray]:
        out = []
        for u, d in pairwise(chain):
            trace = self.traces.pair(self.mode, u, d)
            if trace is None:
                key = pair_key(self.mode, u, d)
                raise UserError(f"the traces have no {key!r}; re-run `polyplan profile` with these candidates")
            out.append(np.asarray(trace, dtype=np.float64))
        return out

    def segment_lengths(self) -> list[int]:
        """Tokens generated per replayed prompt: its reference length in the steady state; at a
        horizon, the horizon unless the reference stopped earlier at end-of-sequence (positions
        past a trace's end replay at that prompt's mean acceptance)."""
        out = []
        for (a, b), ended in zip(pairwise(self.segments), self._ended, strict=True):
            if self.horizon is None:
                out.append(b - a)
            else:
                out.append(min(b - a, self.horizon) if ended else self.horizon)
        return out

    def predict(self, chain: Chain, gammas: Sequence[int]) -> Estimate:
        if len(chain) == 1:
            return self._iid.predict(chain, ())
        latency = self.latencies(chain)
        sims = [sim for _, sim in self.replay(chain, gammas, lambda _segment: latency)]
        return self._from_simulations(chain, gammas, sims)

    def replay(
        self, chain: Chain, gammas: Sequence[int], latency_for: Callable[[int], Sequence[Callable[[float], float]]]
    ) -> list[tuple[int, SimulationResult]]:
        """Every simulated generation as (segment index, result), all passes over all segments, with
        the latency curves ``latency_for(segment)``. The draws do not depend on the latencies
        (the simulator uses its random numbers only for acceptance), so any latency curves replay
        the very same passes: the uncertainty intervals count them once and re-time them."""
        levels = self.level_traces(chain)
        rng = np.random.default_rng(self.seed)  # common random numbers across gamma settings
        exact = self.horizon is not None
        out = []
        for _ in range(self.passes):
            for i, ((a, b), n) in enumerate(zip(pairwise(self.segments), self.segment_lengths(), strict=True)):
                if b - a < 2 or n < 1:
                    continue
                out.append(
                    (
                        i,
                        simulate_chain(
                            [lv[a:b] for lv in levels],
                            list(gammas),
                            latency_for(i),
                            n,
                            rng,
                            exact_length=exact,
                            prefill_first_pass=exact,
                        ),
                    )
                )
        return out

    def _search(self, chain: Chain, max_gamma: int) -> Estimate:
        """Start from the i.i.d. steady-state optimum and descend coordinate-wise on the replay."""
        return self._descend(chain, self._iid.steady_best(chain, max_gamma), max_gamma)


def make_predictor(
    name: str,
    profile: Profile,
    *,
    profile_path: str | Path | None = None,
    mode: str = "greedy",
    context: float | None = None,
    traces: Traces | None = None,
    horizon: int | None = None,
    prompt_length: float | None = None,
) -> Predictor:
    if name == "iid":
        return IidPredictor(profile, mode=mode, context=context, horizon=horizon, prompt_length=prompt_length)
    if name == "replay":
        if traces is None:
            if profile_path is None:
                raise UserError("the replay predictor needs the profile's traces")
            traces = Traces.of_profile(profile, profile_path)
        return ReplayPredictor(
            profile, traces, mode=mode, context=context, horizon=horizon, prompt_length=prompt_length
        )
    raise UserError(f"predictor must be one of {', '.join(PREDICTORS)}, not {name!r}")
