"""What a reader sees of a bench results document (polyplan.bench.results): its Markdown table and
the plain lines and per-group rows the ``bench`` command prints. Pure Python, no torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyplan.bench.results import AUTOREGRESSIVE, LLAMACPP_ALONE, REFERENCE
from polyplan.chain_text import chain_column
from polyplan.documents.files import atomic_write_bytes


def request_error_text(errors: dict[str, dict[str, float]]) -> str:
    """One line per bench: each method's request-time error, split into prefills and decode where
    the executor measured its prefills."""
    out = []
    for method, e in errors.items():
        text = f"{method} median error {e['median_error']:.1%}, max {e['max_error']:.1%}"
        split = [f"{part} {e[key]:.1%}" for part in ("prefill", "decode") if (key := f"{part}_median_error") in e]
        text += f" (median: {', '.join(split)})" if split else ""
        if "calibrated_median_error" in e:
            text += (
                f", at the speed measured now {e['calibrated_median_error']:.1%} (max {e['calibrated_max_error']:.1%})"
            )
        if "retimed_median_error" in e:
            text += (
                f", as the executor re-timed it from the chain's earlier passes {e['retimed_median_error']:.1%} "
                f"(max {e['retimed_max_error']:.1%})"
            )
        out.append(text)
    return "; ".join(out)


def alone_lines(doc: dict[str, Any]) -> list[str]:
    """One line per method whose start sent some prompts to the target alone."""
    out = []
    for m in doc.get("methods", []):
        me = m.get("measured", {})
        alone = me.get("target_alone_prompts")
        if not alone:
            continue
        lo, hi = me.get("target_alone_ratio_range") or (None, None)
        spread = f", their repeats {lo:.2f}-{hi:.2f}x of autoregressive for the same work" if lo is not None else ""
        worst = me.get("worst_prompt_speculating_end_to_end_speedup")
        where = (
            f"; worst prompt where it speculated {worst:.2f}x ({me.get('worst_prompt_speculating')})"
            if worst is not None
            else ""
        )
        out.append(f"{m['name']}: {len(alone)} prompt(s) ran the target alone{spread}{where}")
    return out


def speed_text(speed: dict[str, dict[str, float]] | None) -> str:
    """The calibration's factors in one line (time now / as profiled, per member)."""
    if not speed:
        return ""
    parts = [f"{n} decode {f['decode']:.2f}, prefill {f['prefill']:.2f}" for n, f in speed.items()]
    return "time now / as profiled (calibration passes, median over repeats): " + "; ".join(parts)


def speed_reference_lines(doc: dict[str, Any]) -> list[str]:
    """One plain line per speed-reference row: its speed, how its tokens compare with the target's
    and where the chosen plan stands against it."""
    out = []
    for m in doc.get("methods", []):
        if not m.get("speed_reference"):
            continue
        me = m["measured"]
        e2e = me.get("end_to_end_time_per_token_s")
        text = (
            f"{m['label']}: {_fmt(e2e and 1 / e2e, '.1f')} tok/s end to end, "
            f"{_fmt(me.get('end_to_end_speedup'), '.2f')}x of the target "
            f"(decode {_fmt(me.get('tokens_per_s'), '.1f')} tok/s, {_fmt(me.get('speedup'), '.2f')}x); "
            f"its tokens equal the target's on {me.get('equal_prompts', '?')} of {me.get('compared_prompts', '?')} "
            "prompts"
        )
        vs = me.get("chosen_plan_vs_this")
        if vs and vs.get("end_to_end") is not None:
            faster = "the plan is faster here" if vs["end_to_end"] > 1 else "llama.cpp alone is faster here"
            text += (
                f"; the chosen plan ({vs['method']}) runs {vs['end_to_end']:.2f}x its speed end to end "
                f"(decode {_fmt(vs.get('decode'), '.2f')}x): {faster}"
            )
        out.append(text)
    why = (doc.get("skipped") or {}).get(LLAMACPP_ALONE)
    return out + ([f"No llama.cpp-alone reference: {why}"] if why else [])


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _levels(predicted: dict[str, Any] | None) -> str:
    L = (predicted or {}).get("tokens_per_pass")
    return " / ".join(_fmt(x, ".2f") for x in L) if L and len(L) > 1 else "-"


def _method_row(m: dict[str, Any]) -> str:
    """One method's row of the Markdown table."""
    me, pr, er = m["measured"], m["predicted"], m["error"]
    mal = me.get("mean_acceptance_length")
    L = me.get("tokens_per_pass")
    return (
        "| {label} | {chain} | {gam} | {e2e} | {worst} | {tps} | {sp} | {mal} | {L} | {Lp} | {mt} | {pi} / {pr_} "
        "| {ei} / {er_} "
        "| {si} / {sr} | {eq} |".format(
            label=m["label"],
            chain=chain_column(m["chain"]),
            gam=",".join("default" if g is None else str(g) for g in m["gammas"]) or "-",
            e2e=_fmt(me.get("end_to_end_speedup"), ".2f") + ("x" if me.get("end_to_end_speedup") else ""),
            worst=_fmt(me.get("worst_prompt_end_to_end_speedup"), ".2f")
            + ("x" if me.get("worst_prompt_end_to_end_speedup") else ""),
            tps=_fmt(me.get("tokens_per_s"), ".1f"),
            sp=_fmt(me.get("speedup"), ".2f") + ("x" if me.get("speedup") else ""),
            mal=" / ".join(_fmt(x, ".2f") for x in mal) if mal else "-",
            L=" / ".join(_fmt(x, ".2f") for x in L) if L else "-",
            Lp=_levels(m.get("predicted_levels", {}).get("replay")),
            mt=_fmt(me.get("time_per_token_s") and me["time_per_token_s"] * 1e3, ".2f"),
            pi=_fmt(pr.get("iid") and pr["iid"] * 1e3, ".2f"),
            pr_=_fmt(pr.get("replay") and pr["replay"] * 1e3, ".2f"),
            ei=_fmt(er.get("iid") and er["iid"] * 100, ".1f") + ("%" if "iid" in er else ""),
            er_=_fmt(er.get("replay") and er["replay"] * 100, ".1f") + ("%" if "replay" in er else ""),
            si=_percent(m.get("error_speedup", {}).get("iid")),
            sr=_percent(m.get("error_speedup", {}).get("replay")),
            eq=_fmt(me.get("matches_autoregressive"), ".2f"),
        )
    )


