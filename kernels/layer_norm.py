"""LayerNorm over the last dimension, optionally with the residual add folded in
(h = x + residual, or h = x + gamma * residual with a (N,) layer scale gamma; y = LayerNorm(h)):
the forward kernel and its launchers here, the backward in
``kernels/layer_norm_bwd.py`` (re-exported below), shared launcher helpers in
``kernels/_layer_norm_common.py``.

Layout: inputs are viewed as (M, N) row-major matrices; every row is one normalisation. A whole
row (padded to BLOCK_N, the next power of two) is held in registers, so the forward reads each
input once and writes each output once. Narrow rows are packed BLOCK_M to a program so a
192-wide row does not leave most of a 4096-element tile idle. Statistics (mean, rstd) are fp32
whatever the input dtype; so is all arithmetic.

Launchers take tensors and return tensors (no autograd): see ``fastvit/ops/_layer_norm_triton.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _configs as C
from ._aot import aot_spec, tl_type
from ._autotune import TunedKernel
from ._checks import KERNEL_DTYPES
from ._layer_norm_common import (check, check_eps, check_out_dtype, check_x, h_dtype_of, new, poisoned_outputs, rows,
                                 rows_bucket)
from .layer_norm_bwd import aot_specs as _bwd_aot_specs
from .layer_norm_bwd import add_layer_norm_bwd, layer_norm_bwd

__all__ = ["layer_norm_fwd", "add_layer_norm_fwd", "layer_norm_bwd", "add_layer_norm_bwd", "aot_specs",
           "poisoned_outputs"]

SUPPORTED_DTYPES = KERNEL_DTYPES


# Row counts vary with the batch: not specialised on, so a new batch size compiles nothing.
@triton.jit(do_not_specialize=["n_rows", "rows_bucket"])
def _layer_norm_fwd(
    X, R, G, H, Y, W, B, Mean, Rstd,
    stride_xm, stride_rm, stride_hm, stride_ym,
    n_rows, n_cols, eps,
    rows_bucket,  # unused by the kernel: only the autotune key, so a new batch size does not re-tune
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < n_rows
    mask_n = offs_n < n_cols
    mask = mask_m[:, None] & mask_n[None, :]
    # Row offsets in int64: M * stride passes 2^31 for large batches of wide rows.
    rows = offs_m.to(tl.int64)

    x = tl.load(X + rows[:, None] * stride_xm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(R + rows[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            # Layer scale: gamma * residual in fp32 here, instead of a separate multiply that
            # writes and re-reads a scaled copy of the residual.
            r = r * tl.load(G + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        # Round h to its storage dtype before normalising it, so y is exactly LayerNorm of the h
        # we return (as the unfused x + residual followed by layer_norm would give).
        h = (x + r).to(H.dtype.element_ty)
        tl.store(H + rows[:, None] * stride_hm + offs_n[None, :], h, mask=mask)
        x = h.to(tl.float32)

    mean = tl.sum(x, axis=1) / n_cols
    # Padding lanes must not count in the variance: they hold 0 - mean, not 0.
    diff = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(diff * diff, axis=1) / n_cols
    # Round-to-nearest sqrt: the fast approximate one costs accuracy in rstd for nothing here
    # (once per row).
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    tl.store(Mean + offs_m, mean, mask=mask_m)
    tl.store(Rstd + offs_m, rstd, mask=mask_m)

    y = diff * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(W + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_BIAS:
        b = tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(Y + rows[:, None] * stride_ym + offs_n[None, :], y.to(Y.dtype.element_ty), mask=mask)


_layer_norm_fwd_tuned = TunedKernel(_layer_norm_fwd, configs=C.layer_norm_fwd_autotune_configs(),
                                    key=["BLOCK_N", "rows_bucket"], prune=C.prune_layer_norm_fwd_configs,
                                    interpret_config=C.layer_norm_interpret_fwd_config)


def _fwd(x, residual, weight, bias, eps, out_dtype, scale=None):
    n = check_x(x)
    check(residual, "residual", like=x)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    check(weight, "weight", like=x, width=n)
    check(bias, "bias", like=x, width=n)
    check(scale, "residual_scale", like=x, width=n)
    eps = check_eps(eps)

    h_dtype = h_dtype_of(x, residual, scale)
    y_dtype = h_dtype if out_dtype is None else out_dtype
    check_out_dtype(y_dtype, "out_dtype")

    # Parameters are N elements: copying a strided one costs nothing, and the kernels index them
    # as contiguous vectors.
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    scale = None if scale is None else scale.contiguous()
    lead = x.shape[:-1]
    x2 = rows(x)                                        # (M, N)
    r2 = None if residual is None else rows(residual)   # (M, N)
    m = x2.shape[0]
    # Outputs are allocated in their final shapes (no views handed back to autograd).
    y = new(x.shape, y_dtype, x.device)                 # (..., N) contiguous
    h = None if residual is None else new(x.shape, h_dtype, x.device)  # (..., N) contiguous
    mean = new(lead, torch.float32, x.device)           # (...)
    rstd = new(lead, torch.float32, x.device)           # (...)
    if m > 0:
        _layer_norm_fwd_tuned[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](
            x2, r2, scale, None if h is None else h.view(m, n), y.view(m, n), weight, bias, mean, rstd,
            x2.stride(0), 0 if r2 is None else r2.stride(0), n, n,
            m, n, eps, rows_bucket(m),
            BLOCK_N=C.layer_norm_block_n(n), HAS_RESIDUAL=residual is not None, HAS_SCALE=scale is not None,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        )
    return y, h, mean, rstd


def layer_norm_fwd(
    x: torch.Tensor,               # (..., N) any float dtype, any strides
    weight: torch.Tensor | None,   # (N,)
    bias: torch.Tensor | None,     # (N,)
    eps: float,
    out_dtype: torch.dtype | None = None,  # dtype of y; default x.dtype (fp32 under autocast)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = LayerNorm(x) over the last dimension. Returns (y (..., N) contiguous, mean (...) fp32,
    rstd (...) fp32)."""
    y, _, mean, rstd = _fwd(x, None, weight, bias, eps, out_dtype)
    return y, mean, rstd


