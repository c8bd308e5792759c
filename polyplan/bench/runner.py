"""The torch side of ``polyplan bench``: run the compared methods (``polyplan.bench.methods``)
interleaved per prompt (A B C D A B C D ...), time them, attach what the profile predicts
(``polyplan.bench.predictions``), and summarise (``polyplan.bench.results``).

Compared, in one run on the same prompts:
  A. autoregressive decoding with the target (transformers ``generate``),
  B. transformers assisted generation with its defaults (the plan's best two-level drafter),
  C. transformers assisted generation at the plan's gamma for that pair (constant schedule),
  D. polyplan's best two-level plan (the executor),
  E. polyplan's chosen plan as `polyplan run` runs it: adaptive (proofs/adaptive-control.md) when the
     plan has a policy, plus the same plan static (skipped when it is D); with ``static`` only the
     static plan (skipped when it is D).
  F. where the pool has the GGUF of the target's own weights, that GGUF decoded by llama.cpp alone
     (``polyplan.bench.llamacpp_alone``): a speed reference, not lossless, never compared as a plan.
With ``grid``: also the runners-up and gamma neighbours of the chosen plan (regret).

Time per token is measured end to end (prefill included) and, for the prediction error, per
decoded token with the prefill of each chain member subtracted (the theory models steady-state
decoding; the prefill pass of each member on each prompt is timed separately, once per prompt).

The prompts are the built-in eval set or a prompt file (``prompts_file``); figures are reported
overall and per prompt category. Every prompt is checked against each model's context before
anything runs, and an interrupted run (Ctrl-C) still returns what it measured (``complete: false``)."""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from polyplan.assemble import assemble_plan
from polyplan.bench.llamacpp_alone import llamacpp_alone_method
from polyplan.bench.methods import BenchMethod, also_methods, plan_methods
from polyplan.bench.predictions import alone_as_verified, attach_predictions, request_predictions
from polyplan.bench.results import (
    AUTOREGRESSIVE,
    LLAMACPP_ALONE,
    MethodSpec,
    RunRecord,
    add_speed_reference_figures,
    by_category,
    by_prompt_length,
    regret,
    summarize,
)
from polyplan.data import Prompt
from polyplan.documents.plan import Plan, file_sha256
from polyplan.documents.profile import Profile
from polyplan.errors import UserError
from polyplan.models.drafter import Drafter
from polyplan.profiler.calibrate import median_factors, plan_calibrator

