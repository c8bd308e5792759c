"""The member speeds a plan's chain measured in earlier ``polyplan run`` processes.

One ``polyplan run`` is one request in a fresh process, so the speeds the chain measures (its
members' passes against the profile's curves: ``executor.guard.MemberSpeed``) would die with it
and every run's start would price the chain at the profile's costs, however far the machine has
drifted since it profiled. This cache entry carries them to the next run of the same plan on the
same CPU, faded by their age (FADE_PER_HOUR) and, as requests in one process are, by half per
later run. Decode speeds only, in practice: a member's one prefill per run is its first, cold
pass, which the chain leaves out of its evidence.

Layout: ``<cache>/speeds/<key>.json``; the key is the plan file's content and the pool it is run
with, so a re-optimized plan starts from its profile again. A cache entry, not a user document:
one that is unreadable, of another CPU, of other members or too old is ignored (and replaced by
the next run's). Runs of one plan at once: the last to finish writes its evidence (atomically),
the others' is dropped."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from polyplan.cache import cache_root
from polyplan.documents.files import DocumentError, atomic_write_json

SCHEMA = "polyplan.member-speeds"
VERSION = 1
#: an hour-old run's evidence counts this much of a run just before (the machine drifts over tens
#: of minutes: the same VM ran the same passes 1.18-1.33x slower 30 minutes after profiling)
FADE_PER_HOUR = 0.5
#: evidence older than this is not read at all
MAX_AGE_S = 24 * 3600.0
KINDS = ("decode", "prefill")

#: per kind ("decode", "prefill"): member name -> [measured seconds, profiled seconds, passes]
Evidence = dict[str, dict[str, list[float]]]


def speeds_path(plan_path: str | Path, pool: str | None = None) -> Path:
    """Where the member speeds of runs of this plan (its exact content) with ``pool`` (None: the
    plan's own) are kept."""
    h = hashlib.sha256(Path(plan_path).read_bytes())
    h.update(b"\0pool=" + (pool or "").encode())
    key = h.hexdigest()[:24]
    return cache_root() / "speeds" / f"{key}.json"


def save_speeds(path: Path, machine: dict[str, Any], names: list[str], evidence: Evidence) -> None:
    """Write the chain's speed evidence atomically (a failure to write a cache entry is not the
    run's failure: the caller may ignore ``DocumentError``)."""
    doc = {
        "schema": SCHEMA,
        "version": VERSION,
        "written_unix_s": time.time(),
        "machine": machine,
        "members": list(names),
        **{kind: evidence.get(kind, {}) for kind in KINDS},
    }
    atomic_write_json(path, doc)


def load_speeds(path: Path, machine: dict[str, Any], names: list[str], now: float | None = None) -> Evidence | None:
    """The evidence of earlier runs, faded by its age; None where there is none to trust (no file,
    unreadable, another CPU, other members, too old)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("version") != VERSION:
        return None
    if doc.get("machine") != machine or doc.get("members") != list(names):
        return None
    written = doc.get("written_unix_s")
    if not isinstance(written, int | float):
        return None
    age = (time.time() if now is None else now) - written
    if not 0.0 <= age <= MAX_AGE_S:
        return None
    weight = FADE_PER_HOUR ** (age / 3600.0)
    try:
        return {kind: _faded(doc.get(kind, {}), names, weight) for kind in KINDS}
    except DocumentError:
        return None


def _faded(entries: Any, names: list[str], weight: float) -> dict[str, list[float]]:
    if not isinstance(entries, dict):
        raise DocumentError("speed evidence is not a mapping")
    out = {}
    for name, e in entries.items():
        ok = name in names and isinstance(e, list) and len(e) == 3
        if not ok or not all(isinstance(x, int | float) and math.isfinite(x) and x >= 0 for x in e):
            raise DocumentError(f"bad speed evidence for {name!r}")
        if e[2] > 0 and not (e[0] > 0 and e[1] > 0):
            raise DocumentError(f"speed evidence for {name!r} has passes but no seconds")
        out[name] = [float(x) * weight for x in e]
    return out
