"""One profiling run: latency units, then acceptance units, each saved atomically when done.

A *unit* is one context length (all candidates' latency rows, repeats interleaved) or one eval
prompt (the target's reference continuation, every candidate teacher-forced on it). After each
unit the sidecar (.npz, traces) and then the profile (.json, ``complete: false``) are rewritten
atomically, so Ctrl-C, a crash or an exhausted ``budget_s`` loses at most the unit in progress;
rerunning with the same settings resumes where the files stop. A file measured with other
settings, on another machine or on another prompt file is refused unless ``force`` (which starts
over). The prompts are the built-in eval set or ``settings.prompts_file``; the profile's settings
record which (``workload``: name, sha256, count, categories) and every prompt is checked against
the models' context before anything is measured.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from polyplan.data import Prompt
from polyplan.data.prompt_file import PromptSet, check_prompt_fits, prompt_set
from polyplan.documents.files import check_writable
from polyplan.documents.profile import WINDOW_SINK, Candidate, LatencyCurve, PrefillCurve, Profile
from polyplan.documents.traces import Traces
from polyplan.errors import UserError
from polyplan.executor.sampling import SamplingParams
from polyplan.models.drafter import Drafter, check_same_vocabulary
from polyplan.profiler.acceptance import (
    WindowedAcceptance,
    greedy_reference,
    score_reference,
    score_windows,
)
from polyplan.profiler.latency import fits_context, measure_context, measure_prefill
from polyplan.profiler.machine import machine_facts, machine_fingerprint, with_exactness
from polyplan.profiler.recorder import TraceRecorder
from polyplan.profiler.screen import slower_than_target

# settings that may differ between a run and the run that resumes it
_VOLATILE_SETTINGS = ("budget_s", "elapsed_s", "phase_s")


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
    new_tokens: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    #: cached-token counts of the latency grid; past 512 fewer timed passes (latency_repeats_at in
    #: run_profile), and the pass building a context that is also a prefill length is its P(c)
    contexts: list[int] = field(default_factory=lambda: [64, 512, 2048])
    #: prompt lengths whose prefill P(c) is measured (log-spaced; the planner interpolates between
    #: them and continues the last segment's slope beyond); [] skips the phase
    prefill_contexts: list[int] = field(default_factory=lambda: [128, 512, 2048])
    #: timed prefills at the shortest lengths; longer ones get fewer (see prefill_repeats_at)
    prefill_repeats: int = 3
    #: windows whose cost in acceptance is measured on long prompts (polyplan.models.windowed);
    #: [] skips the phase
    windows: list[int] = field(default_factory=lambda: [256])
    window_sink: int = WINDOW_SINK
    #: long prompts for it: the user's prompt file's prompts longer than sink + window, else the
    #: built-in window set; each teacher-forces this many tokens of the target's answer
    window_prompts: int = 2
    #: answer tokens the window measurement reads: a window's loss shrinks as the answer fills it, so
    #: it is measured by position out to 128 (the request model reads it at a request's horizon)
    window_reference_tokens: int = 128
    #: drafters it measures: those the two-level theorem ranks fastest on the acceptance phase's
    #: figures (two_level_ranking; a plan's drafters come from the top), 0: every model drafter
    window_drafters: int = 2
    repeats: int = 5
    warmup: int = 1
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


# --------------------------------------------------------------------------- the run


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.stem + ".traces.npz")


def _settings_doc(settings: ProfileSettings, inputs: ProfileInputs, workload: dict | None) -> dict[str, Any]:
    doc = asdict(settings)
    # the file is known by its content (workload), not by a path that differs between shells
    doc.pop("prompts_file")
    doc["members"] = [d.name for d in inputs.drafters]
    doc["workload"] = workload
    return doc


def _checked_prompts(
    settings: ProfileSettings, inputs: ProfileInputs
) -> tuple[PromptSet, list[Prompt], dict[str, list[int]]]:
    """The prompts to measure, each encoded and checked to leave the target room to answer,
    before anything is measured (a bad prompt file fails before minutes of latency runs)."""
    source = prompt_set(settings.prompts_file)
    if settings.random_weights:
        return source, [], {}
    prompts = source.select(settings.categories, settings.prompts)
    models = [d for d in inputs.drafters if not d.point_mass and d.max_context is not None]
    encoded = {}
    for prompt in prompts:
        ids = inputs.encode(prompt.text)
        for d in models:
            check_prompt_fits(prompt, len(ids), d.max_context, 1, d.name)
        encoded[prompt.id] = ids
    return source, prompts, encoded


def _check_resumable(prev: Profile, inputs: ProfileInputs, settings_doc: dict, fingerprint: dict) -> None:
    problems = []
    if prev.pool != inputs.pool or prev.target != inputs.target:
        problems.append(f"pool/target {prev.pool}/{prev.target} vs {inputs.pool}/{inputs.target}")
    old = {k: v for k, v in prev.settings.items() if k not in _VOLATILE_SETTINGS}
    new = {k: v for k, v in settings_doc.items() if k not in _VOLATILE_SETTINGS}
    if "workload" not in old and (new.get("workload") or {}).get("name") in (None, "built-in"):
        old["workload"] = new.get("workload")  # profiles from before workloads were recorded: built-in set
    if old.get("top_k") == 0:
        old["top_k"] = None  # profiles from before None meant "off" recorded top-k 0 ...
    if old.get("top_p") == 1.0:
        old["top_p"] = None  # ... and top-p 1
    if "screen" not in old:
        old["screen"] = new.get("screen")  # profiles from before screening measured every member
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            then, now = (_short(k, side.get(k)) for side in (old, new))
            problems.append(f"{k}: {then} then, {now} now")
    old_fp = machine_fingerprint(prev.machine)
    if old_fp != fingerprint:
        diff = [k for k in fingerprint if old_fp.get(k) != fingerprint.get(k)]
        problems.append("machine differs (" + ", ".join(diff) + ")")
    if [asdict(c) for c in prev.candidates] != [asdict(c) for c in inputs.candidates]:
        problems.append("candidates differ (dtype, device, derivation or weights)")
    if problems:
        raise UserError(
            "the existing profile was measured differently, so it cannot be resumed: "
            + "; ".join(problems)
            + ". Use --force to measure from scratch (overwrites it) or choose another -o"
        )


def _short(key: str, value: Any) -> str:
    if key == "workload" and isinstance(value, dict):
        return f"{value.get('count')} prompts of {value.get('name')} (sha256 {str(value.get('sha256'))[:12]})"
    return repr(value)


def run_profile(
    inputs: ProfileInputs,
    output: str | Path,
    settings: ProfileSettings | None = None,
    budget_s: float | None = None,
    force: bool = False,
    progress: ProgressHooks | None = None,
    started_at: float | None = None,
) -> ProfileOutcome:
    """Measure (or resume measuring) ``inputs`` into the profile at ``output``."""
    settings = settings or ProfileSettings()
    settings.validate()
    progress = progress or ProgressHooks()
    clock = time.monotonic
    t_start = started_at if started_at is not None else clock()
    output = Path(output)
    if output.suffix != ".json":
        raise UserError(f"{output}: the profile file name must end in .json")
    traces_file = sidecar_path(output)
    check_writable(output)
    check_writable(traces_file)

    machine = machine_facts(inputs.target_drafter.device)
    source, prompts, encoded = _checked_prompts(settings, inputs)
    settings_doc = _settings_doc(settings, inputs, None if settings.random_weights else source.workload(prompts))
    identity = {"pool": inputs.pool, "settings": settings_doc, "machine": machine_fingerprint(machine)}

    prev: Profile | None = None
    if output.exists() and not force:
        prev = Profile.load(output)  # a truncated or newer file raises here: nothing is overwritten
        _check_resumable(prev, inputs, settings_doc, machine_fingerprint(machine))
        machine = prev.machine  # keep the facts of the first run (thread count, date)
    machine = with_exactness(machine, inputs.target_drafter, progress.note)

    latency: dict[str, LatencyCurve] = dict(prev.latency) if prev else {}
    prefill: dict[str, PrefillCurve] = dict(prev.prefill) if prev else {}
    traces = TraceRecorder()
    if prev and prev.traces and traces_file.exists():
        loaded = TraceRecorder.resumed(traces_file, identity)
        if loaded is None:
            progress.note(f"{traces_file.name} is unreadable or from other settings: acceptance is re-measured")
        else:
            traces = loaded
    created = prev.created if prev else datetime.now(timezone.utc).isoformat(timespec="seconds")

    units_done = 0
    units_skipped = 0
    unit_durations: dict[str, list[float]] = {"latency": [], "prefill": [], "acceptance": [], "windows": []}
    windows_doc: dict[str, Any] = dict(prev.windows) if prev else {}
    screened: dict[str, str] = dict(prev.screened) if prev else {}
    point_mass = {d.name: d.point_mass for d in inputs.drafters}
    stopped_by_budget = False

    def over_budget(kind: str) -> bool:
        if budget_s is None:
            return False
        past = unit_durations[kind]
        expected = sum(past) / len(past) if past else 0.0
        return clock() - t_start + expected > budget_s

    def save(complete: bool) -> Profile:
        prof = Profile(
            pool=inputs.pool,
            target=inputs.target,
            candidates=inputs.candidates,
            latency=latency,
            pairs=traces.pairs(),
            temperature=settings.temperature,
            machine=machine,
            settings={
                **settings_doc,
                "budget_s": budget_s,
                "elapsed_s": round(clock() - t_start, 1),  # this run only (a resumed run restarts it)
                "phase_s": {k: round(sum(v), 1) for k, v in unit_durations.items()},
            },
            created=created,
            traces=traces_file.name if traces.prompt_ids else None,
            complete=complete,
            prefill=prefill,
            windows=windows_doc,
            screened=screened,
        )
        if traces.prompt_ids:
            traces.traces(identity).save(traces_file)
        prof.save(output)
        return prof

    # ---- latency: one unit per context length ------------------------------------------
    max_new = max(settings.new_tokens)

    def missing(c: int) -> list[Drafter]:
        return [
            d
            for d in inputs.drafters
            if d.name not in screened
            and fits_context(d, c, max_new)
            and (d.name not in latency or c not in latency[d.name].context)
        ]

    def latency_repeats_at(c: int) -> int:
        # a pass over a long context costs more and varies less: about 1536 cached tokens per
        # timed pass, at least two (at 512: three of the five, at 2048: two)
        return max(min(2, settings.repeats), min(settings.repeats, 1536 // max(c, 1)))

    def prefill_repeats_at(c: int) -> int:
        # a long prefill takes a second or more, so its timing noise is relatively small: about 512
        # prompt tokens per length and model, at least one pass (keeps the embedded profile short;
        # repeated 512-token prefills of one member read 0.92-1.07 of each other on the 2-core VM)
        return max(1, min(settings.prefill_repeats, 512 // c))

    def add_prefill(name: str, c: int, times: list[float]) -> None:
        old = prefill.get(name)
        rows = (
            {}
            if old is None
            else dict(
                zip(old.context, zip(old.median_s, old.spread_s or [0.0] * len(old.context), strict=True), strict=True)
            )
        )
        arr = np.asarray(times, dtype=np.float64)
        rows[c] = (float(np.median(arr)), float(np.percentile(arr, 75) - np.percentile(arr, 25)))
        ctxs = sorted(rows)
        prefill[name] = PrefillCurve(
            context=ctxs,
            median_s=[rows[x][0] for x in ctxs],
            spread_s=[rows[x][1] for x in ctxs],
            repeats=prefill_repeats_at(c),
        )

    # the first context alone (its passes screen members before any long prefill), then the others
    # longest first, each member's cache rolled back from one to the next: one build of the longest
    # context (a prefill the profile keeps) instead of one per context
    todo_contexts = [c for c in [*settings.contexts[:1], *sorted(settings.contexts[1:], reverse=True)] if missing(c)]
    units_skipped += len(settings.contexts) - len(todo_contexts)
    progress.begin(
        "latency",
        sum(len(missing(c)) * latency_repeats_at(c) * len(settings.new_tokens) for c in todo_contexts),
    )
    for i, c in enumerate(todo_contexts):
        if over_budget("latency"):
            stopped_by_budget = True
            break
        t0 = clock()
        measured = measure_context(
            missing(c),
            c,
            settings.new_tokens,
            latency_repeats_at(c),
            # every pass size has run once at the first context (warm kernels and buffers); a
            # later one starts with its own prefill pass, so its warm-up passes would be wasted
            settings.warmup if i == 0 else 0,
            seed=settings.seed,
            on_pass=lambda: progress.advance("latency"),
            target=inputs.target,
            keep_state=0 < i < len(todo_contexts) - 1,
        )
        for name, row in measured.items():
            curve = latency.get(name)
            rows = (
                {}
                if curve is None
                else {
                    cc: (m, s)
                    for cc, m, s in zip(
                        curve.context, curve.median_s, curve.spread_s or [[]] * len(curve.context), strict=True
                    )
                }
            )
            rows[c] = (row.median_s, row.spread_s)
            ctxs = sorted(rows)
            latency[name] = LatencyCurve(
                new_tokens=list(settings.new_tokens),
                context=ctxs,
                median_s=[rows[x][0] for x in ctxs],
                spread_s=[rows[x][1] for x in ctxs],
                repeats=settings.repeats,
            )
            # the pass that built this context is a prefill of c tokens: where one timed prefill is
            # all the prefill phase would take at c, it is that measurement (a pass saved per member)
            if (
                row.build_s is not None
                and c in settings.prefill_contexts
                and prefill_repeats_at(c) == 1
                and (name not in prefill or c not in prefill[name].context)
            ):
                add_prefill(name, c, [row.build_s])
        if settings.screen:
            screened.update(slower_than_target(latency, inputs.target, settings.contexts[0], point_mass))
        unit_durations["latency"].append(clock() - t0)
        units_done += 1
        save(complete=False)

    for d in inputs.drafters:  # a budget stop between contexts may leave a kept cache
        if not d.point_mass:
            d.reset()

    # ---- prefill: one unit per prompt length ---------------------------------------------
    def prefill_missing(c: int) -> list[Drafter]:
        return [
            d
            for d in inputs.drafters
            if not d.point_mass
            and d.name not in screened
            and fits_context(d, c, 0)
            and (d.name not in prefill or c not in prefill[d.name].context)
        ]

    todo_prefill = [] if stopped_by_budget else [c for c in settings.prefill_contexts if prefill_missing(c)]
    units_skipped += len(settings.prefill_contexts) - len(todo_prefill)
    progress.begin("prefill", sum(len(prefill_missing(c)) * prefill_repeats_at(c) for c in todo_prefill))
    for c in todo_prefill:
        if over_budget("prefill"):
            stopped_by_budget = True
            break
        t0 = clock()
        measured_prefill = measure_prefill(
            prefill_missing(c), c, prefill_repeats_at(c), settings.seed, on_pass=lambda: progress.advance("prefill")
        )
        for name, times in measured_prefill.items():
            add_prefill(name, c, times)
        unit_durations["prefill"].append(clock() - t0)
        units_done += 1
        save(complete=False)

    # ---- acceptance: one unit per eval prompt ------------------------------------------
    done = set(traces.prompt_ids)
    todo_prompts = [] if stopped_by_budget else [p for p in prompts if p.id not in done]
    units_skipped += sum(p.id in done for p in prompts)
    profiled = [d for d in inputs.drafters if d.name not in screened]
    progress.begin("acceptance", len(todo_prompts) * (len(profiled) + 1))
    for prompt in todo_prompts:
        if over_budget("acceptance"):
            stopped_by_budget = True
            break
        t0 = clock()
        prompt_ids = encoded[prompt.id]
        ranked = two_level_ranking(profiled, inputs.target, latency, traces, settings.contexts[0])
        helper, gamma = reference_helper(
            ranked, latency[inputs.target](1, settings.contexts[0]), prefill, len(prompt_ids), settings.max_new_tokens
        )
        reference = greedy_reference(
            inputs.target_drafter, prompt_ids, settings.max_new_tokens, inputs.eos_ids, helper, gamma
        )
        progress.advance("acceptance")
        if not reference:
            progress.note(f"prompt {prompt.id} leaves no room for a continuation: skipped")
            continue
        scored = score_reference(
            profiled,
            prompt_ids,
            reference,
            settings.temperature,
            settings.top_k,
            settings.top_p,
            [shape_of_prompt(settings, prompts.index(prompt))],
            on_candidate=lambda: progress.advance("acceptance"),
            target=inputs.target,
        )
        traces.add(prompt.id, prompt.category, len(prompt_ids), reference, scored)
        unit_durations["acceptance"].append(clock() - t0)
        units_done += 1
        save(complete=False)

    # ---- windows: one unit per long prompt ---------------------------------------------
    if settings.windows and settings.window_prompts and not settings.random_weights and not stopped_by_budget:
        long_prompts = _window_prompts(settings, source, inputs)
        windows_doc.setdefault("sink", settings.window_sink)
        windows_doc.setdefault("sizes", list(settings.windows))
        done_w = set(windows_doc.setdefault("prompts", []))
        todo_w = [(p, ids) for p, ids in long_prompts if p.id not in done_w]
        units_skipped += len(long_prompts) - len(todo_w)
        ranked = two_level_ranking(profiled, inputs.target, latency, traces, settings.contexts[0])
        models = [d for d in profiled if not d.point_mass and d.name != inputs.target]
        if settings.window_drafters:
            ranking = [d.name for _, d, _ in ranked]
            models.sort(key=lambda d: ranking.index(d.name) if d.name in ranking else len(ranking))
            models = models[: settings.window_drafters]
        progress.begin("windows", len(todo_w))
        for prompt, ids in todo_w:
            if over_budget("windows"):
                stopped_by_budget = True
                break
            t0 = clock()
            # references written by speculative decoding when a measured drafter pays (the same tokens)
            helper, gamma = reference_helper(
                ranked,
                latency[inputs.target](1, settings.contexts[0]),
                prefill,
                len(ids),
                settings.window_reference_tokens,
            )
            reference = greedy_reference(
                inputs.target_drafter,
                ids,
                settings.window_reference_tokens,
                inputs.eos_ids,
                helper=helper,
                gamma=gamma,
            )
            sums = WindowedAcceptance()
            if reference:
                score_windows(
                    inputs.target_drafter,
                    models,
                    ids,
                    reference,
                    settings.windows,
                    settings.window_sink,
                    settings.temperature,
                    sums,
                    settings.top_k,
                    settings.top_p,
                    settings.block,
                )
            by = windows_doc.setdefault("by_drafter", {})
            for name, per_window in sums.sums.items():
                for window, (g, smp, n) in per_window.items():
                    row = by.setdefault(name, {}).setdefault(
                        "full" if window is None else str(window),
                        {"greedy_sum": 0.0, "sampling_sum": 0.0, "positions": 0},
                    )
                    row["greedy_sum"] += g
                    row["sampling_sum"] += smp
                    row["positions"] += n
                    # by answer position (key: a bucket's first position; WINDOW_POSITION_EDGES)
                    buckets = row.setdefault("by_position", {})
                    for lo, (bg, bs, bn) in sums.by_position.get(name, {}).get(window, {}).items():
                        cell = buckets.setdefault(str(lo), [0.0, 0.0, 0])
                        cell[0], cell[1], cell[2] = cell[0] + bg, cell[1] + bs, cell[2] + bn
            windows_doc["prompts"].append(prompt.id)
            # how long the prompts the factor was measured on are (a reader's context; nothing reads it)
            windows_doc.setdefault("prompt_tokens", []).append(len(ids))
            progress.advance("windows")
            unit_durations["windows"].append(clock() - t0)
            units_done += 1
            save(complete=False)

    complete = not stopped_by_budget
    profile = save(complete=complete)
    return ProfileOutcome(
        profile=profile,
        path=output,
        complete=complete,
        units_done=units_done,
        units_skipped=units_skipped,
        stopped_by_budget=stopped_by_budget,
        elapsed_s=clock() - t_start,
    )


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


def _window_prompts(
    settings: ProfileSettings, source: PromptSet, inputs: ProfileInputs
) -> list[tuple[Prompt, list[int]]]:
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


def load_traces(profile_path: str | Path) -> dict[str, np.ndarray]:
    """The sidecar of a profile as a dict of arrays (keys as in polyplan.documents.traces; the
    typed reader is ``Traces.of_profile``)."""
    return Traces.of_profile(Profile.load(profile_path), profile_path).as_dict()
