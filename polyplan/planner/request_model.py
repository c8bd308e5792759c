"""Whole requests for the plan's members: prefill curves, windows, latency curves and the
workload's generation lengths, with the request-time theorem (proofs/prefill.md) on top.

The adaptive policy carries one (``Policy.requests``) so the executor's controller can decide, from
the actual prompt length and ``max_new_tokens``, which members a request uses BEFORE any drafter
is prefilled, and charge a member it brings in later its prefill. The planner uses the same object
for the plan's table per prompt-length range. Pure Python: stored in the plan as plain JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import Any

from polyplan.documents.files import DocumentError
from polyplan.documents.profile import WINDOW_SINK, LatencyCurve, PrefillCurve, Profile
from polyplan.documents.traces import Traces
from polyplan.theory.chain_model import predict_chain
from polyplan.theory.prefill import (
    RequestPrediction,
    decode_context,
    expected_horizon,
    predict_request,
    prefill_seconds,
    window_context,
)

Pair = tuple[int, int]

#: the prompt lengths of the plan's table (a row per range: [previous, this))
PROMPT_LENGTH_EDGES = (128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class WindowOption:
    """A window a request may give a drafter, with what it keeps of the drafter's acceptance
    (alpha_W / alpha_full, measured by the profiler on long prompts) and, when the profile measured
    it, that share by answer position (``((first answer position, factor), ...)``: the answer fills
    the window). In the plan: ``[window, factor]`` or ``[window, factor, [[position, factor], ...]]``."""

    window: int
    factor: float
    by_position: tuple[tuple[int, float], ...] = ()

    def to_list(self) -> list[Any]:
        return [self.window, self.factor, *([[list(p) for p in self.by_position]] if self.by_position else [])]

    @classmethod
    def from_list(cls, o: Sequence[Any]) -> WindowOption:
        by_position = tuple((int(a), float(b)) for a, b in o[2]) if len(o) > 2 else ()
        return cls(int(o[0]), float(o[1]), by_position)


@dataclass
class RequestModel:
    names: list[str]
    point_mass: list[bool]
    latency: dict[str, LatencyCurve]
    prefill: dict[str, PrefillCurve]
    #: member name -> [window, sink] for members that always draft from a window (pool file)
    windows: dict[str, list[int]] = field(default_factory=dict)
    #: member name -> the windows a request may give that drafter (the start decides per prompt)
    window_options: dict[str, list[WindowOption]] = field(default_factory=dict)
    window_sink: int = WINDOW_SINK
    #: the target's fewest tokens per pass inside a chain (Candidate.min_pass)
    target_min_pass: int = 1
    #: answer lengths observed on the profile's prompts, each at most ``observed_up_to``
    lengths: list[int] = field(default_factory=list)
    observed_up_to: int | None = None
    #: point-mass member name -> [short, long, factor, by position]: its acceptance on the profile's
    #: long prompts (``long`` tokens on average) is ``factor`` times that on its own prompts
    #: (``short``); by answer position ``[[first position, factor], ...]`` where measured, else []
    prompt_factors: dict[str, list[Any]] = field(default_factory=dict)

    # ---- the theorem's inputs ---------------------------------------------------------------------
    def horizon(self, max_new_tokens: int) -> float:
        """E[min(max_new_tokens, L_eos)] of this workload."""
        return expected_horizon(max_new_tokens, self.lengths, self.observed_up_to)

    def window(self, member: int, chosen: int | None = None) -> tuple[int | None, int]:
        """(window, sink) member ``member`` reads: its pool file's, else ``chosen``, else all."""
        w = self.windows.get(self.names[member])
        if w is not None:
            return int(w[0]), int(w[1])
        return (None, 0) if chosen is None else (int(chosen), self.window_sink)

    def options(self, member: int) -> list[int | None]:
        """The windows a request may give member ``member`` (None: the whole sequence)."""
        return [None, *(o.window for o in self.window_options.get(self.names[member], []))]

    def factor(self, member: int, window: int | None, horizon: float | None = None) -> float:
        """What ``window`` keeps of member ``member``'s acceptance, averaged over the answer's first
        ``horizon`` tokens where the profile measured it by position (else over its reference)."""
        for option in self.window_options.get(self.names[member], []):
            if window is not None and option.window == window:
                if horizon is None or horizon <= 0 or not option.by_position:
                    return option.factor
                return mean_over_answer(option.by_position, horizon)
        return 1.0

    def prompt_factor(self, member: int, prompt_tokens: float, horizon: float | None = None) -> float:
        """What a prompt of ``prompt_tokens`` does to member ``member``'s acceptance over an answer
        of ``horizon`` tokens: 1 up to the profile's prompt length, its long-prompt factor (averaged
        over the answer's first ``horizon`` tokens where measured by position) from the long
        prompts' length on, linear in log length between (a prompt-lookup drafter copies from the
        prompt and from the answer so far: the longer, the more there is to copy); 1 for a member
        without one."""
        return self.prompt_factor_over(member, prompt_tokens, 0.0, horizon)

    def prompt_factor_over(self, member: int, prompt_tokens: float, first: float, last: float | None) -> float:
        """:meth:`prompt_factor` averaged over answer positions [first, last) (``last`` None: the
        factor over the whole reference)."""
        row = self.prompt_factors.get(self.names[member])
        if not row or prompt_tokens <= row[0]:
            return 1.0
        short, long, factor = row[:3]
        if len(row) > 3 and row[3] and last is not None and last > first:
            upto = last * mean_over_answer(row[3], last)
            before = first * mean_over_answer(row[3], first) if first > 0 else 0.0
            factor = (upto - before) / (last - first)
        share = min(1.0, math.log(prompt_tokens / short) / math.log(long / short))
        return 1.0 + (factor - 1.0) * share

    def by_position(self, member: int) -> bool:
        """Whether member ``member``'s prompt factor varies with the answer position."""
        row = self.prompt_factors.get(self.names[member])
        return bool(row and len(row) > 3 and row[3])

    def at_prompt(
        self, alpha: Mapping[Pair, float], prompt_tokens: float, horizon: float | None = None
    ) -> dict[Pair, float]:
        """``alpha`` with each point-mass drafter's prompt-length factor applied (at most 1)."""
        if not self.prompt_factors:
            return dict(alpha)
        return {(v, d): min(1.0, a * self.prompt_factor(d, prompt_tokens, horizon)) for (v, d), a in alpha.items()}

    def prefill_s(self, member: int, prompt_tokens: float, chosen: int | None = None) -> float:
        """What member ``member`` pays to read a prompt of ``prompt_tokens`` (its window of it)."""
        if self.point_mass[member]:
            return 0.0
        curve = self.prefill.get(self.names[member])
        if curve is None:
            return 0.0
        window, sink = self.window(member, chosen)
        return prefill_seconds(curve, window_context(prompt_tokens, window, sink))

    @property
    def knows_prefill(self) -> bool:
        return all(self.point_mass[i] or n in self.prefill for i, n in enumerate(self.names))

    def _latencies(
        self, members: Sequence[int], context: float, horizon: float, chosen: Mapping[int, int | None]
    ) -> list[Any]:
        out = []
        for m in members:
            curve = self.latency[self.names[m]]
            window, sink = self.window(m, chosen.get(m))
            floor = self.target_min_pass if m == 0 else 1
            # a windowed member decodes over its window plus what the request appended to it
            c = context if window is None else min(context, sink + window + max(0.0, horizon - 1) / 2)
            memo: dict[float, float] = {}

            def at(
                n: float, curve: LatencyCurve = curve, c: float = c, memo: dict[float, float] = memo, floor: int = floor
            ) -> float:
                v = memo.get(n)
                if v is None:
                    v = memo[n] = float(curve(max(n, floor), c))
                return v

            out.append(at)
        return out

    def time_per_token(
        self,
        members: Sequence[int],
        gammas: Sequence[int],
        alpha: Mapping[Pair, float],
        context: float,
        horizon: float,
        chosen: Mapping[int, int | None] | None = None,
    ) -> float:
        """t_S at the mean decode context: the chain-model theorem with the curves there; a drafter
        given a window in ``chosen`` keeps ``factor`` of its acceptance."""
        chosen = chosen or {}
        latencies = self._latencies(members, context, horizon, chosen)
        if len(members) == 1:
            return float(latencies[0](1))
        alphas = [min(alpha[(v, d)] * self.factor(d, chosen.get(d), horizon), 1 - 1e-9) for v, d in pairwise(members)]
        return float(predict_chain(alphas, list(gammas), latencies).time_per_token)

    def request(
        self,
        members: Sequence[int],
        gammas: Sequence[int],
        alpha: Mapping[Pair, float],
        prompt_tokens: float,
        max_new_tokens: int,
        chosen: Mapping[int, int | None] | None = None,
        exact_horizon: bool = False,
    ) -> RequestPrediction:
        """E[T_S(c)] of a request with this workload's horizon (``exact_horizon``: exactly
        ``max_new_tokens``), beside the target alone's; ``chosen``: windows given to drafters for
        this request (member -> window). ``alpha`` is at the profile's prompts: a point-mass
        drafter's prompt-length factor is applied here."""
        chosen = chosen or {}
        horizon = float(max_new_tokens) if exact_horizon else self.horizon(max_new_tokens)
        context = decode_context(prompt_tokens, horizon)
        at_prompt = self.at_prompt(alpha, prompt_tokens, horizon)
        t_s = self.time_per_token(members, gammas, at_prompt, context, horizon, chosen)
        t_ar = self.time_per_token((0,), (), alpha, context, horizon)
        drafters = [self.prefill_s(m, prompt_tokens, chosen.get(m)) for m in members[1:]]
        return predict_request(self.prefill_s(0, prompt_tokens), drafters, horizon, t_s, t_ar, prompt_tokens)

    def at_speed(self, factors: Mapping[str, Mapping[str, float]]) -> RequestModel:
        """This model with each member's latency and prefill curves times its measured speed
        factors (``{"decode": f, "prefill": g}``, measured now / profiled: profiler/calibrate.py);
        members without factors keep their curves."""
        latency = dict(self.latency)
        prefill = dict(self.prefill)
        for name, f in factors.items():
            if name in latency:
                c = latency[name]
                rows = [[t * f["decode"] for t in row] for row in c.median_s]
                latency[name] = replace(c, median_s=rows)
            if name in prefill:
                p = prefill[name]
                prefill[name] = replace(p, median_s=[t * f["prefill"] for t in p.median_s])
        return replace(self, latency=latency, prefill=prefill)

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "point_mass": list(self.point_mass),
            "latency": {k: asdict(v) for k, v in self.latency.items()},
            "prefill": {k: asdict(v) for k, v in self.prefill.items()},
            "windows": {k: list(v) for k, v in self.windows.items()},
            "window_options": {k: [o.to_list() for o in v] for k, v in self.window_options.items()},
            "window_sink": self.window_sink,
            "target_min_pass": self.target_min_pass,
            "lengths": list(self.lengths),
            "observed_up_to": self.observed_up_to,
            "prompt_factors": {k: [*v[:3], [list(p) for p in v[3]]] for k, v in self.prompt_factors.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RequestModel:
        model = cls(
            names=[str(n) for n in d["names"]],
            point_mass=[bool(x) for x in d["point_mass"]],
            latency={k: LatencyCurve(**v) for k, v in d["latency"].items()},
            prefill={k: PrefillCurve(**v) for k, v in d.get("prefill", {}).items()},
            windows={k: [int(v[0]), int(v[1])] for k, v in d.get("windows", {}).items()},
            window_options={k: [WindowOption.from_list(o) for o in v] for k, v in d.get("window_options", {}).items()},
            window_sink=int(d.get("window_sink", WINDOW_SINK)),
            target_min_pass=int(d.get("target_min_pass", 1)),
            lengths=[int(x) for x in d.get("lengths", [])],
            observed_up_to=None if d.get("observed_up_to") is None else int(d["observed_up_to"]),
            prompt_factors={k: _prompt_factor_row(v) for k, v in d.get("prompt_factors", {}).items()},
        )
        missing = [n for n in model.names if n not in model.latency]
        if missing or len(model.point_mass) != len(model.names):
            raise DocumentError(f"request model without latency curves for {missing}")
        for name, row in model.prompt_factors.items():
            if not 0 < row[0] < row[1] or row[2] <= 0:
                raise DocumentError(f"request model: bad prompt factor for {name}: {row}")
        return model


def generation_lengths(traces: Traces | None) -> list[int]:
    """The target's reference answer lengths on the profile's prompts (from the traces' segments)."""
    return [] if traces is None else traces.generation_lengths()


def request_model(
    profile: Profile,
    names: Sequence[str],
    traces: Traces | None = None,
    windows: Mapping[str, Sequence[int]] | None = None,
    mode: str = "greedy",
) -> RequestModel:
    """The request model of the members ``names`` (target first) from a profile: ``windows`` are
    fixed ones (pool file); the window options come from the profile's windowed acceptance."""
    options: dict[str, list[WindowOption]] = {}
    for n in names[1:]:
        if (windows or {}).get(n) is not None or profile.candidate(n).point_mass:
            continue
        for w in profile.window_sizes():
            f = profile.window_factor(n, w, mode)
            if f is not None:
                by_position = profile.window_factor_by_position(n, w, mode)
                options.setdefault(n, []).append(WindowOption.from_list([w, f, by_position]))
    lengths = generation_lengths(traces)
    short, long = (traces.mean_prompt_length() if traces is not None else None), profile.long_prompt_tokens()
    prompt_factors = {}
    for n in names[1:] if short and long and long > short else []:
        f = profile.long_prompt_factor(n, mode)
        if f is not None:
            prompt_factors[n] = [short, long, f, profile.long_prompt_factor_by_position(n, mode)]
    cap = profile.settings.get("max_new_tokens")
    if lengths and cap is not None:
        lengths = [min(n, int(cap)) for n in lengths]
    return RequestModel(
        names=list(names),
        point_mass=[profile.candidate(n).point_mass for n in names],
        latency={n: profile.latency[n] for n in names},
        prefill={n: profile.prefill[n] for n in names if n in profile.prefill},
        windows={n: [int(w[0]), int(w[1])] for n, w in (windows or {}).items() if n in names},
        lengths=lengths,
        observed_up_to=int(cap) if lengths and cap is not None else None,
        window_options=options,
        window_sink=int(profile.windows.get("sink", WINDOW_SINK)),
        target_min_pass=profile.candidate(names[0]).min_pass,
        prompt_factors=prompt_factors,
    )


def _prompt_factor_row(v: Sequence[Any]) -> list[Any]:
    """A stored prompt-factor row: [short, long, factor] (+ by position, absent in early plans)."""
    if len(v) < 3:
        raise DocumentError(f"request model: bad prompt factor row {list(v)}")
    by_position = [[int(a), float(b)] for a, b in v[3]] if len(v) > 3 else []
    return [float(v[0]), float(v[1]), float(v[2]), by_position]


def mean_over_answer(by_position: Sequence[Sequence[float]], horizon: float) -> float:
    """The mean over answer positions [0, horizon) of a step function given as ``[[first position,
    value], ...]`` (sorted; the last step reaches past the horizon, the first is read from 0)."""
    total = 0.0
    for i, (start, value) in enumerate(by_position):
        lo = 0.0 if i == 0 else float(start)
        hi = float(by_position[i + 1][0]) if i + 1 < len(by_position) else math.inf
        total += float(value) * max(0.0, min(hi, horizon) - lo)
    return total / horizon


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
