"""Teacher-forced acceptance: one scoring pass per candidate over the target's own text.

For a reference continuation ``r`` of a prompt, every model candidate is fed ``prompt + r`` and
its next-token logits at the ``len(r)`` positions that predict ``r`` are kept. For an ordered pair
(verifier ``V``, drafter ``D``) and position ``t`` with processed distributions ``p = P_V(.|r<t)``
and ``q = P_D(.|r<t)``:

* greedy acceptance   ``a_t = [argmax p == argmax q]``
* sampling acceptance ``a_t = sum_x min(p(x), q(x))``  (= 1 - total variation; staged-decoding.md)

Draft trees need the acceptance of second and third choices: for each model pair the *rank* of the
verifier's argmax among the drafter's ``TREE_RANKS`` most probable tokens (0: not among them), from
the first pass shape. Its histogram is the greedy ``rank_rates`` a_1, a_2, ... of
polyplan.theory.trees (a_1 is the greedy acceptance rate). Draft stops need how sure the drafter
was: per model pair the drafter's *gap* between its two largest logits at each position (first pass
shape); the recorder bins the pair's greedy agreement by it (``AcceptancePair.gap_bins``).

A point-mass drafter proposes ``x_t = propose(prompt + r<t, 1)``: greedy ``[x_t == argmax p]``,
sampling ``p(x_t)`` (the probability that speculative sampling accepts a point mass), and 0 when it
has nothing to propose. Every pair reuses the same logits, so k candidates cost k passes per
reference, not k^2 generations.

Pass shapes: a bf16/fp16 model's argmax at a near-tie position depends on how the text was split
into passes, and at run time a verifier sees blocks of every size. So each half-precision model
other than the target is teacher-forced once per block size in ``blocks`` and a pair's per-position
acceptance is the mean over those shapes: a position whose argmax flips with the shape gets a
fractional rate (replay draws it), not a 0 or 1 that one shape happened to give. (Measured on the
SmolLM2 pool: the bf16 copy's run-time rejections by the float32 target fell on exactly such
positions. float32 models, int8 weight-only ones included, accumulate in float32 and take one pass
over prompt and reference: their flips are orders of magnitude rarer, and a pass per block would
cost profile time.) The profiler passes one size per prompt, the sizes taking turns over the
prompts (session.shape_of_prompt): the mixture over shapes at half the passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from polyplan.executor.sampling import SamplingParams
from polyplan.executor.tree import MAX_CHILDREN
from polyplan.models.drafter import Drafter

#: ranks measured for draft trees: as many candidates as a tree node may have children
TREE_RANKS = MAX_CHILDREN


def processed_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution a sampler draws from, as the executor defines it (temperature, top-k,
    top-p: :class:`polyplan.executor.sampling.SamplingParams`), so profiled acceptance is the
    acceptance the chain will see. ``temperature == 0`` is a point mass on the argmax."""
    if temperature <= 0:
        out = torch.zeros_like(logits, dtype=torch.float32)
        out.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        return out
    params = SamplingParams(temperature=float(temperature), top_k=top_k, top_p=top_p)
    return params.probs(logits)


def greedy_reference(
    target: Drafter,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    helper: Drafter | None = None,
    gamma: int = 8,
) -> list[int]:
    """The target's greedy continuation, ending with an end-of-sequence token if it produced one.

    Without ``helper``: the prompt prefilled in one pass, then one token per pass. With a model
    ``helper``: greedy speculative decoding, ``helper`` drafting ``gamma`` tokens per round for the
    target (``polyplan.Chain``), the same tokens at a fraction of the target's passes (the profile
    spent half its acceptance time on one-token target passes)."""
    limit = target.max_context
    if limit is not None:
        max_new_tokens = min(max_new_tokens, limit - len(prompt_ids))
    if max_new_tokens <= 0:
        return []
    if helper is not None:
        from polyplan.executor.front import Chain

        result = Chain([target, helper], [gamma]).generate(list(prompt_ids), max_new_tokens, eos_token_id=list(eos_ids))
        target.reset()
        helper.reset()
        return list(result.tokens)
    eos = set(int(e) for e in eos_ids)
    target.reset()
    logits = target.score(torch.tensor(list(prompt_ids), dtype=torch.long))
    out: list[int] = []
    while len(out) < max_new_tokens:
        token = int(logits[-1].argmax())
        out.append(token)
        if token in eos or len(out) == max_new_tokens:
            break
        logits = target.score(torch.tensor([token], dtype=torch.long))
    target.reset()
    return out


