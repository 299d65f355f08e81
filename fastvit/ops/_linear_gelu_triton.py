"""Triton path of ``fastvit.ops.linear_gelu``: custom ops (``fastvit::linear_gelu_fwd``,
``fastvit::linear_gelu_bwd``) and the autograd Function that strings them together.

Forward: one custom op, the GEMM with bias + GELU in its epilogue (or cuBLAS + the epilogue
kernel on GPUs where that is faster), also returning the pre-activation when a gradient will be
needed. Backward: one custom op for dpre = dy * GELU'(pre) and the bias gradient, then the two
GEMMs dx = dpre @ W and dW = dpre^T @ x with torch.matmul.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..kernels import linear_gelu as _k
from ._checks import autocast_inputs


@torch.library.custom_op("fastvit::linear_gelu_fwd", mutates_args=())
def _linear_gelu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], approximate: str,
                     store_pre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), weight (N, K), bias (N,) -> (y (M, N), pre (M, N), or (0,) when not stored)."""
    y, pre = _k.linear_gelu_fwd(x, weight, bias, approximate, store_pre=store_pre)
    if pre is None:
        pre = x.new_empty((0,))
    return y, pre


@_linear_gelu_fwd.register_fake
def _(x, weight, bias, approximate, store_pre):
    M, N = x.shape[0], weight.shape[0]
    return x.new_empty((M, N)), x.new_empty((M, N) if store_pre else (0,))


@torch.library.custom_op("fastvit::linear_gelu_bwd", mutates_args=())
def _linear_gelu_bwd(dy: torch.Tensor, pre: torch.Tensor, approximate: str,
                     bias_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dy, pre (M, N) -> (dpre (M, N), dbias (N,), or (0,) without bias_grad)."""
    dpre, dbias = _k.linear_gelu_bwd(dy, pre, approximate, bias_grad=bias_grad)
    if dbias is None:
        dbias = dy.new_empty((0,))
    return dpre, dbias


@_linear_gelu_bwd.register_fake
def _(dy, pre, approximate, bias_grad):
    return dy.new_empty(dy.shape), dy.new_empty((dy.shape[1],) if bias_grad else (0,))


class LinearGeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, approximate, needs_grad):
        # a view whenever x's strides allow (the GEMM takes any strides); M spelled out
        # because reshape(-1, 0) is ambiguous
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
        y, pre = torch.ops.fastvit.linear_gelu_fwd(x2, weight, bias, approximate, needs_grad)
        if needs_grad:
            ctx.save_for_backward(x2, weight, pre)
        ctx.approximate = approximate
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, weight, pre = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bias_grad = bool(ctx.has_bias and need_b)
        dpre, dbias = torch.ops.fastvit.linear_gelu_bwd(dy.reshape(pre.shape), pre, ctx.approximate, bias_grad)
        dx = torch.matmul(dpre, weight).reshape(ctx.x_shape) if need_x else None
        dw = torch.matmul(dpre.t(), x2) if need_w else None
        return dx, dw, (dbias if bias_grad else None), None, None


def triton_linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       approximate: str) -> torch.Tensor:
    """GELU(x @ weight^T + bias) on fastvit's kernels; arguments already validated by
    ``fastvit.ops.linear_gelu``. Under autocast the linear runs in the autocast dtype, as
    F.linear does (GELU then keeps that dtype, as F.gelu does): the ops-wide policy."""
    x, weight, bias = autocast_inputs(x, weight, bias)
    # The pre-activation is stored only when a gradient will be asked for.
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return LinearGeluFunction.apply(x, weight, bias, approximate, needs_grad)
