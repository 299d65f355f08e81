"""FastViT's constructor arguments checked, each error naming the argument (the model-level
counterpart of fastvit/ops/_checks.py)."""
from __future__ import annotations

from .layers import pair
from .ops._checks import check_approximate
from .pooling import GLOBAL_POOLS

# timm's act_layer names -> the ``approximate`` of fastvit.ops.linear_gelu
ACT_LAYERS = {"gelu": "none", "gelu_tanh": "tanh", "quick_gelu": "quick"}


def activation_approximate(act_layer, gelu_approximate) -> str:
    """One ``approximate`` from timm's ``act_layer`` name or fastvit's ``gelu_approximate``."""
    if act_layer is not None:
        if act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer must be one of {', '.join(map(repr, ACT_LAYERS))}, got {act_layer!r}")
        if gelu_approximate is not None and gelu_approximate != ACT_LAYERS[act_layer]:
            raise ValueError(f"act_layer={act_layer!r} and gelu_approximate={gelu_approximate!r} disagree; "
                             f"give one of them")
        return ACT_LAYERS[act_layer]
    try:
        return check_approximate("none" if gelu_approximate is None else gelu_approximate)
    except ValueError as e:
        raise ValueError(str(e).replace("approximate must", "gelu_approximate must")) from None


def check_divisible(size, patch, what: str) -> None:
    if size[0] % patch[0] or size[1] % patch[1] or size[0] < patch[0] or size[1] < patch[1]:
        raise ValueError(f"{what} {tuple(size)} must be positive multiples of the patch size {tuple(patch)}")


def check_config(*, img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                  global_pool, reg_tokens, class_token, dist_token, norm_eps, rates) -> None:
    for name, v in (("in_chans", in_chans), ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int (0 for no head), got {num_classes!r}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
    check_divisible(pair(img_size), pair(patch_size), "img_size")
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {', '.join(map(repr, GLOBAL_POOLS))}, got {global_pool!r}")
    if global_pool == "token" and not class_token:
        raise ValueError("global_pool='token' needs the class token; with class_token=False use 'avg', 'map' or ''")
    if dist_token and (not class_token or global_pool != "token"):
        raise ValueError("dist_token=True needs class_token=True and global_pool='token' (DeiT's distilled heads)")
    if isinstance(reg_tokens, bool) or not isinstance(reg_tokens, int) or reg_tokens < 0:
        raise ValueError(f"reg_tokens must be a non-negative int, got {reg_tokens!r}")
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not norm_eps > 0:
        raise ValueError(f"norm_eps must be a positive float, got {norm_eps!r}")
    for name, r in rates.items():
        if not 0.0 <= r < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {r!r}")


