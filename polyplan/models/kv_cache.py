"""The one place that knows how transformers 5.x KV caches are built, fed and rolled back.

transformers 5.x semantics (read from cache_utils.py, 5.24):

* ``Cache.crop(n)`` takes a NEGATIVE ``n`` = the number of tokens to REMOVE from the end; a positive
  value raises (the 4.x meaning, "keep the first n tokens", is gone). ``crop(0)`` is not always a
  no-op for sliding layers, so we never call it.
* Sliding-window layers only keep the last ``window`` states: once the sequence is longer than the
  window a rollback cannot restore what was evicted. Linear-attention / SSM layers keep one running
  state that cannot be rewound at all. ``Cache.is_croppable`` reports the latter; we refuse both,
  because a wrong rollback silently changes the text instead of failing.
* The causal-LM ``forward`` takes the cache as ``cache=`` (``past_key_values=`` is deprecated and
  disappears in 5.40); :func:`cache_kwarg_name` picks whichever the model's forward accepts.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from polyplan.errors import UserError


class CacheNotRollbackable(UserError):
    """The model's KV cache cannot be cut back to an earlier length, so it cannot sit in a chain."""


def cache_kwarg_name(model: torch.nn.Module) -> str:
    """Name of the keyword under which ``model.forward`` accepts its KV cache."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise CacheNotRollbackable(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`: "
        "polyplan needs a causal LM with a KV cache"
    )


def new_rollbackable_cache(model: torch.nn.Module, name: str) -> DynamicCache:
    """A fresh ``DynamicCache`` for ``model``, refused when it could not be rolled back."""
    config = model.config
    cache = DynamicCache(config=config)
    check_rollbackable(cache, name)
    return cache


def check_rollbackable(cache: DynamicCache, name: str) -> None:
    """Raise :class:`CacheNotRollbackable` for sliding-window, linear-attention or other caches
    whose ``crop`` cannot restore an earlier state exactly."""
    kinds = {type(layer).__name__ for layer in cache.layers}
    if any(cache.is_sliding):
        raise CacheNotRollbackable(
            f"{name} uses sliding-window attention ({', '.join(sorted(kinds))}): its KV cache drops old "
            "states and cannot be rolled back after a rejected draft; use a full-attention model"
        )
    if not cache.is_croppable:
        raise CacheNotRollbackable(
            f"{name} has a KV cache that cannot be cut back ({', '.join(sorted(kinds))}: linear "
            "attention / recurrent state); speculative decoding needs to discard rejected drafts"
        )


def rollback_cache(cache: DynamicCache, current_length: int, keep: int) -> None:
    """Cut ``cache`` from ``current_length`` tokens back to its first ``keep`` tokens."""
    if keep < 0 or keep > current_length:
        raise ValueError(f"cannot roll a cache of {current_length} tokens back to {keep}")
    remove = current_length - keep
    if remove:
        cache.crop(-remove)  # transformers 5.x: negative = number of tokens to remove


def keep_cache_positions(cache: DynamicCache, keep_until: int, extra: list[int]) -> None:
    """Keep the first ``keep_until`` cached tokens followed by those at positions ``extra``
    (increasing, all ``>= keep_until``), in that order; drop the rest (a verified tree's path).
    The kept rows move down in place and the layer becomes a view: no copy of the prefix."""
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
            continue
        end = keep_until + len(extra)
        if extra:
            index = torch.tensor(extra, dtype=torch.long, device=layer.keys.device)
            layer.keys[..., keep_until:end, :] = layer.keys.index_select(-2, index)
            layer.values[..., keep_until:end, :] = layer.values.index_select(-2, index)
        layer.keys = layer.keys[..., :end, :]
        layer.values = layer.values[..., :end, :]
