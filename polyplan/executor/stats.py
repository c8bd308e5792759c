"""Per-level statistics of one generation (plain dataclasses, vLLM spec-decode names).

A chain ``[M1, ..., Mk]``: level i's row counts the forward passes and model time of ``M_i``;
the verification counters of row i describe the drafts ``M_i`` received from the member below
it in each round (``M_(i+1)`` unless a controller bypassed it; zero for the bottom).
``mean_acceptance_length`` includes the +1 token the verifier
adds, so it is 1.0 for autoregressive decoding; ``tokens_per_pass`` is ``L_i`` of
staged-decoding.md (final output tokens per forward pass of ``M_i``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LevelStats:
    name: str
    #: the chain's speculation length for this level as a drafter (an adaptive controller may use
    #: others: ``gammas_used``); None for the target
    gamma: int | None
    forward_passes: int = 0
    #: tokens fed through this model (prefill included)
    tokens_processed: int = 0
    #: wall time inside this model's forward passes (seconds), its prefill included
    model_time_s: float = 0.0
    #: this member's prefill: the tokens and time of its first pass of the generation (0 when the
    #: chain never used it: members are prefilled lazily, docs/staged-decoding.md)
    prefill_tokens: int = 0
    prefill_time_s: float = 0.0
    #: verifications this level ran on blocks from the level below
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    #: accepted_per_pos[i]: verifications that accepted the draft token at position i
    accepted_per_pos: list[int] = field(default_factory=list)
    #: acceptance_length_histogram[n]: verifications whose acceptance length (accepted + 1) was n
    acceptance_length_histogram: dict[int, int] = field(default_factory=dict)
    #: filled in at the end: final output tokens per forward pass (L_i)
    tokens_per_pass: float = 0.0
    #: gamma -> how many blocks this level built with it (what it really ran under adaptation)
    gammas_used: dict[int, int] = field(default_factory=dict)
    #: draft trees this level drafted (0 for linear drafts), their nodes and the drafter passes
    #: spent expanding nodes
    tree_rounds: int = 0
    tree_nodes_drafted: int = 0
    tree_expansions: int = 0
    #: tree nodes the level above accepted, and how many of them were not the first-drawn child of
    #: their parent (where a branch won over the drafter's first choice), by depth (1 = first token)
    tree_nodes_accepted: int = 0
    tree_branch_wins: int = 0
    tree_branch_wins_by_depth: dict[int, int] = field(default_factory=dict)
    #: drafts this level ended before its gamma because it was unsure of its tokens (draft stop)
    draft_stops: int = 0

    def count_gamma(self, gamma: int) -> None:
        self.gammas_used[gamma] = self.gammas_used.get(gamma, 0) + 1

    @property
    def draft_acceptance_rate(self) -> float | None:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None

    @property
    def mean_acceptance_length(self) -> float | None:
        return (self.num_accepted_tokens + self.num_drafts) / self.num_drafts if self.num_drafts else None

    def record_verification(self, drafted: int, accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += drafted
        self.num_accepted_tokens += accepted
        if len(self.accepted_per_pos) < accepted:
            self.accepted_per_pos.extend([0] * (accepted - len(self.accepted_per_pos)))
        for i in range(accepted):
            self.accepted_per_pos[i] += 1
        n = accepted + 1
        self.acceptance_length_histogram[n] = self.acceptance_length_histogram.get(n, 0) + 1

    def record_tree(self, nodes: int, expansions: int) -> None:
        self.tree_rounds += 1
        self.tree_nodes_drafted += nodes
        self.tree_expansions += expansions

    def record_tree_path(self, tree: Any, path: list[int]) -> None:
        """The accepted path of a tree this level drafted (``tree``: an executor DraftTree)."""
        self.tree_nodes_accepted += len(path)
        for node in path:
            if tree.rank(node) > 1:
                depth = tree.depths[node]
                self.tree_branch_wins += 1
                self.tree_branch_wins_by_depth[depth] = self.tree_branch_wins_by_depth.get(depth, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tree_branch_wins_by_depth"] = {str(k): v for k, v in sorted(self.tree_branch_wins_by_depth.items())}
        d["acceptance_length_histogram"] = {str(k): v for k, v in sorted(self.acceptance_length_histogram.items())}
        d["gammas_used"] = {str(k): v for k, v in sorted(self.gammas_used.items())}
        d["draft_acceptance_rate"] = self.draft_acceptance_rate
        d["mean_acceptance_length"] = self.mean_acceptance_length
        return d


@dataclass
class GenerationStats:
    levels: list[LevelStats]
    prompt_tokens: int = 0
    new_tokens: int = 0
    wall_time_s: float = 0.0
    #: every change of the round setting: {"at_token", "members", "gammas", "reason"}; the
    #: first entry is the setting the generation started with
    setting_changes: list[dict[str, Any]] = field(default_factory=list)
    #: what the chain adapted to this request before it ran (a member drafting from a window because
    #: the sequence exceeds its context)
    notes: list[str] = field(default_factory=list)

    @property
    def model_time_s(self) -> float:
        return sum(level.model_time_s for level in self.levels)

    @property
    def prefill_time_s(self) -> float:
        """Time of every member's prefill pass (the target's included)."""
        return sum(level.prefill_time_s for level in self.levels)

    @property
    def decode_time_s(self) -> float:
        """Wall time less the prefill passes: what the decode-only figures divide."""
        return max(0.0, self.wall_time_s - self.prefill_time_s)

    @property
    def overhead_s(self) -> float:
        """Wall time outside model forwards: sampling, verification, bookkeeping, host syncs."""
        return max(0.0, self.wall_time_s - self.model_time_s)

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_s / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "wall_time_s": self.wall_time_s,
            "model_time_s": self.model_time_s,
            "prefill_time_s": self.prefill_time_s,
            "decode_time_s": self.decode_time_s,
            "overhead_s": self.overhead_s,
            "overhead_fraction": self.overhead_fraction,
            "tokens_per_second": self.tokens_per_second,
            "levels": [level.to_dict() for level in self.levels],
            "setting_changes": self.setting_changes,
            "notes": self.notes,
        }
