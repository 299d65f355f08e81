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

from ._autotune import config_key, merged_args

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
# linear_gelu (kernels/linear_gelu.py, kernels/linear_gelu_bwd.py)
# ============================================================================================
# The GEMM (GELU(x @ W^T + b) in its epilogue) is autotuned on a GPU over the candidates below,
# pruned by ``prune_linear_gelu_configs``, keyed on the bucketed M, N, K, the epilogue variant,
# the dot precision and the dtype; the tuned GEMM then races cuBLAS + the elementwise epilogue
# kernel once per key and the faster path is kept (kernels/linear_gelu.py: _choose_gpu). All
# candidates fit sm_80's 163 KB of shared memory (sm_90 has 227 KB), so ``aot_specs`` compiles
# every one of them for both; GPUs with less (sm_86/89: 99 KB) prune the big ones at run time.
# Elementwise kernels (epilogue, GELU backward, bias-gradient reduction) use one fixed
# configuration each: memory-bound, and the backward's must not depend on a timing (its partial
# sums fix the bits of the bias gradient).

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


def _gemm_config(m: int, n: int, k: int, group: int, warps: int, stages: int, **extra) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": group, **extra},
                         num_warps=warps, num_stages=stages)


class GemmTables(NamedTuple):
    """A GEMM kernel's configuration tables by operand type, each row (BLOCK_M, BLOCK_N, BLOCK_K,
    GROUP_M, num_warps, num_stages); ``extra`` meta-parameters every configuration carries."""
    mma_16bit: list  # fp16 / bf16 operands on tensor cores
    mma_tf32: list   # fp32 operands, TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32)
    fma_fp32: list   # exact fp32 dots on FMA units
    extra: dict = {}

    def for_dtype(self, dtype, precision: str) -> list[triton.Config]:
        """Every configuration the GPU autotuner may try for operands of ``dtype`` with dot
        precision ``precision`` ("ieee" / "tf32"), before shape pruning."""
        import torch
        if dtype == torch.float32:
            table = self.mma_tf32 if precision == "tf32" else self.fma_fp32
        else:
            table = self.mma_16bit
        return [_gemm_config(*c, **self.extra) for c in table]

    def all(self) -> list[triton.Config]:
        """The autotuner's one candidate list: every table, once."""
        return list({config_key(c): c for c in (
            [_gemm_config(*c, **self.extra) for c in self.mma_16bit + self.mma_tf32 + self.fma_fp32])}.values())


LINEAR_GELU_TABLES = GemmTables(_LINEAR_GELU_MMA_16BIT, _LINEAR_GELU_MMA_TF32, _LINEAR_GELU_FMA_FP32,
                                {"EPILOGUE_SPLIT": 2})
linear_gelu_gemm_configs = LINEAR_GELU_TABLES.for_dtype
LINEAR_GELU_CONFIGS = LINEAR_GELU_TABLES.all()


def linear_gelu_smem_bytes(cfg: triton.Config, elem: int) -> int:
    """Shared memory of the pipelined operand tiles: num_stages x (X tile + W tile)."""
    return cfg.num_stages * (cfg.kwargs["BLOCK_M"] + cfg.kwargs["BLOCK_N"]) * cfg.kwargs["BLOCK_K"] * elem


def shared_memory_limit(device) -> int:
    """Opt-in shared memory per block of a CUDA device, bytes."""
    import torch
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024


def linear_gelu_fitting_configs(configs, *, M: int, N: int, K: int, dtype, smem_limit: int,
                                smem=None) -> list[triton.Config]:
    """Configs within the device's shared memory and with no tile dimension beyond the
    (power-of-two bucketed) problem dimension, so a small GEMM is not timed with tiles that are
    mostly padding. Never empty: the smallest tile remains. ``smem``: the family's shared-memory
    estimate (``linear_gelu_smem_bytes`` by default; the gated GEMM loads two weight tiles)."""
    elem = dtype.itemsize
    smem = smem or linear_gelu_smem_bytes

    def bucket(n):
        return max(16, triton.next_power_of_2(n))

    fitting = [c for c in configs if smem(c, elem) <= smem_limit]
    shaped = [c for c in fitting if c.kwargs["BLOCK_M"] <= bucket(M) and c.kwargs["BLOCK_N"] <= bucket(N)
              and c.kwargs["BLOCK_K"] <= bucket(K)]
    if shaped:
        return shaped
    pool = fitting or configs
    return [min(pool, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], smem(c, elem)))]