Log = Callable[[str], None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_prefill(drafter: Drafter, prompt: list[int]) -> float:
    """One forward pass over the prompt from an empty cache: what each chain member pays once."""
    if drafter.point_mass:
        return 0.0
    drafter.reset()
    ids = torch.tensor(prompt, device=drafter.device)
    _sync(drafter.device)
    t0 = time.perf_counter()
    drafter.score(ids)
    _sync(drafter.device)
    dt = time.perf_counter() - t0
    drafter.reset()
    return dt


class BenchInterrupted(Exception):
    """Raised by :func:`run_interleaved` when stopped: carries the complete prompt passes so far."""

    def __init__(self, reason: str, records: list[RunRecord], prefill: dict[tuple[str, str], float]) -> None:
        super().__init__(reason)
        self.reason, self.records, self.prefill = reason, records, prefill


def run_interleaved(
    methods: Sequence[BenchMethod],
    prompts: Sequence[tuple[str, list[int]]],
    *,
    drafters: dict[str, Drafter],
    repeats: int,
    max_new_tokens: int,
    seed: int = 0,
    warmup: bool = True,
    log: Log | None = None,
    before_repeat: Callable[[int], None] | None = None,
) -> tuple[list[RunRecord], dict[tuple[str, str], float]]:
    """Run every method on every prompt, interleaved, ``repeats`` times. Returns the run records
    and the median prefill time of each (prompt, member). Ctrl-C raises :class:`BenchInterrupted`
    with every (repeat, prompt) whose methods all ran (a half-run prompt would unpair the ratios).
    ``before_repeat(rep)`` runs before each repeat's first prompt (the speed calibration)."""
    log = log or (lambda msg: None)
    if warmup and prompts:
        for m in methods:  # first-call costs (allocations, lazy init) stay out of the figures
            m.generate(prompts[0][1], min(8, max_new_tokens), seed)
    prefill_runs: dict[tuple[str, str], list[float]] = {}
    records: list[RunRecord] = []
    try:
        for rep in range(repeats):
            if before_repeat is not None:
                before_repeat(rep)
            for pid, prompt in prompts:
                group: list[RunRecord] = []
                timed_prefill = {}
                # a member no chain loaded (the llama.cpp speed reference's GGUF) times its own prefill
                for name in sorted({n for m in methods for n in m.members if n in drafters}):
                    timed_prefill[(pid, name)] = time_prefill(drafters[name], prompt)
                for m in methods:
                    dev = getattr(drafters.get(m.members[0]), "device", torch.device("cpu"))
                    _sync(dev)
                    t0 = time.perf_counter()
                    tokens, levels = m.generate(prompt, max_new_tokens, seed + rep)
                    _sync(dev)
                    dt = time.perf_counter() - t0
                    speed, setting = m.start_state() if m.start_state is not None else (None, None)
                    group.append(RunRecord(m.spec.name, pid, rep, len(tokens), dt, levels, tokens, speed, setting))
                records += group
                for key, dt in timed_prefill.items():
                    prefill_runs.setdefault(key, []).append(dt)
                log(f"repeat {rep + 1}/{repeats}, prompt {pid}: done")
    except KeyboardInterrupt:
        prefill = {k: statistics.median(v) for k, v in prefill_runs.items()}
        raise BenchInterrupted("interrupted", records, prefill) from None
    prefill = {k: statistics.median(v) for k, v in prefill_runs.items()}
    return records, prefill


def decode_records(
    records: list[RunRecord], methods: Sequence[BenchMethod], prefill: dict[tuple[str, str], float]
) -> list[RunRecord]:
    """The same runs with each chain member's prefill pass subtracted (decode time only): as the
    executor timed it where it reports levels (members are prefilled lazily: one a request never
    used paid nothing), else each member's prefill timed separately on the prompt."""
    members = {m.spec.name: m.members for m in methods}
    out = []
    for r in records:
        if r.levels and all("prefill_time_s" in lv for lv in r.levels):
            pre = sum(lv["prefill_time_s"] for lv in r.levels)
        else:
            pre = sum(prefill.get((r.prompt, n), 0.0) for n in members[r.method])
        out.append(replace(r, seconds=max(r.seconds - pre, 1e-9)))
    return out


def encode_prompts(
    tokenizer: Any, n: int, prompts_file: str | Path | None = None
) -> tuple[list[Prompt], list[tuple[str, list[int]]], dict[str, Any]]:
    """The first ``n`` prompts (round-robin over categories) of the built-in eval set or of
    ``prompts_file``, chat-templated like the profiler: (prompts, (id, ids) pairs, workload)."""
    from polyplan.data.prompt_file import prompt_set
    from polyplan.profiler.pool_inputs import chat_encoder

    source = prompt_set(prompts_file)
    selected = source.select(limit=n)
    encode = chat_encoder(tokenizer)
    return selected, [(p.id, encode(p.text)) for p in selected], source.workload(selected)


def check_prompts_fit(
    prompts: Sequence[Prompt],
    encoded: Sequence[tuple[str, list[int]]],
    drafters: Sequence[Drafter],
    max_new_tokens: int,
) -> None:
    """Every prompt plus ``max_new_tokens`` fits every model's context (before anything runs)."""
    from polyplan.data.prompt_file import check_prompt_fits

    for prompt, (_, ids) in zip(prompts, encoded, strict=True):
        for d in drafters:
            if not d.point_mass:
                check_prompt_fits(prompt, len(ids), d.max_context, max_new_tokens, d.name)


def _drop_failing_hf(methods: list[BenchMethod], prompt: list[int], seed: int, log: Log) -> dict[str, str]:
    """Remove the transformers assisted methods that fail on a short run; returns {name: why}."""
    skipped = {}
    for m in list(methods):
        if m.spec.engine == "transformers" and m.spec.name != AUTOREGRESSIVE:
            # transformers may not support every derived drafter (e.g. a quantized assistant):
            # say so in the results instead of failing the whole comparison
            try:
                m.generate(prompt, 4, seed)
            except Exception as e:  # noqa: BLE001 - any library failure means "not comparable here"
                log(f"skipping {m.spec.label}: {type(e).__name__}: {e}")
                skipped[m.spec.name] = f"{type(e).__name__}: {e}"
                methods.remove(m)
    return skipped


def _merge_decode(end_to_end: list[dict[str, Any]], decode: list[dict[str, Any]]) -> None:
    """Each row's headline figures become end to end (``end_to_end_*``) and its per-token ones decode-only."""
    for e2e, dec in zip(end_to_end, decode, strict=True):
        e2e["measured"]["end_to_end_time_per_token_s"] = e2e["measured"].get("time_per_token_s")
        e2e["measured"]["end_to_end_speedup"] = e2e["measured"].get("speedup")
        e2e["measured"]["worst_prompt_end_to_end_speedup"] = e2e["measured"].pop("worst_prompt_speedup", None)
        e2e["measured"]["worst_prompt_end_to_end"] = e2e["measured"].pop("worst_prompt", None)
        # The per-token figures are decode-only, like the per-token prediction they are compared
        # with; the end-to-end ones above are what a user waits for (reported first).
        for k in ("time_per_token_s", "tokens_per_s", "speedup", "time_per_token_by_repeat_s"):
            e2e["measured"][k] = dec["measured"].get(k)
        e2e["error"], e2e["error_speedup"] = dec["error"], dec["error_speedup"]


# ---- building the comparison from a plan --------------------------------------------------------


def run_bench(
    plan: Plan,
    plan_path: str | Path,
    *,
    pool: Any,
    prompts: int = 8,
    repeats: int = 3,
    max_new_tokens: int = 64,
    seed: int = 0,
    grid: bool = False,
    hf: bool = True,
    encoded_prompts: list[tuple[str, list[int]]] | None = None,
    eos: list[int] | None = None,
    log: Log | None = None,
    prompts_file: str | Path | None = None,
    prompt_categories: dict[str, str] | None = None,
    static: bool = False,
    also: list[tuple[list[str], list[int], list[int]]] | None = None,
    llamacpp_alone: bool = True,
) -> dict[str, Any]:
    """Run the comparison and return the results document (not yet saved; ``complete`` is false when it
    was interrupted). ``encoded_prompts`` (with ``prompt_categories``) replace the prompt set, for tests
    and callers that tokenise themselves. The chosen plan runs as ``polyplan run`` runs it (adaptive)
    beside its static version; ``static``: static only. ``also``: more static chains (names, gammas, tree
    sizes) measured in the same interleaved run. ``llamacpp_alone``: add the target's own GGUF decoded by
    llama.cpp alone, a speed reference that is not lossless (``polyplan.bench.llamacpp_alone``)."""
    log = log or (lambda msg: None)
    if repeats < 1 or prompts < 1 or max_new_tokens < 1:
        raise UserError("--repeats, --prompts and --max-new-tokens must all be >= 1")
    temperature = float(plan.settings.get("temperature", 1.0)) if plan.mode == "sampling" else 0.0
    loaded: dict[str, Drafter] = {}
    drafter = _loader(pool, loaded, log)
    # read and encode first: a bad prompt file fails before any model loads
    selected, encoded_prompts, workload = (
        encode_prompts(pool.tokenizer, prompts, prompts_file)
        if encoded_prompts is None
        else _given_prompts(list(encoded_prompts)[:prompts], prompt_categories or {})
    )
    target = drafter(plan.target)
    eos = _target_eos(pool, target) if eos is None else eos
    # the chosen plan as `polyplan run` runs it; the regime the profile probed on this machine
    assembled = assemble_plan(plan, plan_path, drafter, static=static, note=log, say_exactness=False)
    policy = assembled.policy
    methods = plan_methods(assembled, drafter, temperature=temperature, eos=eos, grid=grid, hf=hf)
    methods += also_methods(methods, _with_target_alone(also, target, plan.target), drafter, temperature, eos, log)
    check_prompts_fit(selected, encoded_prompts, list(loaded.values()), max_new_tokens)
    skipped = _drop_failing_hf(methods, encoded_prompts[0][1], seed, log)
    if llamacpp_alone:
        longest = max(len(ids) for _, ids in encoded_prompts) + max_new_tokens
        _add_llamacpp_alone(methods, skipped, pool, plan, temperature=temperature, eos=eos, longest=longest, log=log)
    verified = alone_as_verified(target)  # the profile's T_target(1) prices the lossless reference
    prediction_note = _predict(methods, plan, plan_path, encoded_prompts, max_new_tokens, log, verified)
    log(f"{len(methods)} methods x {len(encoded_prompts)} prompts x {repeats} repeats")
    calibrate, calibrations = plan_calibrator(policy, loaded, plan.profile, plan.target, seed)
    run = partial(run_interleaved, drafters=loaded, repeats=repeats, max_new_tokens=max_new_tokens, seed=seed, log=log)
    planned = repeats * len(encoded_prompts)
    records, prefill, stopped = _measured(partial(run, methods, encoded_prompts, before_repeat=calibrate), planned, log)
    specs, end_to_end, decoded, chosen = _summaries(methods, records, prefill)
    speed = median_factors(calibrations) if calibrations else None
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(target),
        "plan": _plan_summary(plan, plan_path),
        "settings": _settings_record(
            plan, len(encoded_prompts), repeats, max_new_tokens, temperature, seed, grid, prediction_note, speed
        ),
        "workload": workload,
        "complete": stopped is None,
        "stopped": stopped,
        "methods": end_to_end,
        "by_category": by_category(specs, decoded, {p.id: p.category for p in selected}),
        "by_prompt_length": by_prompt_length(specs, records, decoded, {pid: len(ids) for pid, ids in encoded_prompts}),
        "requests": request_predictions(
            records, policy, encoded_prompts, max_new_tokens, speed, _target_alone_rows(specs, plan.target), verified
        ),
        "regret": regret(end_to_end, chosen) if grid else None,
        "skipped": skipped,
        "prefill_s": {f"{p}/{n}": v for (p, n), v in prefill.items()},
        "runs": [r.as_dict() for r in records],
    }


