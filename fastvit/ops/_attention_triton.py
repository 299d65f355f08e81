"""Triton path of the attention ops: ``torch.library`` custom ops and their autograd.

Four opaque ops, forward and backward separately, so ``torch.compile`` and ``torch.export`` see
one node per call and never trace into Triton:

  fastvit::attention_fwd      (q, k, v (B, H, N, D) any unit-last-stride layout) -> (out, lse)
  fastvit::attention_bwd      -> (dq, dk, dv)
  fastvit::qkv_attention_fwd  (qkv (B, N, 3*H*D)) -> (out (B, N, H*D), lse (B, H, N))
  fastvit::qkv_attention_bwd  -> dqkv (B, N, 3*H*D), one buffer, written in place by strides

Rotary position embeddings ride on the same ops: ``cos``/``sin`` (N - num_prefix_tokens, D) fp32
tables (None: no rotation), ``num_prefix_tokens`` and ``pairing``; the kernels rotate q and k as
they load them and write dq, dk for the unrotated inputs (``kernels/_attention_rope.py``).

The dropout seed is a CPU int64 scalar tensor drawn from torch's default generator (so
``torch.manual_seed`` reproduces a run), passed to both ops so the backward regenerates the
forward's mask; it is ``None`` when ``dropout_p == 0``.

Autocast (the ops-wide policy, ``fastvit.ops``): like ``F.scaled_dot_product_attention``, the
op runs in the autocast dtype when autocast is on for the inputs' device. The cast happens
before the autograd Function, so gradients flow back to the caller's dtype through ``.to``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch.autograd.function import once_differentiable

from ..kernels import attention as _kernels
from ._checks import autocast_inputs


def _seed_value(seed: Optional[torch.Tensor]) -> int:
    return 0 if seed is None else int(seed.item())


def draw_seed(dropout_p: float) -> Optional[torch.Tensor]:
    """The dropout seed of one attention call: a CPU int64 scalar from torch's default generator
    (``None`` without dropout, so p = 0 consumes no random numbers)."""
    if dropout_p <= 0.0:
        return None
    return torch.randint(0, 2**31 - 1, (), dtype=torch.int64, device="cpu")


def _heads_view(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D) view, no copy."""
    B, N, C = t.shape
    return t.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def _qkv_views(qkv: torch.Tensor, num_heads: int):
    """q, k, v (B, H, N, D) views into a (B, N, 3*H*D) buffer laid out as view(B, N, 3, H, D)."""
    B, N, C3 = qkv.shape
    return qkv.view(B, N, 3, num_heads, C3 // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)


# ----------------------------------------------------------------------------------------------
# Custom ops on (B, H, N, D) tensors
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("fastvit::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, scale: float,
                  seed: Optional[torch.Tensor], cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                  num_prefix_tokens: int = 0, pairing: str = "half") -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels.attention_fwd(q, k, v, sm_scale=scale, dropout_p=dropout_p, seed=_seed_value(seed),
                                  cos=cos, sin=sin, num_prefix_tokens=num_prefix_tokens, pairing=pairing)


@attention_fwd.register_fake
def _(q, k, v, dropout_p, scale, seed, cos=None, sin=None, num_prefix_tokens=0, pairing="half"):
    B, H, N, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, H, N), dtype=torch.float32)


@torch.library.custom_op("fastvit::attention_bwd", mutates_args=())
def attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, dlse: Optional[torch.Tensor], dropout_p: float, scale: float,
                  seed: Optional[torch.Tensor], cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                  num_prefix_tokens: int = 0,
                  pairing: str = "half") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels.attention_bwd(dout, q, k, v, out, lse, sm_scale=scale, dropout_p=dropout_p,
                                  seed=_seed_value(seed), dlse=dlse, cos=cos, sin=sin,
                                  num_prefix_tokens=num_prefix_tokens, pairing=pairing)


@attention_bwd.register_fake
def _(dout, q, k, v, out, lse, dlse, dropout_p, scale, seed, cos=None, sin=None, num_prefix_tokens=0,
      pairing="half"):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


