"""polyplan: plan, run and measure multi-model (polybasic) speculative decoding.

``polyplan.theory`` and ``polyplan.planner`` are pure Python; ``polyplan.Chain`` (the executor)
imports torch lazily so that ``import polyplan`` stays light."""

from __future__ import annotations

from polyplan import hooks as _hooks

__version__ = "0.1.0"

__all__ = ["Chain", "__version__", "chain_from_plan_file"]


def chain_from_plan_file(path, pool=None):
    """What ``polyplan.Chain.from_plan(path, pool)`` returns: the chain ``polyplan run PLAN`` runs
    (``polyplan.assemble``, above the executor, which knows only drafters and controllers)."""
    from polyplan.assemble import chain_from_plan

    return chain_from_plan(path, pool)


_hooks.plan_chain = chain_from_plan_file


def __getattr__(name: str):
    if name == "Chain":
        from polyplan.executor.front import Chain

        return Chain
    raise AttributeError(f"module 'polyplan' has no attribute {name!r}")
