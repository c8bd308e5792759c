"""The profile document: what the profiler measured on one machine for one pool.

JSON layout (version 1)::

    {"schema": "polyplan.profile", "version": 1, "created": "<iso time>",
     "machine": {...free-form facts: cpu, cores, torch_threads, gpu, torch, transformers, python...},
     "pool": "<pool name>", "target": "<candidate name>",
     "settings": {...free-form: prompts, max_new_tokens, temperature, budget...,
                  "workload": {"name": "built-in" | prompt file name, "sha256", "count", "categories"}},
     "candidates": [{"name", "source", "derivation", "dtype", "device", "params",
                     "point_mass", "random_weights", "backend", "gguf"}],
     "latency": {"<name>": {"new_tokens": [1, 2, 4, ...], "context": [64, 256, ...],
                            "median_s": [[...per new_tokens...] per context],
                            "spread_s": [[...]] (interquartile range), "repeats": int}},
     "acceptance": {"temperature": float,
                    "pairs": [{"verifier", "drafter", "greedy", "sampling", "positions",
                               "by_category": {"<cat>": {"greedy", "sampling", "positions"}},
                               "rank_rates": [a_1, ..., a_8] (greedy, draft trees; optional),
                               "gap_bins": {"edges", "positions", "agreed"} (greedy agreement by the
                               drafter's top-two logit gap, draft stops; optional)}]},
     "prefill": {"<name>": {"context": [64, 256, ...], "median_s": [...], "spread_s": [...], "repeats": int}}
                (optional: profiles before prefill was measured have none),
     "windows": {"sink": int, "sizes": [256, ...], "prompts": [ids of the long prompts measured],
                 "by_drafter": {"<name>": {"full" | "<size>": {"greedy_sum", "sampling_sum", "positions"}}}}
                (optional: acceptance by the target of each drafter reading the whole long prompt or
                 only its sink + last <size> tokens, teacher-forced on the same references),
     "screened": {"<name>": "<reason>"} (optional: members measured no further than their first
                 latency row, slower than the target at every pass size; polyplan.profiler.screen),
     "traces": "<sidecar file name, relative to the profile>" or null,
     "complete": bool (optional, default true; false while a measurement is unfinished)}

Acceptance values are per-token acceptance probabilities (``alpha`` in staged-decoding.md):
greedy = argmax agreement; sampling = sum_x min(p, q) at ``temperature``. The sidecar (.npz)
holds per-position traces under keys ``greedy/<verifier>/<drafter>`` and
``sampling/<verifier>/<drafter>`` (float32, concatenated over references) and ``segments``
(int64 start offsets of each reference, plus the total at the end) and ``categories``; its one
reader and writer is ``polyplan.documents.traces.Traces`` (every key listed there).
A candidate whose latency was measured with random weights is marked ``random_weights``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from polyplan.documents.files import DocumentError, atomic_write_json, read_json

#: the sink of a windowed drafter where neither its pool file nor the profile names one: it reads the
#: first WINDOW_SINK tokens of the sequence (StreamingLLM keeps four initial tokens as attention
#: sinks) and its last ``window`` (polyplan.models.windowed). The one home of the number: the pure
#: planner, the profiler and the models all read it from here.
WINDOW_SINK = 4
#: the range a point-mass drafter's long-prompt factor is kept in: measured on a few long prompts
#: (a copying answer, a rag or summary prompt, may double a prompt-lookup's acceptance; more is noise)
LONG_PROMPT_FACTOR_RANGE = (0.25, 4.0)
#: lower edges of the logit-gap bins a model drafter's greedy agreement is counted in (the last bin
#: is open-ended): a quantized copy disagrees with its target almost only below a gap of ~0.35
#: (measured on SmolLM2 :q8_0, proofs/draft-stop.md), so the bins are fine there
GAP_EDGES = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0)

PROFILE_SCHEMA = "polyplan.profile"
PROFILE_VERSION = 1


@dataclass
class Candidate:
    name: str
    source: str = ""
    derivation: str = ""
    dtype: str = ""
    device: str = "cpu"
    params: int | None = None
    point_mass: bool = False
    random_weights: bool = False
    #: "transformers" or "llama.cpp" (profiles written before llama.cpp members: transformers)
    backend: str = "transformers"
    #: the GGUF file a llama.cpp candidate runs (what llama-server would be given), else ""
    gguf: str = ""
    #: fewest tokens it scores per pass inside a chain (a llama.cpp target pads shorter passes to
    #: min_pass, so such a pass costs T(min_pass); its T(1) is its one-token decoding alone)
    min_pass: int = 1


@dataclass
class LatencyCurve:
    """Median forward time T(n, c) on a grid of new-token counts n and cached contexts c."""

    new_tokens: list[int]
    context: list[int]
    median_s: list[list[float]]  # [context index][new_tokens index]
    spread_s: list[list[float]] = field(default_factory=list)
    repeats: int = 0

    def __post_init__(self) -> None:
        if not self.new_tokens or not self.context:
            raise DocumentError("a latency curve needs at least one new-token count and one context")
        if len(self.median_s) != len(self.context) or any(len(r) != len(self.new_tokens) for r in self.median_s):
            raise DocumentError("latency median_s must have one row per context and one entry per new-token count")

    def __call__(self, n: float, c: float | None = None) -> float:
        """T(n, c) by piecewise-linear interpolation (constant beyond the measured grid)."""
        c = self.context[0] if c is None else c
        row = [_interp(self.context, [r[j] for r in self.median_s], c) for j in range(len(self.new_tokens))]
        return _interp(self.new_tokens, row, n)

    def with_row(
        self, context: int, median_s: list[float], spread_s: list[float], *, new_tokens: list[int], repeats: int
    ) -> LatencyCurve:
        """This curve with the row of ``context`` added (or replaced), on the grid ``new_tokens``."""
        spreads = self.spread_s or [[]] * len(self.context)
        rows = {c: (m, s) for c, m, s in zip(self.context, self.median_s, spreads, strict=True)}
        rows[context] = (median_s, spread_s)
        ctxs = sorted(rows)
        return LatencyCurve(new_tokens, ctxs, [rows[c][0] for c in ctxs], [rows[c][1] for c in ctxs], repeats)


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class PrefillCurve:
    """Median time P(c) of one pass over ``c`` prompt tokens from an empty cache (a member's
    prefill). Piecewise-linear between measured contexts; past the longest, the cost per token
    rising on as between the last two (never below the last segment's line); below the shortest,
    the first segment's slope but never below the shortest's cost per
    token times ``c`` (a llama.cpp prefill's cost per token rises with length: extrapolating its
    128->512 slope priced 50 tokens at a third of what they took)."""

    context: list[int]
    median_s: list[float]
    spread_s: list[float] = field(default_factory=list)
    repeats: int = 0

    def __post_init__(self) -> None:
        if not self.context or len(self.median_s) != len(self.context):
            raise DocumentError("a prefill curve needs one median per measured context")
        if any(b <= a for a, b in pairwise(self.context)):
            raise DocumentError("prefill contexts must be increasing")

    def __call__(self, c: float) -> float:
        if c <= 0:
            return 0.0
        xs, ys = self.context, self.median_s
        if len(xs) == 1:
            return max(0.0, ys[0] * c / xs[0])
        if c <= xs[0]:
            i = 1
        elif c >= xs[-1]:
            i = len(xs) - 1
        else:
            i = bisect.bisect_right(xs, c)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        linear = y0 + (y1 - y0) * (c - x0) / (x1 - x0)
        if c < xs[0]:
            return max(0.0, linear, ys[0] * c / xs[0])
        if c > x1 and x0 > 0:
            # past the longest: the cost per token keeps rising as it did between the last two
            # (attention over the prompt grows with it): P(c) = c (r1 + s (c - x1)); the last
            # segment's line priced a 2803-token llama.cpp prefill 22% under what it took
            r0, r1 = y0 / x0, y1 / x1
            rising = c * (r1 + (r1 - r0) / (x1 - x0) * (c - x1))
            return max(0.0, linear, rising)
        return max(0.0, linear)

    def with_row(self, context: int, median_s: float, spread_s: float, repeats: int) -> PrefillCurve:
        """This curve with the prefill of ``context`` tokens added (or replaced)."""
        spreads = self.spread_s or [0.0] * len(self.context)
        rows = dict(zip(self.context, zip(self.median_s, spreads, strict=True), strict=True))
        rows[context] = (median_s, spread_s)
        ctxs = sorted(rows)
        return PrefillCurve(ctxs, [rows[c][0] for c in ctxs], [rows[c][1] for c in ctxs], repeats)


@dataclass
class AcceptancePair:
    verifier: str
    drafter: str
    greedy: float
    sampling: float
    positions: int
    by_category: dict[str, dict[str, float]] = field(default_factory=dict)
    #: greedy draft-tree rates a_1, a_2, ...: the verifier's argmax is the drafter's r-th choice
    #: ([] in profiles made before trees)
    rank_rates: list[float] = field(default_factory=list)
    #: model drafters: the greedy agreement binned by the drafter's top-two logit gap --
    #: ``{"edges": GAP_EDGES, "positions": [...], "agreed": [...]}`` ({} in profiles made before)
    gap_bins: dict[str, list[float]] = field(default_factory=dict)

    def alpha(self, mode: str) -> float:
        if mode not in ("greedy", "sampling"):
            raise ValueError(f"acceptance mode must be 'greedy' or 'sampling', not {mode!r}")
        return self.greedy if mode == "greedy" else self.sampling


@dataclass
class Profile:
    pool: str
    target: str
    candidates: list[Candidate]
    latency: dict[str, LatencyCurve]
    pairs: list[AcceptancePair]
    temperature: float = 1.0
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    traces: str | None = None
    version: int = PROFILE_VERSION
    #: False while the profiler is still measuring (interrupted or out of budget): rerun to resume
    complete: bool = True
    #: prefill curves P(c) per model candidate (empty in profiles made before they were measured)
    prefill: dict[str, PrefillCurve] = field(default_factory=dict)
    #: windowed acceptance on long prompts (see the module doc); {} when not measured
    windows: dict[str, Any] = field(default_factory=dict)
    #: members the profiler measured no further than their first latency row, with the reason
    #: (polyplan.profiler.screen); the planner leaves them out
    screened: dict[str, str] = field(default_factory=dict)

    # ---- queries the planner uses -------------------------------------------------------
    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.candidates)
        raise DocumentError(f"profile has no candidate {name!r} (it has: {known})")

    def pair(self, verifier: str, drafter: str) -> AcceptancePair:
        for p in self.pairs:
            if p.verifier == verifier and p.drafter == drafter:
                return p
        raise DocumentError(f"profile has no acceptance measurement for {drafter!r} drafting for {verifier!r}")

    def window_factor(self, drafter: str, window: int, mode: str) -> float | None:
        """What reading only ``window`` tokens (plus the sink) keeps of ``drafter``'s acceptance by
        the target: alpha_window / alpha_full on the same long prompts, at most 1; None when not
        measured."""
        rows = (self.windows.get("by_drafter") or {}).get(drafter) or {}
        full, part = rows.get("full"), rows.get(str(window))
        if not full or not part or not full.get("positions") or not part.get("positions"):
            return None
        key = "greedy_sum" if mode == "greedy" else "sampling_sum"
        return _kept(part[key] / part["positions"], full[key] / full["positions"])

    def window_factor_by_position(self, drafter: str, window: int, mode: str) -> list[list[float]]:
        """``[[first position, factor], ...]`` by answer-position bucket (the last bucket reaching as
        far as the reference did); empty when the profile did not measure by position."""
        rows = (self.windows.get("by_drafter") or {}).get(drafter) or {}
        full = (rows.get("full") or {}).get("by_position") or {}
        part = (rows.get(str(window)) or {}).get("by_position") or {}
        index = 0 if mode == "greedy" else 1
        out = []
        for lo in sorted(set(full) & set(part), key=int):
            f, p = full[lo], part[lo]
            if f[2] > 0 and p[2] > 0:
                out.append([int(lo), _kept(p[index] / p[2], f[index] / f[2])])
        return out

    def long_prompt_factor(self, drafter: str, mode: str) -> float | None:
        """What the profile's long prompts do to a point-mass drafter's acceptance by the target:
        alpha on the long prompts (whole prompt read) / alpha on the profile's own prompts, within
        LONG_PROMPT_FACTOR_RANGE; None when not measured (profiles before it, model drafters)."""
        measured = self._long_prompt_rows(drafter, mode)
        if measured is None:
            return None
        full, short = measured
        key = "greedy_sum" if mode == "greedy" else "sampling_sum"
        return _long_factor(full[key] / full["positions"], short)

    def long_prompt_factor_by_position(self, drafter: str, mode: str) -> list[list[float]]:
        """``[[first position, factor], ...]``: the long-prompt factor by answer-position bucket (a
        point-mass drafter also copies from the answer: the longer the answer, the more it finds);
        empty when not measured by position."""
        measured = self._long_prompt_rows(drafter, mode)
        if measured is None:
            return []
        full, short = measured
        buckets = full.get("by_position") or {}
        index = 0 if mode == "greedy" else 1
        return [
            [int(b), _long_factor(buckets[b][index] / buckets[b][2], short)]
            for b in sorted(buckets, key=int)
            if buckets[b][2] > 0
        ]

    def _long_prompt_rows(self, drafter: str, mode: str) -> tuple[dict, float] | None:
        """A point-mass drafter's whole-prompt row of the windows phase and its acceptance on the
        profile's own prompts, or None when either is missing."""
        full = ((self.windows.get("by_drafter") or {}).get(drafter) or {}).get("full")
        known = {c.name: c for c in self.candidates}
        if not full or not full.get("positions") or drafter not in known or not known[drafter].point_mass:
            return None
        try:
            return full, self.pair(self.target, drafter).alpha(mode)
        except DocumentError:
            return None

    def long_prompt_tokens(self) -> float | None:
        """The mean length of the long prompts the windows phase measured, None when not recorded."""
        lengths = self.windows.get("prompt_tokens") or []
        return float(sum(lengths) / len(lengths)) if lengths else None

    def window_sizes(self) -> list[int]:
        return [int(w) for w in self.windows.get("sizes", [])] if self.windows.get("by_drafter") else []

    def restricted(self, names: list[str]) -> Profile:
        """This profile with only the candidates ``names`` (the target always stays): what a
        plan made from part of a measured pool sees. Unknown names are one error line."""
        known = [c.name for c in self.candidates]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DocumentError(
                f"the profile has no member {', '.join(map(repr, unknown))} (members: {', '.join(known)})"
            )
        keep = {self.target, *names}
        return replace(
            self,
            candidates=[c for c in self.candidates if c.name in keep],
            latency={k: v for k, v in self.latency.items() if k in keep},
            pairs=[p for p in self.pairs if p.verifier in keep and p.drafter in keep],
            prefill={k: v for k, v in self.prefill.items() if k in keep},
            windows={
                **self.windows,
                "by_drafter": {k: v for k, v in (self.windows.get("by_drafter") or {}).items() if k in keep},
            }
            if self.windows
            else {},
            screened={k: v for k, v in self.screened.items() if k in keep},
        )

    def validate(self) -> None:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise DocumentError("profile lists a candidate twice")
        if self.target not in names:
            raise DocumentError(f"profile target {self.target!r} is not among its candidates")
        for name in [*self.latency, *self.prefill, *self.screened]:
            if name not in names:
                raise DocumentError(f"latency or prefill for unknown candidate {name!r}")
        for p in self.pairs:
            if p.verifier not in names or p.drafter not in names:
                raise DocumentError(f"acceptance pair {p.drafter}->{p.verifier} names an unknown candidate")
            for v in (p.greedy, p.sampling):
                if not (0.0 <= v <= 1.0) or math.isnan(v):
                    raise DocumentError(f"acceptance {v} of {p.drafter}->{p.verifier} is not a probability")

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PROFILE_SCHEMA,
            "version": self.version,
            "created": self.created,
            "machine": self.machine,
            "pool": self.pool,
            "target": self.target,
            "settings": self.settings,
            "candidates": [asdict(c) for c in self.candidates],
            "latency": {k: asdict(v) for k, v in self.latency.items()},
            "prefill": {k: asdict(v) for k, v in self.prefill.items()},
            "windows": self.windows,
            "screened": self.screened,
            "acceptance": {"temperature": self.temperature, "pairs": [asdict(p) for p in self.pairs]},
            "traces": self.traces,
            "complete": self.complete,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], origin: str = "profile") -> Profile:
        try:
            prof = cls(
                pool=doc["pool"],
                target=doc["target"],
                candidates=[Candidate(**c) for c in doc["candidates"]],
                latency={k: LatencyCurve(**v) for k, v in doc.get("latency", {}).items()},
                pairs=[AcceptancePair(**p) for p in doc.get("acceptance", {}).get("pairs", [])],
                temperature=float(doc.get("acceptance", {}).get("temperature", 1.0)),
                machine=doc.get("machine", {}),
                settings=doc.get("settings", {}),
                created=doc.get("created", ""),
                traces=doc.get("traces"),
                version=doc["version"],
                complete=bool(doc.get("complete", True)),
                prefill={k: PrefillCurve(**v) for k, v in (doc.get("prefill") or {}).items()},
                windows=dict(doc.get("windows") or {}),
                screened={str(k): str(v) for k, v in (doc.get("screened") or {}).items()},
            )
        except DocumentError as e:
            raise DocumentError(f"{origin}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise DocumentError(f"{origin}: malformed profile ({type(e).__name__}: {e})") from None
        try:
            prof.validate()
        except DocumentError as e:
            raise DocumentError(f"{origin}: {e}") from None
        return prof

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.from_dict(read_json(path, schema=PROFILE_SCHEMA, max_version=PROFILE_VERSION), str(path))

    def save(self, path: str | Path) -> None:
        self.validate()
        atomic_write_json(path, self.to_dict())

    def traces_path(self, profile_path: str | Path) -> Path | None:
        return None if not self.traces else Path(profile_path).parent / self.traces


def _long_factor(rate: float, short: float) -> float:
    """A long-prompt acceptance over the profile's own, within LONG_PROMPT_FACTOR_RANGE."""
    lo, hi = LONG_PROMPT_FACTOR_RANGE
    return max(lo, min(hi, rate / max(short, 1e-9)))


def _kept(a_part: float, a_full: float) -> float:
    """What a window keeps of an acceptance: a_part / a_full within [0, 1]."""
    return 1.0 if a_full <= 0 else max(0.0, min(1.0, a_part / a_full))
