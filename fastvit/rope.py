"""2-D rotary position embeddings (RoPE) for a patch grid: the cos/sin tables, in timm's two
parameterisations, cached per grid, and the analytic cost of the rotation.

A table row belongs to one patch (row-major over the (H, W) grid, as the patch tokens are laid
out); its D = head_dim columns are in the order the rotation pairs them (``pairing``):
"interleaved" (columns 2i and 2i+1 share frequency i: EVA-02) or "half" (columns i and i + D/2
share it: DINOv3). Of the D/2 frequencies, the first D/4 turn with the row coordinate, the last
D/4 with the column coordinate.

Parameterisations (``RopeConfig.kind``):

- ``"eva"`` (timm's ``RotaryEmbeddingCat`` with ``in_pixels=False``, EVA-02 and the
  ``vit_*_rope_*`` models): integer positions (+ ``grid_offset``), rescaled to the reference grid
  the model was trained on (``ref_grid``: position * ref / size, EVA's rule for other
  resolutions), times the frequencies temperature^(-j / (D/4)), j < D/4.
- ``"dinov3"`` (timm's ``RotaryEmbeddingDinoV3``): patch centres normalised to [-1, 1] per axis
  ((i + 0.5 + offset) / size * 2 - 1), angles 2 pi * coordinate / period with periods
  temperature^(2j / (D/2)).

The arithmetic follows timm's, in fp32 and in the same order, so the tables are the bits the
converted weights were trained with (tests compare them bitwise with timm's modules, and with a
float64 evaluation of the formulas).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

ROPE_KINDS = ("eva", "dinov3")
ROPE_PAIRINGS = ("half", "interleaved")


@dataclass(frozen=True)
class RopeConfig:
    """timm's rotary-embedding options that FastViT represents (``Eva(use_rot_pos_emb=True)``)."""
    kind: str = "eva"
    temperature: float = 10000.0
    pairing: str = "interleaved"
    ref_grid: Optional[tuple[int, int]] = None  # "eva" only: timm's ref_feat_shape
    grid_offset: float = 0.0

    def __post_init__(self):
        if self.kind not in ROPE_KINDS:
            raise ValueError(f"rope kind must be one of {', '.join(map(repr, ROPE_KINDS))}, got {self.kind!r}")
        if self.pairing not in ROPE_PAIRINGS:
            raise ValueError(f"rope pairing must be one of {', '.join(map(repr, ROPE_PAIRINGS))}, got {self.pairing!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0:
            raise ValueError(f"rope temperature must be a positive float, got {self.temperature!r}")
        if self.ref_grid is not None:
            ref = tuple(self.ref_grid)
            if len(ref) != 2 or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ref):
                raise ValueError(f"rope ref_grid must be a pair of positive ints or None, got {self.ref_grid!r}")
            if self.kind != "eva":
                raise ValueError("rope ref_grid applies to kind='eva' only (DINOv3 normalises coordinates itself)")
            object.__setattr__(self, "ref_grid", ref)
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "grid_offset", float(self.grid_offset))


# timm's registered parameterisations by name (FastViT(rope="eva02") etc.).
ROPE_PRESETS = {
    "eva02": RopeConfig("eva", 10000.0, "interleaved", ref_grid=(16, 16)),
    "dinov3": RopeConfig("dinov3", 100.0, "half"),
}


def as_rope_config(rope) -> RopeConfig | None:
    """None, a RopeConfig, a preset name (``ROPE_PRESETS``) or a dict of RopeConfig's fields."""
    if rope is None or isinstance(rope, RopeConfig):
        return rope
    if isinstance(rope, str):
        if rope not in ROPE_PRESETS:
            raise ValueError(f"rope must be one of {', '.join(map(repr, ROPE_PRESETS))}, a RopeConfig, a dict or "
                             f"None, got {rope!r}")
        return ROPE_PRESETS[rope]
    if isinstance(rope, dict):
        return RopeConfig(**rope)
    raise TypeError(f"rope must be None, a preset name, a RopeConfig or a dict, got {type(rope).__name__}")


def _layout(values: torch.Tensor, pairing: str) -> torch.Tensor:
    """(N, D/2) per-frequency values -> (N, D) in the pairing's column order."""
    if pairing == "half":
        return torch.cat([values, values], dim=-1)
    return values.repeat_interleave(2, dim=-1)


