"""The embedded SmolLM2 pool with real weights: every member loads on CPU, shares the target's
vocabulary, and the derived copies agree with the target on most greedy choices."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.weights

TEXT = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
    "capital of Germany."
)


@pytest.fixture(scope="module")
def text_ids(smollm2_pool) -> torch.Tensor:
    return torch.tensor(smollm2_pool.tokenizer(TEXT)["input_ids"])


def test_target_answers_a_known_question(smollm2_pool):
    from polyplan.weights.ngram_fit import chat_prompt_ids

    tok = smollm2_pool.tokenizer
    target = smollm2_pool.drafter(smollm2_pool.target)
    assert target.vocab_size == 49152 == len(tok)
    ids = chat_prompt_ids(tok, "What is the capital of France?")
    out = target.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, len(ids) :])


@pytest.mark.parametrize("name, min_agreement", [("smollm2-135m:bf16", 0.85), ("smollm2-135m:int8", 0.85)])
def test_derived_copies_share_vocabulary_and_mostly_agree(smollm2_pool, text_ids, name, min_agreement):
    target = smollm2_pool.drafter(smollm2_pool.target)
    copy = smollm2_pool.drafter(name)
    assert copy.vocab_size == target.vocab_size and not copy.point_mass
    target.reset()
    copy.reset()
    ref = target.score(text_ids)
    got = copy.score(text_ids)
    target.reset()
    copy.reset()
    assert got.shape == ref.shape == (len(text_ids), 49152) and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    agreement = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agreement >= min_agreement, f"{name}: argmax agreement {agreement:.2f}"
    # a derived copy is a different model, not the target itself
    assert not torch.equal(got, ref)


def test_int8_copy_really_is_quantized(smollm2_pool):
    model = smollm2_pool.drafter("smollm2-135m:int8").model
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert "Int8" in type(weight).__name__ or "Affine" in type(weight).__name__, type(weight)


def test_model_free_members_use_target_vocabulary(smollm2_pool, text_ids):
    target = smollm2_pool.drafter(smollm2_pool.target)
    for name in ("prompt-lookup", "ngram"):
        d = smollm2_pool.drafter(name)
        assert d.point_mass and d.vocab_size == target.vocab_size
        d.reset()
    ids = text_ids.tolist()
    # "capital of" occurred before: prompt lookup copies what followed it
    cut = len(ids) - 1 - ids[::-1].index(smollm2_pool.tokenizer(" capital")["input_ids"][0])
    proposal = smollm2_pool.drafter("prompt-lookup").propose(ids[: cut + 2], 2)
    assert smollm2_pool.tokenizer.decode(proposal).strip().startswith("France")
    ngram = smollm2_pool.drafter("ngram")
    assert len(ngram.table) > 1000  # fitted on the target's generations for the fit prompts
    proposal = ngram.propose(smollm2_pool.tokenizer("<|im_start|>assistant\n")["input_ids"], 4)
    assert 1 <= len(proposal) <= 4 and all(0 <= t < target.vocab_size for t in proposal)


def test_check_verifies_every_member(smollm2_pool):
    rows = smollm2_pool.check()
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(smollm2_pool.names)
    assert by_name["smollm2-135m"]["agreement"] == 1.0
    assert by_name["prompt-lookup"]["agreement"] is None
    assert all(r["vocab_size"] == 49152 for r in rows)


def test_install_again_reuses_everything(smollm2_pool, monkeypatch):
    """`polyplan models install smollm2` on an installed cache converts and fits nothing."""
    from polyplan.weights import ngram_fit, source_cache

    def must_not_run(*args, **kwargs):
        raise AssertionError("install rebuilt something that was already in the cache")

    monkeypatch.setattr(source_cache, "convert_gguf", must_not_run)
    monkeypatch.setattr(source_cache, "fetch_wheels", must_not_run)
    monkeypatch.setattr(ngram_fit, "greedy_generations", must_not_run)
    smollm2_pool.install()
