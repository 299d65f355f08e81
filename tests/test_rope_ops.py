"""fastvit.ops rope ops (rotate q and k, then attention) against float64, on every backend.

Oracle: the rotation as complex multiplication in float64, written apart from the op: channel
pairs (2i, 2i+1) ("interleaved") or (i, i + D/2) ("half") as complex numbers times exp(i angle),
then softmax(q k^T / sqrt(D)) v in float64. Token counts as ViTs have them: 1 + 4 + 14*14 (class
token, four registers, a 14 x 14 grid) and 1 + 37*19 (a non-square grid), head_dim 64 and 80.
"""
from __future__ import annotations

import pytest
import torch

import fastvit.ops as ops
from fastvit import reference
from fastvit.rope import RopeConfig, rope_tables
from tests._tolerances import assert_close_to_reference

CASES = [  # (prefix tokens, grid, heads, head_dim)
    (5, (14, 14), 2, 64),
    (1, (37, 19), 1, 80),
    (0, (14, 14), 1, 80),
    (0, (37, 19), 2, 64),
]


def _rotate64(x, angles, prefix, pairing):
    """x (..., N, D) float64; angles (N - prefix, D/2)."""
    x = x.double()
    head, tail = x[..., :prefix, :], x[..., prefix:, :]
    d = x.shape[-1]
    if pairing == "interleaved":
        z = torch.complex(tail[..., 0::2], tail[..., 1::2]) * torch.polar(torch.ones_like(angles), angles)
        rot = torch.stack([z.real, z.imag], dim=-1).flatten(-2)
    else:
        z = torch.complex(tail[..., : d // 2], tail[..., d // 2:]) * torch.polar(torch.ones_like(angles), angles)
        rot = torch.cat([z.real, z.imag], dim=-1)
    return torch.cat([head, rot], dim=-2)


def _tables(pairing, grid, d):
    cfg = RopeConfig("eva" if pairing == "interleaved" else "dinov3", 10000.0 if pairing == "interleaved" else 100.0,
                     pairing, ref_grid=(16, 16) if pairing == "interleaved" else None)
    cos, sin = rope_tables(cfg, grid, d)
    # the angles the tables hold, recovered in float64 for the oracle
    first = cos[:, 0::2] if pairing == "interleaved" else cos[:, : d // 2]
    sfirst = sin[:, 0::2] if pairing == "interleaved" else sin[:, : d // 2]
    return cos, sin, torch.atan2(sfirst.double(), first.double())


def _oracle(q, k, v, angles, prefix, pairing):
    q64, k64 = _rotate64(q, angles, prefix, pairing), _rotate64(k, angles, prefix, pairing)
    return reference.attention(q64, k64, v.double())


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
@pytest.mark.parametrize("pairing", ["half", "interleaved"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"p{c[0]}-{c[1][0]}x{c[1][1]}-h{c[2]}-d{c[3]}")
def test_rope_qkv_attention_matches_float64(case, pairing, backend, device):
    prefix, grid, heads, d = case
    n = prefix + grid[0] * grid[1]
    cos, sin, angles = _tables(pairing, grid, d)
    qkv = torch.randn(1, n, 3 * heads * d, device=device)
    dout = torch.randn(1, n, heads * d, device=device)
    leaf = qkv.clone().requires_grad_()
    out = ops.rope_qkv_attention(leaf, heads, cos.to(device), sin.to(device), num_prefix_tokens=prefix,
                                 pairing=pairing, backend=backend)
    out.backward(dout)
    ref = qkv.double().requires_grad_()
    q, k, v = ref.view(1, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    want = _oracle(q, k, v, angles.to(device), prefix, pairing).transpose(1, 2).reshape(1, n, heads * d)
    want.backward(dout.double())
    assert_close_to_reference(out, want, dtype=torch.float32, what="output")
    assert_close_to_reference(leaf.grad, ref.grad, dtype=torch.float32, what="dqkv")


@pytest.mark.parametrize("pairing,dtype", [("half", torch.float16), ("interleaved", torch.bfloat16)])
def test_rope_attention_low_precision(pairing, dtype, device):
    """(B, H, N, D) form, fp16/bf16: within 2x the error of PyTorch's own low-precision
    rotate-then-SDPA (the rotation in fp32 there too, rounded once, as timm does)."""
    prefix, grid, heads, d = 1, (37, 19), 2, 80
    n = prefix + grid[0] * grid[1]
    cos, sin, angles = _tables(pairing, grid, d)
    q, k, v = (torch.randn(1, heads, n, d, device=device).to(dtype) for _ in range(3))
    out = ops.rope_attention(q, k, v, cos, sin, num_prefix_tokens=prefix, pairing=pairing, backend="triton")
    want = _oracle(q, k, v, angles, prefix, pairing)
    q32, k32 = (_rotate64(t, angles, prefix, pairing).float() for t in (q, k))  # exact rotation, rounded once
    base = torch.nn.functional.scaled_dot_product_attention(q32.to(dtype), k32.to(dtype), v)
    assert out.dtype == dtype
    assert_close_to_reference(out, want, dtype=dtype, lowp_baseline=base, what="output")


def test_apply_rope_leaves_prefix_and_is_an_isometry(device):
    cos, sin, _ = _tables("half", (5, 7), 64)
    x = torch.randn(2, 3, 3 + 35, 64, device=device)
    y = ops.apply_rope(x, cos, sin, num_prefix_tokens=3, pairing="half")
    assert torch.equal(y[..., :3, :], x[..., :3, :])
    # a rotation keeps each pair's norm, hence each token's norm
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    assert not torch.allclose(y[..., 4:, :], x[..., 4:, :])  # and does rotate


def test_bad_input_is_refused_by_name(device):
    cos, sin, _ = _tables("half", (4, 4), 64)
    qkv = torch.randn(1, 17, 3 * 2 * 64)
    with pytest.raises(ValueError, match=r"cos must have shape \(N - num_prefix_tokens, head_dim\) = \(17, 64\), "
                                         r"got \(16, 64\)"):
        ops.rope_qkv_attention(qkv, 2, cos, sin, num_prefix_tokens=0)
    with pytest.raises(ValueError, match=r"num_prefix_tokens must be an int in \[0, N = 17\], got -1"):
        ops.rope_qkv_attention(qkv, 2, cos, sin, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match="pairing must be one of 'half', 'interleaved', got 'adjacent'"):
        ops.rope_qkv_attention(qkv, 2, cos, sin, num_prefix_tokens=1, pairing="adjacent")
    with pytest.raises(ValueError, match="same number of tokens"):
        ops.rope_attention(torch.randn(1, 2, 17, 64), torch.randn(1, 2, 9, 64), torch.randn(1, 2, 9, 64), cos, sin,
                           num_prefix_tokens=1)
    with pytest.raises(TypeError, match="sin must be a torch.Tensor"):
        ops.apply_rope(torch.randn(17, 64), cos, sin.tolist(), num_prefix_tokens=1)
