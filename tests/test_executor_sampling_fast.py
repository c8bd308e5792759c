"""The executor's fast sampling paths compute exactly what the reference computations do:
top-p from a bounded candidate set keeps the same tokens with the same probabilities as
transformers' TopPLogitsWarper (a full sort), and verification against a point-mass q gives the
same accepted count and next token, draw for draw, as verification against the one-hot q."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

import polyplan.executor.sampling as sampling
from polyplan.executor.sampling import POINT_MASS, SamplingParams, verify_sampled

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """What generate(do_sample=True) samples from: temperature, top-k, top-p warpers, softmax."""
    x = logits.float() / params.temperature
    if params.top_k is not None:
        x = TopKLogitsWarper(params.top_k)(None, x)
    if params.top_p is not None:
        x = TopPLogitsWarper(params.top_p)(None, x)
    return torch.softmax(x, dim=-1)


def random_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Rows from peaked (a few tokens hold the mass) to flat (top-p needs thousands of tokens)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.3, 1.0, 3.0, 8.0, 0.05, 2.0, 15.0])[:rows].view(-1, 1)
    return torch.randn(rows, vocab, generator=g) * scales


def assert_same_top_p(fast: torch.Tensor, ref: torch.Tensor, logits: torch.Tensor, params: SamplingParams) -> None:
    """Same kept set and probabilities, except for tokens whose exact (float64) mass ranked above
    them lies within float32 rounding of top_p: there the reference's own float32 cumulative sum
    over the vocabulary decides by rounding, and either answer is the warper's up to rounding."""
    x = logits.double() / params.temperature
    if params.top_k is not None:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    p = torch.softmax(x, dim=-1)
    sorted_p, order = torch.sort(p, dim=-1, descending=True)
    above = torch.empty_like(p).scatter_(-1, order, sorted_p.cumsum(dim=-1) - sorted_p)
    ambiguous = (above - params.top_p).abs() < 1e-5
    differ = (fast > 0) != (ref > 0)
    assert not (differ & ~ambiguous).any(), "a different kept set away from the cut"
    assert int(differ.sum()) <= max(1, int(ambiguous.sum()))
    both = (fast > 0) & (ref > 0)
    torch.testing.assert_close(fast[both], ref[both], rtol=5e-4, atol=1e-8)
    assert float((fast - ref).abs().sum(dim=-1).max()) < 1e-3  # total variation
    torch.testing.assert_close(fast.sum(dim=-1), torch.ones(fast.shape[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab", [5, 300, 49152])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("temperature", [0.3, 0.8, 1.7])
def test_top_p_fast_path_equals_the_sorting_reference(vocab, top_p, temperature):
    logits = random_logits(7, vocab, seed=vocab + int(top_p * 1000))
    params = SamplingParams(temperature=temperature, top_p=top_p)
    fast, ref = params.probs(logits), reference_probs(logits, params)
    assert_same_top_p(fast, ref, logits, params)


def test_top_p_fast_path_grows_its_candidate_set_for_flat_rows(monkeypatch):
    """A flat row needs ~90% of a 4096-token vocabulary: the first bound (64) is far too small."""
    monkeypatch.setattr(sampling, "TOP_P_CANDIDATES", 4)
    logits = torch.randn(3, 4096, generator=torch.Generator().manual_seed(1)) * 0.01
    params = SamplingParams(temperature=1.0, top_p=0.9)
    fast, ref = params.probs(logits), reference_probs(logits, params)
    assert int((ref[0] > 0).sum()) > 3000
    assert_same_top_p(fast, ref, logits, params)


@pytest.mark.parametrize("top_k", [1, 20, 2000])
def test_top_k_then_top_p_fast_path_equals_the_reference(top_k):
    logits = random_logits(5, 49152, seed=top_k)
    params = SamplingParams(temperature=0.8, top_k=top_k, top_p=0.9)
    fast, ref = params.probs(logits), reference_probs(logits, params)
    assert_same_top_p(fast, ref, logits, params)


@pytest.mark.parametrize("vocab", [5, 1000])
def test_point_mass_verification_matches_the_one_hot_reference_draw_for_draw(vocab):
    g = torch.Generator().manual_seed(vocab)
    params = SamplingParams(temperature=1.0, top_p=0.95)
    accepted_counts = set()
    for trial in range(400):
        m = trial % 6 + 1
        p = params.probs(torch.randn(m + 1, vocab, generator=g) * 6.0)
        # drafts a plausible point-mass drafter would make: often the verifier's likely tokens
        likely = p[:m].argmax(dim=-1)
        other = torch.randint(0, vocab, (m,), generator=g)
        draft = torch.where(torch.rand(m, generator=g) < 0.7, likely, other)
        one_hot = torch.nn.functional.one_hot(draft, vocab).float()
        ref = verify_sampled(p, one_hot, draft, torch.Generator().manual_seed(trial))
        fast = verify_sampled(p, POINT_MASS, draft, torch.Generator().manual_seed(trial))
        assert (int(fast[0]), int(fast[1])) == (int(ref[0]), int(ref[1])), trial
        accepted_counts.add((int(ref[0]), m))
    # both outcomes were exercised: rejections (correction samples) and full acceptance (bonus)
    assert any(a < m for a, m in accepted_counts) and any(a == m for a, m in accepted_counts)


def test_point_mass_correction_never_repeats_the_rejected_draft():
    """p puts mass 0.5 on the drafted token: when it is rejected, the correction is drawn from p
    without it (the residual max(0, p - q)), so the drafted token can never be the next token."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    draft = torch.tensor([0])
    for seed in range(300):
        accepted, token = verify_sampled(p, POINT_MASS, draft, torch.Generator().manual_seed(seed))
        if int(accepted) == 0:
            assert int(token) != 0
