"""Where a drafter disagrees with the target, by its own top-two logit gap, and what draft stops would
save: the figures of proofs/draft-stop.md.

    # teacher-force the drafters on the target's greedy answers (about 3 minutes on 2 cores)
    .venv/bin/python benchmarks/draft_stop_replay.py collect -o gaps.json \\
        --prompts-file benchmarks/prompts/qa-code.jsonl --prompts-file benchmarks/prompts/translation-math.jsonl
    # per gap bin agreement, and a replay of gamma-15 rounds with and without a stop at each bound
    .venv/bin/python benchmarks/draft_stop_replay.py replay gaps.json --profile PROFILE.json

The replay is decode only: a round costs gamma_used * T_d(1) + T_v(gamma_used + 1) from the profile's
curves at its first context, and after a rejection the drafter's teacher-forced gaps stand in for the
ones of its own (discarded) continuation."""

from __future__ import annotations

import argparse
import bisect
import json
import math

import numpy as np

from polyplan.documents.profile import GAP_EDGES

DRAFTERS = ("smollm2-135m:q8_0", "smollm2-135m:q4")


def collect(prompt_files: list[str], out: str, new_tokens: int) -> None:
    import torch

    import polyplan
    from polyplan.commands.quickstart import DEFAULT_PROMPT
    from polyplan.data.prompt_file import prompt_set
    from polyplan.profiler.pool_inputs import chat_encoder
    from polyplan.weights import load_pool

    pool = load_pool("smollm2")
    target, *drafters = pool.drafters([pool.target, *DRAFTERS])
    encode = chat_encoder(pool.tokenizer)
    prompts = [("demo", DEFAULT_PROMPT)] + [(p.id, p.text) for f in prompt_files for p in prompt_set(f).prompts]
    rows = {}
    for pid, text in prompts:
        ids = encode(text)
        answer = polyplan.Chain([target]).generate(ids, max_new_tokens=new_tokens).tokens
        full = torch.tensor(ids + list(answer))
        rows[pid] = {}
        for d in drafters:
            d.reset()
            top = d.score(full, last=len(answer) + 1)[:-1].topk(2)
            agree = (top.indices[:, 0] == torch.tensor(answer)).tolist()
            gap = (top.values[:, 0] - top.values[:, 1]).tolist()
            rows[pid][d.name] = {"agree": agree, "gap": gap}
        print(pid, len(ids), len(answer), flush=True)
    with open(out, "w") as f:
        json.dump(rows, f)


def _curve(profile: dict, name: str):
    lat = profile["latency"][name]
    return lambda n: float(np.interp(n, lat["new_tokens"], lat["median_s"][0]))


def _replay(agree: np.ndarray, gap: np.ndarray, rates: list[float], bound: float, t_v, t_d, gamma: int) -> float:
    """Seconds to produce the answer in gamma-``gamma`` rounds, a draft ending once the product of its
    tokens' calibrated acceptance falls below ``bound`` (0: never)."""
    pos, seconds = 0, 0.0
    while pos < len(agree):
        k, survive = 0, 1.0
        while k < gamma and pos + k < len(agree):
            k += 1
            survive *= rates[bisect.bisect_right(GAP_EDGES, gap[pos + k - 1]) - 1]
            if survive < bound:
                break
        accepted = 0
        while accepted < k and agree[pos + accepted]:
            accepted += 1
        seconds += k * t_d(1) + t_v(k + 1)
        pos += accepted + 1
    return seconds


def replay(path: str, profile_path: str, gamma: int) -> None:
    with open(path) as f:
        rows = json.load(f)
    with open(profile_path) as f:
        profile = json.load(f)
    t_v = _curve(profile, profile["target"])
    for name in DRAFTERS:
        agree = np.concatenate([np.array(r[name]["agree"], bool) for pid, r in rows.items() if pid != "demo"])
        gap = np.concatenate([np.array(r[name]["gap"]) for pid, r in rows.items() if pid != "demo"])
        bins = np.searchsorted(GAP_EDGES, gap, side="right") - 1
        rates = [float(agree[bins == i].mean()) if (bins == i).any() else 1.0 for i in range(len(GAP_EDGES))]
        cells = ", ".join(f"{e}: {int((bins == i).sum())} / {rates[i]:.3f}" for i, e in enumerate(GAP_EDGES))
        print(f"{name}: {len(agree)} positions, {int((~agree).sum())} disagreements; gap bin: positions / agreement")
        print("  " + cells)
        t_d = _curve(profile, name)
        for bound in (0.0, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8):
            speedups, demo = [], None
            for pid, r in rows.items():
                a, g = np.array(r[name]["agree"], bool), np.array(r[name]["gap"])
                x = len(a) * t_v(1) / _replay(a, g, rates, bound, t_v, t_d, gamma)
                demo = x if pid == "demo" else demo
                speedups += [] if pid == "demo" else [x]
            pooled = math.exp(sum(map(math.log, speedups)) / len(speedups))
            worst = min(speedups)
            print(f"  bound {bound:.2f}: decode speedup {pooled:.3f} (geo mean), worst {worst:.3f}, demo {demo:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="step", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--prompts-file", action="append", default=[])
    c.add_argument("--max-new-tokens", type=int, default=96)
    c.add_argument("-o", "--output", required=True)
    r = sub.add_parser("replay")
    r.add_argument("gaps")
    r.add_argument("--profile", required=True)
    r.add_argument("--gamma", type=int, default=15)
    args = ap.parse_args()
    if args.step == "collect":
        collect(args.prompts_file, args.output, args.max_new_tokens)
    else:
        replay(args.gaps, args.profile, args.gamma)


if __name__ == "__main__":
    main()
