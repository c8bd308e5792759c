"""Screening: a member slower than the target at every pass size is not profiled further.

Why it can never pay as the bottom drafter (the role every drafter takes in some round): a round
that drafts g tokens with member d and verifies them with the target costs
g * T_d(1) + T_t(g + 1) and yields at most g + 1 tokens, so with T_d(1) >= T_t(1) and
T_t(g + 1) >= T_t(1) it costs at least T_t(1) per token: the target decoding alone, before the
member's prefill. As a middle verifier it would check drafts in passes no cheaper than the
target's own passes over the same tokens, while only the target's verdict is final. So the
profiler measures such a member's latency at the first context (that is how it is found) and
spends no prefill, acceptance or window measurements on it; the profile says so (``screened``)
and the planner leaves it out with that reason. ``--no-screen`` measures everything.

Noise guard: a member is screened when it is slower at every size and by SCREEN_MARGIN on
geometric mean over the sizes: one within timing noise of the target (a copy of its weights, say)
is left to the planner, which measures it and leaves it out itself. (Requiring the margin at every
size let noise keep the int8 copy: at 1.42, 1.10, 1.06, 1.52, 1.46 and 1.37 times the target's
passes it was profiled in full, about 10 s of prefills and passes at long contexts.)

Measured on the SmolLM2 pool (2-core EPYC): the int8 (dynamic quantization) copy costs
155-230 ms per pass against the float32 target's 80-200 ms at every size; screening it takes
about 40 s off the embedded profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from polyplan.documents.profile import LatencyCurve

# 10%: the spread of one latency row between profiles on the 2-core VM is a few percent; the int8
# copy screening exists for is 50-100% slower.
SCREEN_MARGIN = 1.10


def slower_than_target(
    latency: Mapping[str, LatencyCurve], target: str, context: int, point_mass: Mapping[str, bool]
) -> dict[str, str]:
    """Model members whose measured T(n, context) is at least the target's at every n and SCREEN_MARGIN
    times it on geometric mean, each with the reason the profile records. Members or targets without
    that context row are kept."""
    base = latency.get(target)
    if base is None or context not in base.context:
        return {}
    t_row = base.median_s[base.context.index(context)]
    out = {}
    for name, curve in latency.items():
        if name == target or point_mass.get(name, False) or context not in curve.context:
            continue
        if curve.new_tokens != base.new_tokens:
            continue
        row = curve.median_s[curve.context.index(context)]
        ratios = [d / t if t > 0 else 0.0 for d, t in zip(row, t_row, strict=True)]
        if min(ratios) >= 1.0 and math.prod(ratios) ** (1 / len(ratios)) >= SCREEN_MARGIN:
            n_lo, n_hi = curve.new_tokens[0], curve.new_tokens[-1]
            out[name] = (
                f"slower than the target at every pass size (T({n_lo}) {row[0] * 1e3:.0f} vs {t_row[0] * 1e3:.0f} ms, "
                f"T({n_hi}) {row[-1] * 1e3:.0f} vs {t_row[-1] * 1e3:.0f} ms at {context} cached tokens): "
                "each token it drafts costs more than the target decoding it alone"
            )
    return out
