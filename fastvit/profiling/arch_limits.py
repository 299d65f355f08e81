"""Per-architecture resource limits of NVIDIA GPUs and the theoretical occupancy they allow.

Used by the ahead-of-time compile report (``fastvit.profiling.compile_report``) and the CLI.
"""
from __future__ import annotations

import dataclasses

__all__ = ["ARCH_LIMITS", "ArchLimits", "KIB", "limits", "occupancy", "occupancy_details"]


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


def limits(arch: int) -> ArchLimits:
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
    lim = limits(arch)
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
