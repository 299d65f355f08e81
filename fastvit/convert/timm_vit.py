"""timm ``VisionTransformer`` (and DeiT's ``VisionTransformerDistilled``) to FastViT.

Reads every option off the instance (not off a config), so a model built by hand converts as
one from ``timm.create_model`` does; what FastViT cannot represent is refused by name.
"""
from __future__ import annotations

import math

import torch.nn as nn

from ..vit import FastViT
from ._common import UnsupportedModelError, build_with_weights

# timm classes of other architectures, and what to do instead
_OTHER_CLASSES = {
    "FastVit": "timm's FastVit is Apple's FastViT, a hybrid convolution-attention architecture that only shares "
               "the name with this package (a plain ViT on fused kernels); it cannot be converted",
}


def _refuse(feature: str):
    raise UnsupportedModelError(f"cannot convert this timm ViT: {feature}")


def _activation(act: nn.Module, where: str) -> str:
    name = type(act).__name__
    if isinstance(act, nn.GELU):
        return act.approximate
    if name == "GELU":  # timm.layers.GELU: F.gelu, exact
        return "none"
    if name == "GELUTanh":
        return "tanh"
    if name == "QuickGELU":
        return "quick"
    _refuse(f"the activation {name} in {where} is not supported (GELU, GELU-tanh and QuickGELU are)")


def _layer_norm_eps(norm: nn.Module, where: str) -> float:
    if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
        _refuse(f"{where} is a {type(norm).__name__}; only LayerNorm with weight and bias is supported")
    return float(norm.eps)


