"""Backward of linear_gelu's activation (``kernels/linear_gelu.py``): kernels and launcher.

``_gelu_bwd`` computes dpre = dy * GELU'(pre) from the pre-activation saved by the forward (see
``linear_gelu_bwd`` for why it is read rather than recomputed) and writes per-program fp32
partial column sums of dpre; ``_bias_grad_reduce`` adds those partials up in a fixed order
(deterministic bias gradient, no atomics). The two GEMMs of the backward (dx, dW) are plain
``torch.matmul`` calls made by ``fastvit.ops``. Configurations are fixed, never timed: the
partial sums' layout fixes the bits of the bias gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _autotune, _interpret
from . import _configs as C
from ._aot import aot_spec, tl_type
from ._gelu import GELU_APPROXIMATIONS, LINEAR_GELU_DTYPES, _gelu_grad, _upcast, check_2d, check_approximate, check_device, check_grid, check_out

__all__ = ["linear_gelu_bwd", "aot_specs"]


@triton.jit
def _gelu_bwd(
    Dy, Pre, Dpre, Partial,
    M, N, rows_per_program,
    stride_dym, stride_dyn,
    stride_pm, stride_pn,
    stride_dpm, stride_dpn,
    stride_partp,
    BIAS_GRAD: tl.constexpr, APPROXIMATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dpre = dy * GELU'(pre) over rows [pid_p * rows_per_program, ...) and columns of pid_n;
    with BIAS_GRAD also this program's column sums of dpre into Partial[pid_p, :]."""
    pid_p = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_n64 = offs_n.to(tl.int64)
    row_start = pid_p * rows_per_program
    row_stop = tl.minimum(row_start + rows_per_program, M)
    col_sum = _upcast(tl.zeros((BLOCK_N,), dtype=Pre.dtype.element_ty))
    for start in range(row_start, row_stop, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask = (offs_m < row_stop)[:, None] & mask_n[None, :]
        offs_m64 = offs_m.to(tl.int64)
        dy = tl.load(Dy + offs_m64[:, None] * stride_dym + offs_n64[None, :] * stride_dyn, mask=mask, other=0.0)
        pre = tl.load(Pre + offs_m64[:, None] * stride_pm + offs_n64[None, :] * stride_pn, mask=mask, other=0.0)
        dpre = _upcast(dy) * _gelu_grad(_upcast(pre), APPROXIMATE)
        tl.store(Dpre + offs_m64[:, None] * stride_dpm + offs_n64[None, :] * stride_dpn,
                 dpre.to(Dpre.dtype.element_ty), mask=mask)
        if BIAS_GRAD:
            # masked entries are 0 * GELU'(0) = 0, so they add nothing
            col_sum += tl.sum(dpre, axis=0)
    if BIAS_GRAD:
        tl.store(Partial + pid_p.to(tl.int64) * stride_partp + offs_n, col_sum, mask=mask_n)



@triton.jit
def _bias_grad_reduce(
    Partial, Dbias,
    P, N,
    stride_partp,
    stride_dbn,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Dbias[n] = sum_p Partial[p, n], always in the same order: deterministic."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=Partial.dtype.element_ty)
    for start in range(0, P, BLOCK_P):
        offs_p = start + tl.arange(0, BLOCK_P)
        mask = (offs_p < P)[:, None] & mask_n[None, :]
        acc += tl.load(Partial + offs_p.to(tl.int64)[:, None] * stride_partp + offs_n[None, :], mask=mask, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(Dbias + offs_n * stride_dbn, total.to(Dbias.dtype.element_ty), mask=mask_n)


def linear_gelu_bwd(dy: torch.Tensor, pre: torch.Tensor, approximate: str = "none", *,
                    bias_grad: bool = True, out: torch.Tensor | None = None,
                    config: dict | None = None):
    """(dpre, dbias): dpre = dy * GELU'(pre) (M, N), dbias = dpre.sum(0) (N,) or None.

    Reads the pre-activation the forward saved rather than recomputing it: recomputing
    x @ W^T + b costs a whole extra GEMM (2*M*N*K flops), while saving it costs one M x N store
    in a forward epilogue that is compute-bound anyway, and one M x N load here, in a pass that
    reads dy of the same size regardless. It is also what eager nn.GELU keeps. GELU'(pre) itself
    is recomputed (a few flops per element, free in this memory-bound pass).

    The bias gradient sums the fp32 dpre (before rounding to the output dtype): each program
    writes the column sums of its row range to an fp32 partials buffer, and a second kernel adds
    those in a fixed order; no atomics, so it is bitwise reproducible.
    """
    check_2d(dy, "dy")
    check_2d(pre, "pre", dy.dtype, dy.device, dy.shape)
    if dy.dtype not in LINEAR_GELU_DTYPES:
        raise TypeError(f"dy must be float16, bfloat16, float32 or float64, got {dy.dtype}")
    check_device(dy, "dy")
    check_approximate(approximate)
    check_out(out, "out", dy.shape, dy)
    M, N = dy.shape
    if _interpret.interpreting() and 0 in dy.stride():
        # The interpreter misreads stride-0 tensors (e.g. the gradient of a .sum()); a GPU does not.
        dy = dy.contiguous()
    dpre = out if out is not None else torch.empty((M, N), dtype=dy.dtype, device=dy.device)
    acc_dtype = torch.float64 if dy.dtype == torch.float64 else torch.float32
    dbias = torch.empty((N,), dtype=dy.dtype, device=dy.device) if bias_grad else None
    if N == 0:
        return dpre, dbias
    if M == 0:
        if dbias is not None:
            dbias.zero_()
        return dpre, dbias

    cfg = config or (C.linear_gelu_bwd_config(dy.dtype) if _autotune.on_gpu() else C.LINEAR_GELU_INTERPRET_BWD)
    # Enough row ranges to fill the machine, each a multiple of BLOCK_M rows: fewer partial rows
    # to reduce than one per BLOCK_M tile.
    n_col = triton.cdiv(N, cfg["BLOCK_N"])
    n_row_tiles = triton.cdiv(M, cfg["BLOCK_M"])
    tiles_per_program = max(1, triton.cdiv(n_row_tiles * n_col, cfg["TARGET_PROGRAMS"]))
    rows_per_program = tiles_per_program * cfg["BLOCK_M"]
    P = triton.cdiv(M, rows_per_program)
    check_grid(P, "linear_gelu backward")
    partial = torch.empty((P, N), dtype=acc_dtype, device=dy.device) if bias_grad else dpre
    _gelu_bwd[(P, n_col)](
        dy, pre, dpre,       # (M, N) each
        partial,             # (P, N) fp32 partial sums, or unused
        M, N, rows_per_program,
        dy.stride(0), dy.stride(1),
        pre.stride(0), pre.stride(1),
        dpre.stride(0), dpre.stride(1),
        partial.stride(0),
        BIAS_GRAD=bias_grad, APPROXIMATE=approximate,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
    )
    if bias_grad:
        rcfg = C.LINEAR_GELU_BIAS_REDUCE
        _bias_grad_reduce[(triton.cdiv(N, rcfg["BLOCK_N"]),)](
            partial,         # (P, N)
            dbias,           # (N,)
            P, N,
            partial.stride(0),
            dbias.stride(0),
            BLOCK_P=rcfg["BLOCK_P"], BLOCK_N=rcfg["BLOCK_N"], num_warps=rcfg["num_warps"],
        )
    return dpre, dbias


def aot_specs(dtypes) -> list:
    """``_gelu_bwd`` per dtype and GELU variant, ``_bias_grad_reduce`` per dtype, each
    contiguous (widths multiples of 16) and "strided" (no stride known to be 1, e.g. a stride-0
    dy from ``.sum()``, no width alignment), with the configuration the launcher uses on a GPU."""
    specs = []
    red = C.LINEAR_GELU_BIAS_REDUCE
    for dtype in dtypes:
        t = tl_type(dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        bw = C.linear_gelu_bwd_config(dtype)
        for plain in (True, False):
            tag = "" if plain else ",strided"
            for approximate in GELU_APPROXIMATIONS:
                specs.append(aot_spec(
                    f"_gelu_bwd[{t},{approximate}{tag}]", _gelu_bwd,
                    pointers={"Dy": dtype, "Pre": dtype, "Dpre": dtype, "Partial": acc},
                    unit_strides=("stride_dyn", "stride_pn", "stride_dpn") if plain else (),
                    aligned=("N", "rows_per_program", "stride_dym", "stride_pm", "stride_dpm", "stride_partp")
                    if plain else ("rows_per_program",),
                    constexprs={"BIAS_GRAD": True, "APPROXIMATE": approximate,
                                "BLOCK_M": bw["BLOCK_M"], "BLOCK_N": bw["BLOCK_N"]},
                    num_warps=bw["num_warps"], mma=False))
            specs.append(aot_spec(
                f"_bias_grad_reduce[{t}{tag}]", _bias_grad_reduce,
                pointers={"Partial": acc, "Dbias": dtype},
                unit_strides=("stride_dbn",) if plain else (), aligned=("N", "stride_partp") if plain else (),
                constexprs={"BLOCK_P": red["BLOCK_P"], "BLOCK_N": red["BLOCK_N"]},
                num_warps=red["num_warps"], mma=False))
    return specs
