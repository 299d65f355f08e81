"""Checkpoint files (.safetensors, .pt/.pth/.bin) of timm's, torchvision's, transformers' or
open_clip's layout into a FastViT."""
from __future__ import annotations

import math
import os

import torch

from ..pos_embed import resample_pos_embed
from ..vit import FastViT
from ._common import load_strict
from .open_clip_vit import is_open_clip_layout, open_clip_to_timm
from .torchvision_vit import is_torchvision_layout, torchvision_to_timm
from .transformers_vit import is_transformers_layout, transformers_to_timm


def load_checkpoint(model: FastViT, path: str | os.PathLike, strict: bool = True) -> FastViT:
    """Load a ``.safetensors`` or ``.pt``/``.pth``/``.bin`` file (``torch.load(weights_only=True)``)
    of timm, torchvision, transformers or open_clip layout (recognised by its keys, renamed
    with the converters' own mappings) into ``model``; position embeddings of another grid are
    resampled. Any other mismatch is reported key by key."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
    sd = _unwrap(_read(path), path)
    # transformers first: CLIP's "encoder.layers.N." would also pass torchvision's test
    if is_transformers_layout(sd):
        sd = transformers_to_timm(sd)
    elif is_torchvision_layout(sd):
        sd = torchvision_to_timm(sd)
    elif is_open_clip_layout(sd):
        sd = open_clip_to_timm(sd, fc_norm=not isinstance(model.fc_norm, torch.nn.Identity))
    sd = dict(sd)
    _check_width(sd, model, path)
    if "pos_embed" in sd and sd["pos_embed"].shape != model.pos_embed.shape:
        sd["pos_embed"] = _resample_checkpoint_pos(sd["pos_embed"], model)
    load_strict(model, sd, source=os.path.basename(path), strict=strict)
    return model


def _read(path: str):
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except SafetensorError as e:
            raise ValueError(f"{path!r} is not a readable .safetensors checkpoint ({e})") from None
    if path.endswith((".pt", ".pth", ".bin")):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch.load raises many types for a file that is not ours
            # torch's own message suggests weights_only=False, which would run arbitrary code
            # from the file: never pass that on.
            raise ValueError(f"{path!r} is not a checkpoint fastvit can read: torch.load(weights_only=True) "
                             f"failed with {type(e).__name__}; a checkpoint is a file of tensors saved with "
                             f"torch.save(model.state_dict(), path)") from None
    raise ValueError(f"path must end in .safetensors, .pt, .pth or .bin, got {path!r}")


def _unwrap(obj, path: str) -> dict:
    """The tensor dict inside common checkpoint wrappers ({'state_dict': ...}, {'model': ...}, DDP's 'module.')."""
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path!r} is not a checkpoint: it must hold a dict of tensors (a state dict), possibly "
                         f"under 'state_dict' or 'model'; got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _check_width(sd: dict, model: FastViT, path: str) -> None:
    """A checkpoint of another model width is named as such, before any resampling is tried."""
    for key in ("patch_embed.proj.weight", "pos_embed", "cls_token"):
        if key in sd:
            theirs = sd[key].shape[0] if key == "patch_embed.proj.weight" else sd[key].shape[-1]
            if theirs != model.embed_dim:
                raise ValueError(f"{os.path.basename(path)} is for another model: width {theirs} in the checkpoint "
                                 f"({key}), {model.embed_dim} in the model")
            return


def _resample_checkpoint_pos(pos: torch.Tensor, model: FastViT) -> torch.Tensor:
    prefix = model._embedded_prefix()
    n = pos.shape[1] - prefix
    side = math.isqrt(max(n, 0))
    if pos.dim() != 3 or side * side != n:
        raise ValueError(f"pos_embed: checkpoint shape {tuple(pos.shape)} cannot be resampled to the model's "
                         f"{tuple(model.pos_embed.shape)} (needs {prefix} prefix embeddings and a square grid)")
    return resample_pos_embed(pos, model.patch_embed.grid_size, (side, side), prefix)
