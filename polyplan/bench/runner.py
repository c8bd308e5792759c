"""The torch side of ``polyplan bench``: build the compared methods, run them interleaved per
prompt (A B C D A B C D ...), time them, and summarise.

Compared, in one run on the same prompts:
  A. autoregressive decoding with the target (transformers ``generate``),
  B. transformers assisted generation with its defaults (the plan's best two-level drafter),
  C. transformers assisted generation at the plan's gamma for that pair (constant schedule),
  D. polyplan's best two-level plan (the executor),
  E. polyplan's chosen plan as `polyplan run` runs it: adaptive (proofs/adaptive-control.md) when the
     plan has a policy, plus the same plan static (skipped when it is D); with ``static`` only the
     static plan (skipped when it is D).
With ``grid``: also the runners-up and gamma neighbours of the chosen plan (regret).

Time per token is measured end to end (prefill included) and, for the prediction error, per
decoded token with the prefill of each chain member subtracted (the theory models steady-state
decoding; the prefill pass of each member on each prompt is timed separately, once per prompt).

The prompts are the built-in eval set or a prompt file (``prompts_file``); figures are reported
overall and per prompt category. Every prompt is checked against each model's context before
anything runs, and an interrupted run (Ctrl-C) still returns what it measured (``complete: false``)."""

from __future__ import annotations

import copy
import datetime as _dt
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polyplan.bench.results import (
    AUTOREGRESSIVE,
    REFERENCE,
    MethodSpec,
    RunRecord,
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

#: HF documents prompt_lookup_num_tokens=10 in its examples; it has no default of its own
HF_PROMPT_LOOKUP_DEFAULT = 10

Log = Callable[[str], None]


@dataclass
class BenchMethod:
    spec: MethodSpec
    members: list[str]  # pool members it needs (prefill accounting)
    generate: Callable[[list[int], int, int], tuple[list[int], list[dict[str, Any]] | None]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def polyplan_method(
    spec: MethodSpec,
    drafters: Sequence[Drafter],
    gammas: Sequence[int],
    *,
    temperature: float,
    eos: list[int],
    controller: Any = None,
    verification_numerics: bool = False,
) -> BenchMethod:
    """``verification_numerics``: a one-member chain decodes in the numerics its member verifies
    with, not as it does alone (see ``Chain``)."""
    from polyplan.executor.chain import Chain

    chain = Chain(
        list(drafters), gammas=list(gammas), controller=controller, verification_numerics=verification_numerics
    )

    def generate(prompt: list[int], max_new_tokens: int, seed: int):
        result = chain.generate(
            prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, eos_token_id=eos
        )
        levels = [
            {
                "name": lv.name,
                "gamma": lv.gamma,
                "passes": lv.forward_passes,
                "verifications": lv.num_drafts,
                "accepted": lv.num_accepted_tokens,
                "model_time_s": lv.model_time_s,
                "prefill_tokens": lv.prefill_tokens,
                "prefill_time_s": lv.prefill_time_s,
            }
            for lv in result.stats.levels
        ]
        return list(result.tokens), levels

    return BenchMethod(spec, list(spec.chain), generate)


def hf_method(
    spec: MethodSpec,
    target: Any,
    *,
    temperature: float,
    eos: list[int],
    assistant: Any = None,
    assistant_config: dict[str, Any] | None = None,
    prompt_lookup: tuple[int, int] | None = None,
) -> BenchMethod:
    """transformers ``generate`` on the target's HF model, optionally assisted.

    The assistant's generation_config is restored to its pristine copy before every call: the
    "heuristic" schedules adapt it in place and would leak state between prompts and methods."""
    pristine = copy.deepcopy(assistant.generation_config) if assistant is not None else None
    device = next(target.parameters()).device
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )

    def generate(prompt: list[int], max_new_tokens: int, seed: int):
        ids = torch.tensor([prompt], device=device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            attention_mask=torch.ones_like(ids),
            eos_token_id=eos or None,
            pad_token_id=(eos or [0])[0],
            **sampling,
        )
        if assistant is not None:
            assistant.generation_config = copy.deepcopy(pristine)
            for k, v in (assistant_config or {}).items():
                setattr(assistant.generation_config, k, v)
            kwargs["assistant_model"] = assistant
        if prompt_lookup is not None:
            kwargs["prompt_lookup_num_tokens"], kwargs["max_matching_ngram_size"] = prompt_lookup
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = target.generate(ids, **kwargs)
        return out[0, len(prompt) :].tolist(), None

    return BenchMethod(spec, list(spec.chain), generate)


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
) -> tuple[list[RunRecord], dict[tuple[str, str], float]]:
    """Run every method on every prompt, interleaved, ``repeats`` times. Returns the run records
    and the median prefill time of each (prompt, member). Ctrl-C raises :class:`BenchInterrupted`
    with every (repeat, prompt) whose methods all ran (a half-run prompt would unpair the ratios)."""
    log = log or (lambda msg: None)
    if warmup and prompts:
        for m in methods:  # first-call costs (allocations, lazy init) stay out of the figures
            m.generate(prompts[0][1], min(8, max_new_tokens), seed)
    prefill_runs: dict[tuple[str, str], list[float]] = {}
    records: list[RunRecord] = []
    try:
        for rep in range(repeats):
            for pid, prompt in prompts:
                group: list[RunRecord] = []
                timed_prefill = {}
                for name in sorted({n for m in methods for n in m.members}):
                    timed_prefill[(pid, name)] = time_prefill(drafters[name], prompt)
                for m in methods:
                    dev = getattr(drafters.get(m.members[0]), "device", torch.device("cpu"))
                    _sync(dev)
                    t0 = time.perf_counter()
                    tokens, levels = m.generate(prompt, max_new_tokens, seed + rep)
                    _sync(dev)
                    dt = time.perf_counter() - t0
                    group.append(RunRecord(m.spec.name, pid, rep, len(tokens), dt, levels, tokens))
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
        out.append(
            RunRecord(r.method, r.prompt, r.repeat, r.new_tokens, max(r.seconds - pre, 1e-9), r.levels, r.tokens)
        )
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


