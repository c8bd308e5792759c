"""Pool files: the candidate drafters a plan may chain, named in a TOML file and read into a
checked, frozen :class:`PoolSpec` (:func:`parse_pool_text`; ``polyplan.weights.pools`` builds them).

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

Built-in pools live in ``polyplan/weights/pools/*.toml`` (``smollm2``, ``qwen-coder``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from polyplan.documents.profile import WINDOW_SINK
from polyplan.errors import UserError
from polyplan.models.llamacpp_drafter import DEFAULT_N_CTX, DEFAULT_TARGET_MIN_PASS, DEFAULT_THREADS
from polyplan.weights import gguf_quantize, sources as src
from polyplan.weights.derive import check_derivation

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


class UnknownPool(UserError):
    pass


class UnknownMember(UserError):
    pass


class PoolFileError(UserError):
    pass


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


def with_fit_prompts(spec: MemberSpec, pool_name: str, base_dir: Path) -> MemberSpec:
    """An n-gram member's fit prompt file as an absolute path: the one ``models install
    --fit-prompts`` recorded for this pool, else the pool file's (relative to the pool file)."""
    if spec.source != "ngram":
        return spec
    from polyplan.weights.ngram_fit import recorded_fit_prompts

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


@dataclass(frozen=True)
class PoolSpec:
    """What a pool file says, checked: its name, target and members (``same_as`` resolved, each
    llama.cpp member's flash attention set by its role), and its ``[sources]`` table as written."""

    name: str
    description: str
    #: the file, as error messages name it (a path, or ``built-in pool NAME``)
    where: str
    target: str
    members: tuple[MemberSpec, ...]
    sources: dict[str, Any] = field(default_factory=dict)


def parse_pool_text(text: str, where: str) -> PoolSpec:
    """The pool file ``text`` (TOML) as a checked spec; ``where`` names it in error messages."""
    if tomllib is None:
        raise UserError("reading pool files on Python 3.10 needs the tomli package (pip install tomli)")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PoolFileError(f"{where}: not valid TOML ({e})") from None
    return parse_pool(doc, where)


def parse_pool(doc: dict[str, Any], where: str) -> PoolSpec:
    """A pool file's TOML document as a checked spec (a PoolFileError names the first problem)."""
    head = doc.get("pool")
    if not isinstance(head, dict):
        raise PoolFileError(f"{where}: missing [pool] table")
    unknown_top = set(doc) - {"pool", "member", "sources"}
    if unknown_top:
        raise PoolFileError(f"{where}: unknown tables {sorted(unknown_top)} (allowed: pool, sources, member)")
    raw_members = doc.get("member")
    if not isinstance(raw_members, list) or not raw_members:
        raise PoolFileError(f"{where}: a pool needs at least one [[member]]")
    members = [_parse_member(m, where) for m in _resolve_same_as(raw_members, where)]
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PoolFileError(f"{where}: duplicate member names {dupes}")
    target = head.get("target")
    if target not in names:
        raise PoolFileError(f"{where}: target {target!r} is not a member (members: {', '.join(names)})")
    members = [_resolve_flash_attn(m, m.name == target) for m in members]
    _check_target(members[names.index(target)], where)
    return PoolSpec(
        name=str(head.get("name") or Path(where).stem),
        description=str(head.get("description", "")),
        where=where,
        target=target,
        members=tuple(members),
        sources=doc.get("sources", {}) or {},
    )


def _check_target(target: MemberSpec, where: str) -> None:
    if target.model_free:
        raise PoolFileError(f"{where}: the target {target.name!r} must be a model, not a model-free drafter")
    if target.window is not None:
        raise PoolFileError(
            f"{where}: the target {target.name!r} cannot have a window: the output follows the target's "
            "distribution over the whole sequence (windows are for drafters)"
        )
