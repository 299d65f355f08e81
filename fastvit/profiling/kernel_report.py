"""What one compiled kernel costs: ``KernelReport``, read from Triton's PTX, cubin and metadata
with the NVIDIA tools shipped in the Triton wheel.

* ``ptxas -v`` on the PTX: registers per thread, spill store/load bytes, static shared memory;
* ``cuobjdump -res-usage`` / ``-sass`` on the cubin: registers as loaded, static shared memory and
  the SASS, in which tensor-core instructions are counted (``HMMA`` on sm_80+, ``HGMMA``, the
  warpgroup MMA, on sm_90a);
* the kernel metadata: ``shared``, the dynamic shared memory Triton asks for at launch.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from typing import Iterable

from .arch_limits import limits, occupancy_details

__all__ = ["KernelReport", "analyse", "count_sass_opcodes", "parse_ptxas_log", "tool_paths"]


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
    from triton import knobs
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    # The wheel's ptxas for sm_80/sm_90 (knobs.nvidia.ptxas in every triton with knobs;
    # get_ptxas() gained an arch argument only later, for Blackwell's separate ptxas).
    ptxas = knobs.nvidia.ptxas.path
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


def analyse(name: str, kernel: str, arch: int, num_warps: int, num_stages: int, ptx: str, cubin: bytes,
             dynamic_shared: int, enable_fp_fusion: bool = True, ptx_options: str | None = None) -> KernelReport:
    """Turn Triton's PTX, cubin and metadata into a KernelReport."""
    lim = limits(arch)
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
