"""Hugging Face transformers vision models to FastViT, and their state-dict layout to timm's.

Families and what FastViT's outputs correspond to (fp32, the same weights):

=============================  ==========================================================================
source                         FastViT
=============================  ==========================================================================
ViTModel, DeiTModel            ``forward_features`` = ``last_hidden_state``; ``pooler_output`` (dense +
                               tanh) has no place in FastViT and is dropped, with a warning:
                               ``forward_head(pre_logits=True)`` is the final CLS token
ViT/DeiTForImageClassification ``forward`` = ``logits``
DeiTForImage...WithTeacher     ``forward`` = ``logits`` (mean of the class and distillation heads)
Dinov2Model                    ``forward_features`` = ``last_hidden_state``; ``forward_head(pre_logits=
                               True)`` = ``pooler_output`` (the CLS token); layer scale ``lambda1`` ->
                               ``ls1.gamma`` / ``ls2.gamma``
Dinov2WithRegistersModel       as Dinov2Model; the CLS position embedding is added into ``cls_token``
                               (timm's layout: ``no_embed_class`` with registers)
CLIPVisionModel                ``forward_head(pre_logits=True)`` = ``pooler_output``; the source's
                               ``last_hidden_state`` is taken before ``post_layernorm``, FastViT's
                               ``forward_features`` after it (``pre_layrnorm`` = ``pre_norm``)
CLIPVisionModelWithProjection  ``forward`` = ``image_embeds`` (``visual_projection`` as a head with a
                               zero bias)
SiglipVisionModel              ``forward_features`` = ``last_hidden_state``; ``forward_head(pre_logits=
                               True)`` = ``pooler_output`` (the MAP head: ``head.probe`` -> latent query,
                               ``in_proj`` split into ``q`` and ``kv``); without a head, global_pool ""
=============================  ==========================================================================

transformers splits q, k and v into three Linears; timm's ``qkv`` is their concatenation. The
``mask_token`` (masked image modelling) has no place in FastViT and is ignored. Refused by name:
SigLIP 2 (a Linear patch embedding on pre-patchified pixels of per-image resolution), DINOv2's
SwiGLU MLP (giant models), ``Dinov2ForImageClassification`` (its head reads CLS and the patch
mean), and the multimodal wrappers (convert ``.vision_model``). Position embeddings are resampled
to other sizes as timm does (antialiased bicubic), not as transformers' ``interpolate_pos_encoding``
does (plain bicubic): outputs agree at the model's own resolution. Dropout and stochastic depth
are carried over as rates (FastViT's placements: dropout after fc1 too, a linear drop-path schedule).
"""
from __future__ import annotations

import re
import warnings
from collections import OrderedDict

import torch
import torch.nn as nn

from ..vit import FastViT
from ._common import UnsupportedModelError, build_with_weights

_LAYER = re.compile(r"^(?:encoder\.layers?|layers)\.(\d+)\.(.+)$")
# per-layer names, new (transformers >= 5) and legacy (hub checkpoints) -> timm's, or q/k/v parts
_LAYER_KEYS = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "norm1": "norm1", "norm2": "norm2",
    "layer_norm1": "norm1", "layer_norm2": "norm2",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v", "attention.o_proj": "attn.proj",
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.output.dense": "attn.proj", "self_attn.q_proj": "q", "self_attn.k_proj": "k",
    "self_attn.v_proj": "v", "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
    "layer_scale1": "ls1", "layer_scale2": "ls2",
}
_TOP_KEYS = {
    "embeddings.cls_token": "cls_token", "embeddings.class_embedding": "cls_token",
    "embeddings.distillation_token": "dist_token", "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed", "embeddings.position_embedding.weight": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    "pre_layrnorm.weight": "norm_pre.weight", "pre_layrnorm.bias": "norm_pre.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    "post_layernorm.weight": "norm.weight", "post_layernorm.bias": "norm.bias",
    "head.probe": "attn_pool.latent", "head.attention.out_proj.weight": "attn_pool.proj.weight",
    "head.attention.out_proj.bias": "attn_pool.proj.bias", "head.layernorm.weight": "attn_pool.norm.weight",
    "head.layernorm.bias": "attn_pool.norm.bias", "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight",
    "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias", "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight",
    "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias",
    "classifier.weight": "head.weight", "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight", "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight", "distillation_classifier.bias": "head_dist.bias",
    "visual_projection.weight": "head.weight",
}
# keys with no place in FastViT (documented above), and the other towers of multimodal checkpoints
_DROPPED = re.compile(r"^(embeddings\.mask_token|embeddings\.position_ids|pooler\.dense\.(weight|bias)|"
                      r"text_model\..*|text_projection\..*|logit_scale|logit_bias)$")
