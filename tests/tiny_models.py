"""Tiny random transformers models for tests where the weights do not matter.

Deterministic: the same arguments give the same weights. ``logit_scale`` multiplies the LM head
so the tiny models have peaked, clearly different next-token distributions (random init alone
gives nearly uniform ones, too weak for distribution tests and their negative controls)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM


def tiny_llama(
    vocab_size: int = 16,
    num_layers: int = 1,
    seed: int = 0,
    hidden_size: int = 32,
    max_position_embeddings: int = 256,
    logit_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        model.lm_head.weight.mul_(logit_scale)
    return model.to(dtype).eval()


def tiny_sliding_mistral(vocab_size: int = 16, seed: int = 0) -> MistralForCausalLM:
    """A model whose cache is sliding-window: must be refused by the executor."""
    config = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    return MistralForCausalLM(config).eval()
