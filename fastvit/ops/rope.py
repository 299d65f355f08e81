"""Rotary position embeddings on attention's queries and keys, then attention.

``rope_attention`` (q, k, v: (B, H, N, D), the ``attention`` contract) and
``rope_qkv_attention`` (the packed (B, N, 3*H*D) qkv, the form FastViT uses) rotate q and k of
every token after the first ``num_prefix_tokens`` (class and register tokens stay unrotated, as in
timm) by per-token tables ``cos``, ``sin`` (N - num_prefix_tokens, D), then attend.
``apply_rope`` is the rotation alone.

On the triton backend the attention kernels rotate q and k as they load them (in fp32, rounded
once to the input dtype) and the backward writes dq, dk for the unrotated inputs: rotated q and k
never exist in memory and no launch is added (``kernels/_attention_rope.py``;
``fastvit.rope.rope_fusion_traffic`` models the bytes that saves). eager and sdpa rotate in
PyTorch (``apply_rope``: in fp32, the result rounded once to the input dtype, as timm does) and
then call ``attention`` / ``qkv_attention``.

Pairing: "half" rotates channel i with channel i + D/2 (rotate_half: DINOv3, timm's
``apply_rot_embed_cat(half=True)``); "interleaved" rotates channels 2i and 2i+1 (EVA-02). The
rotation of a pair (a, b) by angle t is (a cos t - b sin t, b cos t + a sin t); the tables hold
cos t and sin t in each channel of the pair (``fastvit.rope.rope_tables`` builds them).
"""
from __future__ import annotations

import torch

from ..backend import resolve_backend
from ._checks import MAX_HEAD_DIM, ROPE_PAIRINGS, check_choice, check_kernel_limit, check_tensor
from .attention import attention, check_attention_args, qkv_attention, split_qkv


def _check_tables(cos, sin, rotated: int, head_dim: int, device) -> None:
    check_tensor(cos, "cos", ndim=2)
    check_tensor(sin, "sin", ndim=2)
    if head_dim % 2:
        raise ValueError(f"rope needs an even head_dim (channels rotate in pairs), got {head_dim}")
    want = (rotated, head_dim)
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape (N - num_prefix_tokens, head_dim) = {want}, got {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"{name} must be on the device of the queries ({device}), got {t.device}")


def _check_prefix(num_prefix_tokens, n: int) -> int:
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) \
            or not 0 <= num_prefix_tokens <= n:
        raise ValueError(f"num_prefix_tokens must be an int in [0, N = {n}], got {num_prefix_tokens!r}")
    return num_prefix_tokens


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str) -> torch.Tensor:
    """x * cos + partner(x) * sin over the last dim, partner(a, b) = (-b, a) per pair; computed in
    the tables' precision (fp32 for fp16/bf16 x) and rounded once."""
    if pairing == "half":
        a, b = x.chunk(2, dim=-1)
        partner = torch.cat([-b, a], dim=-1)
    else:
        partner = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return (x * cos + partner * sin).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, num_prefix_tokens: int = 0,
               pairing: str = "half") -> torch.Tensor:
    """x (..., N, D) with tokens num_prefix_tokens.. rotated by cos, sin (N - num_prefix_tokens, D);
    a new tensor (differentiable in x), the prefix tokens copied unchanged."""
    check_tensor(x, "x", min_ndim=2)
    pairing = check_choice(pairing, ROPE_PAIRINGS, "pairing")
    n = _check_prefix(num_prefix_tokens, x.shape[-2])
    _check_tables(cos, sin, x.shape[-2] - n, x.shape[-1], x.device)
    if n == 0:
        return _rotate(x, cos, sin, pairing)
    return torch.cat([x[..., :n, :], _rotate(x[..., n:, :], cos, sin, pairing)], dim=-2)


def rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                   num_prefix_tokens: int = 0, pairing: str = "half", dropout_p: float = 0.0,
                   scale: float | None = None, backend: str = "auto", return_lse: bool = False):
    """``attention(apply_rope(q), apply_rope(k), v)`` for self-attention (q and k: the same N)."""
    check_tensor(q, "q", ndim=4)
    check_tensor(k, "k", ndim=4)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"rope_attention rotates q and k by the same per-token tables: they must have the same "
                         f"number of tokens (dim 2), got q {tuple(q.shape)} and k {tuple(k.shape)}")
    dropout_p, scale = check_attention_args(q, k, v, dropout_p, scale)
    pairing = check_choice(pairing, ROPE_PAIRINGS, "pairing")
    n = _check_prefix(num_prefix_tokens, q.shape[2])
    _check_tables(cos, sin, q.shape[2] - n, q.shape[-1], q.device)
    if resolve_backend(backend, q.device, q.dtype) == "triton":
        check_kernel_limit(q.shape[-1], MAX_HEAD_DIM, "head_dim")
        from ._attention_triton import triton_attention
        return triton_attention(q, k, v, dropout_p=dropout_p, scale=scale, return_lse=return_lse,
                                rope=(cos, sin, n, pairing))
    rot = dict(num_prefix_tokens=n, pairing=pairing)
    return attention(apply_rope(q, cos, sin, **rot), apply_rope(k, cos, sin, **rot), v, dropout_p=dropout_p,
                     scale=scale, backend=backend, return_lse=return_lse)


def rope_qkv(qkv: torch.Tensor, num_heads: int, cos: torch.Tensor, sin: torch.Tensor, *,
             num_prefix_tokens: int = 0, pairing: str = "half") -> torch.Tensor:
    """The packed qkv (B, N, 3*H*D) with q and k rotated: a new tensor of the same layout, so the
    packed attention reads it by strides as it reads the qkv Linear's output."""
    B, N, D = qkv.shape[0], qkv.shape[1], split_qkv(qkv, num_heads)[0].shape[-1]
    pairing = check_choice(pairing, ROPE_PAIRINGS, "pairing")
    n = _check_prefix(num_prefix_tokens, N)
    _check_tables(cos, sin, N - n, D, qkv.device)
    parts = qkv.view(B, N, 3, num_heads, D)
    # One copy of the whole qkv, then the rotated q and k written over their slots (v and the
    # prefix tokens pass through): the layout stays packed for the attention that follows.
    out = qkv.clone()
    out.view(B, N, 3, num_heads, D)[:, n:, :2] = _rotate(parts[:, n:, :2], cos[:, None, None, :],
                                                         sin[:, None, None, :], pairing)
    return out


def rope_qkv_attention(qkv: torch.Tensor, num_heads: int, cos: torch.Tensor, sin: torch.Tensor, *,
                       num_prefix_tokens: int = 0, pairing: str = "half", dropout_p: float = 0.0,
                       scale: float | None = None, backend: str = "auto", return_lse: bool = False):
    """``qkv_attention`` with q and k rotated: qkv (B, N, 3*H*D) -> (B, N, H*D) (and the lse
    (B, H, N) with ``return_lse``)."""
    q, k, v = split_qkv(qkv, num_heads)
    if resolve_backend(backend, qkv.device, qkv.dtype) == "triton":
        N, D = qkv.shape[1], q.shape[-1]
        dropout_p, scale = check_attention_args(q, k, v, dropout_p, scale)
        pairing = check_choice(pairing, ROPE_PAIRINGS, "pairing")
        n = _check_prefix(num_prefix_tokens, N)
        _check_tables(cos, sin, N - n, D, qkv.device)
        check_kernel_limit(D, MAX_HEAD_DIM, "head_dim")
        from ._attention_triton import triton_qkv_attention
        return triton_qkv_attention(qkv, num_heads, dropout_p=dropout_p, scale=scale, return_lse=return_lse,
                                    rope=(cos, sin, n, pairing))
    rotated = rope_qkv(qkv, num_heads, cos, sin, num_prefix_tokens=num_prefix_tokens, pairing=pairing)
    return qkv_attention(rotated, num_heads, dropout_p=dropout_p, scale=scale, backend=backend,
                         return_lse=return_lse)
