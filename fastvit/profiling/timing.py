"""Timing that synchronises the device: CUDA events around each call on a GPU,
``time.perf_counter`` on a CPU (where every call is synchronous). Warm-up calls (which also
compile) are never timed. :func:`time_interleaved` times several callables side by side, one
call of each per round, so drift of a shared machine hits all of them alike.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["synchronize", "synchronized", "Timing", "time_fn", "time_interleaved", "auto_reps", "do_bench_median_ms"]


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on CPU, where every call is synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronized(fn: Callable[[], object], device) -> Callable[[], None]:
    """``fn`` followed by a device synchronisation, for timers that only read a host clock
    (pytest-benchmark): on CUDA the call returns when its kernels have finished, not when they
    were queued. ``fn`` itself on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return fn

    def call():
        fn()
        torch.cuda.synchronize(device)
    return call


@dataclass
class Timing:
    median_s: float
    mean_s: float
    min_s: float
    max_s: float
    stdev_s: float
    reps: int
    method: str

    @classmethod
    def from_samples(cls, samples: list[float], method: str) -> "Timing":
        return cls(median_s=statistics.median(samples), mean_s=statistics.fmean(samples), min_s=min(samples),
                   max_s=max(samples), stdev_s=statistics.stdev(samples) if len(samples) > 1 else 0.0,
                   reps=len(samples), method=method)

    def to_dict(self) -> dict:
        return {"median_ms": self.median_s * 1e3, "mean_ms": self.mean_s * 1e3, "min_ms": self.min_s * 1e3,
                "max_ms": self.max_s * 1e3, "stdev_ms": self.stdev_s * 1e3, "reps": self.reps,
                "timer": self.method}


def _timer(device):
    """A function ``run(fn) -> finish()`` pair: ``finish()`` returns fn's seconds once synchronised."""
    device = torch.device(device)
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            return lambda: start.elapsed_time(end) / 1e3  # elapsed_time waits for `end`
        return run, "CUDA events"

    def run(fn):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        return lambda: dt
    return run, "time.perf_counter"


def auto_reps(seconds: float, device, budget_s: float | None, max_reps: int | None) -> int:
    cuda = torch.device(device).type == "cuda"
    budget_s = (0.5 if cuda else 2.0) if budget_s is None else budget_s
    max_reps = (200 if cuda else 20) if max_reps is None else max_reps
    return max(3, min(max_reps, int(budget_s / max(seconds, 1e-6))))


def time_fn(fn: Callable[[], object], device, *, reps: int | None = None, warmup: int = 1,
            budget_s: float | None = None) -> Timing:
    """Median of ``reps`` synchronised calls of ``fn`` after ``warmup`` untimed ones. ``reps=None``
    picks 3 to 20 (CPU) or 200 (CUDA) from the last warm-up call's time and ``budget_s``."""
    return time_interleaved({"fn": fn}, device, reps=reps, warmup=warmup, budget_s=budget_s)["fn"]


def time_interleaved(fns: dict, device, *, reps: int | None = None, warmup: int = 1,
                     budget_s: float | None = None) -> dict:
    """Time several callables side by side: ``warmup`` untimed calls of each, then ``reps`` rounds
    with one synchronised call of each per round. Returns ``{name: Timing}``."""
    run, method = _timer(device)
    last = {}
    for name, fn in fns.items():
        for _ in range(warmup if reps is not None else max(1, warmup)):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            last[name] = time.perf_counter() - t0
    if reps is None:
        reps = auto_reps(sum(last.values()), device, budget_s, None)
    pending = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            synchronize(device)
            pending[name].append(run(fn))
    synchronize(device)
    return {name: Timing.from_samples([f() for f in fs], method) for name, fs in pending.items()}


def do_bench_median_ms(fn: Callable[[], object]) -> float | None:
    """``triton.testing.do_bench``'s median in ms (it flushes the L2 cache between calls), or
    None where it cannot run (no GPU, or Triton's interpreter)."""
    from ..backend import interpreting

    if not torch.cuda.is_available() or interpreting():
        return None
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return float(do_bench(fn, return_mode="median"))
