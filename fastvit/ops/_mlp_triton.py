"""Triton path of ``fastvit.ops.mlp``: the custom op of the backward (``fastvit::mlp_bwd``) and
``MlpFunction``, the autograd Function of fc2(GELU(fc1(x))) that keeps the pre-activation but
not the activation.

Forward: fc1 + bias + GELU is linear_gelu's custom op (``fastvit::linear_gelu_fwd``, storing the
pre-activation ``pre`` when a gradient will be needed), fc2 a plain ``F.linear``; the GELU output
h (M, H), the largest activation of a block, is a transient of the forward. Backward: one custom
op running the two GEMMs of ``kernels/gelu_linear_bwd.py``, fc2's weight gradient
dW2 = dy^T @ GELU(pre) with GELU recomputed in its prologue, and dpre = (dy @ W2) * GELU'(pre)
with fc1's bias gradient from its epilogue; then fc2's bias gradient and fc1's two GEMMs (dx, dW1)
with torch, as ``LinearGeluFunction`` does. ``recompute=False`` saves h instead and runs the same
dW2 GEMM with the identity prologue (the storing path).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..kernels import gelu_linear_bwd as _k
from . import _linear_gelu_triton  # noqa: F401  (registers fastvit::linear_gelu_fwd, the forward's op)
from ._checks import autocast_inputs


@torch.library.custom_op("fastvit::mlp_bwd", mutates_args=())
def _mlp_bwd(dy: torch.Tensor, pre: torch.Tensor, fc2_weight: torch.Tensor, h: Optional[torch.Tensor],
             approximate: str, need_dpre: bool, bias_grad: bool,
             need_dw2: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dy (M, C), pre (M, H), fc2_weight (C, H), h (M, H) the stored activation or None (recomputed)
    -> (dpre (M, H), fc1's dbias (H,), dW2 (C, H)), each (0,) when not asked for."""
    # dW2 first: its output is small, and the (M, H) dpre is then the one large allocation.
    dw2 = (_k.gelu_linear_dw(dy, pre if h is None else h, approximate, recompute=h is None) if need_dw2
           else dy.new_empty((0,)))
    dpre, dbias = (_k.gelu_linear_dpre(dy, fc2_weight, pre, approximate, bias_grad=bias_grad) if need_dpre
                   else (dy.new_empty((0,)), None))
    return dpre, (dbias if dbias is not None else dy.new_empty((0,))), dw2


@_mlp_bwd.register_fake
def _(dy, pre, fc2_weight, h, approximate, need_dpre, bias_grad, need_dw2):
    (M, C), H = dy.shape, pre.shape[1]
    return (dy.new_empty((M, H) if need_dpre else (0,)), dy.new_empty((H,) if need_dpre and bias_grad else (0,)),
            dy.new_empty((C, H) if need_dw2 else (0,)))


class MlpFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, approximate, recompute, needs_grad):
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # a view when x's strides allow
        h, pre = torch.ops.fastvit.linear_gelu_fwd(x2, fc1_weight, fc1_bias, approximate, needs_grad)
        y = F.linear(h, fc2_weight, fc2_bias)
        if needs_grad:
            # pre, never h (unless recompute=False): h is freed when this function returns.
            ctx.save_for_backward(x2, fc1_weight, pre, fc2_weight, *(() if recompute else (h,)))
        ctx.approximate, ctx.x_shape = approximate, x.shape
        ctx.has_bias = (fc1_bias is not None, fc2_bias is not None)
        return y.reshape(*x.shape[:-1], fc2_weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, fc1_weight, pre, fc2_weight, *stored = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        bias_grad = bool(ctx.has_bias[0] and need_b1)
        need_dpre = bool(need_x or need_w1 or bias_grad)
        dy2 = dy.reshape(pre.shape[0], fc2_weight.shape[0])
        dpre, db1, dw2 = torch.ops.fastvit.mlp_bwd(dy2, pre, fc2_weight, stored[0] if stored else None,
                                                   ctx.approximate, need_dpre, bias_grad, bool(need_w2))
        db2 = dy2.sum(0) if ctx.has_bias[1] and need_b2 else None
        dx = torch.matmul(dpre, fc1_weight).reshape(ctx.x_shape) if need_x else None
        dw1 = torch.matmul(dpre.t(), x2) if need_w1 else None
        return (dx, dw1, db1 if bias_grad else None, dw2 if need_w2 else None, db2, None, None, None)


def triton_mlp(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor],
               fc2_weight: torch.Tensor, fc2_bias: Optional[torch.Tensor], approximate: str,
               recompute: bool) -> torch.Tensor:
    """fc2(GELU(fc1(x))) on fastvit's kernels; arguments already validated by ``fastvit.ops.mlp``.
    Autocast as ``triton_linear_gelu``: both linears run in the autocast dtype."""
    x, fc1_weight, fc1_bias, fc2_weight, fc2_bias = autocast_inputs(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias))
    return MlpFunction.apply(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, approximate, recompute, needs_grad)
