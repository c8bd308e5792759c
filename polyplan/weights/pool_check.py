"""Checking an installed pool (``polyplan models check``): every cache entry's sha256s, every
member loaded, the shared vocabulary, and each member's greedy agreement with the target."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from polyplan import cache as model_cache
from polyplan.models.drafter import check_same_vocabulary
from polyplan.weights import gguf_files, source_cache, sources as src

if TYPE_CHECKING:
    from polyplan.weights.pools import Pool

Log = Callable[[str], None]
CHECK_TEXT = "The quick brown fox jumps over the lazy dog. def f(x): return x + 1"


def check_pool(pool: Pool, log: Log | None = None, text: str = CHECK_TEXT) -> list[dict[str, Any]]:
    """Verify every cache entry's sha256s, load every member, check the shared vocabulary,
    and compare each model member's greedy next tokens on ``text`` with the target's.
    Returns one row per member: name, vocab_size, agreement (None for model-free)."""
    log = log or (lambda msg: None)
    _verify_hashes(pool, log)
    rows = _agreement_rows(pool, text, log)
    check_same_vocabulary([pool.drafter(n) for n in pool.names])
    return rows


def _verify_hashes(pool: Pool, log: Log) -> None:
    for source in pool.model_sources:
        fix = f"{source.install_command} --force"
        if isinstance(source, (src.CatalogSource, src.GGUFFileSource)) and pool.converted(source):
            model_cache.read_manifest(source_cache.require_prepared(source), fix=fix, verify_hashes=True)
            log(f"{source.label}: cache hashes ok")
        if isinstance(source, src.CatalogSource) and pool.kept_as_gguf(source):
            model_cache.read_manifest(gguf_files.require_gguf(source).parent, fix=fix, verify_hashes=True)
            log(f"{source.label}: kept GGUF hashes ok")
    for m in pool.members:
        if m.quantization is not None:
            pool.member_gguf(m.name, verify_hashes=True)
            log(f"{m.name}: derived {m.quantization} GGUF hashes ok")


def _agreement_rows(pool: Pool, text: str, log: Log) -> list[dict[str, Any]]:
    import torch

    ids = torch.tensor(pool.tokenizer(text)["input_ids"])
    target = pool.drafter(pool.target)
    target.reset()
    ref = target.score(ids.to(target.device)).argmax(-1).cpu()
    rows = []
    for name in pool.names:
        d = pool.drafter(name)
        row: dict[str, Any] = {"name": name, "vocab_size": d.vocab_size, "agreement": None}
        if not d.point_mass:
            d.reset()
            got = d.score(ids.to(d.device)).argmax(-1).cpu()
            d.reset()
            row["agreement"] = float((got == ref).float().mean())
        rows.append(row)
        log(f"{name}: ok")
    return rows
