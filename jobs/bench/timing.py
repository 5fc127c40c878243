"""The timing core: one way to time anything in zsteer (``zsteer bench`` and the scripts in benchmarks/).

``measure(fn, units, control, clock)`` times the first call apart (compilation, session creation, lazy
allocation), runs untimed iterations for ``control.warmup_seconds``, then measurement windows of at least
``min_seconds`` and ``min_iterations`` each until the last ``agree`` windows' throughputs agree within
``tolerance`` (or ``max_windows`` is reached: unstable). Results come from those last windows.

A ``Clock`` times one call. ``WallClock`` uses perf_counter; ``CudaClock`` synchronises, records CUDA
events around the call and waits for the end event, so queued GPU work is counted in the call that
queued it and nowhere else. Tests give ``measure`` a fake clock that returns scripted durations.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # only for the annotation: this module imports no torch, so scripts can time anything
    from .config import RunControl

PERCENTILES = {"min": 0.0, "median": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}


class Clock(Protocol):
    def time(self, fn: Callable[[], object]) -> float:
        """Seconds one call of ``fn`` took (its device work included)."""
        ...


class WallClock:
    """perf_counter around the call: CPU work is done when the call returns."""

    def time(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class CudaClock:
    """CUDA events around the call, synchronised before (earlier work is not ours) and after."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, torch.device(device)

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], object]) -> float:
        cuda = self.torch.cuda
        with cuda.device(self.device):
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            self.sync()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3


def clock_for(device: str) -> Clock:
    """The clock that times work on ``device`` correctly."""
    import torch

    return CudaClock(device) if torch.device(device).type == "cuda" else WallClock()


def percentiles(samples) -> dict[str, float]:
    """min / median / p90 / p95 / p99 of ``samples`` (linear interpolation, numpy's default)."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        return dict.fromkeys(PERCENTILES, float("nan"))
    return {name: float(np.percentile(values, q)) for name, q in PERCENTILES.items()}


def windows_agree(rates: list[float], tolerance: float, agree: int) -> bool:
    """True when the last ``agree`` rates are each within ``tolerance`` of their mean (perf_analyzer)."""
    if len(rates) < agree:
        return False
    last = rates[-agree:]
    mean = statistics.fmean(last)
    return mean > 0 and all(abs(r - mean) <= tolerance * mean for r in last)


@dataclass(frozen=True)
class Window:
    """One measurement window: per-iteration seconds and the units (latents) each iteration did."""

    latencies: tuple[float, ...]
    units: int

    @property
    def seconds(self) -> float:
        return sum(self.latencies)

    @property
    def rate(self) -> float:
        """Units per second over the window."""
        return self.units * len(self.latencies) / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Measurement:
    """What ``measure`` found."""

    first_call_seconds: float  # the first call alone: compilation, session creation, first allocations
    warmup_iterations: int
    windows: tuple[Window, ...]
    stable: bool  # the last ``agree`` windows agreed within the tolerance
    agree: int = 3
    extra: dict = field(default_factory=dict)

    @property
    def measured(self) -> tuple[Window, ...]:
        """The windows the results come from: the last ``agree`` (all of them if fewer)."""
        return self.windows[-self.agree :]

    @property
    def iterations(self) -> int:
        return sum(len(w.latencies) for w in self.measured)

    @property
    def throughput(self) -> float:
        """Units per second over the measured windows."""
        seconds = sum(w.seconds for w in self.measured)
        units = sum(w.units * len(w.latencies) for w in self.measured)
        return units / seconds if seconds > 0 else float("inf")

    @property
    def window_rates(self) -> list[float]:
        return [w.rate for w in self.windows]

    def latency(self) -> dict[str, float]:
        """Percentiles of the per-iteration seconds over the measured windows."""
        return percentiles(t for w in self.measured for t in w.latencies)


class Meter:
    """``measure`` one step at a time, so that several cells can take turns window by window (``run_bench``
    with ``interleave``: load from elsewhere on a shared machine then falls on every cell alike)."""

    def __init__(self, fn, units: int, control: RunControl, clock: Clock | None = None, prepare=None):
        self.fn, self.units, self.control = fn, units, control
        self.clock, self.prepare = clock or WallClock(), prepare
        self.first: float | None = None
        self.warmup_iterations = 0
        self.windows: list[Window] = []
        self.stable = False

    def _timed(self) -> float:
        if self.prepare is not None:
            self.prepare()
        return self.clock.time(self.fn)

    def start(self) -> None:
        """The first call alone, then the warm-up."""
        self.first = self._timed()
        warm = 0.0
        while warm < self.control.warmup_seconds:
            warm += self._timed()
            self.warmup_iterations += 1

    @property
    def finished(self) -> bool:
        return self.stable or len(self.windows) >= self.control.max_windows

    def window(self) -> float:
        """One measurement window; its rate (units per second)."""
        latencies: list[float] = []
        elapsed = 0.0  # a running total: re-summing the list each call made a window quadratic in calls
        while elapsed < self.control.min_seconds or len(latencies) < self.control.min_iterations:
            latencies.append(self._timed())
            elapsed += latencies[-1]
        self.windows.append(Window(tuple(latencies), self.units))
        c = self.control
        self.stable = windows_agree([w.rate for w in self.windows], c.tolerance, c.agree)
        return self.windows[-1].rate

    def result(self) -> Measurement:
        return Measurement(
            self.first, self.warmup_iterations, tuple(self.windows), self.stable, self.control.agree
        )


def measure(
    fn: Callable[[], object],
    units: int,
    control: RunControl,
    clock: Clock | None = None,
    *,
    prepare: Callable[[], object] | None = None,
    on_window: Callable[[int, float], None] | None = None,
) -> Measurement:
    """Time ``fn`` (each call does ``units`` units of work) as the docstring of this module says.

    ``prepare()``: untimed set-up before every call (a fresh output folder); ``on_window(k, rate)``:
    called after each window (progress).
    """
    meter = Meter(fn, units, control, clock, prepare)
    meter.start()
    while not meter.finished:
        rate = meter.window()
        if on_window is not None:
            on_window(len(meter.windows), rate)
    return meter.result()


def measure_interleaved(meters: dict[str, Meter]) -> dict[str, Measurement]:
    """Several meters started one after the other, then taking turns window by window until each is
    finished: load from elsewhere on a shared machine falls on all of them alike, so their ratios hold."""
    for meter in meters.values():
        meter.start()
    while not all(m.finished for m in meters.values()):
        for meter in meters.values():
            if not meter.finished:
                meter.window()
    return {name: meter.result() for name, meter in meters.items()}
