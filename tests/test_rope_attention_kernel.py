"""Rotary position embeddings fused into the dense attention kernels (kernels/_attention_rope.py,
through ``attention_fwd`` / ``attention_bwd`` with ``cos=``, ``sin=``, ``num_prefix_tokens=``,
``pairing=``), on the device of the ``device`` fixture.

Oracle: q and k rotated in float64 with the same tables (prefix tokens left alone), then softmax
attention in float64, gradients by autograd through the rotation. fp32 within 1e-5 relative;
fp16/bf16 within 2x the error of plain PyTorch in the same dtype (``fastvit.ops.rope.apply_rope``
rounding the rotated q and k once to the dtype, then attention in the dtype, as
tests/test_attention_kernel.py measures it). Every output buffer is NaN-poisoned before the
kernels write it.
"""
from __future__ import annotations

import math

import pytest
import torch
import triton

from fastvit.kernels import _configs
from fastvit.kernels import attention as K
from fastvit.kernels import attention_bwd as KB
from fastvit.ops.rope import apply_rope
from tests._simulated_gpu import skip_on_gpu
from tests._tolerances import assert_close_to_reference, rel_err

PAIRINGS = ("half", "interleaved")
NAMES = ("out", "lse", "dq", "dk", "dv")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _tables(n_rot, D, pairing, device):
    """cos, sin (n_rot, D) fp32 in ``pairing``'s layout (both channels of a pair share the angle),
    angles spread over several turns as a real 2-D RoPE's are."""
    angles = torch.rand(n_rot, D // 2, device=device) * 20.0 - 10.0
    if pairing == "half":
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    else:
        cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    return cos.contiguous(), sin.contiguous()


def _nan(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _launch(q, k, v, dout, scale, rope, *, dlse=None, p=0.0, seed=0, out=None, grads=None):
    """Forward and backward through the launchers, every output NaN-poisoned (or the given views)."""
    B, H, N, D = q.shape
    out = _nan(q.shape, q.dtype, q.device) if out is None else out
    lse = _nan((B, H, N), torch.float32, q.device)
    out, lse = K.attention_fwd(q, k, v, sm_scale=scale, dropout_p=p, seed=seed, out=out, lse=lse, **rope)
    grads = [_nan(t.shape, t.dtype, t.device) for t in (q, k, v)] if grads is None else grads
    dq, dk, dv = K.attention_bwd(dout, q, k, v, out, lse, sm_scale=scale, dropout_p=p, seed=seed, dlse=dlse,
                                 dq=grads[0], dk=grads[1], dv=grads[2], **rope)
    return out, lse, dq, dk, dv


def _rotate(x, cos, sin, P, pairing):
    """x (..., N, D) rotated from token P on, in x's dtype (float64 oracle: exact tables)."""
    if P == x.shape[-2]:
        return x
    return apply_rope(x, cos.to(x.dtype) if x.dtype == torch.float64 else cos,
                      sin.to(x.dtype) if x.dtype == torch.float64 else sin, num_prefix_tokens=P, pairing=pairing)


def _torch_rope_attention(q, k, v, dout, scale, rope, dtype, dlse=None, keep=None, p=0.0):
    """out, lse, dq, dk, dv of plain PyTorch in ``dtype`` (float64: the oracle)."""
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    args = (rope["cos"], rope["sin"], rope["num_prefix_tokens"], rope["pairing"])
    scores = (_rotate(q, *args) @ _rotate(k, *args).transpose(-2, -1)) * scale
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:
        probs = probs * keep.to(dtype) / (1.0 - p)
    out = probs @ v
    lse = torch.logsumexp(scores.double(), dim=-1)
    loss = (out * dout.to(dtype)).sum()
    if dlse is not None:
        loss = loss + (lse * dlse.double()).sum()
    loss.backward()
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def _check(got, q, k, v, dout, scale, rope, dlse=None):
    ref = _torch_rope_attention(q, k, v, dout, scale, rope, torch.float64, dlse)
    low = None
    if q.dtype != torch.float32:
        low = _torch_rope_attention(q, k, v, dout, scale, rope, q.dtype, dlse)
    for i, name in enumerate(NAMES):
        actual, expected = got[i], ref[i]
        assert torch.isfinite(actual).all(), f"{name}: non-finite values (unwritten or overflow)"
        if name == "lse":  # fp32 statistics: the inputs' (and the rotation's) rounding only
            assert rel_err(actual, expected) <= (2e-6 if q.dtype == torch.float32 else 1e-3), name
            continue
        if expected.abs().max() <= 1e-12 * ref[4].abs().max():  # one key: dq, dk are 0 exactly
            assert actual.double().abs().max() <= (1e-5 if q.dtype == torch.float32 else 1e-2) * ref[4].abs().max()
            continue
        assert_close_to_reference(actual, expected, dtype=q.dtype, lowp_baseline=None if low is None else low[i],
                                  what=name)


def _inputs(B, H, N, D, dtype, device, P, pairing):
    q, k, v, dout = (torch.randn(B, H, N, D, device=device).to(dtype) for _ in range(4))
    cos, sin = _tables(N - P, D, pairing, device)
    return q, k, v, dout, dict(cos=cos, sin=sin, num_prefix_tokens=P, pairing=pairing)


# ----------------------------------------------------------------------------------------------
# Against float64
# ----------------------------------------------------------------------------------------------

# (N, P, D): every length (1 + 37 * 19: a non-square grid plus CLS), 0 / 1 / 5 prefix tokens,
# head dims 64 (one chunk), 80 (64 + 16) and 72 (64 + 16, masked tail: "half" pairs i, i + 36
# cross the chunks). B*H is 2 up to N = 197, 1 beyond.
FP32_CASES = [(1, 0, 64), (1, 1, 80), (65, 0, 72), (65, 1, 64), (65, 5, 80), (197, 0, 80), (197, 1, 72),
              (197, 5, 64), (1 + 37 * 19, 1, 72), (1 + 37 * 19, 5, 64)]


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("N,P,D", FP32_CASES)
def test_fp32_matches_float64(N, P, D, pairing, device):
    B, H = (1, 2) if N <= 197 else (1, 1)
    q, k, v, dout, rope = _inputs(B, H, N, D, torch.float32, device, P, pairing)
    scale = 1.0 / math.sqrt(D)
    _check(_launch(q, k, v, dout, scale, rope), q, k, v, dout, scale, rope)


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("N,P,D", [(17, 0, 2), (17, 1, 24), (33, 2, 40), (17, 1, 256)])
def test_fp32_other_head_dims(N, P, D, pairing, device):
    """Even head dims from 2 to 256: one padded chunk (2, 24, 40 -> 16, 32, 64) and the widest."""
    q, k, v, dout, rope = _inputs(1, 2, N, D, torch.float32, device, P, pairing)
    _check(_launch(q, k, v, dout, 0.3, rope), q, k, v, dout, 0.3, rope)


LOWP_CASES = [(torch.float16, 65, 1, 64), (torch.float16, 197, 5, 80), (torch.float16, 65, 0, 72),
              (torch.bfloat16, 65, 1, 64), (torch.bfloat16, 197, 0, 72), (torch.bfloat16, 65, 5, 80)]


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("dtype,N,P,D", LOWP_CASES)
def test_low_precision_within_2x_of_pytorch(dtype, N, P, D, pairing, device):
    q, k, v, dout, rope = _inputs(1, 2, N, D, dtype, device, P, pairing)
    scale = 1.0 / math.sqrt(D)
    _check(_launch(q, k, v, dout, scale, rope), q, k, v, dout, scale, rope)


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gradient_through_lse(dtype, pairing, device):
    q, k, v, dout, rope = _inputs(1, 2, 70, 80, dtype, device, 1, pairing)
    dlse = torch.randn(1, 2, 70, device=device)
    got = _launch(q, k, v, dout, 0.11, rope, dlse=dlse)
    _check(got, q, k, v, dout, 0.11, rope, dlse=dlse)


def test_no_tables_is_plain_attention(device):
    """cos=None (the default): the kernels without RoPE, bit for bit; num_prefix_tokens and
    pairing change nothing then, and so does a table with no rotated token (P = N)."""
    q, k, v, dout, rope = _inputs(1, 2, 40, 64, torch.float32, device, 40, "half")
    plain = _launch(q, k, v, dout, 0.125, {})
    for extra in ({"num_prefix_tokens": 3, "pairing": "interleaved"}, rope):
        for a, b, name in zip(plain, _launch(q, k, v, dout, 0.125, extra), NAMES):
            assert torch.equal(a, b), (name, sorted(extra))


# ----------------------------------------------------------------------------------------------
# Layouts and dropout
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("dtype,D", [(torch.float32, 72), (torch.float16, 64)])
def test_packed_qkv_views(dtype, D, pairing, device):
    """q, k, v and dq, dk, dv as views of (B, N, 3, H, D) buffers, out as a (B, N, H*D) one: head
    dim 72 gives strides that are multiples of 8 but not 16 (STRIDE_ALIGN 8)."""
    B, N, H, P = 2, 50, 3, 1
    packed = torch.randn(B, N, 3, H, D, device=device).to(dtype)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)
    dout = torch.randn(B, H, N, D, device=device).to(dtype)
    cos, sin = _tables(N - P, D, pairing, device)
    rope = dict(cos=cos, sin=sin, num_prefix_tokens=P, pairing=pairing)
    out_buf = _nan((B, N, H * D), dtype, device)
    dqkv = _nan((B, N, 3, H, D), dtype, device)
    grads = list(dqkv.permute(2, 0, 3, 1, 4).unbind(0))
    got = _launch(q, k, v, dout, D ** -0.5, rope, out=out_buf.view(B, N, H, D).transpose(1, 2), grads=grads)
    assert torch.isfinite(out_buf).all() and torch.isfinite(dqkv).all()
    _check(got, q, k, v, dout, D ** -0.5, rope)


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("dtype,N,P,D", [(torch.float32, 97, 1, 80), (torch.float16, 65, 5, 64)])
def test_dropout_same_mask_as_plain_kernel_on_rotated_inputs(dtype, N, P, D, pairing, device):
    """The fused rotation draws the same dropout mask as the plain kernels on q, k rotated
    beforehand (the same seed); dq and dk are the plain kernels' rotated back (R^T = R(-angle))."""
    p, seed = 0.3, 1234
    q, k, v, dout, rope = _inputs(1, 2, N, D, dtype, device, P, pairing)
    scale = 1.0 / math.sqrt(D)
    got = _launch(q, k, v, dout, scale, rope, p=p, seed=seed)
    rot = (rope["cos"], rope["sin"], P, pairing)
    qr, kr = _rotate(q, *rot), _rotate(k, *rot)
    plain = list(_launch(qr, kr, v, dout, scale, {}, p=p, seed=seed))
    back = (rope["cos"], -rope["sin"], P, pairing)
    plain[2], plain[3] = _rotate(plain[2].float(), *back), _rotate(plain[3].float(), *back)
    tol = 2e-6 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(NAMES, got, plain):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= tol, (name, rel_err(a, b))
    # And against float64 with the kernel's mask.
    keep = K.attention_dropout_mask(1, 2, N, N, p, seed, device=device)
    ref = _torch_rope_attention(q, k, v, dout, scale, rope, torch.float64, keep=keep, p=p)
    low = None if dtype == torch.float32 else _torch_rope_attention(q, k, v, dout, scale, rope, dtype, keep=keep, p=p)
    for i, name in enumerate(NAMES):
        if name != "lse":
            assert_close_to_reference(got[i], ref[i], dtype=dtype, lowp_baseline=None if low is None else low[i],
                                      what=name)


# ----------------------------------------------------------------------------------------------
# Every GPU configuration, with RoPE
# ----------------------------------------------------------------------------------------------

TUNED = {"fwd": K._attn_fwd_tuned, "dkdv": KB._attn_bwd_dkdv_tuned, "dq": KB._attn_bwd_dq_tuned}


def _rope_tiles(kernel: str) -> list:
    """Every BLOCK_M x BLOCK_N tile the prune filter can keep for ``kernel`` with RoPE, over all
    families, head-dim widths, dtypes and dropout (warps, stages and compile hints change nothing
    in the interpreter)."""
    seen = {}
    for family in _configs.ARCH_FAMILIES:
        for width in range(16, 257, 16):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                for dropout in (False, True):
                    for c in _configs.attention_configs(kernel, width, dtype, dropout, family=family, rope=True):
                        seen.setdefault((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]), c)
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4, num_stages=1) for m, n in seen]


