"""A model's linear layers routed by their number of rows to the way this CPU runs them fastest.

On CPU a small model's decoding pass streams every weight from memory (SmolLM2-135M: 540 MB of
float32 per pass, 113 MB of it the output head), and how fast the BLAS library streams a weight
depends on the CPU, the weight's layout and the number of rows in the pass. Measured on a 2-core
AMD EPYC (Zen 4, MKL from torch 2.13; docs/results.md): the output head takes 10 ms for one row
with ``F.linear`` and 5 ms against a transposed copy of its weight (``x @ W.T``, ``W.T``
contiguous); three rows take 34 ms, four 17 ms; the MLP's up projections stream 1.6x faster
transposed at one to three rows and slower at four and more. An Intel Xeon's profile shows no
such steps (T(2) ~ T(1)). So nothing is assumed: :func:`probe_routes` times both layouts at every
row count a chain's pass can have, per weight shape, over the model's own weights (cycled, so they
stream from memory as in a pass), and routes a row count only where another way is clearly
faster: the transposed copy, or rows padded (zeros after the real ones, cut off again) to a count
the library handles well.

Every output element is still one dot product over the input size, so a float32 row moves by
rounding only (the size of the difference a verification pass already makes against a one-token
pass: docs/staged-decoding.md, "Numerics"). The exact regime of a half-precision target never
routes (its promise is that a row's rounding does not depend on its pass). Routes are active in
the member's own passes only: transformers' ``generate`` on the same model computes as always.

The profile probes each torch member once and records its routes (``machine["matmul_routes"]``);
``polyplan run``/``bench`` apply the plan's copy, so latency is profiled as the chain runs it.
"""

from __future__ import annotations

import os
import statistics
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

LINEAR = "linear"
TRANSPOSED = "transposed"
LAYOUTS = (LINEAR, TRANSPOSED)
#: row counts probed: every pass of a chain up to a gamma-16 verification (17 rows); longer passes
#: (prefills) keep the library's own way
PROBE_ROWS = tuple(range(1, 18))
PROBE_ROUNDS = 3
#: weights of one shape cycled per timing: enough to stream from memory (beyond the last-level cache),
#: at most PROBE_BYTES of them (their transposed copies are held while timing)
PROBE_WEIGHTS = 16
PROBE_BYTES = 128 * 2**20
#: a route must be at least this much faster than ``F.linear`` at the same rows: the steps it is
#: for are 1.3-3x, timing noise a few percent
ROUTE_GAIN = 0.85
#: and save at least this much per matmul: the probe times the bare product, while a routed layer also
#: pays a Python call, a reshape and, padded, a copy and a slice (measured 10-20 us on small layers)
ROUTE_MIN_SAVING_S = 50e-6
#: a model's transposed copies may take at most this share of the memory available when it is probed
#: (SmolLM2-135M float32: 0.4 GB beside its 0.54 GB; a 1.5B float32 model's MLP could ask for 4 GB);
#: beyond it the shapes whose copy saves least per byte keep their best way without one
ROUTE_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class Route:
    """Compute ``rows`` rows (the real ones, zeros after them) in ``layout``."""

    layout: str
    rows: int


def shape_key(weight: torch.Tensor) -> str:
    """``"out x in"``: routes are per weight shape (one probe for the 30 up projections of a model)."""
    return f"{weight.shape[0]}x{weight.shape[1]}"


