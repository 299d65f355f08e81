"""Attention ops: the public functional API over the three backends.

``attention`` has the contract of ``F.scaled_dot_product_attention`` minus masks, on (B, H, N, D)
tensors. ``qkv_attention`` is the form FastViT uses: packed (B, N, 3*H*D) qkv in, (B, N, H*D) out.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import reference
from ..backend import resolve_backend
from ._checks import (MAX_HEAD_DIM, check_dropout, check_kernel_limit, check_positive_int, check_same,
                      check_scale, check_tensor)


def check_attention_args(q, k, v, dropout_p, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, ndim=4)
    check_same({"q": q, "k": k, "v": v}, "dtype")
    check_same({"q": q, "k": k, "v": v}, "device")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, H, N, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    for dim, label in ((0, "batch"), (1, "heads"), (3, "head_dim")):
        if q.shape[dim] != k.shape[dim]:
            raise ValueError(f"q and k must agree in {label} (dim {dim}), got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if q.shape[-1] < 1:
        raise ValueError(f"head_dim must be at least 1, got q of shape {tuple(q.shape)}")
    if k.shape[2] < 1:
        raise ValueError(f"k and v need at least one token, got shape {tuple(k.shape)}")
    return check_dropout(dropout_p), check_scale(scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0,
              scale: float | None = None, backend: str = "auto", return_lse: bool = False):
    """softmax(q k^T * scale) v for q (B, H, Nq, D), k and v (B, H, Nk, D).

    ``scale`` defaults to 1/sqrt(D). Dropout is applied to the probabilities whenever
    ``dropout_p > 0`` (as in SDPA: pass 0 in eval mode). With ``return_lse=True`` the result is
    ``(out, lse)`` where ``lse`` (B, H, Nq) is the fp32 natural-log logsumexp of each score row,
    which ``cls_attention`` turns back into an exact attention row.
    """
    dropout_p, scale = check_attention_args(q, k, v, dropout_p, scale)
    backend = resolve_backend(backend, q.device, q.dtype)
    if backend == "triton":
        check_kernel_limit(q.shape[-1], MAX_HEAD_DIM, "head_dim")
        from ._attention_triton import triton_attention
        return triton_attention(q, k, v, dropout_p=dropout_p, scale=scale, return_lse=return_lse)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    else:
        out = reference.attention(q, k, v, scale=scale, dropout_p=dropout_p)
    if return_lse:
        return out, reference.attention_lse(q.float(), k.float(), scale)
    return out


def split_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, N, D) views of a packed (B, N, 3*H*D) qkv, after checking its layout."""
    check_tensor(qkv, "qkv", ndim=3)
    check_positive_int(num_heads, "num_heads")
    B, N, C3 = qkv.shape
    if C3 % (3 * num_heads):
        raise ValueError(f"qkv's last dimension must be 3 * num_heads * head_dim, got {C3} with num_heads={num_heads}")
    return qkv.view(B, N, 3, num_heads, C3 // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)


def qkv_attention(qkv: torch.Tensor, num_heads: int, *, dropout_p: float = 0.0, scale: float | None = None,
                  backend: str = "auto", return_lse: bool = False):
    """Multi-head self-attention on the packed output of a qkv Linear.

    qkv (B, N, 3*H*D), laid out as timm's ``qkv`` Linear writes it (q|k|v, then heads);
    returns (B, N, H*D), ready for the ``proj`` Linear (and lse (B, H, N) with ``return_lse``).
    """
    q, k, v = split_qkv(qkv, num_heads)
    B, N, D = qkv.shape[0], qkv.shape[1], q.shape[-1]
    dropout_p, scale = check_attention_args(q, k, v, dropout_p, scale)
    backend = resolve_backend(backend, qkv.device, qkv.dtype)
    if backend == "triton":
        check_kernel_limit(D, MAX_HEAD_DIM, "head_dim")
        from ._attention_triton import triton_qkv_attention
        return triton_qkv_attention(qkv, num_heads, dropout_p=dropout_p, scale=scale, return_lse=return_lse)
    res = attention(q, k, v, dropout_p=dropout_p, scale=scale, backend=backend, return_lse=return_lse)
    out, lse = res if return_lse else (res, None)
    out = out.transpose(1, 2).reshape(B, N, num_heads * D)
    return (out, lse) if return_lse else out


def cls_attention(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float | None = None,
                  row: int = 0) -> torch.Tensor:
    """Exact attention probabilities of one query row (the CLS token by default) per head.

    q, k (B, H, N, D) and lse (B, H, N) from ``attention(..., return_lse=True)``; returns
    softmax(q[:, :, row] k^T * scale) of shape (B, H, N) in O(N D) memory: no N x N matrix.
    """
    check_tensor(q, "q", ndim=4)
    check_tensor(k, "k", ndim=4)
    check_tensor(lse, "lse", ndim=3)
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must agree in batch, heads and head_dim, got {tuple(q.shape)} and {tuple(k.shape)}")
    if lse.shape != q.shape[:3]:
        raise ValueError(f"lse must have shape (B, H, Nq) = {tuple(q.shape[:3])}, got {tuple(lse.shape)}")
    if not -q.shape[2] <= row < q.shape[2]:
        raise ValueError(f"row must index a query token (0 <= row < {q.shape[2]}), got {row}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.einsum("bhd,bhnd->bhn", q[:, :, row].float(), k.float()) * scale
    return torch.exp(logits - lse[:, :, row, None].float())
