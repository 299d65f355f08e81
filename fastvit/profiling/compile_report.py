"""Ahead-of-time compile report: what our Triton kernels cost on real GPUs, without one.

Each kernel module in ``fastvit.kernels`` exposes ``aot_specs()``: plain dicts naming a
``@triton.jit`` function, its argument types, its compile-time constants and its launch
configuration. This module compiles each spec for a chosen NVIDIA architecture with Triton's own
pipeline (``triton.compile`` on an ``ASTSource`` for a ``GPUTarget``; no driver involved), then
reads the result with the tools shipped in the Triton wheel:

* ``ptxas -v`` on the PTX: registers per thread, spill store/load bytes, static shared memory;
* ``cuobjdump -res-usage`` / ``-sass`` on the cubin: registers as loaded, static shared memory and
  the SASS, in which tensor-core instructions are counted (``HMMA`` on sm_80+, ``HGMMA``, the
  warpgroup MMA, on sm_90a);
* the kernel metadata: ``shared``, the dynamic shared memory Triton asks for at launch.

From registers, shared memory and threads per block it derives the theoretical occupancy.

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
import re
import subprocess
import sys
import tempfile
import threading
from typing import Iterable, NamedTuple, Sequence

__all__ = [
    "ARCH_LIMITS", "ArchLimits", "CompileReportError", "KernelReport", "collect_specs",
    "compile_spec", "format_table", "occupancy", "occupancy_details", "report", "tool_paths",
]

KERNEL_MODULES = ("attention", "layer_norm", "linear_gelu")
_REQUIRED_KEYS = ("name", "fn", "signature", "constexprs", "num_warps", "num_stages")
_WORKER_TIMEOUT_S = 1800
_WORKER_ENV = "FASTVIT_AOT_WORKER"


# ----------------------------------------------------------------------------------------------
# Per-architecture limits.
#
# Sources: CUDA C++ Programming Guide, "Compute Capabilities" -> Table "Technical Specifications
# per Compute Capability" (max resident warps / blocks per SM, 64K 32-bit registers per SM,
# 255 registers per thread, shared memory per SM and max per block) and the "Features and
# Technical Specifications" notes on the 1 KB of shared memory the system reserves per block;
# the allocation rules (registers allocated per warp in units of 256, four SM sub-partitions,
# shared memory allocated in 128-byte units) follow the CUDA Occupancy Calculator and
# `cuda_occupancy.h` in the CUDA toolkit (cudaOccMaxActiveBlocksPerMultiprocessor).
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArchLimits:
    """Per-SM resources of one compute capability, as the occupancy calculator uses them."""

    arch: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    smem_per_sm: int          # the largest shared-memory carve-out, bytes
    smem_per_block: int       # opt-in maximum per block (what Triton checks at launch), bytes
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_threads_per_block: int = 1024
    reg_alloc_unit: int = 256     # registers are allocated per warp, rounded up to this
    sub_partitions: int = 4       # registers come from one of 4 quarter register files
    smem_alloc_unit: int = 128
    smem_reserved_per_block: int = 1024
    warp_size: int = 32


KIB = 1024
ARCH_LIMITS = {
    80: ArchLimits(80, max_warps_per_sm=64, max_blocks_per_sm=32, smem_per_sm=164 * KIB, smem_per_block=163 * KIB),
    86: ArchLimits(86, max_warps_per_sm=48, max_blocks_per_sm=16, smem_per_sm=100 * KIB, smem_per_block=99 * KIB),
    89: ArchLimits(89, max_warps_per_sm=48, max_blocks_per_sm=24, smem_per_sm=100 * KIB, smem_per_block=99 * KIB),
    90: ArchLimits(90, max_warps_per_sm=64, max_blocks_per_sm=32, smem_per_sm=228 * KIB, smem_per_block=227 * KIB),
}


def _limits(arch: int) -> ArchLimits:
    if arch not in ARCH_LIMITS:
        raise ValueError(f"arch must be one of {sorted(ARCH_LIMITS)} (compute capability x 10), got {arch!r}")
    return ARCH_LIMITS[arch]


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy_details(registers: int, shared_bytes: int, num_warps: int, arch: int) -> dict:
    """Resident blocks per SM allowed by each resource, and the resulting occupancy.

    ``registers`` per thread, ``shared_bytes`` per block (static + dynamic, without the 1 KB the
    system reserves, which is added here), ``num_warps`` per block. Occupancy is active warps per
    SM over the architecture's maximum, as in the CUDA Occupancy Calculator.
    """
    lim = _limits(arch)
    if num_warps <= 0 or registers < 0 or shared_bytes < 0:
        raise ValueError("num_warps must be positive and registers, shared_bytes non-negative, got "
                         f"num_warps={num_warps}, registers={registers}, shared_bytes={shared_bytes}")
    blocks = {"warps": lim.max_warps_per_sm // num_warps, "blocks": lim.max_blocks_per_sm}

    regs_per_warp = _round_up(registers * lim.warp_size, lim.reg_alloc_unit)
    # The launch check assumes the block's warps are spread over all four sub-partitions.
    regs_per_block = regs_per_warp * _round_up(num_warps, lim.sub_partitions)
    if registers > lim.max_regs_per_thread or regs_per_block > lim.regs_per_sm:
        blocks["registers"] = 0
    elif regs_per_warp == 0:
        blocks["registers"] = lim.max_blocks_per_sm
    else:
        # Warps get their registers inside one sub-partition: count what fits per quarter.
        warps_per_partition = (lim.regs_per_sm // lim.sub_partitions) // regs_per_warp
        blocks["registers"] = warps_per_partition * lim.sub_partitions // num_warps

    if shared_bytes > lim.smem_per_block:
        blocks["shared_memory"] = 0
    else:
        smem = _round_up(shared_bytes + lim.smem_reserved_per_block, lim.smem_alloc_unit)
        blocks["shared_memory"] = lim.smem_per_sm // smem

    if num_warps * lim.warp_size > lim.max_threads_per_block:
        blocks["threads"] = 0
    active = min(blocks.values())
    return {
        "blocks_per_sm": active,
        "active_warps": active * num_warps,
        "max_warps": lim.max_warps_per_sm,
        "occupancy": active * num_warps / lim.max_warps_per_sm,
        "limited_by": sorted(k for k, v in blocks.items() if v == active),
        "block_limits": blocks,
    }


def occupancy(registers: int, shared_bytes: int, num_warps: int, arch: int) -> float:
    """Theoretical occupancy in [0, 1]: active warps per SM / maximum warps per SM."""
    return occupancy_details(registers, shared_bytes, num_warps, arch)["occupancy"]


# ----------------------------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class KernelReport:
    """Resources of one compiled kernel configuration on one architecture."""

    name: str
    arch: int
    num_warps: int
    num_stages: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    spill_bytes: int
    shared_bytes: int             # static + dynamic, per block
    shared_limit: int             # opt-in maximum per block on ``arch``
    hmma: int | None              # None when cuobjdump is unavailable
    hgmma: int | None
    occupancy: float
    kernel: str = ""              # the Triton function's name
    static_shared_bytes: int = 0
    dynamic_shared_bytes: int = 0
    stack_bytes: int = 0
    blocks_per_sm: int = 0
    limited_by: tuple = ()
    notes: tuple = ()
    ptx: str = dataclasses.field(default="", repr=False, compare=False)
    cubin: bytes = dataclasses.field(default=b"", repr=False, compare=False)

    def sass(self) -> str:
        """The cubin disassembled by cuobjdump (not kept: it is large and cheap to redo)."""
        text = _cuobjdump(self.cubin, "-sass")
        if text is None:
            raise RuntimeError("cuobjdump is not available in the triton wheel")
        return text

    @property
    def tensor_core_instructions(self) -> int | None:
        """HMMA + HGMMA, or None if the SASS could not be read."""
        if self.hmma is None or self.hgmma is None:
            return None
        return self.hmma + self.hgmma

    def to_dict(self) -> dict:
        """Every field but the binaries, JSON-ready."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("ptx", "cubin")}
        out["limited_by"] = list(self.limited_by)
        out["notes"] = list(self.notes)
        return out