CASES = [(kernel, c) for kernel in TUNED for c in _rope_tiles(kernel)]


@skip_on_gpu
@pytest.mark.parametrize("kernel,config", CASES,
                         ids=[f"{k}-m{c.kwargs['BLOCK_M']}n{c.kwargs['BLOCK_N']}" for k, c in CASES])
def test_every_gpu_configuration_with_rope(kernel, config, monkeypatch, device):
    """fp32, N = 150 (a partial block for every tile), head dims 72 / 80 / 64 and both pairings in
    turn, one prefix token."""
    monkeypatch.setattr(TUNED[kernel], "interpret_config", lambda args: config)
    i = CASES.index((kernel, config))
    D, pairing = (72, 80, 64)[i % 3], PAIRINGS[i % 2]
    q, k, v, dout, rope = _inputs(1, 2, 150, D, torch.float32, device, 1, pairing)
    _check(_launch(q, k, v, dout, D ** -0.5, rope), q, k, v, dout, D ** -0.5, rope)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def _bad(q, k, v, **rope):
    """Both launchers reject ``rope`` with the same message."""
    messages = []
    for call in (lambda: K.attention_fwd(q, k, v, sm_scale=0.1, **rope),
                 lambda: K.attention_bwd(q, q, k, v, q, torch.zeros(q.shape[:3], device=q.device), sm_scale=0.1, **rope)):
        with pytest.raises((ValueError, TypeError)) as err:
            call()
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    return messages[0]


