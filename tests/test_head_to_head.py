"""The quickstart's last step: a plan against its target alone on one prompt, interleaved."""

from __future__ import annotations

import pytest

from polyplan.bench import head_to_head
from polyplan.bench.head_to_head import HeadToHead, plan_vs_target, verdict
from polyplan.executor.front import Chain
from polyplan.models.model_drafter import ModelDrafter

from tiny_models import perturbed_copy, tiny_llama


class Clock:
    """A virtual clock that advances only when a model runs: ``cost`` seconds per forward pass."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class TimedDrafter(ModelDrafter):
    def __init__(self, model, name: str, clock: Clock, cost: float) -> None:
        super().__init__(model, name)
        self.clock, self.cost = clock, cost

    def score(self, new_ids, last=None):
        self.clock.now += self.cost
        return super().score(new_ids, last)


def test_plan_and_target_alone_make_the_same_tokens_and_are_both_timed(monkeypatch):
    """On a virtual clock (1 s per target pass, 0.25 s per drafter pass) each side's seconds are
    exactly ``repeats`` of its own generations, the warm-up runs left out, and the speedup is
    the target alone's time over the plan's."""
    clock = Clock()
    monkeypatch.setattr(head_to_head, "time", clock)
    target = tiny_llama(vocab_size=32, num_layers=2, seed=3, logit_scale=3.0)
    chain = Chain(
        [
            TimedDrafter(target, "t", clock, 1.0),
            TimedDrafter(perturbed_copy(target, 0.02, seed=4), "d", clock, 0.25),
        ],
        [3],
    )
    prompt = [1, 5, 7, 9]
    start = clock.now
    chain.generate(prompt, max_new_tokens=16)
    plan_once = clock.now - start
    start = clock.now
    Chain([chain.drafters[0]]).generate(prompt, max_new_tokens=16)
    alone_once = clock.now - start
    assert alone_once == 16.0  # one target pass per token (the first with the prompt)
    h = plan_vs_target(chain, prompt, 16, repeats=2)
    assert h.same_output and h.plan_tokens == h.target_tokens == 2 * 16
    assert (h.plan_seconds, h.target_seconds) == (2 * plan_once, 2 * alone_once)
    assert h.speedup == pytest.approx(alone_once / plan_once) and h.speedup > 1  # the close copy is accepted
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
