"""What polyplan's llama.cpp chain member (``LlamaCppDrafter``) adds to a pass over raw ``llama_decode``.

One process, one loaded GGUF, one llama.cpp context (so the same build, threads, flash-attention
setting and KV cache), ``--context`` cached tokens. For each pass size n (1 and 16 by default),
interleaved over ``--repeats`` rounds (the order of the methods rotates every round):

* ``raw read``: ``llama_decode`` of a prebuilt batch of the same n tokens, logits requested for
  the rows the executor reads (a drafting pass of one token: its row; a verification of n - 1
  drafts: all n), then each row copied out of ``llama_get_logits_ith`` into a preallocated array;
* ``member score``: ``member.score(tokens, last=rows)``, the executor's call;
* ``raw argmax``: ``llama_decode`` with only the last row's logits, then ``np.argmax`` over that
  row in place: the least greedy drafting can cost;
* ``member greedy``: the member's greedy drafting call (``score_argmax`` where the member has it,
  else what the executor did before it: ``score(tokens, last=1)[-1:].argmax(-1)``).

Besides the medians and their ratio, "added us" is the median over rounds of (member - raw) in
the same round, paired. Every pass is followed by a rollback to the cached context (``llama_memory_seq_rm`` for the raw
ones, ``member.rollback`` for the member's), outside the timed region. Medians over the rounds; the
machine is shared, so compare ratios from the same run only. No timing is asserted.

    .venv/bin/python benchmarks/llamacpp_member_overhead.py [--pool smollm2]
        [--members smollm2-135m:q8_0,smollm2-135m:q4_0] [--passes 1,16] [--repeats 60] [--out r.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polyplan.models.llamacpp_drafter import LlamaCppDrafter
from polyplan.profiler.machine import machine_facts
from polyplan.weights.pools import load_pool

METHODS = ("raw read", "member score", "raw argmax", "member greedy")


def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it (model name, family, model)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        return "unknown"
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"


class RawPasses:
    """Raw llama.cpp passes on the member's own context: batches built once, outputs preallocated."""

    def __init__(self, member: LlamaCppDrafter, tokens: list[int], context: int, passes: list[int]) -> None:
        self.lc, self.ctx, self.mem = member._lc, member._ctx, member._mem
        self.vocab = member.vocab_size
        self.context = context
        self.batches: dict[tuple[int, int], Any] = {}
        for n in passes:
            for rows in {1, n}:
                self.batches[(n, rows)] = self._batch(tokens[:n], rows)
        self.out = np.empty((len(tokens), self.vocab), dtype=np.float32)

    def _batch(self, tokens: list[int], rows: int) -> Any:
        batch = self.lc.llama_batch_init(len(tokens), 0, 1)
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = self.context + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i >= len(tokens) - rows
        return batch

    def _decode(self, n: int, rows: int) -> None:
        rc = self.lc.llama_decode(self.ctx, self.batches[(n, rows)])
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def read(self, n: int, rows: int) -> None:
        """Decode, then copy each requested row out of llama.cpp's output buffer."""
        self._decode(n, rows)
        row_bytes = self.vocab * 4
        dst = self.out.ctypes.data
        for i in range(rows):
            ctypes.memmove(dst + i * row_bytes, self.lc.llama_get_logits_ith(self.ctx, n - rows + i), row_bytes)

    def argmax(self, n: int) -> int:
        """Decode with the last row only and take its argmax in place (no copy of the row)."""
        self._decode(n, 1)
        row = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, -1), shape=(self.vocab,))
        return int(row.argmax())

    def rollback(self) -> None:
        self.lc.llama_memory_seq_rm(self.mem, 0, self.context, -1)

    def close(self) -> None:
        for batch in self.batches.values():
            self.lc.llama_batch_free(batch)


def member_greedy(member: LlamaCppDrafter) -> Callable[[torch.Tensor], torch.Tensor]:
    """The member's greedy drafting call, or the executor's way before there was one."""
    if hasattr(member, "score_argmax"):
        return member.score_argmax
    return lambda ids: member.score(ids, last=1)[-1:].argmax(dim=-1)


def measure(member: LlamaCppDrafter, passes: list[int], context: int, repeats: int) -> dict[str, dict[str, list]]:
    """Interleaved timings (seconds) per pass size and method; the first round is a warm-up."""
    ids = torch.randint(0, member.vocab_size, (context + max(passes),), generator=torch.Generator().manual_seed(0))
    member.reset()
    member.score(ids[:context], last=1)
    raw = RawPasses(member, ids[context:].tolist(), context, passes)
    greedy = member_greedy(member)
    samples: dict[str, dict[str, list]] = {str(n): {m: [] for m in METHODS} for n in passes}
    try:
        for rep in range(repeats + 1):
            for n in passes:
                feed, rows = ids[context : context + n], (1 if n == 1 else n)
                calls: dict[str, Callable[[], Any]] = {
                    "raw read": lambda n=n, rows=rows: raw.read(n, rows),
                    "member score": lambda feed=feed, rows=rows: member.score(feed, last=rows),
                    "raw argmax": lambda n=n: raw.argmax(n),
                    "member greedy": lambda feed=feed: greedy(feed),
                }
                shift = rep % len(METHODS)
                for name in METHODS[shift:] + METHODS[:shift]:
                    t0 = time.perf_counter()
                    calls[name]()
                    dt = time.perf_counter() - t0
                    if name.startswith("raw"):
                        raw.rollback()
                    else:
                        member.rollback(context)
                    if rep:
                        samples[str(n)][name].append(dt)
    finally:
        raw.close()
    return samples


