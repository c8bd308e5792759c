"""A user's own prompts: read a prompt file into the same :class:`Prompt` records as the built-in set.

Profile, bench and the n-gram drafter's fitting all take a prompt set; the built-in one stays
the default (see ``polyplan/data/prompts.jsonl``). A prompt file is one of two formats:

JSONL
    One JSON object per non-blank line, with ``text`` (the prompt) or ``turns`` (a non-empty list
    of strings: the first is the prompt, the rest are kept as later user turns), not both;
    optional ``category`` (default ``uncategorized``), ``id`` (string or integer; default
    ``<file stem>-<line>``) and ``split``: ``"eval"`` (profiling and benchmarks only) or ``"fit"``
    (an n-gram drafter's table only), so one file can hold both without an n-gram drafter being
    scored on its own training text; a prompt without ``split`` serves both. Other keys (answers,
    references) are ignored.
JSON
    A ``.json`` file may also hold one JSON array of such objects (item ``N`` is named in errors).
Plain text
    One prompt per non-blank line (a multi-line prompt needs JSONL), category ``uncategorized``,
    id ``<file stem>-<line>``.

Which format, in this order: a ``.json`` name whose content starts with ``[`` is a JSON array; a
``.jsonl`` or ``.json`` name is JSONL and a ``.txt`` name is text;
any other name is JSONL when its first non-blank line starts with ``{``, else text. In a JSONL file
every non-blank line must be a JSON object. In a text file a later line may start with ``{`` (code),
but a line that is a whole JSON prompt record (an object with ``text`` or ``turns``) is refused:
mixed formats are a mistake, not a prompt. Every error names the file and the line.

The prompts are plain user messages; callers wrap them in the model's chat template as they do
for the built-in set.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyplan.data import Prompt, builtin_bytes, load_prompts, select_prompts
from polyplan.errors import UserError

DEFAULT_CATEGORY = "uncategorized"
BUILTIN_NAME = "built-in"
_JSONL_SUFFIXES = {".jsonl", ".json"}
_TEXT_SUFFIXES = {".txt"}
# control characters other than tab, form feed (source files) and escape (terminal logs): a line
# holding them is binary data, not text
_BINARY = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
SPLITS = ("eval", "fit")


class PromptFileError(UserError):
    """A prompt file that cannot be read as prompts; the message names the file and line."""


@dataclass(frozen=True)
class PromptSet:
    """Prompts and where they came from: ``name`` is ``built-in`` or the file's name."""

    name: str
    sha256: str
    prompts: tuple[Prompt, ...]
    path: str | None = None

    def select(self, categories: Iterable[str] | None = None, limit: int | None = None) -> list[Prompt]:
        """The prompts of ``categories``, ``limit`` of them taken round-robin over categories."""
        return select_prompts(self.prompts, categories, limit)

    def workload(self, selected: Sequence[Prompt]) -> dict[str, Any]:
        """What a profile or bench measured: the set's name and hash and the prompts used."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "count": len(selected),
            "categories": dict(Counter(p.category for p in selected)),
        }


def builtin_prompt_set(split: str = "eval") -> PromptSet:
    """The built-in prompts of one split ("eval" for profiling and benchmarks, "fit" for n-grams)."""
    return PromptSet(BUILTIN_NAME, hashlib.sha256(builtin_bytes()).hexdigest(), tuple(load_prompts(split)))


def prompt_set(path: str | Path | None, split: str = "eval") -> PromptSet:
    """The prompts of ``split`` in the file at ``path`` (those marked with that split and those
    with none), or the built-in ``split`` when ``path`` is None."""
    if path is None:
        return builtin_prompt_set(split)
    whole = read_prompt_file(path)
    kept = tuple(p for p in whole.prompts if p.split in (split, "file"))
    if not kept:
        raise PromptFileError(f'{path}: no prompt of split {split!r} (every prompt has another "split")')
    return PromptSet(whole.name, whole.sha256, kept, whole.path)


def read_prompt_file(path: str | Path) -> PromptSet:
    """Read a JSONL or plain-text prompt file (formats in the module doc)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(f"{path}: no such prompt file") from None
    except IsADirectoryError:
        raise PromptFileError(f"{path}: is a directory, not a prompt file") from None
    except OSError as e:
        raise PromptFileError(f"{path}: cannot read the prompt file ({e.strerror})") from None
    lines = _decode_lines(path, data)
    if path.suffix.lower() == ".json" and "\n".join(lines).lstrip().startswith("["):
        prompts = _json_array_prompts(path, "\n".join(lines))
        _check_unique_ids(path, prompts)
        return PromptSet(path.name, hashlib.sha256(data).hexdigest(), tuple(prompts), str(path))
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise PromptFileError(f"{path}: the prompt file is empty (no prompts)")
    for number, line in numbered:
        if _BINARY.search(line):
            raise PromptFileError(f"{path}:{number}: binary data, not a prompt (neither JSON nor text)")
    if _is_jsonl(path, numbered[0][1]):
        prompts = [_json_prompt(path, number, line) for number, line in numbered]
    else:
        prompts = [_text_prompt(path, number, line) for number, line in numbered]
    _check_unique_ids(path, prompts)
    return PromptSet(path.name, hashlib.sha256(data).hexdigest(), tuple(prompts), str(path))


