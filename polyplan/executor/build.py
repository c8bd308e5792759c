"""Build a :class:`Chain` from what a user names: pool members, model directories or a plan file.

Used by ``polyplan run`` (and anything else that starts from names rather than objects)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from polyplan.errors import UserError
from polyplan.executor.chain import Chain


@dataclass
class ChainSpec:
    """Names a chain: ``members`` are pool member names or model directories, target first."""

    members: list[str]
    gammas: list[int]
    pool: str | None = None
    #: sampling settings a plan was optimised for (None: the user decides)
    temperature: float | None = None

    @classmethod
    def from_plan(cls, path: str | Path) -> "ChainSpec":
        from polyplan.documents.plan import Plan

        plan = Plan.load(path)
        temperature = None
        if plan.mode == "sampling":
            temperature = float(plan.settings.get("temperature", 1.0) or 1.0)
        return cls(list(plan.names), list(plan.gammas), plan.profile.get("pool") or None, temperature)


def parse_gammas(text: str | None) -> list[int]:
    """``"6,3"`` -> ``[6, 3]``; empty or None -> ``[]``."""
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gammas must be comma-separated integers such as 6,3, got {text!r}") from None


def build_chain(spec: ChainSpec) -> Chain:
    """Load every member (pool members through the pool, directories with transformers)."""
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
            from polyplan.models import load_pool

            pool = load_pool(spec.pool or "smollm2")
        drafters.append(pool.drafter(name))
    if pool is not None and tokenizer is None:
        tokenizer = pool.tokenizer
    return Chain(drafters, spec.gammas, tokenizer=tokenizer)


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


def members_from_option(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def default_members(pool_name: str | None) -> Sequence[str]:
    """No --chain: the pool's target alone (plain autoregressive decoding)."""
    from polyplan.models import load_pool

    return [load_pool(pool_name or "smollm2").target]
