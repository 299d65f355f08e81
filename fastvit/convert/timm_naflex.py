"""timm ``NaFlexVit`` (naflexvit_base_patch16_gap, naflexvit_base_patch16_siglip, ...) to
``fastvit.naflex.NaFlexFastViT``, which keeps timm's parameter names.

Options are read off the instance, as for timm's VisionTransformer (convert/timm_vit.py); what
NaFlexFastViT cannot represent is refused by name: convolutional or normalised patch embeddings,
factorised or grid-sampled position embeddings, rotary embeddings, patch dropout, EVA-style
blocks, max pooling.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._common import load_strict
from .timm_vit import _activation, _layer_norm_eps, _refuse


def _dropout(m) -> float:
    return m.p if isinstance(m, nn.Dropout) else 0.0


def _blocks_options(blocks, eps: set) -> dict:
    """The FastViT options every block shares (and each LayerNorm's eps into ``eps``); refuses
    anything else, naming the block."""
    from timm.layers import Mlp as TimmMlp
    from timm.models.vision_transformer import Block as TimmBlock

    def options(blk, where):
        if type(blk) is not TimmBlock:
            _refuse(f"{where} is a {type(blk).__name__}; only timm's pre-norm Block is supported (EVA-style "
                    f"blocks: rope, SwiGLU, separate q/k/v, are not)")
        a, mlp = blk.attn, blk.mlp
        if getattr(a, "qkv", None) is None or not isinstance(getattr(a, "norm", nn.Identity()), nn.Identity):
            _refuse(f"{where}.attn is not a fused-qkv attention without an inner norm (scale_attn_inner_norm)")
        if type(mlp) is not TimmMlp or not isinstance(mlp.norm, nn.Identity):
            _refuse(f"{where}.mlp is not fc1 -> GELU -> fc2 (scale_mlp_norm or another MLP)")
        qk_norm = not isinstance(getattr(a, "q_norm", nn.Identity()), nn.Identity)
        norms = [blk.norm1, blk.norm2] + ([a.q_norm, a.k_norm] if qk_norm else [])
        eps.update(_layer_norm_eps(n, f"{where} norms") for n in norms)
        biases = {a.proj.bias is not None, mlp.fc1.bias is not None, mlp.fc2.bias is not None}
        if len(biases) != 1:
            _refuse(f"bias on some but not all of proj, fc1 and fc2 in {where} is not supported")
        return dict(num_heads=a.num_heads, qkv_bias=a.qkv.bias is not None, qk_norm=qk_norm,
                    proj_bias=biases.pop(), hidden=mlp.fc1.out_features,
                    gelu_approximate=_activation(mlp.act, where), layer_scale=not isinstance(blk.ls1, nn.Identity),
                    layer_scale2=not isinstance(blk.ls2, nn.Identity), attn_drop_rate=_dropout(a.attn_drop),
                    proj_drop_rate=_dropout(a.proj_drop))

    first = options(blocks[0], "blocks.0")
    for i, blk in enumerate(blocks[1:], 1):
        if options(blk, f"blocks.{i}") != first:
            _refuse(f"blocks that differ from each other (blocks.{i} differs from blocks.0) are not supported")
    if first.pop("layer_scale2") != first["layer_scale"]:
        _refuse("layer scale on one residual branch only (attn_only_layer_scale) is not supported")
    return first


def from_timm_naflex(model: nn.Module, backend: str = "auto"):
    """A ``NaFlexFastViT`` holding copies of a timm ``NaFlexVit``'s weights (same device, dtype,
    training mode)."""
    from timm.layers import AttentionPoolLatent

    from ..naflex import NaFlexFastViT

    e = model.embeds
    if not getattr(e, "is_linear", False):
        _refuse("a convolutional NaFlex patch embedding (embed_proj_type='conv') is not supported; 'linear' is")
    for attr, option in (("norm_input", "input_norm_layer"), ("patch_interpolator", "enable_patch_interpolator")):
        if getattr(e, attr, None) is not None:
            _refuse(f"{option} is not supported")
    if not isinstance(e.norm, nn.Identity):
        _refuse("a norm after the patch projection (embed_norm_layer) is not supported")
    if e.dynamic_img_pad:
        _refuse("padding images to the patch size (dynamic_img_pad=True) is not supported")
    if e.pos_embed_type not in ("learned", "none"):
        _refuse(f"pos_embed={e.pos_embed_type!r} is not supported ('learned' and 'none' are)")
    if e.pos_embed_use_grid_sample:
        _refuse("position embeddings sampled per patch with grid_sample (pos_embed_use_grid_sample=True) "
                "are not supported")
    if getattr(model, "rope", None) is not None:
        _refuse("rotary position embeddings (rope_type) are not supported on NaFlex models")
    if getattr(model, "patch_drop", None) is not None:
        _refuse("patch dropout (patch_drop_rate > 0) is not supported")
    if model.pool_include_prefix:
        _refuse("pooling that includes the prefix tokens (pool_include_prefix=True) is not supported")
    if model.global_pool not in ("token", "avg", "map", ""):
        _refuse(f"global_pool={model.global_pool!r} is not supported ('token', 'avg', 'map' and '' are)")
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        _refuse(f"a head of type {type(model.head).__name__} is not supported")

    eps: set = set()
    pre_norm = not isinstance(model.norm_pre, nn.Identity)
    if pre_norm:
        eps.add(_layer_norm_eps(model.norm_pre, "norm_pre"))
    use_fc_norm = not isinstance(model.fc_norm, nn.Identity)
    if use_fc_norm == (not isinstance(model.norm, nn.Identity)):
        _refuse("a model with both or neither of norm and fc_norm (final_norm=False) is not supported")
    eps.add(_layer_norm_eps(model.fc_norm if use_fc_norm else model.norm, "the final norm"))
    blocks = list(model.blocks)
    opts = _blocks_options(blocks, eps)
    dim = model.embed_dim
    if model.global_pool == "map":
        pool = model.attn_pool
        if type(pool) is not AttentionPoolLatent or pool.latent_len != 1 or pool.pos_embed is not None \
                or pool.mlp is None or not isinstance(pool.q_norm, nn.Identity) or pool.q.bias is None \
                or pool.num_heads != opts["num_heads"] or pool.mlp.fc1.out_features != opts["hidden"] \
                or _activation(pool.mlp.act, "attn_pool") != opts["gelu_approximate"]:
            _refuse("an attention-pooling head other than timm's default (one latent query, no position embedding, "
                    "qkv bias, the blocks' heads and MLP: attn_pool_num_heads / attn_pool_mlp_ratio unset) "
                    "is not supported")
        eps.add(_layer_norm_eps(pool.norm, "attn_pool.norm"))
    if len({round(math.log10(v), 3) for v in eps}) != 1:
        _refuse(f"LayerNorms with different eps ({sorted(eps)}) are not supported")

    hidden, layer_scale = opts.pop("hidden"), opts.pop("layer_scale")
    kwargs = dict(
        patch_size=e.patch_size, in_chans=e.in_chans, embed_dim=dim, class_token=e.cls_token is not None,
        reg_tokens=int(e.num_reg_tokens), pre_norm=pre_norm, global_pool=model.global_pool,
        embed_bias=e.proj.bias is not None, pos_embed=e.pos_embed_type,
        pos_embed_grid_size=tuple(e.pos_embed_grid_size), pos_embed_interp_mode=e.pos_embed_interp_mode,
        pos_embed_antialias=e.pos_embed_antialias, pos_embed_align_corners=e.pos_embed_align_corners,
        pos_embed_ar_preserving=e.pos_embed_ar_preserving, pos_drop_rate=_dropout(e.pos_drop),
        channels_last=getattr(e, "channels_last", True), num_classes=model.num_classes, depth=len(blocks),
        mlp_ratio=hidden / dim, fc_norm=use_fc_norm, norm_eps=eps.pop(), drop_rate=_dropout(model.head_drop),
        init_values=1e-5 if layer_scale else None,  # the value is replaced by the weights
        drop_path_rate=max(getattr(b.drop_path1, "drop_prob", 0.0) for b in blocks), backend=backend, **opts)
    if e.pos_embed is not None:
        kwargs["pos_embed_grid_size"] = tuple(e.pos_embed.shape[1:3])
    like = next(model.parameters())
    with torch.device("meta"):
        fast = NaFlexFastViT(**kwargs)
    sd = {k: v.detach().to(device=like.device, dtype=like.dtype if v.is_floating_point() else v.dtype, copy=True)
          for k, v in model.state_dict().items()}
    load_strict(fast, sd, source="timm NaFlexVit", assign=True)
    return fast.train(model.training)
