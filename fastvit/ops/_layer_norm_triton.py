"""Triton path of the layer_norm ops: ``torch.library`` custom ops over the launchers in
``fastvit.kernels.layer_norm`` (with fake implementations, so ``torch.compile`` and
``torch.export`` see shapes without running a kernel), and the autograd Functions over them.

Autocast (the ops-wide policy, ``fastvit.ops``): autocast runs layer_norm in fp32 and returns
fp32. We do the same on every device without copying anything: the kernels read fp16/bf16
activations and fp32 parameters as they are, compute in fp32 anyway, and only the output dtype
changes. ``h`` of ``add_layer_norm`` is ``x + residual`` (``x + residual_scale * residual``) in
the promoted dtype of its operands, as the unfused add gives under autocast.

Layer scale (``residual_scale``, timm's gamma) rides in the same kernels: the forward's add
and, in the backward, the kernel that writes the gradient of h also writes gamma * that
gradient for the residual and the fp32 partial sums of dgamma, which the dweight/dbias
reduction sums. Without it, nothing changes (same ops, same launches, the residual not saved).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels import layer_norm as _k
from ..kernels._layer_norm_common import h_dtype_of
from ._checks import autocasting


# --------------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("fastvit::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                   out_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): y of x's shape in ``out_dtype`` (default x.dtype), fp32 statistics."""
    return _k.layer_norm_fwd(x, weight, bias, eps, out_dtype)


@layer_norm_fwd.register_fake
def _(x, weight, bias, eps, out_dtype):
    stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return x.new_empty(x.shape, dtype=out_dtype or x.dtype), stats, torch.empty_like(stats)


@torch.library.custom_op("fastvit::add_layer_norm_fwd", mutates_args=())
def add_layer_norm_fwd(x: Tensor, residual: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                       eps: float, out_dtype: Optional[torch.dtype],
                       residual_scale: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(h, y, mean, rstd) with h = x + residual (x + residual_scale * residual) and y = LayerNorm(h)."""
    return _k.add_layer_norm_fwd(x, residual, weight, bias, eps, out_dtype, residual_scale)


@add_layer_norm_fwd.register_fake
def _(x, residual, weight, bias, eps, out_dtype, residual_scale=None):
    h_dtype = h_dtype_of(x, residual, residual_scale)
    stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return (x.new_empty(x.shape, dtype=h_dtype), x.new_empty(x.shape, dtype=out_dtype or h_dtype),
            stats, torch.empty_like(stats))


@torch.library.custom_op("fastvit::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                   dh: Optional[Tensor], bias_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias). dx has x's dtype and includes ``dh`` when given; dweight and dbias
    are (N,) tensors, or empty (0,) ones when there is no weight / bias (``bias_dtype`` None):
    a custom op cannot return None."""
    dx, dw, db = _k.layer_norm_bwd(dy, x, weight, mean, rstd, dh, bias_dtype=bias_dtype)
    if dw is None:
        dw = x.new_empty((0,))
    if db is None:
        db = x.new_empty((0,))
    return dx, dw, db


@layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, dh, bias_dtype):
    n = x.shape[-1]
    dw = x.new_empty((n,), dtype=weight.dtype) if weight is not None else x.new_empty((0,))
    db = x.new_empty((n,), dtype=bias_dtype) if bias_dtype is not None else x.new_empty((0,))
    return x.new_empty(x.shape), dw, db


