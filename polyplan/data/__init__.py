"""The built-in prompt set polyplan ships: short, original prompts in Spec-Bench-like categories.

Each line of ``prompts.jsonl`` is ``{"id", "category", "split", "text"}``. ``split`` is
``"fit"`` (material for model-free drafters' n-gram tables) or ``"eval"`` (profiling and
benchmarks); the two never overlap, so an n-gram drafter is never scored on its own training text.
The texts are plain user messages; callers wrap them in the model's chat template.
A user's own prompts come from a prompt file instead (:mod:`polyplan.data.prompt_file`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from polyplan.errors import UserError

SPLITS = ("fit", "eval")


BUILTIN_FILE = "prompts.jsonl"
#: long prompts (700-900 tokens) on which the profiler measures what a drafter's window costs in
#: acceptance; never used for benchmarks
WINDOW_FILE = "window_prompts.jsonl"


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    split: str
    text: str
    #: later user turns of a multi-turn prompt (``text`` is the first); kept for callers that use them
    turns: tuple[str, ...] = ()
    #: where the prompt came from, "FILE:LINE", for error messages
    origin: str = ""


def builtin_bytes() -> bytes:
    return resources.files(__package__).joinpath(BUILTIN_FILE).read_bytes()


def _read_all() -> list[Prompt]:
    text = builtin_bytes().decode("utf-8")
    return [
        Prompt(**json.loads(line), origin=f"built-in {BUILTIN_FILE}:{i}")
        for i, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def window_prompts(limit: int | None = None) -> list[Prompt]:
    """The built-in long prompts of the windowed-acceptance measurement."""
    text = resources.files(__package__).joinpath(WINDOW_FILE).read_bytes().decode("utf-8")
    prompts = [
        Prompt(**json.loads(line), origin=f"built-in {WINDOW_FILE}:{i}")
        for i, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    return prompts if limit is None else prompts[:limit]


def categories() -> list[str]:
    """Category names in file order."""
    seen: dict[str, None] = {}
    for p in _read_all():
        seen.setdefault(p.category, None)
    return list(seen)


def load_prompts(
    split: str | None = None,
    categories: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[Prompt]:
    """Prompts of one ``split`` ("fit", "eval" or None for both) and the given categories.

    With ``limit``, take prompts round-robin over categories (first of each category, then the
    second of each, ...) so that a small sample still covers every category."""
    if split is not None and split not in SPLITS:
        raise UserError(f"unknown prompt split {split!r}: use one of {', '.join(SPLITS)}")
    prompts = [p for p in _read_all() if split is None or p.split == split]
    return select_prompts(prompts, categories, limit)


def select_prompts(
    prompts: Sequence[Prompt], categories: Iterable[str] | None = None, limit: int | None = None
) -> list[Prompt]:
    """``prompts`` of the given categories; with ``limit``, taken round-robin over categories
    (first of each category, then the second of each, ...) so a small sample covers them all."""
    known = {p.category for p in prompts}
    wanted = None
    if categories is not None:
        wanted = list(dict.fromkeys(categories))
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise UserError(f"unknown prompt categories {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    selected = [p for p in prompts if wanted is None or p.category in wanted]
    if limit is None:
        return selected
    if limit < 0:
        raise UserError("the number of prompts must be >= 0")
    by_cat: dict[str, list[Prompt]] = {}
    for p in selected:
        by_cat.setdefault(p.category, []).append(p)
    ordered: list[Prompt] = []
    depth = 0
    while len(ordered) < min(limit, len(selected)):
        for cat_prompts in by_cat.values():
            if depth < len(cat_prompts) and len(ordered) < limit:
                ordered.append(cat_prompts[depth])
        depth += 1
    return ordered