def prune_linear_gelu_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of the GEMM: the table of the operands' dtype and dot precision,
    then ``linear_gelu_fitting_configs`` for the launch's shape and device."""
    args = merged_args(named_args, kwargs)
    dtype = args["X"].dtype
    table = {config_key(c) for c in linear_gelu_gemm_configs(dtype, args["INPUT_PRECISION"])}
    mine = [c for c in configs if config_key(c) in table]
    return linear_gelu_fitting_configs(mine, M=args["M"], N=args["N"], K=args["K"], dtype=dtype,
                                       smem_limit=shared_memory_limit(args["X"].device))


def linear_gelu_epilogue_config(dtype) -> dict:
    """bias + GELU after a torch.matmul (the cuBLAS path): (BLOCK_M x BLOCK_N) tile per program.
    float64 gets a quarter of the tile: fp64 erf on 32 values per thread spills registers."""
    import torch
    return {"BLOCK_M": 16, "BLOCK_N": 64 if dtype == torch.float64 else 256, "num_warps": 4}


def linear_gelu_bwd_config(dtype) -> dict:
    """dpre = dy * GELU'(pre): BLOCK_M x BLOCK_N tiles, each program looping over enough of them
    that about TARGET_PROGRAMS programs run (each one writes one fp32 partial row of dbias).
    float64 gets a quarter of the tile: fp64 erf/exp on 32 values per thread spill registers."""
    import torch
    return {"BLOCK_M": 16, "BLOCK_N": 64 if dtype == torch.float64 else 256, "num_warps": 4, "TARGET_PROGRAMS": 1024}


# Second pass of the bias gradient: sums P partial rows, BLOCK_P at a time, fixed order.
LINEAR_GELU_BIAS_REDUCE = {"BLOCK_P": 32, "BLOCK_N": 64, "num_warps": 4}


# The gated GEMM (kernels/linear_glu.py: act(x W_g^T + b_g) * (x W_v^T + b_v), SwiGLU / GEGLU)
# holds two accumulators, gate and value, over the same BLOCK_N hidden columns: the tables keep
# 2 x BLOCK_M x BLOCK_N / threads at 64 values per thread (the limit the GELU GEMM keeps for
# one), so BLOCK_N is half of linear_gelu's for the same warps. Shared memory per stage holds
# one X tile and two W tiles. The elementwise kernels reuse linear_gelu's fixed configurations.
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
_LINEAR_GLU_MMA_16BIT = [
    (128, 64, 64, 8, 8, 4), (64, 128, 64, 8, 8, 3), (64, 64, 64, 8, 4, 4), (128, 32, 64, 8, 4, 4),
    (64, 32, 64, 8, 4, 4),
]
_LINEAR_GLU_MMA_TF32 = [(128, 64, 32, 8, 8, 3), (64, 64, 32, 8, 4, 3), (64, 32, 32, 8, 4, 4)]
_LINEAR_GLU_FMA_FP32 = [(64, 32, 32, 8, 4, 3)]


LINEAR_GLU_TABLES = GemmTables(_LINEAR_GLU_MMA_16BIT, _LINEAR_GLU_MMA_TF32, _LINEAR_GLU_FMA_FP32)
linear_glu_gemm_configs = LINEAR_GLU_TABLES.for_dtype
LINEAR_GLU_CONFIGS = LINEAR_GLU_TABLES.all()


def linear_glu_smem_bytes(cfg: triton.Config, elem: int) -> int:
    """num_stages x (X tile + gate W tile + value W tile)."""
    return cfg.num_stages * (cfg.kwargs["BLOCK_M"] + 2 * cfg.kwargs["BLOCK_N"]) * cfg.kwargs["BLOCK_K"] * elem


