"""polyplan.weights: the supply of members -- where weights come from, the pools that name them.

    from polyplan.weights import load_pool
    pool = load_pool("smollm2")            # or a path to a pool file
    target = pool.drafter(pool.target)     # a Drafter (polyplan.models), built lazily and cached
    chain = pool.drafters(["smollm2-135m", "smollm2-135m:int8", "prompt-lookup"])

Sources, their cache and GGUF files (``sources``, ``source_cache``, ``gguf_files``,
``gguf_quantize``, ``safetensors_stream``), derived copies (``derive``), n-gram fitting
(``ngram_fit``), the pool file (``pool_spec``), pools (``pools``; install, check and summary in
``pool_install``, ``pool_check``, ``pool_summary``; built-in pool files in ``pools/``, wheel pins
in ``wheels/``) and the llama.cpp build's feature set (``llamacpp_build``, run by setup.sh). The
pool names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polyplan.weights.pools import MemberSpec, Pool, builtin_pools, load_pool

__all__ = ["DEFAULT_POOL", "load_pool", "Pool", "MemberSpec", "builtin_pools"]

#: the pool a command uses when none is named (embedded: no download)
DEFAULT_POOL = "smollm2"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from polyplan.weights import pools

        return getattr(pools, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
