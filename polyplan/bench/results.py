"""The bench results document: its runs summarized into figures, saved and loaded (pure Python: plots
read it without torch). What a reader sees of it (the Markdown table, the lines `bench` prints) is
polyplan.bench.report.

JSON layout (version 1)::

    {"schema": "polyplan.bench", "version": 1, "created", "machine": {...},
     "plan": {"path", "sha256", "chain", "gammas", "mode", "predictor"},
     "settings": {"prompts", "repeats", "max_new_tokens", "temperature", "seed", "grid"},
     "methods": [{"name", "label", "engine", "chain", "gammas",
                  "measured": {"time_per_token_s", "tokens_per_s", "speedup", "time_per_token_by_repeat_s",
                               "new_tokens", "mean_acceptance_length": [per verifying level] | null,
                               "tokens_per_pass": [L_1..L_k] | null, "matches_autoregressive": fraction | null
                               (identical to the autoregressive run, or to the "target-verification-numerics"
                               run where there is one)},
                  "predicted": {"iid": s/token, "replay": s/token},
                  "predicted_levels": {"iid": {"tokens_per_pass", "mean_acceptance_length"}, ...},
                  "error": {"iid": |p - m| / m, "replay": ...},
                  "error_speedup": {"iid": |predicted speedup - measured| / measured, ...}}],
     "workload": {"name": "built-in" | prompt file name, "sha256", "count", "categories"},
     "complete": bool (false: interrupted; "stopped" says after how many prompt runs),
     "by_category": {"<category>": {"prompts": n, "methods": {"<method name>": {"time_per_token_s",
                     "tokens_per_s", "speedup", "matches_autoregressive"}}}},
     "regret": {"chosen", "best_measured", "regret"} | null,
     "runs": [{"method", "prompt", "repeat", "new_tokens", "seconds", "levels": [...] | null}]}

Aggregation: time per token = the sum over prompts of each prompt's median seconds over repeats,
divided by the sum of its median new tokens (the ratio of expectations the theory predicts; a
median per prompt drops one disturbed run without dropping a whole pass over the prompts).
``time_per_token_by_repeat_s`` keeps the per-repeat totals. The speedup is the median over repeats
of the paired ratio autoregressive / method, and the regret the median over repeats of the paired
ratio chosen / best (paired ratios cancel load that drifts between repeats)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from polyplan.documents.files import DocumentError, atomic_write_json, read_json

BENCH_SCHEMA = "polyplan.bench"
BENCH_VERSION = 1
AUTOREGRESSIVE = "autoregressive"
#: a target whose one-token decoding differs numerically from its verification (a llama.cpp
#: target, an exact half-precision one) also runs alone in its verification numerics: that output is
#: the lossless reference
REFERENCE = "target-verification-numerics"
#: the target's own GGUF decoded by llama.cpp alone (polyplan.bench.llamacpp_alone): a speed
#: reference, not lossless, kept out of every comparison between plans
LLAMACPP_ALONE = "llamacpp-alone"


@dataclass
class RunRecord:
    method: str
    prompt: str
    repeat: int
    new_tokens: int
    seconds: float
    levels: list[dict[str, Any]] | None = None  # executor per-level statistics
    tokens: list[int] = field(default_factory=list)  # kept in memory for the lossless check, not saved
    #: the adaptive controller's speed factors at this request's start: each member's time in the
    #: chain's earlier passes over the profile's price (executor.guard.MemberSpeed); None elsewhere
    start_speed: dict[str, dict[str, float]] | None = None
    #: the setting that start chose, at the expected horizon: {"members", "gammas", "windows":
    #: [[member, window or None], ...]}; None where there was no start decision
    start_setting: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("tokens")
        return d


@dataclass
class MethodSpec:
    name: str  # unique key, e.g. "polyplan-plan"
    label: str  # what a reader sees
    engine: str  # "transformers" | "polyplan" | "llama.cpp" (a llama.cpp target decoding alone)
    chain: list[str]
    gammas: list[int | None]
    predicted: dict[str, float] = field(default_factory=dict)  # predictor -> seconds per token
    #: predictor -> {"tokens_per_pass": [L_1..L_k], "mean_acceptance_length"}: where a miss comes from
    predicted_levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: draft tree size per drafter ([] or all 1: linear drafts)
    tree_nodes: list[int] = field(default_factory=list)
    #: set on a row that is a speed reference, not a lossless method (``lossless``: false, and how
    #: it ran); None on every other row
    speed_reference: dict[str, Any] | None = None


def summarize(specs: list[MethodSpec], records: list[RunRecord]) -> list[dict[str, Any]]:
    """Per method: medians over repeats, paired speedups, per-level acceptance, prediction errors."""
    repeats = sorted({r.repeat for r in records})
    by = {(r.method, r.repeat): [] for r in records}
    for r in records:
        by[(r.method, r.repeat)].append(r)

    def tpt(method: str, rep: int) -> float | None:
        rs = by.get((method, rep), [])
        tokens = sum(r.new_tokens for r in rs)
        return sum(r.seconds for r in rs) / tokens if tokens else None

    def robust_tpt(method: str) -> float | None:
        per_prompt: dict[str, list[RunRecord]] = {}
        for r in records:
            if r.method == method:
                per_prompt.setdefault(r.prompt, []).append(r)
        seconds = sum(statistics.median(r.seconds for r in rs) for rs in per_prompt.values())
        tokens = sum(statistics.median(r.new_tokens for r in rs) for rs in per_prompt.values())
        return seconds / tokens if tokens else None

    ref_method = REFERENCE if any(r.method == REFERENCE for r in records) else AUTOREGRESSIVE
    reference = {(r.prompt, r.repeat): r.tokens for r in records if r.method == ref_method}
    out = []
    for spec in specs:
        per_rep = [tpt(spec.name, rep) for rep in repeats]
        per_rep = [x for x in per_rep if x is not None]
        measured: dict[str, Any] = {"time_per_token_by_repeat_s": per_rep}
        if per_rep:
            m = robust_tpt(spec.name)
            measured["time_per_token_s"] = m
            measured["tokens_per_s"] = 1.0 / m if m > 0 else None
            ratios = []
            for rep in repeats:
                a, b = tpt(AUTOREGRESSIVE, rep), tpt(spec.name, rep)
                if a and b:
                    ratios.append(a / b)
            measured["speedup"] = statistics.median(ratios) if ratios else None
            measured["worst_prompt_speedup"], measured["worst_prompt"] = worst_prompt_speedup(records, spec.name)
            measured.update(alone_and_speculating(records, spec.name))
        mine = [r for r in records if r.method == spec.name]
        measured["new_tokens"] = sum(r.new_tokens for r in mine)
        measured.update(_level_stats(mine))
        if reference and spec.name != ref_method:
            same = [r.tokens == reference[(r.prompt, r.repeat)] for r in mine if (r.prompt, r.repeat) in reference]
            measured["matches_autoregressive"] = sum(same) / len(same) if same else None
        else:
            measured["matches_autoregressive"] = None
        error = {}
        mt = measured.get("time_per_token_s")
        for k, p in spec.predicted.items():
            if mt and p:
                error[k] = abs(p - mt) / mt
        out.append(
            {
                "name": spec.name,
                "label": spec.label,
                "engine": spec.engine,
                "chain": spec.chain,
                "gammas": spec.gammas,
                **({"tree_nodes": spec.tree_nodes} if any(n > 1 for n in spec.tree_nodes) else {}),
                **({"speed_reference": spec.speed_reference} if spec.speed_reference else {}),
                "measured": measured,
                "predicted": dict(spec.predicted),
                "predicted_levels": dict(spec.predicted_levels),
                "error": error,
            }
        )
    _speedup_errors(out)
    return out


def _per_repeat_tpt(records: list[RunRecord], method: str) -> dict[int, float]:
    """Seconds per new token of ``method`` in each repeat (all prompts of the repeat together)."""
    sums: dict[int, list[float]] = {}
    for r in records:
        if r.method == method:
            acc = sums.setdefault(r.repeat, [0.0, 0.0])
            acc[0] += r.seconds
            acc[1] += r.new_tokens
    return {rep: s / n for rep, (s, n) in sums.items() if n}


def _paired(records: list[RunRecord], slower: str, faster: str) -> float | None:
    """Median over repeats of ``slower``'s time per token / ``faster``'s (paired: drift cancels)."""
    a, b = _per_repeat_tpt(records, slower), _per_repeat_tpt(records, faster)
    ratios = [a[rep] / b[rep] for rep in a if rep in b and b[rep] > 0]
    return statistics.median(ratios) if ratios else None


def add_speed_reference_figures(
    methods: list[dict[str, Any]], records: list[RunRecord], decoded: list[RunRecord], chosen: str
) -> None:
    """On each speed-reference row (``speed_reference``): on how many prompts its tokens equal the
    target's in every repeat (``equal_prompts`` of ``compared_prompts``; the reference is the one
    ``matches_autoregressive`` uses), and the chosen plan's speed over its own, end to end and decode
    (``chosen_plan_vs_this``, > 1: the plan is faster). Nothing is asserted: it is not lossless."""
    ref = REFERENCE if any(r.method == REFERENCE for r in records) else AUTOREGRESSIVE
    reference = {(r.prompt, r.repeat): r.tokens for r in records if r.method == ref}
    for m in methods:
        if not m.get("speed_reference"):
            continue
        same: dict[str, bool] = {}
        for r in records:
            if r.method == m["name"] and (r.prompt, r.repeat) in reference:
                same[r.prompt] = same.get(r.prompt, True) and r.tokens == reference[(r.prompt, r.repeat)]
        m["measured"]["equal_prompts"] = sum(same.values())
        m["measured"]["compared_prompts"] = len(same)
        m["measured"]["chosen_plan_vs_this"] = (
            {
                "method": chosen,
                "end_to_end": _paired(records, m["name"], chosen),
                "decode": _paired(decoded, m["name"], chosen),
            }
            if any(r.method == chosen for r in records)
            else None
        )


def by_category(specs: list[MethodSpec], records: list[RunRecord], categories: dict[str, str]) -> dict[str, Any]:
    """The headline figures of every method on each prompt category alone (same aggregation as
    overall: medians per prompt, paired speedups per repeat)."""
    out: dict[str, Any] = {}
    for cat in dict.fromkeys(categories.values()):
        ids = {pid for pid, c in categories.items() if c == cat}
        mine = [r for r in records if r.prompt in ids]
        if not mine:
            continue
        keep = ("time_per_token_s", "tokens_per_s", "speedup", "matches_autoregressive")
        out[cat] = {
            "prompts": len(ids),
            "methods": {m["name"]: {k: m["measured"].get(k) for k in keep} for m in summarize(specs, mine)},
        }
    return out


#: prompt-length ranges of the bench's per-length table: [previous edge, this edge) tokens
LENGTH_EDGES = (256, 512, 1024, 2048)


def length_bucket(tokens: int) -> str:
    lo = 0
    for edge in LENGTH_EDGES:
        if tokens < edge:
            return f"{lo}-{edge - 1}"
        lo = edge
    return f">= {lo}"


def by_prompt_length(
    specs: list[MethodSpec], records: list[RunRecord], decoded: list[RunRecord], lengths: dict[str, int]
) -> dict[str, Any]:
    """Per prompt-length range: every method's end-to-end and decode-only figures and its worst
    prompt (end to end), aggregated as overall."""
    buckets: dict[str, set[str]] = {}
    for pid, n in sorted(lengths.items(), key=lambda kv: kv[1]):
        buckets.setdefault(length_bucket(n), set()).add(pid)
    out: dict[str, Any] = {}
    for bucket, ids in buckets.items():
        mine = [r for r in records if r.prompt in ids]
        if not mine:
            continue
        e2e = summarize(specs, mine)
        dec = {m["name"]: m["measured"] for m in summarize(specs, [r for r in decoded if r.prompt in ids])}
        out[bucket] = {
            "prompts": len(ids),
            "prompt_tokens": [min(lengths[i] for i in ids), max(lengths[i] for i in ids)],
            "methods": {
                m["name"]: {
                    "end_to_end_speedup": m["measured"].get("speedup"),
                    "worst_prompt_end_to_end_speedup": m["measured"].get("worst_prompt_speedup"),
                    "speedup": dec[m["name"]].get("speedup"),
                    "matches_autoregressive": m["measured"].get("matches_autoregressive"),
                }
                for m in e2e
            },
        }
    return out


def prompt_ratios(records: list[RunRecord], method: str) -> dict[str, list[float]]:
    """Per prompt, the paired ratios autoregressive / ``method`` request time, one per repeat."""
    by: dict[tuple[str, str, int], float] = {(r.method, r.prompt, r.repeat): r.seconds for r in records}
    out: dict[str, list[float]] = {}
    for (m, pid, rep), seconds in by.items():
        if m == method and (AUTOREGRESSIVE, pid, rep) in by and seconds > 0:
            out.setdefault(pid, []).append(by[(AUTOREGRESSIVE, pid, rep)] / seconds)
    return out


def worst_prompt_speedup(
    records: list[RunRecord], method: str, prompts: set[str] | None = None
) -> tuple[float | None, str | None]:
    """The lowest per-prompt speedup over autoregressive decoding (median over repeats of the
    paired ratio of request times) and which prompt it was; ``prompts``: among those only."""
    return _worst(prompt_ratios(records, method), prompts)


def _worst(ratios: dict[str, list[float]], prompts: set[str] | None = None) -> tuple[float | None, str | None]:
    worst: tuple[float | None, str | None] = (None, None)
    for pid, rs in ratios.items():
        if prompts is not None and pid not in prompts:
            continue
        r = statistics.median(rs)
        if worst[0] is None or r < worst[0]:
            worst = (r, pid)
    return worst


def target_alone_prompts(records: list[RunRecord], method: str) -> set[str]:
    """The prompts a polyplan method ran with its target alone in every repeat (nothing drafted for
    it: the start's choice), whose ratio to autoregressive decoding is the same work timed twice."""
    used: dict[str, bool] = {}
    for r in records:
        if r.method == method and r.levels and len(r.levels) > 1:  # a one-member chain has no start to choose
            used[r.prompt] = used.get(r.prompt, False) or _drafted(r.levels)
    return {pid for pid, drafted in used.items() if not drafted}


def _drafted(levels: list[dict[str, Any]]) -> bool:
    """Whether anything was drafted for the target in one run: the tokens it was given to verify
    (``drafted``). Records from before that field: a drafter's passes, or tokens the target
    accepted (a model-free drafter such as the n-gram reserve makes no passes)."""
    if "drafted" in levels[0]:
        return levels[0]["drafted"] > 0
    return levels[0].get("accepted", 0) > 0 or any(lv.get("passes", 0) > 0 for lv in levels[1:])


def alone_and_speculating(records: list[RunRecord], method: str) -> dict[str, Any]:
    """What separates the start's choices from the machine's noise in a per-prompt worst case: the
    prompts run by the target alone with the spread of their per-repeat ratios, and the worst
    prompt among those where the method speculated."""
    alone = target_alone_prompts(records, method)
    if not alone:
        return {}
    per_prompt = prompt_ratios(records, method)
    ratios = [x for pid, rs in per_prompt.items() if pid in alone for x in rs]
    worst, pid = _worst(per_prompt, set(per_prompt) - alone)
    return {
        "target_alone_prompts": sorted(alone),
        "target_alone_ratio_range": [min(ratios), max(ratios)] if ratios else None,
        "worst_prompt_speculating_end_to_end_speedup": worst,
        "worst_prompt_speculating": pid,
    }


def alone_row(methods: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The row that the profile's T_target(1) prices: the lossless reference where it carries a
    prediction (an exact half-precision target, whose profiled pass is the reference's), else the
    autoregressive row; None without either."""
    reference = next((m for m in methods if m["name"] == REFERENCE and m.get("predicted")), None)
    return reference or next((m for m in methods if m["name"] == AUTOREGRESSIVE), None)


def _speedup_errors(methods: list[dict[str, Any]]) -> None:
    """``error_speedup[predictor] = |predicted speedup - measured speedup| / measured speedup``,
    the predicted speedup being predicted alone time / predicted time. Unlike the time-per-token
    error it does not move when the whole machine runs faster or slower at bench time than when
    the profile was measured (10-50% over minutes on this project's shared CPU). The alone time
    is the row the profile's T_target(1) priced: the lossless reference where it carries a
    prediction (an exact half-precision target), else autoregressive; measured speedups are taken
    over that same row (a ratio of the two rows' medians over autoregressive, not paired)."""
    base = alone_row(methods)
    base_speedup = base["measured"].get("speedup") if base is not None else None
    for m in methods:
        m["error_speedup"] = {}
        measured = m["measured"].get("speedup")
        if base is None or not measured or not base_speedup:
            continue
        measured = measured / base_speedup
        for k, p in m["predicted"].items():
            p_alone = base["predicted"].get(k)
            if p and p_alone:
                m["error_speedup"][k] = abs(p_alone / p - measured) / measured


def _level_stats(records: list[RunRecord]) -> dict[str, Any]:
    """Pool the executor's per-level counters over runs: acceptance length = (accepted + passes
    that verify) / verifying passes; L_i = output tokens / passes of level i."""
    with_levels = [r for r in records if r.levels]
    if not with_levels:
        return {"mean_acceptance_length": None, "tokens_per_pass": None}
    depth = len(with_levels[0].levels)
    tokens = sum(r.new_tokens for r in with_levels)
    passes = [sum(r.levels[i].get("passes", 0) for r in with_levels) for i in range(depth)]
    mal = []
    for i in range(depth - 1):  # verifying levels
        verifs = sum(r.levels[i].get("verifications", r.levels[i].get("passes", 0)) for r in with_levels)
        acc = sum(r.levels[i].get("accepted", 0) for r in with_levels)
        mal.append((acc + verifs) / verifs if verifs else None)
    return {
        "mean_acceptance_length": mal,
        "tokens_per_pass": [tokens / p if p else None for p in passes],
    }


def regret(methods: list[dict[str, Any]], chosen: str) -> dict[str, Any] | None:
    """How much slower the chosen plan ran than the best polyplan plan measured beside it:
    ``max over plans m of median over repeats of (chosen / m) - 1``, at least 0 (paired per
    repeat, so load that drifts between repeats cancels; unpaired medians when repeats are
    missing)."""
    timed = [m for m in methods if m["measured"].get("time_per_token_s") and m["engine"] == "polyplan"]
    c = next((m for m in timed if m["name"] == chosen), None)
    if c is None:
        return None

    def slower_than(other: dict[str, Any]) -> float:
        a_reps = c["measured"].get("time_per_token_by_repeat_s") or []
        b_reps = other["measured"].get("time_per_token_by_repeat_s") or []
        paired = [a / b for a, b in zip(a_reps, b_reps, strict=False) if a and b]
        if paired and len(a_reps) == len(b_reps):
            return statistics.median(paired)
        return c["measured"]["time_per_token_s"] / other["measured"]["time_per_token_s"]

    best = max(timed, key=slower_than)
    ratio = slower_than(best)
    if ratio <= 1.0:
        best, ratio = c, 1.0
    return {
        "chosen": chosen,
        "best_measured": best["name"],
        "best_chain": best["chain"],
        "best_gammas": best["gammas"],
        "regret": ratio - 1.0,
    }


def save_results(path: str | Path, doc: dict[str, Any]) -> None:
    doc = {"schema": BENCH_SCHEMA, "version": BENCH_VERSION, **doc}
    atomic_write_json(path, doc)


def load_results(path: str | Path) -> dict[str, Any]:
    doc = read_json(path, schema=BENCH_SCHEMA, max_version=BENCH_VERSION)
    if not isinstance(doc.get("methods"), list):
        raise DocumentError(f"{path}: bench results without a methods list")
    return doc