#: how the bench times its figures (the results document's ``settings.timing``)
TIMING_NOTE = (
    "decode-only (each member's prefill pass timed separately and subtracted); end-to-end figures under end_to_end_*"
)


def _loader(pool: Any, loaded: dict[str, Drafter], log: Log) -> Callable[[str], Drafter]:
    """A member by name, loaded from the pool once (kept in ``loaded``)."""

    def drafter(name: str) -> Drafter:
        if name not in loaded:
            log(f"loading {name}")
            loaded[name] = pool.drafter(name)
        return loaded[name]

    return drafter


def _add_llamacpp_alone(
    methods: list[BenchMethod], skipped: dict[str, str], pool: Any, plan: Plan, *, log: Log, **how: Any
) -> None:
    """The speed reference row (polyplan.bench.llamacpp_alone), or why there is none in ``skipped``."""
    alone, why = llamacpp_alone_method(pool, plan, **how)
    methods += [alone] if alone is not None else []
    if why is not None:
        log(f"no llama.cpp-alone reference: {why}")
        skipped[LLAMACPP_ALONE] = why


def _summaries(
    methods: list[BenchMethod], records: list[RunRecord], prefill: dict[Any, float]
) -> tuple[list[MethodSpec], list[dict[str, Any]], list[RunRecord], str]:
    """The methods' specs, each method's row (end to end, per-token figures decode only), the
    decode-only records and the chosen plan's method name."""
    specs = [m.spec for m in methods]
    end_to_end = summarize(specs, records)
    decoded = decode_records(records, methods, prefill)
    _merge_decode(end_to_end, summarize(specs, decoded))
    chosen = "polyplan-plan" if any(m.spec.name == "polyplan-plan" for m in methods) else "polyplan-two-level"
    add_speed_reference_figures(end_to_end, records, decoded, chosen)
    return specs, end_to_end, decoded, chosen


