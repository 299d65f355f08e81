"""Plain-PyTorch definitions of every op: the test oracle and the ``eager`` path.

Written as the papers write them, with nothing fused: ``attention`` materialises the N x N
matrix on purpose. Tests call these in float64 to check the kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
              dropout_p: float = 0.0, training: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale) v over (..., N, D) tensors, the N x N matrix held in memory."""
    probs = attention_probs(q, k, scale)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=training)
    return probs @ v


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale): the full (..., N, N) attention matrix."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)


def attention_lse(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Natural-log logsumexp of each row of q k^T * scale, shape (..., N)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.logsumexp((q @ k.transpose(-2, -1)) * scale, dim=-1)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension, spelled out (biased variance, as F.layer_norm)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                   bias: torch.Tensor | None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, LayerNorm(h)) with h = x + residual."""
    h = x + residual
    return h, layer_norm(h, weight, bias, eps)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU, exact (x * Phi(x)), the tanh approximation or QuickGELU ("quick"), written out."""
    if approximate == "quick":
        return x / (1.0 + torch.exp(-1.702 * x))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                approximate: str = "none") -> torch.Tensor:
    """GELU(x @ weight^T + bias)."""
    return gelu(F.linear(x, weight, bias), approximate)
