"""Per-architecture resource limits of NVIDIA and AMD Instinct GPUs and the theoretical
occupancy they allow.

Architectures are named as the compile report's ``--arch`` takes them: ``"sm_80"`` (compute
capability x 10; the int 80 is accepted too) or an AMD LLVM target, ``"gfx942"``.
Used by the ahead-of-time compile report (``fastvit.profiling.compile_report``) and the CLI.
"""
from __future__ import annotations

import dataclasses

__all__ = ["ARCH_LIMITS", "ArchLimits", "KIB", "arch_name", "is_amd", "limits", "occupancy", "occupancy_details"]


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

    arch: str
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
_NVIDIA = {
    80: ArchLimits("sm_80", max_warps_per_sm=64, max_blocks_per_sm=32, smem_per_sm=164 * KIB, smem_per_block=163 * KIB),
    86: ArchLimits("sm_86", max_warps_per_sm=48, max_blocks_per_sm=16, smem_per_sm=100 * KIB, smem_per_block=99 * KIB),
    89: ArchLimits("sm_89", max_warps_per_sm=48, max_blocks_per_sm=24, smem_per_sm=100 * KIB, smem_per_block=99 * KIB),
    90: ArchLimits("sm_90", max_warps_per_sm=64, max_blocks_per_sm=32, smem_per_sm=228 * KIB, smem_per_block=227 * KIB),
    # Blackwell, same guide and table: 10.0 (B200/GB200) keeps Hopper's SM limits (64 warps,
    # 32 blocks, 228 KB of shared memory per SM, 227 KB per block, 64K registers); 12.0
    # (GeForce RTX 50 / RTX PRO Blackwell) has 48 warps, 32 blocks, 128 KB per SM and 99 KB per
    # block, like the consumer Ampere and Ada parts.
    100: ArchLimits("sm_100", max_warps_per_sm=64, max_blocks_per_sm=32, smem_per_sm=228 * KIB,
                    smem_per_block=227 * KIB),
    120: ArchLimits("sm_120", max_warps_per_sm=48, max_blocks_per_sm=32, smem_per_sm=128 * KIB,
                    smem_per_block=99 * KIB),
}

# ----------------------------------------------------------------------------------------------
# AMD Instinct (CDNA 2/3/4), per compute unit (CU) and in the same fields: a "warp" is a
# wavefront of 64 lanes, a block a workgroup, shared memory the LDS.
#
# Sources: ROCm documentation, "AMD GPU specifications" (reference/gpu-specs): wavefront size 64,
# LDS per CU 64 KiB (MI210/MI250X gfx90a, MI300X/MI325X gfx942) and 160 KiB (MI350X/MI355X
# gfx950), VGPR file 512 KiB per CU = 4 SIMDs x 512 registers x 64 lanes x 4 bytes; the CDNA3
# and CDNA4 ISA references ("AMD Instinct MI300 / CDNA4 Instruction Set Architecture", section on
# VGPRs and AccVGPRs): the unified register file gives one wave up to 512 registers (256
# architectural VGPRs + 256 AccVGPRs), allocated in granules of 8, at most 8 waves per SIMD;
# a workgroup holds at most 1024 work-items (16 wavefronts) and all its LDS (a workgroup may
# allocate the CU's whole LDS, 64 KiB, or 160 KiB on gfx950).
# ----------------------------------------------------------------------------------------------
_AMD = {
    name: ArchLimits(name, max_warps_per_sm=32, max_blocks_per_sm=32, smem_per_sm=lds, smem_per_block=lds,
                     regs_per_sm=4 * 512 * 64, max_regs_per_thread=512, reg_alloc_unit=8, sub_partitions=4,
                     smem_alloc_unit=128, smem_reserved_per_block=0, warp_size=64)
    for name, lds in (("gfx90a", 64 * KIB), ("gfx942", 64 * KIB), ("gfx950", 160 * KIB))
}
AMD_MAX_WAVES_PER_SIMD = 8

ARCH_LIMITS = {lim.arch: lim for lim in (*_NVIDIA.values(), *_AMD.values())}