def teacher_force(
    drafter: Drafter, prompt_ids: Sequence[int], reference: Sequence[int], block: int = 0
) -> torch.Tensor:
    """Logits ``[len(reference), V]``: row ``t`` is the drafter's prediction of ``reference[t]``.

    ``block == 0`` feeds ``prompt + reference[:-1]`` in one pass; ``block > 0`` prefills the prompt
    and then feeds the reference in blocks of ``block`` tokens, the shapes a verifier sees at run
    time (this matters for bf16/fp16 models, see staged-decoding.md "Numerics")."""
    drafter.reset()
    prompt = torch.tensor(list(prompt_ids), dtype=torch.long)
    body = torch.tensor(list(reference[:-1]), dtype=torch.long)
    n = len(reference)
    if block <= 0:
        logits = drafter.score(torch.cat([prompt, body]), last=n)
    else:
        parts = [drafter.score(prompt, last=1)]  # the prefill's last row, as the executor asks for it
        for start in range(0, len(body), block):
            parts.append(drafter.score(body[start : start + block]))
        logits = torch.cat(parts)
    drafter.reset()
    assert logits.shape[0] == n
    return logits


def shape_sensitive(drafter: Drafter) -> bool:
    """True for a model whose argmax may depend on the pass shape: one computing in bfloat16 or
    float16, or any drafter that says so with a ``shape_sensitive = True`` attribute."""
    declared = getattr(drafter, "shape_sensitive", None)
    if declared is not None:
        return bool(declared)
    return getattr(getattr(drafter, "model", None), "dtype", None) in (torch.bfloat16, torch.float16)


def _pass_shapes(drafter: Drafter, blocks: list[int], target: str | None) -> list[int]:
    """The teacher-forcing block sizes of one model (module doc, "Pass shapes"): every size for a
    shape-sensitive model, the first for a shape-sensitive target (its verdict is final, not
    averaged), and one pass over the whole text (0) for any other model: float32 numerics barely
    depend on the split, and one pass costs a fraction of a prefill plus one pass per block."""
    if not shape_sensitive(drafter):
        return [0]
    return blocks[:1] if drafter.name == target else blocks


def point_mass_proposals(drafter: Drafter, prompt_ids: Sequence[int], reference: Sequence[int]) -> list[int]:
    """The drafter's first proposed token at every reference position (-1: no proposal)."""
    context = list(prompt_ids)
    out = []
    for token in reference:
        proposal = drafter.propose(context, 1)
        out.append(int(proposal[0]) if proposal else -1)
        context.append(int(token))
    return out


