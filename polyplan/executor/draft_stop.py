"""Ending a greedy draft early where the drafter itself is unsure (docs/staged-decoding.md, "Draft stops").

A near-copy drafter (a quantized target) disagrees with the target almost only at near-ties: where
its own top two logits are close. The profile measures, per drafter, the target's greedy agreement
as a function of that logit gap (``AcceptancePair.gap_bins``); the planner turns it into a
:class:`DraftStop`. While a greedy bottom level verified by the target drafts, the chain keeps the
running product ``S`` of the calibrated acceptance of the tokens drafted so far -- the probability
that all of them are accepted -- and stops drafting once ``S < stop_below``: the next drafter pass
would then cost more than the accepted tokens it is expected to add (proofs/draft-stop.md).

Which tokens are drafted depends only on the drafter's own outputs, never on the target's, so the
output is unchanged: only how many tokens a round verifies."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DraftStop:
    """The calibration of one drafter (gap bin edges, acceptance per bin) and the rule's bound."""

    #: ascending lower edges of the logit-gap bins, the first 0.0; the last bin is open-ended
    edges: tuple[float, ...]
    #: the target's greedy agreement with the drafter's argmax in each bin (smoothed)
    acceptance: tuple[float, ...]
    #: stop drafting once the product of the drafted tokens' acceptance falls below this
    stop_below: float

    def __post_init__(self) -> None:
        if not self.edges or len(self.edges) != len(self.acceptance) or self.edges[0] != 0.0:
            raise ValueError("a draft stop needs one acceptance per gap bin, the first bin starting at 0")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"gap bin edges must ascend, got {list(self.edges)}")
        if any(not 0.0 <= a <= 1.0 for a in self.acceptance) or not 0.0 <= self.stop_below <= 1.0:
            raise ValueError("acceptance and stop_below are probabilities")

    def acceptance_at(self, gap: float) -> float:
        """The calibrated chance the target accepts a drafted token whose top-two logit gap is ``gap``."""
        return self.acceptance[max(0, bisect.bisect_right(self.edges, gap) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "acceptance": list(self.acceptance), "stop_below": self.stop_below}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DraftStop:
        return cls(
            tuple(float(e) for e in doc["edges"]),
            tuple(float(a) for a in doc["acceptance"]),
            float(doc["stop_below"]),
        )


def draft_stops(rules: Mapping[str, DraftStop] | None, names: Sequence[str]) -> dict[int, DraftStop]:
    """Chain member index -> its rule, for the drafters (never the target) ``rules`` names."""
    rules = rules or {}
    return {i: rules[name] for i, name in enumerate(names) if i > 0 and name in rules}
