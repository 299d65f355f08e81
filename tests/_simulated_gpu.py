"""A GPU's launch path, simulated inside Triton's interpreter (there is no GPU here).

``simulated_gpu`` flips ``kernels/_autotune.on_gpu`` (the one switch between the interpreter's
fixed configurations and the GPU's autotuned ones) and replaces ``triton.testing.do_bench``
(which ``_autotune.time_candidate``, the one timer, calls) with a fake timer. The kernels still
run, in the interpreter, through the real ``triton.autotune`` machinery; every launch is recorded
with its meta-parameters, and the fake timer returns for each timed candidate the time a test's
``ranking`` gives to what that candidate launched. So a test can assert which candidates were
timed, which one won, and that the winner is what then runs.

What cannot be simulated here: real timings (the ranking is the test's), device limits that
make a configuration fail to launch (tests inject failures instead), CUDA-graph capture, and
the compiled code itself (the AOT compile tests cover that).
"""
from __future__ import annotations

import contextlib
import os
import types

import pytest
import torch
from triton.runtime.errors import OutOfResources
from triton.runtime.interpreter import InterpretedFunction

from fastvit.kernels import _autotune

ON_GPU = bool(os.environ.get("FASTVIT_TEST_ON_GPU")) and torch.cuda.is_available()
skip_on_gpu = pytest.mark.skipif(ON_GPU, reason="simulates a GPU inside the interpreter; on a GPU the other "
                                                "tests run the real autotuned path")

META = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "EPILOGUE_SPLIT", "EVEN_K", "num_warps", "num_stages")


class Launch(types.SimpleNamespace):
    """One recorded kernel launch: ``kernel`` (its name) and ``meta`` (its meta-parameters)."""


def record_launches(monkeypatch, fail=None) -> list:
    """From now on every interpreted kernel launch is appended to the returned list (as a
    ``Launch``); ``fail(launch) -> bool`` picks launches that raise ``OutOfResources`` instead of
    running, as a configuration too big for the device would. Patched on the class: patching a
    kernel object's own ``run`` would leave a bound copy behind that outlives the test."""
    launches: list[Launch] = []
    run = InterpretedFunction.run

    def recording_run(self, *args, **kwargs):
        launch = Launch(kernel=self.fn.__name__, meta={k: kwargs[k] for k in META if k in kwargs})
        launches.append(launch)
        if fail is not None and fail(launch):
            raise OutOfResources(232448, 101376, "shared memory")
        return run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    return launches


@contextlib.contextmanager
def simulated_gpu(monkeypatch, ranking, *, fail=None, multi_processor_count: int = 4, smem_limit: int = 163 * 1024):
    """Within the block launches take the GPU path; yields ``(launches, timed)``: every launch
    made, and per timed candidate the launches it made (in timing order).

    ``ranking(launches) -> float`` gives the fake time of a candidate from what it launched.
    ``fail(launch) -> bool`` picks launches that raise ``OutOfResources`` instead of running, as
    a configuration too big for the device would."""
    launches = record_launches(monkeypatch, fail)
    timed: list[list[Launch]] = []

    def fake_do_bench(fn, *args, **kwargs):
        start = len(launches)
        fn()
        timed.append(launches[start:])
        return ranking(launches[start:])

    import triton.testing
    from fastvit.kernels import _gemm_configs

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(_autotune, "on_gpu", lambda: True)
    monkeypatch.setattr(_gemm_configs, "shared_memory_limit", lambda device: smem_limit)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(multi_processor_count=multi_processor_count,
                                                                  shared_memory_per_block_optin=smem_limit))
    yield launches, timed


def clear_tuning(*tuned_kernels) -> None:
    """Forget earlier tuning results, so the next launch tunes again."""
    for t in tuned_kernels:
        t.tuner.cache.clear()
