"""What a chain is made of: its members as :class:`Drafter` instances, one gamma and one tree size
per drafter (top to bottom), and the place each member may take (a model-free drafter only at the
bottom, a target that sees the whole sequence). Each check raises one ``UserError`` line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from polyplan.errors import UserError
from polyplan.models.drafter import Drafter, check_same_vocabulary


def as_drafter(member: Any, position: int) -> Drafter:
    """A Drafter as is; a transformers causal LM wrapped in ModelDrafter."""
    if isinstance(member, Drafter):
        return member
    if isinstance(member, torch.nn.Module) and hasattr(member, "config"):
        from polyplan.models.model_drafter import ModelDrafter

        path = str(getattr(member.config, "name_or_path", "") or "").rstrip("/")
        name = path.rsplit("/", 1)[-1] or f"{type(member).__name__}#{position}"
        return ModelDrafter(member, name)
    raise UserError(
        f"chain member {position} is a {type(member).__name__}: expected a polyplan Drafter or a transformers causal LM"
    )


def chain_members(members: Sequence[Any], gammas: Sequence[int]) -> tuple[list[Drafter], list[int]]:
    """The chain's members as Drafters and its gammas, checked: a lone model is a chain of one,
    one gamma per drafter, each member in a place it can take, one vocabulary."""
    if isinstance(members, (Drafter, torch.nn.Module)):
        members = [members]
    if len(members) == 0:
        raise UserError("a chain needs at least one model (the target)")
    gammas = check_gammas(len(members), gammas)
    drafters = [as_drafter(m, i) for i, m in enumerate(members)]
    check_places(drafters)
    check_same_vocabulary(drafters)
    return drafters, gammas


def check_gammas(n_members: int, gammas: Sequence[int]) -> list[int]:
    """One integer gamma >= 1 per drafter, top to bottom."""
    gammas = list(gammas)
    if len(gammas) != n_members - 1:
        raise UserError(
            f"a chain of {n_members} members needs {n_members - 1} gammas (one per drafter, "
            f"top to bottom), got {len(gammas)}: {gammas}"
        )
    for g in gammas:
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise UserError(f"every gamma must be an integer >= 1, got {gammas}")
    return gammas


def check_places(drafters: Sequence[Drafter]) -> None:
    """A model-free (point-mass) drafter cannot verify, so only the bottom; the target must see the
    whole sequence (windows are for drafters)."""
    for i, d in enumerate(drafters[:-1]):
        if d.point_mass:
            role = "the target" if i == 0 else f"level {i + 1} of {len(drafters)}"
            raise UserError(
                f"{d.name} is a model-free (point-mass) drafter and cannot verify, so it cannot be "
                f"{role}: put it at the bottom of the chain"
            )
    if drafters[0].point_mass:
        raise UserError(f"{drafters[0].name} is model-free and cannot be the target")
    if drafters[0].bounded_context:
        raise UserError(
            f"{drafters[0].name} sees only a window of the sequence and cannot be the target: the output "
            "follows the target's distribution over the whole sequence (windows are for drafters)"
        )


def check_tree_nodes(drafters: Sequence[Drafter], tree_nodes: Sequence[int] | None) -> list[int]:
    """One tree size per drafter (1 = a linear draft); one error line naming the level otherwise."""
    n_drafters = len(drafters) - 1
    if tree_nodes is None:
        return [1] * n_drafters
    sizes = list(tree_nodes)
    if len(sizes) != n_drafters:
        raise UserError(
            f"a chain of {len(drafters)} members needs {n_drafters} tree sizes (one per drafter, top to bottom), "
            f"got {len(sizes)}: {sizes}"
        )
    for level, (d, n) in enumerate(zip(drafters[1:], sizes, strict=True), start=2):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(
                f"level {level} ({d.name}): tree_nodes must be an integer >= 1 (1 = a linear draft), got {n!r}"
            )
        if n == 1:
            continue
        if d.point_mass:
            raise UserError(
                f"level {level} ({d.name}): a model-free drafter proposes one continuation and cannot rank "
                "alternatives, so it cannot draft a tree (tree_nodes must be 1)"
            )
        for above, verifier in enumerate(drafters[: level - 1], start=1):
            if not verifier.verifies_trees:
                raise UserError(
                    f"level {level} ({d.name}): its tree would be verified by level {above} ({verifier.name}), "
                    "which cannot score a tree (only transformers members can): use tree_nodes 1 there"
                )
        context = d.max_context
        if context is not None and n > context:
            raise UserError(f"level {level} ({d.name}): a tree of {n} nodes exceeds the member's context of {context}")
    return sizes