@dataclass
class ScoredReference:
    """What one reference contributes: per-position acceptance for every ordered pair."""

    greedy: dict[tuple[str, str], np.ndarray]
    sampling: dict[tuple[str, str], np.ndarray]
    #: model pairs: rank (1..TREE_RANKS, 0 = below) of the verifier's argmax in the drafter's order
    ranks: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    #: model pairs: the drafter's gap between its two largest logits (how sure it is; draft stops)
    gaps: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def score_reference(
    drafters: Sequence[Drafter],
    prompt_ids: Sequence[int],
    reference: Sequence[int],
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    block: int | Sequence[int] = 0,
    on_candidate: Any = None,
    target: str | None = None,
) -> ScoredReference:
    """Teacher-force every candidate on ``reference`` and derive every ordered pair's traces.

    ``block``: one teacher-forcing block size, or several (module doc, "Pass shapes"), used for
    half-precision models other than the ``target``; every other model gets the first only.
    Verifiers are the model candidates; drafters are all candidates other than the verifier."""
    blocks = [int(block)] if isinstance(block, int) else [int(b) for b in block]
    if not blocks:
        raise ValueError("need at least one teacher-forcing block size")
    runs = _force_candidates(drafters, prompt_ids, reference, blocks, temperature, top_k, top_p, on_candidate, target)
    greedy: dict[tuple[str, str], np.ndarray] = {}
    sampling: dict[tuple[str, str], np.ndarray] = {}
    ranks: dict[tuple[str, str], np.ndarray] = {}
    gaps: dict[tuple[str, str], np.ndarray] = {}
    for v in drafters:
        if v.point_mass:
            continue
        for d in drafters:
            if d is v:
                continue
            key = (v.name, d.name)
            if d.point_mass:
                greedy[key], sampled = _point_mass_pair(runs, v.name, d.name, temperature)
            else:
                greedy[key], ranks[key], sampled = _model_pair(runs, v.name, d.name, temperature)
                gaps[key] = runs.top_gaps[d.name].numpy()
            # at temperature 0 sampling is greedy decoding
            sampling[key] = greedy[key].copy() if sampled is None else sampled
    return ScoredReference(
        greedy={k: v.astype(np.float32) for k, v in greedy.items()},
        sampling={k: v.astype(np.float32) for k, v in sampling.items()},
        ranks={k: v.astype(np.float32) for k, v in ranks.items()},
        gaps={k: v.astype(np.float32) for k, v in gaps.items()},
    )