def arch_name(arch) -> str:
    """The canonical name of an architecture: ``80``, ``"80"``, ``"sm80"``, ``"sm_90a"`` ->
    ``"sm_80"`` / ``"sm_90"``; an AMD target (``"gfx942"``) as it is. Raises for unknown ones."""
    text = str(arch).strip().lower()
    if text.startswith("gfx"):
        name = text.split(":")[0]  # torch's gcnArchName carries feature flags: gfx942:sramecc+:xnack-
    else:
        digits = text.removeprefix("sm_").removeprefix("sm").removesuffix("a")
        name = f"sm_{digits}" if digits.isdigit() else text
    if name not in ARCH_LIMITS:
        raise ValueError(f"arch must be one of {', '.join(ARCH_LIMITS)} (or the compute capability x 10 as an "
                         f"int), got {arch!r}")
    return name


def is_amd(arch) -> bool:
    return arch_name(arch).startswith("gfx")


def compute_capability(arch) -> int | None:
    """80 for "sm_80"; None for an AMD target."""
    name = arch_name(arch)
    return None if name.startswith("gfx") else int(name.removeprefix("sm_"))


def limits(arch) -> ArchLimits:
    return ARCH_LIMITS[arch_name(arch)]


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy_details(registers: int, shared_bytes: int, num_warps: int, arch) -> dict:
    """Resident blocks per SM allowed by each resource, and the resulting occupancy.

    ``registers`` per thread, ``shared_bytes`` per block (static + dynamic, without the 1 KB the
    system reserves, which is added here), ``num_warps`` per block. Occupancy is active warps per
    SM over the architecture's maximum, as in the CUDA Occupancy Calculator. On AMD: registers are
    the wave's VGPRs (architectural + AccVGPRs), shared memory the workgroup's LDS, warps its
    wavefronts, and the answer is per CU (``_amd_occupancy``).
    """
    lim = limits(arch)
    if lim.warp_size == 64:
        return _amd_occupancy(lim, registers, shared_bytes, num_warps)
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


def _amd_occupancy(lim: ArchLimits, vgprs: int, lds_bytes: int, num_waves: int) -> dict:
    """Workgroups per CU: the waves of a workgroup are spread over the CU's four SIMDs; each SIMD
    holds min(8, 512 // VGPRs rounded up to 8) waves; the workgroups share the CU's LDS."""
    if num_waves <= 0 or vgprs < 0 or lds_bytes < 0:
        raise ValueError("num_warps must be positive and registers, shared_bytes non-negative, got "
                         f"num_warps={num_waves}, registers={vgprs}, shared_bytes={lds_bytes}")
    blocks = {"warps": lim.max_warps_per_sm // num_waves, "blocks": lim.max_blocks_per_sm}
    per_simd_regs = lim.regs_per_sm // lim.sub_partitions // lim.warp_size  # 512
    if vgprs > lim.max_regs_per_thread:
        blocks["registers"] = 0
    else:
        waves_per_simd = min(AMD_MAX_WAVES_PER_SIMD, per_simd_regs // max(lim.reg_alloc_unit,
                                                                           _round_up(vgprs, lim.reg_alloc_unit)))
        blocks["registers"] = waves_per_simd * lim.sub_partitions // num_waves
    if lds_bytes > lim.smem_per_block:
        blocks["shared_memory"] = 0
    elif lds_bytes:
        blocks["shared_memory"] = lim.smem_per_sm // _round_up(lds_bytes, lim.smem_alloc_unit)
    if num_waves * lim.warp_size > lim.max_threads_per_block:
        blocks["threads"] = 0
    active = min(blocks.values())
    return {
        "blocks_per_sm": active,
        "active_warps": active * num_waves,
        "max_warps": lim.max_warps_per_sm,
        "occupancy": active * num_waves / lim.max_warps_per_sm,
        "limited_by": sorted(k for k, v in blocks.items() if v == active),
        "block_limits": blocks,
    }


def occupancy(registers: int, shared_bytes: int, num_warps: int, arch) -> float:
    """Theoretical occupancy in [0, 1]: active warps per SM / maximum warps per SM."""
    return occupancy_details(registers, shared_bytes, num_warps, arch)["occupancy"]