@torch.library.custom_op("fastvit::add_layer_norm_bwd", mutates_args=())
def add_layer_norm_bwd(dy: Tensor, h: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                       dh: Optional[Tensor], residual: Tensor, residual_scale: Tensor,
                       bias_dtype: Optional[torch.dtype],
                       x_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dresidual, dweight, dbias, dresidual_scale) of add_layer_norm with a layer scale;
    dweight / dbias empty (0,) when absent, as in ``layer_norm_bwd``."""
    dx, dr, dw, db, dg = _k.add_layer_norm_bwd(dy, h, weight, mean, rstd, dh, residual, residual_scale,
                                               bias_dtype=bias_dtype, x_dtype=x_dtype)
    return dx, dr, h.new_empty((0,)) if dw is None else dw, h.new_empty((0,)) if db is None else db, dg


@add_layer_norm_bwd.register_fake
def _(dy, h, weight, mean, rstd, dh, residual, residual_scale, bias_dtype, x_dtype):
    n = h.shape[-1]
    dw = h.new_empty((n,), dtype=weight.dtype) if weight is not None else h.new_empty((0,))
    db = h.new_empty((n,), dtype=bias_dtype) if bias_dtype is not None else h.new_empty((0,))
    return (h.new_empty(h.shape, dtype=x_dtype), h.new_empty(h.shape, dtype=residual.dtype), dw, db,
            h.new_empty((n,), dtype=residual_scale.dtype))


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------

class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        y, mean, rstd = torch.ops.fastvit.layer_norm_fwd(x, weight, bias, eps, out_dtype)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = torch.ops.fastvit.layer_norm_bwd(dy, x, weight, mean, rstd, None, ctx.bias_dtype)
        return (dx, dw if weight is not None else None, db if ctx.bias_dtype is not None else None, None, None)


class AddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, out_dtype, residual_scale=None):
        h, y, mean, rstd = torch.ops.fastvit.add_layer_norm_fwd(x, residual, weight, bias, eps, out_dtype,
                                                                residual_scale)
        # LayerNorm's backward needs its input: h, which we return anyway. x is never kept; the
        # residual only with a layer scale, for dgamma = sum(residual * dh).
        if residual_scale is None:
            ctx.save_for_backward(h, weight, mean, rstd)
        else:
            ctx.save_for_backward(h, weight, mean, rstd, residual, residual_scale)
        ctx.scaled = residual_scale is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.dtypes = (x.dtype, residual.dtype)
        # An output nobody used gets None, not a zero tensor: no LayerNorm backward without dy,
        # no extra read without dh.
        ctx.set_materialize_grads(False)
        return h, y

    @staticmethod
    def backward(ctx, dh, dy):
        if ctx.scaled:
            return _scaled_backward(ctx, dh, dy)
        h, weight, mean, rstd = ctx.saved_tensors
        dw = db = None
        if dy is None:
            dh_total = dh
        else:
            dh_total, dw, db = torch.ops.fastvit.layer_norm_bwd(dy, h, weight, mean, rstd, dh, ctx.bias_dtype)
            dw = dw if weight is not None else None
            db = db if ctx.bias_dtype is not None else None
        if dh_total is None:
            return None, None, None, None, None, None, None
        # h = x + residual: both get dh_total (autocast may have given them different dtypes).
        dx, dres = (dh_total if dh_total.dtype == dt else dh_total.to(dt) for dt in ctx.dtypes)
        return dx, dres, dw, db, None, None, None


def _scaled_backward(ctx, dh, dy):
    """AddLayerNormFunction's backward with a layer scale gamma: h = x + gamma * residual."""
    h, weight, mean, rstd, residual, gamma = ctx.saved_tensors
    x_dtype, r_dtype = ctx.dtypes
    if dy is None:
        if dh is None:
            return None, None, None, None, None, None, None
        # Only h was used: no LayerNorm backward to fold the products into, so plain PyTorch
        # (dgamma's row sum in fp32, rounded once).
        dg = (dh.float() * residual.float()).reshape(-1, h.shape[-1]).sum(0).to(gamma.dtype)
        return dh.to(x_dtype), (dh * gamma).to(r_dtype), None, None, None, None, dg
    dx, dres, dw, db, dg = torch.ops.fastvit.add_layer_norm_bwd(dy, h, weight, mean, rstd, dh, residual, gamma,
                                                                ctx.bias_dtype, x_dtype)
    return (dx, dres, dw if weight is not None else None, db if ctx.bias_dtype is not None else None,
            None, None, dg)


# --------------------------------------------------------------------------------------------
# Entry points called by fastvit/ops/layer_norm.py (arguments already validated there)
# --------------------------------------------------------------------------------------------

def _out_dtype(x: Tensor) -> Optional[torch.dtype]:
    """fp32 under autocast (autocast's policy for layer_norm), else the input's dtype."""
    return torch.float32 if autocasting(x.device) else None


def triton_layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    """``F.layer_norm(x, (x.shape[-1],), weight, bias, eps)`` with the Triton kernels."""
    return LayerNormFunction.apply(x, weight, bias, eps, _out_dtype(x))


def triton_add_layer_norm(x: Tensor, residual: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                          eps: float, residual_scale: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(h, F.layer_norm(h, ...))`` with ``h = x + residual_scale * residual``, one pass over memory."""
    return AddLayerNormFunction.apply(x, residual, weight, bias, eps, _out_dtype(x), residual_scale)