def test_errors_name_the_argument(device):
    q, k, v = (torch.randn(1, 2, 10, 8, device=device) for _ in range(3))
    cos, sin = _tables(9, 8, "half", device)
    ok = dict(cos=cos, sin=sin, num_prefix_tokens=1)
    assert "cos must have shape (N - num_prefix_tokens, head_dim) = (9, 8)" in _bad(q, k, v, **{**ok, "cos": cos[1:]})
    assert "sin must have shape" in _bad(q, k, v, **{**ok, "sin": sin[:, :6].contiguous()})
    assert "(10, 8)" in _bad(q, k, v, **{**ok, "num_prefix_tokens": 0})
    assert "cos must be float32" in _bad(q, k, v, **{**ok, "cos": cos.double()})
    assert "sin must be float32" in _bad(q, k, v, **{**ok, "sin": sin.half()})
    assert "cos must be on the device of q" in _bad(q, k, v, **{**ok, "cos": cos.to("meta")})
    assert "sin must be contiguous" in _bad(q, k, v, **{**ok, "sin": torch.cat([sin, sin], 1)[:, ::2]})
    assert "cos must be a torch.Tensor" in _bad(q, k, v, **{**ok, "cos": cos.tolist()})
    assert "cos and sin go together" in _bad(q, k, v, cos=cos)
    assert "pairing must be one of 'half', 'interleaved'" in _bad(q, k, v, **ok, pairing="rotate_half")
    assert "num_prefix_tokens must be an int in [0, N = 10]" in _bad(q, k, v, **{**ok, "num_prefix_tokens": 11})
    assert "num_prefix_tokens" in _bad(q, k, v, **{**ok, "num_prefix_tokens": -1})
    # Self-attention only: q and k with different token counts.
    k2, v2 = (torch.randn(1, 2, 12, 8, device=device) for _ in range(2))
    with pytest.raises(ValueError, match="self-attention only"):
        K.attention_fwd(q, k2, v2, sm_scale=0.1, **ok)
    with pytest.raises(ValueError, match="self-attention only"):
        K.attention_bwd(q, q, k2, v2, q, torch.zeros(1, 2, 10, device=device), sm_scale=0.1, **ok)
    # An odd head dim has no pairs.
    q5, k5, v5 = (torch.randn(1, 2, 10, 5, device=device) for _ in range(3))
    cos5 = torch.ones(9, 5, device=device)
    assert "even head_dim" in _bad(q5, k5, v5, cos=cos5, sin=cos5, num_prefix_tokens=1)
