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

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from polyplan.data import Prompt
from polyplan.documents.files import check_writable
from polyplan.documents.profile import LatencyCurve, PrefillCurve, Profile
from polyplan.documents.traces import Traces
from polyplan.errors import UserError
from polyplan.models.drafter import Drafter
from polyplan.profiler.acceptance import WindowedAcceptance, greedy_reference, score_reference, score_windows
from polyplan.profiler.latency import fits_context, measure_context, measure_prefill
from polyplan.profiler.machine import machine_facts, machine_fingerprint, with_exactness, with_matmul_routes
from polyplan.profiler.recorder import TraceRecorder
from polyplan.profiler.references import long_prompts, reference_helper, shape_of_prompt, two_level_ranking
from polyplan.profiler.resume import check_resumable, checked_prompts, settings_doc
from polyplan.profiler.screen import slower_than_target
from polyplan.profiler.settings import ProfileInputs, ProfileOutcome, ProfileSettings, ProgressHooks, new_token_grid

__all__ = [
    "ProfileInputs",
    "ProfileOutcome",
    "ProfileSession",
    "ProfileSettings",
    "ProgressHooks",
    "load_traces",
    "new_token_grid",
    "reference_helper",
    "run_profile",
    "shape_of_prompt",
    "sidecar_path",
    "two_level_ranking",
]

#: the phases of a run, in order, each a loop of units sharing the budget
PHASES = ("latency", "prefill", "acceptance", "windows")

Unit = TypeVar("Unit")


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.stem + ".traces.npz")


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
    t_start = started_at if started_at is not None else time.monotonic()
    session = ProfileSession(inputs, Path(output), settings, progress or ProgressHooks(), t_start, budget_s, force)
    return session.run()


