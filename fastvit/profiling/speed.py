"""Backends side by side: the speed comparison of ``fastvit bench`` and ``fastvit profile``.

The cases are built by :mod:`fastvit.profiling.speed_cases` and timed by
:mod:`fastvit.profiling.timing` (both re-exported here). :func:`compare` times the backends of one
(op, mode, resolution) *interleaved*, one call of each per round, so drift of a shared machine
hits all of them alike, and reports speed-ups as ratios measured side by side.

A backend that cannot run here gives a row with ``available: False`` and the stated ``reason``.
A case that raises stops the comparison with a :class:`~fastvit.profiling.failures.CaseError`
naming it; with ``keep_going=True`` it gives a row with ``error`` instead and the rest goes on.
"""
from __future__ import annotations

import gc
import time
from typing import Callable

import torch

from .defaults import DEFAULT_MODEL
from .failures import CaseError, describe
from .speed_cases import (DTYPES, MODES, OPS, SPEED_BACKENDS, SpeedCase, _check, backend_unavailable, build_case,
                          default_batch, dtype_name, op_backends, parse_dtype)
from .timing import (Timing, auto_reps, do_bench_median_ms, synchronize, synchronized, time_fn,
                     time_interleaved)

__all__ = ["OPS", "SPEED_BACKENDS", "MODES", "DTYPES", "SpeedCase", "Timing", "op_backends", "parse_dtype",
           "dtype_name", "backend_unavailable", "default_batch", "build_case", "synchronize", "synchronized",
           "time_fn", "time_interleaved", "do_bench_median_ms", "compare", "format_speed_table", "case_label"]


def _release(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def case_label(op: str, mode: str, size: int, backend: str) -> str:
    """How a speed case is named in progress lines and errors: ``speed attention fwd 224px triton``."""
    return f"speed {op} {mode} {size}px {backend}"


def compare(ops=("attention",), resolutions=(224,), backends=SPEED_BACKENDS, modes=("fwd",), *,
            model: str = DEFAULT_MODEL, dtype=torch.float32, device="cpu", batch: int | None = None,
            reps: int | None = None, warmup: int = 1, budget_s: float | None = None,
            skip: Callable | None = None, progress=None, keep_going: bool = False) -> list[dict]:
    """Time every (op, mode, resolution) on ``backends`` interleaved, eager always included as the
    baseline. One row per backend: ``median_ms`` and the other timing fields, ``speedup_vs_eager``
    (eager's median / this backend's median, measured in the same rounds), ``tflops`` / ``gbps``
    where defined, ``source: "measured"``. A backend that cannot run here gives a row with
    ``available: False`` and the ``reason``.

    A case that raises (building, warming up or timing it) raises :class:`CaseError` naming it;
    with ``keep_going`` its row has ``available: False`` and ``error`` instead, and the other
    backends of the group are still timed.

    ``skip(op, backend, mode, img_size)`` may return a reason to leave a case out. ``progress``,
    if given, is called with a label before each (op, mode, resolution) group.
    """
    dtype = parse_dtype(dtype)
    device = torch.device(device)
    for b in backends:
        _check(b, SPEED_BACKENDS, "backend")
    order = ["eager"] + [b for b in SPEED_BACKENDS if b in backends and b != "eager"]
    rows = []
    for op in ops:
        _check(op, OPS, "op")
        for mode in modes:
            _check(mode, MODES, "mode")
            for size in resolutions:
                if progress is not None:
                    progress(f"speed {op} {mode} {size}px")
                rows.extend(_compare_group(op, mode, size, [b for b in order if b in op_backends(op)], model=model,
                                           dtype=dtype, device=device, batch=batch, reps=reps, warmup=warmup,
                                           budget_s=budget_s, skip=skip, keep_going=keep_going))
                _release(device)
    return rows


def _compare_group(op, mode, size, backends, *, model, dtype, device, batch, reps, warmup, budget_s, skip,
                   keep_going):
    from .flops import vit_shape

    tokens = vit_shape(model, size).tokens
    base = dict(op=op, mode=mode, img_size=size, tokens=tokens, dtype=dtype_name(dtype), device=str(device),
                model=model, source="measured")
    rows, cases, last = {}, {}, {}

    def failed(b, exc):
        if not keep_going:
            raise CaseError(case_label(op, mode, size, b), exc) from exc
        rows[b] = dict(base, backend=b, available=False, reason=None, error=describe(exc))

    for b in backends:
        reason = backend_unavailable(b, device) or (skip(op, b, mode, size) if skip else None)
        if reason:
            rows[b] = dict(base, backend=b, available=False, reason=reason)
            continue
        try:
            case = build_case(op, b, mode, size, model=model, batch=batch, dtype=dtype, device=device)
            # the first calls compile (torch.compile, Triton's JIT): never timed
            for _ in range(max(1, warmup) + (1 if b in ("compile", "triton") else 0)):
                synchronize(device)
                t0 = time.perf_counter()
                case.fn()
                synchronize(device)
                last[b] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - re-raised as CaseError unless keep_going
            _release(device)
            failed(b, exc)
            continue
        cases[b] = case
    if cases:
        try:
            n = reps if reps is not None else auto_reps(sum(last[b] for b in cases), device, budget_s, None)
            timings = time_interleaved({b: c.fn for b, c in cases.items()}, device, reps=n, warmup=0)
        except Exception as exc:  # noqa: BLE001 - which backend raised is unknown: all of the round fail
            if not keep_going:
                raise CaseError(case_label(op, mode, size, "+".join(cases)), exc) from exc
            for b in cases:
                rows[b] = dict(base, backend=b, available=False, reason=None, error=describe(exc))
            return [rows[b] for b in backends]
        eager = timings.get("eager")
        for b, case in cases.items():
            t = timings[b]
            row = dict(base, backend=b, available=True, reason=None, batch=case.batch, shape=case.shape,
                       flops=case.flops, bytes=case.bytes, **t.to_dict(), **case.metrics(t.median_s))
            row["speedup_vs_eager"] = eager.median_s / t.median_s if eager is not None else None
            rows[b] = row
    return [rows[b] for b in backends]


def format_speed_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare` rows (all measured)."""
    header = ["op", "mode", "img", "tokens", "batch", "backend", "median ms", "vs eager", "TFLOP/s", "GB/s", "reps"]
    lines = []
    for r in rows:
        if not r.get("available", True):
            why = f"failed: {r['error']}" if r.get("error") else f"not run: {r['reason']}"
            lines.append([r["op"], r["mode"], str(r["img_size"]), str(r["tokens"]), "-", r["backend"], "-", "-",
                          "-", "-", "-", why])
            continue
        sp = r.get("speedup_vs_eager")
        lines.append([r["op"], r["mode"], str(r["img_size"]), str(r["tokens"]), str(r["batch"]), r["backend"],
                      f"{r['median_ms']:.3f}", "-" if sp is None else f"{sp:.2f}x",
                      f"{r['tflops']:.3f}" if r.get("tflops") else "-", f"{r['gbps']:.1f}" if r.get("gbps") else "-",
                      str(r["reps"]), ""])
    widths = [max([len(h)] + [len(row[i]) for row in lines]) for i, h in enumerate(header)]

    def fmt(cells):
        body = "  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        extra = cells[len(header)] if len(cells) > len(header) else ""
        return (body + ("  " + extra if extra else "")).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in lines]
    return "\n".join(out)
