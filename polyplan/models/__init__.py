"""polyplan.models: where weights come from, pools of candidate drafters, model-free drafters.

    from polyplan.models import load_pool
    pool = load_pool("smollm2")            # or a path to a pool file
    target = pool.drafter(pool.target)     # a Drafter, built lazily and cached
    chain = pool.drafters(["smollm2-135m", "smollm2-135m:int8", "prompt-lookup"])
"""

from polyplan.models.pools import MemberSpec, Pool, builtin_pools, load_pool

__all__ = ["load_pool", "Pool", "MemberSpec", "builtin_pools"]