def python_work(member: LlamaCppDrafter, passes: list[int], context: int, repeats: int) -> dict[str, float]:
    """Microseconds of the member's own work per pass, llama_decode stubbed out (it returns at once
    and llama.cpp's output buffer keeps the rows of the last real decode): what polyplan adds,
    free of the machine's noise. The raw read's own copy is measured the same way."""
    ids = torch.randint(0, member.vocab_size, (context + max(passes),), generator=torch.Generator().manual_seed(1))
    member.reset()
    member.score(ids[:context], last=1)
    # the last real decode gives every batch index a row, so llama_get_logits_ith(i) stays valid
    member.score(ids[context : context + max(passes)])
    member.rollback(context)
    raw = RawPasses(member, ids[context:].tolist(), context, passes)
    greedy, lc = member_greedy(member), member._lc
    decode, lc.llama_decode = lc.llama_decode, lambda ctx, batch: 0
    out: dict[str, float] = {}
    try:
        for n in passes:
            feed, rows = ids[context : context + n], (1 if n == 1 else n)
            calls = {
                "raw read": lambda n=n, rows=rows: raw.read(n, rows),
                "member score": lambda feed=feed, rows=rows: member.score(feed, last=rows),
                "raw argmax": lambda n=n: raw.argmax(n),
                "member greedy": lambda feed=feed: greedy(feed),
            }
            for name, call in calls.items():
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t0)
                    member.rollback(context)
                out[f"{n} {name} us"] = 1e6 * statistics.median(times)
    finally:
        lc.llama_decode = decode
        raw.close()
    return out


def summarize(samples: dict[str, dict[str, list]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for n, by_method in samples.items():
        med = {m: statistics.median(v) for m, v in by_method.items()}
        out[n] = {f"{m} ms": 1000 * t for m, t in med.items()}
        out[n]["score / raw read"] = med["member score"] / med["raw read"]
        out[n]["greedy / raw argmax"] = med["member greedy"] / med["raw argmax"]
        # paired by round (the two ran back to back): steadier than a difference of medians
        for key, member, raw in (("score", "member score", "raw read"), ("greedy", "member greedy", "raw argmax")):
            added = [a - b for a, b in zip(by_method[member], by_method[raw], strict=True)]
            out[n][f"{key} added us"] = 1e6 * statistics.median(added)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--members", default="smollm2-135m:q8_0,smollm2-135m:q4_0", help="llama.cpp members")
    ap.add_argument("--passes", default="1,16", help="pass sizes (tokens)")
    ap.add_argument("--context", type=int, default=128, help="cached tokens before each pass")
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--label", default="", help="a note kept in the JSON (e.g. before / after)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    pool = load_pool(args.pool)
    passes = [int(x) for x in args.passes.split(",")]
    facts = machine_facts()
    cpu = cpu_name()
    result: dict[str, Any] = {"label": args.label, "cpu": cpu, "machine": facts, "context": args.context}
    result.update(repeats=args.repeats, passes=passes, members={})
    print(f"cpu: {cpu}, {facts.get('cores')} cores; llama-cpp-python {facts.get('llama_cpp_python')}")
    print(f"build: {facts.get('llama_cpp_build')}; torch {facts.get('torch')}")
    print(f"{args.repeats} interleaved rounds, {args.context} cached tokens, medians (ms)\n")
    print("| member | n | raw read | member score | ratio | added us | raw argmax | member greedy | ratio | added us |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    works: list[tuple[str, dict[str, float]]] = []
    for name in args.members.split(","):
        member = pool.drafter(name)
        if not isinstance(member, LlamaCppDrafter):
            raise SystemExit(f"{name} is not a llama.cpp member")
        samples = measure(member, passes, args.context, args.repeats)
        summary = summarize(samples)
        result["members"][name] = {
            "threads": member.threads,
            "flash_attn": member.flash_attn,
            "summary": summary,
            "samples_s": samples,
        }
        work = python_work(member, passes, args.context, 10 * args.repeats)
        result["members"][name]["work_without_decode_us"] = work
        for n, s in summary.items():
            print(
                f"| {name} | {n} | {s['raw read ms']:.2f} | {s['member score ms']:.2f} | {s['score / raw read']:.3f} "
                f"| {s['score added us']:.0f} | {s['raw argmax ms']:.2f} | {s['member greedy ms']:.2f} "
                f"| {s['greedy / raw argmax']:.3f} | {s['greedy added us']:.0f} |"
            )
        member.close()
        works.append((name, work))
    print("\nwork per pass, llama_decode stubbed out (medians, us): raw read / score / raw argmax / greedy")
    for name, work in works:
        for n in passes:
            cells = " / ".join(f"{work[f'{n} {m} us']:.1f}" for m in METHODS)
            print(f"  {name} n={n}: {cells}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
