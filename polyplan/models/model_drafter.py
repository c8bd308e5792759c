"""``ModelDrafter``: any transformers causal LM with a KV cache as a chain member."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from polyplan.errors import UserError
from polyplan.models.attention import CHECKED_MODEL_TYPES, EAGER_FLOAT32, group_heads_on_cpu
from polyplan.models.drafter import Drafter
from polyplan.models.exactness import TWO_ROWS, ExactRegime
from polyplan.models.kv_cache import (
    cache_kwarg_name,
    check_rollbackable,
    keep_cache_positions,
    new_rollbackable_cache,
    rollback_cache,
)
from polyplan.models.matmul_routes import MatmulRoutes, RouteSwitch, probe_routes, routable_linears, route_linears


class ContextTooLong(UserError):
    """The sequence would exceed the model's context window."""


#: dtypes whose passes round differently with the pass's shape under torch's CPU kernels
HALF_PRECISION = (torch.bfloat16, torch.float16)
#: the attention kernels whose rows do not depend on the pass's shape, by ExactRegime.attention
#: (measured: docs/staged-decoding.md); float32 only for model types whose code was read for the name
INVARIANT_ATTENTION = {"eager": "eager", "float32": EAGER_FLOAT32}


class ModelDrafter(Drafter):
    """Wraps a transformers causal LM (batch size 1) behind the :class:`Drafter` interface.

    Device and dtype are the model's; ``score`` is one forward pass under ``torch.inference_mode``
    and returns float32 logits on the model's device. The KV cache is a ``DynamicCache`` whose
    length is tracked here (no device sync), rolled back with :func:`rollback_cache`.

    ``exact``: as a chain's target (:meth:`as_target`), score every pass after the prefill in one
    batch-invariant regime (``exact_regime``, polyplan.models.exactness), so that a token's logits
    do not depend on how many tokens share its pass: eager attention and at least two rows in
    every matmul (a one-token pass gets one padding token after it, dropped from the cache), or
    every pass at one fixed width with attention in float32 where the CPU's kernels need it (AMX's
    bf16 kernels do). On CPU, torch's SDPA kernel
    and its one-row matmuls round a half-precision row differently with the pass's shape, which
    flips near-ties between a chain and the target decoding alone. The prefill keeps the fast
    kernel: it is the same pass in both. None (the default) turns it on for half precision on
    CPU, in the two-row regime until :func:`polyplan.models.exactness.probe_exact` says which
    regime holds on this machine.

    On CPU an SDPA model of a checked type with grouped key/value heads is switched to
    :data:`polyplan.models.attention.GQA_ON_CPU` (the same numbers without the per-head copies of
    the cache in masked passes)."""

    point_mass = False
    verifies_trees = True

    def __init__(self, model: Any, name: str, tokenizer: Any = None, exact: bool | None = None) -> None:
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise UserError(f"{name}: expected a transformers causal LM, got {type(model).__name__}")
        self.model = model.eval()
        self.name = name
        self.tokenizer = tokenizer
        first_param = next(model.parameters())
        self.device = first_param.device
        self.dtype = first_param.dtype
        text_config = model.config.get_text_config(decoder=True)
        out_embeddings = model.get_output_embeddings()
        self.vocab_size = int(out_embeddings.weight.shape[0] if out_embeddings is not None else text_config.vocab_size)
        self._max_context = getattr(text_config, "max_position_embeddings", None)
        self._cache_kwarg = cache_kwarg_name(model)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache = new_rollbackable_cache(model, name)
        self._processed = 0
        self._checked_after_first_pass = False
        #: after ``score_tree``: where the tree's nodes start in the cache (None otherwise)
        self._tree_start: int | None = None
        on = (self.dtype in HALF_PRECISION and self.device.type == "cpu") if exact is None else bool(exact)
        #: the batch-invariant regime as a target (None: the fast kernels, no promise of bit-identity)
        self.exact_regime: ExactRegime | None = TWO_ROWS if on else None
        self._exact_now = False
        # a chain's multi-token passes over a cache: grouped heads in torch's kernel (models/attention.py)
        group_heads_on_cpu(model)
        self._fast_attention = model.config._attn_implementation
        #: the linear layers routed by row count (``use_matmul_routes``), on in this drafter's passes
        self._routes: RouteSwitch | None = None

    @property
    def exact(self) -> bool:
        return self.exact_regime is not None

    @property
    def exact_as_target(self) -> bool:  # type: ignore[override]
        return self.exact

    @property
    def prefills_apart(self) -> bool:  # type: ignore[override]
        """True while in the exact regime (see ``Drafter.prefills_apart``)."""
        return self._exact_now

    @contextmanager
    def as_target(self) -> Iterator[None]:
        """The exact regime (class docstring) when ``exact`` is set."""
        saved, self._exact_now = self._exact_now, self.exact
        try:
            yield
        finally:
            self._exact_now = saved

    def probe_matmul_routes(self) -> MatmulRoutes | None:
        """How this machine runs the model's linear layers fastest per row count
        (polyplan.models.matmul_routes); None for a model without plain float linears on CPU."""
        return probe_routes(self.model) if routable_linears(self.model) else None

    @property
    def matmuls_routed(self) -> bool:  # type: ignore[override]
        return self._routes is not None and self._routes.layers > 0

    def use_matmul_routes(self, routes: MatmulRoutes | None) -> None:
        """Route the linear layers in this drafter's passes (never in the exact regime); None: unrouted."""
        self._routes = route_linears(self.model, routes)

    @contextmanager
    def _pass_regime(self) -> Iterator[None]:
        """The kernels of the next pass: the fast ones (the model's matmul routes switched on) unless
        in the exact regime; there, after the prefill, the regime's attention (eager, in the model's
        dtype or in float32) and no routes."""
        if not self._exact_now:
            if self._routes is None:
                yield
            else:
                with self._routes.active():
                    yield
            return
        if self._processed == 0:
            yield
            return
        config = self.model.config
        config._attn_implementation = self._invariant_attention()
        try:
            yield
        finally:
            config._attn_implementation = self._fast_attention

    def runs_regime(self, regime: ExactRegime) -> bool:
        """False for a regime whose attention this model cannot take: float32 attention goes by
        another implementation name, which some model files would misread (only the types in
        ``CHECKED_MODEL_TYPES`` were read for it); the probe then passes over that regime."""
        return regime.attention == "eager" or self.model.config.model_type in CHECKED_MODEL_TYPES

    def _invariant_attention(self) -> str:
        """The attention implementation of the exact regime in force."""
        regime = self.exact_regime
        if regime is None or not self.runs_regime(regime):
            return "eager"
        return INVARIANT_ATTENTION.get(regime.attention, "eager")

    def reset(self) -> None:
        self._cache = new_rollbackable_cache(self.model, self.name)
        self._processed = 0

    @property
    def eos_token_ids(self) -> list[int]:
        """The generation config's end-of-sequence ids, else the tokenizer's."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            return []
        return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]

    def score(self, new_ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """As :meth:`Drafter.score`: with ``last``, the LM head runs on those positions only."""
        n = int(new_ids.shape[0])
        if n == 0:
            return torch.empty((0, self.vocab_size), dtype=torch.float32, device=self.device)
        if self._max_context is not None and self._processed + n > self._max_context:
            raise ContextTooLong(
                f"{self.name} holds at most {self._max_context} tokens; this step would need "
                f"{self._processed + n}: shorten the prompt or lower --max-new-tokens"
            )
        regime = self.exact_regime if self._exact_now and self._processed > 0 else None
        if regime is not None and regime.fixed and n > regime.rows:
            # one pass shape for every matmul: a longer pass is scored in pieces of that width
            pieces = [self.score(new_ids[i : i + regime.rows]) for i in range(0, n, regime.rows)]
            logits = torch.cat(pieces)
            return logits[-last:] if last is not None else logits
        ids = new_ids.to(self.device, non_blocking=True)
        pad = 0
        keep = last
        if regime is not None:
            # the regime's rows at least, through every matmul up to the LM head (one row takes
            # another kernel; on some CPUs every row count does)
            pad = max(0, regime.rows - n)
            keep = None if keep is None or regime.fixed else max(keep, regime.rows) + pad
            if pad:
                ids = torch.cat([ids, ids[-1:].expand(pad)])
        kwargs = {self._cache_kwarg: self._cache}
        if keep is not None and self._keeps_logits and keep < n + pad:
            kwargs["logits_to_keep"] = keep
        with torch.inference_mode(), self._pass_regime():
            out = self.model(input_ids=ids.view(1, n + pad), use_cache=True, **kwargs)
        if pad:
            rollback_cache(self._cache, self._processed + n + pad, self._processed + n)
        self._processed += n
        if not self._checked_after_first_pass:
            # layers of a config-less DynamicCache appear lazily: check again once they exist
            check_rollbackable(self._cache, self.name)
            self._checked_after_first_pass = True
        logits = out.logits[0, : out.logits.shape[1] - pad]
        return logits[-last:].float() if last is not None else logits.float()

    def score_tree(self, prefix_ids: torch.Tensor, tree_ids: torch.Tensor, parents: Sequence[int]) -> torch.Tensor:
        """As :meth:`Drafter.score_tree`: a 4D attention mask (additive, in the model's dtype, so
        eager and SDPA attention read it alike) and explicit position ids. A tree pass is not padded
        or split to an exact regime's width (bit identity is not promised for trees; the spec's
        "Exact half precision"). A prefix longer than
        one token (a prefill, a member catching up) goes through the causal kernel first: the
        masked pass then covers the last prefix token and the tree only, and its mask stays small."""
        if int(prefix_ids.shape[0]) > 1:
            self.score(prefix_ids[:-1], last=1)
            prefix_ids = prefix_ids[-1:]
        n_tree = int(tree_ids.shape[0])
        past = self._processed
        depths: list[int] = []
        for parent in parents:
            depths.append(1 if parent < 0 else depths[parent] + 1)
        reach = past + 1 + max(depths, default=0)
        if self._max_context is not None and reach > self._max_context:
            raise ContextTooLong(
                f"{self.name} holds at most {self._max_context} tokens; this tree would reach position {reach}: "
                "shorten the prompt or lower --max-new-tokens"
            )
        # query 0 is the last prefix token (at `past`), query 1 + i node i; node i sees the cache,
        # that token, its ancestors and itself
        start, keys = past + 1, past + 1 + n_tree
        allowed = torch.zeros(1 + n_tree, keys, dtype=torch.bool)
        allowed[:, :start] = True
        for i, parent in enumerate(parents):
            row = allowed[1 + i]
            if parent >= 0:
                row[start:] = allowed[1 + parent, start:]
            row[start + i] = True
        mask = torch.zeros(1 + n_tree, keys, dtype=self.dtype).masked_fill(~allowed, torch.finfo(self.dtype).min)
        positions = [past] + [past + d for d in depths]
        ids = torch.cat([prefix_ids.to(self.device), tree_ids.to(self.device)]).view(1, 1 + n_tree)
        with torch.inference_mode(), self._pass_regime():
            out = self.model(
                input_ids=ids,
                attention_mask=mask.view(1, 1, 1 + n_tree, keys).to(self.device),
                position_ids=torch.tensor([positions], device=self.device),
                use_cache=True,
                **{self._cache_kwarg: self._cache},
            )
        self._processed += 1 + n_tree
        self._tree_start = start
        if not self._checked_after_first_pass:
            check_rollbackable(self._cache, self.name)
            self._checked_after_first_pass = True
        return out.logits[0].float()

    def keep_tree_path(self, path: Sequence[int]) -> None:
        start = self._tree_start
        if start is None:
            raise RuntimeError(f"{self.name}: keep_tree_path without a tree pass before it")
        with torch.inference_mode():  # the cache tensors are inference tensors
            keep_cache_positions(self._cache, start, [start + i for i in path])
        self._processed = start + len(path)
        self._tree_start = None

    def rollback(self, length: int) -> None:
        rollback_cache(self._cache, self._processed, length)
        self._processed = length
