"""Backward of the gated linear unit's epilogue (``kernels/linear_glu.py``): kernel and launcher.

From dy (M, N) and the packed pre-activations pre = [g | v] (M, 2N) the forward saved,
``_glu_bwd`` writes dpre = [dy * v * act'(g) | dy * act(g)] (M, 2N), packed like pre, which is
the gradient of the packed fc1 output: dx = dpre @ [W_g; W_v] and dW = dpre^T @ x are then one
GEMM each (``torch.matmul`` in ``fastvit.ops``), and the bias gradient is dpre's column sums,
through per-program fp32 partials added in a fixed order by linear_gelu's ``_bias_grad_reduce``
(deterministic, no atomics). Reading the saved g and v rather than recomputing them spares a GEMM
of 4*M*N*K flops, the reason linear_gelu gives. Configurations are linear_gelu's backward ones.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _autotune, _interpret
from . import _configs as C
from ._aot import aot_spec, tl_type
from ._gelu import (GLU_ACTIVATIONS, LINEAR_GELU_DTYPES, _glu_act, _glu_act_grad, _upcast, check_2d,
                    check_activation, check_device, check_grid, check_out)
from .linear_gelu_bwd import _bias_grad_reduce

__all__ = ["linear_glu_bwd", "aot_specs"]


@triton.jit
def _glu_bwd(
    Dy, Pre, Dpre, Partial,
    M, N, rows_per_program,
    stride_dym, stride_dyn,
    stride_pm, stride_pn,
    stride_dpm, stride_dpn,
    stride_partp,
    BIAS_GRAD: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Rows [pid_p * rows_per_program, ...), hidden columns of pid_n: both halves of dpre, and
    with BIAS_GRAD their column sums into Partial[pid_p, n] and Partial[pid_p, N + n]."""
    pid_p = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_n64 = offs_n.to(tl.int64)
    row_start = pid_p * rows_per_program
    row_stop = tl.minimum(row_start + rows_per_program, M)
    sum_g = _upcast(tl.zeros((BLOCK_N,), dtype=Pre.dtype.element_ty))
    sum_v = _upcast(tl.zeros((BLOCK_N,), dtype=Pre.dtype.element_ty))
    for start in range(row_start, row_stop, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask = (offs_m < row_stop)[:, None] & mask_n[None, :]
        offs_m64 = offs_m.to(tl.int64)
        dy = _upcast(tl.load(Dy + offs_m64[:, None] * stride_dym + offs_n64[None, :] * stride_dyn, mask=mask,
                             other=0.0))
        pre_ptrs = Pre + offs_m64[:, None] * stride_pm + offs_n64[None, :] * stride_pn
        g = _upcast(tl.load(pre_ptrs, mask=mask, other=0.0))
        v = _upcast(tl.load(pre_ptrs + N * stride_pn, mask=mask, other=0.0))
        dg = dy * v * _glu_act_grad(g, ACTIVATION)
        dv = dy * _glu_act(g, ACTIVATION)
        dpre_ptrs = Dpre + offs_m64[:, None] * stride_dpm + offs_n64[None, :] * stride_dpn
        tl.store(dpre_ptrs, dg.to(Dpre.dtype.element_ty), mask=mask)
        tl.store(dpre_ptrs + N * stride_dpn, dv.to(Dpre.dtype.element_ty), mask=mask)
        if BIAS_GRAD:
            # masked entries have dy = 0, so they add nothing
            sum_g += tl.sum(dg, axis=0)
            sum_v += tl.sum(dv, axis=0)
    if BIAS_GRAD:
        part = Partial + pid_p.to(tl.int64) * stride_partp + offs_n
        tl.store(part, sum_g, mask=mask_n)
        tl.store(part + N, sum_v, mask=mask_n)


def linear_glu_bwd(dy: torch.Tensor, pre: torch.Tensor, activation: str = "silu", *, bias_grad: bool = True,
                   out: torch.Tensor | None = None, config: dict | None = None):
    """(dpre (M, 2N), dbias (2N,) or None) from dy (M, N) and the packed pre (M, 2N)."""
    check_2d(dy, "dy")
    if dy.dtype not in LINEAR_GELU_DTYPES:
        raise TypeError(f"dy must be float16, bfloat16, float32 or float64, got {dy.dtype}")
    M, N = dy.shape
    check_2d(pre, "pre", dy.dtype, dy.device, (M, 2 * N))
    check_device(dy, "dy")
    check_activation(activation)
    check_out(out, "out", (M, 2 * N), dy)
    if _interpret.interpreting() and 0 in dy.stride():
        dy = dy.contiguous()  # the interpreter misreads stride-0 tensors (the gradient of a .sum())
    dpre = out if out is not None else torch.empty((M, 2 * N), dtype=dy.dtype, device=dy.device)
    acc_dtype = torch.float64 if dy.dtype == torch.float64 else torch.float32
    dbias = torch.empty((2 * N,), dtype=dy.dtype, device=dy.device) if bias_grad else None
    if N == 0:
        return dpre, dbias
    if M == 0:
        if dbias is not None:
            dbias.zero_()
        return dpre, dbias
    cfg = config or (C.linear_gelu_bwd_config(dy.dtype) if _autotune.on_gpu() else C.LINEAR_GELU_INTERPRET_BWD)
    n_col = triton.cdiv(N, cfg["BLOCK_N"])
    tiles_per_program = max(1, triton.cdiv(triton.cdiv(M, cfg["BLOCK_M"]) * n_col, cfg["TARGET_PROGRAMS"]))
    rows_per_program = tiles_per_program * cfg["BLOCK_M"]
    P = triton.cdiv(M, rows_per_program)
    check_grid(P, "linear_glu backward")
    partial = torch.empty((P, 2 * N), dtype=acc_dtype, device=dy.device) if bias_grad else dpre
    _glu_bwd[(P, n_col)](
        dy,                  # (M, N)
        pre, dpre,           # (M, 2N) each
        partial,             # (P, 2N) fp32 partial sums, or unused
        M, N, rows_per_program,
        dy.stride(0), dy.stride(1),
        pre.stride(0), pre.stride(1),
        dpre.stride(0), dpre.stride(1),
        partial.stride(0),
        BIAS_GRAD=bias_grad, ACTIVATION=activation,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
    )
    if bias_grad:
        rcfg = C.LINEAR_GELU_BIAS_REDUCE
        _bias_grad_reduce[(triton.cdiv(2 * N, rcfg["BLOCK_N"]),)](
            partial, dbias, P, 2 * N, partial.stride(0), dbias.stride(0),   # (P, 2N) -> (2N,)
            BLOCK_P=rcfg["BLOCK_P"], BLOCK_N=rcfg["BLOCK_N"], num_warps=rcfg["num_warps"],
        )
    return dpre, dbias


def aot_specs(dtypes) -> list:
    """``_glu_bwd`` per dtype and activation, contiguous and strided, with the GPU configuration
    (the reduction is linear_gelu's kernel, compiled by its specs)."""
    specs = []
    for dtype in dtypes:
        t = tl_type(dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        bw = C.linear_gelu_bwd_config(dtype)
        for plain in (True, False):
            for activation in GLU_ACTIVATIONS:
                specs.append(aot_spec(
                    f"_glu_bwd[{t},{activation}{'' if plain else ',strided'}]", _glu_bwd,
                    pointers={"Dy": dtype, "Pre": dtype, "Dpre": dtype, "Partial": acc},
                    unit_strides=("stride_dyn", "stride_pn", "stride_dpn") if plain else (),
                    aligned=("N", "rows_per_program", "stride_dym", "stride_pm", "stride_dpm", "stride_partp")
                    if plain else ("rows_per_program",),
                    constexprs={"BIAS_GRAD": True, "ACTIVATION": activation,
                                "BLOCK_M": bw["BLOCK_M"], "BLOCK_N": bw["BLOCK_N"]},
                    num_warps=bw["num_warps"], mma=False))
    return specs
