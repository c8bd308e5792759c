"""Fitting a pool's n-gram table on the target's own greedy generations.

The corpus is the built-in prompt set's "fit" split (never "eval": the profiler scores drafters on
eval prompts), or the member's prompt file (``fit_prompts_file`` in the pool file, or the one
``polyplan models install POOL --fit-prompts FILE`` recorded for the pool in
``<cache>/ngram/fit-prompts.json``), each prompt wrapped in the target's chat template and
continued greedily by the target. The table is cached per (target weights, prompt texts, order,
generation length) under ``<cache>/ngram/``, written atomically. A prompt file used to fit should
not be the one the pool is then profiled on: the drafter would be scored on its own training text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polyplan import cache as model_cache
from polyplan.documents.files import atomic_write_json
from polyplan.errors import UserError
from polyplan.models.drafter import Drafter
from polyplan.models.model_free import NgramTable

TABLE_SCHEMA = "polyplan.ngram-table"
TABLE_VERSION = 1
_BATCH = 8


def chat_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """``text`` as one user message in the tokenizer's chat template (plain text without one)."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(text)["input_ids"]]


def greedy_generations(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int,
    log: Callable[[str], None] | None = None,
) -> list[list[int]]:
    """Prompt + greedy continuation (up to EOS) for each text, batched with left padding."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = model.generation_config.eos_token_id
    eos_set = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
    device = next(model.parameters()).device
    sequences = []
    for start in range(0, len(texts), _BATCH):
        prompts = [chat_prompt_ids(tokenizer, t) for t in texts[start : start + _BATCH]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        for i, p in enumerate(prompts):
            gen = out[i, width:].tolist()
            cut = next((j + 1 for j, t in enumerate(gen) if t in eos_set), len(gen))
            sequences.append(p + gen[:cut])
        if log:
            log(f"  generated {len(sequences)}/{len(texts)}")
    return sequences


def drafter_greedy_generations(
    drafter: Any, tokenizer: Any, texts: list[str], max_new_tokens: int, log: Callable[[str], None] | None = None
) -> list[list[int]]:
    """As :func:`greedy_generations` for a target that is not a transformers model (a llama.cpp
    member): one sequence at a time through the Drafter interface, one token per pass."""
    eos_set = set(getattr(drafter, "eos_token_ids", None) or [])
    sequences = []
    for text in texts:
        seq = chat_prompt_ids(tokenizer, text)
        drafter.reset()
        logits = drafter.score(torch.tensor(seq), last=1)
        for _ in range(max_new_tokens):
            token = int(logits[-1].argmax())
            seq.append(token)
            if token in eos_set:
                break
            logits = drafter.score(torch.tensor([token]))
        drafter.reset()
        sequences.append(seq)
    if log:
        log(f"  generated {len(sequences)}/{len(texts)}")
    return sequences


@dataclass(frozen=True)
class NgramFit:
    """What an n-gram member is fitted from, as plain values (the pool builds it): its target's
    name and weights fingerprint, the table's order, the greedy answer length and the prompts."""

    member: str
    target: str
    target_fingerprint: str
    order: int
    max_new_tokens: int
    fit_prompts_file: str = ""
    fit_prompts: int = 0


def _table_key(fit: NgramFit, texts: list[str]) -> str:
    h = hashlib.sha256()
    h.update(fit.target_fingerprint.encode())
    h.update(json.dumps([fit.order, fit.max_new_tokens, texts]).encode())
    return h.hexdigest()[:20]


def _choices_path() -> Path:
    return model_cache.cache_root() / "ngram" / "fit-prompts.json"


def _read_choices() -> dict[str, dict[str, str]]:
    try:
        doc = json.loads(_choices_path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise UserError(
            f"{_choices_path()} is unreadable: delete it (n-gram members go back to their pool "
            "files' fit prompts) or rerun polyplan models install POOL --fit-prompts FILE"
        ) from None
    return doc if isinstance(doc, dict) else {}


def recorded_fit_prompts(pool_name: str, member: str) -> str | None:
    """The prompt file ``models install --fit-prompts`` chose for this pool's n-gram member."""
    return (_read_choices().get(pool_name) or {}).get(member)


def record_fit_prompts(pool_name: str, member: str, path: str | None) -> None:
    """Remember (``path``) or forget (None) the fit prompt file of a pool's n-gram member."""
    choices = _read_choices()
    members = choices.setdefault(pool_name, {})
    if path is None:
        members.pop(member, None)
    else:
        members[member] = path
    atomic_write_json(_choices_path(), {k: v for k, v in choices.items() if v})


def fit_prompts(fit: NgramFit) -> tuple[list[str], dict[str, Any]]:
    """The texts ``fit`` is fitted on and their workload (name, sha256, count, categories)."""
    from polyplan.data.prompt_file import prompt_set

    source = prompt_set(fit.fit_prompts_file or None, split="fit")
    chosen = source.select(limit=fit.fit_prompts or None)
    return [p.text for p in chosen], source.workload(chosen)


def table_path(fit: NgramFit) -> tuple[Path, list[str]]:
    """Where the table of ``fit`` is cached, and the fit-prompt texts it is fitted on."""
    texts, _ = fit_prompts(fit)
    return model_cache.cache_root() / "ngram" / f"{fit.target}-{_table_key(fit, texts)}.json", texts


def load_or_fit_table(
    fit: NgramFit,
    target: Callable[[], Drafter],
    tokenizer: Any,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> NgramTable:
    """The cached n-gram table of ``fit``, fitted now (on ``target()``'s greedy answers, the
    target loaded only then) when missing or unreadable."""
    log = log or (lambda msg: None)
    path, texts = table_path(fit)
    if path.is_file() and not force:
        try:
            doc = json.loads(path.read_text())
            if doc.get("schema") == TABLE_SCHEMA and doc.get("version") == TABLE_VERSION:
                return NgramTable.from_json(doc["table"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        log(f"n-gram table {path} is unreadable; fitting it again")
    source = fit.fit_prompts_file or "the built-in set"
    log(
        f"{fit.member}: fitting an order-{fit.order} table on {fit.target}'s greedy generations for "
        f"{len(texts)} fit prompts of {source}"
    )
    drafter = target()
    if getattr(drafter, "model", None) is not None:
        sequences = greedy_generations(drafter.model, tokenizer, texts, fit.max_new_tokens, log=log)
    else:
        sequences = drafter_greedy_generations(drafter, tokenizer, texts, fit.max_new_tokens, log=log)
    table = NgramTable.fit(sequences, fit.order)
    atomic_write_json(
        path,
        {
            "schema": TABLE_SCHEMA,
            "version": TABLE_VERSION,
            "target": fit.target,
            "prompts": len(texts),
            "workload": fit_prompts(fit)[1],
            "tokens": sum(map(len, sequences)),
            "table": table.to_json(),
        },
    )
    log(f"{fit.member}: {len(table)} contexts from {sum(map(len, sequences))} tokens -> {path}")
    return table
