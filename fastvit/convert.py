"""Weights in and out: timm and torchvision ViTs, and checkpoint files of either layout."""
from __future__ import annotations

import math
import os
import re
from collections import OrderedDict

import torch
import torch.nn as nn

from .vit import FastViT, resample_pos_embed

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


class UnsupportedModelError(ValueError):
    """The source model has a feature FastViT does not implement; converting would be wrong."""


# -- timm --------------------------------------------------------------------------------------
def from_timm(model: nn.Module, backend: str = "auto") -> FastViT:
    """Convert a timm ``VisionTransformer`` (class token, pre-norm blocks, no register tokens,
    no layer scale) to a FastViT holding the same weights. Anything else raises an error that
    names the unsupported feature."""
    try:
        from timm.models.vision_transformer import Block as TimmBlock
        from timm.models.vision_transformer import VisionTransformer
        from timm.layers import Mlp as TimmMlp
        from timm.layers import PatchEmbed as TimmPatchEmbed
    except ImportError as e:  # pragma: no cover - timm is in the test extra
        raise ImportError("from_timm needs timm: pip install timm") from e
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"model must be a timm VisionTransformer, got {type(model).__name__}")

    def unsupported(feature: str):
        raise UnsupportedModelError(f"cannot convert this timm ViT: {feature} is not supported by FastViT")

    if model.cls_token is None:
        unsupported("a model without a class token (class_token=False)")
    if getattr(model, "num_reg_tokens", 0) or getattr(model, "reg_token", None) is not None:
        unsupported("register tokens (reg_tokens > 0)")
    if getattr(model, "no_embed_class", False):
        unsupported("position embeddings that exclude the class token (no_embed_class=True)")
    if model.pos_embed is None:
        unsupported("a model without absolute position embeddings")
    if not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity):
        unsupported("a LayerNorm before the blocks (pre_norm=True, as in CLIP)")
    if model.global_pool not in ("token", "avg"):
        unsupported(f"global_pool={model.global_pool!r}")
    if getattr(model, "attn_pool", None) is not None:
        unsupported("attention pooling (global_pool='map')")
    pe = model.patch_embed
    if type(pe) is not TimmPatchEmbed or not isinstance(pe.norm, nn.Identity):
        unsupported("a patch embedding other than a plain strided Conv2d")
    conv = pe.proj
    if conv.kernel_size != conv.stride or conv.padding != (0, 0) or getattr(pe, "dynamic_img_pad", False):
        unsupported("a padded or overlapping patch convolution")
    if conv.bias is None:
        unsupported("a patch convolution without bias")
    want_fc_norm = model.global_pool == "avg"
    if isinstance(model.fc_norm, nn.LayerNorm) != want_fc_norm or isinstance(model.norm, nn.LayerNorm) == want_fc_norm:
        unsupported("a final norm placement other than timm's default for this global_pool (fc_norm)")
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        unsupported(f"a head of type {type(model.head).__name__}")

    blocks = list(model.blocks)
    first = blocks[0]
    dim = model.embed_dim
    for i, blk in enumerate(blocks):
        where = f"blocks.{i}"
        if type(blk) is not TimmBlock:
            unsupported(f"{where} of type {type(blk).__name__} (only pre-norm timm Block)")
        if not isinstance(blk.ls1, nn.Identity) or not isinstance(blk.ls2, nn.Identity):
            unsupported(f"layer scale in {where} (init_values)")
        a = blk.attn
        if not isinstance(getattr(a, "q_norm", nn.Identity()), nn.Identity) or \
                not isinstance(getattr(a, "k_norm", nn.Identity()), nn.Identity):
            unsupported(f"q/k normalisation in {where} (qk_norm=True)")
        if not isinstance(getattr(a, "norm", nn.Identity()), nn.Identity):
            unsupported(f"a norm inside attention in {where} (scale_attn_norm)")
        if type(blk.mlp) is not TimmMlp or not isinstance(blk.mlp.norm, nn.Identity):
            unsupported(f"an MLP other than fc1 -> GELU -> fc2 in {where} (e.g. SwiGLU or scale_mlp_norm)")
        if type(blk.mlp.act) is not nn.GELU:
            unsupported(f"activation {type(blk.mlp.act).__name__} in {where} (only nn.GELU)")
        for norm_name in ("norm1", "norm2"):
            n = getattr(blk, norm_name)
            if type(n) is not nn.LayerNorm and not (isinstance(n, nn.LayerNorm) and n.__class__.__name__ == "LayerNorm"):
                unsupported(f"{where}.{norm_name} of type {type(n).__name__} (only LayerNorm)")
            if not math.isclose(n.eps, 1e-6):
                unsupported(f"LayerNorm eps {n.eps} in {where}.{norm_name} (FastViT uses 1e-6)")
        if (blk.attn.qkv.bias is None) != (first.attn.qkv.bias is None) or blk.mlp.fc1.out_features != first.mlp.fc1.out_features \
                or blk.mlp.act.approximate != first.mlp.act.approximate or blk.attn.num_heads != first.attn.num_heads:
            unsupported(f"blocks that differ from each other ({where})")
        if blk.attn.proj.bias is None or blk.mlp.fc1.bias is None or blk.mlp.fc2.bias is None:
            unsupported(f"a bias-free proj or MLP Linear in {where}")
    final_norm = model.fc_norm if want_fc_norm else model.norm
    if not math.isclose(final_norm.eps, 1e-6):
        unsupported(f"final LayerNorm eps {final_norm.eps} (FastViT uses 1e-6)")

    attn_drop = first.attn.attn_drop.p if isinstance(first.attn.attn_drop, nn.Dropout) else 0.0
    proj_drop = first.attn.proj_drop.p if isinstance(first.attn.proj_drop, nn.Dropout) else 0.0
    dpr = [getattr(b.drop_path1, "drop_prob", 0.0) for b in blocks]
    fast = FastViT(
        img_size=pe.img_size, patch_size=pe.patch_size, in_chans=conv.in_channels,
        num_classes=model.num_classes, embed_dim=dim, depth=len(blocks), num_heads=first.attn.num_heads,
        mlp_ratio=first.mlp.fc1.out_features / dim, qkv_bias=first.attn.qkv.bias is not None,
        drop_rate=model.pos_drop.p if isinstance(model.pos_drop, nn.Dropout) else 0.0,
        attn_drop_rate=attn_drop, proj_drop_rate=proj_drop, drop_path_rate=max(dpr) if dpr else 0.0,
        global_pool=model.global_pool, gelu_approximate=first.mlp.act.approximate, backend=backend)
    _load_strict(fast, model.state_dict(), source="timm")
    return fast.to(device=model.cls_token.device, dtype=model.cls_token.dtype).train(model.training)


