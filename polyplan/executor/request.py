"""One call of ``Chain.generate``: its arguments checked and normalised (the prompt as a list of
ids, the end-of-sequence ids, the token budget), and what it returns (:class:`GenerationResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from polyplan.errors import UserError
from polyplan.executor.stats import GenerationStats


@dataclass
class GenerationResult:
    #: the new token ids (prompt excluded)
    tokens: list[int]
    #: decoded new text when a tokenizer is known (special tokens skipped), else None
    text: str | None
    stats: GenerationStats
    #: "eos" or "length"
    finish_reason: str


def check_max_new_tokens(max_new_tokens: Any) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")


def as_id_list(eos: Any) -> list[int]:
    if eos is None:
        return []
    if isinstance(eos, int):
        return [eos]
    return [int(e) for e in eos]


def prompt_list(input_ids: Any, vocab_size: int) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise UserError(f"batch size must be 1, got input_ids of shape {tuple(input_ids.shape)}")
            input_ids = input_ids[0]
        if input_ids.dim() != 1:
            raise UserError(f"input_ids must be 1-D or [1, n], got shape {tuple(input_ids.shape)}")
        prompt = input_ids.tolist()
    else:
        prompt = [int(t) for t in input_ids]
    if not prompt:
        raise UserError(
            "the prompt is empty: a causal LM needs at least one token to condition on (e.g. the tokenizer's BOS token)"
        )
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise UserError(f"prompt token ids must be in [0, {vocab_size}), got {min(prompt)}..{max(prompt)}")
    return prompt