class CompileReportError(RuntimeError):
    """One or more specs failed to compile; the message names each and carries the error."""


def tool_paths() -> dict:
    """Paths of the NVIDIA tools inside the Triton wheel (None where missing)."""
    from triton import knobs

    out = {}
    for tool in ("ptxas", "cuobjdump", "nvdisasm"):
        try:
            found = getattr(knobs.nvidia, tool)
            out[tool] = found.path if found is not None else None
        except Exception:  # a missing or broken binary: report it, do not fail the import
            out[tool] = None
    return out


_SASS_OPCODE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)", re.MULTILINE)


def count_sass_opcodes(sass: str, opcodes: Iterable[str] = ("HMMA", "HGMMA")) -> dict:
    """How many SASS instructions have each opcode (modifiers such as ``.16816.F32`` ignored)."""
    wanted = {op: 0 for op in opcodes}
    for op in _SASS_OPCODE.findall(sass):
        if op in wanted:
            wanted[op] += 1
    return wanted


def parse_ptxas_log(log: str) -> dict:
    """Registers, spills, stack frame and static shared memory from ``ptxas -v`` output.

    Spills and stack are summed over every function the log lists; registers are the most any
    function uses (a Triton kernel is one entry function, with rare non-inlined helpers).
    """
    def ints(pattern):
        return [int(v) for v in re.findall(pattern, log)]

    regs = ints(r"Used (\d+) registers")
    if not regs:
        raise ValueError(f"no register count in the ptxas log:\n{log}")
    return {
        "registers": max(regs),
        "spill_store_bytes": sum(ints(r"(\d+) bytes spill stores")),
        "spill_load_bytes": sum(ints(r"(\d+) bytes spill loads")),
        "stack_bytes": sum(ints(r"(\d+) bytes stack frame")),
        "static_shared_bytes": max(ints(r"(\d+) bytes smem") or [0]),
    }


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout + proc.stderr


