"""Sampling is lossless: the chain's output distribution equals the target's processed one.

Exact reference: with a small vocabulary the target's distribution over every continuation of
L tokens (V**L outcomes) is the product of its processed next-token probabilities. We draw
thousands of chain generations with fixed seeds (deterministic) and run a chi-square test. A
negative control shows the same test rejects a wrong sampler."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import polyplan.executor.chain as chain_module
from polyplan import Chain
from polyplan.executor.sampling import SamplingParams, first_false, sample
from polyplan.models.model_drafter import ModelDrafter

from tiny_models import CountingPointMass, TableLM, perturbed_copy, tiny_llama

V, L, N = 5, 3, 4000
PROMPT = [2, 4]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def exact_distribution(logits_after, params: SamplingParams, prompt: list[int], length: int) -> dict:
    dist = {}
    for cont in itertools.product(range(V), repeat=length):
        prob, context = 1.0, list(prompt)
        for t in cont:
            prob *= float(params.probs(logits_after(context).view(1, -1))[0, t])
            context.append(t)
        dist[cont] = prob
    return dist


def sample_counts(chain: Chain, params: SamplingParams, n: int, length: int, prompt=PROMPT) -> dict:
    counts: dict = {}
    for seed in range(n):
        r = chain.generate(
            prompt,
            max_new_tokens=length,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            seed=seed,
            eos_token_id=[],
        )
        assert len(r.tokens) == length
        counts[tuple(r.tokens)] = counts.get(tuple(r.tokens), 0) + 1
    return counts


def chi_square_p(dist: dict, counts: dict, n: int) -> float:
    assert set(counts) <= {k for k, p in dist.items() if p > 0}, "sampled an impossible continuation"
    keys = sorted(dist)
    expected = np.array([dist[k] * n for k in keys])
    observed = np.array([counts.get(k, 0) for k in keys], dtype=float)
    small = expected < 5  # pool sparse cells so the chi-square approximation holds
    exp = np.append(expected[~small], expected[small].sum())
    obs = np.append(observed[~small], observed[small].sum())
    if exp[-1] == 0:
        exp, obs = exp[:-1], obs[:-1]
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


TARGET = TableLM(V, seed=1)
CLOSE = TARGET.mixed_with_noise(0.6, seed=2)  # high acceptance: long accepted blocks
FAR = TARGET.mixed_with_noise(1.5, seed=3)
OTHER = TableLM(V, seed=4)  # unrelated: many rejections


def table_chain(depth: int, gammas: list[int], point_mass_bottom: bool = False) -> Chain:
    members = [TARGET.drafter("target"), CLOSE.drafter("close"), FAR.drafter("far"), OTHER.drafter("other")][:depth]
    if point_mass_bottom:
        members[-1] = CountingPointMass(V, cycle=[0, 3, 3, 1], name="cycle")
    return Chain(members, gammas)


CASES = [
    pytest.param(2, [3], SamplingParams(1.0), False, id="depth2-t1.0"),
    pytest.param(3, [3, 2], SamplingParams(0.7, top_k=3), False, id="depth3-t0.7-topk3"),
    pytest.param(4, [4, 2, 1], SamplingParams(1.3, top_p=0.8), False, id="depth4-t1.3-topp0.8"),
    pytest.param(4, [2, 3, 2], SamplingParams(1.0, top_k=4, top_p=0.9), False, id="depth4-topk4-topp0.9"),
    pytest.param(3, [2, 3], SamplingParams(1.0, top_k=3), True, id="depth3-pointmass-bottom-topk3"),
]


@pytest.mark.parametrize("depth,gammas,params,point_mass", CASES)
def test_chain_samples_the_target_distribution(depth, gammas, params, point_mass):
    dist = exact_distribution(TARGET.logits_after, params, PROMPT, L)
    chain = table_chain(depth, gammas, point_mass)
    counts = sample_counts(chain, params, N, L)
    p_value = chi_square_p(dist, counts, N)
    assert p_value > 1e-3, f"chain output differs from the target's distribution (p={p_value:.2e})"


def test_negative_control_drafter_distribution_is_detected():
    params = SamplingParams(1.0)
    dist = exact_distribution(TARGET.logits_after, params, PROMPT, L)
    counts = sample_counts(Chain([FAR.drafter("far")]), params, N, L)
    assert chi_square_p(dist, counts, N) < 1e-6


def test_negative_control_wrong_correction_is_detected(monkeypatch):
    """A classic bug: resampling a rejected position from p instead of norm(max(0, p - q))."""

    def buggy_verify(p, q, draft, generator):
        m = draft.shape[0]
        if m == 0:
            return torch.zeros((), dtype=torch.long), sample(p[-1:], generator).view(())
        idx = draft.view(m, 1)
        u = torch.rand(m, generator=generator)
        ok = u * q.gather(1, idx).view(m) < p[:m].gather(1, idx).view(m)
        accepted = first_false(ok)
        return accepted, sample(p.index_select(0, accepted.view(1)), generator).view(())

    monkeypatch.setattr(chain_module, "verify_sampled", buggy_verify)
    params = SamplingParams(1.0)
    dist = exact_distribution(TARGET.logits_after, params, PROMPT, L)
    counts = sample_counts(table_chain(3, [3, 2]), params, N, L)
    assert chi_square_p(dist, counts, N) < 1e-6


@pytest.mark.parametrize("trees", [None, [1, 4]], ids=["linear", "tree-at-the-bottom"])
def test_transformers_models_chain_samples_the_target_distribution(trees):
    """Same test through ModelDrafter and real KV-cache rollbacks (fewer samples: HF forwards are
    slow); with a draft tree, through tree attention and cache compaction too."""
    target = tiny_llama(vocab_size=V, num_layers=1, seed=11, hidden_size=16, logit_scale=4.0)
    middle = perturbed_copy(target, 0.05, seed=12)
    bottom = tiny_llama(vocab_size=V, num_layers=1, seed=13, hidden_size=16, logit_scale=4.0)
    params = SamplingParams(0.9, top_k=4)
    length, n = 2, 600

    def logits_after(context):
        with torch.inference_mode():
            return target(input_ids=torch.tensor([context])).logits[0, -1].float()

    dist = exact_distribution(logits_after, params, PROMPT, length)
    chain = Chain([ModelDrafter(target, "t"), middle, bottom], gammas=[2, 2], tree_nodes=trees)
    counts = sample_counts(chain, params, n, length)
    p_value = chi_square_p(dist, counts, n)
    assert p_value > 1e-3, p_value
    # and the control: the bottom model alone is detectably different
    counts_bottom = sample_counts(Chain([bottom]), params, n, length)
    assert chi_square_p(dist, counts_bottom, n) < 1e-6


def test_same_seed_same_tokens():
    chain = table_chain(3, [3, 2])
    a = chain.generate(PROMPT, max_new_tokens=20, temperature=1.0, seed=7, eos_token_id=[]).tokens
    b = chain.generate(PROMPT, max_new_tokens=20, temperature=1.0, seed=7, eos_token_id=[]).tokens
    c = chain.generate(PROMPT, max_new_tokens=20, temperature=1.0, seed=8, eos_token_id=[]).tokens
    assert a == b and a != c