def add_layer_norm_fwd(
    x: torch.Tensor,               # (..., N)
    residual: torch.Tensor,        # (..., N) same shape as x
    weight: torch.Tensor | None,   # (N,)
    bias: torch.Tensor | None,     # (N,)
    eps: float,
    out_dtype: torch.dtype | None = None,  # dtype of y; default the dtype of h
    residual_scale: torch.Tensor | None = None,  # (N,) layer scale gamma, or None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = x + residual (x + residual_scale * residual, the product in fp32), y = LayerNorm(h),
    in one pass; h in the promoted dtype of its operands (``h_dtype_of``). Returns
    (h, y, mean, rstd); mean and rstd are fp32 statistics of h."""
    if residual is None:
        raise ValueError("residual must be a tensor for add_layer_norm_fwd, got None")
    y, h, mean, rstd = _fwd(x, residual, weight, bias, eps, out_dtype, residual_scale)
    return h, y, mean, rstd


def aot_specs(dtypes=SUPPORTED_DTYPES, block_ns=None, alignments=(True, False)) -> list:
    """One spec per (kernel, configuration the launchers may pick, dtype, variant).

    Forward: every BLOCK_N bucket x every autotune config left by the width-dependent pruning
    x {plain, residual (``_res``), residual with layer scale (``_res_scale``)}; the backward's
    specs (``layer_norm_bwd.aot_specs``) follow. Each x {width divisible by 16, not}: torch
    allocations are 16-byte aligned and Triton specialises on ints divisible by 16 (widths of
    192 ... 1280 and the row strides of such rows); the "unaligned" specs (a width of 1000)
    assume that of the pointers only. Weight and bias are present (the most registers); the
    weight dtype is the activation dtype (autocast's fp32 weights and output are the fp32
    case's loads and stores).
    """
    block_ns = C.layer_norm_block_ns() if block_ns is None else list(block_ns)
    variants = {"": (False, False), "_res": (True, False), "_res_scale": (True, True)}
    specs = []
    for dtype in dtypes:
        for aligned in alignments:
            tag = "" if aligned else "_unaligned"
            for block_n in block_ns:
                for suffix, (residual, scale) in variants.items():
                    ints = ["n_cols", "stride_xm", "stride_ym"] + (["stride_rm", "stride_hm"] if residual else [])
                    for block_m, num_warps in C.layer_norm_fwd_configs_for(block_n):
                        specs.append(aot_spec(
                            f"_layer_norm_fwd_{tl_type(dtype)}_n{block_n}_m{block_m}_w{num_warps}{suffix}{tag}",
                            _layer_norm_fwd,
                            pointers={"X": dtype, "R": dtype if residual else None, "G": dtype if scale else None,
                                      "H": dtype if residual else None, "Y": dtype, "W": dtype, "B": dtype,
                                      "Mean": torch.float32, "Rstd": torch.float32},
                            constexprs={"BLOCK_M": block_m, "BLOCK_N": block_n, "HAS_RESIDUAL": residual,
                                        "HAS_SCALE": scale, "HAS_WEIGHT": True, "HAS_BIAS": True},
                            floats=("eps",), aligned=ints if aligned else (), num_warps=num_warps, mma=False))
    return specs + _bwd_aot_specs(dtypes, block_ns, alignments)