# ---- building the comparison from a plan --------------------------------------------------------


def plan_methods(
    plan: Plan,
    drafters: Callable[[str], Drafter],
    *,
    temperature: float,
    eos: list[int],
    grid: bool = False,
    hf: bool = True,
    policy: Any = None,
) -> list[BenchMethod]:
    """The methods compared for ``plan`` (see the module doc); ``policy``: the plan's adaptive
    policy (``polyplan.assemble.plan_policy``), None to run the plan static only."""
    target = drafters(plan.target)
    if getattr(target, "model", None) is not None:
        methods = [
            hf_method(
                MethodSpec(AUTOREGRESSIVE, "autoregressive (transformers generate)", "transformers", [plan.target], []),
                target.model,
                temperature=temperature,
                eos=eos,
            )
        ]
    else:
        # a llama.cpp target: its own one-token-per-pass decoding is the speed baseline (and
        # transformers' assisted generation cannot drive it)
        methods = [
            polyplan_method(
                MethodSpec(
                    AUTOREGRESSIVE,
                    "autoregressive (the target alone, one token per pass)",
                    "llama.cpp",
                    [plan.target],
                    [],
                ),
                [target],
                [],
                temperature=temperature,
                eos=eos,
            )
        ]
    if target.pads_passes:
        # Losslessness is judged against the target decoding in the numerics it verifies with
        # (docs/staged-decoding.md, "llama.cpp members"): its one-token kernels may flip a near-tie.
        methods.append(
            polyplan_method(
                MethodSpec(
                    REFERENCE,
                    "the target alone in its verification numerics (the lossless reference)",
                    "llama.cpp",
                    [plan.target],
                    [],
                ),
                [target],
                [],
                temperature=temperature,
                eos=eos,
                verification_numerics=True,
            )
        )
    two = plan.two_level
    if two is not None:
        d_name, g = two["chain"][1], int(two["gammas"][0])
        d = drafters(d_name)
        if hf and getattr(target, "model", None) is not None:
            methods += _hf_assisted(plan.target, target, d_name, d, g, temperature, eos)
        methods.append(
            polyplan_method(
                MethodSpec("polyplan-two-level", "polyplan best two-level plan", "polyplan", list(two["chain"]), [g]),
                [target, d],
                [g],
                temperature=temperature,
                eos=eos,
            )
        )
    same_as_two = two is not None and list(two["chain"]) == plan.names and list(two["gammas"]) == plan.gammas
    if policy is not None:
        from polyplan.assemble import adaptive_controller, policy_windowable
        from polyplan.models.windowed import WindowedDrafter

        windowable = policy_windowable(policy)
        members = [
            WindowedDrafter(drafters(n), None, windowable[n]) if i and n in windowable else drafters(n)
            for i, n in enumerate(plan.names)
        ]
        methods.append(
            polyplan_method(
                MethodSpec(
                    "polyplan-plan",
                    "polyplan chosen plan (adaptive, as `polyplan run`)",
                    "polyplan",
                    list(plan.names),
                    list(plan.gammas),
                ),
                members,
                plan.gammas,
                temperature=temperature,
                eos=eos,
                controller=adaptive_controller(policy, members),
            )
        )
        if not same_as_two:
            methods.append(
                _polyplan_chain(
                    "polyplan-plan-static",
                    "polyplan chosen plan (static)",
                    plan.names,
                    plan.gammas,
                    drafters,
                    temperature,
                    eos,
                )
            )
    elif not same_as_two:
        methods.append(
            _polyplan_chain(
                "polyplan-plan", "polyplan chosen plan", plan.names, plan.gammas, drafters, temperature, eos
            )
        )
    if grid:
        seen = {(tuple(m.spec.chain), tuple(m.spec.gammas)) for m in methods if m.spec.engine == "polyplan"}
        for i, r in enumerate(plan.runners_up, start=2):
            key = (tuple(r["chain"]), tuple(r["gammas"]))
            if key not in seen and len(r["chain"]) > 1:
                seen.add(key)
                methods.append(
                    _polyplan_chain(
                        f"grid-rank{i}", f"runner-up #{i}", r["chain"], r["gammas"], drafters, temperature, eos
                    )
                )
        for level in range(len(plan.gammas)):
            for step in (-1, 1):
                g = list(plan.gammas)
                g[level] += step
                key = (tuple(plan.names), tuple(g))
                if g[level] >= 1 and key not in seen:
                    seen.add(key)
                    methods.append(
                        _polyplan_chain(
                            f"grid-gamma{level + 2}{step:+d}",
                            f"chosen chain, gammas {g}",
                            plan.names,
                            g,
                            drafters,
                            temperature,
                            eos,
                        )
                    )
    return methods


