"""Registered model names (timm's names and configurations) and the parameter-count formula."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from .layers import pair


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
    # the options timm's VisionTransformer families differ by (FastViT's docstring)
    qkv_bias: bool = True
    qk_norm: bool = False
    proj_bias: bool = True
    init_values: float | None = None
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    dist_token: bool = False
    pre_norm: bool = False
    fc_norm: bool | None = None
    global_pool: str = "token"
    act_layer: str = "gelu"
    norm_eps: float = 1e-6
    # timm's Eva options (fastvit.eva): rotary embeddings (a fastvit.rope preset name), gated MLPs
    rope: str | None = None
    mlp_layer: str = "mlp"
    scale_mlp: bool = False
    qkv_fused: bool = True
    pos_embed: str = "learn"

    def kwargs(self) -> dict:
        """The FastViT keyword arguments: the architecture, options left at their default omitted."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _ARCH or v != f.default:
                out[f.name] = v
        return out


_ARCH = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_classes", "mlp_ratio", "in_chans")
V = VariantConfig
_DINOV2 = dict(init_values=1e-5, num_classes=0)
_CLIP = dict(pre_norm=True, norm_eps=1e-5)
_SIGLIP = dict(class_token=False, global_pool="map", num_classes=0)
_DEIT3 = dict(init_values=1e-6, no_embed_class=True)
_EVA02 = dict(mlp_ratio=4 * 2 / 3, mlp_layer="swiglu_packed", rope="eva02", global_pool="avg")
_DINOV3 = dict(num_classes=0, qkv_bias=False, init_values=1e-5, rope="dinov3", pos_embed="none", reg_tokens=4,
               global_pool="avg", fc_norm=False, norm_eps=1e-5)

_VARIANTS: dict[str, VariantConfig] = {
    "vit_tiny_patch16_224": V(224, 16, 192, 12, 3),
    "vit_small_patch16_224": V(224, 16, 384, 12, 6),
    "vit_base_patch16_224": V(224, 16, 768, 12, 12),
    "vit_base_patch32_224": V(224, 32, 768, 12, 12),
    "vit_base_patch8_224": V(224, 8, 768, 12, 12),
    "vit_large_patch16_224": V(224, 16, 1024, 24, 16),
    "vit_large_patch14_224": V(224, 14, 1024, 24, 16),
    "vit_huge_patch14_224": V(224, 14, 1280, 32, 16),
    # The seeds' CIFAR-10 family: 32 x 32 images, 4 x 4 patches, 10 classes.
    "vit_cifar_small": V(32, 4, 192, 12, 3, num_classes=10),
    "vit_cifar_base": V(32, 4, 384, 12, 6, num_classes=10),
    "vit_cifar_large": V(32, 4, 512, 24, 8, num_classes=10),
    # DeiT (distillation token and head) and DeiT-III (layer scale, no class position embedding)
    "deit_tiny_distilled_patch16_224": V(224, 16, 192, 12, 3, dist_token=True),
    "deit3_small_patch16_224": V(224, 16, 384, 12, 6, **_DEIT3),
    "deit3_base_patch16_384": V(384, 16, 768, 12, 12, **_DEIT3),
    # DINOv2 (layer scale; registers with position embeddings on the patches only), feature towers
    "vit_small_patch14_dinov2": V(518, 14, 384, 12, 6, **_DINOV2),
    "vit_base_patch14_reg4_dinov2": V(518, 14, 768, 12, 12, reg_tokens=4, no_embed_class=True, **_DINOV2),
    "vit_large_patch14_dinov2": V(518, 14, 1024, 24, 16, **_DINOV2),
    # CLIP image towers (LayerNorm before the blocks, eps 1e-5, bias-free patch embedding)
    "vit_base_patch16_clip_224": V(224, 16, 768, 12, 12, **_CLIP),
    "vit_base_patch16_clip_quickgelu_224": V(224, 16, 768, 12, 12, num_classes=512, act_layer="quick_gelu", **_CLIP),
    "vit_large_patch14_clip_224": V(224, 14, 1024, 24, 16, **_CLIP),
    # SigLIP image towers (no class token, attention pooling), and pooled-average variants
    "vit_base_patch16_siglip_224": V(224, 16, 768, 12, 12, **_SIGLIP),
    "vit_so400m_patch14_siglip_224": V(224, 14, 1152, 27, 16, mlp_ratio=3.7362, **_SIGLIP),
    "vit_base_patch16_siglip_gap_224": V(224, 16, 768, 12, 12, class_token=False, global_pool="avg", fc_norm=False,
                                         num_classes=0),
    "vit_medium_patch16_gap_256": V(256, 16, 512, 12, 8, class_token=False, global_pool="avg", qkv_bias=False,
                                    init_values=1e-6, fc_norm=False),
    # timm's Eva class: EVA-02 (SwiGLU, rotary embeddings with interleaved pairs; base and large
    # with separate q/k/v projections and a norm inside the MLP), DINOv3 (rotate-half rotary
    # embeddings, no absolute position embeddings, 4 registers), timm's rope ViT
    "eva02_tiny_patch14_224": V(224, 14, 192, 12, 3, num_classes=0, **_EVA02),
    "eva02_small_patch14_336": V(336, 14, 384, 12, 6, **_EVA02),
    "eva02_base_patch14_224": V(224, 14, 768, 12, 12, **dict(_EVA02, mlp_layer="swiglu", scale_mlp=True,
                                                             qkv_fused=False, num_classes=0)),
    "eva02_large_patch14_224": V(224, 14, 1024, 24, 16, **dict(_EVA02, mlp_layer="swiglu", scale_mlp=True,
                                                               qkv_fused=False, num_classes=0)),
    "vit_small_patch16_dinov3": V(224, 16, 384, 12, 6, **_DINOV3),
    "vit_small_plus_patch16_dinov3": V(224, 16, 384, 12, 6, mlp_layer="swiglu", **_DINOV3),
    "vit_base_patch16_dinov3": V(224, 16, 768, 12, 12, **_DINOV3),
    "vit_large_patch16_dinov3": V(224, 16, 1024, 24, 16, **_DINOV3),
    "vit_base_patch16_rope_reg1_gap_256": V(256, 16, 768, 12, 12, init_values=1e-5, class_token=False, reg_tokens=1,
                                            rope="eva02", pos_embed="none", global_pool="avg"),
}


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def model_config(name: str) -> VariantConfig:
    if not isinstance(name, str) or name not in _VARIANTS:
        close = difflib.get_close_matches(str(name), list(_VARIANTS), n=3, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint} (`fastvit list` or fastvit.list_models() lists all)")
    return _VARIANTS[name]


