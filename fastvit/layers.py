"""The ViT building blocks as nn.Modules. They hold parameters (named as in timm), store the
backend they were built with, and call ``fastvit.ops``; none of them launches a kernel itself.

Every module takes ``backend=`` at construction ("auto", "eager", "sdpa", "triton"; resolved
against each input's device by the ops) and no ``forward`` takes one; :func:`set_backend`
changes it on a whole module tree.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, NamedTuple, Optional

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
                 embed_dim: int = 768, bias: bool = True):
        super().__init__()
        self.img_size = pair(img_size)
        self.patch_size = pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

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

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor,
                    residual_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, norm(h))`` with ``h = x + residual`` (times ``residual_scale``, a layer scale's
        gamma, when given): one pass over memory on triton."""
        return ops.add_layer_norm(x, residual, self.weight, self.bias, self.eps, backend=self.backend,
                                  residual_scale=residual_scale)


class LayerScale(nn.Module):
    """timm's layer scale: a learned per-channel ``gamma`` on a residual branch. FastViT never
    calls it: ``gamma`` is applied inside the add that is folded into the next LayerNorm."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.init_values = float(init_values)
        self.gamma = nn.Parameter(torch.full((dim,), self.init_values))

    def init_weights(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def _gamma(ls: nn.Module) -> torch.Tensor | None:
    return ls.gamma if isinstance(ls, LayerScale) else None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


def init_heads(module: nn.Module, dim: int, num_heads: int, backend: str) -> None:
    """What every attention module holds: its backend, heads, head dim and softmax scale."""
    if dim % num_heads:
        raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({num_heads})")
    module.backend = check_backend(backend)
    module.num_heads = num_heads
    module.head_dim = dim // num_heads
    module.scale = module.head_dim ** -0.5


# What an attention probe receives: the module, its queries and keys (B, H, Nq, D), (B, H, N, D)
# as the attention op saw them, and the logsumexp of every score row (B, H, Nq). Used by
# FastViT.attention_maps through probe_attention.
AttentionProbe = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], None]


def attend(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """``ops.attention`` for a module with ``scale``, ``backend`` and ``probe``: (B, H, Nq, D)."""
    if module.probe is None:
        return ops.attention(q, k, v, dropout_p=dropout_p, scale=module.scale, backend=module.backend)
    out, lse = ops.attention(q, k, v, dropout_p=dropout_p, scale=module.scale, backend=module.backend,
                             return_lse=True)
    module.probe(module, q, k, lse)
    return out


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection (timm's ``Attention``), optionally with
    LayerNorm on q and k over the head dim (``qk_norm``)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qk_norm: bool = False,
                 proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, norm_eps: float = 1e-6,
                 backend: str = "auto"):
        super().__init__()
        init_heads(self, dim, num_heads, backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        norm = (lambda: LayerNorm(self.head_dim, eps=norm_eps, backend=backend)) if qk_norm else nn.Identity
        self.q_norm, self.k_norm = norm(), norm()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.probe: Optional[AttentionProbe] = None

    def forward(self, x: torch.Tensor, packing=None) -> torch.Tensor:
        """x (B, N, C); or packed images (1, T, C) with their ``packing`` (fastvit.packed)."""
        qkv = self.qkv(x)
        p = self.attn_drop.p if self.training else 0.0
        if packing is not None:
            return self.proj_drop(self.proj(self._packed(qkv, packing, p)))
        if isinstance(self.q_norm, LayerNorm):
            # q and k normalised per head (two LayerNorm launches), then attention on the views.
            q, k, v = self.split_qkv(qkv)
            out = attend(self, self.q_norm(q), self.k_norm(k), v, p)
            out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        elif self.probe is None:
            # the packed form: q, k, v read from the qkv output by strides, (B, N, H*D) written
            out = ops.qkv_attention(qkv, self.num_heads, dropout_p=p, scale=self.scale, backend=self.backend)
        else:  # the same call, also returning the logsumexp the probe rebuilds rows from
            out, lse = ops.qkv_attention(qkv, self.num_heads, dropout_p=p, scale=self.scale, backend=self.backend,
                                         return_lse=True)
            q, k, _ = self.split_qkv(qkv)
            self.probe(self, q, k, lse)
        return self.proj_drop(self.proj(out))

    def _packed(self, qkv: torch.Tensor, packing, p: float) -> torch.Tensor:
        # each image attends to itself only: variable-length attention, no padding
        if self.probe is not None:
            raise ValueError("attention maps are computed on image batches (B, C, H, W), not on packed lists")
        T = qkv.shape[1]
        kwargs = dict(dropout_p=p, scale=self.scale, backend=self.backend)
        if isinstance(self.q_norm, LayerNorm):
            q, k, v = qkv.view(T, 3, self.num_heads, self.head_dim).unbind(1)
            out = ops.varlen_attention(self.q_norm(q), self.k_norm(k), v, packing.cu_seqlens, packing.max_seqlen,
                                       **kwargs)
        else:
            out = ops.varlen_qkv_attention(qkv.view(T, -1), self.num_heads, packing.cu_seqlens, packing.max_seqlen,
                                           **kwargs)
        return out.reshape(1, T, -1)

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, H, N, D) views of the packed qkv (B, N, 3*H*D)."""
        B, N, _ = qkv.shape
        return qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)