def also_methods(
    methods: list[BenchMethod],
    chains: list[tuple[list[str], list[int]]],
    drafters: Callable[[str], Drafter],
    temperature: float,
    eos: list[int],
) -> list[BenchMethod]:
    """Static chains the user asked for (``bench --also``), except those already measured."""
    seen = {(tuple(m.spec.chain), tuple(m.spec.gammas)) for m in methods if m.spec.engine == "polyplan"}
    out = []
    for names, gammas in chains:
        if (tuple(names), tuple(gammas)) in seen:
            continue
        seen.add((tuple(names), tuple(gammas)))
        label = " <- ".join(names) + f", gammas {gammas}"
        out.append(_polyplan_chain(f"also-{len(out) + 1}", label, names, gammas, drafters, temperature, eos))
    return out


def _polyplan_chain(name, label, chain, gammas, drafters, temperature, eos) -> BenchMethod:
    return polyplan_method(
        MethodSpec(name, label, "polyplan", list(chain), list(gammas)),
        [drafters(n) for n in chain],
        list(gammas),
        temperature=temperature,
        eos=eos,
    )


def _hf_assisted(target_name, target, d_name, d, g, temperature, eos) -> list[BenchMethod]:
    from polyplan.models.model_free import PromptLookupDrafter

    if d.point_mass:
        # transformers has no fitted n-gram table: its prompt lookup is the closest model-free
        # drafter it offers, so an n-gram plan is compared against that.
        max_n = int(getattr(getattr(d, "_index", None), "max_n", 3)) if isinstance(d, PromptLookupDrafter) else 3
        return [
            hf_method(
                MethodSpec(
                    "hf-assisted-default",
                    f"transformers prompt lookup ({HF_PROMPT_LOOKUP_DEFAULT} tokens)",
                    "transformers",
                    [target_name, d_name],
                    [None],
                ),
                target.model,
                temperature=temperature,
                eos=eos,
                prompt_lookup=(HF_PROMPT_LOOKUP_DEFAULT, max_n),
            ),
            hf_method(
                MethodSpec(
                    "hf-assisted-gamma",
                    f"transformers prompt lookup, gamma {g}",
                    "transformers",
                    [target_name, d_name],
                    [g],
                ),
                target.model,
                temperature=temperature,
                eos=eos,
                prompt_lookup=(g, max_n),
            ),
        ]
    if getattr(d, "model", None) is None:
        return []
    return [
        hf_method(
            MethodSpec(
                "hf-assisted-default",
                "transformers assisted generation (defaults)",
                "transformers",
                [target_name, d_name],
                [None],
            ),
            target.model,
            temperature=temperature,
            eos=eos,
            assistant=d.model,
        ),
        hf_method(
            MethodSpec(
                "hf-assisted-gamma",
                f"transformers assisted generation, gamma {g}",
                "transformers",
                [target_name, d_name],
                [g],
            ),
            target.model,
            temperature=temperature,
            eos=eos,
            assistant=d.model,
            assistant_config={
                "num_assistant_tokens": g,
                "num_assistant_tokens_schedule": "constant",
                "assistant_confidence_threshold": 0.0,
            },
        ),
    ]


