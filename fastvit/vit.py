"""FastViT: the Vision Transformer of the seeds, with timm's parameter names, on any backend."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import ops as _ops
from . import reference

from .backend import check_backend, resolve_backend
from .layers import Block, LayerNorm, PatchEmbed, pair, probe_attention, set_backend

LN_EPS = 1e-6  # timm's and torchvision's ViT LayerNorm eps


class FastViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
                 proj_drop_rate=0.0, drop_path_rate=0.0, global_pool="token", gelu_approximate="none",
                 backend="auto"):
        super().__init__()
        _check_config(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                      embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                      global_pool=global_pool, gelu_approximate=gelu_approximate,
                      rates=dict(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                                 proj_drop_rate=proj_drop_rate, drop_path_rate=drop_path_rate))
        self.backend = check_backend(backend)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # stochastic depth grows linearly with depth, 0 for the first block
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], gelu_approximate=gelu_approximate, eps=LN_EPS,
                  backend=backend)
            for i in range(depth)
        ])
        # timm puts the final norm after pooling (``fc_norm``) for average pooling; we follow it so
        # its checkpoints load unchanged.
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else LayerNorm(embed_dim, eps=LN_EPS, backend=backend)
        self.fc_norm = LayerNorm(embed_dim, eps=LN_EPS, backend=backend) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- initialisation ------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Truncated normal (std 0.02, cut at 2 std) for Linear weights, CLS token and position
        embeddings; zero biases; LayerNorm ones and zeros; Kaiming normal for the patch conv."""
        std = 0.02
        nn.init.trunc_normal_(self.cls_token, std=std, a=-2 * std, b=2 * std)
        nn.init.trunc_normal_(self.pos_embed, std=std, a=-2 * std, b=2 * std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- configuration -------------------------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int]:
        return self.patch_embed.patch_size

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    def set_backend(self, backend: str) -> "FastViT":
        """Set the backend of the model and of every submodule."""
        return set_backend(self, backend)

    def set_grad_checkpointing(self, enable: bool = True) -> "FastViT":
        """Recompute each block in the backward instead of keeping its activations (timm's name)."""
        self.grad_checkpointing = bool(enable)
        return self

    def set_img_size(self, img_size) -> "FastViT":
        """Resample the position embeddings for good to a new native image size."""
        img_size = pair(img_size)
        _check_divisible(img_size, self.patch_size, "img_size")
        new_grid = (img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1])
        with torch.no_grad():
            pos = resample_pos_embed(self.pos_embed.data, new_grid, self.patch_embed.grid_size)
        self.pos_embed = nn.Parameter(pos)
        self.patch_embed.img_size = img_size
        self.patch_embed.grid_size = new_grid
        self.patch_embed.num_patches = new_grid[0] * new_grid[1]
        return self

    # -- forward -------------------------------------------------------------------------------
    def check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor image batch, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        in_chans = self.patch_embed.proj.in_channels
        if x.shape[1] != in_chans:
            raise ValueError(f"x must have {in_chans} channels (dim 1), got {x.shape[1]} (shape {tuple(x.shape)})")
        _check_divisible(tuple(x.shape[-2:]), self.patch_size, "x's height and width")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        x = self.patch_embed(x)
        pos = resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> normalised tokens (B, 1 + H/P * W/P, D)."""
        self.check_input(x)
        # Every residual add rides in the LayerNorm after it (Block's docstring); the embedding
        # gets no local name, so the first block's output replaces it in memory.
        x, pending = self._embed(x), None
        for blk in self.blocks:
            x, pending = self._run(blk, x, pending)
        if isinstance(self.norm, LayerNorm):
            return self.norm.forward_add(x, pending)[1]
        return x + pending

    def _run(self, blk: Block, x: torch.Tensor, pending: torch.Tensor | None):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, pending, use_reentrant=False)
        return blk(x, pending)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- attention maps ------------------------------------------------------------------------
    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS token's attention row for every layer and head: fp32 (depth, B, heads, 1 + N_patches).

        ``maps[l, b, h, j]`` is the softmax weight the CLS query of layer ``l``, head ``h`` gives
        token ``j`` (0 is the CLS token itself, then the patches row by row); each row sums to 1.
        Rebuilt from each attention call's logsumexp (``ops.cls_attention``), so on the
        ``triton`` backend no N x N matrix ever exists. Eval semantics (no dropout) and no
        gradients, whatever the model's mode, which is kept. Render with ``fastvit.viz.overlay``.
        """
        def cls_row(attn, qkv, lse):
            q, k, _ = attn.split_qkv(qkv)
            return _ops.cls_attention(q, k, lse, attn.scale)
        return torch.stack(self._probe_forward(x, cls_row))

    @torch.no_grad()
    def attention_matrices(self, x: torch.Tensor) -> torch.Tensor:
        """Every attention matrix, fp32 (depth, B, heads, N, N), for attention rollout.

        Only on the ``eager`` backend (the one that holds these matrices anyway): memory grows as
        depth * B * heads * N^2 (180 MB for vit_base_patch16_224 at batch 8), so this is for small
        inputs. ``attention_maps`` gives the CLS rows on every backend.
        """
        self.check_input(x)
        backend = resolve_backend(self.backend, x.device, x.dtype)
        if backend != "eager":
            raise RuntimeError(
                f"attention_matrices needs the full N x N attention matrices, which only the 'eager' backend "
                f"materialises (this model resolves to {backend!r}); call model.set_backend('eager') first, "
                f"or use attention_maps(x) for the CLS rows on any backend")

        def full(attn, qkv, lse):
            q, k, _ = attn.split_qkv(qkv)
            return reference.attention_probs(q.float(), k.float(), attn.scale)
        return torch.stack(self._probe_forward(x, full))

    def _probe_forward(self, x: torch.Tensor, row_fn) -> list[torch.Tensor]:
        # The model's own forward, in eval mode, with every Attention handing its qkv and lse
        # to ``row_fn``: the maps come from the very computation the model does.
        rows: list[torch.Tensor] = []
        was_training = self.training
        self.eval()
        try:
            with probe_attention(self, lambda attn, qkv, lse: rows.append(row_fn(attn, qkv, lse))):
                self.forward_features(x)
        finally:
            self.train(was_training)
        return rows


