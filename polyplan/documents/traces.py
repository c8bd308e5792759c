"""The acceptance traces sidecar of a profile (``<profile>.traces.npz``): its one reader and writer.

Keys (numpy arrays, one npz member each, in this order when written):

* ``segments`` -- int64 start offsets of each prompt's reference in the concatenated traces, plus
  the total at the end (``len(prompts) + 1`` entries);
* ``categories``, ``prompt_ids`` -- str, one per prompt; ``prompt_lengths`` -- int64 prompt tokens;
* ``tokens`` -- int64, the target's greedy references, concatenated;
* ``identity`` -- a JSON string: pool, settings and machine of the run that wrote it (a resumed
  run keeps a sidecar only when this matches);
* ``<mode>/<verifier>/<drafter>`` for mode ``greedy`` and ``sampling`` (float32 per-position
  acceptance), ``ranks`` (the rank of the verifier's argmax among the drafter's choices) and
  ``gaps`` (the drafter's gap between its two largest logits; absent in older sidecars).

``Traces`` wraps the arrays and does the arithmetic every reader needs (per-prompt bounds, a pair's
trace, per-prompt means, answer lengths, the mean prompt length). Pure numpy + stdlib.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from polyplan.documents.files import DocumentError, atomic_write_bytes

#: the kinds of per-position trace, the first part of a trace key
TRACE_MODES = ("greedy", "sampling", "ranks", "gaps")
#: the keys that are not traces of a pair, in the order they are written
META_KEYS = ("segments", "categories", "prompt_ids", "prompt_lengths", "tokens", "identity")


def pair_key(mode: str, verifier: str, drafter: str) -> str:
    return f"{mode}/{verifier}/{drafter}"


class Traces:
    """The arrays of a traces sidecar, by key (see the module doc)."""

    def __init__(self, arrays: Mapping[str, Any]) -> None:
        self._arrays = {k: np.asarray(v) for k, v in arrays.items()}

    # ------------------------------------------------------------------ building and files

    @classmethod
    def from_prompts(
        cls,
        *,
        prompt_ids: Sequence[str],
        categories: Sequence[str],
        prompt_lengths: Sequence[int],
        tokens: Sequence[np.ndarray],
        pairs: Mapping[str, Mapping[tuple[str, str], Sequence[np.ndarray]]],
        identity: Mapping[str, Any] | None = None,
    ) -> Traces:
        """Traces from per-prompt pieces: ``pairs[mode][(verifier, drafter)]`` one array per prompt."""
        arrays: dict[str, np.ndarray] = {
            "segments": np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int64),
            "categories": np.array(list(categories), dtype=str),
            "prompt_ids": np.array(list(prompt_ids), dtype=str),
            "prompt_lengths": np.array(list(prompt_lengths), dtype=np.int64),
            "tokens": np.concatenate(list(tokens)).astype(np.int64) if len(tokens) else np.zeros(0, np.int64),
        }
        if identity is not None:
            arrays["identity"] = np.array(json.dumps(identity, sort_keys=True))
        for mode in TRACE_MODES:
            for (v, d), parts in pairs.get(mode, {}).items():
                arrays[pair_key(mode, v, d)] = np.concatenate(list(parts)).astype(np.float32)
        return cls(arrays)

    @classmethod
    def load(cls, path: str | Path) -> Traces:
        """Read a sidecar; a missing, truncated or corrupt file is a ``DocumentError`` saying so."""
        path = Path(path)
        if not path.exists():
            raise DocumentError(f"{path}: traces sidecar named by the profile is missing")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return cls({k: npz[k] for k in npz.files})
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DocumentError(f"{path}: cannot read traces ({e})") from None

    @classmethod
    def of_profile(cls, profile: Any, profile_path: str | Path) -> Traces:
        """The sidecar a profile (``polyplan.documents.profile.Profile``) names beside its file."""
        path = profile.traces_path(profile_path)
        if path is None:
            raise DocumentError(f"{profile_path}: the profile has no traces sidecar")
        return cls.load(path)

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, **self._arrays)
        return buf.getvalue()

    def save(self, path: str | Path) -> None:
        """Write the sidecar atomically (keys in the order they were given)."""
        atomic_write_bytes(path, self.to_npz())

    def validate(self) -> None:
        """Check that the segments cover every trace and the per-prompt arrays have one entry per prompt."""
        seg = self.segments
        if seg is None:
            raise DocumentError("traces without segments")
        if len(seg) < 1 or int(seg[0]) != 0 or np.any(np.diff(seg) < 0):
            raise DocumentError("traces: segments must start at 0 and never decrease")
        total, prompts = int(seg[-1]), len(seg) - 1
        for key in self.pair_keys():
            if len(self._arrays[key]) != total:
                raise DocumentError(f"traces: {key} has {len(self._arrays[key])} positions, the segments {total}")
        for key in ("categories", "prompt_ids", "prompt_lengths"):
            if key in self._arrays and len(self._arrays[key]) != prompts:
                raise DocumentError(f"traces: {key} has {len(self._arrays[key])} entries for {prompts} prompts")
        if "tokens" in self._arrays and len(self._arrays["tokens"]) != total:
            raise DocumentError(f"traces: tokens has {len(self._arrays['tokens'])} entries, the segments {total}")

    # ------------------------------------------------------------------ raw access

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays by key, as the sidecar holds them (a new dict)."""
        return dict(self._arrays)

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def keys(self) -> Iterator[str]:
        return iter(self._arrays)

    def pair_keys(self, mode: str | None = None) -> list[str]:
        """The trace keys (``mode/verifier/drafter``), of one mode when given, in file order."""
        return [
            k
            for k in self._arrays
            if k.partition("/")[0] in TRACE_MODES and k.partition("/")[2] and (mode is None or k.startswith(f"{mode}/"))
        ]

    def mode_traces(self, mode: str) -> list[np.ndarray]:
        """Every pair's trace of ``mode``, in file order."""
        return [self._arrays[k] for k in self.pair_keys(mode)]

    def pair(self, mode: str, verifier: str, drafter: str) -> np.ndarray | None:
        """The per-position trace of one pair (concatenated over prompts), None when not measured."""
        return self._arrays.get(pair_key(mode, verifier, drafter))

    def pairs_of(self, mode: str) -> dict[tuple[str, str], np.ndarray]:
        """``{(verifier, drafter): trace}`` of one mode."""
        out = {}
        for key in self.pair_keys(mode):
            v, d = key.partition("/")[2].split("/", 1)
            out[(v, d)] = self._arrays[key]
        return out

    def identity(self) -> Any:
        """The identity of the run that wrote the sidecar (parsed JSON), None when not recorded."""
        raw = self._arrays.get("identity")
        return None if raw is None else json.loads(str(raw))

    # ------------------------------------------------------------------ per prompt

    @property
    def segments(self) -> np.ndarray | None:
        return self._arrays.get("segments")

    @property
    def prompt_ids(self) -> list[str]:
        return [str(x) for x in self._arrays.get("prompt_ids", ())]

    @property
    def categories(self) -> list[str]:
        return [str(x) for x in self._arrays.get("categories", ())]

    @property
    def prompt_lengths(self) -> list[int]:
        return [int(x) for x in self._arrays.get("prompt_lengths", ())]

    @property
    def tokens(self) -> np.ndarray | None:
        return self._arrays.get("tokens")

    def bounds(self) -> list[tuple[int, int]]:
        """Each prompt's (start, end) in the concatenated traces; [] without at least one segment."""
        seg = self.segments
        if seg is None or len(seg) < 2:
            return []
        return [(int(a), int(b)) for a, b in pairwise(seg)]

    def split(self, array: np.ndarray) -> list[np.ndarray]:
        """A concatenated array cut into its prompts' pieces."""
        return [array[a:b] for a, b in self.bounds()]

    def per_prompt(self, mode: str, verifier: str, drafter: str) -> list[np.ndarray] | None:
        """A pair's trace cut by prompt, None when not measured."""
        trace = self.pair(mode, verifier, drafter)
        return None if trace is None else self.split(trace)

    def prompt_means(self, trace: np.ndarray, bounds: Sequence[tuple[int, int]] | None = None) -> list[float]:
        """The mean of ``trace`` over each prompt's positions (``bounds``, default every prompt's)."""
        return [float(np.mean(trace[a:b])) for a, b in (self.bounds() if bounds is None else bounds)]

    def generation_lengths(self) -> list[int]:
        """The target's reference answer length on each prompt."""
        return [b - a for a, b in self.bounds()]

    def mean_prompt_length(self) -> float | None:
        """The mean prompt length of the profiled workload, None when not recorded."""
        lengths = self.prompt_lengths
        return float(sum(lengths) / len(lengths)) if lengths else None

    def decoding_context(self, max_new_tokens: int | None = None) -> float | None:
        """The mean KV-cache length while decoding: mean prompt length plus half the generation
        (``max_new_tokens``, or the mean reference length when None); None when the traces do not
        record a prompt length for every segment."""
        lengths, seg = self.prompt_lengths, self.segments
        if not lengths or seg is None or len(seg) != len(lengths) + 1:
            return None
        refs = self.generation_lengths()
        generated = max_new_tokens if max_new_tokens is not None else sum(refs) / len(refs)
        return float(sum(lengths) / len(lengths) + generated / 2)
