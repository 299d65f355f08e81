"""Triton path of the varlen attention ops: ``torch.library`` custom ops and their autograd.

Five opaque ops, so ``torch.compile`` and ``torch.export`` see one node per step and never trace
into Triton; every shape is a function of input shapes, so one graph with dynamic shapes serves
any mix of sequence lengths:

  fastvit::varlen_block_table        (cu_seqlens (S+1,), T) -> table (4, 2, (T + 15 S) // 16) int32
  fastvit::varlen_attention_fwd      (q, k, v (T, H, D) any unit-last-stride layout) -> (out, lse (H, T))
  fastvit::varlen_attention_bwd      -> (dq, dk, dv)
  fastvit::varlen_qkv_attention_fwd  (qkv (T, 3*H*D)) -> (out (T, H*D), lse (H, T))
  fastvit::varlen_qkv_attention_bwd  -> dqkv (T, 3*H*D), one buffer written in place by strides

The block table is built once per call, on the device, and saved for the backward. The dropout
seed is drawn as for ``attention`` (``_attention_triton.draw_seed``: torch's default generator,
so ``torch.manual_seed`` reproduces a run) and the backward regenerates the mask from it.
Autocast: as ``attention``, the op runs in the autocast dtype, cast before the Function.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from ..kernels import attention_varlen as _kernels
from ..kernels import attention_varlen_bwd as _kernels_bwd
from ._attention_triton import _seed_value, draw_seed
from ._checks import autocast_inputs


def _qkv_views(qkv: torch.Tensor, num_heads: int):
    """q, k, v (T, H, D) views into a (T, 3*H*D) buffer laid out as view(T, 3, H, D)."""
    T, C3 = qkv.shape
    return qkv.view(T, 3, num_heads, C3 // (3 * num_heads)).unbind(1)


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(T, H*D) -> (T, H, D) view, no copy."""
    return t.view(t.shape[0], num_heads, t.shape[1] // num_heads)


@torch.library.custom_op("fastvit::varlen_block_table", mutates_args=())
def varlen_block_table(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    return _kernels.varlen_block_table(cu_seqlens, total)


@varlen_block_table.register_fake
def _(cu_seqlens, total):
    cols = _kernels.table_columns(total, cu_seqlens.shape[0] - 1)
    return cu_seqlens.new_empty((len(_kernels.TABLE_BLOCKS), 2, cols), dtype=torch.int32)


# ----------------------------------------------------------------------------------------------
# (T, H, D) tensors
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("fastvit::varlen_attention_fwd", mutates_args=())
def varlen_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                         table: torch.Tensor, max_seqlen: int, dropout_p: float, scale: float,
                         seed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels.varlen_attention_fwd(q, k, v, cu_seqlens, table, max_seqlen=max_seqlen, sm_scale=scale,
                                         dropout_p=dropout_p, seed=_seed_value(seed))


@varlen_attention_fwd.register_fake
def _(q, k, v, cu_seqlens, table, max_seqlen, dropout_p, scale, seed):
    T, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((H, T), dtype=torch.float32)


@torch.library.custom_op("fastvit::varlen_attention_bwd", mutates_args=())
def varlen_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, dlse: Optional[torch.Tensor], cu_seqlens: torch.Tensor,
                         table: torch.Tensor, max_seqlen: int, dropout_p: float, scale: float,
                         seed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels_bwd.varlen_attention_bwd(dout, q, k, v, out, lse, cu_seqlens, table, max_seqlen=max_seqlen,
                                         sm_scale=scale, dropout_p=dropout_p, seed=_seed_value(seed), dlse=dlse)


@varlen_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, dlse, cu_seqlens, table, max_seqlen, dropout_p, scale, seed):
    return tuple(t.new_empty(t.shape) for t in (q, k, v))


# ----------------------------------------------------------------------------------------------
# The packed qkv Linear output
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("fastvit::varlen_qkv_attention_fwd", mutates_args=())
def varlen_qkv_attention_fwd(qkv: torch.Tensor, num_heads: int, cu_seqlens: torch.Tensor, table: torch.Tensor,
                             max_seqlen: int, dropout_p: float, scale: float,
                             seed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _qkv_views(qkv, num_heads)
    out = qkv.new_empty((qkv.shape[0], qkv.shape[1] // 3))
    _, lse = _kernels.varlen_attention_fwd(q, k, v, cu_seqlens, table, max_seqlen=max_seqlen, sm_scale=scale,
                                           dropout_p=dropout_p, seed=_seed_value(seed), out=_heads(out, num_heads))
    return out, lse


@varlen_qkv_attention_fwd.register_fake
def _(qkv, num_heads, cu_seqlens, table, max_seqlen, dropout_p, scale, seed):
    T, C3 = qkv.shape
    return qkv.new_empty((T, C3 // 3)), qkv.new_empty((num_heads, T), dtype=torch.float32)


@torch.library.custom_op("fastvit::varlen_qkv_attention_bwd", mutates_args=())
def varlen_qkv_attention_bwd(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             dlse: Optional[torch.Tensor], num_heads: int, cu_seqlens: torch.Tensor,
                             table: torch.Tensor, max_seqlen: int, dropout_p: float, scale: float,
                             seed: Optional[torch.Tensor]) -> torch.Tensor:
    q, k, v = _qkv_views(qkv, num_heads)
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    dq, dk, dv = _qkv_views(dqkv, num_heads)
    _kernels_bwd.varlen_attention_bwd(_heads(dout, num_heads), q, k, v, _heads(out, num_heads), lse, cu_seqlens, table,
                                  max_seqlen=max_seqlen, sm_scale=scale, dropout_p=dropout_p,
                                  seed=_seed_value(seed), dlse=dlse, dq=dq, dk=dk, dv=dv)
    return dqkv


@varlen_qkv_attention_bwd.register_fake
def _(dout, qkv, out, lse, dlse, num_heads, cu_seqlens, table, max_seqlen, dropout_p, scale, seed):
    return qkv.new_empty(qkv.shape)


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------


class VarlenAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, table, max_seqlen, dropout_p, scale, seed):
        out, lse = torch.ops.fastvit.varlen_attention_fwd(q, k, v, cu_seqlens, table, max_seqlen, dropout_p,
                                                          scale, seed)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, table, seed)
        ctx.max_seqlen, ctx.dropout_p, ctx.scale = max_seqlen, dropout_p, scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, cu_seqlens, table, seed = ctx.saved_tensors
        if dout is None:  # only lse was used downstream
            dout = torch.zeros_like(out)
        dq, dk, dv = torch.ops.fastvit.varlen_attention_bwd(dout, q, k, v, out, lse, dlse, cu_seqlens, table,
                                                            ctx.max_seqlen, ctx.dropout_p, ctx.scale, seed)
        return dq, dk, dv, None, None, None, None, None, None


class VarlenQKVAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, num_heads, cu_seqlens, table, max_seqlen, dropout_p, scale, seed):
        out, lse = torch.ops.fastvit.varlen_qkv_attention_fwd(qkv, num_heads, cu_seqlens, table, max_seqlen,
                                                              dropout_p, scale, seed)
        ctx.save_for_backward(qkv, out, lse, cu_seqlens, table, seed)
        ctx.num_heads, ctx.max_seqlen, ctx.dropout_p, ctx.scale = num_heads, max_seqlen, dropout_p, scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlse):
        qkv, out, lse, cu_seqlens, table, seed = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dqkv = torch.ops.fastvit.varlen_qkv_attention_bwd(dout, qkv, out, lse, dlse, ctx.num_heads, cu_seqlens, table,
                                                          ctx.max_seqlen, ctx.dropout_p, ctx.scale, seed)
        return dqkv, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# Entry points called by fastvit/ops/varlen_attention.py (arguments already validated there)
# ----------------------------------------------------------------------------------------------


def triton_varlen_attention(q, k, v, cu_seqlens, max_seqlen, *, dropout_p, scale, return_lse):
    q, k, v = autocast_inputs(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    table = torch.ops.fastvit.varlen_block_table(cu_seqlens, q.shape[0])
    out, lse = VarlenAttentionFunction.apply(q, k, v, cu_seqlens, table, max_seqlen, float(dropout_p), scale,
                                             draw_seed(dropout_p))
    return (out, lse) if return_lse else out


def triton_varlen_qkv_attention(qkv, num_heads, cu_seqlens, max_seqlen, *, dropout_p, scale, return_lse):
    (qkv,) = autocast_inputs(qkv)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    table = torch.ops.fastvit.varlen_block_table(cu_seqlens, qkv.shape[0])
    out, lse = VarlenQKVAttentionFunction.apply(qkv, int(num_heads), cu_seqlens, table, max_seqlen,
                                                float(dropout_p), scale, draw_seed(dropout_p))
    return (out, lse) if return_lse else out
