"""timm ``Eva`` (EVA-02, DINOv3, the vit_*_rope_* models) to FastViT with its Eva options.

``fastvit.from_timm`` sends ``Eva`` instances here. Every option is read off the instance (its
modules, not a config), and what FastViT does not represent is refused by name.
"""
from __future__ import annotations

import math

import torch.nn as nn

from ..rope import RopeConfig
from ._common import UnsupportedModelError, build_with_weights


def _refuse(feature: str):
    raise UnsupportedModelError(f"cannot convert this timm Eva: {feature}")


def _eps(norm: nn.Module, where: str) -> float:
    if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
        _refuse(f"{where} is a {type(norm).__name__}; only LayerNorm with weight and bias is supported")
    return float(norm.eps)


def _rope_config(model, head_dim: int) -> RopeConfig:
    rope = model.rope
    name = type(rope).__name__
    if rope is None:
        _refuse("a model without rotary position embeddings (EVA-01: use_rot_pos_emb=False) is not supported")
    if getattr(model, "rope_mixed", False) or name not in ("RotaryEmbeddingCat", "RotaryEmbeddingDinoV3"):
        _refuse(f"rotary embeddings of type {name} (rope_type 'mixed', 'mrope' or 'base') are not supported; "
                f"rope_type 'cat' (EVA-02) and 'dinov3' are")
    if rope.dim != head_dim:
        _refuse(f"rotary embeddings over {rope.dim} channels with head_dim {head_dim} are not supported")
    if getattr(rope, "grid_indexing", "ij") != "ij":
        _refuse(f"rope_grid_indexing={rope.grid_indexing!r} is not supported ('ij' is)")
    if getattr(rope, "aug_active", False):
        _refuse("training-time rope coordinate augmentation (rope_shift_coords / jitter / rescale) is not supported")
    pairing = "half" if rope.rotate_half else "interleaved"
    if name == "RotaryEmbeddingCat":
        if rope.in_pixels or rope.grid_type != "index":
            _refuse("rotary embeddings with pixel-frequency bands (in_pixels=True) are not supported")
        ref = tuple(rope.ref_feat_shape) if rope.ref_feat_shape is not None else None
        return RopeConfig("eva", float(rope.temperature), pairing, ref_grid=ref, grid_offset=float(rope.grid_offset))
    if rope.min_period is not None or rope.max_period is not None:
        _refuse("DINOv3 rotary periods given by min_period / max_period are not supported (temperature is)")
    if rope.normalize_coords != "separate":
        _refuse(f"DINOv3 rope normalize_coords={rope.normalize_coords!r} is not supported ('separate' is)")
    return RopeConfig("dinov3", float(rope.temperature), pairing, grid_offset=float(rope.grid_offset))


def _mlp(mlp: nn.Module, dim: int, where: str):
    """(mlp_layer, hidden, scale_mlp, activation check) of a timm Eva block's MLP."""
    from timm.layers import GluMlp, Mlp, SwiGLU
    name = type(mlp).__name__
    act = type(getattr(mlp, "act", None)).__name__
    if type(mlp) is Mlp:
        if not isinstance(mlp.act, nn.GELU) or mlp.act.approximate != "none":
            _refuse(f"the activation {act} in {where}.mlp is not supported (GELU is)")
        kind, hidden, fcs = "mlp", mlp.fc1.out_features, (mlp.fc1, mlp.fc2)
    elif type(mlp) is GluMlp:
        if not isinstance(mlp.act, nn.SiLU) or mlp.gate_last or mlp.chunk_dim != -1:
            _refuse(f"a GluMlp other than SwiGLUPacked (SiLU, gate first) in {where}.mlp is not supported")
        kind, hidden, fcs = "swiglu_packed", mlp.fc1.out_features // 2, (mlp.fc1, mlp.fc2)
    elif type(mlp) is SwiGLU:
        if not isinstance(mlp.act, nn.SiLU):
            _refuse(f"SwiGLU with the activation {act} in {where}.mlp is not supported (SiLU is)")
        kind, hidden, fcs = "swiglu", mlp.fc1_g.out_features, (mlp.fc1_g, mlp.fc1_x, mlp.fc2)
    else:
        _refuse(f"an MLP of type {name} in {where} is not supported")
    if any(fc.bias is None for fc in fcs):
        _refuse(f"an MLP without biases in {where} is not supported")
    if int(dim * (hidden / dim)) != hidden:
        _refuse(f"an MLP width {hidden} that int(dim * mlp_ratio) cannot express (dim {dim}) in {where}")
    return kind, hidden, not isinstance(mlp.norm, nn.Identity)


