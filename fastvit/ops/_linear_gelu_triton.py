"""Triton path of ``fastvit.ops.linear_gelu``: custom ops (``fastvit::linear_gelu_fwd``,
``fastvit::linear_gelu_bwd``) and the autograd Function that strings them together.

Forward: one custom op, the GEMM with bias + GELU in its epilogue (or cuBLAS + the epilogue
kernel on GPUs where that is faster), also returning the pre-activation when a gradient will be
needed. Backward: one custom op for dpre = dy * GELU'(pre) and the bias gradient, then the two
GEMMs dx = dpre @ W and dW = dpre^T @ x with torch.matmul. The gated units (``linear_glu``:
``fastvit::linear_glu_fwd`` / ``_bwd``, ``LinearGluFunction``) have the same shape.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..kernels import linear_gelu as _k
from ..kernels import linear_glu as _kg
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


# ----------------------------------------------------------------------------------------------
# Gated linear units (SwiGLU / GEGLU): kernels/linear_glu.py
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("fastvit::linear_glu_fwd", mutates_args=())
def _linear_glu_fwd(x: torch.Tensor, w_gate: torch.Tensor, w_value: torch.Tensor, b_gate: Optional[torch.Tensor],
                    b_value: Optional[torch.Tensor], activation: str,
                    store_pre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), w_gate and w_value (N, K), biases (N,) -> (y (M, N), pre (M, 2N), or (0,))."""
    y, pre = _kg.linear_glu_fwd(x, w_gate, w_value, b_gate, b_value, activation, store_pre=store_pre)
    return y, (pre if pre is not None else x.new_empty((0,)))


@_linear_glu_fwd.register_fake
def _(x, w_gate, w_value, b_gate, b_value, activation, store_pre):
    M, N = x.shape[0], w_gate.shape[0]
    return x.new_empty((M, N)), x.new_empty((M, 2 * N) if store_pre else (0,))


@torch.library.custom_op("fastvit::linear_glu_bwd", mutates_args=())
def _linear_glu_bwd(dy: torch.Tensor, pre: torch.Tensor, activation: str,
                    bias_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dy (M, N), pre (M, 2N) -> (dpre (M, 2N), dbias (2N,), or (0,) without bias_grad)."""
    dpre, dbias = _kg.linear_glu_bwd(dy, pre, activation, bias_grad=bias_grad)
    return dpre, (dbias if dbias is not None else dy.new_empty((0,)))


@_linear_glu_bwd.register_fake
def _(dy, pre, activation, bias_grad):
    return pre.new_empty(pre.shape), dy.new_empty((pre.shape[1],) if bias_grad else (0,))


class LinearGluFunction(torch.autograd.Function):
    """Packed (``packed=True``: w1 the (2N, K) weight, b1 its (2N,) bias, w2 = b2 = None) or split
    (w1, w2 = gate and value weights, b1, b2 their biases). The packed form's gradients are one
    GEMM each, returned whole (no per-half slices for autograd to stitch back together)."""

    @staticmethod
    def forward(ctx, x, w1, w2, b1, b2, activation, packed, needs_grad):
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
        if packed:
            n = w1.shape[0] // 2
            wg, wv = w1[:n], w1[n:]
            bg, bv = (b1[:n], b1[n:]) if b1 is not None else (None, None)
        else:
            n = w1.shape[0]
            wg, wv, bg, bv = w1, w2, b1, b2
        y, pre = torch.ops.fastvit.linear_glu_fwd(x2, wg, wv, bg, bv, activation, needs_grad)
        if needs_grad:
            ctx.save_for_backward(x2, w1, w2, pre)
        ctx.activation, ctx.packed, ctx.has_bias, ctx.x_shape = activation, packed, b1 is not None, x.shape
        return y.reshape(*x.shape[:-1], n)

    @staticmethod
    def backward(ctx, dy):
        x2, w1, w2, pre = ctx.saved_tensors
        need_x, need_w1, need_w2, need_b1, need_b2 = ctx.needs_input_grad[:5]
        bias_grad = bool(ctx.has_bias and (need_b1 or need_b2))
        n = pre.shape[1] // 2
        dpre, dbias = torch.ops.fastvit.linear_glu_bwd(dy.reshape(-1, n), pre, ctx.activation, bias_grad)
        dx = dw1 = dw2 = db1 = db2 = None
        if ctx.packed:
            if need_x:
                dx = torch.matmul(dpre, w1).reshape(ctx.x_shape)
            if need_w1:
                dw1 = torch.matmul(dpre.t(), x2)
            db1 = dbias if bias_grad else None
        else:
            if need_x:
                dx = torch.addmm(torch.matmul(dpre[:, :n], w1), dpre[:, n:], w2).reshape(ctx.x_shape)
            if need_w1 or need_w2:
                dw = torch.matmul(dpre.t(), x2)
                dw1, dw2 = dw[:n], dw[n:]
            if bias_grad:
                db1, db2 = dbias[:n], dbias[n:]
        return dx, dw1, dw2, db1, db2, None, None, None


def triton_linear_glu(x: torch.Tensor, weight, bias, activation: str, packed: bool) -> torch.Tensor:
    """``fastvit.ops.linear_glu`` on fastvit's kernels (arguments validated there); autocast as
    ``triton_linear_gelu``."""
    if packed:
        x, w1, b1 = autocast_inputs(x, weight, bias)
        w2 = b2 = None
    else:
        b = tuple(bias) if bias is not None else (None, None)
        x, w1, w2, b1, b2 = autocast_inputs(x, weight[0], weight[1], *b)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w1, w2, b1, b2))
    return LinearGluFunction.apply(x, w1, w2, b1, b2, activation, packed, needs_grad)
