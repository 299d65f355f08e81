"""FastViT on a list of images of different sizes: every image's tokens packed into one sequence
without padding, each image attending only to itself (``fastvit.ops.varlen_qkv_attention``).

Position embeddings are resampled once per distinct patch grid in the call; images of one size
share one patch-embedding call; CLS, distillation and register tokens are per image; pooling is
per image. Everything else (LayerNorms, Linears, the MLP) runs on the packed (1, T, D) tokens
exactly as on a batch.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class Packing(NamedTuple):
    """Where each image's tokens are in the packed sequence."""
    cu_seqlens: torch.Tensor      # (S + 1,) int32 on the tokens' device: 0, n_0, n_0 + n_1, ...
    max_seqlen: int
    lengths: tuple[int, ...]      # the same, as host ints (known from the image sizes: no sync)


def check_images(model, images: Sequence) -> list[torch.Tensor]:
    """Every image (C, H, W), floating, of the model's channels, sides multiples of the patch,
    one dtype and device; errors name the image's index."""
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(f"images must be a non-empty list of (C, H, W) tensors, got "
                         f"{type(images).__name__} of length {len(images) if hasattr(images, '__len__') else '?'}")
    in_chans = model.patch_embed.proj.in_channels
    ph, pw = model.patch_size
    first = images[0]
    for i, img in enumerate(images):
        what = f"images[{i}]"
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(img).__name__}")
        if img.dim() != 3 or img.shape[0] != in_chans:
            raise ValueError(f"{what} must have shape ({in_chans}, H, W), got {tuple(img.shape)}")
        if not img.is_floating_point():
            raise TypeError(f"{what} must have a floating dtype, got {img.dtype}")
        h, w = img.shape[-2:]
        if h % ph or w % pw or h < ph or w < pw:
            raise ValueError(f"{what} has sides {(h, w)}; they must be positive multiples of the patch size {(ph, pw)}")
        if img.dtype != first.dtype or img.device != first.device:
            raise ValueError(f"{what} is {img.dtype} on {img.device} but images[0] is {first.dtype} on "
                             f"{first.device}; they must match")
    return list(images)


def embed_images(model, images: list[torch.Tensor]) -> tuple[torch.Tensor, Packing]:
    """Packed tokens (1, T, D) of every image (prefix tokens, then its patches) and their Packing."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_size.setdefault(tuple(img.shape[-2:]), []).append(i)
    tokens: list[torch.Tensor | None] = [None] * len(images)
    for idx in by_size.values():  # one patch embedding and one resampling per distinct size
        embedded = model._embed(torch.stack([images[i] for i in idx]))
        for j, i in enumerate(idx):
            tokens[i] = embedded[j]
    lengths = tuple(t.shape[0] for t in tokens)
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    cu = torch.tensor(offsets, dtype=torch.int32, device=images[0].device)
    return torch.cat(tokens, dim=0).unsqueeze(0), Packing(cu, max(lengths), lengths)


def rope_tables(model, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary (cos, sin) of the packed tokens, one row per token (T, head_dim): each image's
    prefix tokens get identity rows (cos 1, sin 0: not rotated, as in an image batch), its
    patches the table of its own grid (``model.rope``, cached per grid)."""
    ph, pw = model.patch_size
    cos, sin = [], []
    for img in images:
        c, s = model.rope((img.shape[-2] // ph, img.shape[-1] // pw), img.device)
        n = model.num_prefix_tokens
        cos += [c.new_ones((n, c.shape[1])), c]
        sin += [s.new_zeros((n, s.shape[1])), s]
    return torch.cat(cos), torch.cat(sin)


def forward_head_packed(model, tokens: torch.Tensor, packing: Packing, pre_logits: bool = False):
    """``forward_head`` of each image's tokens: (len(images), num_classes) (or pooled features)."""
    outs, start = [], 0
    for n in packing.lengths:
        outs.append(model.forward_head(tokens[None, start:start + n], pre_logits=pre_logits))
        start += n
    if isinstance(outs[0], tuple):  # DeiT's two heads in distilled training
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)
