"""Executor correctness on tiny random transformers models (float32): greedy token identity
with the target's own ``generate`` at every depth, and every bad-input / edge case."""

from __future__ import annotations

import pytest
import torch

from polyplan import Chain
from polyplan.errors import UserError
from polyplan.executor.sampling import SamplingParams
from polyplan.models.drafter import VocabularyMismatch
from polyplan.models.model_drafter import ModelDrafter

from tiny_models import CountingPointMass, perturbed_copy, tiny_llama

VOCAB = 32
TARGET = tiny_llama(vocab_size=VOCAB, num_layers=2, seed=1, logit_scale=3.0)
CLOSE = perturbed_copy(TARGET, 0.01, seed=2)  # agrees often: long accepted blocks
ROUGH = perturbed_copy(TARGET, 0.08, seed=3)
RANDOM = tiny_llama(vocab_size=VOCAB, num_layers=1, seed=4)  # disagrees often: many rollbacks
PROMPTS = [[3, 5, 7], [0, 9, 9, 9, 2, 11, 30], [17], list(range(2, 30))]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hf_greedy(prompt: list[int], n: int) -> list[int]:
    if n == 0:
        return []
    ids = torch.tensor([prompt])
    out = TARGET.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


CHAINS = [
    pytest.param([TARGET], [], id="depth1-autoregressive"),
    pytest.param([TARGET, CLOSE], [4], id="depth2-close"),
    pytest.param([TARGET, RANDOM], [3], id="depth2-random"),
    pytest.param([TARGET, ROUGH, RANDOM], [5, 2], id="depth3"),
    pytest.param([TARGET, CLOSE, ROUGH, RANDOM], [6, 3, 1], id="depth4"),
    pytest.param([TARGET, CLOSE, CountingPointMass(VOCAB, [5, 6, 7])], [4, 3], id="depth3-pointmass"),
    pytest.param(
        [TARGET, CLOSE, ROUGH, CountingPointMass(VOCAB, [1, 2], max_len=1)], [3, 2, 4], id="depth4-pointmass-short"
    ),
]


@pytest.mark.parametrize("members,gammas", CHAINS)
def test_greedy_is_token_identical_to_transformers_generate(members, gammas):
    chain = Chain(members, gammas)
    for prompt in PROMPTS:
        result = chain.generate(prompt, max_new_tokens=48, eos_token_id=[])
        assert result.tokens == hf_greedy(prompt, 48), (prompt, chain)
        assert result.finish_reason == "length"
        s = result.stats
        assert s.new_tokens == 48
        # every verification of the target emits accepted + 1 tokens
        target = s.levels[0]
        assert target.num_accepted_tokens + target.num_drafts == 48
        assert target.forward_passes == target.num_drafts
        assert target.tokens_per_pass == pytest.approx(48 / target.forward_passes)
        assert sum(target.acceptance_length_histogram.values()) == target.num_drafts


def test_stats_shape_and_timing():
    chain = Chain([TARGET, CLOSE, RANDOM], gammas=[4, 2])
    r = chain.generate(PROMPTS[1], max_new_tokens=40, eos_token_id=[])
    s = r.stats
    assert [lv.name for lv in s.levels] == chain.names
    assert [lv.gamma for lv in s.levels] == [None, 4, 2]
    assert s.levels[2].num_drafts == 0 and s.levels[2].mean_acceptance_length is None
    assert s.levels[1].num_drafts > 0 and s.levels[1].mean_acceptance_length >= 1.0
    assert 0 < s.model_time_s <= s.wall_time_s
    assert all(lv.model_time_s > 0 for lv in s.levels)
    # the bottom drafts one token per forward pass, at most gamma=2 per block the middle verifies
    assert s.levels[2].forward_passes == s.levels[1].num_draft_tokens
    assert s.levels[1].num_draft_tokens <= 2 * s.levels[1].num_drafts
    d = s.to_dict()
    assert d["levels"][0]["mean_acceptance_length"] == s.levels[0].mean_acceptance_length
    # the middle's blocks reach its threshold of 4 (or the end of the budget)
    assert s.levels[0].num_draft_tokens >= 4 * (s.levels[0].num_drafts - 1)