def _decode_lines(path: Path, data: bytes) -> list[str]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PromptFileError(f"{path}:{line}: not UTF-8 text (neither JSON nor text)") from None
    return text.split("\n")


def _is_jsonl(path: Path, first_line: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return True
    if suffix in _TEXT_SUFFIXES:
        return False
    return first_line.lstrip().startswith("{")


def _id_for(path: Path, number: int) -> str:
    return f"{path.stem}-{number}"


def _text_prompt(path: Path, number: int, line: str) -> Prompt:
    text = line.rstrip("\r")
    if text.lstrip().startswith("{"):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and ("text" in record or "turns" in record):
            raise PromptFileError(
                f"{path}:{number}: a JSON prompt record in a plain-text prompt file (one prompt per line); "
                "make every line a JSON object (name the file .jsonl) or none"
            )
    return Prompt(_id_for(path, number), DEFAULT_CATEGORY, "file", text, (), f"{path}:{number}")


def _json_array_prompts(path: Path, text: str) -> list[Prompt]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}:{e.lineno}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(items, list) or not items:
        raise PromptFileError(f"{path}: a JSON prompt file holds a non-empty array of prompt objects")
    return [_record_prompt(path, f"{path}: item {i}", record, i) for i, record in enumerate(items, start=1)]


def _json_prompt(path: Path, number: int, line: str) -> Prompt:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptFileError(
            f"{where}: not JSON ({e.msg} at column {e.colno}); a JSONL prompt file needs one JSON object per line"
        ) from None
    return _record_prompt(path, where, record, number)


def _record_prompt(path: Path, where: str, record: Any, number: int) -> Prompt:
    if not isinstance(record, dict):
        raise PromptFileError(f'{where}: expected a JSON object with "text" or "turns", found {type(record).__name__}')
    has_text, has_turns = "text" in record, "turns" in record
    if has_text and has_turns:
        raise PromptFileError(f'{where}: give "text" or "turns", not both')
    if not has_text and not has_turns:
        keys = ", ".join(sorted(record)) or "none"
        raise PromptFileError(f'{where}: no "text" or "turns" (keys found: {keys})')
    if has_text:
        text = record["text"]
        if not isinstance(text, str) or not text.strip():
            raise PromptFileError(f'{where}: "text" must be a non-empty string')
        later: tuple[str, ...] = ()
    else:
        turns = record["turns"]
        if not isinstance(turns, list):
            raise PromptFileError(f'{where}: "turns" must be a list of strings, found {type(turns).__name__}')
        if not turns:
            raise PromptFileError(f'{where}: "turns" is empty; its first entry is the prompt')
        bad = next((i for i, t in enumerate(turns) if not isinstance(t, str) or not t.strip()), None)
        if bad is not None:
            raise PromptFileError(f'{where}: turn {bad + 1} of "turns" is not a non-empty string')
        text, later = turns[0], tuple(turns[1:])
    category = record.get("category", DEFAULT_CATEGORY)
    if not isinstance(category, str) or not category.strip():
        raise PromptFileError(f'{where}: "category" must be a non-empty string')
    pid = record.get("id", _id_for(path, number))
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise PromptFileError(f'{where}: "id" must be a non-empty string or an integer')
    split = record.get("split", "file")  # "file": no split given, the prompt serves both
    if split != "file" and split not in SPLITS:
        raise PromptFileError(f'{where}: "split" must be "eval" or "fit", got {split!r}')
    return Prompt(str(pid), category.strip(), split, text, later, where)


def _check_unique_ids(path: Path, prompts: Sequence[Prompt]) -> None:
    # ids key the profiler's resumable units: two prompts with one id would be measured once
    first: dict[str, str] = {}
    for p in prompts:
        if p.id in first:
            raise PromptFileError(f"{p.origin}: id {p.id!r} is used again (first at {first[p.id]})")
        first[p.id] = p.origin


def check_prompt_fits(prompt: Prompt, length: int, limit: int | None, new_tokens: int, model: str) -> None:
    """Refuse a prompt of ``length`` tokens (chat template included) that leaves fewer than
    ``new_tokens`` positions in ``model``'s context of ``limit`` tokens (None: unbounded)."""
    if limit is not None and length + new_tokens > limit:
        need = f"{length} tokens" + (f" + {new_tokens} new" if new_tokens else "")
        raise PromptFileError(
            f"{prompt.origin}: prompt {prompt.id!r} needs {need} but {model} holds {limit}: "
            "shorten or drop it" + (" (or lower --max-new-tokens)" if new_tokens > 1 else "")
        )


def describe_workload(workload: dict[str, Any] | None) -> str:
    """One line for a profile's or plan's ``workload`` (absent in profiles made before it was recorded)."""
    if not workload:
        return "not recorded (a profile from before prompt files: the built-in eval set)"
    cats = ", ".join(f"{c} {n}" for c, n in (workload.get("categories") or {}).items())
    return f"{workload.get('count')} prompts of {workload.get('name')} (sha256 {str(workload.get('sha256'))[:12]}" + (
        f"; {cats})" if cats else ")"
    )
