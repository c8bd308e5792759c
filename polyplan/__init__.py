"""polyplan: plan, run and measure multi-model (polybasic) speculative decoding.

``polyplan.theory`` and ``polyplan.planner`` are pure Python; ``polyplan.Chain`` (the executor)
imports torch lazily so that ``import polyplan`` stays light."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Chain", "__version__"]


def __getattr__(name: str):
    if name == "Chain":
        from polyplan.executor.chain import Chain

        return Chain
    raise AttributeError(f"module 'polyplan' has no attribute {name!r}")
