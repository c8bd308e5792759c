"""What a profiling run measures (``ProfileSettings``), on what (``ProfileInputs``), how it reports
progress (``ProgressHooks``) and what it returns (``ProfileOutcome``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from polyplan.documents.profile import WINDOW_SINK, Candidate, Profile
from polyplan.errors import UserError
from polyplan.executor.sampling import SamplingParams
from polyplan.models.drafter import Drafter, check_same_vocabulary

DENSE_NEW_TOKENS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 32)
#: the longest prefill timed after a warm-up prefill of its length (Settings.prefill_warmup_at)
PREFILL_WARMUP_MAX = 512


def prefill_warmup_passes(c: int, warmup: int, enabled: bool) -> int:
    """Untimed prefills of ``c`` tokens per member before the timed ones (measure_prefill): ``warmup``
    up to PREFILL_WARMUP_MAX tokens where ``enabled``, none beyond, where a pass takes seconds and a
    first pass's one-off cost is a small share (a 2048-token warm-up would add ~12 s to the
    embedded profile). The profile's rule, and the bench calibration's against it."""
    return warmup if enabled and c <= PREFILL_WARMUP_MAX else 0


def new_token_grid(max_new: int) -> list[int]:
    """1, 2, 4, ... up to ``max_new`` (``max_new`` itself included)."""
    if max_new < 1:
        raise UserError("the largest new-token count must be >= 1")
    grid = [1 << i for i in range(int(math.log2(max_new)) + 1)]
    return grid if grid[-1] == max_new else grid + [max_new]


@dataclass
class ProfileSettings:
    """What is measured; two runs with equal settings may be merged (resumed)."""

    # defaults: the embedded SmolLM2 pool (9 members) profiles in 3-5 minutes on a 2-core CPU
    prompts: int = 8
    max_new_tokens: int = 64
    #: pass widths of the latency grid: every width up to 9, then 12, 16, 17 (the widest verification
    #: at the planner's gamma 16) and 32. Dense where verifications run, because T(n) is not smooth in
    #: n: torch's float32 GEMMs on the 2-core AMD (family 26) took 73 ms for 3 new tokens and 57 ms
    #: for 4, 67 ms for 7 and 55 ms for 8 (docs/results.md, 2026-12-07); on a grid of powers of two
    #: the planner priced the slow widths at their neighbours' cost
    new_tokens: list[int] = field(default_factory=lambda: list(DENSE_NEW_TOKENS))
    #: cached-token counts of the latency grid; past 512 fewer timed passes
    #: (latency_repeats_at), and the pass building a context that is also a prefill length is its P(c)
    contexts: list[int] = field(default_factory=lambda: [64, 512, 2048])
    #: prompt lengths whose prefill P(c) is measured (the planner interpolates between them and
    #: keeps the cost per token rising beyond; 32 because a pass has a fixed cost, so P is not
    #: linear below 128: PrefillCurve); [] skips the phase
    prefill_contexts: list[int] = field(default_factory=lambda: [32, 128, 512, 2048])
    #: timed prefills at the shortest lengths; longer ones get fewer (see prefill_repeats_at)
    prefill_repeats: int = 3
    #: windows whose cost in acceptance is measured on long prompts (polyplan.models.windowed);
    #: [] skips the phase
    windows: list[int] = field(default_factory=lambda: [256])
    window_sink: int = WINDOW_SINK
    #: long prompts for it: the user's prompt file's prompts longer than sink + window, else the
    #: built-in window set; each teacher-forces this many tokens of the target's answer
    window_prompts: int = 3
    #: answer tokens the window measurement reads: a window's loss shrinks as the answer fills it, so
    #: it is measured by position out to 128 (the request model reads it at a request's horizon)
    window_reference_tokens: int = 128
    #: drafters it measures: those the two-level theorem ranks fastest on the acceptance phase's
    #: figures (two_level_ranking; a plan's drafters come from the top), 0: every model drafter
    window_drafters: int = 2
    repeats: int = 5
    warmup: int = 1
    #: T(1) timed as one of a run of one-token passes (an untimed one goes first: profiler/latency.py);
    #: profiles from before it lack the key, and a calibration against them times T(1) their way
    one_token_runs: bool = True
    #: prefills up to PREFILL_WARMUP_MAX tokens timed after ``warmup`` untimed ones of their length
    #: (prefill_warmup_at); profiles from before it lack the key, and a calibration against them
    #: times its prefill cold, as they did
    prefill_warmup: bool = True
    temperature: float = 1.0
    #: None: that filter is off (the executor's SamplingParams convention)
    top_k: int | None = None
    top_p: float | None = None
    #: teacher-forcing block (0: the whole reference in one pass); run-time verifier shapes
    block: int = 8
    #: more block sizes for every model but the target: low-precision argmax flips with the pass
    #: shape at near-ties, so acceptance is averaged over shapes (profiler/acceptance.py)
    extra_blocks: list[int] = field(default_factory=lambda: [5])
    categories: list[str] | None = None
    #: the user's prompt file (None: the built-in eval set); recorded as ``workload`` by content
    prompts_file: str | None = None
    random_weights: bool = False
    seed: int = 0
    #: measure no further a member slower than the target at every pass size of the first
    #: context (polyplan.profiler.screen)
    screen: bool = True

    def latency_repeats_at(self, c: int) -> int:
        """Timed passes per latency row at context ``c``: a pass over a long context costs more and
        varies less, so about 1536 cached tokens per timed pass, at least two (at 512: three of the
        five, at 2048: two)."""
        return max(min(2, self.repeats), min(self.repeats, 1536 // max(c, 1)))

    def prefill_repeats_at(self, c: int) -> int:
        """Timed prefills of ``c`` tokens: a long prefill takes a second or more, so its timing noise
        is relatively small: about 512 prompt tokens per length and model, at least one pass (keeps
        the embedded profile short; repeated 512-token prefills of one member read 0.92-1.07 of each
        other on the 2-core VM)."""
        return max(1, min(self.prefill_repeats, 512 // c))

    def prefill_warmup_at(self, c: int) -> int:
        """Untimed prefills of ``c`` tokens per member before the timed ones (prefill_warmup_passes).
        A length timed once and not warmed up (2048 by default) is the pass that built the latency
        grid's context of that length, where there is one."""
        return prefill_warmup_passes(c, self.warmup, self.prefill_warmup)

    def validate(self) -> None:
        if self.prompts < 0:
            raise UserError("--prompts must be >= 0")
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be >= 1")
        if not self.new_tokens or min(self.new_tokens) < 1:
            raise UserError("new-token counts must be >= 1")
        if not self.contexts or min(self.contexts) < 0:
            raise UserError("context lengths must be >= 0")
        if any(c < 1 for c in self.prefill_contexts) or self.prefill_repeats < 1:
            raise UserError("--prefill-contexts must be >= 1 token and --prefill-repeats >= 1")
        if any(w <= self.window_sink for w in self.windows) or self.window_sink < 0:
            raise UserError(f"--windows must be larger than the sink ({self.window_sink} tokens) and the sink >= 0")
        if self.window_prompts < 0 or self.window_reference_tokens < 1 or self.window_drafters < 0:
            raise UserError("--window-prompts and --window-drafters must be >= 0 and the window reference >= 1 token")
        if self.repeats < 1 or self.warmup < 0:
            raise UserError("--repeats must be >= 1 and --warmup >= 0")
        SamplingParams(self.temperature, self.top_k, self.top_p)  # one clear error for bad values
        if self.block < 0 or any(b < 0 for b in self.extra_blocks):
            raise UserError("--block and --extra-blocks must be >= 0")
        self.new_tokens = sorted(set(int(n) for n in self.new_tokens))
        self.contexts = sorted(set(int(c) for c in self.contexts))
        self.prefill_contexts = sorted(set(int(c) for c in self.prefill_contexts))


@dataclass
class ProfileInputs:
    """The candidates to profile, the target first, and how to turn prompt text into token ids."""

    pool: str
    target: str
    drafters: list[Drafter]
    candidates: list[Candidate]
    encode: Callable[[str], list[int]]
    eos_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [d.name for d in self.drafters]
        if self.target not in names:
            raise UserError(f"the target {self.target!r} must be among the profiled candidates")
        if self.drafters[names.index(self.target)].point_mass:
            raise UserError(f"the target {self.target!r} must be a model, not a point-mass drafter")
        check_same_vocabulary(self.drafters)

    @property
    def target_drafter(self) -> Drafter:
        return next(d for d in self.drafters if d.name == self.target)


class ProgressHooks:
    """Progress callbacks (no-ops here; the CLI draws rich progress bars)."""

    def begin(self, stage: str, total: int) -> None: ...

    def advance(self, stage: str, amount: int = 1) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class ProfileOutcome:
    profile: Profile
    path: Path
    complete: bool
    units_done: int
    units_skipped: int
    stopped_by_budget: bool
    elapsed_s: float
