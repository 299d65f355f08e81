"""Launch configurations of every kernel family, one section each, pruned by named filters.

On a GPU the autotuned kernels (``kernels/_autotune.py: TunedKernel``) run ``triton.autotune``
over a candidate list below, pruned by a named ``prune_*`` function, with bucketed keys. Kernels
that are not autotuned (memory-bound passes, and every pass whose summation order fixes the bits
of a gradient) take one fixed configuration each. Under the interpreter, which cannot benchmark,
every kernel takes the configuration of the last section ("Under the interpreter"): the one
place where the interpreter's choices are made.
"""
from __future__ import annotations

from typing import NamedTuple

import triton

from ._autotune import merged_args

# ============================================================================================
# layer_norm (kernels/layer_norm.py, kernels/layer_norm_bwd.py)
# ============================================================================================
# One row is held whole in registers, padded to BLOCK_N = next power of two of the width (at
# least 64). Narrow rows are packed BLOCK_M per program up to a tile of 4096-8192 elements
# (forward) or 2048 (backward, which keeps more arrays live), and warps are chosen so each
# thread holds 16 (forward) or 8 (backward) elements of each array: enough bytes in flight per
# SM for a memory-bound kernel, few enough registers that nothing spills (the full aot_specs()
# list compiles with zero spill bytes for sm_80 and sm_90; the test compiles a subset).

LAYER_NORM_MIN_BLOCK_N = 64
LAYER_NORM_MAX_WIDTH = 16384


def layer_norm_block_n(n_cols: int) -> int:
    """The BLOCK_N bucket of a width: also the autotune key, so widths share compiled kernels."""
    return max(LAYER_NORM_MIN_BLOCK_N, triton.next_power_of_2(n_cols))


def layer_norm_block_ns() -> list[int]:
    """Every BLOCK_N bucket, narrowest first."""
    out, block_n = [], layer_norm_block_n(1)
    while block_n <= layer_norm_block_n(LAYER_NORM_MAX_WIDTH):
        out.append(block_n)
        block_n *= 2
    return out


