"""The quickstart's last step: a plan against its target alone on one prompt, interleaved."""

from __future__ import annotations

import pytest

from polyplan.bench.head_to_head import HeadToHead, plan_vs_target, verdict
from polyplan.executor.chain import Chain
from polyplan.models.model_drafter import ModelDrafter

from tiny_models import perturbed_copy, tiny_llama


def test_plan_and_target_alone_make_the_same_tokens_and_are_both_timed():
    target = tiny_llama(vocab_size=32, num_layers=2, seed=3, logit_scale=3.0)
    chain = Chain([ModelDrafter(target, "t"), ModelDrafter(perturbed_copy(target, 0.02, seed=4), "d")], [3])
    h = plan_vs_target(chain, [1, 5, 7, 9], 16, repeats=2)
    assert h.same_output and h.plan_tokens == h.target_tokens == 2 * 16
    assert h.plan_seconds > 0 and h.target_seconds > 0
    assert h.speedup == pytest.approx(h.plan_tokens_per_s / h.target_tokens_per_s)
    assert chain.names == ["t", "d"]  # the target-alone chain is built beside it, not in place


@pytest.mark.parametrize(
    "plan_s, words",
    [
        (1.0, "speculation paid: the plan ran 2.00x"),
        (1.98, "did not pay on this prompt here: the plan ran at 1.01x"),
        (
            5.0,
            "did NOT pay on this prompt here: the plan ran at 0.40x the target alone, 2.5x slower than not speculating",
        ),
    ],
)
def test_verdict_says_plainly_whether_speculation_paid(plan_s, words):
    h = HeadToHead(
        plan_seconds=plan_s, target_seconds=2.0, plan_tokens=100, target_tokens=100, repeats=2, same_output=True
    )
    assert words in verdict(h)
