"""Which drafter helps the target write its references, and which prompts and pass shapes a run
measures: the two-level ranking of measured drafters, the reference helper, the teacher-forcing
shape of each eval prompt and the long prompts of the windows phase."""

from __future__ import annotations

import numpy as np

from polyplan.data import Prompt
from polyplan.data.prompt_file import PromptSet
from polyplan.documents.profile import LatencyCurve, PrefillCurve
from polyplan.models.drafter import Drafter
from polyplan.profiler.recorder import TraceRecorder
from polyplan.profiler.settings import ProfileInputs, ProfileSettings


def shape_of_prompt(settings: ProfileSettings, index: int) -> int:
    """The teacher-forcing block size of the ``index``-th eval prompt: the sizes ``block`` and
    ``extra_blocks`` take turns over the prompts. A shape-sensitive model's acceptance is then a
    mixture over the pass shapes a verifier sees at run time (acceptance.py, "Pass shapes") at the
    cost of one shape per prompt: two per prompt took a third of the embedded profile's
    acceptance phase (four llama.cpp members and a bf16 copy each prefilled every prompt twice)."""
    sizes = [settings.block, *settings.extra_blocks]
    return sizes[index % len(sizes)]


def two_level_ranking(
    drafters: list[Drafter], target: str, latency: dict[str, LatencyCurve], traces: TraceRecorder, context: int
) -> list[tuple[float, Drafter, int]]:
    """Every model drafter with measured latency and greedy acceptance, as (predicted seconds per
    token under the target at its best gamma <= 16, drafter, gamma), fastest first."""
    from polyplan.theory.acceptance import mean_acceptance_length

    alone = latency.get(target)
    if alone is None:
        return []
    ranked: list[tuple[float, Drafter, int]] = []
    for d in drafters:
        parts = traces.greedy.get((target, d.name))
        if d.point_mass or d.name == target or not parts or d.name not in latency:
            continue
        rate = min(float(np.concatenate(parts).mean()), 0.99)
        step = latency[d.name](1, context)
        per_token, gamma = min(
            ((g * step + alone(g + 1, context)) / mean_acceptance_length(rate, g), g) for g in range(1, 17)
        )
        ranked.append((per_token, d, gamma))
    return sorted(ranked, key=lambda r: r[0])


def reference_helper(
    ranked: list[tuple[float, Drafter, int]],
    target_step_s: float,
    prefill: dict[str, PrefillCurve],
    prompt_tokens: int,
    new_tokens: int,
) -> tuple[Drafter | None, int]:
    """The model drafter (and gamma) of a ``two_level_ranking`` that writes the target's greedy
    reference of ``new_tokens`` after ``prompt_tokens`` fastest by speculative decoding, its
    prefill of the prompt counted where measured (on a long prompt a quick decoder with a slow
    prefill loses: SmolLM2's Q4_1 copy prefills 616 tokens in 2.7 s, its Q8_0 copy in 1.0 s);
    (None, 1) while nothing is measured or nothing beats the target decoding alone by 20%. Which
    helper writes a reference changes its cost, not its tokens (greedy chains are lossless)."""
    best: tuple[float, Drafter | None, int] = (0.8 * new_tokens * target_step_s, None, 1)
    for per_token, d, gamma in ranked:
        curve = prefill.get(d.name)
        cost = new_tokens * per_token + (curve(prompt_tokens) if curve is not None else 0.0)
        if cost < best[0]:
            best = (cost, d, gamma)
    return best[1], best[2]


def long_prompts(settings: ProfileSettings, source: PromptSet, inputs: ProfileInputs) -> list[tuple[Prompt, list[int]]]:
    """Long prompts for the windowed acceptance: the user's file's prompts that a window would cut,
    else the built-in window set; each must leave the target room for the reference."""
    from polyplan.data import window_prompts

    shortest = settings.window_sink + min(settings.windows)
    chosen: list[tuple[Prompt, list[int]]] = []
    if settings.prompts_file is not None:
        for prompt in source.select(None, None):
            ids = inputs.encode(prompt.text)
            if len(ids) > shortest:
                chosen.append((prompt, ids))
            if len(chosen) == settings.window_prompts:
                break
    if not chosen:
        chosen = [(p, inputs.encode(p.text)) for p in window_prompts(settings.window_prompts)]
    limit = inputs.target_drafter.max_context
    return [(p, ids) for p, ids in chosen if limit is None or len(ids) + settings.window_reference_tokens <= limit]
