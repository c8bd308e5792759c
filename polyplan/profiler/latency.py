"""Latency curves T_i(n, c): one forward pass of ``n`` new tokens over ``c`` cached tokens.

All candidates are measured at one context length together, their repeats interleaved
(A B C A B C ...), so that load from other processes drifts over all of them alike
(staged-decoding.md, "Measuring on a noisy machine"). On CUDA every pass is bracketed by events
and the host synchronises once per context; on CPU ``score`` returns finished logits, so a
``perf_counter`` pair is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from polyplan.models.drafter import Drafter


@dataclass
class LatencyRow:
    """Median and interquartile range (seconds) per new-token count, at one context length."""

    median_s: list[float]
    spread_s: list[float]
    samples_s: list[list[float]]
    #: the pass that built the context (``context`` tokens from an empty cache, the last row's
    #: logits only): one sample of the prefill P(context); None for point-mass drafters and c = 0
    build_s: float | None = None


def fits_context(drafter: Drafter, context: int, max_new: int) -> bool:
    limit = drafter.max_context
    return limit is None or context + max_new <= limit


def _context_ids(vocab_size: int, length: int, seed: int, device: torch.device) -> torch.Tensor:
    # Latency does not depend on which tokens are cached: random ids, fixed seed.
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=gen).to(device)


def measure_context(
    drafters: Sequence[Drafter],
    context: int,
    new_tokens: Sequence[int],
    repeats: int,
    warmup: int,
    seed: int = 0,
    on_pass: Callable[[], None] | None = None,
    target: str | None = None,
    keep_state: bool = False,
    one_token_runs: bool = True,
) -> dict[str, LatencyRow]:
    """T(n, context) for every drafter and every n in ``new_tokens``; the drafter named ``target``
    in the numerics it verifies with as a chain's target (``Drafter.as_target``).

    Model drafters: build ``context`` tokens of KV cache (one prefill pass, timed: ``build_s``),
    then time ``score`` of ``n`` tokens and roll back to ``context`` after each pass. A drafter
    that already holds ``context`` tokens or more (left by a call with ``keep_state``) is rolled
    back to ``context`` instead of rebuilt: latency does not depend on which tokens are cached, and
    a rollback is what every rejected draft costs anyway, while a rebuild is a prefill. Point-mass
    drafters: time ``propose(ctx, n)``. ``one_token_runs``: a one-token pass is timed after an
    untimed one of the same member, as one of a run (``_PassTimer._steady_one_token``); False: as
    profiles before it timed it, after whatever pass went before."""
    if repeats < 1 or warmup < 0:
        raise ValueError("need repeats >= 1 and warmup >= 0")
    inputs, builds = _build_contexts(drafters, context, new_tokens, seed)
    timer = _PassTimer(drafters, context, new_tokens, inputs, on_pass, one_token_runs)
    for rep in range(warmup + repeats):
        record = rep >= warmup
        for d in drafters:
            with d.as_target() if d.name == target else nullcontext():
                for j, n in enumerate(new_tokens):
                    timer.one_pass(d, j, n, record)
    samples = timer.samples()
    for d in drafters:
        if not d.point_mass and not keep_state:
            d.reset()
    return _latency_rows(samples, builds)


def _build_contexts(
    drafters: Sequence[Drafter], context: int, new_tokens: Sequence[int], seed: int
) -> tuple[dict[str, tuple[list[int], torch.Tensor]], dict[str, float]]:
    """Each drafter's ids (context and the longest new block), and every model drafter holding
    ``context`` tokens of cache: rolled back to it when it holds as many, else built by a timed
    prefill (returned per name; none for c = 0)."""
    inputs: dict[str, tuple[list[int], torch.Tensor]] = {}
    builds: dict[str, float] = {}
    for d in drafters:
        ids = _context_ids(d.vocab_size, context + max(new_tokens), seed, d.device)
        inputs[d.name] = (ids.tolist(), ids)
        if not d.point_mass:
            if context and d.processed >= context:
                d.rollback(context)
                continue
            d.reset()
            if context:
                builds[d.name] = _timed_prefill(d, ids[:context])
    return inputs, builds


class _PassTimer:
    """Times one pass of ``n`` new tokens after ``context`` and restores the context; the samples
    per drafter and per n (CUDA passes read from their events once, in :meth:`samples`)."""

    def __init__(
        self,
        drafters: Sequence[Drafter],
        context: int,
        new_tokens: Sequence[int],
        inputs: dict[str, tuple[list[int], torch.Tensor]],
        on_pass: Callable[[], None] | None,
        one_token_runs: bool = True,
    ) -> None:
        self.context = context
        self.one_token_runs = one_token_runs
        self.inputs = inputs
        self.on_pass = on_pass
        self._samples: dict[str, list[list[float]]] = {d.name: [[] for _ in new_tokens] for d in drafters}
        self._cuda_events: list[tuple[str, int, torch.cuda.Event, torch.cuda.Event]] = []

    def one_pass(self, d: Drafter, j: int, n: int, record: bool) -> None:
        context = self.context
        ids_list, ids = self.inputs[d.name]
        if d.point_mass:
            t0 = time.perf_counter()
            d.propose(ids_list[:context], n)
            if record:
                self._samples[d.name][j].append(time.perf_counter() - t0)
        else:
            new = ids[context : context + n]
            if n == 1 and self.one_token_runs:
                with d.decoding_alone():
                    self._steady_one_token(d, new)
            if d.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                d.score(new)
                end.record()
                if record:
                    self._cuda_events.append((d.name, j, start, end))
            else:
                # T(1) is a one-token pass as the member decodes alone: the autoregressive baseline
                # of a target whose verification passes use other numerics (Drafter.decoding_alone).
                # Inside a chain such a target pads every pass to min_pass tokens (an empty block
                # too), which the planner prices as T(max(n, min_pass)) (Candidate.min_pass)
                with d.decoding_alone() if n == 1 else nullcontext():
                    t0 = time.perf_counter()
                    d.score(new)
                    elapsed = time.perf_counter() - t0
                if record:
                    self._samples[d.name][j].append(elapsed)
            d.rollback(context)
        if self.on_pass is not None and record:
            self.on_pass()

    def _steady_one_token(self, d: Drafter, new: torch.Tensor) -> None:
        """An untimed one-token pass before the timed one. One-token passes come in runs: a
        drafter's draft, the target decoding alone. The first of a run, after a pass of another
        size or member, read up to 35% above the rest on the family-25 AMD, by the machine's state
        (SmolLM2 2026-12-07: the target 57-72 ms against 54-59 in a run of them, llama.cpp
        ``:q8_0`` 7.7-10.2 against 6.6-7.4, 7.3 in the chain's drafts), and priced every token of
        a draft and of the baseline at that cost (docs/results.md, "T(1) as one of a run";
        benchmarks/one_token_runs.py)."""
        d.score(new[:1])
        d.rollback(self.context)

    def samples(self) -> dict[str, list[list[float]]]:
        """The recorded seconds per drafter and per n (one host sync for all CUDA passes)."""
        if self._cuda_events:
            torch.cuda.synchronize()
            for name, j, start, end in self._cuda_events:
                self._samples[name][j].append(start.elapsed_time(end) / 1000.0)
            self._cuda_events.clear()
        return self._samples


def _latency_rows(samples: dict[str, list[list[float]]], builds: dict[str, float]) -> dict[str, LatencyRow]:
    """Median and interquartile range per drafter and per n, with the context build's time."""
    rows = {}
    for name, per_n in samples.items():
        arr = [np.asarray(s, dtype=np.float64) for s in per_n]
        rows[name] = LatencyRow(
            median_s=[float(np.median(a)) for a in arr],
            spread_s=[float(np.percentile(a, 75) - np.percentile(a, 25)) for a in arr],
            samples_s=[a.tolist() for a in arr],
            build_s=builds.get(name),
        )
    return rows


def _timed_prefill(d: Drafter, ids: torch.Tensor) -> float:
    """Seconds of one pass over ``ids`` asking for the last row only, as a request's first pass."""
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    t0 = time.perf_counter()
    d.score(ids, last=1)
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    return time.perf_counter() - t0


def measure_prefill(
    drafters: Sequence[Drafter],
    context: int,
    repeats: int,
    seed: int = 0,
    on_pass: Callable[[], None] | None = None,
    warmup: int = 0,
) -> dict[str, list[float]]:
    """P(context) for every model drafter: one pass over ``context`` prompt tokens from an empty
    cache, asking for the last row's logits only (what a member pays once per request when the
    chain first uses it; a windowed member pays for its window). Repeats interleaved over the
    drafters, after ``warmup`` untimed rounds; returns the samples (seconds) per drafter.

    The warm-up is the prefill as a running chain pays it (a chain's MemberSpeed leaves a member's
    first prefill out too): profiles timed so read SmolLM2 float32's prefills of 32 to 512 tokens
    9-19% below profiles timed without, alternated on the family-26 EPYC (2026-12-08,
    docs/results.md; benchmarks/results/prefill-warmup-ab-amd-fam26/)."""
    samples: dict[str, list[float]] = {d.name: [] for d in drafters if not d.point_mass}
    for _ in range(warmup):
        for d in drafters:
            if not d.point_mass:
                d.reset()
                # other ids than the timed passes' (a cache keyed on the tokens would not help them)
                _timed_prefill(d, _context_ids(d.vocab_size, context, seed + 1, d.device))
                d.reset()
    for _ in range(repeats):
        for d in drafters:
            if d.point_mass:
                continue
            ids = _context_ids(d.vocab_size, context, seed, d.device)
            d.reset()
            samples[d.name].append(_timed_prefill(d, ids))
            d.reset()
            if on_pass is not None:
                on_pass()
    return samples