@dataclass(frozen=True)
class MatmulRoutes:
    """Per weight shape, per real row count, the route taken (others: ``F.linear`` as it is)."""

    routes: Mapping[str, Mapping[int, Route]]
    #: what the probe measured, ms per matmul, shape -> layout -> per row count (for the record)
    measured_ms: Mapping[str, Mapping[str, list[float]]] = field(default_factory=dict)
    #: shapes whose transposed routes were left out for memory (ROUTE_MEMORY_SHARE)
    over_memory: tuple[str, ...] = ()

    def describe(self) -> str:
        routed = {shape: r for shape, r in self.routes.items() if r}
        memory = f" ({', '.join(self.over_memory)}: no transposed copy, for memory)" if self.over_memory else ""
        if not routed:
            return "no matmul routed (the library's own way at every row count)" + memory
        parts = []
        for shape, per_rows in routed.items():
            moves = []
            for rows, r in sorted(per_rows.items()):
                moves.append(
                    f"{rows}" + (" T" if r.layout == TRANSPOSED else "") + (f"->{r.rows}" if r.rows != rows else "")
                )
            parts.append(f"{shape}: {' '.join(moves)}")
        return "matmul rows routed (T: transposed, ->n: padded) " + "; ".join(parts) + memory

    def to_dict(self) -> dict[str, Any]:
        return {
            "routes": {s: {str(k): [r.layout, r.rows] for k, r in sorted(p.items())} for s, p in self.routes.items()},
            "measured_ms": {s: {lay: list(v) for lay, v in m.items()} for s, m in self.measured_ms.items()},
            **({"over_memory": list(self.over_memory)} if self.over_memory else {}),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> MatmulRoutes:
        routes: dict[str, dict[int, Route]] = {}
        for shape, per_rows in dict(doc.get("routes", {})).items():
            routes[str(shape)] = {}
            for k, (layout, rows) in dict(per_rows).items():
                if layout not in LAYOUTS or int(rows) < int(k):
                    raise ValueError(f"matmul route {shape} {k}: {layout} at {rows} rows")
                routes[str(shape)][int(k)] = Route(str(layout), int(rows))
        return cls(routes, dict(doc.get("measured_ms", {})), tuple(str(x) for x in doc.get("over_memory", ())))


def _product(
    layout: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    transposed: torch.Tensor | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in ``layout``; the bias is added inside the product either way
    (one rounding in half precision, as ``F.linear``)."""
    if layout == TRANSPOSED:
        assert transposed is not None
        return x @ transposed if bias is None else torch.addmm(bias, x, transposed)
    return F.linear(x, weight, bias)


def _time_layouts(weights: Sequence[torch.Tensor], rounds: int) -> dict[tuple[str, int], float]:
    """Seconds per matmul, (layout, rows) -> median over ``rounds`` (a warm-up round first), each
    timing one matmul against every weight of ``weights`` in turn."""
    with torch.inference_mode():
        flipped = [w.detach().t().contiguous() for w in weights]
        seed = torch.Generator().manual_seed(0)
        x = torch.randn(max(PROBE_ROWS), weights[0].shape[1], dtype=weights[0].dtype, generator=seed)
        times: dict[tuple[str, int], list[float]] = {(lay, r): [] for lay in LAYOUTS for r in PROBE_ROWS}
        for round_ in range(rounds + 1):
            for r in PROBE_ROWS:
                for layout in LAYOUTS:
                    t0 = time.perf_counter()
                    for w, wt in zip(weights, flipped, strict=True):
                        _product(layout, x[:r], w, wt)
                    if round_:  # the first round warms the library's dispatch
                        times[(layout, r)].append((time.perf_counter() - t0) / len(weights))
    return {key: statistics.median(v) for key, v in times.items()}


def choose_routes(seconds: Mapping[tuple[str, int], float]) -> dict[int, Route]:
    """Per row count ``r``, the fastest (layout, rows >= r) of the timings ``seconds`` (layout, rows)
    -> time, where it beats ``F.linear`` at ``r`` rows by :data:`ROUTE_GAIN` and by at least
    :data:`ROUTE_MIN_SAVING_S`."""
    probed = sorted({r for _, r in seconds})
    routes = {}
    for r in probed:
        layout, width = min(((lay, w) for lay, w in seconds if w >= r), key=seconds.__getitem__)
        best, plain = seconds[(layout, width)], seconds[(LINEAR, r)]
        if best < ROUTE_GAIN * plain and plain - best >= ROUTE_MIN_SAVING_S:
            routes[r] = Route(layout, width)
    return routes


def routable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The model's plain ``nn.Linear`` layers with dense float weights on CPU (a quantized tensor
    subclass, torchao's, brings its own kernels)."""
    found = []
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        w = module.weight
        if type(w.data) is torch.Tensor and w.device.type == "cpu" and w.is_floating_point() and w.dim() == 2:
            found.append(module)
    return found


def probe_routes(model: torch.nn.Module, rounds: int = PROBE_ROUNDS, memory_bytes: int | None = None) -> MatmulRoutes:
    """Time both layouts at every row count of :data:`PROBE_ROWS` for each weight shape of ``model``'s
    routable linears (up to :data:`PROBE_WEIGHTS` of its weights cycled) and choose the routes, their
    transposed copies within :data:`ROUTE_MEMORY_SHARE` of ``memory_bytes`` (default: the memory
    available now)."""
    by_shape: dict[str, list[torch.Tensor]] = {}
    for lin in routable_linears(model):
        by_shape.setdefault(shape_key(lin.weight), []).append(lin.weight)
    routes, measured, without_copy, saved = {}, {}, {}, {}
    for shape, weights in by_shape.items():
        cycled = max(1, min(PROBE_WEIGHTS, PROBE_BYTES // (weights[0].numel() * weights[0].element_size())))
        seconds = _time_layouts(weights[:cycled], rounds)
        routes[shape] = choose_routes(seconds)
        measured[shape] = {lay: [round(seconds[(lay, r)] * 1e3, 4) for r in PROBE_ROWS] for lay in LAYOUTS}
        # without a copy: the best of F.linear and its padded widths; the copy is worth what it saves over that
        without_copy[shape] = choose_routes({k: t for k, t in seconds.items() if k[0] == LINEAR})
        saved[shape] = sum(
            _route_time(seconds, without_copy[shape], r) - _route_time(seconds, routes[shape], r)
            for r, route in routes[shape].items()
            if route.layout == TRANSPOSED
        )
    copies = {
        s: sum(w.numel() * w.element_size() for w in ws)
        for s, ws in by_shape.items()
        if any(r.layout == TRANSPOSED for r in routes[s].values())
    }
    budget = ROUTE_MEMORY_SHARE * (available_memory() if memory_bytes is None else memory_bytes)
    over = _over_budget(copies, {s: saved[s] * len(by_shape[s]) for s in copies}, budget)
    for shape in over:
        routes[shape] = without_copy[shape]
    return MatmulRoutes(routes, measured, tuple(over))


def _route_time(seconds: Mapping[tuple[str, int], float], routes: Mapping[int, Route], rows: int) -> float:
    """The probe's time for a pass of ``rows`` rows as ``routes`` runs it."""
    route = routes.get(rows, Route(LINEAR, rows))
    return seconds[(route.layout, route.rows)]


def _over_budget(copies: Mapping[str, int], saved_s: Mapping[str, float], budget: float) -> list[str]:
    """The shapes whose copies (bytes) must go to fit ``budget``: those saving least per byte
    (``saved_s``: seconds saved per pass over all of a shape's layers) first."""
    total, over = sum(copies.values()), []
    for shape in sorted(copies, key=lambda s: saved_s[s] / copies[s]):
        if total <= budget:
            break
        over.append(shape)
        total -= copies[shape]
    return over


def available_memory() -> int:
    """Bytes of memory available to new allocations now: Linux's ``MemAvailable``, capped by the
    process's cgroup (v2) limit less its use inside a container; elsewhere the physical memory (and
    where even that is unknown, no limit)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return 2**62
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


class RouteSwitch:
    """On while a member's own pass runs: one per model, shared by its routed layers and by every
    member that runs that model (the routes installed last are the model's)."""

    def __init__(self) -> None:
        self.on = False
        #: layers routed now
        self.layers = 0

    @contextmanager
    def active(self) -> Iterator[None]:
        saved, self.on = self.on, True
        try:
            yield
        finally:
            self.on = saved


class RoutedLinear:
    """Replaces one ``nn.Linear``'s ``forward`` (the module, its weight and its ties stay as they
    are): while the switch is on, a pass of a routed row count takes its route; otherwise, and
    for every other row count, the module's own forward."""

    def __init__(self, module: torch.nn.Linear, routes: Mapping[int, Route], switch: RouteSwitch) -> None:
        self.module = module
        self.routes = dict(routes)
        self.switch = switch
        self.own_forward = module.forward
        self.transposed = None
        if any(r.layout == TRANSPOSED for r in self.routes.values()):
            with torch.no_grad():
                self.transposed = module.weight.detach().t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.switch.on:
            return self.own_forward(x)
        rows = x.numel() // x.shape[-1] if x.numel() else 0
        route = self.routes.get(rows)
        if route is None:
            return self.own_forward(x)
        flat = x.reshape(rows, x.shape[-1])
        if route.rows > rows:
            flat = torch.cat([flat, flat.new_zeros(route.rows - rows, flat.shape[1])])
        out = _product(route.layout, flat, self.module.weight, self.transposed, self.module.bias)
        return out[:rows].reshape(*x.shape[:-1], out.shape[-1])


#: the switch of each routed model (members sharing a model share its routes)
_SWITCHES: weakref.WeakKeyDictionary[torch.nn.Module, RouteSwitch] = weakref.WeakKeyDictionary()


def route_linears(model: torch.nn.Module, routes: MatmulRoutes | None) -> RouteSwitch | None:
    """Install ``routes`` on ``model``'s routable linears (layers routed before get the new routes;
    None or no route at all: every layer its forward from before routing). The model's switch to turn
    them on, or None when nothing is routed."""
    switch = _SWITCHES.setdefault(model, RouteSwitch())
    switch.layers = 0
    for lin in routable_linears(model):
        current = lin.__dict__.get("forward")
        if isinstance(current, RoutedLinear):
            _unroute(lin, current)
        per_rows = (routes.routes if routes is not None else {}).get(shape_key(lin.weight))
        if per_rows:
            lin.forward = RoutedLinear(lin, per_rows, switch)  # type: ignore[method-assign]
            switch.layers += 1
    return switch if switch.layers else None


def _unroute(lin: torch.nn.Linear, routed: RoutedLinear) -> None:
    """Give ``lin`` back the forward it had before routing (an instance's own, e.g. a hook's, kept)."""
    own = routed.own_forward
    if getattr(own, "__func__", None) is type(lin).forward and getattr(own, "__self__", None) is lin:
        del lin.forward
    else:
        lin.forward = own  # type: ignore[method-assign]