def from_timm_eva(model: nn.Module, backend: str = "auto"):
    """Convert a timm ``Eva`` to a FastViT holding the same weights (keys equal to timm's)."""
    from timm.layers import PatchEmbed as TimmPatchEmbed
    from timm.models.eva import EvaAttention, EvaBlock

    blocks = list(model.blocks)
    for i, blk in enumerate(blocks):
        if type(blk) is not EvaBlock:
            _refuse(f"blocks.{i} is a {type(blk).__name__}; only the pre-norm EvaBlock is supported "
                    f"(use_post_norm=True is not)")
        if type(blk.attn) is not EvaAttention:
            _refuse(f"blocks.{i}.attn is a {type(blk.attn).__name__}; only EvaAttention is supported "
                    f"(attn_type='rope', grouped-query attention, is not)")
    if getattr(model, "patch_drop", None) is not None:
        _refuse("patch dropout (patch_drop_rate > 0) is not supported")
    if model.global_pool not in ("token", "avg", ""):
        _refuse(f"global_pool={model.global_pool!r} is not supported for Eva ('token', 'avg' and '' are)")
    pe = model.patch_embed
    if type(pe) is not TimmPatchEmbed or not isinstance(pe.norm, nn.Identity) or getattr(pe, "dynamic_img_pad", False):
        _refuse("a patch embedding other than a plain strided Conv2d (no norm, no dynamic padding) is not supported")
    conv = pe.proj
    if conv.kernel_size != conv.stride or conv.padding != (0, 0):
        _refuse("a padded or overlapping patch convolution is not supported")
    pre_norm = not isinstance(model.norm_pre, nn.Identity)
    if (conv.bias is None) != pre_norm:
        _refuse("a patch convolution bias other than timm's rule (a bias unless a norm before the blocks) "
                "is not supported")
    eps = {_eps(model.norm_pre, "norm_pre")} if pre_norm else set()
    use_fc_norm = not isinstance(model.fc_norm, nn.Identity)
    if use_fc_norm == (not isinstance(model.norm, nn.Identity)):
        _refuse("a model with both or neither of norm and fc_norm is not supported")
    eps.add(_eps(model.fc_norm if use_fc_norm else model.norm, "the final norm"))
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        _refuse(f"a head of type {type(model.head).__name__} is not supported")
    if model.pos_drop.p != model.head_drop.p:
        _refuse(f"different position-embedding and head dropout rates ({model.pos_drop.p}, {model.head_drop.p}) "
                f"are not supported")

    first = blocks[0]
    dim, heads = model.embed_dim, first.attn.num_heads
    head_dim = first.attn.head_dim
    if head_dim * heads != dim:
        _refuse(f"attn_head_dim={head_dim} with {heads} heads != embed_dim {dim} is not supported")
    rope = _rope_config(model, head_dim)
    mlp_layer, hidden, scale_mlp = _mlp(first.mlp, dim, "blocks.0")
    fused = first.attn.qkv is not None
    qkv_bias = (first.attn.q_bias is not None) if fused else (first.attn.q_proj.bias is not None)
    layer_scale = first.gamma_1 is not None
    for i, blk in enumerate(blocks):
        where, a = f"blocks.{i}", blk.attn
        for part, what in (("q_norm", "qk_norm"), ("k_norm", "qk_norm"), ("norm", "scale_attn_inner")):
            if not isinstance(getattr(a, part), nn.Identity):
                _refuse(f"a norm inside attention in {where} ({what}) is not supported")
        if getattr(a, "gate", None) is not None:
            _refuse(f"gated attention in {where} (gated_attn=True) is not supported")
        if a.proj.bias is None:
            _refuse(f"an attention projection without bias in {where} is not supported")
        if (blk.gamma_1 is not None, blk.gamma_2 is not None) not in ((True, True), (False, False)):
            _refuse(f"layer scale on the attention branch only in {where} (attn_only_layer_scale) is not supported")
        if bool(a.rotate_half) != (rope.pairing == "half") or a.num_prefix_tokens != model.num_prefix_tokens:
            _refuse(f"attention in {where} rotates differently from the model's rope (rotate_half or prefix tokens)")
        same = ((a.qkv is not None) == fused and a.num_heads == heads and a.head_dim == head_dim
                and ((a.q_bias is not None) if fused else (a.q_proj.bias is not None)) == qkv_bias
                and (blk.gamma_1 is not None) == layer_scale and _mlp(blk.mlp, dim, where) == (mlp_layer, hidden,
                                                                                              scale_mlp))
        if not same:
            _refuse(f"blocks that differ from each other ({where} differs from blocks.0) are not supported")
        if not fused and (a.k_proj.bias is not None or (a.v_proj.bias is not None) != qkv_bias):
            _refuse(f"separate q/k/v projections in {where} with biases other than q and v only are not supported")
        for n in ("norm1", "norm2"):
            eps.add(_eps(getattr(blk, n), f"{where}.{n}"))
        if scale_mlp:
            eps.add(_eps(blk.mlp.norm, f"{where}.mlp.norm"))
    if len({round(math.log10(e), 3) for e in eps}) != 1:
        _refuse(f"LayerNorms with different eps ({sorted(eps)}) are not supported")

    kwargs = dict(
        img_size=pe.img_size, patch_size=pe.patch_size, in_chans=conv.in_channels, num_classes=model.num_classes,
        embed_dim=dim, depth=len(blocks), num_heads=heads, mlp_ratio=hidden / dim, qkv_bias=qkv_bias,
        init_values=1e-5 if layer_scale else None,  # the value is replaced by the weights
        class_token=model.cls_token is not None, reg_tokens=model.reg_token.shape[1] if model.reg_token is not None
        else 0, no_embed_class=bool(model.no_embed_class), pre_norm=pre_norm, fc_norm=use_fc_norm,
        global_pool=model.global_pool, norm_eps=eps.pop(), rope=rope, mlp_layer=mlp_layer, scale_mlp=scale_mlp,
        qkv_fused=fused, pos_embed="learn" if model.pos_embed is not None else "none",
        drop_rate=model.head_drop.p, attn_drop_rate=first.attn.attn_drop.p, proj_drop_rate=first.attn.proj_drop.p,
        drop_path_rate=max(getattr(b.drop_path1, "drop_prob", 0.0) for b in blocks), backend=backend)
    like = next(model.parameters())
    return build_with_weights(kwargs, model.state_dict(), "timm", like=like, training=model.training)