def _ptxas_log(ptx: str, arch: int, enable_fp_fusion: bool, ptx_options: str | None) -> str:
    """Re-run the wheel's ptxas on Triton's PTX with Triton's flags, only to read ``-v``."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory(prefix="fastvit-ptxas-") as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        # Same flags as triton's make_cubin, so the register allocation is the one it shipped.
        cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", *([] if enable_fp_fusion else ["--fmad=false"]),
               *(ptx_options.split() if ptx_options else []), f"--gpu-name={sm_arch_from_capability(arch)}",
               src, "-o", os.path.join(tmp, "kernel.cubin")]
        return _run(cmd)


def _cuobjdump(cubin: bytes, flag: str) -> str | None:
    tool = tool_paths()["cuobjdump"]
    if tool is None:
        return None
    with tempfile.TemporaryDirectory(prefix="fastvit-cuobjdump-") as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return _run([tool, flag, path])


def _analyse(name: str, kernel: str, arch: int, num_warps: int, num_stages: int, ptx: str, cubin: bytes,
             dynamic_shared: int, enable_fp_fusion: bool = True, ptx_options: str | None = None) -> KernelReport:
    """Turn Triton's PTX, cubin and metadata into a KernelReport."""
    lim = _limits(arch)
    notes = []
    usage = parse_ptxas_log(_ptxas_log(ptx, arch, enable_fp_fusion, ptx_options))
    static_shared = usage["static_shared_bytes"]

    res = _cuobjdump(cubin, "-res-usage")
    sass = _cuobjdump(cubin, "-sass")
    if res is None or sass is None:
        hmma = hgmma = None
        notes.append("cuobjdump not found in the triton wheel: no SASS, tensor-core counts unknown")
    else:
        counts = count_sass_opcodes(sass)
        hmma, hgmma = counts["HMMA"], counts["HGMMA"]
        m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", res)
        if m:
            loaded_regs, _, loaded_shared, _ = map(int, m.groups())
            if loaded_regs != usage["registers"]:
                notes.append(f"cubin reports {loaded_regs} registers, ptxas -v {usage['registers']}: using the cubin's")
                usage["registers"] = loaded_regs
            # sm_90a cubins may carry reserved static shared memory that ptxas -v does not list.
            static_shared = max(static_shared, loaded_shared)
    shared = static_shared + dynamic_shared
    occ = occupancy_details(usage["registers"], shared, num_warps, arch)
    if shared > lim.smem_per_block:
        notes.append(f"needs {shared} B of shared memory, sm_{arch} allows {lim.smem_per_block} B per block")
    return KernelReport(
        name=name, arch=arch, num_warps=num_warps, num_stages=num_stages, registers=usage["registers"],
        spill_store_bytes=usage["spill_store_bytes"], spill_load_bytes=usage["spill_load_bytes"],
        spill_bytes=usage["spill_store_bytes"] + usage["spill_load_bytes"], shared_bytes=shared,
        shared_limit=lim.smem_per_block, hmma=hmma, hgmma=hgmma, occupancy=occ["occupancy"], kernel=kernel,
        static_shared_bytes=static_shared, dynamic_shared_bytes=dynamic_shared, stack_bytes=usage["stack_bytes"],
        blocks_per_sm=occ["blocks_per_sm"], limited_by=tuple(occ["limited_by"]), notes=tuple(notes),
        ptx=ptx, cubin=cubin,
    )


