"""fastvit.rope: the cos/sin tables of a patch grid, bitwise timm's (RotaryEmbeddingCat for
EVA-02 and the vit_*_rope_* models, RotaryEmbeddingDinoV3 for DINOv3) and within fp32 rounding of
a float64 evaluation of the formulas; the per-grid cache; the traffic and flops model."""
from __future__ import annotations

import math

import pytest
import torch

from fastvit.rope import (ROPE_PRESETS, RopeConfig, RotaryTables, as_rope_config, rope_flops, rope_fusion_traffic,
                          rope_tables)

GRIDS = [(14, 14), (37, 19), (24, 24)]


def _timm_eva(head_dim, grid, ref, pairing):
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat
    m = RotaryEmbeddingCat(dim=head_dim, in_pixels=False, feat_shape=list(grid), ref_feat_shape=ref,
                           rotate_half=pairing == "half")
    return m.get_embed().chunk(2, -1)  # sin, cos


def _timm_dinov3(head_dim, grid, temperature):
    from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3
    m = RotaryEmbeddingDinoV3(dim=head_dim, temperature=temperature, feat_shape=list(grid))
    return m.get_embed().chunk(2, -1)


def _formula64(config, grid, head_dim):
    """The angles in float64, straight from the definitions (module docstring of fastvit.rope)."""
    h, w = grid
    f = head_dim // 4
    j = torch.arange(f, dtype=torch.float64)
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    if config.kind == "eva":
        ref = config.ref_grid or grid
        freq = config.temperature ** (-j / f)
        ang_r, ang_c = (rows * ref[0] / h)[..., None] * freq, (cols * ref[1] / w)[..., None] * freq
    else:
        period = config.temperature ** (2 * j / (head_dim // 2))
        ang_r = 2 * math.pi * ((rows + 0.5) / h * 2 - 1)[..., None] / period
        ang_c = 2 * math.pi * ((cols + 0.5) / w * 2 - 1)[..., None] / period
    ang = torch.cat([ang_r, ang_c], dim=-1).reshape(h * w, head_dim // 2)
    lay = (lambda a: torch.cat([a, a], -1)) if config.pairing == "half" else (lambda a: a.repeat_interleave(2, -1))
    return lay(ang.cos()), lay(ang.sin())


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("head_dim", [64, 80])
def test_eva_tables_are_timms_bitwise(head_dim, grid):
    for pairing in ("interleaved", "half"):
        for ref in (None, (16, 16)):
            cfg = RopeConfig("eva", 10000.0, pairing, ref_grid=ref)
            cos, sin = rope_tables(cfg, grid, head_dim)
            t_sin, t_cos = _timm_eva(head_dim, grid, ref, pairing)
            assert cos.dtype == torch.float32 and cos.shape == (grid[0] * grid[1], head_dim)
            assert torch.equal(cos, t_cos) and torch.equal(sin, t_sin), (pairing, ref)
            c64, s64 = _formula64(cfg, grid, head_dim)
            assert (cos.double() - c64).abs().max() < 2e-6 and (sin.double() - s64).abs().max() < 2e-6


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("head_dim", [64, 80])
def test_dinov3_tables_are_timms_bitwise(head_dim, grid):
    cfg = ROPE_PRESETS["dinov3"]
    cos, sin = rope_tables(cfg, grid, head_dim)
    t_sin, t_cos = _timm_dinov3(head_dim, grid, 100.0)
    assert torch.equal(cos, t_cos) and torch.equal(sin, t_sin)
    c64, s64 = _formula64(cfg, grid, head_dim)
    assert (cos.double() - c64).abs().max() < 2e-6 and (sin.double() - s64).abs().max() < 2e-6


def test_cache_per_grid_and_device():
    tables = RotaryTables(ROPE_PRESETS["eva02"], 64)
    a = tables((14, 14), torch.device("cpu"))
    assert tables((14, 14), torch.device("cpu"))[0] is a[0]  # computed once
    b = tables((37, 19), torch.device("cpu"))
    assert b[0].shape == (37 * 19, 64) and not torch.equal(a[0], b[0][:196])
    assert dict(tables.state_dict()) == {}  # nothing persistent, as timm's rotary modules


def test_config_validation_names_the_option():
    assert as_rope_config("dinov3") is ROPE_PRESETS["dinov3"]
    assert as_rope_config({"kind": "dinov3", "temperature": 100, "pairing": "half"}) == ROPE_PRESETS["dinov3"]
    with pytest.raises(ValueError, match="rope must be one of 'eva02', 'dinov3'"):
        as_rope_config("mixed")
    with pytest.raises(ValueError, match="rope pairing must be one of 'half', 'interleaved', got 'adjacent'"):
        RopeConfig(pairing="adjacent")
    with pytest.raises(ValueError, match="rope kind must be one of"):
        RopeConfig(kind="mrope")
    with pytest.raises(ValueError, match="ref_grid applies to kind='eva' only"):
        RopeConfig("dinov3", 100.0, "half", ref_grid=(16, 16))
    with pytest.raises(ValueError, match="head_dim divisible by 4"):
        RotaryTables(ROPE_PRESETS["eva02"], 66)


def test_traffic_and_flops_model():
    # ViT-B/16 at 224: B=64, H=12, 196 rotated tokens, D=64, bf16
    t = rope_fusion_traffic(64, 12, 196, 64, 2)
    qk = 2 * 64 * 12 * 196 * 64 * 2
    assert t["kind"] == "model" and t["forward_bytes"] == 2 * qk and t["backward_bytes"] == 2 * qk
    assert t["total_bytes"] == 4 * qk and t["table_bytes"] == 2 * 196 * 64 * 4
    assert rope_fusion_traffic(1, 1, 10, 8, 4, backward=False)["backward_bytes"] == 0
    assert rope_flops(2, 3, 5, 8) == 3 * 2 * 2 * 3 * 5 * 8
