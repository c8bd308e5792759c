"""The methods ``polyplan bench`` compares, each a ``generate(prompt, max_new_tokens, seed)``:
autoregressive decoding with the target (transformers ``generate``), transformers assisted
generation (its defaults, and the plan's gamma for the same pair), polyplan's best two-level plan,
the chosen plan as ``polyplan run`` runs it (adaptive) and static, a tree plan's chain with linear
drafts (unless that is the best two-level plan, already run), the runners-up and gamma neighbours
with ``grid``, and chains asked for with ``--also``. No chain runs twice."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from polyplan.assemble import AssembledPlan
from polyplan.bench.results import (
    AUTOREGRESSIVE,
    REFERENCE,
    MethodSpec,
)
from polyplan.chain_text import chain_names
from polyplan.documents.plan import Plan
from polyplan.models.drafter import Drafter

#: HF documents prompt_lookup_num_tokens=10 in its examples; it has no default of its own
HF_PROMPT_LOOKUP_DEFAULT = 10


@dataclass
class BenchMethod:
    spec: MethodSpec
    members: list[str]  # pool members it needs (prefill accounting)
    generate: Callable[[list[int], int, int], tuple[list[int], list[dict[str, Any]] | None]]
    #: the speed factors the last ``generate``'s request started at and the setting its start chose
    #: (an adaptive plan's: ``RunRecord.start_speed`` and ``start_setting``)
    start_state: Callable[[], tuple[dict[str, dict[str, float]] | None, dict[str, Any] | None]] | None = None


def polyplan_method(
    spec: MethodSpec,
    drafters: Sequence[Drafter],
    gammas: Sequence[int],
    *,
    temperature: float,
    eos: list[int],
    controller: Any = None,
    verification_numerics: bool = False,
    draft_stop: Mapping[str, Any] | None = None,
) -> BenchMethod:
    """``verification_numerics``: a one-member chain decodes in the numerics its member verifies
    with, not as it does alone (see ``Chain``). Draft trees: ``spec.tree_nodes``; ``draft_stop``:
    the plan's draft stops (the plan's own rows run them, as ``polyplan run`` does)."""
    from polyplan.executor.front import Chain

    chain = Chain(
        list(drafters),
        gammas=list(gammas),
        controller=controller,
        verification_numerics=verification_numerics,
        tree_nodes=list(spec.tree_nodes) or None,
        draft_stop=draft_stop,
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
                "drafted": lv.num_draft_tokens,
                "accepted": lv.num_accepted_tokens,
                "model_time_s": lv.model_time_s,
                "prefill_tokens": lv.prefill_tokens,
                "prefill_time_s": lv.prefill_time_s,
                **({"draft_stops": lv.draft_stops} if lv.draft_stops else {}),
                **(
                    {"tree_nodes_drafted": lv.tree_nodes_drafted, "tree_nodes_accepted": lv.tree_nodes_accepted}
                    if lv.tree_rounds
                    else {}
                ),
            }
            for lv in result.stats.levels
        ]
        return list(result.tokens), levels

    def start_state() -> tuple[dict[str, dict[str, float]] | None, dict[str, Any] | None]:
        # the factors the controller re-timed its request model by at the last start (a copy), and
        # the setting that start chose on them
        factors = getattr(controller, "factors", None)
        first = getattr(controller, "first", None)
        setting = (
            {
                "members": list(first.decision.members),
                "gammas": list(first.decision.gammas),
                "windows": [[m, w] for m, w in sorted(first.windows.items())],
            }
            if first is not None
            else None
        )
        return ({n: dict(f) for n, f in factors.items()} if factors is not None else None), setting

    return BenchMethod(spec, list(spec.chain), generate, start_state if controller is not None else None)


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


def plan_methods(
    assembled: AssembledPlan,
    drafters: Callable[[str], Drafter],
    *,
    temperature: float,
    eos: list[int],
    grid: bool = False,
    hf: bool = True,
) -> list[BenchMethod]:
    """The methods compared for ``assembled.plan`` (see the module doc). ``assembled``: the plan as
    ``polyplan run`` runs it (``polyplan.assemble.assemble_plan`` with ``drafters`` as the loader);
    without a policy the plan runs static only."""
    plan = assembled.plan
    target = drafters(plan.target)
    methods = _target_methods(plan.target, target, temperature, eos)
    two = plan.two_level
    trees = list(plan.tree_nodes) if any(n > 1 for n in plan.tree_nodes) else []
    # the plan's members and gammas with linear drafts are the best two-level plan: run once
    linear_is_two = two is not None and list(two["chain"]) == plan.names and list(two["gammas"]) == plan.gammas
    same_as_two = linear_is_two and not trees
    if two is not None:
        d_name, g = two["chain"][1], int(two["gammas"][0])
        d = drafters(d_name)
        if hf and getattr(target, "model", None) is not None:
            methods += _hf_assisted(plan.target, target, d_name, d, g, temperature, eos)
        label = "polyplan best two-level plan" + (
            " (= the chosen plan without trees)" if trees and linear_is_two else ""
        )
        methods.append(
            polyplan_method(
                MethodSpec("polyplan-two-level", label, "polyplan", list(two["chain"]), [g]),
                [target, d],
                [g],
                temperature=temperature,
                eos=eos,
            )
        )
    methods += _chosen_plan_methods(assembled, drafters, trees, same_as_two, temperature, eos)
    if trees and not linear_is_two:  # the same members and gammas with linear drafts: what the trees add
        methods.append(
            _polyplan_chain(
                "polyplan-plan-linear",
                "polyplan chosen plan without trees (static, linear drafts)",
                plan.names,
                plan.gammas,
                drafters,
                temperature,
                eos,
            )
        )
    if grid:
        methods += _grid_methods(plan, methods, drafters, temperature, eos)
    return methods


def _target_methods(name: str, target: Drafter, temperature: float, eos: list[int]) -> list[BenchMethod]:
    """The target alone: the speed baseline, and the lossless reference where that differs."""
    if getattr(target, "model", None) is not None:
        methods = [
            hf_method(
                MethodSpec(AUTOREGRESSIVE, "autoregressive (transformers generate)", "transformers", [name], []),
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
                    [name],
                    [],
                ),
                [target],
                [],
                temperature=temperature,
                eos=eos,
            )
        ]
    if target.exact_as_target:
        # Losslessness is judged against the target decoding in the numerics it verifies with
        # (docs/staged-decoding.md, "Numerics"): llama.cpp's one-token kernels, or transformers'
        # one-token SDPA passes of a half-precision model, may flip a near-tie.
        methods.append(
            polyplan_method(
                MethodSpec(
                    REFERENCE,
                    "the target alone in its verification numerics (the lossless reference)",
                    "llama.cpp" if target.pads_passes else "polyplan",
                    [name],
                    [],
                ),
                [target],
                [],
                temperature=temperature,
                eos=eos,
                verification_numerics=True,
            )
        )
    return methods


def _chosen_plan_methods(
    assembled: AssembledPlan,
    drafters: Callable[[str], Drafter],
    trees: list[int],
    same_as_two: bool,
    temperature: float,
    eos: list[int],
) -> list[BenchMethod]:
    """The chosen plan as ``polyplan run`` runs it (adaptive: the assembled members and controller)
    beside its static version, or static only without a policy; none that is the two-level plan
    (the plan's rows run its draft stops, the two-level row drafts to gamma: those differ)."""
    plan = assembled.plan
    stops = assembled.chain.draft_stop
    if assembled.policy is None:
        if same_as_two and not stops:
            return []
        name, label = "polyplan-plan", "polyplan chosen plan"
        return [_polyplan_chain(name, label, plan.names, plan.gammas, drafters, temperature, eos, trees, stops)]
    adaptive = polyplan_method(
        MethodSpec(
            "polyplan-plan",
            "polyplan chosen plan (adaptive, as `polyplan run`)",
            "polyplan",
            list(plan.names),
            list(plan.gammas),
            # the assembled chain's: with the policy's reserve drafters below the plan's members
            tree_nodes=list(assembled.chain.tree_nodes) if trees else [],
        ),
        assembled.chain.drafters,
        assembled.chain.gammas,
        temperature=temperature,
        eos=eos,
        controller=assembled.chain.controller,
        draft_stop=stops,
    )
    if same_as_two and not stops:
        return [adaptive]
    static = _polyplan_chain(
        "polyplan-plan-static",
        "polyplan chosen plan (static)",
        plan.names,
        plan.gammas,
        drafters,
        temperature,
        eos,
        trees,
        stops,
    )
    return [adaptive, static]


def _grid_methods(
    plan: Plan, methods: Sequence[BenchMethod], drafters: Callable[[str], Drafter], temperature: float, eos: list[int]
) -> list[BenchMethod]:
    """``grid``: the runners-up and the chosen chain's gamma neighbours not measured yet."""
    seen = _measured_chains(methods)
    out = []
    for i, r in enumerate(plan.runners_up, start=2):
        key = (tuple(r["chain"]), tuple(r["gammas"]))
        if key not in seen and len(r["chain"]) > 1:
            seen.add(key)
            out.append(
                _polyplan_chain(f"grid-rank{i}", f"runner-up #{i}", r["chain"], r["gammas"], drafters, temperature, eos)
            )
    for level in range(len(plan.gammas)):
        for step in (-1, 1):
            g = list(plan.gammas)
            g[level] += step
            key = (tuple(plan.names), tuple(g))
            if g[level] >= 1 and key not in seen:
                seen.add(key)
                out.append(
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
    return out


ChainKey = tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]


def _chain_key(chain: Sequence[str], gammas: Sequence[int | None], trees: Sequence[int]) -> ChainKey:
    return tuple(chain), tuple(gammas), tuple(n for n in trees if any(t > 1 for t in trees))


def _measured_chains(methods: Sequence[BenchMethod]) -> set[ChainKey]:
    """(chain, gammas, tree sizes) of the methods already in the comparison that polyplan's executor
    runs (a llama.cpp target's own loop too; not transformers, not a speed reference): not run twice."""
    return {
        _chain_key(m.spec.chain, m.spec.gammas, m.spec.tree_nodes)
        for m in methods
        if m.spec.engine != "transformers" and not m.spec.speed_reference
    }


def also_methods(
    methods: list[BenchMethod],
    chains: Sequence[tuple[list[str], list[int]] | tuple[list[str], list[int], list[int]]],
    drafters: Callable[[str], Drafter],
    temperature: float,
    eos: list[int],
    note: Callable[[str], None] | None = None,
) -> list[BenchMethod]:
    """Static chains the user asked for (``bench --also``), except those already measured (said on
    ``note``). Each is (names, gammas) or (names, gammas, tree sizes)."""
    # the target alone in polyplan's own loop (the request model's target alone) is measured already
    # where the baseline is a llama.cpp target's own loop or the lossless reference decodes it alone
    seen = _measured_chains(methods)
    out = []
    for names, gammas, *rest in chains:
        trees = rest[0] if rest else []
        key = _chain_key(names, gammas, trees)
        if key in seen:
            if note is not None:
                note(f"--also {chain_names(names)} {list(gammas)}: measured already by another row")
            continue
        seen.add(key)
        label = chain_names(names) + f", gammas {gammas}" + (f", tree nodes {trees}" if key[2] else "")
        if len(names) == 1:
            label = f"{names[0]} alone (polyplan's own loop)"
        out.append(
            _polyplan_chain(f"also-{len(out) + 1}", label, names, gammas, drafters, temperature, eos, list(key[2]))
        )
    return out


def _polyplan_chain(name, label, chain, gammas, drafters, temperature, eos, trees=(), stops=None) -> BenchMethod:
    return polyplan_method(
        MethodSpec(name, label, "polyplan", list(chain), list(gammas), tree_nodes=list(trees)),
        [drafters(n) for n in chain],
        list(gammas),
        temperature=temperature,
        eos=eos,
        draft_stop=stops,
    )


def _hf_assisted(target_name, target, d_name, d, g, temperature, eos) -> list[BenchMethod]:
    """transformers' own speculation for the plan's best pair: its defaults, and the plan's gamma."""
    from polyplan.models.model_free import PromptLookupDrafter

    def row(name: str, label: str, gamma: int | None, **how: Any) -> BenchMethod:
        spec = MethodSpec(name, label, "transformers", [target_name, d_name], [gamma])
        return hf_method(spec, target.model, temperature=temperature, eos=eos, **how)

    if d.point_mass:
        # transformers has no fitted n-gram table: its prompt lookup is the closest model-free
        # drafter it offers, so an n-gram plan is compared against that.
        max_n = int(getattr(getattr(d, "_index", None), "max_n", 3)) if isinstance(d, PromptLookupDrafter) else 3
        return [
            row(
                "hf-assisted-default",
                f"transformers prompt lookup ({HF_PROMPT_LOOKUP_DEFAULT} tokens)",
                None,
                prompt_lookup=(HF_PROMPT_LOOKUP_DEFAULT, max_n),
            ),
            row("hf-assisted-gamma", f"transformers prompt lookup, gamma {g}", g, prompt_lookup=(g, max_n)),
        ]
    if getattr(d, "model", None) is None:
        return []
    constant = {
        "num_assistant_tokens": g,
        "num_assistant_tokens_schedule": "constant",
        "assistant_confidence_threshold": 0.0,
    }
    return [
        row("hf-assisted-default", "transformers assisted generation (defaults)", None, assistant=d.model),
        row(
            "hf-assisted-gamma",
            f"transformers assisted generation, gamma {g}",
            g,
            assistant=d.model,
            assistant_config=constant,
        ),
    ]
