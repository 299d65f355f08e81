"""What the analytic counts (FLOPs, memory, the speed cases) need to know about a FastViT, read
from the model itself.

:func:`vit_shape` builds the ``FastViT`` of a registered name, a ``VariantConfig`` or a dict of
``FastViT`` arguments under ``torch.device("meta")`` (no storage, no initialisation: tens of
milliseconds even for ViT-H) and reads its module tree: the patch embedding, the prefix tokens
(class, distillation, registers), how many tokens the position embedding covers, each block's
attention (heads, head dim, which of q, k, v have a bias, qk_norm), MLP (GELU ``Mlp``, the
``scale_mlp`` norm inside it, ``SwiGLU`` with ``fc1_g``/``fc1_x``, the packed ``SwiGLUPacked``) and
layer scale, the rotary embeddings, the pooling (token, avg, or MAP's ``AttentionPoolLatent``
with its own q, kv, proj, norm and MLP), where the final LayerNorm sits (``norm`` on every
token or ``fc_norm`` on the pooled features) and the head(s). Nothing mirrors the constructor's
defaults, so a new option of ``FastViT`` cannot be silently mis-counted: a module this file does
not know raises.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["ViTShape", "BlockShape", "MlpShape", "AttnPoolShape", "vit_shape", "read_model"]

# Mlp.approximate -> the activation's name in the counts
_GELU_NAMES = {"none": "gelu", "tanh": "gelu_tanh", "quick": "gelu_quick"}


@dataclass(frozen=True)
class MlpShape:
    """An MLP: ``kind`` "mlp" (fc1 -> activation -> fc2), "swiglu" (fc1_g, fc1_x: two GEMMs of
    ``hidden`` outputs) or "swiglu_packed" (one fc1 of 2 * ``hidden`` outputs); then act(gate) *
    value, the optional LayerNorm over the hidden width (``norm``: EVA's scale_mlp) and fc2."""
    kind: str
    hidden: int
    activation: str  # "gelu", "gelu_tanh", "gelu_quick" for "mlp"; "silu" or "gelu" (the gate's) for the gated kinds
    bias: bool
    norm: bool

    @property
    def gated(self) -> bool:
        return self.kind != "mlp"

    @property
    def fc1_out(self) -> int:
        """Output width of the first layer (both halves of a gated MLP)."""
        return 2 * self.hidden if self.gated else self.hidden


@dataclass(frozen=True)
class BlockShape:
    """One transformer block: ``kind`` "vit" (``fastvit.layers.Block``) or "eva"
    (``fastvit.eva.EvaBlock``); ``qkv_bias`` "qkv", "qv" (EVA: the key has none) or "none";
    ``rope``: q and k of the patch tokens rotated."""
    kind: str
    num_heads: int
    head_dim: int
    qkv_bias: str
    qk_norm: bool
    proj_bias: bool
    layer_scale: bool
    rope: bool
    mlp: MlpShape


@dataclass(frozen=True)
class AttnPoolShape:
    """MAP pooling (``fastvit.pooling.AttentionPoolLatent``): ``latent_len`` learned queries
    attend to the patch tokens, then proj, and a pre-norm MLP with a residual."""
    num_heads: int
    head_dim: int
    latent_len: int
    q_bias: bool
    kv_bias: bool
    proj_bias: bool
    mlp: MlpShape


@dataclass(frozen=True)
class ViTShape:
    """Everything the analytic counts need to know about a model, at its evaluation resolution.

    ``num_heads``, ``mlp_hidden``, ``qkv_bias`` and ``gelu_approximate`` describe the first block
    (every FastViT block has the same shape; ``blocks`` holds each one as read)."""
    name: str
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    num_classes: int
    qkv_bias: bool
    global_pool: str
    gelu_approximate: str
    params: int
    patch_bias: bool          # the patch convolution's bias (timm drops it with pre_norm)
    class_token: bool
    dist_token: bool
    reg_tokens: int
    pos_embed: bool           # learned absolute position embeddings (False: rope only)
    pos_embed_prefix: int     # prefix tokens the position embedding covers (0 with no_embed_class)
    norm_pre: bool            # LayerNorm before the blocks (CLIP)
    blocks: tuple             # BlockShape per block
    rope: str | None          # the rotary pairing ("interleaved", "half") or None
    norm: bool                # final LayerNorm on every token
    fc_norm: bool             # LayerNorm on the pooled features instead
    attn_pool: AttnPoolShape | None
    head_dist: bool           # DeiT's distillation head beside ``head``

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]

    @property
    def patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def tokens(self) -> int:
        """Every token the blocks see: the patches and every prefix token."""
        return self.patches + self.num_prefix_tokens

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def pos_embed_tokens(self) -> int:
        """Tokens the position embedding is added to."""
        return self.patches + self.pos_embed_prefix if self.pos_embed else 0

    @property
    def rotated_tokens(self) -> int:
        """Tokens whose q and k each rope block rotates (the patches; prefix tokens are not)."""
        return self.patches if self.rope is not None else 0

    @property
    def eva(self) -> bool:
        return any(b.kind == "eva" for b in self.blocks)

    @property
    def layer_scale(self) -> bool:
        return any(b.layer_scale for b in self.blocks)

    def prefix_description(self) -> str:
        """E.g. "CLS + 4 registers", "no prefix token"."""
        parts = (["CLS"] if self.class_token else []) + (["distillation token"] if self.dist_token else [])
        if self.reg_tokens:
            parts.append(f"{self.reg_tokens} register{'s' if self.reg_tokens > 1 else ''}")
        return " + ".join(parts) if parts else "no prefix token"

    def features(self) -> dict:
        """The architecture as counted, JSON-ready (``FlopReport.structure``)."""
        b = self.blocks[0]
        out = {"blocks": b.kind, "prefix": self.prefix_description(), "prefix_tokens": self.num_prefix_tokens,
               "class_token": self.class_token, "dist_token": self.dist_token, "reg_tokens": self.reg_tokens,
               "pos_embed_tokens": self.pos_embed_tokens, "norm_pre": self.norm_pre, "qkv_bias": b.qkv_bias,
               "qk_norm": b.qk_norm, "mlp": b.mlp.kind, "mlp_hidden": b.mlp.hidden,
               "mlp_activation": b.mlp.activation, "mlp_norm": b.mlp.norm, "layer_scale": b.layer_scale,
               "rope": self.rope, "global_pool": self.global_pool,
               "final_norm": "norm" if self.norm else ("fc_norm" if self.fc_norm else None),
               "heads": 2 if self.head_dist else (1 if self.num_classes else 0)}
        return out

    def at(self, img_size) -> "ViTShape":
        """The same model evaluated at another ``img_size`` (int or (H, W))."""
        size = _pair_checked(img_size)
        ph, pw = self.patch_size
        if size[0] % ph or size[1] % pw or size[0] < ph or size[1] < pw:
            raise ValueError(f"img_size {size} must be positive multiples of the patch size {(ph, pw)}")
        return dataclasses.replace(self, img_size=size)