# -- torchvision ---------------------------------------------------------------------------------
def from_torchvision(model: nn.Module, backend: str = "auto") -> FastViT:
    """Convert a torchvision ``VisionTransformer`` (vit_b_16, vit_b_32, vit_l_16, vit_l_32,
    vit_h_14) to a FastViT holding the same weights."""
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
    heads = layers[0].num_heads
    fast = FastViT(img_size=model.image_size, patch_size=model.patch_size, in_chans=model.conv_proj.in_channels,
                   num_classes=model.num_classes, embed_dim=model.hidden_dim, depth=len(layers), num_heads=heads,
                   mlp_ratio=model.mlp_dim / model.hidden_dim, qkv_bias=True, drop_rate=model.dropout,
                   attn_drop_rate=model.attention_dropout, proj_drop_rate=model.dropout, backend=backend)
    _load_strict(fast, torchvision_to_timm(model.state_dict()), source="torchvision")
    return fast.to(device=model.class_token.device, dtype=model.class_token.dtype).train(model.training)


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


# -- checkpoint files ----------------------------------------------------------------------------
def load_checkpoint(model: FastViT, path: str | os.PathLike, strict: bool = True) -> FastViT:
    """Load a ``.safetensors`` or ``.pt``/``.pth`` file (``torch.load(weights_only=True)``) of timm or
    torchvision layout into ``model``; position embeddings of another grid are resampled. Any other
    mismatch is reported key by key."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path, device="cpu")
    elif path.endswith((".pt", ".pth", ".bin")):
        sd = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"path must end in .safetensors, .pt or .pth, got {path!r}")
    sd = _unwrap(sd)
    if any(k.startswith("encoder.layers.") for k in sd):
        sd = torchvision_to_timm(sd)
    sd = dict(sd)
    if "pos_embed" in sd and sd["pos_embed"].shape != model.pos_embed.shape:
        sd["pos_embed"] = _resample_checkpoint_pos(sd["pos_embed"], model)
    _load_strict(model, sd, source=os.path.basename(path), strict=strict)
    return model


def _unwrap(obj) -> dict:
    """The tensor dict inside common checkpoint wrappers ({'state_dict': ...}, {'model': ...}, DDP's 'module.')."""
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("checkpoint must hold a dict of tensors (a state dict), possibly under 'state_dict' or 'model'")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _resample_checkpoint_pos(pos: torch.Tensor, model: FastViT) -> torch.Tensor:
    n = pos.shape[1] - model.num_prefix_tokens
    side = math.isqrt(n)
    if pos.dim() != 3 or pos.shape[-1] != model.pos_embed.shape[-1] or side * side != n:
        raise ValueError(f"pos_embed: checkpoint shape {tuple(pos.shape)} cannot be resampled to the model's "
                         f"{tuple(model.pos_embed.shape)} (needs the same width and a square grid)")
    return resample_pos_embed(pos, model.patch_embed.grid_size, (side, side))


def _load_strict(model: nn.Module, sd: dict, source: str, strict: bool = True) -> None:
    own = model.state_dict()
    problems = []
    for k in own:
        if k not in sd:
            problems.append(f"missing key {k} (shape {tuple(own[k].shape)})")
        elif tuple(sd[k].shape) != tuple(own[k].shape):
            problems.append(f"{k}: checkpoint shape {tuple(sd[k].shape)}, model shape {tuple(own[k].shape)}")
    problems += [f"unexpected key {k}" for k in sd if k not in own]
    if strict and problems:
        raise ValueError(f"weights from {source} do not fit the model:\n  " + "\n  ".join(problems))
    model.load_state_dict({k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)},
                          strict=strict)