class ProfileSession:
    """One profiling run: what it resumes from, one method per phase, and the unit loop they share
    (stop at the budget, measure a unit, record it, save both files). ``run_profile`` starts one."""

    def __init__(
        self,
        inputs: ProfileInputs,
        output: Path,
        settings: ProfileSettings,
        progress: ProgressHooks,
        t_start: float,
        budget_s: float | None,
        force: bool,
    ) -> None:
        self.inputs, self.output, self.settings, self.progress = inputs, output, settings, progress
        self.clock = time.monotonic
        self.t_start, self.budget_s = t_start, budget_s
        if output.suffix != ".json":
            raise UserError(f"{output}: the profile file name must end in .json")
        self.traces_file = sidecar_path(self.output)
        check_writable(self.output)
        check_writable(self.traces_file)

        machine = machine_facts(inputs.target_drafter.device)
        self.source, self.prompts, self.encoded = checked_prompts(settings, inputs)
        workload = None if settings.random_weights else self.source.workload(self.prompts)
        self.settings_doc = settings_doc(settings, inputs, workload)
        self.identity = {"pool": inputs.pool, "settings": self.settings_doc, "machine": machine_fingerprint(machine)}
        prev: Profile | None = None
        if self.output.exists() and not force:
            prev = Profile.load(self.output)  # a truncated or newer file raises here: nothing is overwritten
            for key in ("one_token_runs", "prefill_warmup"):
                if key not in prev.settings:
                    # from before T(1) was timed as one of a run, or prefills after a warm-up:
                    # resumed (or reused) as it was measured, its settings and its sidecar's
                    # identity as they were
                    self.settings = replace(self.settings, **{key: False})
                    del self.settings_doc[key]
            check_resumable(prev, inputs, self.settings_doc, machine_fingerprint(machine))
            machine = prev.machine  # keep the facts of the first run (thread count, date)
        self.machine = with_exactness(machine, inputs.target_drafter, self.progress.note)
        # a profile resumed from before matmul routes keeps timing its members unrouted
        unrouted = prev is not None and bool(prev.latency) and "matmul_routes" not in prev.machine
        exact = inputs.target if inputs.target_drafter.exact_as_target else None
        self.machine = with_matmul_routes(
            self.machine, inputs.drafters, self.progress.note, probe=not unrouted, exact_target=exact
        )
        self._resume(prev)

        self.units_done = 0
        self.units_skipped = 0
        self.unit_durations: dict[str, list[float]] = {phase: [] for phase in PHASES}
        self.point_mass = {d.name: d.point_mass for d in inputs.drafters}
        self.stopped_by_budget = False

    def _resume(self, prev: Profile | None) -> None:
        """Start from what ``prev`` (the profile being resumed, if any) and its sidecar measured."""
        self.latency: dict[str, LatencyCurve] = dict(prev.latency) if prev else {}
        self.prefill: dict[str, PrefillCurve] = dict(prev.prefill) if prev else {}
        self.traces = TraceRecorder()
        if prev and prev.traces and self.traces_file.exists():
            loaded = TraceRecorder.resumed(self.traces_file, self.identity)
            if loaded is None:
                self.progress.note(
                    f"{self.traces_file.name} is unreadable or from other settings: acceptance is re-measured"
                )
            else:
                self.traces = loaded
        self.created = prev.created if prev else datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.windows_doc: dict[str, Any] = dict(prev.windows) if prev else {}
        self.screened: dict[str, str] = dict(prev.screened) if prev else {}

    def run(self) -> ProfileOutcome:
        self.latency_phase()
        for d in self.inputs.drafters:  # a budget stop between contexts may leave a kept cache
            if not d.point_mass:
                d.reset()
        self.prefill_phase()
        self.acceptance_phase()
        self.windows_phase()
        complete = not self.stopped_by_budget
        profile = self.save(complete=complete)
        return ProfileOutcome(
            profile=profile,
            path=self.output,
            complete=complete,
            units_done=self.units_done,
            units_skipped=self.units_skipped,
            stopped_by_budget=self.stopped_by_budget,
            elapsed_s=self.clock() - self.t_start,
        )

    # ------------------------------------------------------------------ the shared skeleton

    def _over_budget(self, phase: str) -> bool:
        if self.budget_s is None:
            return False
        past = self.unit_durations[phase]
        expected = sum(past) / len(past) if past else 0.0
        return self.clock() - self.t_start + expected > self.budget_s

    def _units(self, phase: str, todo: Iterable[Unit], measure: Callable[[Unit], bool]) -> None:
        """Each unit of ``todo`` in turn: stop before one the budget has no room for (the phase's mean
        unit so far), ``measure`` and record it, count its time and save both files. ``measure``
        returns False for a unit that measured nothing (neither counted nor saved)."""
        for unit in todo:
            if self._over_budget(phase):
                self.stopped_by_budget = True
                return
            t0 = self.clock()
            if not measure(unit):
                continue
            self.unit_durations[phase].append(self.clock() - t0)
            self.units_done += 1
            self.save(complete=False)

    def save(self, complete: bool) -> Profile:
        """Write the sidecar (when any prompt is measured), then the profile, each atomically."""
        prof = Profile(
            pool=self.inputs.pool,
            target=self.inputs.target,
            candidates=self.inputs.candidates,
            latency=self.latency,
            pairs=self.traces.pairs(),
            temperature=self.settings.temperature,
            machine=self.machine,
            settings={
                **self.settings_doc,
                "budget_s": self.budget_s,
                "elapsed_s": round(self.clock() - self.t_start, 1),  # this run only (a resumed run restarts it)
                "phase_s": {k: round(sum(v), 1) for k, v in self.unit_durations.items()},
            },
            created=self.created,
            traces=self.traces_file.name if self.traces.prompt_ids else None,
            complete=complete,
            prefill=self.prefill,
            windows=self.windows_doc,
            screened=self.screened,
        )
        if self.traces.prompt_ids:
            self.traces.traces(self.identity).save(self.traces_file)
        prof.save(self.output)
        return prof

    # ------------------------------------------------------------------ latency: one unit per context

    def _latency_missing(self, c: int) -> list[Drafter]:
        max_new = max(self.settings.new_tokens)
        return [
            d
            for d in self.inputs.drafters
            if d.name not in self.screened
            and fits_context(d, c, max_new)
            and (d.name not in self.latency or c not in self.latency[d.name].context)
        ]

    def latency_phase(self) -> None:
        # the first context alone (its passes screen members before any long prefill), then the others
        # longest first, each member's cache rolled back from one to the next: one build of the longest
        # context (a prefill the profile keeps) instead of one per context
        s = self.settings
        todo = [c for c in [*s.contexts[:1], *sorted(s.contexts[1:], reverse=True)] if self._latency_missing(c)]
        self.units_skipped += len(s.contexts) - len(todo)
        self.progress.begin(
            "latency", sum(len(self._latency_missing(c)) * s.latency_repeats_at(c) * len(s.new_tokens) for c in todo)
        )
        self._units("latency", list(enumerate(todo)), lambda unit: self._latency_unit(*unit, last=len(todo) - 1))

    def _latency_unit(self, i: int, c: int, last: int) -> bool:
        s = self.settings
        measured = measure_context(
            self._latency_missing(c),
            c,
            s.new_tokens,
            s.latency_repeats_at(c),
            # every pass size has run once at the first context (warm kernels and buffers); a
            # later one starts with its own prefill pass, so its warm-up passes would be wasted
            s.warmup if i == 0 else 0,
            seed=s.seed,
            on_pass=lambda: self.progress.advance("latency"),
            target=self.inputs.target,
            keep_state=0 < i < last,
            one_token_runs=s.one_token_runs,
        )
        for name, row in measured.items():
            curve = self.latency.get(name)
            self.latency[name] = (
                LatencyCurve(list(s.new_tokens), [c], [row.median_s], [row.spread_s], s.repeats)
                if curve is None
                else curve.with_row(c, row.median_s, row.spread_s, new_tokens=list(s.new_tokens), repeats=s.repeats)
            )
            # the pass that built this context is a prefill of c tokens: where one timed prefill is
            # all the prefill phase would take at c, it is that measurement (a pass saved per member)
            if (
                row.build_s is not None
                and c in s.prefill_contexts
                and s.prefill_repeats_at(c) == 1
                and s.prefill_warmup_at(c) == 0  # a build is a length's first, cold pass
                and (name not in self.prefill or c not in self.prefill[name].context)
            ):
                self._add_prefill(name, c, [row.build_s])
        if s.screen:
            self.screened.update(slower_than_target(self.latency, self.inputs.target, s.contexts[0], self.point_mass))
        return True

    # ------------------------------------------------------------------ prefill: one unit per prompt length

    def _prefill_missing(self, c: int) -> list[Drafter]:
        return [
            d
            for d in self.inputs.drafters
            if not d.point_mass
            and d.name not in self.screened
            and fits_context(d, c, 0)
            and (d.name not in self.prefill or c not in self.prefill[d.name].context)
        ]

    def _add_prefill(self, name: str, c: int, times: list[float]) -> None:
        arr = np.asarray(times, dtype=np.float64)
        median, spread = float(np.median(arr)), float(np.percentile(arr, 75) - np.percentile(arr, 25))
        repeats = self.settings.prefill_repeats_at(c)
        curve = self.prefill.get(name)
        self.prefill[name] = (
            PrefillCurve([c], [median], [spread], repeats)
            if curve is None
            else curve.with_row(c, median, spread, repeats)
        )

    def prefill_phase(self) -> None:
        s = self.settings
        todo = [] if self.stopped_by_budget else [c for c in s.prefill_contexts if self._prefill_missing(c)]
        self.units_skipped += len(s.prefill_contexts) - len(todo)
        self.progress.begin("prefill", sum(len(self._prefill_missing(c)) * s.prefill_repeats_at(c) for c in todo))
        self._units("prefill", todo, self._prefill_unit)

    def _prefill_unit(self, c: int) -> bool:
        s = self.settings
        measured = measure_prefill(
            self._prefill_missing(c),
            c,
            s.prefill_repeats_at(c),
            s.seed,
            on_pass=lambda: self.progress.advance("prefill"),
            warmup=s.prefill_warmup_at(c),
        )
        for name, times in measured.items():
            self._add_prefill(name, c, times)
        return True

    # ------------------------------------------------------------------ acceptance: one unit per eval prompt

    @property
    def profiled(self) -> list[Drafter]:
        """The members measured past the latency screen."""
        return [d for d in self.inputs.drafters if d.name not in self.screened]

    def _ranked(self) -> list[tuple[float, Drafter, int]]:
        return two_level_ranking(
            self.profiled, self.inputs.target, self.latency, self.traces, self.settings.contexts[0]
        )

    def _reference(self, prompt_ids: list[int], new_tokens: int, ranked: list[tuple[float, Drafter, int]]) -> list[int]:
        """The target's greedy reference, written by speculative decoding when a measured drafter
        pays (the same tokens)."""
        target_step = self.latency[self.inputs.target](1, self.settings.contexts[0])
        helper, gamma = reference_helper(ranked, target_step, self.prefill, len(prompt_ids), new_tokens)
        return greedy_reference(
            self.inputs.target_drafter, prompt_ids, new_tokens, self.inputs.eos_ids, helper=helper, gamma=gamma
        )

    def acceptance_phase(self) -> None:
        done = set(self.traces.prompt_ids)
        todo = [] if self.stopped_by_budget else [p for p in self.prompts if p.id not in done]
        self.units_skipped += sum(p.id in done for p in self.prompts)
        self.progress.begin("acceptance", len(todo) * (len(self.profiled) + 1))
        self._units("acceptance", todo, self._acceptance_unit)

    def _acceptance_unit(self, prompt: Prompt) -> bool:
        s = self.settings
        prompt_ids = self.encoded[prompt.id]
        reference = self._reference(prompt_ids, s.max_new_tokens, self._ranked())
        self.progress.advance("acceptance")
        if not reference:
            self.progress.note(f"prompt {prompt.id} leaves no room for a continuation: skipped")
            return False
        scored = score_reference(
            self.profiled,
            prompt_ids,
            reference,
            s.temperature,
            s.top_k,
            s.top_p,
            [shape_of_prompt(s, self.prompts.index(prompt))],
            on_candidate=lambda: self.progress.advance("acceptance"),
            target=self.inputs.target,
        )
        self.traces.add(prompt.id, prompt.category, len(prompt_ids), reference, scored)
        return True

    # ------------------------------------------------------------------ windows: one unit per long prompt

    def windows_phase(self) -> None:
        s = self.settings
        if not s.windows or not s.window_prompts or s.random_weights or self.stopped_by_budget:
            return
        prompts = long_prompts(s, self.source, self.inputs)
        self.windows_doc.setdefault("sink", s.window_sink)
        self.windows_doc.setdefault("sizes", list(s.windows))
        done = set(self.windows_doc.setdefault("prompts", []))
        todo = [(p, ids) for p, ids in prompts if p.id not in done]
        self.units_skipped += len(prompts) - len(todo)
        ranked = self._ranked()
        models = [d for d in self.profiled if not d.point_mass and d.name != self.inputs.target]
        if s.window_drafters:
            ranking = [d.name for _, d, _ in ranked]
            models.sort(key=lambda d: ranking.index(d.name) if d.name in ranking else len(ranking))
            models = models[: s.window_drafters]
        # point-mass drafters cost nothing to score: every one, for its acceptance on long prompts
        models += [d for d in self.profiled if d.point_mass]
        self.progress.begin("windows", len(todo))
        self._units("windows", todo, lambda unit: self._windows_unit(*unit, ranked, models))

    def _windows_unit(
        self, prompt: Prompt, ids: list[int], ranked: list[tuple[float, Drafter, int]], models: list[Drafter]
    ) -> bool:
        s = self.settings
        reference = self._reference(ids, s.window_reference_tokens, ranked)
        sums = WindowedAcceptance()
        if reference:
            score_windows(
                self.inputs.target_drafter,
                models,
                ids,
                reference,
                s.windows,
                s.window_sink,
                s.temperature,
                sums,
                s.top_k,
                s.top_p,
                s.block,
            )
        sums.add_to(self.windows_doc)
        self.windows_doc["prompts"].append(prompt.id)
        # how long the prompts the factor was measured on are (a reader's context; nothing reads it)
        self.windows_doc.setdefault("prompt_tokens", []).append(len(ids))
        self.progress.advance("windows")
        return True


def load_traces(profile_path: str | Path) -> dict[str, np.ndarray]:
    """The sidecar of a profile as a dict of arrays (keys as in polyplan.documents.traces; the
    typed reader is ``Traces.of_profile``)."""
    return Traces.of_profile(Profile.load(profile_path), profile_path).as_dict()