@dataclass
class _ForcedRuns:
    """Every candidate's teacher-forced outputs on one reference: per model, the argmax (and, when
    sampling, the processed distributions) of each of its pass shapes and the ``TREE_RANKS`` most
    probable ids of the first and the gap between its two largest logits; per point-mass drafter, its
    proposals (-1: none)."""

    argmax: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    probs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    proposals: dict[str, torch.Tensor] = field(default_factory=dict)
    top_ids: dict[str, torch.Tensor] = field(default_factory=dict)
    top_gaps: dict[str, torch.Tensor] = field(default_factory=dict)

    def mean_over_shapes(self, *names: str, fn: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """The mean of ``fn(shape)`` over the most pass shapes any of the named models has."""
        shapes = max(len(self.argmax[n]) for n in names)
        return torch.stack([fn(s).float() for s in range(shapes)]).mean(0)


def _per_shape(values: dict[str, list[torch.Tensor]], name: str, shape: int) -> torch.Tensor:
    """The model's run at pass shape ``shape``; its last one when it has fewer shapes."""
    runs = values[name]
    return runs[min(shape, len(runs) - 1)]


def _force_candidates(
    drafters: Sequence[Drafter],
    prompt_ids: Sequence[int],
    reference: Sequence[int],
    blocks: list[int],
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    on_candidate: Any,
    target: str | None,
) -> _ForcedRuns:
    """One teacher-forced pass per model and pass shape, and the proposals of every point-mass
    drafter; ``on_candidate`` after each candidate."""
    runs = _ForcedRuns()
    for d in drafters:
        if d.point_mass:
            runs.proposals[d.name] = torch.tensor(point_mass_proposals(d, prompt_ids, reference), dtype=torch.long)
        else:
            for b in _pass_shapes(d, blocks, target):
                logits = teacher_force(d, prompt_ids, reference, b)
                runs.argmax.setdefault(d.name, []).append(logits.argmax(-1).cpu())
                if d.name not in runs.top_ids:
                    top = logits.topk(min(TREE_RANKS, logits.shape[-1]), dim=-1)  # TREE_RANKS >= 2
                    runs.top_ids[d.name] = top.indices.cpu()
                    runs.top_gaps[d.name] = (top.values[:, 0] - top.values[:, 1]).float().cpu()
                if temperature > 0:
                    runs.probs.setdefault(d.name, []).append(processed_probs(logits, temperature, top_k, top_p))
                del logits
        if on_candidate is not None:
            on_candidate()
    return runs


def _point_mass_pair(runs: _ForcedRuns, v: str, d: str, temperature: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Verifier ``v`` on point-mass drafter ``d``'s proposals: greedy agreement, and when sampling
    the probability ``v`` gives each proposal (0 where there is none; None at temperature 0)."""
    prop = runs.proposals[d]
    has = prop >= 0
    greedy = runs.mean_over_shapes(v, fn=lambda s: (prop == _per_shape(runs.argmax, v, s)) & has).numpy()
    if temperature <= 0:
        return greedy, None

    def picked(s: int) -> torch.Tensor:
        p_v = _per_shape(runs.probs, v, s)
        got = p_v.gather(-1, prop.clamp(min=0).to(p_v.device).unsqueeze(-1)).squeeze(-1).cpu()
        return torch.where(has, got, torch.zeros_like(got))

    return greedy, runs.mean_over_shapes(v, fn=picked).numpy()


def _model_pair(
    runs: _ForcedRuns, v: str, d: str, temperature: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Verifier ``v`` on model drafter ``d``: greedy agreement, the rank of ``v``'s argmax among
    ``d``'s top ids (first pass shape; 0 = below them), and when sampling the overlap
    ``sum min(p, q)`` (None at temperature 0)."""
    greedy = runs.mean_over_shapes(
        v, d, fn=lambda s: _per_shape(runs.argmax, d, s) == _per_shape(runs.argmax, v, s)
    ).numpy()
    hit = runs.top_ids[d] == runs.argmax[v][0].unsqueeze(-1)
    rank = torch.where(hit.any(-1), hit.to(torch.int8).argmax(-1) + 1, 0).numpy()
    if temperature <= 0:
        return greedy, rank, None

    def overlap(s: int) -> torch.Tensor:
        p_v = _per_shape(runs.probs, v, s)
        q_d = _per_shape(runs.probs, d, s).to(p_v.device)
        return torch.minimum(p_v, q_d).sum(-1).clamp(0.0, 1.0).cpu()

    return greedy, rank, runs.mean_over_shapes(v, d, fn=overlap).numpy()


#: answer-position buckets [edge_i, edge_i+1) a window's acceptance is also summed over: what a
#: window loses shrinks as the answer fills it (benchmarks/results/window-position-smollm2-q8_0.md)
WINDOW_POSITION_EDGES = (0, 32, 64, 128, 256)


class WindowedAcceptance:
    """Sums over teacher-forced positions of long prompts, per drafter and window (None: the whole
    prompt): greedy agreement and sampling overlap with the target, and the position count, in all
    and per answer-position bucket (key: the bucket's first position)."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[int | None, list[float]]] = {}
        self.by_position: dict[str, dict[int | None, dict[int, list[float]]]] = {}

    def add_positions(self, name: str, window: int | None, greedy: torch.Tensor, sampling: torch.Tensor) -> None:
        """Per-position agreement and overlap (1-D, answer position 0 first), summed by bucket and in all."""
        buckets = self.by_position.setdefault(name, {}).setdefault(window, {})
        total = self.sums.setdefault(name, {}).setdefault(window, [0.0, 0.0, 0])
        edges = [*WINDOW_POSITION_EDGES, None]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            if lo >= greedy.shape[0]:
                break
            part = (float(greedy[lo:hi].sum()), float(sampling[lo:hi].sum()), int(greedy[lo:hi].shape[0]))
            for row in (buckets.setdefault(lo, [0.0, 0.0, 0]), total):
                row[0], row[1], row[2] = row[0] + part[0], row[1] + part[1], row[2] + part[2]

    def add_to(self, doc: dict) -> None:
        """Add these sums into a profile's ``windows`` document: ``by_drafter[name][window]`` (window
        ``"full"`` or its size) sums greedy agreement, sampling overlap and positions, in all and
        ``by_position`` (key: a bucket's first answer position; WINDOW_POSITION_EDGES)."""
        by = doc.setdefault("by_drafter", {})
        for name, per_window in self.sums.items():
            for window, (g, smp, n) in per_window.items():
                row = by.setdefault(name, {}).setdefault(
                    "full" if window is None else str(window),
                    {"greedy_sum": 0.0, "sampling_sum": 0.0, "positions": 0},
                )
                row["greedy_sum"] += g
                row["sampling_sum"] += smp
                row["positions"] += n
                buckets = row.setdefault("by_position", {})
                for lo, (bg, bs, bn) in self.by_position.get(name, {}).get(window, {}).items():
                    cell = buckets.setdefault(str(lo), [0.0, 0.0, 0])
                    cell[0], cell[1], cell[2] = cell[0] + bg, cell[1] + bs, cell[2] + bn


def score_windows(
    target: Drafter,
    drafters: Sequence[Drafter],
    prompt_ids: Sequence[int],
    reference: Sequence[int],
    windows: Sequence[int],
    sink: int,
    temperature: float,
    into: WindowedAcceptance,
    top_k: int | None = None,
    top_p: float | None = None,
    block: int = 8,
) -> None:
    """Acceptance by the target of each model drafter reading the whole prompt and reading only its
    first ``sink`` and last ``window`` tokens (polyplan.models.windowed), on the same reference:
    their ratio is what a window costs in acceptance (proofs/prefill.md, Corollary 4). A point-mass
    drafter is scored on the whole prompt only: what it proposes comes from the prompt, so its
    acceptance on long prompts against the profile's short ones is what prompt length does to it."""
    from polyplan.models.windowed import WindowedDrafter

    p = teacher_force(target, prompt_ids, reference, _pass_shapes(target, [block], target.name)[0])
    p_argmax = p.argmax(-1).cpu()
    p_probs = processed_probs(p, temperature, top_k, top_p) if temperature > 0 else None
    for d in drafters:
        if d.name == target.name:
            continue
        if d.point_mass:
            into.add_positions(d.name, None, *_point_mass_agreement(d, prompt_ids, reference, p_argmax, p_probs))
            continue
        for window in [None, *windows]:
            if window is not None and len(prompt_ids) <= sink + window:
                continue  # the window would not cut this prompt
            member = d if window is None else WindowedDrafter(d, window, sink)
            q = teacher_force(member, prompt_ids, reference, block)
            greedy = (q.argmax(-1).cpu() == p_argmax).float()
            if p_probs is not None:
                q_probs = processed_probs(q, temperature, top_k, top_p).to(p_probs.device)
                sampling = torch.minimum(p_probs, q_probs).sum(-1).clamp(0.0, 1.0).cpu()
            else:
                sampling = greedy
            into.add_positions(d.name, window, greedy, sampling)


def _point_mass_agreement(
    drafter: Drafter,
    prompt_ids: Sequence[int],
    reference: Sequence[int],
    p_argmax: torch.Tensor,
    p_probs: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per reference position: the point-mass drafter's proposal equals the target's argmax, and
    (sampling) the target's probability of it; 0 where it proposes nothing (as ``_point_mass_pair``)."""
    proposals = torch.tensor(point_mass_proposals(drafter, prompt_ids, reference), dtype=torch.long)
    has = proposals >= 0
    greedy = ((proposals == p_argmax) & has).float()
    if p_probs is None:
        return greedy, greedy
    picked = p_probs.gather(-1, proposals.clamp(min=0).to(p_probs.device).unsqueeze(-1)).squeeze(-1).cpu()
    return greedy, torch.where(has, picked.float(), torch.zeros_like(greedy))
