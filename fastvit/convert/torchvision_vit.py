"""torchvision ViTs (vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14) to FastViT."""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn as nn

from ..vit import FastViT
from ._common import UnsupportedModelError, build_with_weights

_TV_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_TV_BLOCK_KEYS = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
    "self_attention.in_proj_weight": "attn.qkv.weight", "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight", "self_attention.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
    "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias",
}
_TV_TOP_KEYS = {
    "class_token": "cls_token", "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias", "encoder.pos_embedding": "pos_embed",
    "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
    "heads.head.weight": "head.weight", "heads.head.bias": "head.bias",
}


def from_torchvision(model: nn.Module, backend: str = "auto") -> FastViT:
    """Convert a torchvision ``VisionTransformer`` to a FastViT holding the same weights."""
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError as e:  # pragma: no cover
        raise ImportError("from_torchvision needs torchvision: pip install torchvision") from e
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"model must be a torchvision VisionTransformer, got {type(model).__name__}")
    if not isinstance(model.conv_proj, nn.Conv2d):
        raise UnsupportedModelError("cannot convert this torchvision ViT: a convolutional stem "
                                    "(conv_stem_configs) is not supported by FastViT")
    if hasattr(model.heads, "pre_logits"):
        raise UnsupportedModelError("cannot convert this torchvision ViT: a pre-logits layer "
                                    "(representation_size) is not supported by FastViT")
    layers = list(model.encoder.layers)
    kwargs = dict(img_size=model.image_size, patch_size=model.patch_size, in_chans=model.conv_proj.in_channels,
                  num_classes=model.num_classes, embed_dim=model.hidden_dim, depth=len(layers),
                  num_heads=layers[0].num_heads, mlp_ratio=model.mlp_dim / model.hidden_dim, qkv_bias=True,
                  drop_rate=model.dropout, attn_drop_rate=model.attention_dropout, proj_drop_rate=model.dropout,
                  backend=backend)
    return build_with_weights(kwargs, torchvision_to_timm(model.state_dict()), "torchvision",
                              like=model.class_token, training=model.training)


def torchvision_to_timm(state_dict: dict) -> "OrderedDict[str, torch.Tensor]":
    """Rename a torchvision ViT state dict to timm's (= FastViT's) names. Unknown keys raise."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        m = _TV_LAYER.match(key)
        if m and m.group(2) in _TV_BLOCK_KEYS:
            out[f"blocks.{m.group(1)}.{_TV_BLOCK_KEYS[m.group(2)]}"] = value
        elif key in _TV_TOP_KEYS:
            out[_TV_TOP_KEYS[key]] = value
        else:
            unknown.append(key)
    if unknown:
        raise UnsupportedModelError(f"torchvision state dict has keys FastViT cannot map: {', '.join(unknown[:10])}"
                                    + (" ..." if len(unknown) > 10 else ""))
    return out


def is_torchvision_layout(state_dict: dict) -> bool:
    return any(k.startswith("encoder.layers.") for k in state_dict)
