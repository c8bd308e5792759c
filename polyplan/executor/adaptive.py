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
from typing import TYPE_CHECKING

from polyplan.executor.control import RoundSetting, RoundTiming
from polyplan.executor.guard import MemberSpeed, SpeedGuard
from polyplan.theory.control import (
    posterior_mean,
    transfer_bound,
    transfer_strength,
    verification_evidence,
)
from polyplan.theory.prefill import prefill_seconds

if TYPE_CHECKING:  # the policy is data from the plan; the executor does not import the planner
    from polyplan.planner.policy import Policy, StartDecision
    from polyplan.planner.request_model import RequestModel

Pair = tuple[int, int]
Propose = Callable[[list[int], int], list[int]]

#: the strongest prior the shadow transfer may claim (pseudo-trials)
MAX_TRANSFER_STRENGTH = 256.0
#: the prior of a pair whose drafter reads a window: what a window keeps of the acceptance is
#: measured on a few long prompts and varies with the text (a summary's source lies outside the
#: window, a code file's definitions may not), so it weighs like a handful of verifications; so
#: does a point-mass drafter's prior scaled by the prompt's length (also measured on a few prompts)
WINDOWED_PRIOR_STRENGTH = 8.0
#: the prior of every pair once the guard found speculation losing while this request accepted
#: less than the profile (rule 3 of proofs/adaptive-control.md section 5): the profile's prompts
#: no longer describe this one, so its own verifications decide, as for a windowed pair
DOUBTED_PRIOR_STRENGTH = WINDOWED_PRIOR_STRENGTH


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
        self.seconds = 0.0  # time spent in start, next_round and observe_round (the decision cost)
        self.rounds = 0
        self.prompt_len = 0
        self.target_prefill_s = 0.0
        self.warm: set[int] = {0}
        #: this request's start (the policy prices later rounds with it); None without prefill curves
        self.first: StartDecision | None = None
        self.windows: tuple[tuple[int, int | None], ...] = ()
        #: per pair: what the drafter's window keeps of its acceptance (the prior is scaled by it)
        self.prior_factor: dict[Pair, float] = {}
        self.guard = SpeedGuard()
        #: the members' speed as the chain runs them, carried across requests; ``requests`` is the
        #: policy's request model re-timed by it at each start (the profile's until measured)
        self.speed = MemberSpeed()
        self.requests = policy.requests
        self.factors: dict[str, dict[str, float]] = {}  # the speed factors ``requests`` was re-timed by
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
        #: per shadowed pair whose long-prompt factor varies with the answer position: the
        #: acceptance its prior expected at the positions checked so far (forgotten alike)
        self.expected: dict[Pair, float] = {}
        self.seen = seen
        self.setting: RoundSetting | None = None
        self.alpha: dict[Pair, float] = dict(self.policy.priors)
        #: the start sent this request to the target alone and no evidence has come since: later
        #: rounds would judge the same estimates with less of the request left to repay a prefill
        self._hold = False
        #: the guard's verdict sent this request to its own acceptance (rule 3): weak priors from here
        self._doubted = False
        #: the policy's time per token for the setting it last chose (the guard reads it)
        self._predicted = math.nan

    # ---- the Controller protocol -------------------------------------------------------------
    def start(self, chain_size: int, prompt: list[int], max_new_tokens: int = 0) -> RoundSetting:
        started = time.perf_counter()
        if chain_size != len(self.policy.names):
            raise ValueError(f"the policy is for a chain of {len(self.policy.names)} members, not {chain_size}")
        self._reset(len(prompt))
        self.rounds = 0
        self.prompt_len = len(prompt)
        self.warm = {0}
        self.first = None
        self.windows = ()
        self.prior_factor = {}
        req = self.requests = self._retimed()
        self.speed.new_request()
        # the target's prefill: a per-request constant the margins below are anchored on
        self.target_prefill_s = req.prefill_s(0, len(prompt)) if req is not None else 0.0
        first = self.first = self.policy.start(self.estimates(), len(prompt), max_new_tokens, requests=req)
        if first is None:
            setting = self._decide()
        else:
            self.windows = tuple(sorted(first.windows.items()))
            assert req is not None
            self.prior_factor = {
                (v, d): req.factor(d, first.windows.get(d), first.horizon)
                * req.prompt_factor(d, len(prompt), first.horizon)
                for v, d in self.pairs
            }
            self.expected = {
                (0, j): 0.0 for j in self.shadow if req.by_position(j) and req.prompt_factor(j, len(prompt)) != 1.0
            }
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
        cold = self.cold_cost()
        setting = self.setting if self._hold and self.setting is not None else self._decide(cold)
        shadowed = len(setting.members) > 1 and all(m in self.shadow for m in setting.members[1:])
        if any(cold.get(m, 0.0) > 0 for m in setting.members):
            # the policy pays a prefill on this request's evidence: the rounds measured so far ran
            # other drafters and are no verdict on the one it brings in (judged on its own rounds)
            self.guard.restart_speculation()
        setting = self.guard.apply(setting, self._on_own_acceptance, self._predicted if shadowed else None)
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
        against the profile's curve (how fast the target runs now); feed the members' speeds."""
        started = time.perf_counter()
        if timing.prefill_s is None:
            seconds, cold = timing.seconds, self._cold
        else:
            seconds, cold = timing.seconds - timing.prefill_s, self._catching_up
        speculative = len(self.running.members) > 1
        # a round commits at most its top gamma + 1 tokens (a tree's depth is capped by its gamma)
        most = self.running.gammas[0] + 1 if speculative else 1
        self.guard.observe(seconds, timing.committed, speculative, cold, most)
        if self.policy.requests is not None:
            self._observe_passes(timing)
        self.seconds += time.perf_counter() - started

    def _observe_passes(self, timing: RoundTiming) -> None:
        """Each pass against the profile's curve: the members' speeds, and for the target's passes
        the guard's drift since this request's start (the start priced them at its factor)."""
        profiled, names = self.policy.requests, self.policy.names
        assert profiled is not None
        target_factor = self.factors.get(names[0], {}).get("decode", 1.0)
        for m, measured, fed, cached in timing.passes:
            curve = profiled.latency.get(names[m])
            if curve is not None:
                price = curve(fed, cached)
                self.speed.add("decode", m, measured, price)
                if m == 0:
                    self.guard.calibrate(measured, price * target_factor)
        for m, measured, fed in timing.prefills:
            if names[m] in profiled.prefill:
                self.speed.add("prefill", m, measured, prefill_seconds(profiled.prefill[names[m]], fed))

    def _retimed(self) -> RequestModel | None:
        """The policy's request model at the members' speed measured in earlier requests."""
        req = self.policy.requests
        self.factors = self.speed.factors(self.policy.names) if req is not None else {}
        return req.at_speed(self.factors) if req is not None and self.factors else req

    # ---- estimates and decisions ---------------------------------------------------------------
    def _shadow_check(self, pair: Pair, propose: Propose, tokens: list[int]) -> None:
        """Evidence of every newly committed token, forgotten per token like everything else."""
        s, n, decay = self.successes[pair], self.trials[pair], self.decay[pair]
        expected = self.expected.get(pair)
        for t in range(self.seen, len(tokens)):
            guess = propose(tokens[:t], 1)
            s = s * decay + (1.0 if guess and int(guess[0]) == tokens[t] else 0.0)
            n = n * decay + 1.0
            if expected is not None:
                expected = expected * decay + self._positional_prior(pair, t - self.prompt_len, t - self.prompt_len + 1)
        self.successes[pair], self.trials[pair] = s, n
        if expected is not None:
            self.expected[pair] = expected

    def _positional_prior(self, pair: Pair, first: float, last: float | None) -> float:
        """The acceptance a position-varying pair's prior expects over answer positions [first, last)."""
        assert self.requests is not None
        factor = self.requests.prompt_factor_over(pair[1], self.prompt_len, first, last)
        return min(1.0, self.policy.priors[pair] * factor)

    def estimates(self) -> dict[Pair, float]:
        """Posterior mean acceptance of every pair the policy uses."""
        policy, alpha = self.policy, {}
        for pair in self.pairs:
            if pair in self.expected:
                # its prior is the long prompts' measurement: it weighs a handful of tokens, as a
                # window's (the short prompts' spread says nothing of long ones)
                weight = DOUBTED_PRIOR_STRENGTH if self._doubted else WINDOWED_PRIOR_STRENGTH
                alpha[pair] = self._position_estimate(pair, weight)
                continue
            v, d = pair
            factor = self.prior_factor.get(pair, 1.0)
            prior, strength = min(1.0, policy.priors[pair] * factor), policy.prior_strength[pair]
            if factor != 1.0:
                strength = min(strength, WINDOWED_PRIOR_STRENGTH)
            if self._doubted:
                strength = min(strength, DOUBTED_PRIOR_STRENGTH)
            if v != 0 and d in self.shadow and (0, d) in alpha and (0, v) in alpha:
                # centred on the shadow estimate, shifted as in the profile; as sure as the bound
                prior = min(1.0, max(0.0, alpha[(0, d)] + policy.priors[pair] - policy.priors[(0, d)]))
                shadow_strength = policy.prior_strength[(0, d)] + self.trials[(0, d)]
                strength = transfer_strength(
                    prior, transfer_bound(alpha[(0, v)]), shadow_strength, MAX_TRANSFER_STRENGTH
                )
            alpha[pair] = posterior_mean(prior, strength, self.successes[pair], self.trials[pair])
        return alpha

    def _position_estimate(self, pair: Pair, strength: float) -> float:
        """A pair whose acceptance the profile saw rise along the answer (a point-mass drafter that
        copies from the answer as well as the prompt): the request's successes against what its
        prior expected at the same positions, a ratio with ``strength`` pseudo-trials of prior
        (Gamma-Poisson), applied to what the prior expects over the rest of the answer. Early
        rejections, where the profile too saw few acceptances, then weigh as little as they say."""
        answered = self.seen - self.prompt_len
        rest = self._positional_prior(pair, answered, max(self.horizon, answered + 1.0))
        ratio = (strength + self.successes[pair]) / (strength + self.expected[pair])
        return min(1.0, rest * ratio)

    @property
    def horizon(self) -> float:
        """Tokens this request is expected to generate (0 without a start)."""
        return self.first.horizon if self.first is not None else 0.0

    def predicted_alone(self) -> float:
        """The policy's target alone, seconds per token at this request's context (NaN without a
        table for it: the guard then never stops speculation on the prediction)."""
        context = self.first.context if self.first is not None else None
        table = next((t for t in self.policy.tables_at(context) if t.members == (0,)), None)
        scale = self.first.scale.get((0,), 1.0) if self.first is not None else 1.0
        return math.nan if table is None else table.times[0] * scale

    def cold_cost(self) -> dict[int, float]:
        """Per member not yet prefilled in this request: its prefill (at the context reached)
        spread over the tokens still expected (proofs/prefill.md, Corollary 3)."""
        req = self.requests
        if req is None or not self.horizon:
            return {}
        cold = [m for m in range(len(self.policy.names)) if m not in self.warm]
        windows = dict(self.windows)
        return {m: req.prefill_s(m, self.seen, windows.get(m)) / self._remaining() for m in cold}

    def _priced_cold(self, cold: Mapping[int, float]) -> dict[int, float]:
        """``cold`` (:meth:`cold_cost`), with every member that must still prefill priced out of reach
        until the request has committed ``WINDOWED_PRIOR_STRENGTH`` tokens, the weight of the prior
        a start declines a prefill on when it runs a reserve or a windowed drafter instead: a
        prefill cannot be taken back, and a start that declined it on a near-tie would otherwise
        take it on the first round's noise (proofs/prefill.md, Corollary 3: rag-long-06 paid the
        `:q8_0` prefill, 2.4 s, after two n-gram tokens). Rule 3's re-choice waits alike."""
        if self.first is None or self.seen - self.prompt_len >= WINDOWED_PRIOR_STRENGTH:
            return dict(cold)
        return {m: (math.inf if c > 0 else c) for m, c in cold.items()}

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

    def _on_own_acceptance(self) -> RoundSetting | None:
        """Rule 3 of section 5: the guard measured speculation losing. Where the target accepted
        less in this request than the estimate the running setting was chosen at (the pair that
        decides what a round commits), the profile's prompts do not describe it: re-choose with weak
        priors (its own verifications decide). The new setting, if it speculates and differs, is
        returned for the guard to judge on its own rounds; None (acceptance cannot explain the
        loss, or nothing else speculates) lets the guard fall back."""
        running = self.running.members
        top = (0, running[1]) if len(running) > 1 else None
        if top is None or top not in self.alpha:
            return None
        used = self.alpha[top]
        self._doubted = True
        if self.estimates()[top] >= used:
            self._doubted = False  # this request accepts as estimated: the loss is time, not acceptance
            return None
        setting = self._decide()
        if len(setting.members) < 2 or (setting.members, setting.gammas) == (running, self.running.gammas):
            return None
        return setting

    def _decide(self, cold: Mapping[int, float] | None = None) -> RoundSetting:
        self.alpha = self.estimates()
        current = self.setting.members if self.setting is not None else None
        priced = self._priced_cold(self.cold_cost() if cold is None else cold)
        decision = self.policy.decide(self.alpha, current, self.first, priced, self._anchor())
        self._predicted = decision.time_per_token
        if self.setting is None or (decision.members, decision.gammas) != (self.setting.members, self.setting.gammas):
            reason = self.policy.reason(decision, self.alpha)
            self.setting = RoundSetting(decision.members, decision.gammas, reason, self.windows)
        return self.setting