_PATCH_KEYS = ("embeddings.patch_embeddings.projection.weight", "embeddings.patch_embedding.weight")


def is_transformers_layout(state_dict: dict) -> bool:
    return any(k.endswith(_PATCH_KEYS) for k in state_dict)


def _strip_prefix(state_dict: dict) -> dict:
    """Keys relative to the vision model (``vit.``, ``deit.``, ``dinov2.``, ``vision_model.`` removed)."""
    anchor = next(k for k in state_dict if k.endswith(_PATCH_KEYS))
    prefix = anchor[: anchor.index("embeddings.")]
    return {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in state_dict.items()}


def transformers_to_timm(state_dict: dict) -> "OrderedDict[str, torch.Tensor]":
    """Rename a transformers ViT / DeiT / DINOv2 (+registers) / CLIP / SigLIP vision state dict to
    timm's (= FastViT's) names: q, k, v concatenated into ``qkv``, SigLIP's ``in_proj`` split into
    ``q`` and ``kv``. Keys with no FastViT place are listed in the module docstring; unknown keys raise."""
    sd = _strip_prefix(state_dict)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        m = _LAYER.match(key)
        if m:
            i, rest = m.groups()
            stem, _, leaf = rest.rpartition(".")
            if "gate_proj" in rest or "weights_in" in rest:
                raise UnsupportedModelError("cannot convert this transformers model: DINOv2's SwiGLU MLP "
                                            "(use_swiglu_ffn, the giant models) is not supported by FastViT")
            name = _LAYER_KEYS.get(stem)
            if name in ("q", "k", "v"):
                qkv.setdefault((i, leaf), {})[name] = value
            elif name in ("ls1", "ls2") and leaf == "lambda1":
                out[f"blocks.{i}.{name}.gamma"] = value
            elif name is not None:
                out[f"blocks.{i}.{name}.{leaf}"] = value
            else:
                unknown.append(key)
        elif key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
        elif key.startswith("head.attention.in_proj_"):
            dim = value.shape[0] // 3
            leaf = key.rsplit("_", 1)[1]
            out[f"attn_pool.q.{leaf}"], out[f"attn_pool.kv.{leaf}"] = value[:dim], value[dim:]
        elif not _DROPPED.match(key):
            unknown.append(key)
    if unknown:
        raise UnsupportedModelError("transformers state dict has keys FastViT cannot map: "
                                    f"{', '.join(unknown[:10])}" + (" ..." if len(unknown) > 10 else ""))
    for (i, leaf), parts in sorted(qkv.items(), key=lambda kv: (int(kv[0][0]), kv[0][1])):
        if set(parts) != {"q", "k", "v"}:
            raise UnsupportedModelError(f"layer {i}: {leaf} of {sorted(parts)} only; q, k and v are needed")
        out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return _fix_tokens(out)


