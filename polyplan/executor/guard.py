"""The time guard and the chain's measured member speeds (proofs/adaptive-control.md, section 5).

``SpeedGuard`` runs the target alone while speculation is MEASURED slower than it; ``MemberSpeed``
keeps, per member, the time its passes took in the chain against what the profile's curves price
the same passes at, so a later request is planned at the speed the chain runs at now. Pure
Python: the adaptive controller feeds both from each round's :class:`RoundTiming`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from polyplan.executor.control import RoundSetting

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
#: probed O(log n) times in n tokens; not doubled for a setting of point-mass drafters (shadow-checked
#: while held, and they copy in bursts: ``SpeedGuard.apply``)
GUARD_BACKOFF = 32
#: while the target alone is held, a setting whose drafters are all shadow-checked (point-mass: their
#: acceptance is measured on every committed token whether they run or not) comes back early when its
#: predicted time per token has fallen this much below the prediction it fell back at: the request's
#: own acceptance rose (a copying drafter reached a passage it can copy), which is evidence the
#: verdict on the earlier rounds did not have
GUARD_EVIDENCE_GAIN = 0.25
GUARD_MAX_BACKOFF = 512
#: what one request's speed evidence keeps of the earlier requests' (the machine drifts over
#: minutes: the same VM ran the same passes 1.5x slower or faster within hours, docs/results.md)
SPEED_MEMORY = 0.5
#: decoding passes of a member (after forgetting) before its measured speed replaces the profile's;
#: one prefill is enough (hundreds of tokens in one pass: steadier than a one-token pass)
SPEED_MIN_PASSES = 3.0
SPEED_MIN_PREFILLS = 1.0


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
        #: the policy's prediction for the setting the guard stopped (point-mass settings only)
        self.held_predicted = math.nan
        self.speculated = math.nan  # speculation's measured rate when it was stopped
        #: the lowest time per token a warm speculative round since speculation (re)started would have
        #: had with every draft accepted: no acceptance luck makes speculation faster than this
        self.best_case = math.inf
        self.backoff = GUARD_BACKOFF
        #: rule 3 was used in this request: a second verdict falls back
        self.rechosen = False
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

    def apply(
        self,
        setting: RoundSetting,
        rechoose: Callable[[], RoundSetting | None] | None = None,
        predicted: float | None = None,
    ) -> RoundSetting:
        """The policy's ``setting``, or the target alone while the guard holds it. ``rechoose``
        (rule 3): on a verdict judged on the measured rate, once per request, another speculative
        setting chosen on this request's own acceptance, or None when acceptance cannot explain it.
        ``predicted``: the policy's time per token for ``setting`` when its drafters are all
        shadow-checked (None otherwise): a hold ends early when it falls by GUARD_EVIDENCE_GAIN."""
        if self.held_until is not None:
            return self._held(setting, predicted)
        verdict = self._losing() if len(setting.members) > 1 else None
        if verdict is None:
            return setting
        why, on_rate = verdict
        if on_rate and rechoose is not None and not self.rechosen:
            other = rechoose()
            if other is not None:
                # judged afresh on its own rounds, by rule 1; a second verdict falls back
                self.rechosen = True
                self.restart_speculation()
                return other._replace(reason=f"{why}: this request accepts less than profiled; {other.reason}")
        action = "fell back" if self.alone.known else "fell back to measure the target alone"
        self.speculated = self.speculating.value
        self.restart_speculation()
        self.held_since, self.held_until = self.done, self.done + self.backoff
        self.held_predicted = predicted if predicted is not None else math.nan
        self.held_reason = f"{why}: {action} (for up to {self.backoff} tokens)"
        if predicted is None:
            # a setting with a model drafter: no evidence while held, so a loser is probed less and
            # less often; a point-mass setting's acceptance is measured on every token held, and
            # its lulls pass (it copies in bursts), so its probes stay GUARD_BACKOFF apart
            self.backoff = min(2 * self.backoff, GUARD_MAX_BACKOFF)
        return RoundSetting((0,), (), self.held_reason, setting.windows)

    def restart_speculation(self) -> None:
        """Speculation starts afresh (a setting with a drafter new to this request): the rates
        measured so far ran other drafters, so its verdicts wait for its own rounds."""
        self.speculating, self.best_case = MeasuredRate(), math.inf

    def _losing(self) -> tuple[str, bool] | None:
        """Why speculation stops now, or None: measured slower than the target alone measured, or,
        before the target alone is measured, not clearly faster than its prediction. With it,
        whether the verdict was on the measured rate (which acceptance luck is part of) rather than
        on the best case (which no acceptance would have made faster)."""
        if not self.speculating.known:
            # one round is luck for the rate, not for its best case: even with every draft accepted
            # it would have been this slow
            best = self.best_case
            if not math.isfinite(best):
                return None
            every = f"{_ms(best)}/token even had every draft been accepted"
            if self.alone.known and best > self.alone.value * (1 + GUARD_MARGIN):
                return f"{every}, against the target alone's {_ms(self.alone.value)} measured", False
            if not self.alone.known and best * (1 + GUARD_PREDICTION_ERROR) > self.predicted_now:
                return f"{every}, not clearly below the target alone's {_ms(self.predicted_now)} predicted", False
            return None
        rate = self.speculating.value
        if self.alone.known:
            alone = self.alone.value
            if rate > alone * (1 + GUARD_MARGIN):
                return f"measured {_ms(rate)}/token against the target alone's {_ms(alone)} measured", True
        elif rate * (1 + GUARD_PREDICTION_ERROR) > self.predicted_now:
            predicted = _ms(self.predicted_now)
            return f"measured {_ms(rate)}/token, not clearly below the target alone's {predicted} predicted", True
        return None

    def _held(self, setting: RoundSetting, predicted: float | None = None) -> RoundSetting:
        """Keep the target alone, unless it is measured slower than speculation was (the prediction
        it was judged on was wrong), a shadow-checked setting's prediction fell well below the one
        it was stopped at (its acceptance rose since), or the backoff is over (a probe: speculation
        is measured again)."""
        alone = self.alone.value
        assert self.held_until is not None
        risen = (
            predicted is not None
            and len(setting.members) > 1
            and predicted < self.held_predicted * (1 - GUARD_EVIDENCE_GAIN)
        )
        if self.alone.known and alone > self.speculated * (1 + GUARD_MARGIN):
            why = f"the target alone measured {_ms(alone)}/token against {_ms(self.speculated)} speculating: back"
        elif risen:
            assert predicted is not None
            why = (
                f"this request's own acceptance rose: {_ms(predicted)}/token predicted against "
                f"{_ms(self.held_predicted)} when it fell back: back"
            )
        elif self.done >= self.held_until:
            why = f"probe after {self.done - self.held_since} tokens on the target alone ({_ms(alone)}/token)"
        else:
            return RoundSetting((0,), (), self.held_reason, setting.windows)
        self.held_until = None
        self.restart_speculation()
        return setting._replace(reason=f"{why}; {setting.reason}") if len(setting.members) > 1 else setting


class MemberSpeed:
    """Per member: the seconds its passes took in the chain and what the profile's curves price the
    same passes at (tokens fed, tokens cached), summed over this request and, forgotten by
    SPEED_MEMORY per request, the earlier ones. Their ratio is the member's speed factor as the chain
    runs it (1.0: as profiled; 1.3: 30% slower), alternation with the other members included."""

    def __init__(self) -> None:
        #: member -> [measured seconds, profiled seconds, passes]
        self.decode: dict[int, list[float]] = {}
        self.prefill: dict[int, list[float]] = {}
        #: (kind, member) seen once: a member's first pass of each kind in this process is cold
        #: (kernel selection, buffers, graph building: a first torch prefill read 2.2x its profile)
        self._cold_done: set[tuple[str, int]] = set()

    def _by_kind(self) -> dict[str, dict[int, list[float]]]:
        return {"decode": self.decode, "prefill": self.prefill}

    def new_request(self) -> None:
        for evidence in self._by_kind().values():
            for e in evidence.values():
                e[:] = [x * SPEED_MEMORY for x in e]

    def add(self, kind: str, member: int, measured: float, profiled: float) -> None:
        """One pass of ``kind`` ("decode" or "prefill") of ``member``: its seconds and the profile's."""
        evidence = self._by_kind()[kind]
        key = (kind, member)
        if key not in self._cold_done:
            self._cold_done.add(key)
            return
        if measured > 0 and profiled > 0:
            e = evidence.setdefault(member, [0.0, 0.0, 0.0])
            e[0] += measured
            e[1] += profiled
            e[2] += 1.0

    def evidence(self, names: list[str]) -> dict[str, dict[str, list[float]]]:
        """Per kind, member name -> [measured seconds, profiled seconds, passes]: what another
        process can carry on from (``documents.speeds``)."""
        return {kind: {names[m]: list(e) for m, e in ev.items()} for kind, ev in self._by_kind().items()}

    def restore(self, names: list[str], evidence: Mapping[str, Mapping[str, list[float]]]) -> None:
        """Add earlier evidence (``evidence()``'s form, e.g. an earlier run's, faded by its age)."""
        for kind, target in self._by_kind().items():
            for name, e in evidence.get(kind, {}).items():
                if name in names:
                    mine = target.setdefault(names.index(name), [0.0, 0.0, 0.0])
                    mine[:] = [a + float(b) for a, b in zip(mine, e, strict=True)]

    def factors(self, names: list[str]) -> dict[str, dict[str, float]]:
        """``RequestModel.at_speed``'s factors for the members measured enough (the other kind at 1)."""
        out = {}
        for m, name in enumerate(names):
            d, p = self.decode.get(m), self.prefill.get(m)
            decode = d[0] / d[1] if d and d[2] >= SPEED_MIN_PASSES and d[1] > 0 else None
            prefill = p[0] / p[1] if p and p[2] >= SPEED_MIN_PREFILLS and p[1] > 0 else None
            if decode is not None or prefill is not None:
                out[name] = {"decode": decode or 1.0, "prefill": prefill or 1.0}
        return out

    def summary(self, names: list[str]) -> str:
        """One line: each measured member's time in the chain over its profiled time (this request's
        passes and, faded, earlier ones'), e.g. ``q4 decode 1.12 (40 passes), prefill 1.03``."""
        parts = []
        for m, name in enumerate(names):
            d, p = self.decode.get(m), self.prefill.get(m)
            kinds = [f"decode {d[0] / d[1]:.2f} ({d[2]:.0f} passes)"] if d and d[1] > 0 else []
            kinds += [f"prefill {p[0] / p[1]:.2f}"] if p and p[1] > 0 else []
            if kinds:
                parts.append(f"{name} " + ", ".join(kinds))
        return "; ".join(parts)
