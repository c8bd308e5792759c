"""Grouped-query attention inside torch's kernel for the passes a chain adds on CPU.

transformers' SDPA path hands grouped-query attention (GQA: fewer key/value heads than query heads,
as in SmolLM2 and Qwen2.5) to torch's kernel only when a pass has no attention mask (a decoding
step, a prefill from an empty cache; a masked one-token pass it regroups without copies). A pass of
several tokens over a cache carries a mask, and there transformers first copies every cached key and
value once per query head sharing it (``repeat_kv``): for SmolLM2-135M at 2048 cached tokens, about
280 MB of copies per pass. Those are exactly the passes speculative decoding adds: verification, a
member catching up, a draft tree. torch's CPU kernel takes the mask and the grouped heads together
(``enable_gqa``), so this attention function passes them as they are. Each output row is the same
dot products over the same keys either way; measured bit-identical logits on SmolLM2
(benchmarks/pass_ways.py --compare attention, docs/results.md). On CUDA the masked GQA kernel falls back to the
slow math path, so the function is installed on CPU models only, and only for the model types in
:data:`CHECKED_MODEL_TYPES`: some model files test ``_attn_implementation == "sdpa"`` literally
(Gemma 4's shared key/value layers slice their queries by it, sparse-attention models build their
index masks by it), and under another name they would compute something else.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import repeat_kv

#: the name models use for it (``config._attn_implementation``); masks built as for SDPA
GQA_ON_CPU = "polyplan_sdpa_gqa"
#: model types whose modeling code was read for tests of the attention name (none, in transformers 5.25)
CHECKED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
#: torch's SDPA takes grouped heads from 2.5 on
_KERNEL_GROUPS = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)


def _sdpa_grouped(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except that a masked pass of several tokens with grouped heads
    goes to torch's kernel with the heads grouped instead of after ``repeat_kv``."""
    grouped = getattr(module, "num_key_value_groups", 1) > 1 and query.shape[2] > 1
    plain = not dropout and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if attention_mask is None or not grouped or not plain or query.device.type != "cpu":
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GQA_ON_CPU, _sdpa_grouped)
ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_ON_CPU, sdpa_mask)


#: eager attention computed in float32 (a half-precision model's exact regime where its own dtype's
#: attention kernels round a row differently with the number of keys; masks built as for eager)
EAGER_FLOAT32 = "polyplan_eager_float32"


def _eager_float32(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' eager attention with the scores, softmax and weighted sum in float32, for
    inference (no dropout; no attention weights returned).

    On an Intel Xeon with AMX, oneDNN's bf16 batched matmuls gave a row other roundings when the
    number of keys changed between passes (2026-12-07). Masked keys add exact zeros, and in float32,
    cast back to the model's dtype, the rows came out bitwise the same across splits: measured by
    the probe (polyplan.models.exactness), not guaranteed, so every machine probes it."""
    if scaling is None:
        scaling = float(getattr(module, "scaling", query.shape[-1] ** -0.5))
    groups = getattr(module, "num_key_value_groups", 1)
    keys = repeat_kv(key, groups).float()
    values = repeat_kv(value, groups).float()
    scores = torch.matmul(query.float(), keys.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.nn.functional.softmax(scores, dim=-1)
    out = torch.matmul(weights, values).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(EAGER_FLOAT32, _eager_float32)
ALL_MASK_ATTENTION_FUNCTIONS.register(EAGER_FLOAT32, eager_mask)


def group_heads_on_cpu(model: torch.nn.Module) -> bool:
    """Switch a CPU model of a checked type that runs transformers' SDPA with grouped heads to
    :data:`GQA_ON_CPU` (``set_attn_implementation``); True if it did."""
    config = model.config
    text = config.get_text_config(decoder=True)
    heads, kv_heads = getattr(text, "num_attention_heads", None), getattr(text, "num_key_value_heads", None)
    on_cpu = next(model.parameters()).device.type == "cpu"
    checked = config.model_type in CHECKED_MODEL_TYPES and _KERNEL_GROUPS
    if config._attn_implementation != "sdpa" or not on_cpu or not checked or not heads or not kv_heads:
        return False
    if kv_heads >= heads:
        return False
    model.set_attn_implementation(GQA_ON_CPU)
    return True