def count_params(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 mlp_ratio=4.0, qkv_bias=True, qk_norm=False, proj_bias=True, init_values=None, class_token=True,
                 reg_tokens=0, no_embed_class=False, dist_token=False, pre_norm=False, global_pool="token",
                 num_heads=12, rope=None, mlp_layer="mlp", scale_mlp=False, qkv_fused=True, pos_embed="learn",
                 **_ignored) -> int:
    """Parameter count from the architecture's formula, independent of any module."""
    h, w = pair(img_size)
    ph, pw = pair(patch_size)
    d = embed_dim
    hidden = int(d * mlp_ratio)
    patches = (h // ph) * (w // pw)
    embedded_prefix = 0 if no_embed_class else int(class_token) + int(dist_token)
    patch = in_chans * ph * pw * d + (0 if pre_norm else d)  # timm drops the conv bias with pre_norm
    tokens = (int(class_token) + int(dist_token) + reg_tokens) * d
    tokens += (patches + embedded_prefix) * d if pos_embed == "learn" else 0
    # Eva blocks (any Eva option): q and v biases only; rotary tables hold no parameters
    eva = rope is not None or mlp_layer != "mlp" or scale_mlp or not qkv_fused
    fc1 = {"mlp": 1, "swiglu": 2, "swiglu_packed": 2}[mlp_layer]  # fc1 (+ fc1_x) outputs, in hidden widths
    block = (2 * d  # norm1
             + 3 * d * d + ((2 if eva else 3) * d if qkv_bias else 0)  # qkv (q_bias, v_bias)
             + (4 * (d // num_heads) if qk_norm else 0)  # q_norm, k_norm
             + d * d + (d if proj_bias else 0)  # proj
             + (2 * d if init_values else 0)  # ls1, ls2 (gamma_1, gamma_2)
             + 2 * d  # norm2
             + fc1 * (d * hidden + (hidden if proj_bias else 0))  # fc1 (fc1_g, fc1_x)
             + (2 * hidden if scale_mlp else 0)  # the norm inside the MLP
             + hidden * d + (d if proj_bias else 0))  # fc2
    norms = 2 * d + (2 * d if pre_norm else 0)  # final norm (or fc_norm), norm_pre
    attn_pool = 0
    if global_pool == "map":
        attn_pool = (d  # latent
                     + d * d + d + 2 * d * d + 2 * d + d * d + d  # q, kv, proj
                     + 2 * d + d * hidden + hidden + hidden * d + d)  # norm, mlp
    head = (d * num_classes + num_classes) * (2 if dist_token else 1) if num_classes > 0 else 0
    return patch + tokens + depth * block + norms + attn_pool + head
