"""Atomic file writes and checked JSON reads: an interrupted write never leaves a half file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from polyplan.errors import UserError


class DocumentError(UserError):
    """A document is missing, truncated, of another kind or of an unsupported version."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            # mkstemp creates the file 0600: give it the mode a plain open() would (0666 - umask)
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(path: Path) -> tuple[int, str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DocumentError(f"cannot write {path}: {e.strerror or e}") from None


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, with one clear message, if ``path`` cannot be written atomically later (long
    measurements call this first so that their results are not lost at the end)."""
    fd, tmp = _temporary_beside(Path(path))
    os.close(fd)
    os.unlink(tmp)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike, *, schema: str, max_version: int) -> dict:
    """Read a document, checking its ``schema`` tag and that its version is one we understand."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file") from None
    except OSError as e:
        raise DocumentError(f"{path}: cannot read ({e.strerror})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DocumentError(f"{path}: not valid JSON (truncated or corrupt?) at line {e.lineno}") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise DocumentError(f"{path}: expected a {schema} document, found {found!r}")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise DocumentError(f"{path}: missing or invalid version")
    if version > max_version:
        raise DocumentError(
            f"{path}: {schema} version {version} is newer than this polyplan understands "
            f"(<= {max_version}); upgrade polyplan"
        )
    return doc