def resample_pos_embed(pos_embed: torch.Tensor, new_grid, old_grid, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubic (antialiased) resampling of the patch-grid part of ``pos_embed`` (1, prefix + H*W, D)
    from ``old_grid`` to ``new_grid``; the CLS embedding is kept untouched. Interpolates in fp32."""
    new_grid, old_grid = tuple(new_grid), tuple(old_grid)
    if new_grid == old_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} patch positions but the grid {old_grid} needs "
                         f"{old_grid[0] * old_grid[1]}")
    dim = grid.shape[-1]
    g = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, g], dim=1)


def _check_divisible(size, patch, what: str) -> None:
    if size[0] % patch[0] or size[1] % patch[1] or size[0] < patch[0] or size[1] < patch[1]:
        raise ValueError(f"{what} {tuple(size)} must be positive multiples of the patch size {tuple(patch)}")


def _check_config(*, img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                  global_pool, gelu_approximate, rates) -> None:
    for name, v in (("in_chans", in_chans), ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int (0 for no head), got {num_classes!r}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
    _check_divisible(pair(img_size), pair(patch_size), "img_size")
    if global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
    if gelu_approximate not in ("none", "tanh"):
        raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {gelu_approximate!r}")
    for name, r in rates.items():
        if not 0.0 <= r < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {r!r}")


# -- variants ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantConfig:
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    in_chans: int = 3

    def kwargs(self) -> dict:
        return dict(self.__dict__)


_VARIANTS: dict[str, VariantConfig] = {
    "vit_tiny_patch16_224": VariantConfig(224, 16, 192, 12, 3),
    "vit_small_patch16_224": VariantConfig(224, 16, 384, 12, 6),
    "vit_base_patch16_224": VariantConfig(224, 16, 768, 12, 12),
    "vit_base_patch32_224": VariantConfig(224, 32, 768, 12, 12),
    "vit_base_patch8_224": VariantConfig(224, 8, 768, 12, 12),
    "vit_large_patch16_224": VariantConfig(224, 16, 1024, 24, 16),
    "vit_large_patch14_224": VariantConfig(224, 14, 1024, 24, 16),
    "vit_huge_patch14_224": VariantConfig(224, 14, 1280, 32, 16),
    # The seeds' CIFAR-10 family: 32 x 32 images, 4 x 4 patches, 10 classes.
    "vit_cifar_small": VariantConfig(32, 4, 192, 12, 3, num_classes=10),
    "vit_cifar_base": VariantConfig(32, 4, 384, 12, 6, num_classes=10),
    "vit_cifar_large": VariantConfig(32, 4, 512, 24, 8, num_classes=10),
}


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def model_config(name: str) -> VariantConfig:
    if not isinstance(name, str) or name not in _VARIANTS:
        close = difflib.get_close_matches(str(name), list(_VARIANTS), n=3, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint} (fastvit.list_models() lists all)")
    return _VARIANTS[name]


def create_model(name: str, **overrides) -> FastViT:
    """Build a registered variant, e.g. ``create_model("vit_base_patch16_224", num_classes=10)``."""
    kwargs = model_config(name).kwargs()
    kwargs.update(overrides)
    return FastViT(**kwargs)


def count_params(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 mlp_ratio=4.0, qkv_bias=True, global_pool="token", **_ignored) -> int:
    """Parameter count from the architecture's formula, independent of any module."""
    h, w = pair(img_size)
    ph, pw = pair(patch_size)
    d = embed_dim
    hidden = int(d * mlp_ratio)
    tokens = (h // ph) * (w // pw) + 1
    patch = in_chans * ph * pw * d + d
    embed = d + tokens * d  # cls token, position embeddings
    block = (2 * d  # norm1
             + 3 * d * d + (3 * d if qkv_bias else 0)  # qkv
             + d * d + d  # proj
             + 2 * d  # norm2
             + d * hidden + hidden  # fc1
             + hidden * d + d)  # fc2
    final_norm = 2 * d
    head = d * num_classes + num_classes if num_classes > 0 else 0
    return patch + embed + depth * block + final_norm + head