# ----------------------------------------------------------------------------------------------
# Compiling a spec.
# ----------------------------------------------------------------------------------------------
def _check_spec(spec: dict) -> None:
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a dict, got {type(spec).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in spec]
    if missing:
        raise ValueError(f"spec {spec.get('name', '?')!r} lacks the keys {missing}; expected {list(_REQUIRED_KEYS)}")
    if not isinstance(spec["signature"], dict) or not isinstance(spec["constexprs"], dict):
        raise TypeError(f"spec {spec['name']!r}: signature and constexprs must be dicts")
    for key in ("num_warps", "num_stages"):
        if not isinstance(spec[key], int) or spec[key] <= 0:
            raise ValueError(f"spec {spec['name']!r}: {key} must be a positive int, got {spec[key]!r}")


def _python_function(fn):
    """The plain Python function under a JITFunction, InterpretedFunction, Autotuner or Heuristics."""
    obj = fn
    for _ in range(16):
        if inspect.isfunction(obj):
            return obj
        obj = getattr(obj, "fn", None)
    raise TypeError(f"spec fn must be a @triton.jit function (possibly autotuned), got {fn!r}")


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


def _job(spec: dict, arch: int) -> dict:
    """A picklable description of one compile: the kernel named by module and qualified name."""
    _check_spec(spec)
    _limits(arch)
    pyfn = _python_function(spec["fn"])
    signature = dict(spec["signature"])
    constexprs = dict(spec["constexprs"])
    for key in constexprs:
        signature.setdefault(key, "constexpr")
    params = list(inspect.signature(pyfn).parameters)
    unknown = [k for k in signature if k not in params]
    if unknown:
        raise ValueError(f"spec {spec['name']!r}: {unknown} are not arguments of {pyfn.__qualname__}{tuple(params)}")
    untyped = [p for p in params if p not in signature]
    if untyped:
        raise ValueError(f"spec {spec['name']!r}: the signature has no type for {untyped}")
    valueless = [k for k, v in signature.items() if v == "constexpr" and k not in constexprs]
    if valueless:
        raise ValueError(f"spec {spec['name']!r}: constexpr arguments {valueless} have no value in constexprs")
    # Launches with torch tensors pass 16-byte aligned pointers, and Triton specialises on that;
    # a spec can list its own set ("aligned": names of pointer or int args divisible by 16).
    aligned = spec.get("aligned")
    if aligned is None:
        aligned = [k for k, v in signature.items() if isinstance(v, str) and v.startswith("*")]
    try:
        source_hash = hashlib.sha256(inspect.getsource(pyfn).encode()).hexdigest()[:16]
    except OSError:
        source_hash = ""
    return {
        "name": spec["name"], "module": pyfn.__module__, "qualname": pyfn.__qualname__,
        "file": inspect.getsourcefile(pyfn) or pyfn.__code__.co_filename, "signature": signature,
        "constexprs": constexprs, "aligned": list(aligned), "num_warps": spec["num_warps"],
        "num_stages": spec["num_stages"], "arch": arch, "source_hash": source_hash,
    }