def markdown_table(doc: dict[str, Any]) -> str:
    s = doc.get("settings", {})
    w = doc.get("workload") or {}
    lines = [
        f"Bench of `{doc.get('plan', {}).get('path', '?')}`: {s.get('prompts')} prompts "
        f"({w.get('name', 'built-in')}) x {s.get('repeats')} repeats, "
        f"{s.get('max_new_tokens')} new tokens, {s.get('mode', 'greedy')} (temperature {s.get('temperature')}); "
        f"machine: {doc.get('machine', {}).get('summary', '?')}; {doc.get('created', '')}",
        "",
        "| method | chain | gammas | end to end | worst prompt | decode tokens/s | decode speedup "
        "| accept len per level | L_i | L_i predicted (replay) "
        "| measured ms/token | predicted ms/token iid / replay | error iid / replay "
        "| speedup error iid / replay | = AR |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    if doc.get("complete") is False:
        lines[1:1] = ["", f"**Incomplete**: {doc.get('stopped')}; figures cover the prompt runs measured."]
    if any(m["name"] == REFERENCE for m in doc["methods"]):
        lines[1:1] = [
            "",
            "Speedups are over the target's own one-token decoding; `= AR` compares outputs with the target "
            "decoding alone in the numerics it verifies with (its one-token kernels may flip a near-tie).",
        ]
    lines += [_method_row(m) for m in doc["methods"]]
    # the speed reference in words under the table: what it is (not lossless) and where the plan stands
    lines += [f"\n{line}" for line in speed_reference_lines(doc)]
    lines += _category_lines(doc)
    labels, rows = length_rows(doc)
    if rows:
        lines += [
            "",
            "Per prompt length: end-to-end speedup / worst prompt / decode speedup",
            "",
            "| prompt tokens | prompts | " + " | ".join(labels) + " |",
            "|---|---:|" + "---:|" * len(labels),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    req = doc.get("requests")
    if req and req.get("errors"):
        lines += [
            "",
            "Request time predicted (proofs/prefill.md, at each run's horizon) vs measured: "
            + request_error_text(req["errors"]),
        ]
        speed = speed_text(doc.get("settings", {}).get("speed"))
        lines += [f"({speed})"] if speed else []
    alone = alone_lines(doc)
    if alone:
        lines += ["", *(f"- {line}" for line in alone)]
    r = doc.get("regret")
    if r:
        lines += [
            "",
            f"Regret: chosen `{r['chosen']}` vs best measured `{r['best_measured']}` "
            f"({chain_column(r['best_chain'])}, gammas {r['best_gammas']}): {r['regret'] * 100:.1f}%",
        ]
    return "\n".join(lines) + "\n"


def _group_rows(
    doc: dict[str, Any], key: str, cell: Callable[[dict[str, Any]], str]
) -> tuple[list[str], list[list[str]]]:
    """The groups of ``doc[key]`` as (method labels, rows of [group, prompts, a cell per method but
    autoregressive]); nothing without groups."""
    groups = doc.get(key) or {}
    methods = [m for m in doc.get("methods", []) if m["name"] != AUTOREGRESSIVE]
    if not groups or not methods:
        return [], []
    rows = [
        [name, str(g["prompts"]), *[cell(g["methods"].get(m["name"]) or {}) for m in methods]]
        for name, g in groups.items()
    ]
    return [m["label"] for m in methods], rows


def category_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per category (and overall): each method's speedup over autoregressive and its tokens/s, as
    (method labels, rows of [category, prompts, cells...]); no rows for results without categories."""

    def cell(fig: dict[str, Any]) -> str:
        sp, tps = fig.get("speedup"), fig.get("tokens_per_s")
        return ("-" if sp is None else f"{sp:.2f}x") + ("" if tps is None else f" ({tps:.1f} tok/s)")

    labels, rows = _group_rows(doc, "by_category", cell)
    if rows:
        methods = [m for m in doc["methods"] if m["name"] != AUTOREGRESSIVE]
        rows.append(["all", str(doc.get("settings", {}).get("prompts", "")), *[cell(m["measured"]) for m in methods]])
    return labels, rows


def length_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per prompt-length range: each method's end-to-end speedup / worst prompt / decode speedup."""

    def cell(fig: dict[str, Any]) -> str:
        parts = [fig.get("end_to_end_speedup"), fig.get("worst_prompt_end_to_end_speedup"), fig.get("speedup")]
        return " / ".join("-" if x is None else f"{x:.2f}x" for x in parts)

    return _group_rows(doc, "by_prompt_length", cell)


def _category_lines(doc: dict[str, Any]) -> list[str]:
    labels, rows = category_rows(doc)
    if not rows:
        return []
    w = doc.get("workload") or {}
    lines = [
        "",
        f"Per category ({w.get('name', '?')}): speedup over autoregressive (tokens/s), decode time",
        "",
        "| category | prompts | " + " | ".join(labels) + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def save_markdown(path: str | Path, doc: dict[str, Any]) -> None:
    atomic_write_bytes(path, markdown_table(doc).encode())
