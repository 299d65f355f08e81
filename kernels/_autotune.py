"""The one way a kernel gets its launch configuration, and the one place that times candidates.

* On a GPU, every autotuned kernel (attention forward, dK/dV, dQ; the LayerNorm forward; the
  linear_gelu GEMM) launches through ``triton.autotune`` over its candidate list from
  ``kernels/_configs.py``, pruned by a named filter there (``TunedKernel``).
* Under Triton's interpreter, which cannot benchmark, each of them runs one fixed configuration,
  also from ``_configs.py``; ``on_gpu`` is the single switch between the two paths.
* ``time_candidate`` is the only code that benchmarks: the autotuner times each Triton
  configuration with it, and linear_gelu's race of the tuned Triton GEMM against cuBLAS +
  epilogue (``race``) times its two paths with it. A candidate that fails to compile or run is
  reported by a warning naming it (then left out of the choice), never dropped in silence.

Tests simulate a GPU's launch path inside the interpreter by flipping ``on_gpu`` and replacing
``triton.testing.do_bench`` with a fake timer (tests/test_autotune_simulated.py).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping

import triton
from triton.runtime.autotuner import Autotuner

from . import _interpret

# Short timing windows: a tuning run happens once per bucketed key and should not stall the first
# forward pass for seconds; the candidates differ by far more than the noise at these lengths.
BENCH_WARMUP_MS = 5
BENCH_REP_MS = 20


class AutotuneWarning(UserWarning):
    """A launch candidate failed to compile or run while being timed."""


def on_gpu() -> bool:
    """True when launches go to a GPU (autotuned, GPU configurations); False under the
    interpreter (one fixed configuration per kernel). Every launcher asks this, and only this."""
    return not _interpret.interpreting()


def config_label(config: triton.Config) -> str:
    """``BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3``: how warnings and tests name a config."""
    meta = [f"{k}={v}" for k, v in config.kwargs.items()]
    return ", ".join(meta + [f"num_warps={config.num_warps}", f"num_stages={config.num_stages}"])


def config_key(config: triton.Config) -> tuple:
    """A hashable identity of a config (its constexprs, warps and stages)."""
    return (tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages)


def time_candidate(kernel: str, label: str, call: Callable[[], object]) -> float:
    """Median milliseconds of ``call()`` by ``triton.testing.do_bench``; ``inf``, with an
    ``AutotuneWarning`` naming ``kernel`` and ``label``, when it fails to compile or run (out of
    shared memory or registers on this device, a compiler error, a launch error)."""
    from triton import testing

    try:
        return float(testing.do_bench(call, warmup=BENCH_WARMUP_MS, rep=BENCH_REP_MS, return_mode="median"))
    except Exception as exc:  # reported just below, by name; the caller then picks among the rest
        warnings.warn(f"{kernel}: candidate [{label}] failed to compile or run and is left out of the choice: "
                      f"{type(exc).__name__}: {exc}", AutotuneWarning, stacklevel=2)
        return math.inf


def race(kernel: str, candidates: Mapping[str, Callable[[], object]]) -> str:
    """The label of the fastest candidate (each timed once by ``time_candidate``). Raises
    RuntimeError if every candidate failed."""
    if not candidates:
        raise ValueError(f"{kernel}: race needs at least one candidate, got none")
    timings = {label: time_candidate(kernel, label, call) for label, call in candidates.items()}
    best = min(timings, key=timings.get)
    if math.isinf(timings[best]):
        raise RuntimeError(f"{kernel}: every candidate failed to compile or run: {sorted(timings)}")
    return best


class _Autotuner(Autotuner):
    """``triton.autotune``'s tuner, timing each configuration through ``time_candidate``.

    Triton's own loop turns "out of resources" and compile errors into an infinite time without
    a word (and lets any other failure escape); here every failure becomes a warning naming the
    configuration, and the configuration is left out. Our kernels use no pre/post hooks, so a
    timed call is just the launch.
    """

    def _bench(self, *args, config, **meta):
        conflicts = meta.keys() & config.kwargs.keys()
        if conflicts:
            raise ValueError(f"{self.base_fn.__name__}: meta-parameters {sorted(conflicts)} are given at launch "
                             "and by the autotuner; pass them only through the configurations")
        current = dict(meta, **config.all_kwargs())
        return time_candidate(self.base_fn.__name__, config_label(config), lambda: self.fn.run(*args, **current))


# Every autotuner, by kernel name (a module-level dict of Autotuners is what
# fastvit.profiling.autotune scans to report the configurations picked in this process).
AUTOTUNERS: dict[str, Autotuner] = {}

PruneFn = Callable[..., list]
InterpretConfigFn = Callable[[dict], triton.Config]


class TunedKernel:
    """A kernel with its GPU candidates and its interpreter configuration; launch it as
    ``tuned[grid](**args)`` with ``grid`` a function of the chosen meta-parameters.

    ``fn``: the ``@triton.jit`` function (or a ``triton.heuristics`` over one). ``configs``: every
    candidate of the family, ``prune``: the named filter keeping a launch's share of them
    (signature ``prune(configs, named_args, **kwargs)``, as ``early_config_prune``), ``key``: the
    arguments whose values select a tuning result (bucketed by the launcher; Triton adds the
    dtypes). ``interpret_config``: the fixed configuration for the launch's arguments under the
    interpreter.
    """

    def __init__(self, fn, *, configs: list, key: list, prune: PruneFn, interpret_config: InterpretConfigFn):
        self.fn = fn
        self.configs = list(configs)
        self.prune = prune
        self.interpret_config = interpret_config
        self.tuner = _Autotuner(fn, fn.arg_names, self.configs, list(key), reset_to_zero=None, restore_value=None,
                                prune_configs_by={"early_config_prune": prune})
        AUTOTUNERS[self.__name__] = self.tuner

    @property
    def __name__(self) -> str:
        return self.tuner.base_fn.__name__

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if on_gpu():
                return self.tuner[grid](*args, **kwargs)
            named = {**dict(zip(self.fn.arg_names, args)), **kwargs}
            return self.fn[grid](*args, **kwargs, **self.interpret_config(named).all_kwargs())
        return launch


def merged_args(named_args: Mapping, kwargs: Mapping) -> dict:
    """The launch arguments a prune filter sees: positional (``named_args``) and keyword ones."""
    return {**named_args, **kwargs}
