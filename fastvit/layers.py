"""The ViT building blocks as nn.Modules. They hold parameters (named as in timm) and call
``fastvit.ops``; none of them launches a kernel itself."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .backend import resolve_backend


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, H/P * W/P, D) by a strided Conv2d."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768):
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
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


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, backend: str = "auto", return_lse: bool = False):
        p = self.attn_drop.p if self.training else 0.0
        res = ops.qkv_attention(self.qkv(x), self.num_heads, dropout_p=p, scale=self.scale, backend=backend,
                                return_lse=return_lse)
        out, lse = res if return_lse else (res, None)
        out = self.proj_drop(self.proj(out))
        return (out, lse) if return_lse else out


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout; on ``triton`` fc1's bias and GELU are fused."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate=approximate)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        if backend == "triton":
            x = ops.linear_gelu(x, self.fc1.weight, self.fc1.bias, self.approximate, backend=backend)
        else:
            x = self.act(self.fc1(x))
        return self.drop2(self.fc2(self.drop1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 gelu_approximate: str = "none", eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, approximate=gelu_approximate)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, backend: str = "auto", pending: torch.Tensor | None = None,
                fold_residual: bool = False):
        if fold_residual:  # through __call__, so module hooks (FSDP2's unshard) run
            return self.forward_pending(x, pending, backend)
        x = x + self.drop_path1(self.attn(_norm(self.norm1, x, backend), backend))
        x = x + self.drop_path2(self.mlp(_norm(self.norm2, x, backend), backend))
        return x

    def forward_pending(self, x: torch.Tensor, pending: torch.Tensor | None, backend: str = "triton",
                        return_lse: bool = False):
        """The same block with every residual add folded into the LayerNorm after it.

        ``x + pending`` is the block's true input (``pending`` is the previous block's MLP branch,
        not yet added, or None); returns ``(h, mlp_branch)`` whose sum is the block's output, so
        the next LayerNorm (the next block's norm1, or the final norm) performs the add.
        """
        if pending is None:
            h, y = x, _norm(self.norm1, x, backend)
        else:
            h, y = _add_norm(self.norm1, x, pending, backend)
        res = self.attn(y, backend, return_lse=return_lse)
        a, lse = res if return_lse else (res, None)
        h, y = _add_norm(self.norm2, h, self.drop_path1(a), backend)
        out = (h, self.drop_path2(self.mlp(y, backend)))
        return out + (lse,) if return_lse else out


def _norm(norm: nn.LayerNorm, x: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "triton":
        return ops.layer_norm(x, norm.weight, norm.bias, norm.eps, backend=backend)
    return norm(x)


def _add_norm(norm: nn.LayerNorm, x: torch.Tensor, residual: torch.Tensor, backend: str):
    return ops.add_layer_norm(x, residual, norm.weight, norm.bias, norm.eps, backend=backend)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def resolve_for(x: torch.Tensor, backend: str) -> str:
    return resolve_backend(backend, x.device)