def _job_key(job: dict) -> tuple:
    return (job["module"], job["qualname"], job["file"], job["source_hash"], repr(sorted(job["signature"].items())),
            repr(sorted(job["constexprs"].items())), tuple(sorted(job["aligned"])), job["num_warps"],
            job["num_stages"], job["arch"], job["name"])


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
    kernel = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32), options=options)
    meta = kernel.metadata
    return _analyse(job["name"], meta.name, job["arch"], job["num_warps"], job["num_stages"], kernel.asm["ptx"],
                    kernel.asm["cubin"], int(meta.shared), bool(getattr(meta, "enable_fp_fusion", True)),
                    getattr(meta, "ptx_options", None))


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


def _compile_many(pairs: Sequence[tuple[dict, int]], isolate: bool | None, workers: int | None) -> list[KernelReport]:
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
                        results[k] = _compile_job(job, _jit_function(spec["fn"]))
                    except Exception as e:
                        results[k] = f"{type(e).__name__}: {e}"
        failures = [f"{todo[k]['name']} (sm_{todo[k]['arch']}): {r}" for k, r in results.items()
                    if not isinstance(r, KernelReport)]
        with _CACHE_LOCK:
            _CACHE.update({k: r for k, r in results.items() if isinstance(r, KernelReport)})
        if failures:
            raise CompileReportError("failed to compile:\n" + "\n".join(failures))
    with _CACHE_LOCK:
        return [_CACHE[k] for k in keys]


def compile_spec(spec: dict, arch: int, *, isolate: bool | None = None) -> KernelReport:
    """Compile one ``aot_specs()`` entry for ``sm_<arch>`` and report its resources.

    ``isolate`` forces (True) or forbids (False) compiling in a child process; by default a
    child is used exactly when this process's Triton is the interpreter.
    """
    return _compile_many([(spec, arch)], isolate, 1)[0]


def report(specs: Iterable[dict], archs: Iterable[int] = (80, 90), *, isolate: bool | None = None,
           workers: int | None = None) -> list[KernelReport]:
    """Compile every spec for every arch (cached); reports in spec-major, arch-minor order.

    Raises CompileReportError naming every spec that failed, after trying them all.
    """
    archs = list(archs)
    for arch in archs:
        _limits(arch)
    pairs = [(spec, arch) for spec in specs for arch in archs]
    return _compile_many(pairs, isolate, workers) if pairs else []


class CollectedSpecs(NamedTuple):
    specs: list
    skipped: dict   # kernel module -> why it contributed nothing


def collect_specs(kernels: Iterable[str] = KERNEL_MODULES) -> CollectedSpecs:
    """``aot_specs()`` of each ``fastvit.kernels.<name>``; modules missing or without it are skipped."""
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
        specs.extend(module.aot_specs())
    return CollectedSpecs(specs, skipped)


def format_table(reports: Sequence[KernelReport]) -> str:
    """A fixed-width text table, one row per kernel configuration and architecture."""
    header = ("kernel", "sm", "warps", "stages", "regs", "spill B", "smem KiB", "limit KiB", "HMMA", "HGMMA",
              "blocks/SM", "occupancy", "limited by")

    def opt(v):
        return "n/a" if v is None else str(v)

    rows = [(r.name, str(r.arch), str(r.num_warps), str(r.num_stages), str(r.registers), str(r.spill_bytes),
             f"{r.shared_bytes / KIB:.1f}", f"{r.shared_limit / KIB:.0f}", opt(r.hmma), opt(r.hgmma),
             str(r.blocks_per_sm), f"{100 * r.occupancy:.1f}%", ",".join(r.limited_by)) for r in reports]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]
    notes = [f"{r.name} sm_{r.arch}: {n}" for r in reports for n in r.notes]
    return "\n".join(out + ([""] + notes if notes else []))
