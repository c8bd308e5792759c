"""The bench's speed reference: the target's own GGUF decoded by llama.cpp alone.

Where polyplan is and is not the fastest way to get these tokens: a user holding the GGUF the
target's weights come from could decode it in llama.cpp directly, one token per pass, with no
speculation. That row is timed interleaved with the other methods like every other, but it is NOT
lossless: its output is llama.cpp's arithmetic over the quantized weights, so the bench counts the
prompts on which its tokens equal the target's instead of asserting it, and keeps it out of every
comparison between plans (``MethodSpec.speed_reference``).

The target's own GGUF (docs/pools.md): the target itself when it is a llama.cpp member, otherwise
the first llama.cpp member that runs the target's source GGUF as it is (same source, no
``derivation``). The float32 SmolLM2 target is dequantized from ``smollm2-135m:q4``'s Q4_1 file,
Qwen2.5-Coder-1.5B's bf16 from ``qwen2.5-coder-1.5b:q4``'s Q4_K_M file.

The decode loop is llama.cpp's own (as its ``simple`` example): the prompt in batches of at most
512 tokens with logits at the last position only, then one token per ``llama_decode``, each chosen
by llama.cpp's greedy sampler, in a ``Llama`` context of its own with the threads of the chain's
llama.cpp members (so no other member's state is touched)."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from polyplan.bench.methods import BenchMethod
from polyplan.bench.results import LLAMACPP_ALONE, MethodSpec
from polyplan.documents.plan import Plan
from polyplan.errors import UserError

_N_BATCH = 512


def own_gguf_member(pool: Any) -> str | None:
    """The pool member that is the target's own weights in llama.cpp (see the module doc), or None;
    also None for pool-like objects without member specs (tests' tiny pools)."""
    if not hasattr(pool, "members") or not hasattr(pool, "source"):
        return None
    target = pool.member(pool.target)
    if target.llama_cpp:
        return target.name
    label = pool.source(target.name).label
    for m in pool.members:
        if m.llama_cpp and m.quantization is None and pool.source(m.name).label == label:
            return m.name
    return None


def _threads(pool: Any, plan: Plan, member: str) -> int:
    """The threads of the plan's first llama.cpp member (the chain it is compared with), else the member's."""
    for name in [*plan.names, member]:
        spec = pool.member(name)
        if spec.llama_cpp:
            return int(spec.options["threads"])
    return int(pool.member(member).options["threads"])  # pragma: no cover - member is llama.cpp


def llamacpp_alone_method(
    pool: Any, plan: Plan, *, temperature: float, eos: Sequence[int], longest: int
) -> tuple[BenchMethod | None, str | None]:
    """(the method, None) or (None, why it is left out). ``longest``: prompt plus new tokens of
    the longest request, which must fit the member's n_ctx."""
    member = own_gguf_member(pool)
    if member is None:
        return None, "the pool has no llama.cpp member running the GGUF of the target's own weights"
    if temperature > 0:
        return None, "the llama.cpp reference decodes greedily; this plan samples"
    from polyplan.models.llamacpp_runtime import check_runs, import_llama_cpp

    spec = pool.member(member)
    n_ctx, threads, flash_attn = int(spec.options["n_ctx"]), _threads(pool, plan, member), spec.options["flash_attn"]
    if longest > n_ctx:
        return None, f"{member} holds {n_ctx} tokens (n_ctx); the longest request needs {longest}"
    try:
        lc = import_llama_cpp()
        gguf = pool.member_gguf(member)
        check_runs(gguf)  # a library that dies with SIGILL here fails in a child process, not this one
        llama = lc.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=min(_N_BATCH, n_ctx),
            n_ubatch=min(_N_BATCH, n_ctx),
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=bool(flash_attn),
            logits_all=False,
            verbose=False,
        )
    except (UserError, ValueError, RuntimeError, OSError) as e:
        return None, f"{member}: {str(e).splitlines()[0][:200]}"
    reference = {
        "gguf": member,
        "lossless": False,
        "threads": threads,
        "flash_attn": bool(flash_attn),
        "n_ctx": n_ctx,
    }
    method_spec = MethodSpec(
        LLAMACPP_ALONE,
        f"llama.cpp alone ({member}), not lossless",
        "llama.cpp",
        [member],
        [],
        speed_reference=reference,
    )
    return BenchMethod(method_spec, [member], _greedy_loop(lc, llama, member, list(eos))), None


def _greedy_loop(lc: Any, llama: Any, member: str, eos: list[int]) -> Callable[..., Any]:
    """``generate(prompt, max_new_tokens, seed)`` over one llama.cpp context: greedy, stopping at
    ``eos`` like the other methods. Its one level reports the prefill it timed (decode-only figures)."""
    sampler = lc.llama_sampler_init_greedy()
    stop = set(eos)

    def decode(ids: list[int]) -> None:
        # the batch only points at ``tokens``: it must stay referenced until llama_decode returns.
        # ``llama`` is read here so the closure keeps the model and its context alive.
        tokens = (lc.llama_token * len(ids))(*ids)
        rc = lc.llama_decode(llama.ctx, lc.llama_batch_get_one(tokens, len(ids)))
        if rc != 0:
            raise RuntimeError(f"{member}: llama_decode returned {rc}")

    def generate(prompt: list[int], max_new_tokens: int, seed: int) -> tuple[list[int], list[dict[str, Any]]]:
        del seed  # greedy
        lc.llama_memory_clear(lc.llama_get_memory(llama.ctx), True)  # every request prefills from empty
        t0 = time.perf_counter()
        for start in range(0, len(prompt), _N_BATCH):
            decode(prompt[start : start + _N_BATCH])  # logits at each piece's last token only
        prefill_s = time.perf_counter() - t0
        tokens: list[int] = []
        passes = 1
        while True:
            token = int(lc.llama_sampler_sample(sampler, llama.ctx, -1))
            tokens.append(token)
            if token in stop or len(tokens) >= max_new_tokens:
                break  # the last token is not fed: its logits would not be used
            decode([token])
            passes += 1
        level = {
            "name": member,
            "passes": passes,
            "prefill_tokens": len(prompt),
            "prefill_time_s": prefill_s,
            "model_time_s": time.perf_counter() - t0,
        }
        return tokens, [level]

    weakref.finalize(generate, lc.llama_sampler_free, sampler)
    return generate
