"""Which members take part in the next target round, and with which gammas.

A generation is a sequence of target rounds (docs/staged-decoding.md): in each, the chain's
levels build their buffers and the target verifies once. A :class:`Controller` picks the
:class:`RoundSetting` of each round -- a subset of the chain's members, kept in chain order and
always starting with the target, and one gamma per drafter in it. It is asked only BETWEEN target
rounds, never inside a verification: every round is then a complete staged round of some valid
chain, and each such round commits tokens distributed exactly as the target's own decoding, so
switching settings cannot change the output distribution (greedy output stays token-identical).

``StaticController`` is the classic fixed chain. Adaptive controllers (estimates of each pair's
acceptance on this very generation, fed by :meth:`Controller.observe`, and each round's measured
time, fed by :meth:`Controller.observe_round`) live beside it."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple, Protocol


class RoundSetting(NamedTuple):
    #: indices into the chain's members, strictly increasing, starting with 0 (the target);
    #: ``(0,)`` is plain autoregressive decoding
    members: tuple[int, ...]
    #: one speculation length per drafter in ``members[1:]``, top to bottom, each >= 1
    gammas: tuple[int, ...]
    #: why this setting was chosen (shown in run statistics when the setting changes)
    reason: str = ""
    #: (member, window) pairs: the window a member reads from its prefill on (None: the whole
    #: sequence); applied when a round first uses the member, ignored once it is prefilled
    windows: tuple[tuple[int, int | None], ...] = ()


class RoundTiming(NamedTuple):
    """One target round as the chain timed it (``perf_counter``)."""

    #: from the round's first draft to the target's verdict (which the loop already syncs on)
    seconds: float
    #: tokens the round committed
    committed: int
    #: inside ``seconds``, the members' first passes of the request (their prefills, one-off
    #: costs); None where passes cannot be timed on the host (CUDA runs them asynchronously)
    prefill_s: float | None = None
    #: the members' other passes since the last report: (member, seconds, tokens fed, tokens cached)
    passes: tuple[tuple[int, float, int, int], ...] = ()
    #: the members' first passes since the last report: (member, seconds, tokens fed); the target's
    #: prompt, read before the first round, comes with the first
    prefills: tuple[tuple[int, float, int], ...] = ()


class Controller(Protocol):
    """Chooses the setting of every target round of one generation."""

    def start(self, chain_size: int, prompt: list[int], max_new_tokens: int) -> RoundSetting:
        """Before the first round and before any drafter is prefilled (a member is prefilled when
        a round first uses it), so the prompt length and the horizon may decide who takes part;
        resets any per-generation state."""
        ...

    def observe(self, verifier: int, drafter: int, drafted: int, accepted: int) -> None:
        """After each verification: member ``verifier`` checked ``drafted`` tokens proposed by
        member ``drafter`` (indices into the chain) and accepted the first ``accepted``."""
        ...

    def next_round(self, tokens: list[int]) -> RoundSetting:
        """Between target rounds. ``tokens`` is the prompt plus everything committed so far
        (read-only)."""
        ...

    def observe_round(self, timing: RoundTiming) -> None:
        """After each target round, before ``next_round``: its measured time and the tokens it
        committed. Optional: the chain skips a controller without it."""
        ...


class StaticController:
    """Every round runs the whole chain with fixed gammas."""

    def __init__(self, gammas: Sequence[int]) -> None:
        self.setting = RoundSetting(tuple(range(len(gammas) + 1)), tuple(gammas), "static")

    def start(self, chain_size: int, prompt: list[int], max_new_tokens: int = 0) -> RoundSetting:
        if chain_size != len(self.setting.members):
            raise ValueError(f"static setting for {len(self.setting.members)} members, chain has {chain_size}")
        return self.setting

    def observe(self, verifier: int, drafter: int, drafted: int, accepted: int) -> None:
        pass

    def next_round(self, tokens: list[int]) -> RoundSetting:
        return self.setting


def check_setting(setting: RoundSetting, point_mass: Sequence[bool]) -> None:
    """Refuse a setting the staged algorithm cannot run (a controller bug, not user input)."""
    members, gammas = setting.members, setting.gammas
    if not members or members[0] != 0:
        raise ValueError(f"a round must start with the target (member 0): {setting}")
    if any(b <= a for a, b in pairwise(members)) or members[-1] >= len(point_mass):
        raise ValueError(f"round members must be increasing chain indices: {setting}")
    if len(gammas) != len(members) - 1 or any(int(g) < 1 for g in gammas):
        raise ValueError(f"a round needs one gamma >= 1 per drafter: {setting}")
    if any(point_mass[m] for m in members[:-1]):
        raise ValueError(f"a model-free member can only be the bottom of a round: {setting}")
