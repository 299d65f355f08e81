"""Packing images of mixed sizes into batches by a token budget (for ``varlen_attention``).

A ViT sees an image of H x W pixels as (H/p) * (W/p) patch tokens plus a few prefix tokens (the
class token, registers). Packing images whose token counts sum to at most a budget gives
batches of nearly constant cost whatever the sizes, with no padding: the tokens of a batch are
concatenated and ``cu_seqlens`` marks where each image starts (``cu_seqlens_for``).

``pack_by_tokens`` returns lists of indices, not images: a training loop gathers images and
labels (or any per-sample data) together by index, and the indices work for a dataset that
holds only image sizes. Batches are formed by first-fit decreasing (FFD): images taken from the
most tokens to the fewest, each into the first batch with room for it, which fills batches
close to the budget (FFD needs at most 11/9 OPT + 6/9 batches, OPT the fewest possible). It
sorts by size, so to keep the randomness of a shuffled dataset, shuffle, then pack, then
shuffle the order of the batches; ``order="preserve"`` instead packs in the given order
(next fit: a batch is closed when the next image does not fit), which keeps neighbours together
but leaves more of each batch's budget unused.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch

PACK_ORDERS = ("ffd", "preserve")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def image_tokens(images: Sequence, patch_size: int, prefix_tokens: int = 1) -> list[int]:
    """Tokens of each (C, H, W) image: (H / patch_size) * (W / patch_size) + prefix_tokens.
    Raises naming the index of an image that is not 3-D or whose sides patch_size does not divide."""
    _positive_int(patch_size, "patch_size")
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
        raise ValueError(f"prefix_tokens must be an int >= 0, got {prefix_tokens!r}")
    tokens = []
    for i, image in enumerate(images):
        shape = tuple(getattr(image, "shape", ()))
        if len(shape) != 3:
            raise ValueError(f"images[{i}] must be a (C, H, W) tensor, got shape {shape}")
        h, w = shape[1], shape[2]
        if h < 1 or w < 1 or h % patch_size or w % patch_size:
            raise ValueError(f"images[{i}] has size {h} x {w}, which patch_size={patch_size} does not divide "
                             f"(both sides must be positive multiples of it)")
        tokens.append((h // patch_size) * (w // patch_size) + prefix_tokens)
    return tokens


def pack_by_tokens(images: Sequence, token_budget: int, patch_size: int, prefix_tokens: int = 1,
                   order: str = "ffd") -> list[list[int]]:
    """Group ``images`` (a sequence of (C, H_i, W_i) tensors, or anything with such a ``shape``)
    into batches of at most ``token_budget`` tokens each.

    Returns a list of batches, each a list of indices into ``images`` in increasing order; every
    index appears exactly once. ``order``: ``"ffd"`` (first-fit decreasing, the default: fewest
    batches; batches come out in order of their largest image) or ``"preserve"`` (next fit in the
    given order: batch b holds a run of consecutive indices). An image with more tokens than the
    budget cannot share a batch: it gets a batch of its own (over the budget), rather than
    stopping an epoch over one large image; ``image_tokens`` tells which ones those are.
    """
    _positive_int(token_budget, "token_budget")
    if order not in PACK_ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, PACK_ORDERS))}, got {order!r}")
    tokens = image_tokens(images, patch_size, prefix_tokens)
    if order == "preserve":
        batches, load = [], token_budget + 1  # nothing is open yet
        for i, n in enumerate(tokens):
            if load + n > token_budget:
                batches.append([])
                load = 0
            batches[-1].append(i)
            load += n
        return batches
    batches, loads = [], []
    # Largest first; equal sizes in index order, so the result is deterministic.
    for i in sorted(range(len(tokens)), key=lambda j: (-tokens[j], j)):
        n = tokens[i]
        for b, load in enumerate(loads):  # first fit; O(images x batches), fine for a data loader
            if load + n <= token_budget:
                batches[b].append(i)
                loads[b] += n
                break
        else:
            batches.append([i])
            loads.append(n)
    return [sorted(b) for b in batches]


def cu_seqlens_for(images: Sequence, patch_size: int, prefix_tokens: int = 1,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """(cu_seqlens, max_seqlen) of one packed batch, as ``fastvit.ops.varlen_attention`` takes
    them: int32 (S+1,) cumulative token counts starting at 0, and the longest image's tokens."""
    tokens = image_tokens(images, patch_size, prefix_tokens)
    if not tokens:
        raise ValueError("images must hold at least one image")
    cu = torch.tensor([0, *itertools.accumulate(tokens)], dtype=torch.int32, device=device)
    return cu, max(tokens)
