"""Absolute position embeddings on any patch grid: resampled as timm resamples them."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_pos_embed(pos_embed: torch.Tensor, new_grid, old_grid, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubic (antialiased) resampling of the patch-grid part of ``pos_embed``
    (1, prefix + H*W, D) from ``old_grid`` to ``new_grid``; the first ``num_prefix_tokens``
    embeddings (CLS, distillation token: those the embedding covers) are kept untouched.
    Interpolates in fp32, as timm's ``resample_abs_pos_embed`` does."""
    new_grid, old_grid = tuple(new_grid), tuple(old_grid)
    if new_grid == old_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} patch positions but the grid {old_grid} needs "
                         f"{old_grid[0] * old_grid[1]}")
    dim = grid.shape[-1]
    g = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, g], dim=1)