def prune_linear_glu_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of the gated GEMM: its dtype's table, then the shape and device fit."""
    args = merged_args(named_args, kwargs)
    dtype = args["X"].dtype
    table = {config_key(c) for c in linear_glu_gemm_configs(dtype, args["INPUT_PRECISION"])}
    mine = [c for c in configs if config_key(c) in table]
    return linear_gelu_fitting_configs(mine, M=args["M"], N=args["N"], K=args["K"], dtype=dtype,
                                       smem_limit=shared_memory_limit(args["X"].device), smem=linear_glu_smem_bytes)


# ============================================================================================
# gelu_linear_bwd (kernels/gelu_linear_bwd.py): the MLP backward's GEMMs, GELU recomputed
# ============================================================================================
# dW2 = dy^T @ GELU(pre), GELU in the prologue on each (BLOCK_M hidden x BLOCK_K token) tile,
# inside the main loop next to the accumulator: the GELU GEMM's tiles, but 16-bit ones with
# BLOCK_K 32 (with 64, erf GELU on a 128 x 64 tile spills on sm_80: 888 bytes at 128 x 128 x 64;
# at 32 the heaviest, erf on sm_80, stay at or under 255 registers without spilling). TF32 takes
# linear_gelu's table (BLOCK_K 32 already); exact fp32 (FMA) a 32-row tile (at 64 x 64 x 32 the
# identity prologue's transposed operand spills 268 bytes on sm_80). Each pre element's GELU is
# evaluated once per BLOCK_N column block of dW2^T, so wide BLOCK_N tiles amortise it best.
# Autotuned on a GPU, keyed on the bucketed token count (the reduction length), H, C and the
# prologue.
# dpre = (dy @ W2) * GELU'(pre): exactly linear_gelu's GEMM configurations (EPILOGUE_SPLIT 2 for
# the GELU' epilogue), pruned the same way. Its bias-gradient partials are column sums per
# GELU_LINEAR_DPRE_PARTIAL_ROWS rows, a divisor of every BLOCK_M, so their layout (and the order
# of the fixed second-pass sum) does not depend on which tile the autotuner picked.
GELU_LINEAR_DPRE_PARTIAL_ROWS = 64


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
_GELU_LINEAR_DW_MMA_16BIT = [
    (128, 128, 32, 8, 8, 4), (64, 256, 32, 8, 8, 3), (128, 64, 32, 8, 4, 4), (64, 128, 32, 8, 4, 4),
    (64, 64, 32, 8, 4, 4),
]
_GELU_LINEAR_DW_FMA_FP32 = [(32, 64, 32, 8, 4, 3)]


GELU_LINEAR_DW_TABLES = GemmTables(_GELU_LINEAR_DW_MMA_16BIT, _LINEAR_GELU_MMA_TF32, _GELU_LINEAR_DW_FMA_FP32)
gelu_linear_dw_gemm_configs = GELU_LINEAR_DW_TABLES.for_dtype
GELU_LINEAR_DW_CONFIGS = GELU_LINEAR_DW_TABLES.all()


def prune_gelu_linear_dw_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of the dW2 GEMM: its dtype's table, then the shape and device fit
    (rows: the H hidden units, columns: the C outputs, reduction: the T tokens)."""
    args = merged_args(named_args, kwargs)
    dtype = args["Dy"].dtype
    table = {config_key(c) for c in gelu_linear_dw_gemm_configs(dtype, args["INPUT_PRECISION"])}
    mine = [c for c in configs if config_key(c) in table]
    return linear_gelu_fitting_configs(mine, M=args["H"], N=args["C"], K=args["T"], dtype=dtype,
                                       smem_limit=shared_memory_limit(args["Dy"].device))


def prune_gelu_linear_dpre_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of the dpre GEMM: linear_gelu's table for the dtype and precision,
    then the shape and device fit (rows: the M tokens, columns: the N hidden units, reduction:
    the K outputs)."""
    args = merged_args(named_args, kwargs)
    dtype = args["Dy"].dtype
    table = {config_key(c) for c in linear_gelu_gemm_configs(dtype, args["INPUT_PRECISION"])}
    mine = [c for c in configs if config_key(c) in table]
    return linear_gelu_fitting_configs(mine, M=args["M"], N=args["N"], K=args["K"], dtype=dtype,
                                       smem_limit=shared_memory_limit(args["Dy"].device))


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
