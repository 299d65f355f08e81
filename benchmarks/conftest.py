"""The speed suite: every (op, backend, mode, resolution, device/dtype) case, timed with
pytest-benchmark. The cases are built by ``fastvit.profiling.speed`` (the same code as
``fastvit bench``); this file decides which run here and how they are timed and labelled.

* Targets: fp32 on CPU; fp16 and bf16 on CUDA (skipped with "needs CUDA" without a GPU). The
  triton backend is timed only on a GPU: on CPU it runs in Triton's interpreter, whose timing
  says nothing.
* CPU cases are a quick subset by default (``SUITE_CPU_CASES``; ``torch.compile`` only for
  ``SUITE_CPU_COMPILE``; both in ``fastvit/profiling/defaults.py`` with the rest of the CPU
  policy): ``pytest benchmarks --benchmark-disable`` runs each once as a smoke test in well
  under two minutes on two cores. ``FASTVIT_BENCH_FULL=1`` runs every CPU case.
* Timing synchronises the device inside the timed call (``torch.cuda.synchronize``); warm-up
  calls (which also compile) run before, untimed, and not at all under ``--benchmark-disable``.
  On CUDA ``triton.testing.do_bench``'s median is recorded in ``extra_info`` too.
* ``benchmark.group = f"{op}-{mode}-{res}px-{device}-{dtype}"``: each table compares the
  backends of one op at one resolution. ``extra_info`` holds the shapes, the analytic work and
  the throughput at the median: ``tflops`` (attention, mlp, block, model), ``gbps``
  (layer_norm), ``images_per_s`` (model).

See benchmarks/README.md for the commands (saving JSON, comparing runs).
"""
from __future__ import annotations

import gc
import os

import pytest
import torch

from fastvit.profiling import defaults, speed

FULL = os.environ.get("FASTVIT_BENCH_FULL", "").strip().lower() not in ("", "0", "false", "no")
RESOLUTIONS = defaults.SUITE_RESOLUTIONS
TARGETS = defaults.SUITE_TARGETS
WARMUP = 2


def skip_reason(op: str, backend: str, mode: str, res: int, device: str) -> str | None:
    """Why a case does not run here, or None."""
    if device == "cuda" and not torch.cuda.is_available():
        return "needs CUDA"
    reason = speed.backend_unavailable(backend, device)
    if reason:
        return reason
    if device == "cpu" and not FULL:
        return defaults.suite_cpu_skip_reason(op, backend, mode, res)
    return None


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    op = metafunc.module.OP
    params = []
    for device, dtype in TARGETS:
        for mode in speed.MODES:
            for res in RESOLUTIONS:
                for backend in speed.op_backends(op):
                    reason = skip_reason(op, backend, mode, res, device)
                    marks = [pytest.mark.skip(reason=reason)] if reason else []
                    params.append(pytest.param(backend, mode, res, f"{device}-{dtype}", marks=marks,
                                               id=f"{backend}-{mode}-{res}px-{device}-{dtype}"))
    metafunc.parametrize("backend,mode,res,target", params)


@pytest.fixture
def bench_case(benchmark, backend, mode, res, target, request):
    """Build the case of this test's parameters, time it with pytest-benchmark, label the result."""
    op = request.module.OP
    device, dtype = target.split("-")
    case = speed.build_case(op, backend, mode, res, batch=_batch_override(), dtype=dtype, device=device)
    benchmark.group = f"{op}-{mode}-{res}px-{device}-{dtype}"
    benchmark.extra_info.update({k: v for k, v in case.info().items() if v is not None})
    benchmark.extra_info["work"] = ("matmul FLOPs = 2 x MACs, backward = 2 x forward" if case.flops else
                                    "minimum bytes: x read, y written (+ dy, x read, dx written)")

    timed = speed.synchronized(case.fn, device)

    if not benchmark.disabled:
        for _ in range(WARMUP):
            timed()
    yield lambda: benchmark(timed)
    if not benchmark.disabled and benchmark.stats is not None:
        median = benchmark.stats.stats.median
        benchmark.extra_info["median_ms"] = median * 1e3
        benchmark.extra_info.update(case.metrics(median))
        ms = speed.do_bench_median_ms(case.fn) if device == "cuda" else None
        if ms is not None:
            benchmark.extra_info["do_bench_median_ms"] = ms
            benchmark.extra_info.update({f"do_bench_{k}": v for k, v in case.metrics(ms / 1e3).items()})
    case = timed = None  # drop the inputs before collecting, so the next case starts from a clean heap
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _batch_override() -> int | None:
    value = os.environ.get("FASTVIT_BENCH_BATCH")
    if not value:
        return None
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch < 1:
        raise pytest.UsageError(f"FASTVIT_BENCH_BATCH must be a positive int, got {value!r}")
    return batch
