"""Launch configurations of every kernel family, one section each, pruned by a named filter.

Autotuning (GPU only) runs over short lists with bucketed keys; under the interpreter each
family uses one fixed configuration (the interpreter cannot benchmark).
"""
from __future__ import annotations

from typing import NamedTuple

import triton

# ============================================================================================
# layer_norm (kernels/layer_norm.py)
# ============================================================================================
# One row is held whole in registers, padded to BLOCK_N = next power of two of the width (at
# least 64). Narrow rows are packed BLOCK_M per program up to a tile of 4096-8192 elements
# (forward) or 2048 (backward, which keeps more arrays live), and warps are chosen so each
# thread holds 16 (forward) or 8 (backward) elements of each array: enough bytes in flight per
# SM for a memory-bound kernel, few enough registers that nothing spills (the full aot_specs()
# list compiles with zero spill bytes for sm_80 and sm_90; the test compiles a subset).

LAYER_NORM_MIN_BLOCK_N = 64
LAYER_NORM_MAX_WIDTH = 16384
# Under the interpreter programs run one after another and every operation has a fixed cost:
# a few programs with large tiles are fastest. Tests run these shapes; the GPU configurations
# run the same code with other constexprs (a test runs each of them once, too).
LAYER_NORM_INTERPRET_PROGRAMS = 4
LAYER_NORM_INTERPRET_TILE = 65536


def layer_norm_block_n(n_cols: int) -> int:
    """The BLOCK_N bucket of a width: also the autotune key, so widths share compiled kernels."""
    return max(LAYER_NORM_MIN_BLOCK_N, triton.next_power_of_2(n_cols))


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
    block_n = LAYER_NORM_MIN_BLOCK_N
    while block_n <= layer_norm_block_n(LAYER_NORM_MAX_WIDTH):
        for block_m, warps in layer_norm_fwd_configs_for(block_n):
            if (block_m, warps) not in seen:
                seen.add((block_m, warps))
                configs.append(triton.Config({"BLOCK_M": block_m}, num_warps=warps, num_stages=1))
        block_n *= 2
    return configs


def prune_layer_norm_fwd_configs(configs, named_args, **kwargs):
    """Keep the configs of this BLOCK_N bucket, and no BLOCK_M beyond the number of rows (in
    bucketed form) unless nothing else is left."""
    block_n = kwargs.get("BLOCK_N", named_args.get("BLOCK_N"))
    rows_bucket = named_args["rows_bucket"]
    allowed = set(layer_norm_fwd_configs_for(block_n))
    mine = [c for c in configs if (c.kwargs["BLOCK_M"], c.num_warps) in allowed]
    fitting = [c for c in mine if c.kwargs["BLOCK_M"] <= rows_bucket]
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


