"""The ViT building blocks as nn.Modules. They hold parameters (named as in timm), store the
backend they were built with, and call ``fastvit.ops``; none of them launches a kernel itself.

Every module takes ``backend=`` at construction ("auto", "eager", "sdpa", "triton"; resolved
against each input's device by the ops) and no ``forward`` takes one; :func:`set_backend`
changes it on a whole module tree.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn as nn

from . import ops
from .backend import check_backend


def pair(v) -> tuple[int, int]:
    """An int or a pair of ints as a pair (image and patch sizes)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def set_backend(module: nn.Module, backend: str) -> nn.Module:
    """Set ``backend`` on every module in ``module``'s tree (itself included) that holds one."""
    backend = check_backend(backend)
    for m in module.modules():
        if isinstance(getattr(m, "backend", None), str):
            m.backend = backend
    return module


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, H/P * W/P, D) by a strided Conv2d."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768):
        super().__init__()
        self.img_size = pair(img_size)
        self.patch_size = pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, rescale the survivors."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters, same defaults) on fastvit's ops, with the residual add
    that comes before it available folded in (:meth:`forward_add`)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, backend: str = "auto"):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias)
        self.backend = check_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps, backend=self.backend)

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, norm(h))`` with ``h = x + residual``: one pass over memory on triton."""
        return ops.add_layer_norm(x, residual, self.weight, self.bias, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


# What an attention probe receives: the Attention module, its packed qkv (B, N, 3*H*D) and the
# logsumexp of every score row (B, H, N). Used by FastViT.attention_maps; see probe_attention.
AttentionProbe = Callable[["Attention", torch.Tensor, torch.Tensor], None]


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection (timm's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.backend = check_backend(backend)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.probe: Optional[AttentionProbe] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        p = self.attn_drop.p if self.training else 0.0
        kwargs = dict(dropout_p=p, scale=self.scale, backend=self.backend)
        if self.probe is None:
            out = ops.qkv_attention(qkv, self.num_heads, **kwargs)
        else:  # the same call, also returning the logsumexp the probe rebuilds rows from
            out, lse = ops.qkv_attention(qkv, self.num_heads, return_lse=True, **kwargs)
            self.probe(self, qkv, lse)
        return self.proj_drop(self.proj(out))

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, H, N, D) views of the packed qkv (B, N, 3*H*D)."""
        B, N, _ = qkv.shape
        return qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)


@contextmanager
def probe_attention(module: nn.Module, probe: AttentionProbe):
    """Within the block, every ``Attention`` in ``module`` calls ``probe(attn, qkv, lse)``."""
    attns = [m for m in module.modules() if isinstance(m, Attention)]
    for a in attns:
        a.probe = probe
    try:
        yield attns
    finally:
        for a in attns:
            a.probe = None


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout; fc1's bias and GELU are one op
    (``ops.linear_gelu``: fused in the GEMM epilogue on triton)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, approximate: str = "none",
                 backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)
        self.approximate = approximate
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ops.linear_gelu(x, self.fc1.weight, self.fc1.bias, self.approximate, backend=self.backend)
        return self.drop2(self.fc2(self.drop1(x)))

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, backend={self.backend!r}"


class Block(nn.Module):
    """Pre-norm transformer block, x + attn(norm1(x)) then + mlp(norm2(x)), in the form with
    every residual add folded into the LayerNorm after it (one pass over memory instead of two).

    ``forward(x, pending)``: the block's input is ``x + pending`` (``pending`` is the previous
    block's MLP branch, not yet added; None for the first block). Returns ``(h, branch)`` whose
    sum is the block's output, so the next LayerNorm (the next block's norm1, or the model's
    final norm) performs the add: ``sum(Block(...)(x))`` is timm's ``Block(...)(x)``. The same
    code runs on every backend (on eager and sdpa the folded add is a plain add).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 gelu_approximate: str = "none", eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)
        self.norm1 = LayerNorm(dim, eps=eps, backend=backend)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                              backend=backend)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=eps, backend=backend)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, approximate=gelu_approximate, backend=backend)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, pending: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if pending is None:
            h, y = x, self.norm1(x)
        else:
            h, y = self.norm1.forward_add(x, pending)
        h, y = self.norm2.forward_add(h, self.drop_path1(self.attn(y)))
        return h, self.drop_path2(self.mlp(y))
