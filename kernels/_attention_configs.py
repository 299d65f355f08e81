"""Launch configurations of the attention kernels (kernels/attention.py, attention_bwd.py, and
the varlen kernels that share their filters), per architecture family, pruned by named filters.
Re-exported by ``kernels/_configs.py``, the one place every kernel family's configurations are
looked up; split out because the per-family lists made that file too long to read.
"""
from __future__ import annotations

from typing import NamedTuple

import triton

from ._autotune import config_key, merged_args

# ============================================================================================
# attention (kernels/attention.py, kernels/attention_bwd.py)
# ============================================================================================
# Three autotuned kernels: the forward and dQ (a block of BLOCK_M queries against all keys) and
# dK/dV (a block of BLOCK_N keys against all queries). Autotune keys: next power of two of Nq
# and Nk, head_dim, dropout, dot precision, and the dtype (added by the autotuner). Each
# architecture family has its candidate list; the autotuner's list is their union, and the named
# prune filters keep the launching device's family's candidates that ``attention_config_fits``
# accepts at the head dim's width (the sum of its power-of-two chunks, ``attention_width``),
# dtype and dropout; ``attention_configs`` is what survives, and ``aot_specs(family=...)``
# compiles exactly that (tests/test_attention_compile.py: no spills, shared memory / LDS within
# the limit, matrix instructions; ``fastvit compile-report`` for every architecture).
#
# Families:
#   "nvidia"     sm_80, sm_86, sm_89, sm_90: warp 32, mma.sync (warpgroup MMA on sm_90 for 64+
#                row tiles), 99 KB of shared memory per block (sm_86/89).
#   "blackwell"  sm_100 (B200/GB200) and sm_120 (RTX 50xx, 99 KB per block): compiled by ptxas
#                13.x, with tighter register budgets (below). sm_100 has tcgen05 MMA, whose
#                full-rate shape has M = 128 rows per CTA with the accumulator in tensor memory;
#                Triton's own Blackwell attention and matmul tuning leads with 128-row tiles, so
#                ours does (sm_120 runs them as mma.sync), then the "nvidia" list.
#   "amd"        gfx90a, gfx942, gfx950 (AMD Instinct): wavefront 64, so a tile spreads over
#                twice the threads of a CUDA warp of the same num_warps; 64 KiB of LDS per
#                workgroup budget (gfx90a/gfx942; gfx950 has 160 KiB). Compile hints:
#                ``matrix_instr_nonkdim=16`` (16x16 MFMA: a 16-column head-dim chunk is a dot
#                dimension of 16, which the 32x32 MFMA cannot tile) and ``waves_per_eu`` (the
#                occupancy the register allocator aims for: 2 for 4-wave 128-row tiles, as AMD's
#                own FlashAttention configurations use, so each wave may hold up to 256 VGPRs).

