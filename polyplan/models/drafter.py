"""The one interface every chain member implements: model, derived copy or model-free.

Semantics follow docs/staged-decoding.md. A drafter holds the state of ONE sequence
(batch size 1). The executor and the profiler drive it through three calls:

* ``score(new_ids, last=None)`` -- feed tokens that follow what the drafter has already processed
  and get the raw next-token logits at every fed position, or at the last ``last`` ones only (one
  forward pass; the KV cache grows by ``len(new_ids)``). ``logits[i]`` is the distribution of the
  token AFTER ``new_ids[i]``. A backend may skip computing rows nobody asked for (the LM head
  over a long prefill is not free).
* ``score_argmax(new_ids)`` -- ``score(new_ids, last=1)`` reduced to the argmax of that row (greedy
  drafting); the default calls ``score``, a backend may take it without building the row.
* ``rollback(length)`` -- forget everything after the first ``length`` processed tokens
  (rejected drafts). ``length <= processed`` always.
* ``score_tree(prefix_ids, tree_ids, parents)`` then ``keep_tree_path(path)`` -- members that
  verify draft trees (``verifies_trees``): one pass over the prefix and a tree of tokens, each
  node attending to its ancestors only; then the cache keeps the prefix and one root-to-node path.
* ``propose(context, n)`` -- only for point-mass (model-free) drafters: up to ``n`` next tokens
  for the token list ``context``. Model drafters draft by ``score`` + sampling in the executor,
  so the logits processing stays in one place.

``processed`` is the number of tokens the drafter's state covers (its KV-cache length).
Logits come back as float32 on the drafter's device; the caller moves what it needs.
``tokenizer`` and ``eos_token_ids`` complete what the executor needs to know about a member: it
never looks past this interface (no ``isinstance``, no backend internals).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from polyplan.errors import UserError


class VocabularyMismatch(UserError):
    """Two chain members do not share a vocabulary: verification would be meaningless."""


class Drafter(ABC):
    """A chain member. Subclasses: ``ModelDrafter`` (transformers causal LM with a KV cache),
    the derived copies built from it, and the model-free drafters (prompt lookup, n-gram)."""

    #: human-readable name used in stats, profiles and plans (e.g. "smollm2-135m:int8")
    name: str
    #: size of the logits dimension; all members of a chain must agree
    vocab_size: int
    #: True for model-free drafters: proposals are point masses, they cannot ``score`` and
    #: may only sit at the bottom of a chain
    point_mass: bool = False
    #: where ``score`` inputs must live and where logits come back
    device: torch.device = torch.device("cpu")
    #: a transformers-style tokenizer (``decode``, ``apply_chat_template``) or None
    tokenizer: Any = None
    #: True when this member, as a target, verifies with other numerics than it decodes with
    #: alone (a llama.cpp target: passes padded to ``min_pass`` tokens instead of its one-token
    #: kernels); see :meth:`decoding_alone`
    pads_passes: bool = False
    #: True when the member conditions on part of the sequence only (a window): it may draft and
    #: verify for the level above (the q it hands up is its own), but never be the target, whose
    #: distribution over the whole sequence the output follows
    bounded_context: bool = False
    #: True when the member implements ``score_tree`` / ``keep_tree_path`` (it can verify a tree)
    verifies_trees: bool = False
    #: True when, as a target (:meth:`as_target`), the member wants the prompt but its last token
    #: prefilled in a pass of its own: its later passes use other kernels than its prefill, and a
    #: chain's first verification must not mix them (a half-precision ``ModelDrafter``)
    prefills_apart: bool = False
    #: backing fields of ``processed`` and ``max_context`` for backends that keep a counter
    _processed: int = 0
    _max_context: int | None = None

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end a sequence for this member ([] when it does not know)."""
        return []

    @property
    def processed(self) -> int:
        """Tokens covered by this drafter's state (KV-cache length); 0 after ``reset``."""
        return self._processed

    @abstractmethod
    def reset(self) -> None:
        """Drop all state: the next ``score`` starts a new sequence."""

    def score(self, new_ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """Process ``new_ids`` (1-D LongTensor) after the processed prefix in ONE forward pass.

        Returns float32 logits of shape ``(len(new_ids), vocab_size)``, or ``(last, vocab_size)``
        for the last ``last`` positions when ``last`` is given."""
        raise NotImplementedError(f"{self.name} is a point-mass drafter and cannot score tokens")

    def score_argmax(self, new_ids: torch.Tensor) -> torch.Tensor:
        """``score(new_ids, last=1)`` reduced to its argmax: the greedy draft after ``new_ids``
        (non-empty) as a LongTensor of shape [1]. A backend may take it without building the
        logits row (a llama.cpp member reads llama.cpp's buffer in place); the token is the same."""
        return self.score(new_ids, last=1)[-1:].argmax(dim=-1)

    def score_argmax_gap(self, new_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``score_argmax`` and the gap between the row's two largest logits (how sure the
        drafter is of that token: what a draft stop reads, polyplan.executor.draft_stop)."""
        top = self.score(new_ids, last=1)[-1].topk(2)
        return top.indices[:1], float(top.values[0] - top.values[1])

    @abstractmethod
    def rollback(self, length: int) -> None:
        """Keep only the first ``length`` processed tokens."""

    def score_tree(self, prefix_ids: torch.Tensor, tree_ids: torch.Tensor, parents: Sequence[int]) -> torch.Tensor:
        """One pass over ``prefix_ids`` (>= 1 tokens after the processed ones, causal as in ``score``)
        followed by the draft tree ``tree_ids`` [n]: node i sits at the position after the prefix
        plus its depth - 1 and attends to the whole prefix, its ancestors (``parents[i]``, -1 for a
        depth-1 node; a parent precedes its children) and itself.

        Returns float32 logits [1 + n, V]: after the last prefix token, then after each node. The
        state then holds the prefix and all n nodes until :meth:`keep_tree_path`, which must follow."""
        raise NotImplementedError(f"{self.name} cannot verify a draft tree")

    def keep_tree_path(self, path: Sequence[int]) -> None:
        """After ``score_tree``: keep the prefix and the nodes of ``path`` (a root-to-node list of
        node indices, possibly empty) as an ordinary sequence; forget every other node."""
        raise NotImplementedError(f"{self.name} cannot verify a draft tree")

    def propose(self, context: Sequence[int], n: int) -> list[int]:
        """Point-mass drafters only: up to ``n`` proposed next tokens after ``context``."""
        raise NotImplementedError(f"{self.name} drafts by scoring; use score() and sample")

    def set_window(self, window: int | None) -> None:
        """Read only a window of the sequence from the next prefill on (a ``WindowedDrafter``);
        a member that cannot (the target, model-free drafters) accepts only None."""
        if window is not None:
            raise UserError(f"{self.name} cannot read a window of the sequence")

    def probe_matmul_routes(self) -> Any:
        """How this machine runs the member's linear layers fastest per row count
        (``polyplan.models.matmul_routes.MatmulRoutes``); None for members without routable ones."""
        return None

    @property
    def matmuls_routed(self) -> bool:
        """True when the member's passes take matmul routes (``use_matmul_routes``): its own decoding
        is then faster than transformers' ``generate`` of the same model."""
        return False

    def use_matmul_routes(self, routes: Any) -> None:
        """Route the member's linear layers in its passes as ``routes`` says (None: unrouted); a
        member without routable ones ignores it."""
        return None

    def decoding_alone(self) -> AbstractContextManager[None]:
        """Within this context the member runs as it does decoding alone, one token per pass
        (the autoregressive baseline). Only members with ``pads_passes`` differ."""
        return nullcontext()

    @property
    def exact_as_target(self) -> bool:
        """True when, as a chain's target, the member scores in other numerics than its fastest
        decoding alone (llama.cpp ``min_pass`` padding; a half-precision model's exact regime
        against transformers' ``generate``): its chains equal it decoding alone in those numerics,
        which bench then runs as the lossless reference."""
        return self.pads_passes

    def as_target(self) -> AbstractContextManager[None]:
        """Within this context the member is a chain's target: a member whose numerics depend on
        the shape of its passes scores them in one batch-invariant regime, so the chain's output
        is token for token the member's own decoding (``ModelDrafter.exact``)."""
        return nullcontext()

    @property
    def max_context(self) -> int | None:
        """Longest sequence this drafter can hold, or None when unbounded."""
        return self._max_context

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def check_same_vocabulary(drafters: Sequence[Drafter]) -> None:
    """Refuse a chain whose members disagree on the vocabulary, naming the offenders."""
    if not drafters:
        return
    ref = drafters[0]
    for d in drafters[1:]:
        if d.vocab_size != ref.vocab_size:
            raise VocabularyMismatch(
                f"{d.name} has a vocabulary of {d.vocab_size} tokens but {ref.name} has "
                f"{ref.vocab_size}: every chain member must share the target's tokenizer"
            )
