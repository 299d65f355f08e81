"""Ahead-of-time compile report: what our Triton kernels cost on real GPUs, without one.

Each kernel module in ``fastvit.kernels`` exposes ``aot_specs()``: ``AotSpec``s
(``fastvit/kernels/_aot.py``) naming a ``@triton.jit`` function, its argument types, its
compile-time constants and its launch configuration (a module whose configurations differ per
architecture family takes ``family=``: the attention kernels). This module compiles each spec
for a chosen architecture with Triton's own pipeline (``triton.compile`` on an ``ASTSource``
for a ``GPUTarget``; no driver involved): NVIDIA ``GPUTarget("cuda", <cc>, 32)`` (PTX and cubin,
read with the tools shipped in the Triton wheel) and AMD ``GPUTarget("hip", "gfx942", 64)``
(AMDGCN and hsaco in the compiled kernel's ``asm``, compiled by the LLVM inside the wheel: no
ROCm needed); ``fastvit.profiling.kernel_report`` reads both, ``fastvit.profiling.arch_limits``
holds architecture limits and occupancy.

Under ``TRITON_INTERPRET=1`` (the test suite), ``@triton.jit`` returns interpreter objects, and so
do Triton's own helpers (``tl.max``, ``tl.cdiv``, ...), and ``fastvit.kernels._interpret`` reports
that it is interpreting, which changes the code it emits. None of that can be compiled for a GPU.
So in that case the compile runs in a child Python process started without ``TRITON_INTERPRET``:
it imports the kernel by module and qualified name, gets the real ``JITFunction`` and compiles
exactly what a GPU would run. Kernels must then be defined at module level. Without the
interpreter the compile runs in-process.

Results are cached per process (compiling is slow); Triton's on-disk cache makes repeated
compiles across processes cheap, and it is safe for concurrent processes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from typing import Iterable, NamedTuple, Sequence

from ..kernels._aot import AotSpec, python_function
from .arch_limits import (ARCH_LIMITS, KIB, ArchLimits, arch_name, compute_capability, is_amd, limits, occupancy,
                          occupancy_details)
from .kernel_report import (KernelReport, analyse, analyse_amd, count_sass_opcodes, parse_amdgcn, parse_ptxas_log,
                            tool_paths)

# Re-exported: the CLI and earlier callers import these from here.
__all__ = [
    "ARCH_LIMITS", "ArchLimits", "CompileReportError", "KernelReport", "arch_name", "collect_arch_specs",
    "collect_specs", "compile_spec", "count_sass_opcodes", "format_table", "occupancy", "occupancy_details",
    "parse_amdgcn", "parse_ptxas_log", "report", "report_pairs", "tool_paths",
]

KERNEL_MODULES = ("attention", "attention_varlen", "layer_norm", "linear_gelu", "linear_glu", "gelu_linear_bwd")
_WORKER_TIMEOUT_S = 1800
_WORKER_ENV = "FASTVIT_AOT_WORKER"


class CompileReportError(RuntimeError):
    """One or more specs failed to compile; the message names each and carries the error."""


def _check_spec(spec) -> AotSpec:
    if not isinstance(spec, AotSpec):
        raise TypeError(f"spec must be a fastvit.kernels._aot.AotSpec (built by aot_spec), got {type(spec).__name__}")
    return spec


def _jit_function(obj):
    """The JITFunction under Autotuner / Heuristics wrappers, or None if there is none."""
    from triton.runtime.jit import JITFunction

    for _ in range(16):
        if isinstance(obj, JITFunction):
            return obj
        obj = getattr(obj, "fn", None)
        if obj is None:
            return None
    return None


def _jit_usable_here() -> bool:
    """False when this process's Triton is the interpreter (jit helpers are interpreter objects)."""
    import triton.language as tl
    from triton import knobs
    from triton.runtime.jit import JITFunction

    return not knobs.runtime.interpret and isinstance(tl.cdiv, JITFunction)


