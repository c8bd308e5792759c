"""Tiny random transformers models for tests where the weights do not matter.

Deterministic: the same arguments give the same weights. ``logit_scale`` multiplies the LM head
so the tiny models have peaked, clearly different next-token distributions (random init alone
gives nearly uniform ones, too weak for distribution tests and their negative controls)."""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from polyplan.models.model_drafter import ModelDrafter


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


def perturbed_copy(model: LlamaForCausalLM, noise: float, seed: int) -> LlamaForCausalLM:
    """A drafter that mostly agrees with ``model``: its weights plus Gaussian noise."""
    import copy

    clone = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * noise)
    return clone.eval()


class TableLM:
    """A tiny context-dependent language model with exact, cheap logits: the next-token logits
    after ``... a b`` are ``table[a, b]`` (``a`` = V for "no token"). Used where thousands of
    generations are needed (distribution tests): an HF forward costs milliseconds, this microseconds.

    ``mixed_with`` builds a drafter close to another TableLM (its table plus noise), so acceptance
    rates are high enough for multi-token blocks to be accepted."""

    def __init__(self, vocab_size: int, seed: int, scale: float = 2.0, table: torch.Tensor | None = None) -> None:
        self.vocab_size = vocab_size
        if table is None:
            g = torch.Generator().manual_seed(seed)
            table = torch.randn(vocab_size + 1, vocab_size, vocab_size, generator=g) * scale
        self.table = table

    def mixed_with_noise(self, noise: float, seed: int) -> TableLM:
        g = torch.Generator().manual_seed(seed)
        return TableLM(self.vocab_size, seed, table=self.table + noise * torch.randn(self.table.shape, generator=g))

    def logits_after(self, context: list[int]) -> torch.Tensor:
        a = context[-2] if len(context) >= 2 else self.vocab_size
        return self.table[a, context[-1]]

    def drafter(self, name: str) -> TableDrafter:
        return TableDrafter(self, name)


from polyplan.models.drafter import Drafter  # noqa: E402  (kept next to its only user)


class TableDrafter(Drafter):
    def __init__(self, lm: TableLM, name: str) -> None:
        self.lm = lm
        self.name = name
        self.vocab_size = lm.vocab_size
        self.history: list[int] = []

    @property
    def processed(self) -> int:
        return len(self.history)

    def reset(self) -> None:
        self.history = []

    def score(self, new_ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
        rows = []
        for t in new_ids.tolist():
            self.history.append(t)
            rows.append(self.lm.logits_after(self.history))
        logits = torch.stack(rows)
        return logits if last is None else logits[-last:]

    def rollback(self, length: int) -> None:
        assert 0 <= length <= len(self.history), (length, len(self.history))
        del self.history[length:]

    # a table LM verifies trees exactly: each node's logits from the path to it
    verifies_trees = True

    def score_tree(self, prefix_ids, tree_ids, parents):
        rows = [self.score(prefix_ids)[-1]]
        self._tree_start = len(self.history)
        tokens = tree_ids.tolist()
        paths: list[list[int]] = []
        for token, parent in zip(tokens, parents, strict=True):
            path = (paths[parent] if parent >= 0 else []) + [token]
            paths.append(path)
            rows.append(self.lm.logits_after(self.history + path))
        self.history.extend(tokens)  # the state holds every node until keep_tree_path
        return torch.stack(rows)

    def keep_tree_path(self, path):
        start = self._tree_start
        nodes = self.history[start:]
        self.history[start:] = [nodes[i] for i in path]


class CountingPointMass(Drafter):
    """A point-mass drafter proposing a fixed cycle of tokens (may return fewer than asked)."""

    point_mass = True

    def __init__(self, vocab_size: int, cycle: list[int], name: str = "cycle", max_len: int | None = None) -> None:
        self.name = name
        self.vocab_size = vocab_size
        self.cycle = cycle
        self.max_len = max_len
        self._processed = 0

    @property
    def processed(self) -> int:
        return self._processed

    def reset(self) -> None:
        self._processed = 0

    def rollback(self, length: int) -> None:
        assert 0 <= length <= self._processed
        self._processed = length

    def propose(self, context, n):
        self._processed = len(context)
        k = n if self.max_len is None else min(n, self.max_len)
        return [self.cycle[(len(context) + i) % len(self.cycle)] for i in range(k)]


def tiny_gguf(model: LlamaForCausalLM, path, *, bos: int = 0, eos: int = 1):
    """Write a tiny transformers Llama as a float32 GGUF that llama.cpp loads (tokens named
    ``t0``, ``t1``, ... with a SentencePiece-style vocabulary and no merges: the tests feed ids,
    never text). llama.cpp rotates query/key pairs (i, i+1) where transformers rotates (i, i+d/2),
    so Q and K rows are permuted as GGUF converters do; the result computes the same function
    up to float rounding. Returns ``path``."""
    import gguf
    import numpy as np

    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // heads

    def rope_rows(w: torch.Tensor, n_head: int) -> np.ndarray:
        # rows of each head ordered (first halves, second halves) -> interleaved pairs
        w = w.detach().float()
        return w.reshape(n_head, 2, head_dim // 2, -1).transpose(1, 2).reshape(w.shape).numpy()

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    writer.add_token_scores([0.0] * cfg.vocab_size)
    types = [gguf.TokenType.NORMAL] * cfg.vocab_size
    types[bos] = types[eos] = gguf.TokenType.CONTROL
    writer.add_token_types(types)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().contiguous().numpy()

    m = model.model
    writer.add_tensor("token_embd.weight", f32(m.embed_tokens.weight))
    writer.add_tensor("output_norm.weight", f32(m.norm.weight))
    writer.add_tensor("output.weight", f32(model.lm_head.weight))
    for i, layer in enumerate(m.layers):
        a, mlp = layer.self_attn, layer.mlp
        tensors = {
            "attn_norm": f32(layer.input_layernorm.weight),
            "attn_q": rope_rows(a.q_proj.weight, heads),
            "attn_k": rope_rows(a.k_proj.weight, kv_heads),
            "attn_v": f32(a.v_proj.weight),
            "attn_output": f32(a.o_proj.weight),
            "ffn_norm": f32(layer.post_attention_layernorm.weight),
            "ffn_gate": f32(mlp.gate_proj.weight),
            "ffn_up": f32(mlp.up_proj.weight),
            "ffn_down": f32(mlp.down_proj.weight),
        }
        for name, arr in tensors.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class SlowCopy(ModelDrafter):
    """A model drafter with a fixed sleep added to every pass: a member whose speed a test sets."""

    def __init__(self, model, name: str, sleep_s: float) -> None:
        super().__init__(model, name)
        self.sleep_s = sleep_s

    def score(self, new_ids, last=None):
        time.sleep(self.sleep_s)
        return super().score(new_ids, last)