def from_timm(model: nn.Module, backend: str = "auto") -> FastViT:
    """Convert a timm ``VisionTransformer`` to a FastViT holding the same weights: the original
    ViT, DeiT (distilled), DeiT-III, DINOv2 (with registers), CLIP and SigLIP image towers, the
    average-pooled variants, qk_norm; and timm's ``Eva`` (EVA-02, DINOv3, vit_*_rope_*:
    ``convert/timm_eva.py``). Anything else raises an error naming the feature."""
    try:
        from timm.models.vision_transformer import Block as TimmBlock
        from timm.models.vision_transformer import VisionTransformer
        from timm.layers import AttentionPoolLatent, Mlp as TimmMlp, PatchEmbed as TimmPatchEmbed
    except ImportError as e:  # pragma: no cover - timm is in the test extra
        raise ImportError("from_timm needs timm: pip install timm") from e
    cls_name = type(model).__name__
    if cls_name == "Eva":  # EVA-02, DINOv3, vit_*_rope_*: rotary embeddings, SwiGLU (convert/timm_eva.py)
        from .timm_eva import from_timm_eva
        return from_timm_eva(model, backend)
    if cls_name == "NaFlexVit":  # patches of mixed-size images, timm's NaFlex names (convert/timm_naflex.py)
        from .timm_naflex import from_timm_naflex
        return from_timm_naflex(model, backend)
    if not isinstance(model, VisionTransformer):
        if cls_name in _OTHER_CLASSES:
            raise UnsupportedModelError(_OTHER_CLASSES[cls_name])
        raise TypeError(f"model must be a timm VisionTransformer (timm.create_model('vit_...')), got {cls_name}; "
                        f"torchvision ViTs convert with fastvit.from_torchvision")

    for i, blk in enumerate(model.blocks):
        if type(blk) is not TimmBlock:
            _refuse(f"blocks.{i} is a {type(blk).__name__}; only timm's pre-norm Block is supported "
                    f"(parallel blocks, as in the *_xp_* models, and residual-post-norm blocks are not)")
    dist = getattr(model, "dist_token", None) is not None
    if model.pos_embed is None:
        _refuse("a model without absolute position embeddings (pos_embed='none') is not supported")
    if getattr(model, "dynamic_img_pad", False):
        _refuse("padding images to the patch size (dynamic_img_pad=True) is not supported")
    if not isinstance(getattr(model, "patch_drop", nn.Identity()), nn.Identity):
        _refuse("patch dropout (patch_drop_rate > 0) is not supported")
    if getattr(model, "pool_include_prefix", False):
        _refuse("pooling that includes the prefix tokens (pool_include_prefix=True) is not supported")
    if model.global_pool not in ("token", "avg", "map", ""):
        _refuse(f"global_pool={model.global_pool!r} is not supported ('token', 'avg', 'map' and '' are)")
    pe = model.patch_embed
    if type(pe) is not TimmPatchEmbed or not isinstance(pe.norm, nn.Identity):
        _refuse("a patch embedding other than a plain strided Conv2d is not supported")
    conv = pe.proj
    if conv.kernel_size != conv.stride or conv.padding != (0, 0):
        _refuse("a padded or overlapping patch convolution is not supported")
    pre_norm = not isinstance(model.norm_pre, nn.Identity)
    if (conv.bias is None) != pre_norm:
        _refuse("a patch convolution bias other than timm's rule (a bias unless pre_norm) is not supported")
    eps = {_layer_norm_eps(model.norm_pre, "norm_pre")} if pre_norm else set()
    use_fc_norm = not isinstance(model.fc_norm, nn.Identity)
    if use_fc_norm == (not isinstance(model.norm, nn.Identity)):
        _refuse("a model with both or neither of norm and fc_norm (final_norm=False) is not supported")
    eps.add(_layer_norm_eps(model.fc_norm if use_fc_norm else model.norm, "the final norm"))
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        _refuse(f"a head of type {type(model.head).__name__} is not supported")

    blocks = list(model.blocks)
    first = blocks[0]
    dim, hidden = model.embed_dim, first.mlp.fc1.out_features
    approximate = _activation(first.mlp.act, "blocks.0")
    layer_scale = not isinstance(first.ls1, nn.Identity)
    qk_norm = not isinstance(getattr(first.attn, "q_norm", nn.Identity()), nn.Identity)
    proj_bias = first.attn.proj.bias is not None
    for i, blk in enumerate(blocks):
        where = f"blocks.{i}"
        a, mlp = blk.attn, blk.mlp
        if not hasattr(a, "qkv") or a.qkv is None:
            _refuse(f"separate q, k, v projections in {where} are not supported")
        if not isinstance(getattr(a, "norm", nn.Identity()), nn.Identity):
            _refuse(f"a norm inside attention in {where} (scale_attn_norm) is not supported")
        if type(mlp) is not TimmMlp or not isinstance(mlp.norm, nn.Identity):
            _refuse(f"an MLP other than fc1 -> GELU -> fc2 in {where} (e.g. SwiGLU or scale_mlp_norm) "
                    f"is not supported")
        for n in ("norm1", "norm2"):
            eps.add(_layer_norm_eps(getattr(blk, n), f"{where}.{n}"))
        if qk_norm:
            eps.add(_layer_norm_eps(a.q_norm, f"{where}.attn.q_norm"))
            eps.add(_layer_norm_eps(a.k_norm, f"{where}.attn.k_norm"))
        same = ((a.qkv.bias is None) == (first.attn.qkv.bias is None) and mlp.fc1.out_features == hidden
                and _activation(mlp.act, where) == approximate and a.num_heads == first.attn.num_heads
                and (not isinstance(blk.ls1, nn.Identity)) == layer_scale
                and (not isinstance(blk.ls2, nn.Identity)) == layer_scale
                and (not isinstance(getattr(a, "q_norm", nn.Identity()), nn.Identity)) == qk_norm)
        if not same:
            _refuse(f"blocks that differ from each other ({where} differs from blocks.0) are not supported")
        biases = {a.proj.bias is not None, mlp.fc1.bias is not None, mlp.fc2.bias is not None}
        if biases != {proj_bias}:
            _refuse(f"bias on some but not all of proj, fc1 and fc2 in {where} is not supported")
    pool = getattr(model, "attn_pool", None)
    if model.global_pool == "map":
        if type(pool) is not AttentionPoolLatent or pool.latent_len != 1 or pool.pos_embed is not None \
                or pool.mlp is None or not isinstance(pool.q_norm, nn.Identity) or pool.q.bias is None \
                or pool.mlp.fc1.out_features != hidden or _activation(pool.mlp.act, "attn_pool") != approximate:
            _refuse("an attention-pooling head other than timm's default (one latent query, no position "
                    "embedding, qkv bias, the blocks' MLP) is not supported")
        eps.add(_layer_norm_eps(pool.norm, "attn_pool.norm"))
    if len({round(math.log10(e), 3) for e in eps}) != 1:
        _refuse(f"LayerNorms with different eps ({sorted(eps)}) are not supported")

    kwargs = dict(
        img_size=pe.img_size, patch_size=pe.patch_size, in_chans=conv.in_channels, num_classes=model.num_classes,
        embed_dim=dim, depth=len(blocks), num_heads=first.attn.num_heads, mlp_ratio=hidden / dim,
        qkv_bias=first.attn.qkv.bias is not None, qk_norm=qk_norm, proj_bias=proj_bias,
        init_values=1e-5 if layer_scale else None,  # the value is replaced by the weights
        class_token=model.cls_token is not None, reg_tokens=int(getattr(model, "num_reg_tokens", 0)),
        no_embed_class=bool(model.no_embed_class), dist_token=dist, pre_norm=pre_norm, fc_norm=use_fc_norm,
        global_pool=model.global_pool, gelu_approximate=approximate, norm_eps=eps.pop(),
        drop_rate=model.pos_drop.p if isinstance(model.pos_drop, nn.Dropout) else 0.0,
        attn_drop_rate=first.attn.attn_drop.p if isinstance(first.attn.attn_drop, nn.Dropout) else 0.0,
        proj_drop_rate=first.attn.proj_drop.p if isinstance(first.attn.proj_drop, nn.Dropout) else 0.0,
        drop_path_rate=max(getattr(b.drop_path1, "drop_prob", 0.0) for b in blocks), backend=backend)
    like = next(model.parameters())
    fast = build_with_weights(kwargs, model.state_dict(), "timm", like=like, training=model.training)
    if dist:
        fast.set_distilled_training(bool(getattr(model, "distilled_training", False)))
    return fast