def _describe(spec: AotSpec) -> dict:
    """What a report row says the spec is: its head dim (the HEAD_DIM constexpr, if any), its
    element type (the first tensor argument's) and its configuration (every constexpr but the
    optional tensors left out, and the compile options)."""
    dtype = next((t[1:] for t in spec.signature.values() if t.startswith("*")), None)
    head_dim = spec.constexprs.get("HEAD_DIM")
    config = {k: v for k, v in spec.constexprs.items() if v is not None and k != "HEAD_DIM"}
    return {"head_dim": head_dim if isinstance(head_dim, int) else None, "dtype": dtype,
            "config": {**config, **spec.options}}


def _job(spec: AotSpec, arch) -> dict:
    """A picklable description of one compile: the kernel named by module and qualified name.
    (The spec validated its signature against the kernel's arguments when it was built.)"""
    _check_spec(spec)
    arch = arch_name(arch)
    pyfn = python_function(spec.fn)
    try:
        source_hash = hashlib.sha256(inspect.getsource(pyfn).encode()).hexdigest()[:16]
    except OSError:
        source_hash = ""
    return {
        "name": spec.name, "module": pyfn.__module__, "qualname": pyfn.__qualname__,
        "file": inspect.getsourcefile(pyfn) or pyfn.__code__.co_filename, "signature": dict(spec.signature),
        "constexprs": dict(spec.constexprs), "aligned": list(spec.aligned), "num_warps": spec.num_warps,
        "num_stages": spec.num_stages, "arch": arch, "source_hash": source_hash, "options": dict(spec.options),
        "describe": _describe(spec),
    }


def _job_key(job: dict) -> tuple:
    return (job["module"], job["qualname"], job["file"], job["source_hash"], repr(sorted(job["signature"].items())),
            repr(sorted(job["constexprs"].items())), tuple(sorted(job["aligned"])), job["num_warps"],
            job["num_stages"], job["arch"], job["name"], repr(sorted(job["options"].items())))


def _resolve(job: dict):
    """Find the job's JITFunction by import (in a process whose Triton is not interpreting)."""
    module = None
    try:
        module = importlib.import_module(job["module"])
    except ImportError:
        pass
    if module is None or os.path.realpath(getattr(module, "__file__", "") or "") != os.path.realpath(job["file"]):
        spec = importlib.util.spec_from_file_location(f"_fastvit_aot_{abs(hash(job['file']))}", job["file"])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {job['module']} from {job['file']}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    obj = module
    for part in job["qualname"].split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise AttributeError(f"{job['module']} has no {job['qualname']}")
    jit = _jit_function(obj)
    if jit is None:
        raise TypeError(f"{job['module']}.{job['qualname']} is not a @triton.jit function")
    return jit


def _compile_job(job: dict, fn=None) -> KernelReport:
    """Compile one job in this process (whose Triton must not be interpreting)."""
    import triton
    from triton.backends.compiler import GPUTarget

    jit = fn if fn is not None else _resolve(job)
    names = list(jit.arg_names)
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in job["aligned"]
             if job["signature"].get(k) != "constexpr"}
    src = triton.compiler.ASTSource(jit, job["signature"], job["constexprs"], attrs)
    options = {"num_warps": job["num_warps"], "num_stages": job["num_stages"]}
    arch = job["arch"]
    if is_amd(arch):
        # AMD hints (waves_per_eu, matrix_instr_nonkdim) are options of the hip backend only.
        kernel = triton.compile(src, target=GPUTarget("hip", arch, limits(arch).warp_size),
                                options={**options, **job["options"]})
        meta = kernel.metadata
        rep = analyse_amd(job["name"], meta.name, arch, job["num_warps"], job["num_stages"], kernel.asm["amdgcn"],
                          kernel.asm["hsaco"], int(meta.shared))
    else:
        kernel = triton.compile(src, target=GPUTarget("cuda", compute_capability(arch), 32), options=options)
        meta = kernel.metadata
        rep = analyse(job["name"], meta.name, arch, job["num_warps"], job["num_stages"], kernel.asm["ptx"],
                      kernel.asm["cubin"], int(meta.shared), bool(getattr(meta, "enable_fp_fusion", True)),
                      getattr(meta, "ptx_options", None))
    return dataclasses.replace(rep, **job["describe"])


