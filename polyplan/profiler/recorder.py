"""The acceptance traces a profiling run accumulates, prompt by prompt, and the profile's pairs from them.

The file format belongs to ``polyplan.documents.traces.Traces``: the recorder builds one to save
(``traces``) and is rebuilt from one to resume (``resumed``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyplan.documents.files import DocumentError
from polyplan.documents.profile import GAP_EDGES, AcceptancePair
from polyplan.documents.traces import TRACE_MODES, Traces
from polyplan.profiler.acceptance import TREE_RANKS


@dataclass
class TraceRecorder:
    prompt_ids: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)
    greedy: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)
    sampling: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)
    #: model pairs: rank of the verifier's argmax among the drafter's top choices (draft trees)
    ranks: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)
    #: model pairs: the drafter's top-two logit gap (draft stops)
    gaps: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)

    def add(self, prompt_id: str, category: str, prompt_length: int, reference: list[int], scored: Any) -> None:
        """One prompt's reference and every pair's traces on it (``score_reference``'s result)."""
        self.prompt_ids.append(prompt_id)
        self.categories.append(category)
        self.prompt_lengths.append(prompt_length)
        self.tokens.append(np.asarray(reference, dtype=np.int64))
        for mode in TRACE_MODES:
            table = getattr(self, mode)
            for key, arr in getattr(scored, mode).items():
                table.setdefault(key, []).append(arr)

    def traces(self, identity: dict[str, Any]) -> Traces:
        """The sidecar to save: a pair's trace of a mode only where it covers every prompt (a run
        resumed from an older sidecar has no gaps for the prompts measured before)."""
        n = len(self.prompt_ids)
        return Traces.from_prompts(
            prompt_ids=self.prompt_ids,
            categories=self.categories,
            prompt_lengths=self.prompt_lengths,
            tokens=self.tokens,
            pairs={mode: {k: v for k, v in getattr(self, mode).items() if len(v) == n} for mode in TRACE_MODES},
            identity=identity,
        )

    @classmethod
    def resumed(cls, path: Path, identity: dict[str, Any]) -> TraceRecorder | None:
        """The traces saved by an interrupted run with the same identity, or None (missing,
        truncated or from other settings: the acceptance part is re-measured)."""
        try:
            saved = Traces.load(path)
            if saved.identity() != json.loads(json.dumps(identity, sort_keys=True)):
                return None
            tokens = saved.tokens
            if tokens is None:
                return None
            rec = cls(
                prompt_ids=saved.prompt_ids,
                categories=saved.categories,
                prompt_lengths=saved.prompt_lengths,
                tokens=saved.split(tokens),
            )
            for mode in TRACE_MODES:
                getattr(rec, mode).update({pair: saved.split(arr) for pair, arr in saved.pairs_of(mode).items()})
            return rec
        except (DocumentError, KeyError, json.JSONDecodeError):
            return None

    def pairs(self) -> list[AcceptancePair]:
        """The profile's pairs; gap bins only where the gaps cover every prompt."""
        out = []
        cats = sorted(set(self.categories))
        for key, parts in self.greedy.items():
            g = np.concatenate(parts)
            s = np.concatenate(self.sampling.get(key, parts))
            by_cat = {}
            for cat in cats:
                idx = [i for i, c in enumerate(self.categories) if c == cat]
                gc = np.concatenate([parts[i] for i in idx])
                sc = np.concatenate([self.sampling.get(key, parts)[i] for i in idx])
                if len(gc):
                    by_cat[cat] = {"greedy": float(gc.mean()), "sampling": float(sc.mean()), "positions": int(len(gc))}
            rank_rates: list[float] = []
            if key in self.ranks and len(g):
                r = np.concatenate(self.ranks[key])
                rank_rates = [round(float((r == k).mean()), 6) for k in range(1, TREE_RANKS + 1)]
            gaps = self.gaps.get(key, [])
            gap_bins = _gap_bins(g, np.concatenate(gaps)) if len(gaps) == len(parts) else {}
            out.append(
                AcceptancePair(
                    verifier=key[0],
                    drafter=key[1],
                    greedy=float(g.mean()) if len(g) else 0.0,
                    sampling=float(s.mean()) if len(s) else 0.0,
                    positions=int(len(g)),
                    by_category=by_cat,
                    rank_rates=rank_rates,
                    gap_bins=gap_bins,
                )
            )
        return out


def _gap_bins(greedy: np.ndarray, gaps: np.ndarray) -> dict[str, list[float]]:
    """A pair's greedy agreement counted per bin of the drafter's top-two logit gap (GAP_EDGES).
    A resumed run whose saved traces predate the gaps has fewer gaps than positions: no bins."""
    if len(gaps) != len(greedy):
        return {}
    bins = np.searchsorted(np.asarray(GAP_EDGES), gaps, side="right") - 1
    positions = np.bincount(bins, minlength=len(GAP_EDGES))
    agreed = np.bincount(bins, weights=greedy, minlength=len(GAP_EDGES))
    return {
        "edges": list(GAP_EDGES),
        "positions": [int(n) for n in positions],
        "agreed": [round(float(a), 4) for a in agreed],
    }