# -- reading a model -------------------------------------------------------------------------------
def _is_norm(m) -> bool:
    return isinstance(m, nn.LayerNorm)


def _bias(linear) -> bool:
    return linear.bias is not None


def _read_mlp(mlp: nn.Module) -> MlpShape:
    norm = _is_norm(getattr(mlp, "norm", None))
    if hasattr(mlp, "fc1_g"):  # fastvit.eva.SwiGLU: gate and value apart
        return MlpShape("swiglu", mlp.fc1_g.out_features, mlp.activation, _bias(mlp.fc1_g), norm)
    if hasattr(mlp, "activation") and hasattr(mlp, "fc1"):  # SwiGLUPacked: [gate | value] in one fc1
        return MlpShape("swiglu_packed", mlp.fc1.out_features // 2, mlp.activation, _bias(mlp.fc1), norm)
    if hasattr(mlp, "approximate") and hasattr(mlp, "fc1"):  # fastvit.layers.Mlp (eva.NormMlp: + norm)
        return MlpShape("mlp", mlp.fc1.out_features, _GELU_NAMES[mlp.approximate], _bias(mlp.fc1), norm)
    raise TypeError(f"vit_shape cannot read an MLP of type {type(mlp).__name__}")


def _read_block(blk: nn.Module, model) -> BlockShape:
    from ..eva import EvaBlock
    from ..layers import Block, LayerScale

    attn = blk.attn
    if isinstance(blk, EvaBlock):
        if attn.qkv is not None:
            qkv_bias = "qv" if attn.q_bias is not None else "none"
        else:
            qkv_bias = ("qv" if _bias(attn.q_proj) else "none") if not _bias(attn.k_proj) else "qkv"
        return BlockShape("eva", attn.num_heads, attn.head_dim, qkv_bias, False, _bias(attn.proj),
                          blk.gamma_1 is not None, model.rope is not None, _read_mlp(blk.mlp))
    if isinstance(blk, Block):
        return BlockShape("vit", attn.num_heads, attn.head_dim, "qkv" if _bias(attn.qkv) else "none",
                          _is_norm(attn.q_norm), _bias(attn.proj), isinstance(blk.ls1, LayerScale), False,
                          _read_mlp(blk.mlp))
    raise TypeError(f"vit_shape cannot read a block of type {type(blk).__name__}")


def _read_attn_pool(pool) -> AttnPoolShape | None:
    if pool is None:
        return None
    return AttnPoolShape(pool.num_heads, pool.head_dim, pool.latent_len, _bias(pool.q), _bias(pool.kv),
                         _bias(pool.proj), _read_mlp(pool.mlp))


def read_model(model, name: str | None = None) -> ViTShape:
    """The :class:`ViTShape` of a built ``FastViT`` (on any device, meta included) at its own
    ``img_size``."""
    blocks = tuple(_read_block(b, model) for b in model.blocks)
    first = blocks[0]
    proj = model.patch_embed.proj
    pos_prefix = 0
    if model.pos_embed is not None:
        pos_prefix = model.pos_embed.shape[1] - model.patch_embed.num_patches
    return ViTShape(
        name=name or getattr(model, "name", None) or "FastViT", img_size=tuple(model.img_size),
        patch_size=tuple(model.patch_size), in_chans=proj.in_channels, embed_dim=model.embed_dim,
        depth=len(blocks), num_heads=first.num_heads, mlp_hidden=first.mlp.hidden, num_classes=model.num_classes,
        qkv_bias=first.qkv_bias != "none", global_pool=model.global_pool, gelu_approximate=model.gelu_approximate,
        params=sum(p.numel() for p in model.parameters()), patch_bias=proj.bias is not None,
        class_token=model.cls_token is not None, dist_token=model.dist_token is not None,
        reg_tokens=model.reg_token.shape[1] if model.reg_token is not None else 0,
        pos_embed=model.pos_embed is not None, pos_embed_prefix=pos_prefix, norm_pre=_is_norm(model.norm_pre),
        blocks=blocks, rope=model.rope.config.pairing if model.rope is not None else None,
        norm=_is_norm(model.norm), fc_norm=_is_norm(model.fc_norm), attn_pool=_read_attn_pool(model.attn_pool),
        head_dist=isinstance(getattr(model, "head_dist", None), nn.Linear),
    )


# -- resolving a model, a name or a config into a ViTShape ----------------------------------------
def vit_shape(model_or_name, img_size=None, **overrides) -> ViTShape:
    """A :class:`ViTShape` for a ``FastViT``, a registered name (``fastvit.list_models()``), a
    ``VariantConfig``, a dict of ``FastViT`` keyword arguments or a ``ViTShape``, evaluated at
    ``img_size`` (int or (H, W); default: the model's own). ``overrides`` (e.g. ``depth=2``)
    apply to names and configs, not to a built model. Names and configs are built on the meta
    device and read (:func:`read_model`)."""
    from ..vit import FastViT, VariantConfig, model_config

    if isinstance(model_or_name, (FastViT, ViTShape)):
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} apply to a model name or config, not to a built "
                             f"{type(model_or_name).__name__}")
        shape = model_or_name if isinstance(model_or_name, ViTShape) else read_model(model_or_name)
    else:
        if isinstance(model_or_name, str):
            name, kwargs = model_or_name, model_config(model_or_name).kwargs()
        elif isinstance(model_or_name, VariantConfig):
            name, kwargs = "custom", model_or_name.kwargs()
        elif isinstance(model_or_name, dict):
            name, kwargs = "custom", dict(model_or_name)
        else:
            raise TypeError("model_or_name must be a FastViT, a registered model name, a VariantConfig, a dict "
                            f"of FastViT arguments or a ViTShape, got {type(model_or_name).__name__}")
        kwargs.update(overrides)
        unknown = set(kwargs) - _fastvit_arguments()
        if unknown:
            raise ValueError(f"unknown FastViT argument(s) {sorted(unknown)}")
        try:
            key = (name, tuple(sorted(kwargs.items())))
            hash(key)
        except TypeError:  # an unhashable value (a rope dict): built every time
            shape = _build_and_read(name, kwargs)
        else:
            shape = _cached_shape(key)
    return shape if img_size is None else shape.at(img_size)


@functools.lru_cache(maxsize=None)
def _fastvit_arguments() -> frozenset:
    from ..vit import FastViT
    return frozenset(p for p in inspect.signature(FastViT.__init__).parameters if p != "self")


@functools.lru_cache(maxsize=256)
def _cached_shape(key) -> ViTShape:
    name, items = key
    return _build_and_read(name, dict(items))


def _build_and_read(name: str, kwargs: dict) -> ViTShape:
    from ..vit import FastViT

    with torch.device("meta"):
        model = FastViT(**kwargs)
    return read_model(model, name)


def _pair_checked(v, name: str = "img_size") -> tuple[int, int]:
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in pair):
        raise ValueError(f"{name} must be a positive int or a pair (H, W) of positive ints, got {v!r}")
    return int(pair[0]), int(pair[1])
