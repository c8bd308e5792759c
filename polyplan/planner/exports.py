"""Take a plan to a serving engine: its best two-level sub-plan as transformers assisted-generation
settings, as a vLLM ``speculative_config`` and, when both members are llama.cpp GGUFs, as
``llama-server`` draft-model arguments.

Neither engine runs chains deeper than two levels, so the export is the fastest chain
(target, one drafter) built from the plan's own members. Field names checked against
transformers 5.x (``GenerationConfig``: ``num_assistant_tokens``, ``num_assistant_tokens_schedule``,
``assistant_confidence_threshold``, ``prompt_lookup_num_tokens``, ``max_matching_ngram_size``;
the assistant's settings are read from ``assistant_model.generation_config``) and vLLM's
``SpeculativeConfig`` (``method`` "draft_model" / "ngram", ``model``, ``num_speculative_tokens``,
``prompt_lookup_max``, ``prompt_lookup_min``). llama-server's flags were checked against the
llama.cpp vendored by llama-cpp-python 0.3.36 (common/arg.cpp): ``--spec-draft-model`` (alias
``-md`` / ``--model-draft``), ``--spec-draft-n-max``, ``--spec-draft-n-min``,
``--spec-draft-p-min``; the older ``--draft-max`` / ``--draft-min`` were removed there."""

from __future__ import annotations

from typing import Any

#: prompt-lookup n-gram window used by the exports when the candidate does not say otherwise
#: (vLLM's documented example uses prompt_lookup_max=4; transformers defaults to 2)
NGRAM_MAX, NGRAM_MIN = 4, 1


def _model_ref(member: dict[str, Any]) -> str:
    return member.get("source") or member["name"]


def _is_llamacpp(member: dict[str, Any]) -> bool:
    return member.get("backend") == "llama.cpp"


def _backend_notes(target: dict[str, Any], drafter: dict[str, Any], engine: str) -> list[str]:
    """transformers and vLLM load checkpoints, not llama.cpp's runtime: say so rather than
    export a pair they would run with other weights and other speeds."""
    return [
        f"{m['name']} runs in llama.cpp (GGUF {m.get('gguf') or 'file'}); {engine} would load its source "
        "checkpoint instead, with other numerics and speed than profiled"
        for m in (target, drafter)
        if _is_llamacpp(m)
    ]


def _derived_note(member: dict[str, Any]) -> list[str]:
    d = member.get("derivation") or ""
    if d:
        return [
            f"{member['name']} is derived ({d}); load the same derived copy yourself "
            "(the engine only sees the source checkpoint named here)"
        ]
    return []


def transformers_export(
    target: dict[str, Any], drafter: dict[str, Any], gamma: int, *, mode: str, temperature: float
) -> dict[str, Any]:
    """``model.generate(**generate_kwargs, assistant_model=<loaded assistant>)`` after applying
    ``assistant_generation_config`` to ``assistant_model.generation_config``."""
    sampling = {"do_sample": True, "temperature": temperature} if mode == "sampling" else {"do_sample": False}
    out: dict[str, Any] = {"target_model": _model_ref(target), "notes": _derived_note(target)}
    if drafter.get("point_mass"):
        out["generate_kwargs"] = {
            **sampling,
            "prompt_lookup_num_tokens": int(gamma),
            "max_matching_ngram_size": int(drafter.get("ngram_max", NGRAM_MAX)),
        }
        out["assistant_model"] = None
        out["assistant_generation_config"] = {}
    else:
        out["assistant_model"] = _model_ref(drafter)
        # The assistant's own generation_config drives drafting in transformers; a constant
        # schedule and no confidence cut-off reproduce the plan's fixed gamma.
        out["assistant_generation_config"] = {
            "num_assistant_tokens": int(gamma),
            "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": 0.0,
        }
        out["generate_kwargs"] = dict(sampling)
        out["notes"] += _derived_note(drafter)
    out["notes"] += _backend_notes(target, drafter, "transformers")
    return out


def vllm_export(target: dict[str, Any], drafter: dict[str, Any], gamma: int) -> dict[str, Any]:
    """``LLM(model=..., speculative_config=...)``."""
    if drafter.get("point_mass"):
        cfg = {
            "method": "ngram",
            "num_speculative_tokens": int(gamma),
            "prompt_lookup_max": int(drafter.get("ngram_max", NGRAM_MAX)),
            "prompt_lookup_min": int(drafter.get("ngram_min", NGRAM_MIN)),
        }
        notes: list[str] = []
    else:
        cfg = {"method": "draft_model", "model": _model_ref(drafter), "num_speculative_tokens": int(gamma)}
        notes = _derived_note(drafter)
    notes += _backend_notes(target, drafter, "vLLM")
    return {"model": _model_ref(target), "speculative_config": cfg, "notes": _derived_note(target) + notes}


def llama_server_export(
    target: dict[str, Any], drafter: dict[str, Any], gamma: int, *, mode: str
) -> dict[str, Any] | None:
    """``llama-server`` arguments for a pair of llama.cpp GGUFs (None for any other pair).

    A fixed draft of ``gamma`` tokens, as the plan assumes: ``--spec-draft-n-max gamma``, no
    minimum, and ``--spec-draft-p-min 0`` so that drafting never stops on a low-confidence
    token. llama.cpp drafts greedily and verifies by comparing with the target's own choice:
    greedy output is the target's; with sampling the output still follows the target, but a
    draft is accepted only when the target samples that same token, so acceptance is lower than
    the plan's sum-min(p, q) estimate."""
    if not (_is_llamacpp(target) and not drafter.get("point_mass") and _is_llamacpp(drafter)):
        return None
    args = [
        "-m",
        target.get("gguf", ""),
        "--spec-draft-model",
        drafter.get("gguf", ""),
        "--spec-draft-n-max",
        str(int(gamma)),
        "--spec-draft-n-min",
        "0",
        "--spec-draft-p-min",
        "0",
    ]
    notes = [
        "older llama-server builds name these --model-draft, --draft-max, --draft-min and --draft-p-min",
        "the GGUF paths are polyplan cache entries (POLYPLAN_CACHE, default ~/.cache/polyplan), in shell syntax",
    ]
    if mode == "sampling":
        notes.append(
            "with sampling, llama.cpp accepts a draft token only when the target samples the same token: "
            "the output follows the target, the acceptance is lower than this plan predicts"
        )
    return {"args": args, "notes": notes}
