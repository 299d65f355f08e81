"""Attention heatmaps over images.

``model.attention_maps(x)`` gives the CLS token's attention row for every layer and head,
(depth, B, heads, 1 + N_patches), on any backend (rebuilt from the fused kernel's logsumexp on
``triton``: no N x N matrix). ``overlay`` paints one of those rows over the image::

    maps = model.attention_maps(x)                      # x: (B, 3, H, W)
    fastvit.viz.overlay(x[0], maps, layer=-1, path="cls_attention.png")

Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers") multiplies
the head-averaged, identity-mixed attention matrices of all layers. Its CLS row needs every row of
every lower layer, so it cannot be recovered from CLS rows alone; pass the full matrices from
``model.attention_matrices(x)`` (``eager`` backend only, small inputs) with ``rollout=True``.

matplotlib (the colour maps) is an optional extra: ``pip install "fastvit[plot]"``.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["overlay", "cls_heatmap", "attention_rollout"]


def _matplotlib_colormap(cmap: str):
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError('fastvit.viz needs matplotlib for its colour maps; install the plot extra: '
                          'pip install "fastvit[plot]"') from e
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, ValueError) as e:
        raise ValueError(f"cmap must be a matplotlib colour map name such as 'inferno' or 'viridis', "
                         f"got {cmap!r}") from e


def _check_index(value, size: int, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not -size <= value < size:
        raise ValueError(f"{name}={value} is out of range: the maps have {size} {what} "
                         f"(valid: {-size} .. {size - 1})")
    return int(value) % size


def _check_maps(maps) -> torch.Tensor:
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(maps)
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor from model.attention_maps(x) or model.attention_matrices(x), "
                        f"got {type(maps).__name__}")
    if maps.dim() not in (4, 5) or (maps.dim() == 5 and maps.shape[-1] != maps.shape[-2]):
        raise ValueError(f"maps must have shape (depth, B, heads, N) from model.attention_maps(x) or "
                         f"(depth, B, heads, N, N) from model.attention_matrices(x), got {tuple(maps.shape)}")
    if maps.shape[-1] < 2 or min(maps.shape) < 1:
        raise ValueError(f"maps must cover the CLS token and at least one patch, got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"maps must be floating point, got {maps.dtype}")
    return maps.detach().to("cpu", torch.float64)


def attention_rollout(matrices: torch.Tensor, head: int | None = None, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout of (depth, B, heads, N, N) matrices -> (depth, B, N, N).

    Entry ``l`` is the product A_l ... A_0 of the per-layer matrices A = residual * I +
    (1 - residual) * attention (heads averaged, or the one ``head``), each row renormalised: how
    much each input token flows into each token after layer ``l``.
    """
    m = _check_maps(matrices)
    if m.dim() != 5:
        raise ValueError(f"rollout needs full attention matrices (depth, B, heads, N, N) from "
                         f"model.attention_matrices(x), got shape {tuple(m.shape)}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual!r}")
    a = m.mean(dim=2) if head is None else m[:, :, _check_index(head, m.shape[2], "head", "heads")]
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    a = residual * eye + (1.0 - residual) * a
    a = a / a.sum(dim=-1, keepdim=True)
    out = [a[0]]
    for layer in a[1:]:
        out.append(layer @ out[-1])
    return torch.stack(out)


def cls_heatmap(maps, layer: int = -1, head: int | None = None, rollout: bool = False, index: int = 0,
                grid: tuple[int, int] | None = None, image_size: tuple[int, int] | None = None,
                prefix_tokens: int = 1) -> torch.Tensor:
    """The CLS token's attention to the patches, as a float64 (grid_h, grid_w) map.

    ``maps`` (depth, B, heads, N) from ``model.attention_maps`` or (depth, B, heads, N, N) from
    ``model.attention_matrices``; ``layer`` picks the layer (negative counts from the end), ``head``
    one head (None: mean over heads), ``index`` the image in the batch. With ``rollout=True``
    (full matrices only) the map is the CLS row of the rollout up to ``layer``. The CLS token's
    attention to itself is dropped, with every other prefix token: ``prefix_tokens`` is
    ``model.num_prefix_tokens`` (CLS, distillation and register tokens; 0 for the maps of a MAP
    pooling head, which attend to the patches only). ``grid`` defaults to the factorisation of N - 1 closest to
    ``image_size``'s aspect ratio (square without it).
    """
    m = _check_maps(maps)
    depth, batch, heads = m.shape[:3]
    layer = _check_index(layer, depth, "layer", "layers")
    index = _check_index(index, batch, "index", "images in the batch")
    if head is not None:
        head = _check_index(head, heads, "head", "heads")
    if rollout:
        if m.dim() != 5:
            raise ValueError(
                "rollout=True needs the full attention matrices (depth, B, heads, N, N) from "
                "model.attention_matrices(x) (eager backend only); the CLS rows from model.attention_maps(x) "
                f"(shape {tuple(m.shape)}) are not enough: rollout multiplies whole matrices")
        row = attention_rollout(m[: layer + 1, index: index + 1], head=head)[-1, 0, 0]
    else:
        rows = m[layer, index, :, 0] if m.dim() == 5 else m[layer, index]
        row = rows.mean(dim=0) if head is None else rows[head]
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or not 0 <= prefix_tokens < row.numel():
        raise ValueError(f"prefix_tokens must be an int in [0, {row.numel()}), got {prefix_tokens!r}")
    patches = row[prefix_tokens:]
    gh, gw = _grid(patches.numel(), grid, image_size)
    return patches.reshape(gh, gw)


