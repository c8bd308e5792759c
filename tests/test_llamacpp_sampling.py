"""Sampling stays lossless with a llama.cpp level, by the chi-square test of
test_executor_sampling.py: tiny transformers Llamas are written as float32 GGUFs
(tiny_models.tiny_gguf) and run by llama.cpp, so the exact distribution over every continuation
is cheap to compute. Two positions: llama.cpp in the middle of a transformers chain, and
llama.cpp as the target (exact distribution from its own verification numerics)."""

from __future__ import annotations

import pytest
import torch

from polyplan import Chain
from polyplan.executor.sampling import SamplingParams
from polyplan.models import llamacpp_runtime as runtime
from polyplan.models.model_drafter import ModelDrafter

from test_executor_sampling import PROMPT, V, chi_square_p, exact_distribution, sample_counts
from tiny_models import perturbed_copy, tiny_gguf, tiny_llama

LLAMACPP_MISSING = runtime.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(LLAMACPP_MISSING is not None, reason=LLAMACPP_MISSING or ""),
    pytest.mark.usefixtures("one_torch_thread"),
]
LENGTH, N = 2, 1500
PARAMS = SamplingParams(0.9, top_k=4)


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(vocab_size=V, num_layers=1, seed=11, hidden_size=16, logit_scale=4.0)
    middle = perturbed_copy(target, 0.05, seed=12)
    bottom = tiny_llama(vocab_size=V, num_layers=1, seed=13, hidden_size=16, logit_scale=4.0)
    return target, middle, bottom


def llama(model, path, name: str, *, min_pass: int = 1):
    from polyplan.models.llamacpp_drafter import LlamaCppDrafter

    return LlamaCppDrafter(tiny_gguf(model, path), name, n_ctx=64, threads=1, min_pass=min_pass)


def assert_some_drafts_rejected(chain: Chain, runs: int = 40) -> None:
    """The test has power only if the target both accepts and rejects drafts."""
    drafted = accepted = 0
    for seed in range(runs):
        r = chain.generate(PROMPT, max_new_tokens=LENGTH, temperature=PARAMS.temperature, top_k=PARAMS.top_k, seed=seed)
        drafted += r.stats.levels[0].num_draft_tokens
        accepted += r.stats.levels[0].num_accepted_tokens
    assert 0 < accepted < drafted


def test_the_tiny_gguf_computes_the_transformers_model(models, tmp_path):
    """The fixture itself: llama.cpp runs the same function (up to float rounding), so the chains
    below mix members that genuinely draft for each other."""
    target = models[0]
    ids = torch.tensor([2, 4, 3, 1, 0, 2])
    with torch.inference_mode():
        expected = target(input_ids=ids[None]).logits[0]
    got = llama(target, tmp_path / "t.gguf", "t").score(ids)
    assert got.shape == expected.shape and (got - expected).abs().max().item() < 0.05


def test_llamacpp_middle_level_samples_the_target_distribution(models, tmp_path):
    target, middle, bottom = models
    dist = exact_distribution(
        lambda ctx: target(input_ids=torch.tensor([ctx])).logits[0, -1].float().detach(), PARAMS, PROMPT, LENGTH
    )
    chain = Chain(
        [ModelDrafter(target, "t"), llama(middle, tmp_path / "m.gguf", "m"), ModelDrafter(bottom, "b")],
        gammas=[2, 2],
    )
    counts = sample_counts(chain, PARAMS, N, LENGTH)
    assert chi_square_p(dist, counts, N) > 1e-3
    assert_some_drafts_rejected(chain)


def test_llamacpp_target_samples_its_own_distribution(models, tmp_path):
    """The target is llama.cpp (verifying in its two-token numerics); its exact distribution is
    read from the same numerics. Control: the bottom model alone is detectably different."""
    target, middle, bottom = models
    t = llama(target, tmp_path / "t.gguf", "t", min_pass=2)

    def logits_after(context: list[int]) -> torch.Tensor:
        t.reset()
        row = t.score(torch.tensor(context), last=1)[0]
        t.reset()
        return row

    dist = exact_distribution(logits_after, PARAMS, PROMPT, LENGTH)
    chain = Chain([t, ModelDrafter(middle, "m"), llama(bottom, tmp_path / "b.gguf", "b")], gammas=[2, 2])
    counts = sample_counts(chain, PARAMS, N, LENGTH)
    assert chi_square_p(dist, counts, N) > 1e-3
    assert_some_drafts_rejected(chain)
    counts_bottom = sample_counts(Chain([ModelDrafter(bottom, "b")]), PARAMS, N, LENGTH)
    assert chi_square_p(dist, counts_bottom, N) < 1e-6


def test_a_level_quantized_by_llamacpp_samples_the_target_distribution(models, tmp_path, monkeypatch):
    """A derived member (llama.cpp's quantizer, Q8_0 of the middle model's float32 GGUF) in the
    middle of a transformers chain: the proposal changes, the output distribution does not."""
    from polyplan.models.llamacpp_drafter import LlamaCppDrafter
    from polyplan.weights.gguf_quantize import derive_gguf, gguf_file_type

    monkeypatch.setenv("POLYPLAN_CACHE", str(tmp_path / "cache"))
    target, middle, bottom = models
    source = tiny_gguf(middle, tmp_path / "m.gguf")
    derived = derive_gguf(source, "0" * 64, "tiny middle", "Q8_0", threads=1)
    assert gguf_file_type(derived) == "Q8_0" and gguf_file_type(source) == "F32"
    dist = exact_distribution(
        lambda ctx: target(input_ids=torch.tensor([ctx])).logits[0, -1].float().detach(), PARAMS, PROMPT, LENGTH
    )
    chain = Chain(
        [ModelDrafter(target, "t"), LlamaCppDrafter(derived, "m:q8_0", n_ctx=64, threads=1), ModelDrafter(bottom, "b")],
        gammas=[2, 2],
    )
    counts = sample_counts(chain, PARAMS, N, LENGTH)
    assert chi_square_p(dist, counts, N) > 1e-3
    assert_some_drafts_rejected(chain)
