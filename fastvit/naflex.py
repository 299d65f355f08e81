"""NaFlex input (timm's NaFlexVit): images of mixed sizes and aspect ratios given as patches.

A NaFlex batch is the dict timm's NaFlex collator yields: ``patches`` (B, L, P*P*C), each
patch's pixels in (row, column, channel) order; ``patch_coord`` (B, L, 2) integer (y, x) patch
grid coordinates; ``patch_valid`` (B, L) bool, False at the padding that brings every image to
L. timm runs all B * L positions with an attention mask; here only the valid patches run:
each image's valid patches (and its prefix tokens) become one sequence of the packed layout of
``fastvit.packed``, attending to itself through ``ops.varlen_qkv_attention``. The padding
costs nothing and its gradient is exactly zero.

Each image's patch grid is (max y + 1, max x + 1) over its valid patches; the position table
is resampled once per distinct grid and each patch takes the row of its own coordinate. timm
takes the maximum over all L positions, padding included, and adds the resampled grid to the
first h*w sequence positions: the same thing for what its collator produces (row-major
patches first, zero coordinates at the padding), which is what the tests feed both. ``NaFlexFastViT`` holds timm's NaFlex parameter names
(``embeds.proj``, ``embeds.pos_embed`` (1, H, W, D), ``embeds.cls_token``,
``embeds.reg_token``); a plain ``FastViT`` takes NaFlex batches too (its patch convolution
applied as the equivalent Linear, its position table resampled as for image batches).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import packed
from .layers import pair
from .model_checks import check_divisible
from .pos_embed import resample_pos_embed
from .vit import FastViT

NAFLEX_KEYS = ("patches", "patch_coord", "patch_valid")
INTERP_MODES = ("bicubic", "bilinear", "nearest", "area")


# -- the input ---------------------------------------------------------------------------------
def _patch_dim(model) -> int:
    if isinstance(model, NaFlexFastViT):
        return model.embeds.proj.in_features
    ph, pw = model.patch_size
    return model.patch_embed.proj.in_channels * ph * pw


def check_batch(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``patches``, ``patch_coord``, ``patch_valid`` of a NaFlex batch, checked; every error
    names the key, what it must be and what it is."""
    missing = [k for k in NAFLEX_KEYS if k not in batch]
    if missing:
        raise KeyError(f"a NaFlex batch needs the keys {', '.join(map(repr, NAFLEX_KEYS))}; missing "
                       f"{', '.join(map(repr, missing))} (got keys {sorted(map(str, batch))})")
    if batch.get("attn_mask") is not None:  # timm would use it in place of patch_valid's mask
        raise ValueError("batch['attn_mask'] is not supported: the attention of each image is given by "
                         "batch['patch_valid'] alone; drop the key or set it to None")
    patches, coord, valid = (batch[k] for k in NAFLEX_KEYS)
    for k, t in zip(NAFLEX_KEYS, (patches, coord, valid)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"batch[{k!r}] must be a torch.Tensor, got {type(t).__name__}")
    dim = _patch_dim(model)
    if patches.dim() != 3 or patches.shape[-1] != dim or not patches.is_floating_point():
        raise ValueError(f"batch['patches'] must be a floating (B, L, {dim}) tensor (P*P*C = {dim}), got "
                         f"{patches.dtype} of shape {tuple(patches.shape)}")
    B, L = patches.shape[:2]
    if tuple(coord.shape) != (B, L, 2) or coord.is_floating_point() or coord.dtype == torch.bool:
        raise ValueError(f"batch['patch_coord'] must be an integer (B, L, 2) = {(B, L, 2)} tensor of (y, x) grid "
                         f"coordinates, got {coord.dtype} of shape {tuple(coord.shape)}")
    if tuple(valid.shape) != (B, L) or valid.dtype != torch.bool:
        raise ValueError(f"batch['patch_valid'] must be a bool (B, L) = {(B, L)} tensor, got {valid.dtype} of "
                         f"shape {tuple(valid.shape)}")
    for k, t in (("patch_coord", coord), ("patch_valid", valid)):
        if t.device != patches.device:
            raise ValueError(f"batch[{k!r}] is on {t.device} but batch['patches'] is on {patches.device}")
    if B == 0:
        raise ValueError("batch['patches'] holds no image (B = 0)")
    return patches, coord, valid


