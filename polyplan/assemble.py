"""Assemble a runnable :class:`~polyplan.executor.front.Chain` from what a user names: pool members,
model directories or a plan file -- the ONE code path of ``polyplan run``, ``polyplan bench`` and
``polyplan.Chain.from_plan``, so all three run a plan the same way.

It sits above the executor (which knows only drafters and controllers) and joins it to the
documents (plans, profiles), the pools and the planner's adaptive policy: a plan runs with the
:class:`~polyplan.executor.adaptive.AdaptiveController` (proofs/adaptive-control.md) unless
``static`` is asked for."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyplan.chain_text import chain_names
from polyplan.errors import UserError

Note = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _silent(message: str) -> None:
    pass


@dataclass
class ChainSpec:
    """Names a chain: ``members`` are pool member names or model directories, target first."""

    members: list[str]
    gammas: list[int]
    pool: str | None = None
    #: sampling settings a plan was optimised for (None: the user decides)
    temperature: float | None = None
    #: draft tree size per drafter (None: all linear)
    tree_nodes: list[int] | None = None

    @classmethod
    def from_plan(cls, path: str | Path) -> ChainSpec:
        from polyplan.documents.plan import Plan

        return cls.of_plan(Plan.load(path))

    @classmethod
    def of_plan(cls, plan: Any) -> ChainSpec:
        temperature = None
        if plan.mode == "sampling":
            temperature = float(plan.settings.get("temperature", 1.0) or 1.0)
        trees = list(plan.tree_nodes) or None
        return cls(list(plan.names), list(plan.gammas), plan.profile.get("pool") or None, temperature, trees)


def default_members(pool_name: str | None) -> Sequence[str]:
    """No --chain: the pool's target alone (plain autoregressive decoding)."""
    from polyplan.weights import DEFAULT_POOL, load_pool

    return [load_pool(pool_name or DEFAULT_POOL).target]


def build_chain(
    spec: ChainSpec, controller: Any = None, windowable: dict[str, int] | None = None, window: int | None = None
) -> Any:
    """Load every member (pool members through the pool, directories with transformers).

    ``windowable``: drafter name -> sink, for members a request may give a window (the policy's
    start decides per prompt; polyplan.models.windowed). ``window``: every model drafter reads only
    the first 4 and last ``window`` tokens."""
    from polyplan.executor.front import Chain

    drafters, tokenizer = load_members(spec)
    drafters = with_windows(drafters, windowable, window)
    return Chain(drafters, spec.gammas, tokenizer=tokenizer, controller=controller, tree_nodes=spec.tree_nodes)


def load_members(spec: ChainSpec) -> tuple[list[Any], Any]:
    """The members of ``spec`` loaded (pool members through the pool, directories with
    transformers) and the chain's tokenizer: the first directory's, else the pool's."""
    pool = None
    drafters: list[Any] = []
    tokenizer = None
    for name in spec.members:
        path = Path(name).expanduser()
        if path.is_dir():
            drafter, tok = _load_model_dir(path)
            drafters.append(drafter)
            tokenizer = tokenizer or tok
            continue
        if pool is None:
            from polyplan.weights import DEFAULT_POOL, load_pool

            pool = load_pool(spec.pool or DEFAULT_POOL)
        drafters.append(pool.drafter(name))
    if pool is not None and tokenizer is None:
        tokenizer = pool.tokenizer
    return drafters, tokenizer


def with_windows(
    drafters: Sequence[Any], windowable: dict[str, int] | None = None, window: int | None = None
) -> list[Any]:
    """``drafters`` with the model drafters below the target wrapped in a ``WindowedDrafter``:
    every one reading a ``window`` when given, else those in ``windowable`` (name -> sink) that
    have no window yet, for the policy's start to window per request."""
    from polyplan.models.windowed import WindowedDrafter, window_of

    out = list(drafters)
    for i, d in enumerate(out[1:], start=1):
        if window is not None and not d.point_mass:
            out[i] = WindowedDrafter(d, window)
        elif d.name in (windowable or {}) and not d.point_mass and window_of(d) is None:
            out[i] = WindowedDrafter(d, None, windowable[d.name])
    return out