def layer_norm_fwd_configs_for(block_n: int) -> list[tuple[int, int]]:
    """(BLOCK_M, num_warps) the forward autotuner may pick for a BLOCK_N bucket: a 4096- and an
    8192-element tile at 16 elements per thread; 8192-wide rows one per program at 16 or 32
    elements per thread; 16384-wide rows at 16 (32 warps, the most a block can have: at 16
    warps ptxas spills the fp16 kernel on sm_90)."""
    if block_n >= 16384:
        return [(1, 32)]
    if block_n >= 8192:
        return [(1, block_n // (32 * 16)), (1, block_n // (32 * 32))]
    return [(tile // block_n, tile // (32 * 16)) for tile in (max(block_n, 4096), 8192)]


def layer_norm_fwd_autotune_configs() -> list[triton.Config]:
    """Every forward config of every bucket; ``prune_layer_norm_fwd_configs`` keeps a bucket's."""
    seen, configs = set(), []
    for block_n in layer_norm_block_ns():
        for block_m, warps in layer_norm_fwd_configs_for(block_n):
            if (block_m, warps) not in seen:
                seen.add((block_m, warps))
                configs.append(triton.Config({"BLOCK_M": block_m}, num_warps=warps, num_stages=1))
    return configs


def prune_layer_norm_fwd_configs(configs, named_args, **kwargs):
    """Keep the configs of this BLOCK_N bucket, and no BLOCK_M beyond the number of rows (in
    bucketed form) unless nothing else is left."""
    args = merged_args(named_args, kwargs)
    allowed = set(layer_norm_fwd_configs_for(args["BLOCK_N"]))
    mine = [c for c in configs if (c.kwargs["BLOCK_M"], c.num_warps) in allowed]
    fitting = [c for c in mine if c.kwargs["BLOCK_M"] <= args["rows_bucket"]]
    if fitting:
        return fitting
    smallest = min(c.kwargs["BLOCK_M"] for c in mine)
    return [c for c in mine if c.kwargs["BLOCK_M"] == smallest]


class LayerNormBwdConfig(NamedTuple):
    wide: bool             # _layer_norm_bwd_wide (rows walked in chunks) instead of _layer_norm_bwd
    block_m: int           # rows per tile (1 for the wide kernel)
    block_n: int           # the padded row (or, wide, the chunk) width
    num_warps: int
    programs_per_sm: int   # backward programs per SM, each one partial row of dweight/dbias


# Rows wider than this go to the chunked backward: a whole row of dy and xhat plus two
# full-width fp32 accumulators spill at 8192 columns (sm_80, width not a multiple of 16) and
# cannot fit at 16384 at all.
LAYER_NORM_BWD_MAX_REGISTER_WIDTH = 4096


def layer_norm_bwd_config(block_n: int) -> LayerNormBwdConfig:
    """The backward's configuration for a BLOCK_N bucket: fixed, never autotuned, so the order
    of the dweight/dbias sums (their bits) does not depend on a timing measurement.

    8 elements per thread per tile keeps the kernel at 64-80 registers (sm_80 and sm_90, fp32,
    see the AOT report), so three 8-warp programs fit an SM's register file together
    (65536 / (3 * 256) = 85), or two 16-warp ones; the grid is exactly that many programs per
    SM, one wave, each looping over its share of rows.
    """
    if block_n > LAYER_NORM_BWD_MAX_REGISTER_WIDTH:
        return LayerNormBwdConfig(True, 1, 2048, 8, 3)
    tile = max(block_n, 2048)
    warps = tile // 256
    return LayerNormBwdConfig(False, tile // block_n, block_n, warps, {8: 3, 16: 2}[warps])


def layer_norm_dwdb_config(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, num_warps) of the dweight/dbias reduction over partial rows: narrow
    column blocks, so even a 192-wide weight is summed by a few programs."""
    block_n = min(64, layer_norm_block_n(n_cols))
    return 32, block_n, 4


# ============================================================================================
# attention (kernels/attention.py, kernels/attention_bwd.py): per architecture family, in
# kernels/_attention_configs.py (candidates, the filter, the named prune functions).
# ============================================================================================
from ._attention_configs import (  # noqa: E402,F401  (re-exported: the one lookup place)
    AMD_MATRIX_INSTR_NONKDIM,
    ARCH_FAMILIES,
    ATTENTION_CONFIGS,
    ATTENTION_KERNELS,
    ATTENTION_MAX_CHUNKED_DKDV_VALUES,
    ATTENTION_MAX_CONFIGS,
    ATTENTION_MAX_DROPOUT_VALUES,
    ATTENTION_MAX_FP32_VALUES,
    ATTENTION_MAX_TILE_VALUES,
    ATTENTION_SMEM_BUDGET,
    ArchFamily,
    arch_family,
    attention_config_fits,
    attention_configs,
    attention_smem_estimate,
    attention_width,
    device_family,
    prune_attention_dkdv_configs,
    prune_attention_dq_configs,
    prune_attention_fwd_configs,
)


# ============================================================================================
# GEMMs (kernels/linear_gelu.py, linear_gelu_bwd.py, linear_glu.py, linear_glu_bwd.py,
# gelu_linear_bwd.py): in kernels/_gemm_configs.py (tables, the filter, the named prune functions).
# ============================================================================================
from ._gemm_configs import (  # noqa: E402,F401  (re-exported: the one lookup place)
    GELU_LINEAR_DPRE_PARTIAL_ROWS,
    GELU_LINEAR_DW_CONFIGS,
    gelu_linear_dw_gemm_configs,
    GELU_LINEAR_DW_TABLES,
    GemmTables,
    LINEAR_GELU_BIAS_REDUCE,
    linear_gelu_bwd_config,
    LINEAR_GELU_CONFIGS,
    linear_gelu_epilogue_config,
    linear_gelu_fitting_configs,
    linear_gelu_gemm_configs,
    linear_gelu_smem_bytes,
    LINEAR_GELU_TABLES,
    LINEAR_GLU_CONFIGS,
    linear_glu_gemm_configs,
    linear_glu_smem_bytes,
    LINEAR_GLU_TABLES,
    prune_gelu_linear_dpre_configs,
    prune_gelu_linear_dw_configs,
    prune_linear_gelu_configs,
    prune_linear_glu_configs,
    shared_memory_limit,
)


# ============================================================================================
# Under the interpreter
# ============================================================================================
# Programs run one after another in numpy and every block operation has a fixed cost (each
# nested @triton.jit call re-patches triton.language): a few programs with large tiles are
# fastest. The test shapes still end in partial blocks with these; every GPU configuration above
# is also run once in the interpreter by the tests (tests/test_*_configs.py).

# 128 x 128 tiles run the attention test shapes 2-3x faster than 64 x 64 and still leave
# multi-block masked tails at N = 197, 257, 577.
ATTENTION_INTERPRET = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=4, num_stages=1)

LAYER_NORM_INTERPRET_PROGRAMS = 4
LAYER_NORM_INTERPRET_TILE = 65536

# GROUP_M 3 (not a power of two) so the usual test shapes (M ~ 200: 4 row blocks) end in a
# partial group; the split epilogue is the one the big GPU tiles use.
LINEAR_GELU_INTERPRET = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 3, "EPILOGUE_SPLIT": 2},
                                      num_warps=4, num_stages=1)


def attention_interpret_config(args: dict) -> triton.Config:
    """Forward, dK/dV and dQ alike."""
    return ATTENTION_INTERPRET


def layer_norm_interpret_fwd_config(args: dict) -> triton.Config:
    """A tile of LAYER_NORM_INTERPRET_TILE elements, no more rows than the input has."""
    block_m = max(1, LAYER_NORM_INTERPRET_TILE // args["BLOCK_N"])
    return triton.Config({"BLOCK_M": min(block_m, args["rows_bucket"])}, num_warps=4, num_stages=1)


def layer_norm_interpret_bwd_config(block_n: int) -> LayerNormBwdConfig:
    """The GPU's kernel choice (register or chunked by width), with larger tiles and programs."""
    if block_n > LAYER_NORM_BWD_MAX_REGISTER_WIDTH:
        return LayerNormBwdConfig(True, 1, 8192, 4, 1)
    return LayerNormBwdConfig(False, max(1, LAYER_NORM_INTERPRET_TILE // block_n), block_n, 4, 1)


def layer_norm_interpret_dwdb_config(n_cols: int) -> tuple[int, int, int]:
    """One block of partial rows (there are at most LAYER_NORM_INTERPRET_PROGRAMS), wide column
    blocks, few programs."""
    return LAYER_NORM_INTERPRET_PROGRAMS, min(4096, layer_norm_block_n(n_cols)), 4


def linear_gelu_interpret_config(args: dict) -> triton.Config:
    return LINEAR_GELU_INTERPRET


# GROUP_M 3 as above; 64 x 64 tiles so the usual hidden widths end in a partial column block.
LINEAR_GLU_INTERPRET = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 3},
                                     num_warps=4, num_stages=1)


def linear_glu_interpret_config(args: dict) -> triton.Config:
    return LINEAR_GLU_INTERPRET


LINEAR_GELU_INTERPRET_EPILOGUE = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4}
LINEAR_GELU_INTERPRET_BWD = {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4, "TARGET_PROGRAMS": 8}


# The MLP backward's GEMMs: 64 x 64 x 64 tiles, GROUP_M 3, as linear_gelu's (dpre takes that very
# configuration). BLOCK_M = GELU_LINEAR_DPRE_PARTIAL_ROWS: one bias-gradient band per program; the
# GPU's 128-row tiles (two bands) run in the configuration tests.
GELU_LINEAR_DW_INTERPRET = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 3},
                                         num_warps=4, num_stages=1)


def gelu_linear_dw_interpret_config(args: dict) -> triton.Config:
    return GELU_LINEAR_DW_INTERPRET


def gelu_linear_dpre_interpret_config(args: dict) -> triton.Config:
    return LINEAR_GELU_INTERPRET
