"""What a drafter's window keeps of its acceptance, by position in the answer.

The profile measures a window's cost in acceptance over the first 32 answer tokens of two long
prompts. Once the answer is longer than the window, the window holds mostly the answer itself, so
what it loses should shrink with the position. This measures that on a prompt file: the target's
greedy answer of ``--tokens`` tokens (written by greedy speculative decoding with the full-context
drafter: the same tokens), then, teacher-forced, how often the drafter's argmax equals the
target's with the whole prompt and with the window, per position bucket.

    .venv/bin/python benchmarks/window_position.py --prompts-file benchmarks/prompts/samples/long-six.jsonl
        [--pool smollm2] [--member smollm2-135m:q8_0] [--window 256] [--tokens 256] [-o OUT.json]
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from polyplan.data.prompt_file import read_prompt_file
from polyplan.documents.profile import WINDOW_SINK
from polyplan.models.windowed import WindowedDrafter
from polyplan.profiler.acceptance import greedy_reference, teacher_force
from polyplan.profiler.machine import machine_facts
from polyplan.profiler.pool_inputs import chat_encoder
from polyplan.weights.pools import load_pool

BUCKETS = [(0, 32), (32, 64), (64, 128), (128, 256), (256, 512)]


def agreement_by_bucket(target_argmax: list[int], drafter_argmax: list[int]) -> dict[str, list[int]]:
    """``"lo-hi": [agreements, positions]`` for each bucket the answer reaches."""
    out = {}
    for lo, hi in BUCKETS:
        pairs = list(zip(target_argmax[lo:hi], drafter_argmax[lo:hi], strict=True))
        if pairs:
            out[f"{lo}-{hi}"] = [sum(a == b for a, b in pairs), len(pairs)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts-file", required=True)
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--member", default="smollm2-135m:q8_0")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--sink", type=int, default=WINDOW_SINK)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("-o", "--output", default="benchmarks/results/window-position.json")
    args = ap.parse_args()

    pool = load_pool(args.pool)
    target, drafter = pool.drafter(pool.target), pool.drafter(args.member)
    encode = chat_encoder(pool.tokenizer)
    rows = []
    for prompt in read_prompt_file(args.prompts_file).prompts:
        ids = encode(prompt.text)
        if len(ids) <= args.window + args.sink:
            continue  # the window would not cut this prompt
        # no EOS: every answer runs the full length, so every bucket is measured
        reference = greedy_reference(target, ids, args.tokens, (), helper=drafter, gamma=12)
        want = teacher_force(target, ids, reference, 8).argmax(-1).tolist()
        full = teacher_force(drafter, ids, reference, 8).argmax(-1).tolist()
        windowed = (
            teacher_force(WindowedDrafter(drafter, args.window, args.sink), ids, reference, 8).argmax(-1).tolist()
        )
        row = {
            "prompt": prompt.id,
            "prompt_tokens": len(ids),
            "full": agreement_by_bucket(want, full),
            "window": agreement_by_bucket(want, windowed),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    def pooled(kind: str) -> dict[str, float]:
        totals: dict[str, list[int]] = {}
        for r in rows:
            for b, (a, n) in r[kind].items():
                t = totals.setdefault(b, [0, 0])
                t[0], t[1] = t[0] + a, t[1] + n
        return {b: a / n for b, (a, n) in totals.items()}

    summary = {"full": pooled("full"), "window": pooled("window")}
    doc = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "settings": vars(args),
        "prompts": rows,
        "summary": summary,
    }
    out = Path(args.output)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        f"Window {args.window} (+{args.sink} sink) of `{args.member}` against the whole prompt, teacher-forced on the "
        f"target's greedy answer ({args.tokens} tokens), `{args.prompts_file}`; {doc['machine']['cpu']}, "
        f"{doc['machine']['cores']} cores; {doc['created']}",
        "",
        "| answer positions | full-context agreement | windowed agreement | window keeps |",
        "|---|---:|---:|---:|",
    ]
    for b in summary["full"]:
        f, w = summary["full"][b], summary["window"].get(b, float("nan"))
        lines.append(f"| {b} | {f:.3f} | {w:.3f} | {w / f:.2f} |")
    lines += [
        "",
        "| prompt | tokens | " + " | ".join(summary["full"]) + " |",
        "|---|---:|" + "---:|" * len(summary["full"]),
    ]
    for r in rows:
        cells = [f"{r['window'][b][0]}/{r['window'][b][1]}" if b in r["window"] else "-" for b in summary["full"]]
        lines.append(f"| {r['prompt']} | {r['prompt_tokens']} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
