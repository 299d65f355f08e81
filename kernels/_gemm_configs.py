"""Launch configurations of the GEMM families (linear_gelu, linear_glu, the MLP backward's GEMMs):
candidate tables, the shape and shared-memory filter, the named prune functions. Re-exported by
``kernels/_configs.py``, the one lookup place, as the attention configurations are; the
interpreter's choices stay in its last section."""
from __future__ import annotations

from typing import NamedTuple

import triton

from ._autotune import config_key, merged_args

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
    return _prune_gemm(LINEAR_GELU_TABLES, configs, merged_args(named_args, kwargs), "X")


def _prune_gemm(tables: GemmTables, configs, args: dict, operand: str, dims=("M", "N", "K"),
                smem=None) -> list:
    """What every GEMM family's prune function does: keep the configurations of ``tables`` for
    the dtype of the launch's ``operand`` and its dot precision, then those that fit the launch's
    (rows, columns, reduction) = ``dims`` and the device's shared memory."""
    dtype = args[operand].dtype
    table = {config_key(c) for c in tables.for_dtype(dtype, args["INPUT_PRECISION"])}
    mine = [c for c in configs if config_key(c) in table]
    m, n, k = (args[d] for d in dims)
    return linear_gelu_fitting_configs(mine, M=m, N=n, K=k, dtype=dtype,
                                       smem_limit=shared_memory_limit(args[operand].device), smem=smem)


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
    return _prune_gemm(LINEAR_GLU_TABLES, configs, merged_args(named_args, kwargs), "X", smem=linear_glu_smem_bytes)


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
    return _prune_gemm(GELU_LINEAR_DW_TABLES, configs, merged_args(named_args, kwargs), "Dy", dims=("H", "C", "T"))


def prune_gelu_linear_dpre_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of the dpre GEMM: linear_gelu's table for the dtype and precision,
    then the shape and device fit (rows: the M tokens, columns: the N hidden units, reduction:
    the K outputs)."""
    return _prune_gemm(LINEAR_GELU_TABLES, configs, merged_args(named_args, kwargs), "Dy")