def test_close_drafter_accepts_long_blocks():
    r = Chain([TARGET, CLOSE], gammas=[5]).generate(PROMPTS[0], max_new_tokens=60, eos_token_id=[])
    assert r.stats.levels[0].mean_acceptance_length > 2.0  # otherwise the identity test proves little
    assert max(r.stats.levels[0].acceptance_length_histogram) == 6


def test_eos_inside_an_accepted_block_stops_there():
    prompt = PROMPTS[0]
    reference = hf_greedy(prompt, 40)
    eos = reference[9]
    first = reference.index(eos)
    chain = Chain([TARGET, CLOSE], gammas=[6])
    r = chain.generate(prompt, max_new_tokens=40, eos_token_id=eos)
    assert r.tokens == reference[: first + 1] and r.finish_reason == "eos"
    # and it matches transformers' own stopping
    ids = torch.tensor([prompt])
    hf = TARGET.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False, eos_token_id=eos, pad_token_id=0
    )
    assert r.tokens == hf[0, len(prompt) :].tolist()
    streamed = []
    never = next(t for t in range(VOCAB) if t not in reference)
    chain.generate(prompt, max_new_tokens=40, eos_token_id=[never, eos], stream=streamed.extend)
    assert streamed == r.tokens


def test_default_eos_comes_from_generation_config():
    chain = Chain([TARGET, CLOSE], gammas=[3])
    assert chain.default_eos_token_ids() == [TARGET.generation_config.eos_token_id]


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 13])
def test_max_new_tokens_exactly_respected(n):
    for members, gammas in [([TARGET, CLOSE], [8]), ([TARGET, CLOSE, ROUGH, CountingPointMass(VOCAB, [3])], [7, 4, 3])]:
        for temperature in (0.0, 1.0):
            r = Chain(members, gammas).generate(PROMPTS[1], max_new_tokens=n, temperature=temperature, eos_token_id=[])
            assert len(r.tokens) == n
            if temperature == 0.0:
                assert r.tokens == hf_greedy(PROMPTS[1], n)
    r = Chain([TARGET]).generate(PROMPTS[0], max_new_tokens=0)
    assert r.tokens == [] and r.stats.levels[0].forward_passes == 0


def test_context_limit():
    small = tiny_llama(vocab_size=VOCAB, num_layers=1, seed=5, max_position_embeddings=20)
    chain = Chain([small, perturbed_copy(small, 0.02, 6)], gammas=[6])
    r = chain.generate(list(range(10)), max_new_tokens=10, eos_token_id=[])  # exactly fills the context
    assert len(r.tokens) == 10
    ids = torch.tensor([list(range(10))])
    ref = small.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert r.tokens == ref[0, 10:].tolist()
    with pytest.raises(UserError, match="exceed the context"):
        chain.generate(list(range(10)), max_new_tokens=11)


