"""Turn a loaded pool (``polyplan.models.load_pool``) into the profiler's inputs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from polyplan.documents.profile import Candidate
from polyplan.errors import UserError
from polyplan.models.drafter import Drafter
from polyplan.profiler.settings import ProfileInputs


def chat_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """Prompt text -> token ids, wrapped in the tokenizer's chat template when it has one
    (instruct models answer a bare string poorly, and the references should be real answers)."""
    if tokenizer is None:
        raise UserError("profiling needs the target's tokenizer to encode the built-in prompts")

    def encode(text: str) -> list[int]:
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return list(tokenizer(text)["input_ids"])

    return encode


def eos_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Every id that ends a generation: the tokenizer's EOS and the model's generation config."""
    ids: list[int] = []
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if value is None:
            continue
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    return sorted(set(int(i) for i in ids))


def _param_count(drafter: Drafter) -> int | None:
    counted = getattr(drafter, "param_count", None)  # llama.cpp members count their GGUF's
    if isinstance(counted, int):
        return counted
    model = getattr(drafter, "model", None)
    if model is None:
        return None
    return int(sum(p.numel() for p in model.parameters()))


def _random_weight_drafter(pool: Any, name: str) -> Drafter:
    """The member's architecture (its config) with freshly initialised weights: same shapes,
    dtype, derivation and device, so the same latency; acceptance would be meaningless."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from polyplan.models.model_drafter import ModelDrafter
    from polyplan.weights import source_cache, sources as src
    from polyplan.weights.derive import apply_derivation

    spec = pool.member(name)
    config = AutoConfig.from_pretrained(source_cache.require_prepared(pool.source(name)))
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=src.DTYPES[spec.dtype])
    device = "cuda" if spec.device == "auto" and torch.cuda.is_available() else spec.device
    if device == "auto":
        device = "cpu"
    model = model.to(device).eval()
    apply_derivation(model, spec.derivation)
    return ModelDrafter(model, name)


def inputs_from_pool(
    pool: Any,
    members: Sequence[str] | None = None,
    random_weights: bool = False,
    log: Callable[[str], None] | None = None,
) -> ProfileInputs:
    """Load the chosen members (all by default; the target is always included, first)."""
    log = log or (lambda msg: None)
    if members:
        names = list(dict.fromkeys(members))
    else:
        # every member that can run here: a llama.cpp member without its library is left out
        # (named in the log); asked for by name, it is an error that names the install command
        names = []
        for n in pool.names:
            why = pool.unavailable(n) if hasattr(pool, "unavailable") else None
            if why and n != pool.target:
                log(f"leaving out {n}: {why}")
            else:
                names.append(n)
    for n in names:
        pool.member(n)  # unknown names fail before any weights load
    if pool.target not in names:
        log(f"adding the target {pool.target} (references and verification need it)")
    names = [pool.target] + [n for n in names if n != pool.target]

    drafters: list[Drafter] = []
    for n in names:
        log(f"loading {n}")
        spec = pool.member(n)
        # a GGUF cannot be re-initialised cheaply: llama.cpp members keep their real weights
        if random_weights and not spec.model_free and not getattr(spec, "llama_cpp", False):
            drafters.append(_random_weight_drafter(pool, n))
        else:
            drafters.append(pool.drafter(n))

    candidates = []
    for n, d in zip(names, drafters, strict=True):
        spec = pool.member(n)
        derivation = "" if spec.model_free or spec.derivation == "none" else spec.derivation
        candidates.append(
            Candidate(
                name=n,
                source=spec.describe() if hasattr(spec, "describe") else str(spec.source),
                derivation=derivation,
                dtype="" if d.point_mass else str(getattr(d, "dtype", "")).removeprefix("torch."),
                device=str(d.device),
                params=_param_count(d),
                point_mass=bool(d.point_mass),
                random_weights=bool(random_weights and not d.point_mass and not getattr(spec, "llama_cpp", False)),
                backend=getattr(spec, "backend", "transformers"),
                gguf=portable_gguf_path(getattr(d, "gguf_path", None)),
                min_pass=int(getattr(d, "min_pass", 1)) if d.pads_passes else 1,
            )
        )
    tokenizer = pool.tokenizer
    target = drafters[0]
    return ProfileInputs(
        pool=pool.name,
        target=pool.target,
        drafters=drafters,
        candidates=candidates,
        encode=chat_encoder(tokenizer),
        eos_ids=eos_token_ids(tokenizer, getattr(target, "model", None))
        if hasattr(target, "model")
        else list(getattr(target, "eos_token_ids", None) or eos_token_ids(tokenizer)),
    )


def portable_gguf_path(path: str | os.PathLike | None) -> str:
    """A GGUF path as profiles and plans record it: under the polyplan cache, relative to it in
    shell syntax (``${POLYPLAN_CACHE:-$HOME/.cache/polyplan}/gguf/...``), so that a plan made on
    one machine names the same entry on another; elsewhere the absolute path; '' for none."""
    if not path:
        return ""
    from polyplan.cache import cache_root

    resolved = Path(path).resolve()
    try:
        inside = resolved.relative_to(cache_root().resolve())
    except ValueError:
        return str(resolved)
    return "${POLYPLAN_CACHE:-$HOME/.cache/polyplan}/" + inside.as_posix()
