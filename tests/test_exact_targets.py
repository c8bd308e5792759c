"""A half-precision target in one batch-invariant regime (``ModelDrafter.exact``): a chain over it
is token for token the target decoding alone (docs/staged-decoding.md, "Exact half precision")."""

from __future__ import annotations

import pytest
import torch

from polyplan import Chain
from polyplan.models import load_pool
from polyplan.models.model_drafter import ModelDrafter
from polyplan.models.pools import PoolFileError

from test_models_pools import save_tiny
from tiny_models import tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PassWidths:
    """Records the number of tokens of every forward pass of a model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.widths: list[int] = []
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.widths.append(int(kwargs["input_ids"].shape[1]))


def test_exact_is_on_by_default_for_half_precision_on_cpu_only():
    assert ModelDrafter(tiny_llama(vocab_size=16, dtype=torch.bfloat16), "b").exact
    assert ModelDrafter(tiny_llama(vocab_size=16, dtype=torch.float16), "h").exact
    assert not ModelDrafter(tiny_llama(vocab_size=16), "f").exact
    assert ModelDrafter(tiny_llama(vocab_size=16), "f", exact=True).exact
    assert not ModelDrafter(tiny_llama(vocab_size=16, dtype=torch.bfloat16), "b", exact=False).exact


def test_a_one_token_pass_is_padded_as_target_only_and_leaves_no_trace():
    model = tiny_llama(vocab_size=16, num_layers=2, seed=5, dtype=torch.bfloat16)
    fast = model.config._attn_implementation
    d = ModelDrafter(model, "b")
    widths = PassWidths(model)
    ids = torch.arange(14) % 16
    with d.as_target():
        assert d.prefills_apart
        d.score(ids[:10], last=1)
        one = d.score(ids[10:11])
        assert one.shape == (1, 16) and d.processed == 11 and d._cache.get_seq_length() == 11
        assert model.config._attn_implementation == fast  # the regime is per pass
        d.rollback(10)
        three = d.score(ids[10:13], last=1)
        assert three.shape == (1, 16)
        d.rollback(10)
        block = d.score(ids[10:13])
    assert widths.widths == [10, 2, 3, 3]
    # the same token's logits, whatever the pass it shares: bitwise
    assert torch.equal(one[0], block[0]) and torch.equal(three[0], block[2])
    assert not d.prefills_apart
    d.reset()
    d.score(ids[:10])
    d.score(ids[10:11])
    assert widths.widths[-1] == 1  # not a target: nothing changes


def test_a_chain_prefills_an_exact_target_apart_from_its_first_verification():
    model = tiny_llama(vocab_size=16, num_layers=2, seed=6, dtype=torch.bfloat16)
    target = ModelDrafter(model, "target")
    drafter = ModelDrafter(tiny_llama(vocab_size=16, num_layers=1, seed=7), "drafter")
    widths = PassWidths(model)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    alone = Chain([target], []).generate(prompt, max_new_tokens=6, eos_token_id=[])
    assert widths.widths[0] == len(prompt) - 1 and set(widths.widths[1:]) == {2}
    widths.widths.clear()
    chained = Chain([target, drafter], [3]).generate(prompt, max_new_tokens=6, eos_token_id=[])
    assert widths.widths[0] == len(prompt) - 1 and min(widths.widths[1:]) >= 2
    assert chained.tokens == alone.tokens
    assert alone.stats.levels[0].prefill_tokens == len(prompt) - 1


def test_pool_option_exact(tmp_path):
    save_tiny(tmp_path / "big", vocab_size=16)
    head = '[pool]\ntarget = "big"\n[[member]]\nname = "big"\nsource = "dir:big"\ndtype = "bfloat16"\n'
    path = tmp_path / "p.toml"
    path.write_text(head)
    assert "exact" not in load_pool(path).member("big").describe()  # descriptions in profiles unchanged
    assert load_pool(path).drafter("big").exact  # half precision on CPU
    path.write_text(head + "exact = false\n")
    pool = load_pool(path)
    assert "exact=false" in pool.member("big").describe() and not pool.drafter("big").exact
    path.write_text(head + 'exact = "yes"\n')
    with pytest.raises(PoolFileError, match="exact must be true or false"):
        load_pool(path)


@pytest.mark.weights
def test_exact_regime_is_batch_invariant_on_smollm2_bf16(smollm2_pool):
    """Every pass after the prefill: a token's logits are bitwise the same whatever pass it shares."""
    d = smollm2_pool.drafter("smollm2-135m:bf16")
    ids = smollm2_pool.tokenizer("def f(x):\n    return x * 2\n\nThe quick brown fox jumps over the lazy dog.")[
        "input_ids"
    ]
    ids = torch.tensor(ids * 3)
    start, n = 20, 12
    with d.as_target():
        rows = {}
        for pieces in ([n], [1] * n, [5, 3, 4], [2, 1, 9]):
            d.reset()
            d.score(ids[:start], last=1)
            out, pos = [], start
            for k in pieces:
                out.append(d.score(ids[pos : pos + k]))
                pos += k
            rows[tuple(pieces)] = torch.cat(out)
    first = rows[(n,)]
    for pieces, got in rows.items():
        assert torch.equal(got, first), pieces


@pytest.mark.weights
@pytest.mark.parametrize(
    "names, gammas",
    [
        pytest.param(["smollm2-135m:bf16", "smollm2-135m:int8"], [7], id="bf16<-int8"),
        pytest.param(["smollm2-135m:bf16", "smollm2-135m", "prompt-lookup"], [5, 3], id="bf16<-f32<-lookup"),
    ],
)
def test_chain_over_bf16_target_equals_it_decoding_alone(smollm2_pool, names, gammas):
    tok = smollm2_pool.tokenizer
    members = smollm2_pool.drafters(names)
    alone = Chain(members[:1], [], tokenizer=tok)
    chain = Chain(members, gammas, tokenizer=tok)
    for text in (
        "Write a Python function that checks whether a number is prime.",
        "Translate to French: The weather is nice today and we are going to the beach.",
        "What is 17 times 23? Explain step by step.",
        "Summarize: The committee met on Tuesday to discuss the budget, which rose by 4% over last year.",
    ):
        ids = tok(text)["input_ids"]
        want = alone.generate(ids, max_new_tokens=32, eos_token_id=[]).tokens
        assert chain.generate(ids, max_new_tokens=32, eos_token_id=[]).tokens == want, text
