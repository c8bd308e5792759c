"""The executor on the real SmolLM2 pool: greedy chains of depth 2, 3 and 4 (with a quantized
copy, a bf16 copy and a model-free level) are token-identical to the float32 target's own
``generate`` for 128 new tokens on several built-in prompts."""

from __future__ import annotations

import os

import pytest
import torch

from polyplan import Chain
from polyplan.data import load_prompts

pytestmark = pytest.mark.weights

NEW_TOKENS = int(os.environ.get("POLYPLAN_TEST_NEW_TOKENS", "128"))
N_PROMPTS = int(os.environ.get("POLYPLAN_TEST_PROMPTS", "3"))

CHAINS = [
    pytest.param(["smollm2-135m", "smollm2-135m:int8"], [5], id="depth2-int8"),
    pytest.param(["smollm2-135m", "prompt-lookup"], [4], id="depth2-prompt-lookup"),
    pytest.param(["smollm2-135m", "smollm2-135m:bf16", "prompt-lookup"], [6, 3], id="depth3-bf16-lookup"),
    pytest.param(
        ["smollm2-135m", "smollm2-135m:int8", "smollm2-135m:bf16", "prompt-lookup"],
        [6, 4, 2],
        id="depth4-int8-bf16-lookup",
    ),
]


@pytest.fixture(scope="module")
def references(smollm2_pool):
    """The float32 target's own greedy continuations (transformers generate)."""
    target = smollm2_pool.drafter("smollm2-135m")
    tok = smollm2_pool.tokenizer
    out = []
    for prompt in load_prompts("eval", limit=N_PROMPTS):
        ids = tok(prompt.text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            gen = target.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
        out.append((ids[0].tolist(), gen[0, ids.shape[1] :].tolist()))
    return out


@pytest.mark.parametrize("names,gammas", CHAINS)
def test_greedy_chain_is_token_identical_to_target_generate(smollm2_pool, references, names, gammas):
    chain = Chain(smollm2_pool.drafters(names), gammas, tokenizer=smollm2_pool.tokenizer)
    accepted = 0
    for prompt_ids, expected in references:
        result = chain.generate(prompt_ids, max_new_tokens=NEW_TOKENS)
        assert result.tokens == expected, f"{chain} diverged on prompt {smollm2_pool.tokenizer.decode(prompt_ids)!r}"
        accepted += result.stats.levels[0].num_accepted_tokens
    assert accepted > 0  # the drafters did contribute: identity is not trivially autoregressive


def test_sampling_runs_and_reports_stats(smollm2_pool):
    chain = Chain(smollm2_pool.drafters(["smollm2-135m", "smollm2-135m:bf16", "prompt-lookup"]), [5, 2])
    ids = smollm2_pool.tokenizer("The history of the printing press")["input_ids"]
    a = chain.generate(ids, max_new_tokens=32, temperature=0.8, top_p=0.9, seed=3, eos_token_id=[])
    b = chain.generate(ids, max_new_tokens=32, temperature=0.8, top_p=0.9, seed=3, eos_token_id=[])
    assert a.tokens == b.tokens and len(a.tokens) == 32
    assert a.text and a.stats.levels[0].num_drafts > 0