# (BLOCK_M, BLOCK_N, num_warps, num_stages[, waves_per_eu]) before pruning, in order of
# preference; every tl.dot dimension stays >= 16, and tiles along tokens are 16..128 (the varlen
# kernels' block table has one row per size). The first ATTENTION_MAX_CONFIGS that pass the
# filter are tuned over: typically a 128-row and a 64-row tile.
_NVIDIA = {
    "fwd": [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3), (64, 32, 4, 3), (64, 32, 8, 2), (32, 32, 8, 2),
            (32, 32, 4, 2), (16, 16, 4, 2)],
    "dq": [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 2), (64, 32, 4, 3), (64, 32, 8, 2), (32, 32, 8, 2),
           (32, 32, 4, 2), (16, 16, 4, 2)],
    "dkdv": [(32, 128, 8, 3), (32, 64, 4, 3), (64, 64, 8, 2), (32, 64, 8, 2), (32, 32, 8, 2), (16, 32, 4, 2),
             (16, 16, 4, 2)],
}
_BLACKWELL = {
    "fwd": [(128, 64, 4, 3), (128, 32, 4, 3)] + _NVIDIA["fwd"],
    "dq": [(128, 64, 4, 3), (128, 32, 4, 3)] + _NVIDIA["dq"],
    # Without (32, 32, 8, 2): at head dim 80 with dropout it spilled 48-56 bytes on sm_100 and
    # sm_120 (255 registers), while (16, 32, 4, 2) did not.
    "dkdv": [(32, 128, 4, 3), (16, 128, 4, 3)] + [c for c in _NVIDIA["dkdv"] if c != (32, 32, 8, 2)],
}
_AMD = {
    # waves_per_eu 2 caps a wave at 256 VGPRs: enough for the forward's one accumulator; the
    # backward's two (dK, dV) or its resident q, dO and dQ spilled at 2 on gfx942 (64-128 x
    # 64 tiles, head dims 64-128), so dK/dV and dQ ask for 1 (up to 512 VGPRs).
    "fwd": [(128, 64, 4, 2, 2), (128, 32, 4, 2, 2), (64, 64, 4, 2, 2), (64, 32, 4, 2, 2), (64, 32, 4, 1, 1),
            (32, 32, 4, 1, 1), (16, 16, 4, 1, 1)],
    "dq": [(128, 64, 4, 2, 1), (128, 32, 4, 2, 1), (64, 64, 4, 2, 1), (64, 32, 4, 2, 1), (64, 32, 4, 1, 1),
           (32, 32, 4, 1, 1), (16, 16, 4, 1, 1)],
    "dkdv": [(32, 128, 4, 2, 1), (32, 64, 4, 2, 1), (16, 64, 4, 2, 1), (32, 32, 4, 1, 1), (16, 32, 4, 1, 1),
             (16, 16, 4, 1, 1)],
}
AMD_MATRIX_INSTR_NONKDIM = 16


class RopeBudget(NamedTuple):
    """Register budgets of ``attention_config_fits`` with RoPE (``rope=True``), in fp32 values
    per thread: the filter's ``values`` (accumulators + two score tiles) plus ``rotated``, the
    tile each iteration rotates (k: BLOCK_N x width in the forward and dQ; q: BLOCK_M x width in
    dK/dV) over the threads. Calibrated on ptxas for sm_80 and sm_90 at head dims 64, 80 and 128,
    fp16 and bf16, ROPE 1 and 2, with and without dropout, every candidate compiled (the RoPE
    rotation stages the rotated tile through shared memory and its fp32 halves and tables take
    registers in the loop; ptxas then sits at 255 registers for most tiles, and whether it spills
    is steep in the tile size):
      forward: <= 112 kept everything that did not spill (at 128: 64 x 32 on 4 warps spilled 12-336
      bytes); dQ: <= 104, with dropout <= 56 (at 80, 128 x 32 and 64 x 32 tiles spilled 16 bytes
      with dropout; at 128, 64 x 32 on 8 warps 16); dK/dV: <= 88 and score + rotated <= 24 (64 x 64
      on 8 warps spilled 420-764 bytes at 64, 32 x 64 on 4 warps 8-32), and on a head dim of
      several chunks only tiles of ``chunked_dkdv_warps`` warps (at 80 every 8-warp tile spilled,
      12 bytes to 13 KB; 16 x 32 on 4 warps did not)."""
    fwd: int = 112
    dq: int = 104
    dq_dropout: int = 56
    dkdv: int = 88
    dkdv_score: int = 24
    chunked_dkdv_warps: int = 4


class ArchFamily(NamedTuple):
    name: str
    warp_size: int
    smem_budget: int       # shared memory (LDS) per block every architecture of the family allows
    candidates: dict
    # Register budgets of attention_config_fits (fp32 values per thread), calibrated per family on
    # its compiler: see ATTENTION_MAX_TILE_VALUES and the notes at each family below.
    max_tile_values: int = 96
    max_chunked_dkdv_values: int = 72
    max_dropout_values: int = 16
    # dK/dV with dropout on a head dim of several chunks: the score tile per thread (sm_80: a
    # 32 x 64 tile on 8 warps, 8 values, spilled 8 bytes at head dim 80; 4 did not).
    max_chunked_dkdv_dropout_values: int = 4
    # With RoPE (see RopeBudget), calibrated on "nvidia". "amd" keeps nvidia's (gfx942 at head
    # dims 64 and 80: no spills); "blackwell" has provisional, much smaller ones (below).
    rope: RopeBudget = RopeBudget()