# ----------------------------------------------------------------------------------------------
# Custom ops on the packed qkv Linear output
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("fastvit::qkv_attention_fwd", mutates_args=())
def qkv_attention_fwd(qkv: torch.Tensor, num_heads: int, dropout_p: float, scale: float,
                      seed: Optional[torch.Tensor], cos: Optional[torch.Tensor] = None,
                      sin: Optional[torch.Tensor] = None, num_prefix_tokens: int = 0,
                      pairing: str = "half") -> tuple[torch.Tensor, torch.Tensor]:
    B, N, C3 = qkv.shape
    q, k, v = _qkv_views(qkv, num_heads)
    out = qkv.new_empty((B, N, C3 // 3))
    _, lse = _kernels.attention_fwd(q, k, v, sm_scale=scale, dropout_p=dropout_p, seed=_seed_value(seed),
                                    out=_heads_view(out, num_heads), cos=cos, sin=sin,
                                    num_prefix_tokens=num_prefix_tokens, pairing=pairing)
    return out, lse


@qkv_attention_fwd.register_fake
def _(qkv, num_heads, dropout_p, scale, seed, cos=None, sin=None, num_prefix_tokens=0, pairing="half"):
    B, N, C3 = qkv.shape
    return qkv.new_empty((B, N, C3 // 3)), qkv.new_empty((B, num_heads, N), dtype=torch.float32)


@torch.library.custom_op("fastvit::qkv_attention_bwd", mutates_args=())
def qkv_attention_bwd(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                      dlse: Optional[torch.Tensor], num_heads: int, dropout_p: float, scale: float,
                      seed: Optional[torch.Tensor], cos: Optional[torch.Tensor] = None,
                      sin: Optional[torch.Tensor] = None, num_prefix_tokens: int = 0,
                      pairing: str = "half") -> torch.Tensor:
    q, k, v = _qkv_views(qkv, num_heads)
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    dq, dk, dv = _qkv_views(dqkv, num_heads)
    _kernels.attention_bwd(_heads_view(dout, num_heads), q, k, v, _heads_view(out, num_heads), lse,
                           sm_scale=scale, dropout_p=dropout_p, seed=_seed_value(seed), dlse=dlse,
                           dq=dq, dk=dk, dv=dv, cos=cos, sin=sin, num_prefix_tokens=num_prefix_tokens,
                           pairing=pairing)
    return dqkv


@qkv_attention_bwd.register_fake
def _(dout, qkv, out, lse, dlse, num_heads, dropout_p, scale, seed, cos=None, sin=None, num_prefix_tokens=0,
      pairing="half"):
    return torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, dropout_p, scale, seed, rope=None):
        rope = rope or RopeArgs()
        out, lse = torch.ops.fastvit.attention_fwd(q, k, v, dropout_p, scale, seed, *rope)
        ctx.save_for_backward(q, k, v, out, lse, seed, rope.cos, rope.sin)
        ctx.dropout_p, ctx.scale, ctx.rope_ints = dropout_p, scale, rope[2:]
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, seed, cos, sin = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = torch.ops.fastvit.attention_bwd(dout, q, k, v, out, lse, dlse, ctx.dropout_p, ctx.scale, seed,
                                                     cos, sin, *ctx.rope_ints)
        return dq, dk, dv, None, None, None, None


class QKVAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, num_heads, dropout_p, scale, seed, rope=None):
        rope = rope or RopeArgs()
        out, lse = torch.ops.fastvit.qkv_attention_fwd(qkv, num_heads, dropout_p, scale, seed, *rope)
        ctx.save_for_backward(qkv, out, lse, seed, rope.cos, rope.sin)
        ctx.num_heads, ctx.dropout_p, ctx.scale, ctx.rope_ints = num_heads, dropout_p, scale, rope[2:]
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlse):
        qkv, out, lse, seed, cos, sin = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dqkv = torch.ops.fastvit.qkv_attention_bwd(dout, qkv, out, lse, dlse, ctx.num_heads, ctx.dropout_p,
                                                   ctx.scale, seed, cos, sin, *ctx.rope_ints)
        return dqkv, None, None, None, None, None


class RopeArgs(NamedTuple):
    """The rotary arguments of the attention ops, in their order (no tables: no rotation). The
    tables are constants of the grid: no gradient flows into them."""
    cos: Optional[torch.Tensor] = None
    sin: Optional[torch.Tensor] = None
    num_prefix_tokens: int = 0
    pairing: str = "half"

    @classmethod
    def of(cls, rope) -> "RopeArgs | None":
        """From the public functions' ``rope=(cos, sin, num_prefix_tokens, pairing)`` (or None):
        tables as the kernels read them, fp32 and contiguous (a few hundred KB at most)."""
        if rope is None:
            return None
        cos, sin, n, pairing = rope
        return cls(cos.float().contiguous(), sin.float().contiguous(), int(n), str(pairing))


# ----------------------------------------------------------------------------------------------
# Entry points called by fastvit/ops/attention.py and rope.py (arguments already validated there)
# ----------------------------------------------------------------------------------------------


def triton_attention(q, k, v, *, dropout_p, scale, return_lse, rope=None):
    """softmax(q k^T * scale) v on (B, H, N, D) tensors with the Triton kernels; ``rope``
    (cos, sin, num_prefix_tokens, pairing) rotates q and k inside them."""
    q, k, v = autocast_inputs(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, lse = AttentionFunction.apply(q, k, v, float(dropout_p), scale, draw_seed(dropout_p), RopeArgs.of(rope))
    return (out, lse) if return_lse else out


def triton_qkv_attention(qkv, num_heads, *, dropout_p, scale, return_lse, rope=None):
    """Attention on the packed (B, N, 3*H*D) qkv, result (B, N, H*D), with the Triton kernels."""
    (qkv,) = autocast_inputs(qkv)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out, lse = QKVAttentionFunction.apply(qkv, int(num_heads), float(dropout_p), scale, draw_seed(dropout_p),
                                          RopeArgs.of(rope))
    return (out, lse) if return_lse else out