def _fix_tokens(out: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    """CLIP's (D,) class embedding and (N, D) position table to timm's shapes; a projection
    without bias gets a zero one; with registers, the CLS position embedding moves into the token."""
    cls, pos = out.get("cls_token"), out.get("pos_embed")
    if cls is not None and cls.dim() == 1:
        out["cls_token"] = cls.reshape(1, 1, -1)
    if pos is not None and pos.dim() == 2:
        out["pos_embed"] = pos.unsqueeze(0)
    if "reg_token" in out and "cls_token" in out:
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    if "head.weight" in out and "head.bias" not in out:
        out["head.bias"] = out["head.weight"].new_zeros(out["head.weight"].shape[0])
    return out


# wrapper class -> (attribute holding the vision model, FastViT reads its heads off the state dict)
_WRAPPERS = {"ViTForImageClassification": "vit", "DeiTForImageClassification": "deit",
             "DeiTForImageClassificationWithTeacher": "deit", "CLIPVisionModelWithProjection": "vision_model"}
_CORES = {"ViTModel", "DeiTModel", "Dinov2Model", "Dinov2WithRegistersModel", "CLIPVisionModel", "SiglipVisionModel"}
_REFUSED = {
    "Siglip2VisionModel": "SigLIP 2's vision model embeds pre-patchified pixels with a Linear layer at per-image "
                          "resolutions (NaFlex, with padding masks), which FastViT's Conv2d patch embedding does not "
                          "represent; fastvit.patch(model) runs it on the fused ops instead",
    "Dinov2ForImageClassification": "its classifier reads the CLS token concatenated with the mean of the patch "
                                    "tokens (2 x width), which FastViT's heads do not; convert model.dinov2",
    "CLIPModel": "a multimodal model: convert its image tower, model.vision_model",
    "SiglipModel": "a multimodal model: convert its image tower, model.vision_model",
}


def _refuse(feature: str):
    raise UnsupportedModelError(f"cannot convert this transformers model: {feature}")


def from_transformers(model: nn.Module, backend: str = "auto") -> FastViT:
    """Convert a transformers vision model to a FastViT holding the same weights (families, and
    which outputs correspond, in the module docstring). What FastViT cannot represent is refused
    with an error naming it."""
    from ..integrations._forwards import activation_approximate
    name = type(model).__name__
    if not type(model).__module__.startswith("transformers"):
        raise TypeError(f"model must be a transformers model (ViTModel, DeiTModel, Dinov2Model, CLIPVisionModel, "
                        f"SiglipVisionModel, ...), got {name}")
    if name in _REFUSED:
        _refuse(f"{name}: {_REFUSED[name]}")
    core = getattr(model, _WRAPPERS[name]) if name in _WRAPPERS else model
    if type(core).__name__ not in _CORES:
        raise TypeError(f"from_transformers converts {', '.join(sorted(_CORES | set(_WRAPPERS)))}; got {name}")
    if getattr(core, "pooler", None) is not None:
        warnings.warn(f"{name}: the pooler (dense + tanh) has no place in FastViT and is not converted; "
                      f"forward_head(pre_logits=True) returns the final CLS token instead", stacklevel=2)
    emb = core.embeddings
    conv = emb.patch_embeddings.projection if hasattr(emb, "patch_embeddings") else emb.patch_embedding
    layers = list(core.layers if hasattr(core, "layers") else core.encoder.layers if hasattr(core.encoder, "layers")
                  else core.encoder.layer)
    first = layers[0]
    attn = getattr(first, "attention", None) or first.self_attn
    mlp = first.mlp
    if not hasattr(mlp, "fc1"):
        _refuse(f"the MLP {type(mlp).__name__} (SwiGLU) is not supported by FastViT")
    approx = activation_approximate(mlp.activation_fn)
    if approx is None:
        _refuse(f"the activation {type(mlp.activation_fn).__name__} is not supported (GELU, GELU-tanh, QuickGELU are)")
    dim, heads = conv.out_channels, getattr(attn, "num_attention_heads", None) or attn.num_heads
    if attn.q_proj.out_features != dim or attn.head_dim * heads != dim:
        _refuse(f"an attention width ({attn.q_proj.out_features}) other than the model width ({dim})")
    if conv.kernel_size != conv.stride or conv.padding not in ((0, 0), "valid"):
        _refuse("a padded or overlapping patch convolution is not supported")
    eps = {m.eps for m in core.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) != 1:
        _refuse(f"LayerNorms with different eps ({sorted(eps)}) are not supported")
    reg = getattr(emb, "register_tokens", None)
    clip = hasattr(core, "pre_layrnorm")
    siglip = type(core).__name__ == "SiglipVisionModel"
    if clip and conv.bias is not None or not clip and conv.bias is None:
        _refuse("a patch convolution bias other than timm's rule (a bias unless pre_norm) is not supported")
    head = getattr(core, "head", None) if siglip else None
    if head is not None and head.attention.in_proj_bias is None:
        _refuse("a SigLIP attention-pooling head without in_proj bias is not supported")
    img = getattr(core.config, "image_size", 224)
    drop = next((m.p for n, m in first.named_children() if n == "dropout" and isinstance(m, nn.Dropout)), 0.0)
    sd = model.state_dict()
    head_w = transformers_to_timm(sd).get("head.weight")
    kwargs = dict(
        img_size=img, patch_size=conv.kernel_size, in_chans=conv.in_channels,
        num_classes=0 if head_w is None else head_w.shape[0], embed_dim=dim, depth=len(layers), num_heads=heads,
        mlp_ratio=mlp.fc1.out_features / dim, qkv_bias=attn.q_proj.bias is not None,
        init_values=1e-5 if hasattr(first, "layer_scale1") else None,   # the value is replaced by the weights
        class_token=not siglip, reg_tokens=0 if reg is None else reg.shape[1], no_embed_class=reg is not None,
        dist_token=hasattr(emb, "distillation_token"), pre_norm=clip, fc_norm=False,
        global_pool=("map" if head is not None else "") if siglip else "token", gelu_approximate=approx,
        norm_eps=eps.pop(), drop_rate=getattr(getattr(emb, "dropout", None), "p", 0.0), proj_drop_rate=drop,
        attn_drop_rate=float(getattr(attn, "attention_dropout", getattr(attn, "dropout", 0.0))),
        drop_path_rate=float(getattr(getattr(first, "drop_path", None), "drop_prob", 0.0)), backend=backend)
    return build_with_weights(kwargs, transformers_to_timm(sd), f"transformers {name}", like=conv.weight,
                              training=model.training)
