"""Grouped heads in torch's kernel (polyplan/models/attention.py): switched on where it applies,
and the same logits as transformers' SDPA in every kind of pass a chain makes."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

from polyplan.models.attention import CHECKED_MODEL_TYPES, GQA_ON_CPU
from polyplan.models.model_drafter import ModelDrafter

from tiny_models import tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def passes(d: ModelDrafter, ids: torch.Tensor) -> list[torch.Tensor]:
    """A prefill, a masked verification-sized pass, a decoding step, a rollback, a tree and a
    one-token pass under a mask (an empty tree)."""
    d.reset()
    out = [d.score(ids[:12]), d.score(ids[12:19]), d.score(ids[19:20])]
    d.rollback(15)
    out.append(d.score(ids[15:22]))
    out.append(d.score_tree(ids[22:23], ids[23:27], [-1, 0, 0, 2]))
    d.rollback(22)
    out.append(d.score_tree(ids[22:23], ids[23:23], []))
    return out


def test_a_grouped_cpu_model_runs_the_kernel_grouped_with_the_same_logits(monkeypatch):
    model = tiny_llama(vocab_size=32, num_layers=2, seed=4)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    d = ModelDrafter(model, "tiny")
    assert model.config._attn_implementation == GQA_ON_CPU
    ids = torch.randint(0, 32, (27,), generator=torch.Generator().manual_seed(0))

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((attn_mask is not None, kw.get("enable_gqa", False), k.shape[1]))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    kv_heads = model.config.num_key_value_heads
    grouped = passes(d, ids)
    # no pass reached the kernel with repeated key/value heads; the masked ones of several tokens
    # went grouped (a masked one-token pass transformers regroups without copies itself)
    assert all(heads == kv_heads for _, _, heads in calls)
    assert any(masked and gqa for masked, gqa, _ in calls)

    model.config._attn_implementation = "sdpa"
    calls.clear()
    stock = passes(d, ids)
    assert any(heads > kv_heads for _, _, heads in calls)  # the stock path repeats them
    for a, b in zip(grouped, stock, strict=True):
        assert torch.equal(a, b)


def _llama(kv_heads: int, attn: str) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=64,
    )  # fmt: skip
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize(("kv_heads", "attn"), [(4, "sdpa"), (2, "eager")])
def test_other_models_keep_their_attention(kv_heads, attn):
    model = _llama(kv_heads, attn)
    ModelDrafter(model, "tiny")
    assert model.config._attn_implementation == attn


def test_a_model_type_not_checked_keeps_transformers_sdpa():
    # Phi-3's modeling code was not read for literal tests of the attention name: left as it is
    config = Phi3Config(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    model = Phi3ForCausalLM(config).eval()
    assert model.config.model_type not in CHECKED_MODEL_TYPES
    ModelDrafter(model, "tiny")
    assert model.config._attn_implementation == "sdpa"


def test_the_exact_regime_still_verifies_with_eager_attention_and_returns():
    model = tiny_llama(vocab_size=16, num_layers=1, seed=5)
    d = ModelDrafter(model, "tiny", exact=True)
    seen = []
    model.model.layers[0].self_attn.register_forward_pre_hook(lambda *_: seen.append(model.config._attn_implementation))
    with d.as_target():
        d.score(torch.tensor([1, 2, 3]))
        d.score(torch.tensor([4, 5]))
    assert seen == [GQA_ON_CPU, "eager"]
    assert model.config._attn_implementation == GQA_ON_CPU