def rope_angles(config: RopeConfig, grid: tuple[int, int], head_dim: int) -> torch.Tensor:
    """The rotation angles (H*W, head_dim/2), fp32 on the CPU: row-coordinate frequencies first."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4 (two axes, pairs of channels), got {head_dim}")
    n_freq = head_dim // 4
    h, w = grid
    if config.kind == "eva":
        bands = 1.0 / config.temperature ** (torch.arange(n_freq, dtype=torch.int64).to(torch.float32) / n_freq)
        axes = [torch.arange(s, dtype=torch.int64).to(torch.float32) + config.grid_offset for s in (h, w)]
        if config.ref_grid is not None:
            axes = [t / s * r for t, s, r in zip(axes, (h, w), config.ref_grid)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)        # (H, W, 2)
        angles = coords.unsqueeze(-1) * bands                                      # (H, W, 2, D/4)
    else:
        periods = config.temperature ** (2.0 * torch.arange(n_freq, dtype=torch.float32) / (head_dim // 2))
        axes = [(torch.arange(0.5, s, dtype=torch.float32) + config.grid_offset) / float(s) for s in (h, w)]
        coords = 2.0 * torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) - 1.0
        angles = 2 * math.pi * coords.reshape(-1, 2, 1) / periods[None, None, :]  # (H*W, 2, D/4)
    return angles.reshape(h * w, head_dim // 2)


def rope_tables(config: RopeConfig, grid: tuple[int, int], head_dim: int,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (H*W, head_dim) fp32 on ``device``, in ``config.pairing``'s layout."""
    angles = rope_angles(config, tuple(grid), head_dim)
    cos, sin = _layout(angles.cos(), config.pairing), _layout(angles.sin(), config.pairing)
    return cos.to(device), sin.to(device)


class RotaryTables(nn.Module):
    """The model's rotary tables: ``tables(grid, device)`` -> (cos, sin), computed once per grid
    and device and kept (a few hundred KB each; a dict, not buffers: nothing in the state dict,
    as timm's rotary modules keep only non-persistent buffers)."""

    def __init__(self, config: RopeConfig, head_dim: int):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"rope needs head_dim divisible by 4, got {head_dim}")
        self.config = config
        self.head_dim = head_dim
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(grid), torch.device(device))
        if key not in self._cache:
            self._cache[key] = rope_tables(self.config, grid, self.head_dim, device)
        return self._cache[key]

    def extra_repr(self) -> str:
        return f"{self.config}, head_dim={self.head_dim}"


def rope_fusion_traffic(batch: int, heads: int, rotated_tokens: int, head_dim: int, elem_bytes: int,
                        backward: bool = True) -> dict:
    """Model (analytic, not measured): bytes per attention layer that rotating q and k inside
    the attention kernel's loads would save over a separate rotation pass.

    A separate pass reads q and k and writes the rotated copies that attention then reads:
    2 tensors x (read + write) x B*H*N_rot*D elements, plus the fp32 cos and sin tables
    (2 x N_rot*D x 4 bytes, read once if they stay in cache); fused, attention reads q and k once
    from the qkv output either way and the tables are its only extra read. The backward pass
    has the same pass over dq and dk. PyTorch's elementwise rotation moves more than this
    (temporaries for the paired copy and the products): this is the lower bound a separate pass
    could reach."""
    qk = 2 * batch * heads * rotated_tokens * head_dim * elem_bytes
    forward = 2 * qk  # read q, k; write rotated q, k
    out = {"kind": "model", "forward_bytes": forward, "table_bytes": 2 * rotated_tokens * head_dim * 4}
    out["backward_bytes"] = forward if backward else 0
    out["total_bytes"] = out["forward_bytes"] + out["backward_bytes"]
    return out


def rope_flops(batch: int, heads: int, rotated_tokens: int, head_dim: int) -> int:
    """Forward flops of rotating q and k: per element x * cos + partner * sin, two multiplies
    and an add (the partner's sign flip is a move, not counted)."""
    return 3 * 2 * batch * heads * rotated_tokens * head_dim
