"""Names a module keeps importable after they moved to another module that builds on it: a
module ``__getattr__`` (PEP 562) that imports their new home on first use, so that neither
module imports the other when it loads."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def forwarding(module: str, names: Iterable[str], home: str) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``module`` that serves ``names`` from module ``home``."""
    kept = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name in kept:
            return getattr(importlib.import_module(home), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