def _grid(n: int, grid, image_size) -> tuple[int, int]:
    if grid is not None:
        gh, gw = (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) and len(grid) == 2 else (0, 0)
        if gh < 1 or gw < 1 or gh * gw != n:
            raise ValueError(f"grid must be a pair (grid_h, grid_w) with grid_h * grid_w = {n} patches, got {grid!r}")
        return gh, gw
    aspect = 1.0 if image_size is None else image_size[0] / image_size[1]
    pairs = [(h, n // h) for h in range(1, n + 1) if n % h == 0]
    return min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - math.log(aspect)))


def _image_to_uint8(image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, an (H, W[, C]) array or a (C, H, W) / (1, C, H, W) tensor.

    Floats in [0, 1] are taken as they are; other float ranges (e.g. normalised inputs) are
    stretched min-max for display."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with matplotlib
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"image tensor must be (C, H, W) or (1, C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}")
        arr = arr[:, :, :3]
    else:
        raise TypeError(f"image must be a PIL image, a numpy array or a torch.Tensor, got {type(image).__name__}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("image has non-finite values")
        lo, hi = arr.min(), arr.max()
        if lo < 0.0 or hi > 1.0:
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        arr = np.round(arr * 255.0).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def overlay(image, maps, layer: int = -1, head: int | None = None, rollout: bool = False,
            path: str | os.PathLike | None = None, alpha: float = 0.5, cmap: str = "inferno", *,
            index: int = 0, grid: tuple[int, int] | None = None, prefix_tokens: int = 1):
    """Paint the CLS (or MAP query) attention of one layer over ``image``.

    image   a PIL image, an (H, W[, 3]) array or a (3, H, W) tensor (floats in [0, 1], or any range
            stretched for display, e.g. normalised model inputs).
    maps    (depth, B, heads, 1 + N) from ``model.attention_maps(x)``, or (depth, B, heads, N, N)
            from ``model.attention_matrices(x)``; ``index`` picks the image in the batch;
            ``prefix_tokens`` (``model.num_prefix_tokens``; 0 for MAP maps) are left out.
    layer   which layer (negative counts from the end); head: one head, or None for the mean.
    rollout attention rollout up to ``layer`` instead of the raw attention; needs the full
            matrices (``attention_matrices``, eager backend only): a ValueError otherwise.
    The patch map is min-max scaled to [0, 1], upsampled bilinearly to the image size, coloured
    with ``cmap`` and blended: ``(1 - alpha) * image + alpha * heat``. Returns a PIL image when
    given one, else an (H, W, 3) uint8 array; also written as PNG to ``path`` when given.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a float in [0, 1], got {alpha!r}")
    if path is not None:
        path = os.fspath(path)
        if not path.lower().endswith(".png"):
            raise ValueError(f"path must end in .png, got {path!r}")
    colormap = _matplotlib_colormap(cmap)
    img = _image_to_uint8(image)
    h, w = img.shape[:2]
    heat = cls_heatmap(maps, layer=layer, head=head, rollout=rollout, index=index, grid=grid, image_size=(h, w),
                       prefix_tokens=prefix_tokens)
    lo, hi = heat.min(), heat.max()
    heat = (heat - lo) / (hi - lo) if hi > lo else torch.zeros_like(heat)
    heat = F.interpolate(heat[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    rgb = colormap(heat.clamp(0.0, 1.0).numpy())[:, :, :3] * 255.0
    blended = np.round((1.0 - alpha) * img.astype(np.float64) + alpha * rgb).clip(0, 255).astype(np.uint8)

    from PIL import Image
    out_img = Image.fromarray(blended)
    if path is not None:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        out_img.save(path, format="PNG")
    return out_img if isinstance(image, Image.Image) else blended