def layer_norm_interpret_fwd_config(block_n: int, n_rows: int) -> tuple[int, int]:
    """(BLOCK_M, num_warps) of the forward under the interpreter (no autotuning there)."""
    block_m = max(1, LAYER_NORM_INTERPRET_TILE // block_n)
    return min(block_m, triton.next_power_of_2(max(n_rows, 1))), 4


def layer_norm_interpret_bwd_config(block_n: int) -> LayerNormBwdConfig:
    """The backward's configuration under the interpreter: the GPU's kernel choice (register
    or chunked by width), with larger tiles."""
    if block_n > LAYER_NORM_BWD_MAX_REGISTER_WIDTH:
        return LayerNormBwdConfig(True, 1, 8192, 4, 1)
    return LayerNormBwdConfig(False, max(1, LAYER_NORM_INTERPRET_TILE // block_n), block_n, 4, 1)


def layer_norm_dwdb_config(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, num_warps) of the dweight/dbias reduction over partial rows: narrow
    column blocks, so even a 192-wide weight is summed by a few programs."""
    block_n = min(64, layer_norm_block_n(n_cols))
    return 32, block_n, 4


def layer_norm_interpret_dwdb_config(n_cols: int) -> tuple[int, int, int]:
    """The reduction under the interpreter: one block of partial rows (there are at most
    LAYER_NORM_INTERPRET_PROGRAMS), wide column blocks, few programs."""
    return LAYER_NORM_INTERPRET_PROGRAMS, min(4096, layer_norm_block_n(n_cols)), 4


# ============================================================================================
# attention (kernels/attention.py)
# ============================================================================================
# Three autotuned kernels: the forward and dQ (a block of BLOCK_M queries against all keys) and
# dK/dV (a block of BLOCK_N keys against all queries). Autotune keys: next power of two of Nq
# and Nk, head_dim, dropout, dot precision, and the dtype (added by the autotuner). The one
# candidate list per kernel is pruned per (padded head dim, dtype, dropout) by
# ``attention_config_fits``;
# ``attention_configs`` is what survives, and ``kernels/attention.py: aot_specs`` compiles
# exactly that for sm_80 and sm_90 (tests/test_attention_compile.py: no spills, shared memory
# within the limit, tensor-core instructions).

# Under the interpreter the cost is per block iteration (each nested @triton.jit call re-patches
# triton.language), not per element: 128 x 128 tiles run the test shapes 2-3x faster than 64 x 64
# and still leave multi-block masked tails at N = 197, 257, 577.
ATTENTION_INTERPRET_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 4, "num_stages": 1}

# (BLOCK_M, BLOCK_N, num_warps, num_stages) before pruning, in order of preference; every tl.dot
# dimension stays >= 16. The first ATTENTION_MAX_CONFIGS that pass the filter are tuned over:
# typically a 128-row and a 64-row tile (few long sequences vs. many short ones).
_ATTENTION_CANDIDATES = {
    "fwd": [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3), (64, 32, 4, 3), (64, 32, 8, 2), (32, 32, 8, 2),
            (32, 32, 4, 2), (16, 16, 4, 2)],
    "dq": [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 2), (64, 32, 4, 3), (64, 32, 8, 2), (32, 32, 8, 2),
           (32, 32, 4, 2), (16, 16, 4, 2)],
    "dkdv": [(32, 128, 8, 3), (32, 64, 4, 3), (64, 64, 8, 2), (32, 64, 8, 2), (32, 32, 8, 2), (16, 32, 4, 2),
             (16, 16, 4, 2)],
}
ATTENTION_MAX_CONFIGS = 2

# Shared memory budget per block: sm_86/sm_89 allow 99 KB (sm_80 163 KB, sm_90 227 KB), so every
# kept configuration launches on any compute capability >= 8.0.
ATTENTION_SMEM_BUDGET = 99 * 1024
# fp32 values per thread the live tiles may hold (see attention_config_fits), calibrated on
# ptxas -v for sm_80 and sm_90 at head_dim 64, 80 and 128, fp16, with and without dropout: at
# <= 96 nothing spilled, at 112-128 most configurations did. With dropout, a score tile of 16
# values per thread spilled in dK/dV and 8 did not; in the forward and dQ 16 did not.
ATTENTION_MAX_TILE_VALUES = 96
ATTENTION_MAX_DROPOUT_VALUES = 16
# fp32 (ieee dots on CUDA cores; head_dim 16-256): at <= 80 values with operands at most 32 bytes
# spilled; at 96-112, hundreds of bytes to 40 KB.
ATTENTION_MAX_FP32_VALUES = 80


def attention_smem_estimate(kernel: str, block_m: int, block_n: int, num_stages: int, block_d: int,
                            elem: int) -> int:
    """Shared memory of the pipelined loads as Triton lays them out on sm_90 (sm_80 uses one
    stage less): the streamed pair (k, v, or q, dO for dK/dV) once per stage, plus the resident
    tiles (q; q, dO; k, v)."""
    streamed = block_n if kernel in ("fwd", "dq") else block_m
    resident_rows = {"fwd": block_m, "dq": 2 * block_m, "dkdv": 2 * block_n}[kernel]
    return (num_stages * 2 * streamed + resident_rows) * block_d * elem


def attention_config_fits(kernel: str, block_m: int, block_n: int, num_warps: int, num_stages: int,
                          block_d: int, elem: int, dropout: bool = False) -> bool:
    """The named prune filter of the attention configurations.

    Registers: per thread, the fp32 accumulators (BLOCK x BLOCK_D: o or dq; dk and dv) plus two
    score-sized tiles (s and p, or p and dp) must stay <= ATTENTION_MAX_TILE_VALUES. fp32 inputs
    run ieee dots on CUDA cores with the operand tiles (q, k, v, dO) in registers too: those
    count, against ATTENTION_MAX_FP32_VALUES.
    Dropout draws Philox state (four words) per score element: the score tile per thread must
    stay <= ATTENTION_MAX_DROPOUT_VALUES, halved for dK/dV, whose keep mask is live across two dots.
    Shared memory: ``attention_smem_estimate`` <= ATTENTION_SMEM_BUDGET.
    """
    threads = 32 * num_warps
    accumulators = 2 * block_n * block_d if kernel == "dkdv" else block_m * block_d
    score = block_m * block_n // threads
    values = accumulators // threads + 2 * score
    if elem < 4:
        if values > ATTENTION_MAX_TILE_VALUES:
            return False
    else:
        operand_rows = block_m + 2 * block_n if kernel == "fwd" else 2 * (block_m + block_n)
        if values + operand_rows * block_d // threads > ATTENTION_MAX_FP32_VALUES:
            return False
    if dropout and score > ATTENTION_MAX_DROPOUT_VALUES // (2 if kernel == "dkdv" else 1):
        return False
    return attention_smem_estimate(kernel, block_m, block_n, num_stages, block_d, elem) <= ATTENTION_SMEM_BUDGET


def attention_configs(kernel: str, block_d: int, dtype, dropout: bool = False) -> list[triton.Config]:
    """The configurations the autotuner may pick for ``kernel`` at a padded head dim, dtype and
    dropout (never empty: the last, lightest candidate if the filter keeps nothing)."""
    elem = dtype.itemsize
    kept = [c for c in _ATTENTION_CANDIDATES[kernel] if attention_config_fits(kernel, *c, block_d, elem, dropout)]
    kept = kept[:ATTENTION_MAX_CONFIGS] or [_ATTENTION_CANDIDATES[kernel][-1]]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in kept]


ATTENTION_CONFIGS = {
    kernel: [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in cands]
    for kernel, cands in _ATTENTION_CANDIDATES.items()
}


def prune_attention_configs(kernel: str, configs, named_args, **kwargs):
    """``early_config_prune`` of the attention autotuners (bound to a kernel with functools.partial)."""
    args = {**named_args, **kwargs}
    keep = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
            for c in attention_configs(kernel, args["BLOCK_D"], args["Q"].dtype, bool(args["DROPOUT"]))}
    return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in keep]


# ============================================================================================
# linear_gelu (kernels/linear_gelu.py)
# ============================================================================================
# The GEMM (GELU(x @ W^T + b) in its epilogue) is timed on a GPU against cuBLAS + the
# elementwise epilogue kernel, per bucketed (M, N, K), dtype and dot precision; the faster wins
# (kernels/linear_gelu.py: _choose_gpu). Candidates below, pruned by
# ``prune_linear_gelu_configs``. All fit sm_80's 163 KB of shared memory (sm_90 has 227 KB), so
# ``aot_specs`` compiles every one of them for both; GPUs with less (sm_86/89: 99 KB) prune the
# big ones at run time. Elementwise kernels (epilogue, GELU backward, bias-gradient reduction)
# use one fixed configuration each: memory-bound, and the backward's must not depend on a
# timing (its partial sums fix the bits of the bias gradient).

# The interpreter runs each program's block ops in numpy: moderate tiles, few programs. GROUP_M
# 3 (not a power of two) so the usual test shapes (M ~ 200: 4 row blocks) end in a partial group;
# the split epilogue is the one the big GPU tiles use.
LINEAR_GELU_INTERPRET = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 3, "EPILOGUE_SPLIT": 2,
                         "num_warps": 4, "num_stages": 1}

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). At most 64 accumulator values
# per thread: with 128 (e.g. 128 x 256 on 8 warps) the GELU epilogue spills registers even when
# split in two. EPILOGUE_SPLIT 2 (the epilogue on one half of the columns at a time) everywhere:
# on sm_90 it mostly lowers register use (fp16 128 x 128 x 64: 150 -> 128, two blocks per SM).
_LINEAR_GELU_MMA_16BIT = [  # fp16 / bf16 operands on tensor cores
    (128, 128, 64, 8, 8, 4), (64, 256, 64, 8, 8, 3), (64, 128, 64, 8, 4, 4), (128, 64, 64, 8, 4, 4),
    (64, 64, 64, 8, 4, 4),
]
_LINEAR_GELU_MMA_TF32 = [  # fp32 operands, TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32)
    (128, 128, 32, 8, 8, 3), (64, 128, 32, 8, 4, 3), (128, 64, 32, 8, 4, 3), (64, 64, 32, 8, 4, 4),
]
_LINEAR_GELU_FMA_FP32 = [  # exact fp32 dots run on FMA units, where cuBLAS's SGEMM usually wins
    (64, 64, 32, 8, 4, 3),
]
_LINEAR_GELU_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")


def linear_gelu_gemm_configs(dtype, precision: str) -> list[dict]:
    """Every GEMM configuration the GPU autotuner may try for operands of ``dtype`` with dot
    precision ``precision`` ("ieee" / "tf32"), before shape pruning."""
    import torch
    if dtype == torch.float32:
        table = _LINEAR_GELU_MMA_TF32 if precision == "tf32" else _LINEAR_GELU_FMA_FP32
    else:
        table = _LINEAR_GELU_MMA_16BIT
    return [{**dict(zip(_LINEAR_GELU_KEYS, c)), "EPILOGUE_SPLIT": 2} for c in table]


def linear_gelu_smem_bytes(cfg: dict, elem: int) -> int:
    """Shared memory of the pipelined operand tiles: num_stages x (X tile + W tile)."""
    return cfg["num_stages"] * (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * elem


def prune_linear_gelu_configs(configs: list[dict], *, M: int, N: int, K: int, dtype, smem_limit: int) -> list[dict]:
    """Named prune filter of the linear_gelu GEMM: tiles within the device's shared memory, and
    no tile dimension beyond the (power-of-two bucketed) problem dimension, so a small GEMM is
    not timed with tiles that are mostly padding. Never empty: the smallest tile remains."""
    elem = dtype.itemsize

    def bucket(n):
        return max(16, triton.next_power_of_2(n))

    fitting = [c for c in configs if linear_gelu_smem_bytes(c, elem) <= smem_limit]
    shaped = [c for c in fitting if c["BLOCK_M"] <= bucket(M) and c["BLOCK_N"] <= bucket(N)
              and c["BLOCK_K"] <= bucket(K)]
    if shaped:
        return shaped
    pool = fitting or configs
    return [min(pool, key=lambda c: (c["BLOCK_M"] * c["BLOCK_N"], linear_gelu_smem_bytes(c, elem)))]


def linear_gelu_epilogue_config(interpret: bool | None = None, dtype=None) -> dict:
    """bias + GELU after a torch.matmul (the cuBLAS path): (BLOCK_M x BLOCK_N) tile per program.
    float64 gets a quarter of the tile: fp64 erf on 32 values per thread spills registers."""
    import torch

    from ._interpret import interpreting
    if interpreting() if interpret is None else interpret:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4}
    return {"BLOCK_M": 16, "BLOCK_N": 64 if dtype == torch.float64 else 256, "num_warps": 4}


def linear_gelu_bwd_config(interpret: bool | None = None, dtype=None) -> dict:
    """dpre = dy * GELU'(pre): BLOCK_M x BLOCK_N tiles, each program looping over enough of them
    that about TARGET_PROGRAMS programs run (each one writes one fp32 partial row of dbias).
    float64 gets a quarter of the tile: fp64 erf/exp on 32 values per thread spill registers."""
    import torch

    from ._interpret import interpreting
    if interpreting() if interpret is None else interpret:
        return {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4, "TARGET_PROGRAMS": 8}
    return {"BLOCK_M": 16, "BLOCK_N": 64 if dtype == torch.float64 else 256, "num_warps": 4, "TARGET_PROGRAMS": 1024}


# Second pass of the bias gradient: sums P partial rows, BLOCK_P at a time, fixed order.
LINEAR_GELU_BIAS_REDUCE = {"BLOCK_P": 32, "BLOCK_N": 64, "num_warps": 4}
