"""``Chain``: the object a user builds and calls. Building one checks its members, gammas and tree
sizes (:mod:`polyplan.executor.members`); ``generate`` checks the call's arguments
(:mod:`polyplan.executor.request`), windows the drafters the request overflows
(:mod:`polyplan.executor.windows`) and runs the staged loop (:mod:`polyplan.executor.chain`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from polyplan import hooks
from polyplan.chain_text import chain_names
from polyplan.executor.chain import _StagedRun
from polyplan.executor.control import Controller, StaticController
from polyplan.executor.draft_stop import DraftStop
from polyplan.executor.members import chain_members, check_tree_nodes
from polyplan.executor.request import GenerationResult, as_id_list, check_max_new_tokens, prompt_list
from polyplan.executor.sampling import SamplingParams
from polyplan.executor.windows import call_members


class Chain:
    """A target and its drafters, each drafting for the one above it.

    ``Chain([target])`` is plain autoregressive decoding, ``Chain([target, draft], gammas=[g])``
    classic speculative decoding. Members are :class:`Drafter` instances or transformers causal
    LMs (wrapped in ``ModelDrafter``); a point-mass (model-free) drafter may only be the bottom.
    ``controller`` chooses each target round's members and gammas (default: all members, fixed
    ``gammas``); see :mod:`polyplan.executor.control`.

    A chain of one member verifies nothing, so it decodes as that member does alone
    (``Drafter.decoding_alone``: for a llama.cpp target, its fast one-token kernels rather than the
    padded passes it verifies with). ``verification_numerics=True`` keeps the verification
    numerics instead: the decoding every longer chain with this target is token-identical to.

    ``tree_nodes`` (one per drafter, top to bottom; default all 1): a drafter with ``n > 1`` drafts
    a tree of up to ``n`` tokens, at most its gamma deep, whenever it is the bottom of a round;
    every member above it must be able to verify a tree (transformers members can).

    ``draft_stop`` (drafter name -> :class:`~polyplan.executor.draft_stop.DraftStop`; a plan's
    ``draft_stop``): that drafter's greedy drafts for the target end before its gamma where it is
    unsure of its own tokens. The output is the same; only the rounds' lengths change."""

    def __init__(
        self,
        members: Sequence[Any],
        gammas: Sequence[int] = (),
        tokenizer: Any = None,
        controller: Controller | None = None,
        verification_numerics: bool = False,
        tree_nodes: Sequence[int] | None = None,
        draft_stop: Mapping[str, DraftStop] | None = None,
    ) -> None:
        self.drafters, self.gammas = chain_members(members, gammas)
        self.tree_nodes: list[int] = check_tree_nodes(self.drafters, tree_nodes)
        #: drafter name -> when its greedy drafts for the target end early (polyplan.executor.draft_stop)
        self.draft_stop: dict[str, DraftStop] = dict(draft_stop or {})
        self.tokenizer = tokenizer if tokenizer is not None else self.drafters[0].tokenizer
        self.verification_numerics = verification_numerics
        self.controller = controller

    @classmethod
    def from_plan(cls, path: str | Path, pool: str | None = None) -> Chain:
        """The chain exactly as ``polyplan run PLAN`` runs it: the plan's members (loaded from its
        pool, or ``pool``), its gammas and the adaptive controller built from the plan's policy
        (proofs/adaptive-control.md). A sampling plan's temperature is a ``generate`` argument."""
        return hooks.plan_chain(path, pool)  # set by the package root: plans are assembled above the executor

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.drafters]

    def __repr__(self) -> str:
        trees = f", tree_nodes={self.tree_nodes}" if any(n > 1 for n in self.tree_nodes) else ""
        return f"Chain({chain_names(self.names)}, gammas={self.gammas}{trees})"

    def default_eos_token_ids(self) -> list[int]:
        """The target's end-of-sequence ids, else the tokenizer's."""
        eos = self.drafters[0].eos_token_ids
        if not eos and self.tokenizer is not None:
            return as_id_list(getattr(self.tokenizer, "eos_token_id", None))
        return list(eos)

    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        stream: Callable[[list[int]], None] | None = None,
        controller: Controller | None = None,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` tokens after ``input_ids`` (list, 1-D or [1, n] tensor).

        ``eos_token_id``: None uses the target's (or the tokenizer's); pass ``[]`` to never stop
        early. ``stream`` is called with each list of newly committed tokens. ``controller``
        overrides the chain's own for this call."""
        prompt = prompt_list(input_ids, self.drafters[0].vocab_size)
        check_max_new_tokens(max_new_tokens)
        params = SamplingParams(float(temperature), top_k, top_p)
        eos = self.default_eos_token_ids() if eos_token_id is None else as_id_list(eos_token_id)
        drafters, notes = call_members(self.drafters, len(prompt), max_new_tokens)
        control = controller or self.controller or StaticController(self.gammas)

        run = _StagedRun(self, drafters, prompt, max_new_tokens, params, seed, eos, stream, control)
        run.stats.notes.extend(notes)
        alone = len(drafters) == 1 and not self.verification_numerics
        with drafters[0].as_target(), drafters[0].decoding_alone() if alone else nullcontext():
            tokens, reason = run.run()
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return GenerationResult(tokens=tokens, text=text, stats=run.stats, finish_reason=reason)