@contextmanager
def probe_attention(modules, probe: AttentionProbe):
    """Within the block, every module in ``modules`` with a ``probe`` attribute (Attention, the
    MAP pooling head) calls ``probe(module, q, k, lse)``."""
    modules = list(modules)
    for a in modules:
        a.probe = probe
    try:
        yield modules
    finally:
        for a in modules:
            a.probe = None


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout. Without an active dropout between GELU and fc2
    the whole MLP is one op (``ops.mlp``: on triton fc1's bias and GELU fused in the GEMM
    epilogue, and the GELU output recomputed in the backward rather than kept); with one,
    ``ops.linear_gelu``, dropout, then fc2. ``approximate``: "none" (erf GELU), "tanh" or "quick"
    (QuickGELU)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, approximate: str = "none",
                 bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)
        self.approximate = approximate
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop1.p == 0 or not self.training:
            return self.drop2(ops.mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                      self.approximate, backend=self.backend))
        x = ops.linear_gelu(x, self.fc1.weight, self.fc1.bias, self.approximate, backend=self.backend)
        return self.drop2(self.fc2(self.drop1(x)))

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, backend={self.backend!r}"


class Pending(NamedTuple):
    """A residual branch not yet added: the block output is ``h + scale * branch`` (``scale``, a
    layer scale's gamma, or None). The next LayerNorm performs that add in its own pass."""
    branch: torch.Tensor
    scale: Optional[torch.Tensor] = None

    def add_to(self, h: torch.Tensor) -> torch.Tensor:
        return h + (self.branch if self.scale is None else self.branch * self.scale)


class Block(nn.Module):
    """Pre-norm transformer block, x + ls1(attn(norm1(x))) then + ls2(mlp(norm2(x))), in the form
    with every residual add (and its layer scale) folded into the LayerNorm after it: one pass
    over memory instead of two.

    ``forward(x, pending)``: the block's input is ``pending.add_to(x)`` (``pending`` is the
    previous block's MLP branch, not yet added; None for the first block). Returns
    ``(h, pending)``, whose ``pending.add_to(h)`` is the block's output, so the next LayerNorm
    (the next block's norm1, or the model's final norm) performs the add. The same code runs on
    every backend (on eager and sdpa the folded add is a plain add).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, proj_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 init_values: float | None = None, drop_path: float = 0.0, gelu_approximate: str = "none",
                 eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)
        self.norm1 = LayerNorm(dim, eps=eps, backend=backend)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, proj_bias=proj_bias,
                              attn_drop=attn_drop, proj_drop=proj_drop, norm_eps=eps, backend=backend)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=eps, backend=backend)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, approximate=gelu_approximate, bias=proj_bias,
                       backend=backend)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, pending: Pending | None = None, packing=None) -> tuple[torch.Tensor, Pending]:
        """``packing`` (fastvit.packed.Packing) when x holds the packed tokens of several images."""
        if pending is None:
            h, y = x, self.norm1(x)
        else:
            h, y = self.norm1.forward_add(x, pending.branch, pending.scale)
        h, y = self.norm2.forward_add(h, self.drop_path1(self.attn(y, packing)), _gamma(self.ls1))
        return h, Pending(self.drop_path2(self.mlp(y)), _gamma(self.ls2))