# Shared memory budget per block: sm_86/sm_89/sm_120 allow 99 KB (sm_80 163 KB, sm_90/sm_100
# 227 KB), so every kept configuration launches on any NVIDIA GPU of the family.
ATTENTION_SMEM_BUDGET = 99 * 1024
ARCH_FAMILIES = {
    "nvidia": ArchFamily("nvidia", 32, ATTENTION_SMEM_BUDGET, _NVIDIA),
    # ptxas 13.x (the wheel's ptxas-blackwell, for sm_100 and sm_120) allocates tighter than the
    # 12.x ptxas of sm_80/sm_90: on sm_120, dK/dV at head dim 80 spilled 28-72 bytes at 72 values
    # (64 x 64 tiles) and with dropout at 8-value score tiles; on sm_100 the forward spilled at 96.
    # With RoPE, ptxas 13.x spilled with nvidia's budgets (sm_120: dK/dV 32 x 64 on 8 warps
    # 104-120 bytes at 64, dQ 128 x 32 and 64 x 32 8-56 at 80; the forward's 64 x 32 on 8 warps 44
    # at 64, capped at 128 registers): these keep small tiles that compiled without spills on
    # sm_100 and sm_120 at head dims 64 and 80. Provisional: not tuned for speed.
    "blackwell": ArchFamily("blackwell", 32, ATTENTION_SMEM_BUDGET, _BLACKWELL, max_tile_values=80,
                            max_chunked_dkdv_values=56, max_dropout_values=8,
                            rope=RopeBudget(fwd=32, dq=40, dq_dropout=40, dkdv=72, dkdv_score=12)),
    # gfx942, waves_per_eu 2 (256 VGPRs): the forward with dropout spilled 60 bytes at a 16-value
    # score tile (128 x 32, head dim 128), none at 8.
    "amd": ArchFamily("amd", 64, 64 * 1024, _AMD, max_dropout_values=8),
}
ATTENTION_MAX_CONFIGS = 2
ATTENTION_KERNELS = tuple(_NVIDIA)
# fp32 values per thread the live tiles may hold (see attention_config_fits), calibrated on
# ptxas -v for sm_80 and sm_90 at head_dim 64, 80 and 128, fp16, with and without dropout: at
# <= 96 nothing spilled, at 112-128 most configurations did. With dropout, a score tile of 16
# values per thread spilled in dK/dV and 8 did not; in the forward and dQ 16 did not.
ATTENTION_MAX_TILE_VALUES = 96
ATTENTION_MAX_DROPOUT_VALUES = 16
# dK/dV with a head dim in two or three chunks holds twice the accumulators and two resident
# operands (k, v) per chunk: calibrated on ptxas for sm_80 at head dims 80-112 (64 x 64 tiles on
# 8 warps), 80 and 88 values spilled 116-136 bytes, 72 did not.
ATTENTION_MAX_CHUNKED_DKDV_VALUES = 72
# fp32 (ieee dots on CUDA cores; head_dim 16-256): at <= 80 values with operands at most 32 bytes
# spilled; at 96-112, hundreds of bytes to 40 KB.
ATTENTION_MAX_FP32_VALUES = 80


def arch_family(target: str) -> str:
    """The family of a compile target: ``"sm_100"`` -> "blackwell", ``"gfx942"`` -> "amd",
    other ``sm_<cc>`` -> "nvidia"."""
    target = str(target).lower()
    if target.startswith("gfx"):
        return "amd"
    cc = int(target.removeprefix("sm_").removesuffix("a"))
    return "blackwell" if cc >= 100 else "nvidia"