def _grids_and_lengths(coord: torch.Tensor, valid: torch.Tensor):
    """Each image's patch grid (max y + 1, max x + 1 over its valid patches) and valid count,
    as host ints (one device sync, as timm's own grid sizes take)."""
    counts = valid.sum(1)
    masked = coord.masked_fill(~valid[..., None], 0)
    stats = torch.cat([counts[:, None], masked.amax(1) + 1, masked.amin(1)], 1).tolist()
    for i, (n, _, _, ymin, xmin) in enumerate(stats):
        if n == 0:
            raise ValueError(f"batch['patch_valid'][{i}] has no valid patch: image {i} would be empty; every image "
                             f"needs at least one")
        if min(ymin, xmin) < 0:
            raise ValueError(f"batch['patch_coord'][{i}] has a negative coordinate at a valid patch; (y, x) must be "
                             f">= 0")
    return [(h, w) for _, h, w, _, _ in stats], [n for n, *_ in stats]


# -- what differs between NaFlexFastViT and a plain FastViT --------------------------------------
def _project(model, patches: torch.Tensor) -> torch.Tensor:
    if isinstance(model, NaFlexFastViT):
        return model.embeds.proj(patches)
    conv = model.patch_embed.proj  # (D, C, ph, pw) -> (D, ph*pw*C): the (row, column, channel) layout
    return F.linear(patches, conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1), conv.bias)