def request_predictions(
    records: list[RunRecord], policy: Any, prompts: Sequence[tuple[str, list[int]]], max_new_tokens: int
) -> dict[str, Any] | None:
    """The adaptive plan's predicted request time (proofs/prefill.md, the setting its start picks)
    beside the measured one, per prompt, given the horizon each run actually had (the answer's
    length is the workload's, not the model's to predict per prompt); and the target alone's."""
    if policy is None or getattr(policy, "requests", None) is None or not policy.requests.knows_prefill:
        return None
    rows, errors = [], {"polyplan-plan": [], AUTOREGRESSIVE: []}
    for pid, ids in prompts:
        for method in errors:
            mine = [r for r in records if r.prompt == pid and r.method == method]
            if not mine:
                continue
            horizon = int(statistics.median(r.new_tokens for r in mine))
            first = policy.start(dict(policy.priors), len(ids), horizon, exact_horizon=True)
            if first is None:
                return None
            p = first.prediction
            predicted = p.request_s if method != AUTOREGRESSIVE else p.autoregressive_request_s
            measured = statistics.median(r.seconds for r in mine)
            errors[method].append(abs(predicted - measured) / measured)
            rows.append(
                {
                    "prompt": pid,
                    "method": method,
                    "prompt_tokens": len(ids),
                    "new_tokens": horizon,
                    "setting": [policy.names[m] for m in first.decision.members],
                    "predicted_s": predicted,
                    "measured_s": measured,
                }
            )
    summary = {m: {"median_error": statistics.median(e), "max_error": max(e)} for m, e in errors.items() if e}
    return {"note": "predicted at the horizon each run had (its new tokens)", "errors": summary, "runs": rows}