def _predict(
    methods: list[BenchMethod],
    plan: Plan,
    plan_path: str | Path,
    encoded_prompts: list[tuple[str, list[int]]],
    max_new_tokens: int,
    log: Log,
    verified_alone: bool,
) -> str | None:
    """What the plan's profile predicts for each method, read at the prompts' mean context halfway
    through a generation; the note on how (attach_predictions)."""
    profile, profile_path = _plan_profile(plan, plan_path, log)
    context = statistics.mean(len(p) for _, p in encoded_prompts) + max_new_tokens / 2
    return attach_predictions(methods, plan, profile, profile_path, context, max_new_tokens, verified_alone)


def _settings_record(
    plan: Plan,
    prompts: int,
    repeats: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    grid: bool,
    prediction_note: str | None,
    speed: dict[str, Any] | None,
) -> dict[str, Any]:
    """How the bench ran: the results document's ``settings``."""
    return {
        "prompts": prompts,
        "repeats": repeats,
        "max_new_tokens": max_new_tokens,
        "mode": plan.mode,
        "temperature": temperature,
        "seed": seed,
        "grid": grid,
        "prediction": prediction_note,
        "speed": None if speed is None else {n: f.as_dict() for n, f in speed.items()},
        "timing": TIMING_NOTE,
    }


