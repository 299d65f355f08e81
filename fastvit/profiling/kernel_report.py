"""What one compiled kernel costs: ``KernelReport``, read from what Triton emits.

NVIDIA (``analyse``), with the tools shipped in the Triton wheel:
* ``ptxas -v`` on the PTX (``ptxas-blackwell`` for sm_100+, as Triton itself): registers per
  thread, spill store/load bytes, static shared memory;
* ``cuobjdump -res-usage`` / ``-sass`` on the cubin: registers as loaded, static shared memory and
  the SASS, in which matrix instructions are counted: ``HMMA`` (mma.sync, sm_80+ and sm_120),
  ``HGMMA`` (warpgroup MMA, sm_90a), ``UTC*MMA`` (tcgen05.mma, sm_100a);
* the kernel metadata: ``shared``, the dynamic shared memory Triton asks for at launch.

AMD (``analyse_amd``), from the AMDGCN assembly Triton keeps beside the hsaco (no ROCm needed):
its ``.amdgpu_metadata`` block gives ``.vgpr_count`` (architectural + AccVGPRs),
``.vgpr_spill_count``, ``.sgpr_spill_count``, ``.group_segment_fixed_size`` (static LDS) and
``.private_segment_fixed_size`` (scratch); the instructions give the ``v_mfma`` count; the
metadata's ``shared`` is the dynamic LDS Triton allocates.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from typing import Iterable

from .arch_limits import arch_name, compute_capability, limits, occupancy_details

__all__ = ["KernelReport", "analyse", "analyse_amd", "count_sass_opcodes", "parse_amdgcn", "parse_ptxas_log",
           "tool_paths"]


@dataclasses.dataclass
class KernelReport:
    """Resources of one compiled kernel configuration on one architecture."""

    name: str
    arch: str                     # as passed to the report: "sm_90", "gfx942"
    num_warps: int
    num_stages: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    spill_bytes: int
    shared_bytes: int             # static + dynamic, per block
    shared_limit: int             # opt-in maximum per block on ``arch``
    hmma: int | None              # None when cuobjdump is unavailable (or on AMD)
    hgmma: int | None
    occupancy: float
    kernel: str = ""              # the Triton function's name
    static_shared_bytes: int = 0
    dynamic_shared_bytes: int = 0
    stack_bytes: int = 0
    blocks_per_sm: int = 0
    limited_by: tuple = ()
    notes: tuple = ()
    cc: int | None = None         # compute capability x 10 (None on AMD)
    tcgen05: int | None = None    # tcgen05.mma (UTC*MMA in SASS) on sm_100; 0 elsewhere on NVIDIA
    mfma: int | None = None       # v_mfma on AMD; None on NVIDIA
    # Matrix instructions by kind, the kinds this architecture has (HMMA/HGMMA/tcgen05, or MFMA).
    matrix_instructions: dict = dataclasses.field(default_factory=dict)
    head_dim: int | None = None   # what the spec compiled (None where a kernel has no head dim)
    dtype: str | None = None      # element type of the first tensor argument ("fp16")
    config: dict = dataclasses.field(default_factory=dict)  # constexprs and compile options
    ptx: str = dataclasses.field(default="", repr=False, compare=False)
    cubin: bytes = dataclasses.field(default=b"", repr=False, compare=False)

    def sass(self) -> str:
        """The cubin disassembled by cuobjdump (not kept: it is large and cheap to redo); on AMD
        the AMDGCN listing."""
        if self.arch.startswith("gfx"):
            return self.ptx
        text = _cuobjdump(self.cubin, "-sass")
        if text is None:
            raise RuntimeError("cuobjdump is not available in the triton wheel")
        return text

    @property
    def tensor_core_instructions(self) -> int | None:
        """Every matrix instruction (HMMA + HGMMA + tcgen05, or MFMA), or None if unknown."""
        if not self.matrix_instructions or None in self.matrix_instructions.values():
            return None
        return sum(self.matrix_instructions.values())

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
    """How many SASS instructions have each opcode (modifiers such as ``.16816.F32`` ignored).
    The pseudo-opcode ``"tcgen05"`` counts Blackwell's ``UTC*MMA`` (UTCHMMA, UTCQMMA, ...)."""
    wanted = {op: 0 for op in opcodes}
    for op in _SASS_OPCODE.findall(sass):
        if op in wanted:
            wanted[op] += 1
        elif "tcgen05" in wanted and op.startswith("UTC") and op.endswith("MMA"):
            wanted["tcgen05"] += 1
    return wanted


_AMD_FIELDS = (".vgpr_count", ".agpr_count", ".sgpr_count", ".vgpr_spill_count", ".sgpr_spill_count",
               ".group_segment_fixed_size", ".private_segment_fixed_size", ".wavefront_size")
_MFMA = re.compile(r"^\s*v_mfma\w*", re.MULTILINE)