def attach_predictions(
    methods: Sequence[BenchMethod],
    plan: Plan,
    profile: Profile | None,
    profile_path: Path | None,
    context: float,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Both predictors' time per token for every polyplan method, re-predicted at the bench's
    actual mean context and generation length when the profile is at hand (else the plan's
    stored predictions)."""
    note: dict[str, Any] = {"context": context, "max_new_tokens": max_new_tokens, "source": "plan"}
    predictors = {}
    if profile is not None:
        from polyplan.planner.predictors import load_traces, make_predictor

        note["source"] = "profile"
        try:
            traces = load_traces(profile, profile_path) if profile.traces else None
        except UserError:
            traces = None
        for name in ("iid", "replay"):
            if name == "replay" and traces is None:
                continue
            predictors[name] = make_predictor(
                name, profile, mode=plan.mode, context=context, traces=traces, horizon=max_new_tokens
            )
    for m in methods:
        s = m.spec
        if s.engine == "transformers" and s.name != AUTOREGRESSIVE and None in s.gammas:
            continue  # adaptive schedule: no fixed-gamma prediction
        if s.name == REFERENCE:
            continue  # the profile's T_target(1) is the one-token decoding, not this run's passes
        chain, gammas = tuple(s.chain), tuple(g for g in s.gammas if g is not None)
        if predictors:
            for name, p in predictors.items():
                e = p.predict(chain, gammas)
                s.predicted[name] = e.time_per_token
                s.predicted_levels[name] = {
                    "tokens_per_pass": [x if math.isfinite(x) else None for x in e.tokens_per_pass],
                    "mean_acceptance_length": e.mean_acceptance_length,
                }
        else:
            if s.name == "polyplan-plan":
                s.predicted = {k: v["time_per_token_s"] for k, v in plan.predictions.items()}
            elif s.name == AUTOREGRESSIVE:
                s.predicted = {k: v["autoregressive_time_per_token_s"] for k, v in plan.predictions.items()}
    return note


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
    also: list[tuple[list[str], list[int]]] | None = None,
) -> dict[str, Any]:
    """Run the comparison and return the results document (not yet saved; ``complete`` is false
    when it was interrupted). ``encoded_prompts`` (with ``prompt_categories``) replace the
    prompt set, for tests and callers that tokenise themselves. The chosen plan runs as
    ``polyplan run`` runs it (adaptive) beside its static version; ``static``: static only.
    ``also``: more static chains (names, gammas) measured in the same interleaved run."""
    log = log or (lambda msg: None)
    if repeats < 1 or prompts < 1 or max_new_tokens < 1:
        raise UserError("--repeats, --prompts and --max-new-tokens must all be >= 1")
    temperature = float(plan.settings.get("temperature", 1.0)) if plan.mode == "sampling" else 0.0
    loaded: dict[str, Drafter] = {}

    def drafter(name: str) -> Drafter:
        if name not in loaded:
            log(f"loading {name}")
            loaded[name] = pool.drafter(name)
        return loaded[name]

    if encoded_prompts is None:
        # read and encode first: a bad prompt file fails before any model loads
        selected, encoded_prompts, workload = encode_prompts(pool.tokenizer, prompts, prompts_file)
    else:
        encoded_prompts = list(encoded_prompts)[:prompts]
        cats = prompt_categories or {}
        selected = [
            Prompt(pid, cats.get(pid, "uncategorized"), "", "", (), f"prompt {pid}") for pid, _ in encoded_prompts
        ]
        workload = {
            "name": "given",
            "sha256": None,
            "count": len(selected),
            "categories": {c: sum(p.category == c for p in selected) for c in {p.category for p in selected}},
        }
    target = drafter(plan.target)
    if eos is None:
        from polyplan.profiler.pool_inputs import eos_token_ids

        eos = (
            eos_token_ids(pool.tokenizer, getattr(target, "model", None))
            if hasattr(target, "model")
            else list(getattr(target, "eos_token_ids", None) or eos_token_ids(pool.tokenizer))
        )
    policy = None
    if not static:
        from polyplan.assemble import plan_policy

        policy = plan_policy(plan, plan_path, note=log)
    methods = plan_methods(plan, drafter, temperature=temperature, eos=eos, grid=grid, hf=hf, policy=policy)
    methods += also_methods(methods, also or [], drafter, temperature, eos)
    check_prompts_fit(selected, encoded_prompts, list(loaded.values()), max_new_tokens)
    skipped = {}
    for m in list(methods):
        if m.spec.engine == "transformers" and m.spec.name != AUTOREGRESSIVE:
            # transformers may not support every derived drafter (e.g. a quantized assistant):
            # say so in the results instead of failing the whole comparison
            try:
                m.generate(encoded_prompts[0][1], 4, seed)
            except Exception as e:  # noqa: BLE001 - any library failure means "not comparable here"
                log(f"skipping {m.spec.label}: {type(e).__name__}: {e}")
                skipped[m.spec.name] = f"{type(e).__name__}: {e}"
                methods.remove(m)

    profile = profile_path = None
    pp = Path(plan.profile.get("path", ""))
    if not pp.is_absolute():
        pp = Path(plan_path).parent / pp if not pp.exists() else pp
    if plan.profile.get("path") and pp.exists():
        profile_path = pp
        profile = Profile.load(pp)
        if not plan.check_profile(pp):
            log(f"warning: {pp} changed since the plan was made; predictions use the current profile")
    context = statistics.mean(len(p) for _, p in encoded_prompts) + max_new_tokens / 2
    prediction_note = attach_predictions(methods, plan, profile, profile_path, context, max_new_tokens)

    log(f"{len(methods)} methods x {len(encoded_prompts)} prompts x {repeats} repeats")
    stopped = None
    try:
        records, prefill = run_interleaved(
            methods,
            encoded_prompts,
            drafters=loaded,
            repeats=repeats,
            max_new_tokens=max_new_tokens,
            seed=seed,
            log=log,
        )
    except BenchInterrupted as stop:
        records, prefill = stop.records, stop.prefill
        stopped = (
            f"{stop.reason} after {len({(r.repeat, r.prompt) for r in records})} of "
            f"{repeats * len(encoded_prompts)} prompt runs"
        )
        log(f"{stopped}: summarising what was measured")
    specs = [m.spec for m in methods]
    end_to_end = summarize(specs, records)
    decoded = decode_records(records, methods, prefill)
    decode = summarize(specs, decoded)
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
    chosen = "polyplan-plan" if any(m.spec.name == "polyplan-plan" for m in methods) else "polyplan-two-level"
    from polyplan.profiler.machine import machine_facts

    machine = machine_facts(target.device)
    machine["summary"] = (
        f"{machine.get('gpu') or machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}"
    )
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "plan": {
            "path": str(plan_path),
            "sha256": file_sha256(plan_path) if Path(plan_path).exists() else "",
            "chain": plan.names,
            "gammas": plan.gammas,
            "mode": plan.mode,
            "predictor": plan.settings.get("predictor"),
        },
        "settings": {
            "prompts": len(encoded_prompts),
            "repeats": repeats,
            "max_new_tokens": max_new_tokens,
            "mode": plan.mode,
            "temperature": temperature,
            "seed": seed,
            "grid": grid,
            "prediction": prediction_note,
            "timing": "decode-only (each member's prefill pass timed separately and subtracted); "
            "end-to-end figures under end_to_end_*",
        },
        "workload": workload,
        "complete": stopped is None,
        "stopped": stopped,
        "methods": end_to_end,
        "by_category": by_category(specs, decoded, {p.id: p.category for p in selected}),
        "by_prompt_length": by_prompt_length(specs, records, decoded, {pid: len(ids) for pid, ids in encoded_prompts}),
        "requests": request_predictions(records, policy, encoded_prompts, max_new_tokens),
        "regret": regret(end_to_end, chosen) if grid else None,
        "skipped": skipped,
        "prefill_s": {f"{p}/{n}": v for (p, n), v in prefill.items()},
        "runs": [r.as_dict() for r in records],
    }
