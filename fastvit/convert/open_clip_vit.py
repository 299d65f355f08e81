"""open_clip's image tower (``open_clip.create_model(...).visual``, a ``VisionTransformer``) to
FastViT, and its state-dict layout to timm's.

FastViT's ``forward`` equals the tower's output (the image embedding: ``proj`` becomes the head,
a Linear with a zero bias, ``num_classes = output_dim``); ``forward_head(pre_logits=True)`` is
the pooled feature before ``proj``. ``pool_type`` "tok" -> global_pool "token", "avg" -> "avg",
"none" -> "" (``final_ln_after_pool`` -> ``fc_norm`` for "avg"); ``ln_pre`` -> ``pre_norm``
(``no_ln_pre``: the patch convolution gets a zero bias, as FastViT has one without pre_norm);
``ls_init_value`` -> layer scale. Refused by name: attentional pooling (CoCa), the custom block
(qk_norm, scaled cosine attention, head scaling), patch dropout, and activations other than
GELU / QuickGELU.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn as nn

from ..vit import FastViT
from ._common import UnsupportedModelError, build_with_weights

_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_KEYS = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias", "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
    "ls_1.gamma": "ls1.gamma", "ls_2.gamma": "ls2.gamma",
}
_TOP_KEYS = {"conv1.weight": "patch_embed.proj.weight", "ln_pre.weight": "norm_pre.weight",
             "ln_pre.bias": "norm_pre.bias"}


def is_open_clip_layout(state_dict: dict) -> bool:
    return any(k.endswith("conv1.weight") for k in state_dict) and any("transformer.resblocks." in k
                                                                       for k in state_dict)


def open_clip_to_timm(state_dict: dict, fc_norm: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """Rename an open_clip ``VisionTransformer`` state dict (or a whole CLIP model's: the
    ``visual.`` keys are taken) to timm's (= FastViT's) names. ``ln_post`` becomes ``fc_norm``
    when ``fc_norm`` (average pooling with the norm after pooling), else ``norm``."""
    if any(k.startswith("visual.") for k in state_dict):
        state_dict = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    post = "fc_norm" if fc_norm else "norm"
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        m = _BLOCK.match(key)
        if m and m.group(2) in _BLOCK_KEYS:
            out[f"blocks.{m.group(1)}.{_BLOCK_KEYS[m.group(2)]}"] = value
        elif key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
        elif key == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            out["pos_embed"] = value.unsqueeze(0)
        elif key in ("ln_post.weight", "ln_post.bias"):
            out[f"{post}.{key.split('.')[1]}"] = value
        elif key == "proj":   # (width, output_dim), used as x @ proj: a Linear's weight transposed
            out["head.weight"] = value.t()
            out["head.bias"] = value.new_zeros(value.shape[1])
        else:
            unknown.append(key)
    if unknown:
        raise UnsupportedModelError(f"open_clip state dict has keys FastViT cannot map: {', '.join(unknown[:10])}"
                                    + (" ..." if len(unknown) > 10 else ""))
    if "norm_pre.weight" not in out and "patch_embed.proj.weight" in out:   # no_ln_pre: FastViT has a bias
        w = out["patch_embed.proj.weight"]
        out["patch_embed.proj.bias"] = w.new_zeros(w.shape[0])
    return out


def _refuse(feature: str):
    raise UnsupportedModelError(f"cannot convert this open_clip VisionTransformer: {feature}")


def from_open_clip(visual: nn.Module, backend: str = "auto") -> FastViT:
    """Convert open_clip's ``VisionTransformer`` (``model.visual``) to a FastViT holding the same
    weights; what FastViT cannot represent is refused by name (module docstring)."""
    try:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    except ImportError as e:  # pragma: no cover - open_clip is in the integrations extra
        raise ImportError("from_open_clip needs open_clip: pip install open_clip_torch") from e
    if not isinstance(visual, VisionTransformer):
        hint = " (pass model.visual)" if hasattr(visual, "visual") else ""
        raise TypeError(f"visual must be open_clip's VisionTransformer{hint}, got {type(visual).__name__}")
    if visual.attn_pool is not None:
        _refuse("attentional pooling (attentional_pool=True, CoCa) is not supported")
    if not isinstance(visual.patch_dropout, nn.Identity):
        _refuse("patch dropout (patch_dropout > 0) is not supported")
    blocks = list(visual.transformer.resblocks)
    for i, blk in enumerate(blocks):
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            _refuse(f"transformer.resblocks.{i} is a {type(blk).__name__} (qk_norm, scaled cosine attention or head "
                    f"scaling); only the default ResidualAttentionBlock is supported")
        if not blk.attn.batch_first or blk.attn.in_proj_bias is None or blk.attn.bias_k is not None:
            _refuse(f"transformer.resblocks.{i}.attn: only batch-first attention with in_proj bias is supported")
    from ..integrations._forwards import activation_approximate
    first = blocks[0]
    approx = activation_approximate(first.mlp.gelu)
    if approx is None:
        _refuse(f"the activation {type(first.mlp.gelu).__name__} is not supported (GELU and QuickGELU are)")
    eps = {m.eps for m in visual.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) != 1:
        _refuse(f"LayerNorms with different eps ({sorted(eps)}) are not supported")
    pool = {"tok": "token", "avg": "avg", "none": ""}[visual.pool_type]
    fc_norm = bool(visual.final_ln_after_pool) and pool == "avg"
    dim = visual.conv1.out_channels
    proj = visual.proj
    kwargs = dict(
        img_size=visual.image_size, patch_size=visual.patch_size, in_chans=visual.conv1.in_channels,
        num_classes=0 if proj is None else proj.shape[1], embed_dim=dim, depth=len(blocks),
        num_heads=first.attn.num_heads, mlp_ratio=first.mlp.c_fc.out_features / dim, qkv_bias=True,
        init_values=1e-5 if not isinstance(first.ls_1, nn.Identity) else None, pre_norm=not isinstance(
            visual.ln_pre, nn.Identity), fc_norm=fc_norm, global_pool=pool, gelu_approximate=approx,
        norm_eps=eps.pop(), attn_drop_rate=float(first.attn.dropout), backend=backend)
    sd = open_clip_to_timm(visual.state_dict(), fc_norm=fc_norm)
    return build_with_weights(kwargs, sd, "open_clip", like=visual.conv1.weight, training=visual.training)
