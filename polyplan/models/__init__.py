"""polyplan.models: where weights come from, pools of candidate drafters, model-free drafters.

    from polyplan.models import load_pool
    pool = load_pool("smollm2")            # or a path to a pool file
    target = pool.drafter(pool.target)     # a Drafter, built lazily and cached
    chain = pool.drafters(["smollm2-135m", "smollm2-135m:int8", "prompt-lookup"])

The pool names below load on first use: the executor imports ``polyplan.models.drafter`` and
should not pay for (or depend on) the weight-source machinery behind pools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from polyplan.models.forwarding import forwarding

if TYPE_CHECKING:
    from polyplan.models.pools import MemberSpec, Pool, builtin_pools, load_pool

__all__ = ["load_pool", "Pool", "MemberSpec", "builtin_pools"]

#: the pool a command uses when none is named (embedded: no download)
DEFAULT_POOL = "smollm2"

__getattr__ = forwarding(__name__, __all__, "polyplan.models.pools")
