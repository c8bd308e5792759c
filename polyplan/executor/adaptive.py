"""``AdaptiveController``: re-chooses the chain's setting between target rounds from this
generation's own acceptance (rule and justification: proofs/adaptive-control.md).

Per (verifier, drafter) pair it keeps exponentially forgotten evidence -- successes and Bernoulli
trials, ``verification_evidence`` of every verification -- on top of a Beta prior centred on the
profile's acceptance; per round it looks the posterior means up in the plan's precomputed policy
(``polyplan.planner.policy.Policy.decide``: a table lookup, no search).

* Forgetting runs on committed tokens: after a round that committed m tokens every pair's
  evidence is multiplied by ``exp(-m / W)``. A pair that gets no evidence (a bypassed model
  drafter) thus relaxes back to its prior, which the plan was chosen at, so the level is re-tried
  after a bounded number of tokens: the re-probe.
* A point-mass drafter is checked for free on every committed token (shadow check): what it would
  have proposed given the committed prefix vs the committed token. Under sampling
  ``E[1{committed = proposed}] = p_target(proposed)``, its acceptance by the target, so the match
  indicator is unbiased evidence for the pair (target, drafter) whether or not the drafter took
  part in the round. Its acceptance by an intermediate level j is then estimated around the shadow
  estimate shifted by the profile's difference between the two pairs, with a prior as strong as
  the transfer bound ``|alpha(j, pm) - alpha(1, pm)| <= 1 - alpha(1, j)`` allows.

Prefill (proofs/prefill.md): ``start`` sees the prompt length and ``max_new_tokens`` before any
drafter is prefilled (the executor prefills a member when a round first uses it) and picks the
setting of least expected REQUEST time, prefills counted, from the policy's request model. Later
rounds price each member not yet prefilled at its prefill spread over the tokens still expected,
and every setting at this request's decode context (the start's scale on the tables).

Time guard (:class:`SpeedGuard`, proofs/adaptive-control.md section 5): the policy prices settings
with the profile's latencies, which drift at run time (another CPU, other load), and member by
member. The chain reports each round's wall time and committed tokens; the guard holds the target
alone while speculation is MEASURED slower than the target alone, and tries speculation again when
the evidence says so.

Pure Python; the executor calls it only between target rounds, so every round is a complete
staged round of a valid chain and the output distribution is the target's whatever it decides."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from polyplan.executor.control import RoundSetting, RoundTiming
from polyplan.theory.control import (
    posterior_mean,
    transfer_bound,
    transfer_strength,
    verification_evidence,
)

if TYPE_CHECKING:  # the policy is data from the plan; the executor does not import the planner
    from polyplan.planner.policy import Policy, StartDecision

Pair = tuple[int, int]
Propose = Callable[[list[int], int], list[int]]

#: the strongest prior the shadow transfer may claim (pseudo-trials)
MAX_TRANSFER_STRENGTH = 256.0
#: the prior of a pair whose drafter reads a window: what a window keeps of the acceptance is
#: measured on a few long prompts and varies with the text (a summary's source lies outside the
#: window, a code file's definitions may not), so it weighs like a handful of verifications
WINDOWED_PRIOR_STRENGTH = 8.0

# The time guard's constants (proofs/adaptive-control.md, section 5). They describe measurement
# noise and the cost of a wrong verdict, not a plan, so they live here rather than in the policy.
#: warm rounds of a kind (speculating / the target alone) before their measured rate is used: a
#: speculative round commits 1..gamma+1 tokens at about the same cost, so one round is luck; two
#: rounds act early in a short request, and a wrong verdict costs at most one backoff (below)
GUARD_MIN_ROUNDS = 2
#: fall back when speculation is measured this much slower than the target alone measured (and come
#: back when the target alone is measured this much slower than speculation was): per-round time
#: noise on a loaded CPU is a few percent, and the goal is >= 0.95x of the target alone
GUARD_MARGIN = 0.05
#: how far the policy's predicted target-alone time may be off the machine now: profile vs run-time
#: drift was 18% on the target of a Xeon and 5-24% on this project's VM (bench's calibration). A
#: speculation measured within this of the prediction cannot be judged on it: the guard measures
#: the target alone (a couple of tokens) instead of trusting the prediction either way
GUARD_PREDICTION_ERROR = 0.25
#: the measured rates forget over this many tokens of their own kind (the text's and the machine's
#: character change over a paragraph: SEGMENT_TOKENS / 2 of the policy)
GUARD_WINDOW = 64.0
#: tokens on the target alone after the request's first fall-back before speculation is tried again;
#: doubled at each fall-back (at most GUARD_MAX_BACKOFF), so a speculation that keeps losing is
#: probed O(log n) times in n tokens
GUARD_BACKOFF = 32
GUARD_MAX_BACKOFF = 512


class AdaptiveController:
    """Chooses each round's members and gammas from a :class:`~polyplan.planner.policy.Policy`.

    ``shadow`` maps a chain index of a point-mass drafter to its ``propose(context, n)``; those
    drafters are shadow-checked on every committed token (``{}``: no shadow checks)."""

    def __init__(self, policy: Policy, shadow: Mapping[int, Propose] | None = None) -> None:
        self.policy = policy
        self.pairs: list[Pair] = sorted(policy.priors)  # (0, j) pairs first: transfers read them
        self.shadow = {int(j): f for j, f in (shadow or {}).items() if (0, int(j)) in policy.priors}
        self._bulk = [p for p in self.pairs if not (p[0] == 0 and p[1] in self.shadow)]
        self.decay = {p: math.exp(-1.0 / policy.window[p]) for p in self.pairs}
        self.seconds = 0.0  # time spent in start/next_round (the decision cost)
        self.rounds = 0
        self.prompt_len = 0
        self.horizon = 0.0
        self.target_prefill_s = 0.0
        self.warm: set[int] = {0}
        self.scale: dict[tuple[int, ...], float] = {}
        self.windows: tuple[tuple[int, int | None], ...] = ()
        #: per pair: what the drafter's window keeps of its acceptance (the prior is scaled by it)
        self.prior_factor: dict[Pair, float] = {}
        self.guard = SpeedGuard()
        #: the setting the chain runs now (the guard's, when it holds the target alone), and whether
        #: its round is cold: the request's first, or one bringing in a member that must prefill
        #: or catch up (a one-off cost the guard's rates leave out)
        self.running = RoundSetting((0,), ())
        self._cold = True
        self._catching_up = False
        self._reset(0)

    def _reset(self, seen: int) -> None:
        self.successes = {p: 0.0 for p in self.pairs}
        self.trials = {p: 0.0 for p in self.pairs}
        self._pending = {p: [0, 0] for p in self.pairs}
        self.seen = seen
        self.setting: RoundSetting | None = None
        self.alpha: dict[Pair, float] = dict(self.policy.priors)
        #: the start sent this request to the target alone and no evidence has come since: later
        #: rounds would judge the same estimates with less of the request left to repay a prefill
        self._hold = False

    # ---- the Controller protocol -------------------------------------------------------------
    def start(self, chain_size: int, prompt: list[int], max_new_tokens: int = 0) -> RoundSetting:
        started = time.perf_counter()
        if chain_size != len(self.policy.names):
            raise ValueError(f"the policy is for a chain of {len(self.policy.names)} members, not {chain_size}")
        self._reset(len(prompt))
        self.rounds = 0
        self.prompt_len = len(prompt)
        self.warm = {0}
        self.scale = {}
        self.horizon = 0.0
        self.windows = ()
        self.prior_factor = {}
        req = self.policy.requests
        # the target's prefill: a per-request constant the margins below are anchored on
        self.target_prefill_s = req.prefill_s(0, len(prompt)) if req is not None else 0.0
        first = self.policy.start(self.estimates(), len(prompt), max_new_tokens)
        if first is None:
            setting = self._decide()
        else:
            self.scale, self.horizon = first.scale, first.horizon
            self.windows = tuple(sorted(first.windows.items()))
            req = self.policy.requests
            self.prior_factor = {(v, d): req.factor(d, first.windows.get(d), first.horizon) for v, d in self.pairs}
            self.alpha = self.estimates()
            d = first.decision
            self.setting = RoundSetting(d.members, d.gammas, self._start_reason(first), self.windows)
            setting = self.setting
            self._hold = d.members == (0,) and not self.shadow
        self.guard.start(self.predicted_alone())
        self.running, self._cold, self._catching_up = setting, True, False
        self.warm.update(setting.members)
        self.seconds += time.perf_counter() - started
        return setting

    def observe(self, verifier: int, drafter: int, drafted: int, accepted: int) -> None:
        pending = self._pending.get((verifier, drafter))
        if pending is None or (verifier == 0 and drafter in self.shadow):
            return  # unknown pair, or one the shadow checks measure on every committed token
        s, n = verification_evidence(drafted, accepted)
        pending[0] += s
        pending[1] += n
        self._hold = False

    def next_round(self, tokens: list[int]) -> RoundSetting:
        started = time.perf_counter()
        new = len(tokens) - self.seen
        for pair in self._bulk:
            factor = self.decay[pair] ** max(new, 0)
            pending = self._pending[pair]
            self.successes[pair] = self.successes[pair] * factor + pending[0]
            self.trials[pair] = self.trials[pair] * factor + pending[1]
            pending[0] = pending[1] = 0
        for j, propose in self.shadow.items():
            self._shadow_check((0, j), propose, tokens)
        self.seen = len(tokens)
        self.rounds += 1
        setting = self.setting if self._hold and self.setting is not None else self._decide()
        setting = self.guard.apply(setting)
        joining = set(setting.members) - set(self.running.members)
        self._cold = bool(joining)
        # members that ran earlier in this request and missed tokens since: their catch-up pass is
        # a one-off no prefill clock sees
        self._catching_up = bool(joining & self.warm)
        self.running = setting
        self.warm.update(setting.members)
        self.seconds += time.perf_counter() - started
        return setting

    def observe_round(self, timing: RoundTiming) -> None:
        """Feed the guard: the round's time without its prefills where the chain timed them (a
        round is then left out only while a member catches up), and the target's own passes
        against the profile's curve (how fast the target runs now)."""
        if timing.prefill_s is None:
            seconds, cold = timing.seconds, self._cold
        else:
            seconds, cold = timing.seconds - timing.prefill_s, self._catching_up
        speculative = len(self.running.members) > 1
        # a round commits at most its top gamma + 1 tokens (a tree's depth is capped by its gamma)
        most = self.running.gammas[0] + 1 if speculative else 1
        self.guard.observe(seconds, timing.committed, speculative, cold, most)
        curve = self.policy.requests.latency.get(self.policy.names[0]) if self.policy.requests else None
        if curve is not None:
            for measured, fed, cached in timing.target_passes:
                self.guard.calibrate(measured, curve(fed, cached))

    # ---- estimates and decisions ---------------------------------------------------------------
    def _shadow_check(self, pair: Pair, propose: Propose, tokens: list[int]) -> None:
        """Evidence of every newly committed token, forgotten per token like everything else."""
        s, n, decay = self.successes[pair], self.trials[pair], self.decay[pair]
        for t in range(self.seen, len(tokens)):
            guess = propose(tokens[:t], 1)
            s = s * decay + (1.0 if guess and int(guess[0]) == tokens[t] else 0.0)
            n = n * decay + 1.0
        self.successes[pair], self.trials[pair] = s, n

    def estimates(self) -> dict[Pair, float]:
        """Posterior mean acceptance of every pair the policy uses."""
        policy, alpha = self.policy, {}
        for pair in self.pairs:
            v, d = pair
            factor = self.prior_factor.get(pair, 1.0)
            prior, strength = policy.priors[pair] * factor, policy.prior_strength[pair]
            if factor < 1.0:
                strength = min(strength, WINDOWED_PRIOR_STRENGTH)
            if v != 0 and d in self.shadow and (0, d) in alpha and (0, v) in alpha:
                # centred on the shadow estimate, shifted as in the profile; as sure as the bound
                prior = min(1.0, max(0.0, alpha[(0, d)] + policy.priors[pair] - policy.priors[(0, d)]))
                shadow_strength = policy.prior_strength[(0, d)] + self.trials[(0, d)]
                strength = transfer_strength(
                    prior, transfer_bound(alpha[(0, v)]), shadow_strength, MAX_TRANSFER_STRENGTH
                )
            alpha[pair] = posterior_mean(prior, strength, self.successes[pair], self.trials[pair])
        return alpha

    def predicted_alone(self) -> float:
        """The policy's target alone, seconds per token at this request's context (NaN without a
        table for it: the guard then never stops speculation on the prediction)."""
        table = next((t for t in self.policy.tables if t.members == (0,)), None)
        return math.nan if table is None else table.times[0] * self.scale.get((0,), 1.0)

    def cold_cost(self) -> dict[int, float]:
        """Per member not yet prefilled in this request: its prefill (at the context reached)
        spread over the tokens still expected (proofs/prefill.md, Corollary 3)."""
        req = self.policy.requests
        if req is None or not self.horizon:
            return {}
        cold = [m for m in range(len(self.policy.names)) if m not in self.warm]
        windows = dict(self.windows)
        return {m: req.prefill_s(m, self.seen, windows.get(m)) / self._remaining() for m in cold}

    def _remaining(self) -> float:
        """Tokens this request is still expected to generate (at least one)."""
        return max(1.0, self.horizon - (self.seen - self.prompt_len))

    def _anchor(self) -> float:
        """The target's prefill per token still expected: the request's shared part, on which the
        start took its margin (``Policy.decide``)."""
        if self.policy.requests is None or not self.horizon:
            return 0.0
        return self.target_prefill_s / self._remaining()

    def _start_reason(self, first: StartDecision) -> str:
        p = first.prediction
        names, d = self.policy.names, first.decision
        shown = ", ".join(f"{names[m]} window {w}" for m, w in sorted(first.windows.items()) if w and m in d.members)
        return (
            f"least expected request time for {self.prompt_len} prompt tokens and ~{p.horizon:.0f} new"
            f"{' (' + shown + ')' if shown else ''}: {p.request_s:.2f} s predicted vs "
            f"{p.autoregressive_request_s:.2f} s for the target alone "
            f"(drafter prefill {sum(p.drafter_prefill_s):.2f} s)"
        )

    def _decide(self) -> RoundSetting:
        self.alpha = self.estimates()
        current = self.setting.members if self.setting is not None else None
        cold = self.cold_cost()
        windows = dict(self.windows)
        safety = {m: self.policy.start_safety(bool(windows.get(m))) for m in cold}
        decision = self.policy.decide(self.alpha, current, self.scale, cold, safety, self._anchor())
        if self.setting is None or (decision.members, decision.gammas) != (self.setting.members, self.setting.gammas):
            reason = self.policy.reason(decision, self.alpha)
            self.setting = RoundSetting(decision.members, decision.gammas, reason, self.windows)
        return self.setting