def _pos_grid(model, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor | None:
    """(h*w, D) position embeddings of the grid ``size``, row-major; None without any."""
    if isinstance(model, NaFlexFastViT):
        return model.embeds.pos_grid(size, dtype)
    if model.pos_embed is None:
        return None
    n = model._embedded_prefix()
    pos = resample_pos_embed(model.pos_embed, size, model.patch_embed.grid_size, n)
    return pos[0, n:].to(dtype)


def _prefix(model, dtype: torch.dtype) -> torch.Tensor | None:
    """(num_prefix_tokens, D): the class, distillation and register tokens every image starts with."""
    if isinstance(model, NaFlexFastViT):
        return model.embeds.prefix(dtype)
    parts = [t[0] for t in (model.cls_token, model.dist_token, model.reg_token) if t is not None]
    if not parts:
        return None
    tokens = torch.cat(parts)
    if model.pos_embed is not None and model._embedded_prefix():  # the original ViT embeds them too
        tokens = tokens + model.pos_embed[0, :model._embedded_prefix()]
    return tokens.to(dtype)


def _pos_drop(model) -> nn.Module:
    return model.embeds.pos_drop if isinstance(model, NaFlexFastViT) else model.pos_drop


# -- embedding and running ----------------------------------------------------------------------
def embed_packed(model, patches: torch.Tensor, coord: torch.Tensor, lengths: Sequence[int],
                 grids: Sequence[tuple[int, int]]):
    """Packed tokens (1, T, D) and their Packing from every image's patches one after another:
    ``patches`` (n, P*P*C), ``coord`` (n, 2) (y, x), image i holding ``lengths[i]`` of them on the
    grid ``grids[i]``. Each image's sequence is its prefix tokens, then its patches."""
    x = _project(model, patches)
    sizes = list(dict.fromkeys(grids))  # one resampling per distinct grid, as timm
    tables = [_pos_grid(model, s, x.dtype) for s in sizes]
    if tables[0] is not None:
        # image i's patch at (y, x) takes row base_i + y * w_i + x of all tables stacked
        starts = torch.tensor([0] + [h * w for h, w in sizes[:-1]]).cumsum(0).tolist()
        base = torch.tensor([starts[sizes.index(g)] for g in grids], device=x.device)
        width = torch.tensor([w for _, w in grids], device=x.device)
        image = torch.repeat_interleave(torch.arange(len(grids), device=x.device),
                                        torch.tensor(list(lengths), device=x.device))
        rows = base[image] + coord[:, 0] * width[image] + coord[:, 1]
        x = x + torch.cat(tables)[rows]
    prefix = _prefix(model, x.dtype)
    if prefix is not None:
        x = torch.cat([t for part in x.split(list(lengths)) for t in (prefix, part)])
    n_pre = 0 if prefix is None else prefix.shape[0]
    seq = [n + n_pre for n in lengths]
    cu = torch.tensor([0] + seq, dtype=torch.int64).cumsum(0).to(device=x.device, dtype=torch.int32)
    return _pos_drop(model)(x).unsqueeze(0), packed.Packing(cu, max(seq), tuple(seq))


def _run(model, batch):
    if getattr(model, "rope", None) is not None:
        raise ValueError("NaFlex batches are not supported on models with rotary position embeddings (rope); "
                         "pass a list of images instead")
    patches, coord, valid = check_batch(model, batch)
    grids, lengths = _grids_and_lengths(coord, valid)
    x, packing = embed_packed(model, patches[valid], coord[valid].long(), lengths, grids)
    return model._blocks(x, packing), packing, valid


def forward(model, batch, pre_logits: bool = False):
    """Logits (B, num_classes) (or pooled features) of a NaFlex batch: timm's ``NaFlexVit(batch)``."""
    tokens, packing, _ = _run(model, batch)
    return packed.forward_head_packed(model, tokens[0], packing, pre_logits=pre_logits)


def forward_features(model, batch) -> dict:
    """timm's ``forward_features`` of a NaFlex batch: ``{"patches": (B, prefix + L, D),
    "patch_valid": (B, L)}``, the normalised tokens at their batch positions (prefix tokens
    first), zeros at the padding (which timm fills with values of no use)."""
    tokens, _, valid = _run(model, batch)
    return {"patches": _unpack(tokens[0], valid, model.num_prefix_tokens), "patch_valid": valid}


def _with_prefix(valid: torch.Tensor, n_pre: int) -> torch.Tensor:
    return torch.cat([valid.new_ones(valid.shape[0], n_pre), valid], 1)


def _unpack(tokens: torch.Tensor, valid: torch.Tensor, n_pre: int) -> torch.Tensor:
    mask = _with_prefix(valid, n_pre)
    out = tokens.new_zeros(*mask.shape, tokens.shape[-1])
    return out.index_put((mask,), tokens)  # row-major over (image, position): the packed order


def forward_head(model, features: dict, pre_logits: bool = False):
    """``forward_head`` of ``forward_features``' dict: each image pooled over its valid tokens."""
    for k in ("patches", "patch_valid"):
        if k not in features:
            raise KeyError(f"features must be forward_features' dict with 'patches' and 'patch_valid'; missing {k!r}")
    x, valid = features["patches"], features["patch_valid"]
    n_pre = x.shape[1] - valid.shape[1]
    mask = _with_prefix(valid, n_pre)
    lengths = tuple(mask.sum(1).tolist())
    return packed.forward_head_packed(model, x[mask], packed.Packing(None, max(lengths), lengths), pre_logits)


# -- timm's NaFlexVit with its parameter names ------------------------------------------------------
def patchify(x: torch.Tensor, patch_size: tuple[int, int], channels_last: bool = True) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/ph * W/pw, P*P*C) row-major patches, pixels in (row, column, channel)
    order (``channels_last``, timm's NaFlex default) or (channel, row, column)."""
    B, C, H, W = x.shape
    ph, pw = patch_size
    x = x.view(B, C, H // ph, ph, W // pw, pw)
    x = x.permute(0, 2, 4, 3, 5, 1) if channels_last else x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // ph) * (W // pw), -1)


class NaFlexEmbeds(nn.Module):
    """Patches -> tokens with timm's ``NaFlexEmbeds`` names: a Linear on flattened patches
    (``proj``), a learned (1, H, W, D) position table resampled per grid as timm does
    (``interp_mode``, ``antialias``, ``align_corners``; ``ar_preserving``: to the square of the
    longer side, then cropped), and prefix tokens the position table never covers."""

    def __init__(self, patch_size, in_chans: int, embed_dim: int, proj_bias: bool = True, class_token: bool = False,
                 reg_tokens: int = 0, pos_embed_grid_size=(16, 16), pos_embed: bool = True,
                 interp_mode: str = "bicubic", antialias: bool = True, align_corners: bool = False,
                 ar_preserving: bool = False, pos_drop_rate: float = 0.0, channels_last: bool = True):
        super().__init__()
        if interp_mode not in INTERP_MODES:
            raise ValueError(f"pos_embed_interp_mode must be one of {', '.join(map(repr, INTERP_MODES))}, "
                             f"got {interp_mode!r}")
        self.patch_size = pair(patch_size)
        self.interp_mode, self.antialias, self.align_corners = interp_mode, bool(antialias), bool(align_corners)
        self.ar_preserving, self.channels_last = bool(ar_preserving), bool(channels_last)
        self.proj = nn.Linear(self.patch_size[0] * self.patch_size[1] * in_chans, embed_dim, bias=proj_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        h, w = pair(pos_embed_grid_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, h, w, embed_dim)) if pos_embed else None
        self.pos_drop = nn.Dropout(pos_drop_rate)

    def pos_grid(self, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor | None:
        if self.pos_embed is None:
            return None
        h, w = size
        if (h, w) == tuple(self.pos_embed.shape[1:3]):
            return self.pos_embed.reshape(h * w, -1).to(dtype)
        target = (max(size),) * 2 if self.ar_preserving else (h, w)
        # timm's settings: the same mode, antialias and align_corners (None where the mode has none)
        corners = self.align_corners if self.interp_mode in ("bilinear", "bicubic") else None
        antialias = self.antialias if self.interp_mode in ("bilinear", "bicubic") else False
        g = F.interpolate(self.pos_embed.permute(0, 3, 1, 2).float(), size=target, mode=self.interp_mode,
                          align_corners=corners, antialias=antialias)
        return g[0, :, :h, :w].flatten(1).t().to(dtype)

    def prefix(self, dtype: torch.dtype) -> torch.Tensor | None:
        parts = [t[0] for t in (self.cls_token, self.reg_token) if t is not None]
        return torch.cat(parts).to(dtype) if parts else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (B, C, H, W) -> tokens (B, prefix + H/ph * W/pw, D)."""
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        x = self.proj(patchify(x, self.patch_size, self.channels_last))
        pos = self.pos_grid(grid, x.dtype)
        if pos is not None:
            x = x + pos
        prefix = self.prefix(x.dtype)
        if prefix is not None:
            x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], 1)
        return self.pos_drop(x)


class NaFlexFastViT(FastViT):
    """FastViT with timm's ``NaFlexVit`` embedding and parameter names (``load_state_dict`` of a
    timm NaFlexVit of the same options works with ``strict=True``). Takes image batches, lists
    of images and NaFlex batches (dicts, module docstring); ``forward_head`` also takes
    ``forward_features``' dict. The blocks, norms and heads are FastViT's, built from the
    FastViT options in ``kwargs``; the prefix tokens live in ``embeds`` (``model.cls_token``
    and ``model.reg_token`` read them there)."""

    def __init__(self, patch_size=16, in_chans: int = 3, embed_dim: int = 768, *, class_token: bool = False,
                 reg_tokens: int = 0, pre_norm: bool = False, global_pool: str = "map", embed_bias=None,
                 pos_embed: str = "learned", pos_embed_grid_size=(16, 16), pos_embed_interp_mode: str = "bicubic",
                 pos_embed_antialias: bool = True, pos_embed_align_corners: bool = False,
                 pos_embed_ar_preserving: bool = False, pos_drop_rate: float = 0.0, channels_last: bool = True,
                 **kwargs):
        if pos_embed not in ("learned", "none"):
            raise ValueError(f"pos_embed must be 'learned' or 'none', got {pos_embed!r}")
        for k in ("img_size", "rope", "dist_token", "no_embed_class"):
            if k in kwargs:
                raise TypeError(f"NaFlexFastViT does not take {k}= (timm's NaFlexVit has no such option)")
        grid = pair(pos_embed_grid_size)
        target = torch.get_default_device()
        with torch.device("meta"):  # FastViT then skips its own initialisation: done once below
            super().__init__(img_size=(grid[0] * pair(patch_size)[0], grid[1] * pair(patch_size)[1]),
                             patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, class_token=class_token,
                             reg_tokens=reg_tokens, pre_norm=pre_norm, global_pool=global_pool, pos_embed="none",
                             **kwargs)
            # FastViT's convolution and prefix tokens give way to timm's NaFlex embedding
            for name in ("patch_embed", "cls_token", "reg_token"):
                delattr(self, name)
            self.embeds = NaFlexEmbeds(patch_size, in_chans, embed_dim, proj_bias=not pre_norm if embed_bias is None
                                       else embed_bias, class_token=class_token, reg_tokens=reg_tokens,
                                       pos_embed_grid_size=grid, pos_embed=pos_embed == "learned",
                                       interp_mode=pos_embed_interp_mode, antialias=pos_embed_antialias,
                                       align_corners=pos_embed_align_corners, ar_preserving=pos_embed_ar_preserving,
                                       pos_drop_rate=pos_drop_rate, channels_last=channels_last)
        self.in_chans = in_chans
        if target.type != "meta":
            self.to_empty(device=target)
            self.init_weights()

    def __getattr__(self, name: str):
        if name in ("cls_token", "reg_token"):
            return getattr(self.embeds, name)
        return super().__getattr__(name)

    def init_weights(self) -> None:
        super().init_weights()  # Linears, norms, heads and the prefix tokens (read through embeds)
        if self.embeds.pos_embed is not None:
            nn.init.normal_(self.embeds.pos_embed, std=0.02)

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.embeds.patch_size

    @property
    def img_size(self) -> tuple[int, int]:
        """The size at which the position table is used as it is, without resampling."""
        grid = self.embeds.pos_embed.shape[1:3] if self.embeds.pos_embed is not None else (1, 1)
        return grid[0] * self.patch_size[0], grid[1] * self.patch_size[1]

    def set_img_size(self, img_size) -> "NaFlexFastViT":
        raise NotImplementedError("a NaFlex model resamples its position table for every image grid; there is no "
                                  "native image size to set")

    def check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"x must be a floating (B, C, H, W) image batch, a list of images or a NaFlex dict, got "
                             f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"x must have {self.in_chans} channels (dim 1), got {x.shape[1]} (shape {tuple(x.shape)})")
        check_divisible(tuple(x.shape[-2:]), self.patch_size, "x's height and width")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embeds(x)

    def _forward_packed(self, images):
        """A list of (C, H, W) images: each one's full patch grid, packed as a NaFlex batch is."""
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError(f"images must be a non-empty list of (C, H, W) tensors, got {type(images).__name__}")
        for i, img in enumerate(images):
            if not isinstance(img, torch.Tensor) or img.dim() != 3:
                raise ValueError(f"images[{i}] must be a (C, H, W) tensor, got {type(img).__name__} of shape "
                                 f"{tuple(getattr(img, 'shape', ()))}")
            self.check_input(img[None])
            if img.dtype != images[0].dtype or img.device != images[0].device:
                raise ValueError(f"images[{i}] is {img.dtype} on {img.device} but images[0] is {images[0].dtype} on "
                                 f"{images[0].device}; they must match")
        grids = [(img.shape[-2] // self.patch_size[0], img.shape[-1] // self.patch_size[1]) for img in images]
        patches = torch.cat([patchify(img[None], self.patch_size, self.embeds.channels_last)[0] for img in images])
        coord = torch.cat([torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).view(-1, 2)
                           for h, w in grids]).to(patches.device)
        x, packing = embed_packed(self, patches, coord, [h * w for h, w in grids], grids)
        return self._blocks(x, packing), packing

    def forward_head(self, x, pre_logits: bool = False):
        if isinstance(x, dict):
            return forward_head(self, x, pre_logits)
        return super().forward_head(x, pre_logits)