def parse_amdgcn(amdgcn: str) -> dict:
    """Resource fields of the (one) kernel in an AMDGCN listing, by metadata key without the dot
    (``vgpr_count``), plus ``mfma``: the number of ``v_mfma*`` instructions."""
    out = {}
    for key in _AMD_FIELDS:
        found = re.findall(re.escape(key) + r":\s+(\d+)", amdgcn)
        if not found and key not in (".agpr_count",):
            raise ValueError(f"no {key} in the AMDGCN metadata")
        out[key[1:]] = max(map(int, found)) if found else 0
    out["mfma"] = len(_MFMA.findall(amdgcn))
    return out


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

    # The wheel's ptxas for sm_80/sm_90, its separate ptxas-blackwell from sm_100 on (what
    # triton's get_ptxas(arch) picks; read from knobs, as get_ptxas took no arch before 3.5).
    tool = knobs.nvidia.ptxas_blackwell if arch >= 100 and hasattr(knobs.nvidia, "ptxas_blackwell") \
        else knobs.nvidia.ptxas
    ptxas = tool.path
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


def analyse(name: str, kernel: str, arch, num_warps: int, num_stages: int, ptx: str, cubin: bytes,
             dynamic_shared: int, enable_fp_fusion: bool = True, ptx_options: str | None = None) -> KernelReport:
    """Turn Triton's PTX, cubin and metadata for an NVIDIA ``arch`` into a KernelReport."""
    lim = limits(arch)
    target, arch = arch_name(arch), compute_capability(arch)
    kinds = ("HMMA", "HGMMA", "tcgen05")
    notes = []
    usage = parse_ptxas_log(_ptxas_log(ptx, arch, enable_fp_fusion, ptx_options))
    static_shared = usage["static_shared_bytes"]

    res = _cuobjdump(cubin, "-res-usage")
    sass = _cuobjdump(cubin, "-sass")
    if res is None or sass is None:
        counts = {k: None for k in kinds}
        notes.append("cuobjdump not found in the triton wheel: no SASS, tensor-core counts unknown")
    else:
        counts = count_sass_opcodes(sass, kinds)
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
        notes.append(f"needs {shared} B of shared memory, {target} allows {lim.smem_per_block} B per block")
    # The kinds each architecture has: warpgroup MMA from sm_90 (sm_90a), tcgen05 on sm_100a.
    shown = {"HMMA": counts["HMMA"]}
    if arch == 90:
        shown["HGMMA"] = counts["HGMMA"]
    if 100 <= arch < 110:
        shown["tcgen05"] = counts["tcgen05"]
    return KernelReport(
        name=name, arch=target, num_warps=num_warps, num_stages=num_stages, registers=usage["registers"],
        spill_store_bytes=usage["spill_store_bytes"], spill_load_bytes=usage["spill_load_bytes"],
        spill_bytes=usage["spill_store_bytes"] + usage["spill_load_bytes"], shared_bytes=shared,
        shared_limit=lim.smem_per_block, hmma=counts["HMMA"], hgmma=counts["HGMMA"], occupancy=occ["occupancy"],
        kernel=kernel, static_shared_bytes=static_shared, dynamic_shared_bytes=dynamic_shared,
        stack_bytes=usage["stack_bytes"], blocks_per_sm=occ["blocks_per_sm"], limited_by=tuple(occ["limited_by"]),
        notes=tuple(notes), cc=arch, tcgen05=counts["tcgen05"], matrix_instructions=shown, ptx=ptx, cubin=cubin,
    )


def analyse_amd(name: str, kernel: str, arch, num_warps: int, num_stages: int, amdgcn: str, hsaco: bytes,
                dynamic_lds: int) -> KernelReport:
    """Turn Triton's AMDGCN, hsaco and metadata for an AMD ``arch`` into a KernelReport.

    Fields in NVIDIA terms: ``registers`` are the wave's VGPRs (architectural + AccVGPRs, as the
    register file is unified on CDNA 2+), ``num_warps`` its wavefronts, ``shared_*`` the LDS.
    ``spill_store_bytes`` is 4 bytes per lane for each spilled VGPR or SGPR (``spill_load_bytes``
    0: the metadata counts spilled registers, not traffic); ``stack_bytes`` the scratch per lane.
    """
    lim = limits(arch)
    target = arch_name(arch)
    usage = parse_amdgcn(amdgcn)
    notes = []
    if usage["wavefront_size"] != lim.warp_size:
        notes.append(f"compiled for wavefront {usage['wavefront_size']}, {target} runs {lim.warp_size}")
    spilled = 4 * (usage["vgpr_spill_count"] + usage["sgpr_spill_count"])
    static_lds = usage["group_segment_fixed_size"]
    shared = static_lds + dynamic_lds
    occ = occupancy_details(usage["vgpr_count"], shared, num_warps, target)
    if shared > lim.smem_per_block:
        notes.append(f"needs {shared} B of LDS, {target} allows {lim.smem_per_block} B per workgroup")
    return KernelReport(
        name=name, arch=target, num_warps=num_warps, num_stages=num_stages, registers=usage["vgpr_count"],
        spill_store_bytes=spilled, spill_load_bytes=0, spill_bytes=spilled, shared_bytes=shared,
        shared_limit=lim.smem_per_block, hmma=None, hgmma=None, occupancy=occ["occupancy"], kernel=kernel,
        static_shared_bytes=static_lds, dynamic_shared_bytes=dynamic_lds,
        stack_bytes=usage["private_segment_fixed_size"], blocks_per_sm=occ["blocks_per_sm"],
        limited_by=tuple(occ["limited_by"]), notes=tuple(notes), cc=None, tcgen05=None, mfma=usage["mfma"],
        matrix_instructions={"MFMA": usage["mfma"]}, ptx=amdgcn, cubin=hsaco,
    )