@dataclass
class MeasuredRate:
    """Seconds per committed token over the last ~GUARD_WINDOW tokens of one kind of round: a
    ratio of sums (time over tokens), the renewal-reward estimate of a setting's time per token."""

    seconds: float = 0.0
    tokens: float = 0.0
    rounds: int = 0

    def add(self, seconds: float, tokens: int) -> None:
        keep = math.exp(-tokens / GUARD_WINDOW)
        self.seconds = self.seconds * keep + seconds
        self.tokens = self.tokens * keep + tokens
        self.rounds += 1

    @property
    def known(self) -> bool:
        return self.rounds >= GUARD_MIN_ROUNDS

    @property
    def value(self) -> float:
        return self.seconds / self.tokens if self.tokens else math.nan


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


class SpeedGuard:
    """Runs the target alone while speculation is measured slower than it (proofs/adaptive-control.md,
    section 5). ``observe`` takes each round's wall time; ``apply`` filters the policy's setting for
    the next round. Verdicts compare a measurement with a measurement; the policy's predicted
    target-alone time only decides whether the target alone is worth measuring."""

    def __init__(self) -> None:
        self.start(math.nan)

    def start(self, predicted_alone: float) -> None:
        """A new request; ``predicted_alone``: the policy's target alone, seconds per token here."""
        self.predicted = predicted_alone
        self.speculating = MeasuredRate()  # since speculation last (re)started
        self.alone = MeasuredRate()
        self.done = 0  # tokens committed in this request
        self.held_until: int | None = None  # the target alone runs until this many are committed
        self.held_since = 0
        self.held_reason = ""
        self.speculated = math.nan  # speculation's measured rate when it was stopped
        #: the lowest time per token a warm speculative round since speculation (re)started would have
        #: had with every draft accepted: no acceptance luck makes speculation faster than this
        self.best_case = math.inf
        self.backoff = GUARD_BACKOFF
        # the target's passes in this request, measured and as the profile prices them
        self.target_measured = self.target_profiled = 0.0

    def calibrate(self, measured: float, profiled: float) -> None:
        """One pass of the target: ``measured`` seconds where the profile's curve says ``profiled``."""
        if profiled > 0 and measured > 0:
            self.target_measured += measured
            self.target_profiled += profiled

    @property
    def predicted_now(self) -> float:
        """The policy's target-alone time, rescaled by how fast the target's own passes ran in this
        request (a ratio of sums): the prediction at the machine's speed now, not the profile's."""
        if self.target_profiled > 0:
            return self.predicted * self.target_measured / self.target_profiled
        return self.predicted

    def observe(self, seconds: float, committed: int, speculative: bool, cold: bool, most: int = 0) -> None:
        """One round: a ``cold`` one (the request's first, or one that prefilled or caught up a
        member) pays a one-off cost the steady rates must not carry. ``most``: the tokens a
        speculative round could have committed had every draft been accepted."""
        self.done += committed
        if cold or committed <= 0:
            return
        if speculative:
            self.speculating.add(seconds, committed)
            if most > 0:
                self.best_case = min(self.best_case, seconds / max(most, committed))
        else:
            self.alone.add(seconds, committed)

    def apply(self, setting: RoundSetting) -> RoundSetting:
        """The policy's ``setting``, or the target alone while the guard holds it."""
        if self.held_until is not None:
            return self._held(setting)
        why = self._losing() if len(setting.members) > 1 else None
        if why is None:
            return setting
        self.speculated, self.speculating = self.speculating.value, MeasuredRate()
        self.best_case = math.inf
        self.held_since, self.held_until = self.done, self.done + self.backoff
        self.held_reason = f"{why} (for up to {self.backoff} tokens)"
        self.backoff = min(2 * self.backoff, GUARD_MAX_BACKOFF)
        return RoundSetting((0,), (), self.held_reason, setting.windows)

    def _losing(self) -> str | None:
        """Why speculation stops now, or None: measured slower than the target alone measured, or,
        before the target alone is measured, not clearly faster than its prediction."""
        if not self.speculating.known:
            # one round is luck for the rate, not for its best case: even with every draft accepted
            # it would have been this slow
            best = self.best_case
            if not math.isfinite(best):
                return None
            if self.alone.known and best > self.alone.value * (1 + GUARD_MARGIN):
                return (
                    f"{_ms(best)}/token even had every draft been accepted, against the target alone's "
                    f"{_ms(self.alone.value)} measured: fell back"
                )
            if not self.alone.known and best * (1 + GUARD_PREDICTION_ERROR) > self.predicted_now:
                return (
                    f"{_ms(best)}/token even had every draft been accepted, not clearly below the "
                    f"target alone's {_ms(self.predicted_now)} predicted: fell back to measure the target alone"
                )
            return None
        rate = self.speculating.value
        if self.alone.known:
            alone = self.alone.value
            if rate > alone * (1 + GUARD_MARGIN):
                return f"measured {_ms(rate)}/token against the target alone's {_ms(alone)} measured: fell back"
        elif rate * (1 + GUARD_PREDICTION_ERROR) > self.predicted_now:
            return (
                f"measured {_ms(rate)}/token, not clearly below the target alone's {_ms(self.predicted_now)} "
                "predicted: fell back to measure the target alone"
            )
        return None

    def _held(self, setting: RoundSetting) -> RoundSetting:
        """Keep the target alone, unless it is measured slower than speculation was (the prediction
        it was judged on was wrong) or the backoff is over (a probe: speculation is measured again)."""
        alone = self.alone.value
        assert self.held_until is not None
        if self.alone.known and alone > self.speculated * (1 + GUARD_MARGIN):
            why = f"the target alone measured {_ms(alone)}/token against {_ms(self.speculated)} speculating: back"
        elif self.done >= self.held_until:
            why = f"probe after {self.done - self.held_since} tokens on the target alone ({_ms(alone)}/token)"
        else:
            return RoundSetting((0,), (), self.held_reason, setting.windows)
        self.held_until = None
        self.speculating, self.best_case = MeasuredRate(), math.inf
        return setting._replace(reason=f"{why}; {setting.reason}") if len(setting.members) > 1 else setting