def _given_prompts(
    encoded_prompts: list[tuple[str, list[int]]], categories: dict[str, str]
) -> tuple[list[Prompt], list[tuple[str, list[int]]], dict[str, Any]]:
    """Prompts a caller tokenised itself: placeholder Prompt records and a ``given`` workload."""
    encoded_prompts = list(encoded_prompts)
    selected = [
        Prompt(pid, categories.get(pid, "uncategorized"), "", "", (), f"prompt {pid}") for pid, _ in encoded_prompts
    ]
    workload = {
        "name": "given",
        "sha256": None,
        "count": len(selected),
        "categories": {c: sum(p.category == c for p in selected) for c in {p.category for p in selected}},
    }
    return selected, encoded_prompts, workload


def _target_eos(pool: Any, target: Drafter) -> list[int]:
    """The target's end-of-sequence ids (its model's generation config, else the tokenizer's)."""
    from polyplan.profiler.pool_inputs import eos_token_ids

    if hasattr(target, "model"):
        return eos_token_ids(pool.tokenizer, getattr(target, "model", None))
    return list(getattr(target, "eos_token_ids", None) or eos_token_ids(pool.tokenizer))


def _plan_profile(plan: Plan, plan_path: str | Path, log: Log) -> tuple[Profile | None, Path | None]:
    """The profile the plan was made from (its path as recorded, else beside the plan), if it is there."""
    pp = Path(plan.profile.get("path", ""))
    if not pp.is_absolute():
        pp = Path(plan_path).parent / pp if not pp.exists() else pp
    if not (plan.profile.get("path") and pp.exists()):
        return None, None
    profile = Profile.load(pp)
    if not plan.check_profile(pp):
        log(f"warning: {pp} changed since the plan was made; predictions use the current profile")
    return profile, pp


def _with_target_alone(also: Sequence[Any] | None, target: Drafter, name: str) -> list[Any]:
    """``also``, with the target alone in polyplan's own loop first where the target's matmuls are
    routed: its passes are then faster than ``generate``'s, and that row says how much of a plan's
    speedup over ``generate`` is the target's own passes rather than speculation."""
    also = list(also or [])
    if target.matmuls_routed and not any(list(names) == [name] for names, *_ in also):
        also.insert(0, ([name], []))
    return also


def _target_alone_rows(specs: Sequence[Any], target: str) -> list[str]:
    """The rows that run the target alone in polyplan's own loop (``--also TARGET``; an exact
    target's lossless reference, which the profile's T(1) timed in the same numerics)."""
    return [s.name for s in specs if s.engine == "polyplan" and list(s.chain) == [target]]


def _measured(
    run: Callable[[], tuple[list[RunRecord], dict[Any, float]]], planned: int, log: Log
) -> tuple[list[RunRecord], dict[Any, float], str | None]:
    """``run()``'s records and prefill times (run_interleaved's), and why it stopped early (None: it did
    not) after how many of the ``planned`` prompt runs: an interrupted bench keeps what it measured."""
    try:
        records, prefill = run()
        return records, prefill, None
    except BenchInterrupted as stop:
        stopped = f"{stop.reason} after {len({(r.repeat, r.prompt) for r in stop.records})} of {planned} prompt runs"
        log(f"{stopped}: summarising what was measured")
        return stop.records, stop.prefill, stopped


def _machine(target: Drafter) -> dict[str, Any]:
    """The machine facts of the target's device, with a one-line summary."""
    from polyplan.profiler.machine import machine_facts

    machine = machine_facts(target.device)
    machine["summary"] = (
        f"{machine.get('gpu') or machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}"
    )
    return machine


def _plan_summary(plan: Plan, plan_path: str | Path) -> dict[str, Any]:
    """Which plan was measured: its file, hash, chain and how it was planned."""
    return {
        "path": str(plan_path),
        "sha256": file_sha256(plan_path) if Path(plan_path).exists() else "",
        "chain": plan.names,
        "gammas": plan.gammas,
        "mode": plan.mode,
        "predictor": plan.settings.get("predictor"),
    }