def test_input_forms_and_bad_prompts():
    chain = Chain([TARGET, CLOSE], gammas=[3])
    a = chain.generate([3, 5, 7], max_new_tokens=5, eos_token_id=[]).tokens
    assert chain.generate(torch.tensor([3, 5, 7]), max_new_tokens=5, eos_token_id=[]).tokens == a
    assert chain.generate(torch.tensor([[3, 5, 7]]), max_new_tokens=5, eos_token_id=[]).tokens == a
    with pytest.raises(UserError, match="prompt is empty"):
        chain.generate([], max_new_tokens=5)
    with pytest.raises(UserError, match="batch size"):
        chain.generate(torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(UserError, match="token ids"):
        chain.generate([1, VOCAB])
    with pytest.raises(UserError, match="max_new_tokens"):
        chain.generate([1], max_new_tokens=-1)


@pytest.mark.parametrize("gammas", [[], [3, 2], [0], [-1], [1.5], [True]])
def test_bad_gammas_refused(gammas):
    with pytest.raises(UserError, match="gamma"):
        Chain([TARGET, CLOSE], gammas=gammas)


def test_vocabulary_mismatch_refused():
    other = tiny_llama(vocab_size=VOCAB + 1, seed=7)
    with pytest.raises(VocabularyMismatch, match="vocabulary"):
        Chain([TARGET, other], gammas=[3])


def test_point_mass_must_be_at_the_bottom():
    pm = CountingPointMass(VOCAB, [1])
    with pytest.raises(UserError, match="bottom"):
        Chain([TARGET, pm, CLOSE], gammas=[3, 2])
    with pytest.raises(UserError, match="target|bottom"):
        Chain([pm])


def test_bad_sampling_parameters_refused():
    chain = Chain([TARGET])
    for kwargs in [
        dict(temperature=-1.0),
        dict(temperature=1.0, top_k=0),
        dict(temperature=1.0, top_p=0.0),
        dict(temperature=1.0, top_p=1.5),
        dict(temperature=float("nan")),
    ]:
        with pytest.raises(UserError):
            chain.generate([1, 2], max_new_tokens=2, **kwargs)


def test_not_a_model_refused():
    with pytest.raises(UserError, match="expected"):
        Chain([TARGET, "smollm2-135m"], gammas=[2])


def test_processing_matches_transformers_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    for t, k, p in [(0.7, None, None), (1.3, 10, None), (1.0, None, 0.8), (0.9, 7, 0.6)]:
        x = TemperatureLogitsWarper(t)(None, logits.clone())
        if k:
            x = TopKLogitsWarper(k)(None, x)
        if p:
            x = TopPLogitsWarper(p)(None, x)
        torch.testing.assert_close(SamplingParams(t, k, p).probs(logits), torch.softmax(x, -1))


def test_plain_model_members_are_wrapped_and_drafters_accepted():
    chain = Chain([ModelDrafter(TARGET, "tgt"), CLOSE], gammas=[2])
    assert chain.names[0] == "tgt" and isinstance(chain.drafters[1], ModelDrafter)
    assert "tgt" in repr(chain)


def test_bf16_drafter_under_float32_target_is_still_exact():
    """A lower-precision copy of the target as drafter: the target's output is unchanged."""
    bf16 = tiny_llama(vocab_size=VOCAB, num_layers=2, seed=1, logit_scale=3.0, dtype=torch.bfloat16)
    r = Chain([TARGET, bf16, RANDOM], gammas=[4, 2]).generate(PROMPTS[3], max_new_tokens=40, eos_token_id=[])
    assert r.tokens == hf_greedy(PROMPTS[3], 40)
    assert r.stats.levels[0].mean_acceptance_length > 2.0


@pytest.mark.parametrize("gammas,n", [([4], 23), ([4, 2], 10), ([5, 3], 48), ([6, 3, 1], 31), ([2, 2], 1)])
def test_pass_counts_match_the_simulator_at_exact_length(gammas, n):
    """With every level a copy of the target, every draft is accepted (alpha = 1), so the passes
    each level runs are fixed by the gammas and the drafting caps at the end of the generation:
    the executor must run exactly the passes the theory's simulator counts with exact_length."""
    from polyplan.theory import simulate_chain

    members = [TARGET] + [ModelDrafter(TARGET, f"copy{i}") for i in range(len(gammas))]
    result = Chain(members, gammas).generate([3, 5, 7], max_new_tokens=n, eos_token_id=[])
    sim = simulate_chain([1.0] * len(gammas), gammas, [1.0] * (len(gammas) + 1), n, rng=0, exact_length=True)
    assert result.stats.new_tokens == sim.output_tokens == n
    assert [level.forward_passes for level in result.stats.levels] == sim.passes
    assert result.stats.levels[0].acceptance_length_histogram == {
        int(x): int((sim.round_tokens == x).sum()) for x in set(sim.round_tokens.tolist())
    }


def test_levels_stop_drafting_after_an_end_of_sequence_token():
    """Nothing after an EOS can be emitted, so an intermediate level hands up as soon as its
    buffer holds one instead of filling to its threshold: same tokens, fewer passes."""
    prompt = [3, 5, 7]
    free = hf_greedy(prompt, 30)
    eos = free[4]  # the 5th greedy token ends the generation
    expected = free[: free.index(eos) + 1]
    members = [TARGET] + [ModelDrafter(TARGET, f"copy{i}") for i in range(2)]
    result = Chain(members, [12, 2]).generate(prompt, max_new_tokens=30, eos_token_id=[eos])
    assert result.tokens == expected and result.finish_reason == "eos"
    middle = result.stats.levels[1]
    # alpha = 1: the middle verifies blocks of 2 (+1 token each) until the buffer holds the EOS
    assert middle.forward_passes == -(-len(expected) // 3)
    assert result.stats.levels[0].forward_passes == 1
