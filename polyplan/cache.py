"""The on-disk cache of converted models and fitted tables.

Layout under the cache root (``$POLYPLAN_CACHE``, default ``~/.cache/polyplan``)::

    models/<key>/            one converted model: config.json, model.safetensors, tokenizer files,
                             polyplan-manifest.json (what it was built from, size + sha256 per file)
    ngram/<key>.json         fitted n-gram tables
    tmp/                     work space; entries are renamed into place only when complete

A cache entry is a directory that appears in ONE rename, after everything in it was written and
flushed: an interrupted install leaves at most a ``tmp/`` leftover (swept on the next install),
never a half entry. The manifest is what tells an entry apart from a corrupt one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from polyplan.errors import UserError

MANIFEST = "polyplan-manifest.json"
MANIFEST_SCHEMA = "polyplan.model-cache"
MANIFEST_VERSION = 1
_HASH_CHUNK = 1 << 22


class CorruptCache(UserError):
    """A cache entry exists but does not match its manifest."""


def cache_root() -> Path:
    """``$POLYPLAN_CACHE`` or ``~/.cache/polyplan`` (created on demand)."""
    root = os.environ.get("POLYPLAN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "polyplan"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir_tree(path: Path) -> None:
    """Flush every file under ``path`` so that the rename that publishes it is durable."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def staging_dir(root: Path | None = None) -> Iterator[Path]:
    """A fresh directory under ``<cache>/tmp``; removed on exit whatever happens (the caller
    renames what it wants to keep out of it first)."""
    tmp_root = (root or cache_root()) / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale_tmp(root: Path | None = None, older_than_s: float = 3600.0) -> None:
    """Remove work directories of installs whose process is gone (other entries: older than
    ``older_than_s``)."""
    tmp_root = (root or cache_root()) / "tmp"
    if not tmp_root.is_dir():
        return
    now = time.time()
    for p in tmp_root.iterdir():
        pid_text = p.name.split("-", 1)[0]
        # a live install may run for long (the 1.5B model): only its pid being gone frees its work
        stale = not _pid_alive(int(pid_text)) if pid_text.isdigit() else now - p.stat().st_mtime > older_than_s
        if stale:
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish_dir(staged: Path, final: Path) -> None:
    """Move a complete ``staged`` directory to ``final`` in one rename, replacing an old entry.

    Replacing is two renames (old entry aside, new in place); a crash between them leaves no
    entry, never a mixed one."""
    fsync_dir_tree(staged)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        aside = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, aside)
        os.replace(staged, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staged, final)


def write_manifest(entry: Path, info: dict) -> dict:
    """Record size and sha256 of every file in ``entry`` plus ``info`` (what it was built from)."""
    files = {}
    for p in sorted(entry.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[str(p.relative_to(entry))] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {"schema": MANIFEST_SCHEMA, "version": MANIFEST_VERSION, **info, "files": files}
    (entry / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(entry: Path, fix: str, *, verify_hashes: bool = False) -> dict:
    """The manifest of a cache entry, checked against the files (sizes always; sha256 when
    ``verify_hashes``). Any disagreement is a :class:`CorruptCache` that names ``fix``."""

    def corrupt(why: str) -> CorruptCache:
        return CorruptCache(f"model cache {entry} is corrupt ({why}); run `{fix}` to rebuild it")

    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        raise corrupt("no manifest") from None
    except (OSError, json.JSONDecodeError):
        raise corrupt("unreadable manifest") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise corrupt("not a polyplan manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise corrupt(f"manifest version {manifest.get('version')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise corrupt("manifest lists no files")
    for rel, meta in files.items():
        p = entry / rel
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise corrupt(f"{rel} is missing") from None
        if size != meta.get("size"):
            raise corrupt(f"{rel} has {size} bytes, expected {meta.get('size')}")
        if verify_hashes and sha256_file(p) != meta.get("sha256"):
            raise corrupt(f"{rel} fails its sha256 check")
    return manifest


def kept_gguf_dir(model_name: str, gguf_sha256: str) -> Path:
    """The cache entry that keeps a catalog model's GGUF as it is (for llama.cpp members)."""
    return cache_root() / "gguf" / f"{model_name}-{gguf_sha256[:12]}"


def kept_gguf_file(model_name: str, gguf_sha256: str, gguf_name: str) -> Path | None:
    """That entry's GGUF when the entry is intact (sizes match its manifest), else None: the
    conversion reads it instead of fetching the wheels again."""
    entry = kept_gguf_dir(model_name, gguf_sha256)
    if not entry.is_dir():
        return None
    try:
        read_manifest(entry, fix="")
    except CorruptCache:
        return None
    return entry / gguf_name