def _compile_jobs_here(jobs: Sequence[dict]) -> list:
    """Compile every job; each result is a KernelReport or the error text."""
    results = []
    for job in jobs:
        try:
            results.append(_compile_job(job))
        except Exception as e:  # reported per job, with the kernel's name, by the caller
            results.append(f"{type(e).__name__}: {e}")
    return results


def _compile_jobs_in_child(jobs: Sequence[dict]) -> list:
    """Compile jobs in a fresh Python without TRITON_INTERPRET, so Triton is the real compiler."""
    if os.environ.get(_WORKER_ENV):
        raise CompileReportError("a compile worker may not start another one (is a kernel module compiling at import?)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[_WORKER_ENV] = "1"
    with tempfile.TemporaryDirectory(prefix="fastvit-aot-") as tmp:
        payload, result = os.path.join(tmp, "jobs.pkl"), os.path.join(tmp, "results.pkl")
        with open(payload, "wb") as f:
            pickle.dump({"sys_path": [p for p in sys.path if p], "jobs": pickle.dumps(list(jobs)),
                         "result": result}, f)
        code = ("import pickle, sys\n"
                "p = pickle.load(open(sys.argv[1], 'rb'))\n"
                "sys.path[:] = p['sys_path'] + [q for q in sys.path if q not in p['sys_path']]\n"
                "from fastvit.profiling.compile_report import _compile_jobs_here\n"
                "out = _compile_jobs_here(pickle.loads(p['jobs']))\n"
                "pickle.dump(out, open(p['result'], 'wb'))\n")
        proc = subprocess.run([sys.executable, "-c", code, payload], env=env, capture_output=True, text=True,
                              timeout=_WORKER_TIMEOUT_S, cwd=os.getcwd())
        if proc.returncode != 0 or not os.path.exists(result):
            raise CompileReportError(f"the compile worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(result, "rb") as f:
            return pickle.load(f)


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _compile_many(pairs: Sequence[tuple[AotSpec, str]], isolate: bool | None, workers: int | None) -> list[KernelReport]:
    jobs = [_job(spec, arch) for spec, arch in pairs]
    keys = [_job_key(j) for j in jobs]
    with _CACHE_LOCK:
        todo = {k: j for k, j in zip(keys, jobs) if k not in _CACHE}
    if todo:
        if isolate is None:
            isolate = not _jit_usable_here()
        todo_keys, todo_jobs = list(todo), list(todo.values())
        if isolate:
            n = max(1, min(workers or min(2, os.cpu_count() or 1), math.ceil(len(todo_jobs) / 4)))
            chunks = [todo_jobs[i::n] for i in range(n)]
            order = [k for i in range(n) for k in todo_keys[i::n]]
            if n == 1:
                outs = [_compile_jobs_in_child(chunks[0])]
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(n) as pool:
                    outs = list(pool.map(_compile_jobs_in_child, chunks))
            results = dict(zip(order, [r for out in outs for r in out]))
        else:
            results = {}
            for k, (spec, _), job in zip(keys, pairs, jobs):
                if k in todo and k not in results:
                    try:
                        results[k] = _compile_job(job, _jit_function(spec.fn))
                    except Exception as e:
                        results[k] = f"{type(e).__name__}: {e}"
        failures = [f"{todo[k]['name']} ({todo[k]['arch']}): {r}" for k, r in results.items()
                    if not isinstance(r, KernelReport)]
        with _CACHE_LOCK:
            _CACHE.update({k: r for k, r in results.items() if isinstance(r, KernelReport)})
        if failures:
            raise CompileReportError("failed to compile:\n" + "\n".join(failures))
    with _CACHE_LOCK:
        return [_CACHE[k] for k in keys]


def compile_spec(spec: AotSpec, arch, *, isolate: bool | None = None) -> KernelReport:
    """Compile one ``aot_specs()`` entry for ``arch`` ("sm_80", 80, "gfx942") and report its
    resources.

    ``isolate`` forces (True) or forbids (False) compiling in a child process; by default a
    child is used exactly when this process's Triton is the interpreter.
    """
    return _compile_many([(spec, arch)], isolate, 1)[0]


def report(specs: Iterable[AotSpec], archs: Iterable = ("sm_80", "sm_90"), *, isolate: bool | None = None,
           workers: int | None = None) -> list[KernelReport]:
    """Compile every spec for every arch (cached); reports in spec-major, arch-minor order.

    Raises CompileReportError naming every spec that failed, after trying them all.
    """
    archs = [arch_name(a) for a in archs]
    return report_pairs([(spec, arch) for spec in specs for arch in archs], isolate=isolate, workers=workers)


def report_pairs(pairs: Iterable[tuple[AotSpec, object]], *, isolate: bool | None = None,
                 workers: int | None = None) -> list[KernelReport]:
    """Compile each (spec, arch) pair (cached); reports in the pairs' order."""
    pairs = [(spec, arch_name(arch)) for spec, arch in pairs]
    return _compile_many(pairs, isolate, workers) if pairs else []


class CollectedSpecs(NamedTuple):
    specs: list
    skipped: dict   # kernel module -> why it contributed nothing


def collect_arch_specs(kernels: Iterable[str] = KERNEL_MODULES, archs: Iterable = ("sm_80", "sm_90")):
    """(spec, arch) for every configuration each kernel module compiles on each arch: a module
    whose ``aot_specs`` takes ``family`` gets the arch's family (``_configs.arch_family``), the
    others give the same specs everywhere. Returns (pairs, skipped) as ``collect_specs``."""
    from ..kernels._configs import arch_family

    pairs, skipped = [], {}
    for arch in (arch_name(a) for a in archs):
        collected = collect_specs(kernels, family=arch_family(arch))
        pairs.extend((spec, arch) for spec in collected.specs)
        skipped.update(collected.skipped)
    return pairs, skipped


def collect_specs(kernels: Iterable[str] = KERNEL_MODULES, *, family: str | None = None) -> CollectedSpecs:
    """``aot_specs()`` of each ``fastvit.kernels.<name>`` (with ``family=`` where the module takes
    it and one is given); modules missing or without it are skipped."""
    specs, skipped = [], {}
    for name in kernels:
        try:
            module = importlib.import_module(f"fastvit.kernels.{name}")
        except ModuleNotFoundError as e:
            if e.name not in (f"fastvit.kernels.{name}",):
                raise
            skipped[name] = "module not written yet"
            continue
        if not callable(getattr(module, "aot_specs", None)):
            skipped[name] = "no aot_specs()"
            continue
        takes_family = "family" in inspect.signature(module.aot_specs).parameters
        specs.extend(module.aot_specs(family=family) if takes_family and family else module.aot_specs())
    return CollectedSpecs(specs, skipped)


def _mma_cell(r: KernelReport) -> str:
    if not r.matrix_instructions:
        return "n/a"
    return " ".join(f"{k}:{'n/a' if v is None else v}" for k, v in r.matrix_instructions.items())


def format_table(reports: Sequence[KernelReport]) -> str:
    """A fixed-width text table, one row per kernel configuration and architecture. On AMD regs
    are VGPRs per lane and smem is LDS; "matrix" counts HMMA / HGMMA / tcgen05 / MFMA."""
    header = ("kernel", "arch", "warps", "stages", "regs", "spill B", "smem KiB", "limit KiB", "matrix",
              "blocks/SM", "occupancy", "limited by")

    rows = [(r.name, r.arch, str(r.num_warps), str(r.num_stages), str(r.registers), str(r.spill_bytes),
             f"{r.shared_bytes / KIB:.1f}", f"{r.shared_limit / KIB:.0f}", _mma_cell(r),
             str(r.blocks_per_sm), f"{100 * r.occupancy:.1f}%", ",".join(r.limited_by)) for r in reports]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]
    notes = [f"{r.name} {r.arch}: {n}" for r in reports for n in r.notes]
    return "\n".join(out + ([""] + notes if notes else []))
