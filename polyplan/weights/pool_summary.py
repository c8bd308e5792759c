"""What a pool member computes with and how big it is, as far as the cache knows (the weights
column of ``polyplan models list``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from polyplan import cache as model_cache
from polyplan.errors import UserError
from polyplan.weights import gguf_files, gguf_quantize, source_cache, sources as src

if TYPE_CHECKING:
    from polyplan.weights.pool_spec import MemberSpec
    from polyplan.weights.pools import Pool


def weights_summary(pool: Pool, name: str) -> str:
    """What member ``name`` computes with and how big it is, as far as the cache knows."""
    spec = pool.member(name)
    if spec.model_free:
        return "-"
    if spec.llama_cpp:
        return _gguf_summary(pool, spec)
    if spec.derivation != "none":
        return f"{spec.dtype} with {spec.derivation} Linear weights (torchao)"
    try:
        manifest = json.loads((source_cache.require_prepared(pool.source(name)) / model_cache.MANIFEST).read_text())
    except (UserError, OSError, ValueError, TypeError):
        return spec.dtype
    stored = sum(f["size"] for k, f in manifest["files"].items() if k.endswith(".safetensors"))
    scale = src.DTYPES[spec.dtype].itemsize / src.DTYPES[manifest.get("dtype", "float32")].itemsize
    return f"{spec.dtype}, {stored * scale / 1e6:.0f} MB"


def _gguf_summary(pool: Pool, spec: MemberSpec) -> str:
    source = pool.source(spec.name)
    if spec.quantization is not None:
        made = gguf_quantize.derived_manifest(pool.gguf_ident(source), spec.quantization)
        if made is None:
            return f"{spec.quantization} GGUF (not made yet)"
        size = sum(f["size"] for f in made["files"].values())
        origin = made.get("quantized_from", "?")
        how = (
            f"from {origin}"
            if origin in gguf_quantize.FULL_PRECISION
            else f"made from {origin}: no full-precision weights"
        )
        return f"{spec.quantization} GGUF, {size / 1e6:.0f} MB ({how})"
    try:
        path = gguf_files.require_gguf(source)
    except UserError:
        return "GGUF (not installed)"
    return f"{gguf_quantize.gguf_file_type(path)} GGUF, {path.stat().st_size / 1e6:.0f} MB"
