"""A plan's chain against its target alone on one prompt, on this machine: the quickstart's honest check.

Both run through the same executor (``Chain([target])`` is what ``polyplan run --chain TARGET``
does), interleaved in A B B A order so load that drifts during the runs hits both alike, with the
same seed and end-of-sequence ids. Under greedy decoding both produce the same tokens (lossless),
so they time the same token count."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from polyplan.executor.front import Chain


@dataclass
class HeadToHead:
    plan_seconds: float
    target_seconds: float
    plan_tokens: int
    target_tokens: int
    repeats: int
    same_output: bool

    @property
    def plan_tokens_per_s(self) -> float:
        return self.plan_tokens / self.plan_seconds if self.plan_seconds > 0 else 0.0

    @property
    def target_tokens_per_s(self) -> float:
        return self.target_tokens / self.target_seconds if self.target_seconds > 0 else 0.0

    @property
    def speedup(self) -> float:
        """Plan tokens/s over target-alone tokens/s (below 1: speculation lost on this prompt)."""
        return self.plan_tokens_per_s / self.target_tokens_per_s if self.target_tokens_per_s > 0 else 0.0


def plan_vs_target(
    chain: Chain,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    repeats: int = 2,
    seed: int = 0,
) -> HeadToHead:
    """Time ``chain`` and its target alone on ``prompt_ids``, ``repeats`` runs each, interleaved."""
    alone = Chain([chain.drafters[0]], tokenizer=chain.tokenizer)
    runs = {"plan": chain, "target": alone}
    for c in runs.values():  # first-call costs (allocations, lazy init) stay out of the figures
        c.generate(list(prompt_ids), max_new_tokens=min(4, max_new_tokens), temperature=temperature, seed=seed)
    seconds = {"plan": 0.0, "target": 0.0}
    tokens = {"plan": 0, "target": 0}
    outputs: dict[str, list[list[int]]] = {"plan": [], "target": []}
    for r in range(repeats):
        order = ("target", "plan") if r % 2 == 0 else ("plan", "target")
        for name in order:
            t0 = time.perf_counter()
            result = runs[name].generate(
                list(prompt_ids), max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
            )
            seconds[name] += time.perf_counter() - t0
            tokens[name] += len(result.tokens)
            outputs[name].append(list(result.tokens))
    return HeadToHead(
        seconds["plan"],
        seconds["target"],
        tokens["plan"],
        tokens["target"],
        repeats,
        outputs["plan"] == outputs["target"],
    )


def verdict(h: HeadToHead, tolerance: float = 0.05) -> str:
    """One plain sentence on whether speculation paid on this prompt here."""
    if h.speedup >= 1 + tolerance:
        return f"speculation paid: the plan ran {h.speedup:.2f}x as fast as the target alone on this prompt here"
    if h.speedup > 1 - tolerance:
        return (
            f"speculation did not pay on this prompt here: the plan ran at {h.speedup:.2f}x the target alone "
            "(within 5%)"
        )
    return (
        f"speculation did NOT pay on this prompt here: the plan ran at {h.speedup:.2f}x the target alone, "
        f"{1 / h.speedup:.1f}x slower than not speculating"
        if h.speedup > 0
        else "speculation did NOT pay on this prompt here"
    )
