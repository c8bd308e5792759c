"""Timing one model's forward passes without adding host synchronisation to the decode loop."""

from __future__ import annotations

import time
from typing import Any

import torch


class ForwardClock:
    """Wall time inside one model's forwards. CPU: perf_counter (forwards are synchronous).
    CUDA: events, read once at the end, so timing adds no host sync to the loop."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self._events: list[tuple[Any, Any]] = []

    def start(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started: Any) -> float | None:
        """The pass's seconds on CPU; None on CUDA (known only when ``total`` syncs)."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((started, end))
            return None
        seconds = time.perf_counter() - started
        self.seconds += seconds
        return seconds

    def total(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1000.0
            self._events.clear()
        return self.seconds
