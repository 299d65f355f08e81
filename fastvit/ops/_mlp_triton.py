"""Triton path of ``fastvit.ops.mlp``: the custom op of the backward (``fastvit::mlp_bwd``) and
the autograd Functions of fc2(GELU(fc1(x))) (``MlpFc1Function``, ``MlpFc2Function``) that keep
the pre-activation but not the activation.

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


class MlpFc1Function(torch.autograd.Function):
    """fc1 of the MLP as autograd sees it: pre = x W1^T + b1, a Linear (its backward: dx and dW1
    from dpre), with h = GELU(pre) from the same fused GEMM as a side output that carries no
    gradient. Saves x and W1. fc1's bias gradient comes out of ``MlpFc2Function``'s backward,
    where dpre's GEMM sums it in its epilogue (no second pass over dpre)."""

    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, approximate):
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # a view when x's strides allow
        h, pre = torch.ops.fastvit.linear_gelu_fwd(x2, fc1_weight, fc1_bias, approximate, True)
        ctx.mark_non_differentiable(h)
        ctx.set_materialize_grads(False)  # h gets no gradient: no (M, H) zeros made for it
        ctx.save_for_backward(x2, fc1_weight)
        ctx.x_shape = x.shape
        return pre, h

    @staticmethod
    def backward(ctx, dpre, _dh):
        x2, fc1_weight = ctx.saved_tensors
        need_x, need_w1 = ctx.needs_input_grad[:2]
        dx = torch.matmul(dpre, fc1_weight).reshape(ctx.x_shape) if need_x and dpre is not None else None
        dw1 = torch.matmul(dpre.t(), x2) if need_w1 and dpre is not None else None
        return dx, dw1, None, None


class MlpFc2Function(torch.autograd.Function):
    """fc2 of the MLP: y = h W2^T + b2 computed from h, differentiated through pre. Saves pre and
    W2, not h (``recompute=False``: h too). Its backward is the one custom op: dpre =
    (dy W2) * GELU'(pre) with fc1's bias gradient, and dW2 = dy^T GELU(pre); it takes fc1's bias
    as an input only to return that gradient.

    Two autograd nodes rather than one so that autograd frees this node's saved pre (4 x width
    per token) as soon as its backward returns, before fc1's backward allocates dx and dW1: the
    MLP backward's peak holds pre or fc1's gradients, never both."""

    @staticmethod
    def forward(ctx, pre, h, fc2_weight, fc2_bias, fc1_bias, approximate, recompute):
        y = F.linear(h, fc2_weight, fc2_bias)
        # pre, never h (unless recompute=False): h is freed when the MLP's forward returns.
        ctx.save_for_backward(pre, fc2_weight, *(() if recompute else (h,)))
        ctx.approximate = approximate
        ctx.has_bias = (fc1_bias is not None, fc2_bias is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        pre, fc2_weight, *stored = ctx.saved_tensors
        need_pre, _, need_w2, need_b2, need_b1 = ctx.needs_input_grad[:5]
        bias_grad = bool(ctx.has_bias[0] and need_b1)
        dpre, db1, dw2 = torch.ops.fastvit.mlp_bwd(dy, pre, fc2_weight, stored[0] if stored else None,
                                                   ctx.approximate, bool(need_pre or bias_grad), bias_grad,
                                                   bool(need_w2))
        db2 = dy.sum(0) if ctx.has_bias[1] and need_b2 else None
        return (dpre if need_pre else None, None, dw2 if need_w2 else None, db2, db1 if bias_grad else None,
                None, None)


def triton_mlp(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor],
               fc2_weight: torch.Tensor, fc2_bias: Optional[torch.Tensor], approximate: str,
               recompute: bool) -> torch.Tensor:
    """fc2(GELU(fc1(x))) on fastvit's kernels; arguments already validated by ``fastvit.ops.mlp``.
    Autocast as ``triton_linear_gelu``: both linears run in the autocast dtype."""
    x, fc1_weight, fc1_bias, fc2_weight, fc2_bias = autocast_inputs(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias))
    if not needs_grad:
        h, _ = torch.ops.fastvit.linear_gelu_fwd(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), fc1_weight,
                                                 fc1_bias, approximate, False)
        return F.linear(h, fc2_weight, fc2_bias).reshape(*x.shape[:-1], fc2_weight.shape[0])
    # fc1's bias enters fc1's node without a gradient edge: its gradient comes from fc2's node
    # (MlpFc1Function's docstring).
    b1 = fc1_bias.detach() if fc1_bias is not None else None
    pre, h = MlpFc1Function.apply(x, fc1_weight, b1, approximate)
    y = MlpFc2Function.apply(pre, h, fc2_weight, fc2_bias, fc1_bias, approximate, recompute)
    return y.reshape(*x.shape[:-1], fc2_weight.shape[0])
