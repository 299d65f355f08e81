"""Pooling the tokens into one feature vector: token (CLS), average, and attention pooling with a
learned query (``map``, SigLIP's head), with timm's parameter names."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .layers import AttentionProbe, LayerNorm, Mlp, attend, init_heads

GLOBAL_POOLS = ("token", "avg", "map", "")


class AttentionPoolLatent(nn.Module):
    """Multi-head attention pooling: one learned latent query attends to all tokens, then a
    projection and a pre-norm MLP with a residual (timm's ``AttentionPoolLatent`` with
    ``latent_len=1``). The single-query attention runs on the fused attention op."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6, gelu_approximate: str = "none", backend: str = "auto"):
        super().__init__()
        init_heads(self, dim, num_heads, backend)
        self.latent_len = 1
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.norm = LayerNorm(dim, eps=norm_eps, backend=backend)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate=gelu_approximate, backend=backend)
        self.probe: Optional[AttentionProbe] = None

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.latent, std=self.latent.shape[-1] ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H, D = self.num_heads, self.head_dim
        # the query per image, as timm computes it: (B, H, 1, D), contiguous (a broadcast
        # stride-0 batch would reach the kernel as one)
        q = self.q(self.latent.expand(B, -1, -1)).view(B, 1, H, D).transpose(1, 2)
        k, v = self.kv(x).view(B, N, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        out = attend(self, q, k, v, 0.0).transpose(1, 2).reshape(B, 1, C)
        out = self.proj_drop(self.proj(out))
        return (out + self.mlp(self.norm(out)))[:, 0]


def pool_tokens(x: torch.Tensor, global_pool: str, num_prefix_tokens: int,
                attn_pool: nn.Module | None = None) -> torch.Tensor:
    """(B, N, D) tokens -> (B, D) features (or the tokens unchanged for ``global_pool=""``)."""
    if attn_pool is not None:
        return attn_pool(x[:, num_prefix_tokens:])
    if global_pool == "avg":
        return x[:, num_prefix_tokens:].mean(dim=1)
    if global_pool == "token":
        return x[:, 0]
    return x