def _load_model_dir(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polyplan.models.model_drafter import ModelDrafter

    if not (path / "config.json").exists():
        raise UserError(f"{path} is not a transformers model directory (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a causal LM from {path}: {e}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    return ModelDrafter(model, path.name, tokenizer=tokenizer), tokenizer


# ---- plans -----------------------------------------------------------------------------------------


def plan_profile_path(plan: Any, plan_path: str | Path) -> Path | None:
    """The profile a plan was made from, as recorded (absolute, or beside the plan), if it exists."""
    recorded = plan.profile.get("path")
    if not recorded:
        return None
    for candidate in (Path(recorded), Path(plan_path).parent / recorded, Path(plan_path).parent / Path(recorded).name):
        if candidate.is_file():
            return candidate
    return None


def plan_policy(plan: Any, plan_path: str | Path, note: Note = _stderr) -> Any:
    """The plan's adaptive policy: stored in the plan, else rebuilt from its profile (plans made
    before policies existed), else None with a one-line note (the plan then runs static)."""
    from polyplan.planner.policy import Policy
    from polyplan.planner.policy_build import policy_for_plan

    if len(plan.names) < 2:
        return None
    why = "has no adaptive policy"
    if plan.policy is not None:
        policy = Policy.from_dict(plan.policy, f"{plan_path}: policy")
        stale = stale_policy(policy, plan)
        if stale is None:
            return policy
        why = f"has a policy made for another plan ({stale})"
    profile_path = plan_profile_path(plan, plan_path)
    if profile_path is None:
        note(
            f"note: {plan_path} {why} and its profile is not at hand: running it static "
            "(re-run `polyplan optimize` to make one)"
        )
        return None
    if plan.policy is not None:
        note(f"note: {plan_path} {why}: rebuilding it from {profile_path}")
    from polyplan.documents.profile import Profile
    from polyplan.documents.traces import Traces

    profile = Profile.load(profile_path)
    try:
        traces = Traces.of_profile(profile, profile_path) if profile.traces else None
    except UserError:
        traces = None
    return policy_for_plan(plan, profile, traces)


def stale_policy(policy: Any, plan: Any) -> str | None:
    """What differs between a plan and the policy stored in it (an edited plan), or None."""
    chain = list(policy.names[: len(policy.plan.members)])
    if chain != list(plan.names):
        return f"members {chain_names(chain)}, the plan runs {chain_names(plan.names)}"
    if tuple(policy.plan.gammas[0]) != tuple(plan.gammas):
        return f"gammas {list(policy.plan.gammas[0])}, the plan has {list(plan.gammas)}"
    if policy.mode != plan.mode:
        return f"{policy.mode} acceptance, the plan is {plan.mode}"
    return None


def adaptive_controller(policy: Any, drafters: Sequence[Any]) -> Any:
    """The adaptive controller of ``policy`` over the loaded ``drafters`` (point-mass members are
    shadow-checked through their ``propose``)."""
    from polyplan.executor.adaptive import AdaptiveController

    if len(policy.names) != len(drafters):
        raise UserError(
            f"the plan's policy is for {len(policy.names)} members ({chain_names(policy.names)}), "
            f"the chain has {len(drafters)}"
        )
    return AdaptiveController(policy, {i: d.propose for i, d in enumerate(drafters) if d.point_mass})


@dataclass
class AssembledPlan:
    """Everything running a plan needs, built once by :func:`assemble_plan` for ``polyplan run``,
    ``polyplan bench`` and ``polyplan.Chain.from_plan``."""

    plan: Any
    spec: ChainSpec
    #: the chain ``polyplan run PLAN`` runs: the members (the drafters the policy may window per
    #: request wrapped, ``with_windows``), the target in its exact regime, and the adaptive
    #: controller of ``policy`` (None: static)
    chain: Any
    #: the plan's adaptive policy (``plan_policy``); None when static was asked for or none is at hand
    policy: Any


def assemble_plan(
    plan: Any,
    plan_path: str | Path,
    load: Callable[[str], Any] | None = None,
    *,
    pool: str | None = None,
    static: bool = False,
    tree_nodes: list[int] | None = None,
    note: Note = _stderr,
    say_exactness: bool = True,
) -> AssembledPlan:
    """A loaded plan (read from ``plan_path``) made runnable: its members loaded (by ``load``,
    name -> drafter, else from its pool, or ``pool``) and windowed as its policy asks, the target
    in the exact regime its profile probed (said on ``note`` unless not ``say_exactness``), and the
    adaptive controller unless ``static``. ``tree_nodes`` replaces the plan's tree sizes."""
    from polyplan.executor.front import Chain

    spec = ChainSpec.of_plan(plan)
    if pool:
        spec.pool = pool
    if tree_nodes is not None:
        spec.tree_nodes = tree_nodes
    policy = None if static else plan_policy(plan, plan_path, note)
    if policy is not None and policy.reserves:
        with_reserves(spec, policy.reserves)
    if load is None:
        drafters, tokenizer = load_members(spec)
    else:
        drafters, tokenizer = [load(name) for name in spec.members], None
    apply_matmul_routes(plan, plan_path, drafters, note if say_exactness else _silent)
    members = with_windows(drafters, policy_windowable(policy))
    stops = plan_draft_stops(plan)
    chain = Chain(members, spec.gammas, tokenizer=tokenizer, tree_nodes=spec.tree_nodes, draft_stop=stops)
    apply_exactness(plan, chain.drafters[0], note if say_exactness else _silent)
    if policy is not None:
        chain.controller = adaptive_controller(policy, chain.drafters)
    return AssembledPlan(plan, spec, chain, policy)


def plan_draft_stops(plan: Any) -> dict[str, Any]:
    """The plan's draft stops as the executor takes them (none in plans made before them)."""
    from polyplan.executor.draft_stop import DraftStop

    try:
        return {name: DraftStop.from_dict(rule) for name, rule in (plan.draft_stop or {}).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"the plan's draft_stop is malformed ({e}); re-run `polyplan optimize`") from None


def with_reserves(spec: ChainSpec, reserves: Sequence[str]) -> None:
    """Add the policy's reserve drafters below the plan's chain: the adaptive controller may run
    one instead of the plan's drafters (a static run never does). Linear drafts, gamma 1 as
    placeholders: the controller sets each round's gammas."""
    spec.members = [*spec.members, *reserves]
    spec.gammas = [*spec.gammas, *[1] * len(reserves)]
    if spec.tree_nodes is not None:
        spec.tree_nodes = [*spec.tree_nodes, *[1] * len(reserves)]


def chain_from_plan(
    path: str | Path,
    pool: str | None = None,
    *,
    static: bool = False,
    note: Note = _stderr,
    tree_nodes: list[int] | None = None,
) -> Any:
    """The chain ``polyplan run PLAN`` runs: the plan's members and gammas, adaptive unless ``static``.
    (A sampling plan's temperature is a ``generate`` argument: ``ChainSpec.from_plan(path).temperature``.)"""
    from polyplan.documents.plan import Plan

    return assemble_plan(Plan.load(path), path, pool=pool, static=static, tree_nodes=tree_nodes, note=note).chain


def apply_exactness(plan: Any, target: Any, note: Note = _stderr) -> None:
    """Give a half-precision target the exact regime its profile probed on the machine (the
    profile's ``machine["exact"]``, copied into the plan), and say what it promises; a plan
    from before the probe keeps the target's default regime."""
    recorded = (plan.profile.get("machine") or {}).get("exact")
    if recorded is None or not getattr(target, "exact", False):
        return
    from polyplan.models.exactness import ExactProbe

    probe = ExactProbe.from_dict(recorded)
    target.exact_regime = probe.regime
    note(f"{target.name}: {probe.summary()}")


def apply_matmul_routes(plan: Any, plan_path: str | Path, drafters: Sequence[Any], note: Note = _stderr) -> None:
    """Give each member the matmul routes its profile probed on the machine (the profile's
    ``machine["matmul_routes"]``, copied into the plan); members it does not name, and every member
    of a plan from before the probe, stay unrouted, as they were profiled. Routes are a fact of one
    CPU's library: a plan profiled on another CPU runs unrouted (said on ``note``)."""
    from polyplan.models.matmul_routes import MatmulRoutes
    from polyplan.profiler.machine import other_machine_warning

    recorded = (plan.profile.get("machine") or {}).get("matmul_routes") or {}
    if recorded and other_machine_warning(plan.profile, plan_path) is not None:
        note("matmul routes not installed: the plan was profiled on another CPU (re-profile here to probe them)")
        recorded = {}
    for d in drafters:
        doc = recorded.get(d.name)
        try:
            d.use_matmul_routes(MatmulRoutes.from_dict(doc) if doc is not None else None)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(
                f"the plan's matmul routes for {d.name} are malformed ({e}); re-run `polyplan profile`"
            ) from None


def policy_windowable(policy: Any) -> dict[str, int]:
    """The drafters a policy may give a window per request, with the sink they would keep."""
    requests = getattr(policy, "requests", None)
    if requests is None:
        return {}
    return {name: requests.window_sink for name in requests.window_options}