def device_family(device) -> str:
    """The family of the GPU a launch runs on. A CPU device (Triton's interpreter, where the GPU
    path is only simulated) counts as "nvidia"."""
    import torch
    device = torch.device(device)
    if device.type != "cuda":
        return "nvidia"
    if torch.version.hip is not None:
        return "amd"
    major, _ = torch.cuda.get_device_capability(device)
    return "blackwell" if major >= 10 else "nvidia"


def _attention_config(m: int, n: int, warps: int, stages: int, waves_per_eu: int | None = None) -> triton.Config:
    # AMD's hints ride in the kwargs, as on Triton's AMD backend: launch and compile read every
    # keyword that is not a kernel argument as a compile option.
    hints = {} if waves_per_eu is None else {"waves_per_eu": waves_per_eu,
                                             "matrix_instr_nonkdim": AMD_MATRIX_INSTR_NONKDIM}
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, **hints}, num_warps=warps, num_stages=stages)


def attention_width(dims: dict) -> int:
    """Head-dim columns a kernel computes on, from its head-dim constexprs: BLOCK_D plus the
    further chunks D1, D2 (absent, or 0, for a single chunk)."""
    return int(dims["BLOCK_D"]) + int(dims.get("D1") or 0) + int(dims.get("D2") or 0)


def attention_smem_estimate(kernel: str, block_m: int, block_n: int, num_stages: int, block_d: int,
                            elem: int, rope: bool = False) -> int:
    """Shared memory of the pipelined loads as Triton lays them out on sm_90 (sm_80 uses one
    stage less): the streamed pair (k, v, or q, dO for dK/dV) once per stage, plus the resident
    tiles (q; q, dO; k, v). ``block_d``: the head-dim width computed on. With RoPE the streamed
    tile's fp32 cos and sin (width / 2 each per row) are pipelined too, in num_stages - 1
    buffers, plus up to 2 KB (measured on sm_80 and sm_90 at head dims 64, 80 and 128: within
    1.5 KB of this for power-of-two head dims, well under it for chunked ones)."""
    streamed = block_n if kernel in ("fwd", "dq") else block_m
    resident_rows = {"fwd": block_m, "dq": 2 * block_m, "dkdv": 2 * block_n}[kernel]
    tables = (num_stages - 1) * streamed * block_d * 4 + 2048 if rope else 0
    return (num_stages * 2 * streamed + resident_rows) * block_d * elem + tables


def attention_config_fits(kernel: str, block_m: int, block_n: int, num_warps: int, num_stages: int,
                          block_d: int, elem: int, dropout: bool = False, *, family: str = "nvidia",
                          chunks: int | None = None, rope: bool = False) -> bool:
    """The filter behind the attention prune functions; ``block_d`` is the head-dim width
    computed on (``attention_width``), threads are num_warps x the family's warp size.

    Registers: per thread, the fp32 accumulators (BLOCK x width: o or dq; dk and dv) plus two
    score-sized tiles (s and p, or p and dp) must stay <= the family's max_tile_values
    (ATTENTION_MAX_TILE_VALUES on "nvidia"). fp32 inputs
    run ieee dots on CUDA cores with the operand tiles (q, k, v, dO) in registers too: those
    count, against ATTENTION_MAX_FP32_VALUES.
    Dropout draws Philox state (four words) per score element: the score tile per thread must
    stay <= the family's max_dropout_values (ATTENTION_MAX_DROPOUT_VALUES on "nvidia"), halved
    for dK/dV, whose keep mask is live across two dots.
    dK/dV on a head dim of several chunks (``chunks``; by default, a width that is not a power
    of two has more than one): <= the family's max_chunked_dkdv_values, and with dropout a score
    tile of at most max_chunked_dkdv_dropout_values.
    RoPE (``rope``): the family's ``RopeBudget`` on values plus the rotated tile per thread.
    Shared memory: ``attention_smem_estimate`` <= the family's budget.
    """
    fam = ARCH_FAMILIES[family]
    threads = fam.warp_size * num_warps
    accumulators = 2 * block_n * block_d if kernel == "dkdv" else block_m * block_d
    score = block_m * block_n // threads
    values = accumulators // threads + 2 * score
    if chunks is None:
        chunks = 1 if block_d & (block_d - 1) == 0 else 2
    if elem < 4:
        limit = fam.max_chunked_dkdv_values if kernel == "dkdv" and chunks > 1 else fam.max_tile_values
        if values > limit:
            return False
    else:
        operand_rows = block_m + 2 * block_n if kernel == "fwd" else 2 * (block_m + block_n)
        if values + operand_rows * block_d // threads > ATTENTION_MAX_FP32_VALUES:
            return False
    if dropout and score > fam.max_dropout_values // (2 if kernel == "dkdv" else 1):
        return False
    if dropout and kernel == "dkdv" and chunks > 1 and score > fam.max_chunked_dkdv_dropout_values:
        return False
    if rope and not _rope_fits(kernel, block_m, block_n, num_warps, values, score, threads, block_d, dropout,
                               chunks, fam.rope):
        return False
    return attention_smem_estimate(kernel, block_m, block_n, num_stages, block_d, elem, rope) <= fam.smem_budget


def _rope_fits(kernel, block_m, block_n, num_warps, values, score, threads, block_d, dropout, chunks,
               budget: RopeBudget) -> bool:
    """``attention_config_fits``'s RoPE rules (see ``RopeBudget``)."""
    rotated = (block_m if kernel == "dkdv" else block_n) * block_d // threads
    if kernel == "fwd":
        return values + rotated <= budget.fwd
    if kernel == "dq":
        return values + rotated <= (budget.dq_dropout if dropout else budget.dq)
    if chunks > 1 and num_warps > budget.chunked_dkdv_warps:
        return False
    return values + rotated <= budget.dkdv and score + rotated <= budget.dkdv_score


def attention_configs(kernel: str, block_d: int, dtype, dropout: bool = False, *,
                      family: str = "nvidia", rope: bool = False) -> list[triton.Config]:
    """The configurations the autotuner may pick for ``kernel`` on ``family`` at a head-dim width
    (``attention_width``), dtype, dropout and RoPE (never empty: the last, lightest candidate if
    the filter keeps nothing)."""
    elem = dtype.itemsize
    cands = ARCH_FAMILIES[family].candidates[kernel]
    kept = [c for c in cands if attention_config_fits(kernel, *c[:4], block_d, elem, dropout, family=family,
                                                      rope=rope)]
    kept = kept[:ATTENTION_MAX_CONFIGS] or [cands[-1]]
    return [_attention_config(*c) for c in kept]


# The autotuner's one candidate list per kernel: every family's, once.
ATTENTION_CONFIGS = {kernel: list({config_key(c): c for c in (
    _attention_config(*cand) for fam in ARCH_FAMILIES.values() for cand in fam.candidates[kernel])}.values())
    for kernel in ATTENTION_KERNELS}


def _prune_attention(kernel: str, configs, named_args, kwargs):
    args = merged_args(named_args, kwargs)
    keep = {config_key(c) for c in attention_configs(kernel, attention_width(args), args["Q"].dtype,
                                                      bool(args["DROPOUT"]), family=device_family(args["Q"].device),
                                                      rope=bool(args.get("ROPE", 0)))}
    return [c for c in configs if config_key(c) in keep]


def prune_attention_fwd_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of the forward: ``attention_configs("fwd", ...)`` for the launch."""
    return _prune_attention("fwd", configs, named_args, kwargs)


def prune_attention_dkdv_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of dK/dV: ``attention_configs("dkdv", ...)`` for the launch."""
    return _prune_attention("dkdv", configs, named_args, kwargs)


def prune_attention_dq_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of dQ: ``attention_configs("dq", ...)`` for the launch."""
    return _prune_attention("dq", configs, named_args, kwargs)
