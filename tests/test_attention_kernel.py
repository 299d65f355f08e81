"""Triton fused attention (kernels/attention.py, kernels/attention_bwd.py and
fastvit/ops/_attention_triton.py) through the launchers and the op: forward, backward, layouts,
the packed-qkv path, determinism and dropout. (The op layer's own tests: test_attention_ops.py;
every GPU configuration and the simulated GPU path: test_attention_configs.py.) On the device
of the ``device`` fixture: the interpreter on CPU, or a GPU with FASTVIT_TEST_ON_GPU=1.

Oracle: softmax(q k^T * scale) v spelled out in float64 (``fastvit.reference``). fp32 must be
within 1e-5 relative error; fp16/bf16 within 2x the error of plain PyTorch in the same dtype.
Launcher outputs are pre-filled with NaN, so an element the kernels fail to write shows up.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastvit.ops as ops
from fastvit import reference
from fastvit.kernels import attention as K
from fastvit.kernels import attention_bwd as KB
from fastvit.ops import _attention_triton as T
from tests._tolerances import assert_close_to_reference, rel_err

LOWP = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _qkv(B, H, n_q, n_k, D, dtype, device):
    return tuple(torch.randn(B, H, n, D, device=device).to(dtype) for n in (n_q, n_k, n_k))


def _torch_attention(q, k, v, dout, scale, keep=None, p=0.0, dtype=None):
    """out, lse, dq, dk, dv of plain PyTorch attention, computed in ``dtype`` (float64: the oracle).

    ``keep`` applies a given dropout keep-mask (the kernel's own) with the 1/(1-p) rescale."""
    dtype = dtype or torch.float64
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) * scale
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:
        probs = probs * keep.to(dtype) / (1.0 - p)
    out = probs @ v
    out.backward(dout.to(dtype))
    lse = torch.logsumexp(scores.detach().double(), dim=-1)
    return out.detach(), lse, q.grad, k.grad, v.grad


def _launch(q, k, v, dout, scale, p=0.0, seed=0):
    """Launchers with NaN-poisoned outputs."""
    B, H, n_q, D = q.shape
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    lse = torch.full((B, H, n_q), float("nan"), device=q.device)
    out, lse = K.attention_fwd(q, k, v, sm_scale=scale, dropout_p=p, seed=seed, out=out, lse=lse)
    grads = tuple(torch.full(t.shape, float("nan"), dtype=t.dtype, device=t.device) for t in (q, k, v))
    dq, dk, dv = K.attention_bwd(dout, q, k, v, out, lse, sm_scale=scale, dropout_p=p, seed=seed,
                                 dq=grads[0], dk=grads[1], dv=grads[2])
    return out, lse, dq, dk, dv


NAMES = ("out", "lse", "dq", "dk", "dv")


def _check_all(got, ref, dtype, lowp=None):
    """Every result against float64. With a single key, dq and dk are exactly 0 in exact arithmetic:
    there the error is measured against the scale of dv instead."""
    for i, name in enumerate(NAMES):
        actual, expected = got[i], ref[i]
        assert torch.isfinite(actual).all(), f"{name}: non-finite values (unwritten or overflow)"
        if name == "lse":
            # fp32 statistics whatever the input dtype: rounding of the inputs is the only error.
            assert rel_err(actual, expected) <= (1e-6 if dtype == torch.float32 else 1e-5), name
            continue
        if expected.abs().max() == 0:
            scale = ref[4].abs().max()
            assert actual.double().abs().max() <= (1e-5 if dtype == torch.float32 else 1e-2) * scale, name
            continue
        assert_close_to_reference(actual, expected, dtype=dtype, lowp_baseline=None if lowp is None else lowp[i],
                                  what=name)


# ----------------------------------------------------------------------------------------------
# Forward and backward against float64
# ----------------------------------------------------------------------------------------------

# (B, H, Nq, Nk, D): every length with two head dims, every head dim at N = 65 and 197, head_dim
# 256 and odd head dims at a small N, and Nq != Nk. B*H is 1 or 6; large N only with B*H = 1.
FP32_CASES = (
    [(2, 3, n, n, 16) for n in (1, 2, 17, 65, 197)] + [(1, 1, n, n, 16) for n in (257, 577)]
    + [(1, 1, n, n, 80) for n in (1, 2, 17, 257, 577)] + [(2, 3, n, n, 80) for n in (65, 197)]
    + [(1, 1, 65, 65, d) for d in (32, 64, 72, 128)] + [(2, 3, 197, 197, d) for d in (32, 64, 72, 128)]
    + [(1, 1, 17, 17, 256), (2, 3, 17, 17, 1), (1, 1, 17, 17, 5), (1, 2, 33, 33, 24)]
    + [(2, 3, 17, 65, 64), (1, 2, 197, 1, 32), (1, 2, 1, 197, 32), (1, 1, 70, 130, 48)]
    # 4097 tokens (1024 px, patch 16, + CLS) on one side at a time: the other side keeps it cheap.
    + [(1, 1, 4097, 3, 16), (1, 1, 2, 4097, 16)]
)


@pytest.mark.parametrize("B,H,n_q,n_k,D", FP32_CASES)
def test_fp32_matches_float64(B, H, n_q, n_k, D, device):
    q, k, v = _qkv(B, H, n_q, n_k, D, torch.float32, device)
    dout = torch.randn(B, H, n_q, D, device=device)
    scale = 1.0 / math.sqrt(D)
    got = _launch(q, k, v, dout, scale)
    _check_all(got, _torch_attention(q, k, v, dout, scale), torch.float32)


LOWP_CASES = (
    [(torch.float16, 2, 3, n, n, 64) for n in (1, 2, 17, 65, 197)]
    + [(torch.float16, 1, 1, n, n, 64) for n in (257, 577)]
    + [(torch.float16, 1, 2, 65, 65, d) for d in (16, 32, 72, 80, 128)]
    + [(torch.float16, 1, 1, 17, 17, 256), (torch.float16, 1, 2, 40, 90, 80)]
    + [(torch.bfloat16, 2, 3, n, n, 64) for n in (1, 17, 197)]
    + [(torch.bfloat16, 1, 2, 65, 65, d) for d in (16, 72, 80, 128)]
    + [(torch.bfloat16, 1, 1, 577, 577, 80), (torch.bfloat16, 1, 1, 17, 17, 256)]
)


@pytest.mark.gpu_quick
@pytest.mark.parametrize("dtype,B,H,n_q,n_k,D", LOWP_CASES)
def test_low_precision_within_2x_of_pytorch(dtype, B, H, n_q, n_k, D, device):
    q, k, v = _qkv(B, H, n_q, n_k, D, dtype, device)
    dout = torch.randn(B, H, n_q, D, device=device).to(dtype)
    scale = 1.0 / math.sqrt(D)
    got = _launch(q, k, v, dout, scale)
    ref = _torch_attention(q, k, v, dout, scale)
    lowp = _torch_attention(q, k, v, dout, scale, dtype=dtype)
    _check_all(got, ref, dtype, lowp)


@pytest.mark.gpu_quick
def test_explicit_scale_and_the_functional_op(device):
    q, k, v = _qkv(2, 2, 30, 30, 32, torch.float32, device)
    dout = torch.randn(2, 2, 30, 32, device=device)
    ref = _torch_attention(q, k, v, dout, 0.37)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ops.attention(*leaves, scale=0.37, backend="triton", return_lse=True)
    out.backward(dout)
    assert out.shape == (2, 2, 30, 32) and out.dtype == torch.float32
    _check_all((out, lse, *(t.grad for t in leaves)), ref, torch.float32)


# ----------------------------------------------------------------------------------------------
# Layouts: strided views, the packed qkv path, stride-0 gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_views_of_a_packed_qkv(dtype, device):
    B, N, H, D = 2, 37, 3, 24
    packed = torch.randn(B, N, 3, H, D, device=device).to(dtype)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous() and q.stride(-1) == 1
    dout = torch.randn(B, H, N, D, device=device).to(dtype)
    out_buf = torch.full((B, N, H * D), float("nan"), dtype=dtype, device=device)  # written as (B, N, H*D)
    out, lse = K.attention_fwd(q, k, v, sm_scale=D ** -0.5, out=out_buf.view(B, N, H, D).transpose(1, 2))
    ref = _torch_attention(q, k, v, dout, D ** -0.5)
    lowp = _torch_attention(q, k, v, dout, D ** -0.5, dtype=dtype)
    assert_close_to_reference(out_buf.view(B, N, H, D).transpose(1, 2), ref[0], dtype=dtype, lowp_baseline=lowp[0])
    grads = K.attention_bwd(dout, q, k, v, out, lse, sm_scale=D ** -0.5)
    for i, g in enumerate(grads):
        assert_close_to_reference(g, ref[2 + i], dtype=dtype, lowp_baseline=lowp[2 + i], what=NAMES[2 + i])


def test_non_unit_last_stride_is_copied(device):
    q, k, v = (torch.randn(1, 2, 24, 19, device=device).transpose(-1, -2) for _ in range(3))  # (1, 2, 19, 24), stride(-1) = 19
    assert q.stride(-1) != 1
    dout = torch.randn(1, 2, 19, 24, device=device)
    got = _launch(q, k, v, dout, 0.2)
    _check_all(got, _torch_attention(q, k, v, dout, 0.2), torch.float32)


@pytest.mark.gpu_quick
@pytest.mark.parametrize("dtype,N,H,D", [(torch.float32, 197, 3, 64), (torch.float16, 65, 2, 80),
                                         (torch.bfloat16, 50, 4, 16)])
def test_packed_qkv_path_forward_backward(dtype, N, H, D, device):
    B = 2
    qkv = torch.randn(B, N, 3 * H * D, device=device).to(dtype)
    dout = torch.randn(B, N, H * D, device=device).to(dtype)
    leaf = qkv.clone().requires_grad_()
    out, lse = ops.qkv_attention(leaf, H, backend="triton", return_lse=True)
    assert out.shape == (B, N, H * D) and out.is_contiguous() and lse.shape == (B, H, N)
    out.backward(dout)

    def oracle(x, dt):
        x = x.detach().to(dt).requires_grad_()
        q, k, v = x.view(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        o = reference.attention(q, k, v).transpose(1, 2).reshape(B, N, H * D)
        o.backward(dout.to(dt))
        return o.detach(), x.grad

    ref_out, ref_grad = oracle(qkv, torch.float64)
    low = oracle(qkv, dtype) if dtype != torch.float32 else (None, None)
    assert_close_to_reference(out, ref_out, dtype=dtype, lowp_baseline=low[0])
    assert_close_to_reference(leaf.grad, ref_grad, dtype=dtype, lowp_baseline=low[1], what="dqkv")
    assert leaf.grad.shape == qkv.shape


def test_packed_qkv_writes_every_element_with_no_copies(monkeypatch, device):
    """Launcher level: out (B, N, H*D) and dqkv (B, N, 3*H*D) NaN-poisoned views are fully written,
    and no input of the packed path needs a contiguous copy (forward or backward)."""
    B, N, H, D = 2, 45, 3, 40
    copied = []
    original = K.unit_last_stride
    for module in (K, KB):
        monkeypatch.setattr(module, "unit_last_stride", lambda t: copied.append(original(t) is not t) or original(t))
    qkv = torch.randn(B, N, 3 * H * D, device=device)
    q, k, v = T._qkv_views(qkv, H)
    out = torch.full((B, N, H * D), float("nan"), device=device)
    _, lse = K.attention_fwd(q, k, v, sm_scale=0.1, out=T._heads_view(out, H))
    dout = torch.randn(B, N, H * D, device=device)
    dqkv = torch.full_like(qkv, float("nan"))
    dq, dk, dv = T._qkv_views(dqkv, H)
    K.attention_bwd(T._heads_view(dout, H), q, k, v, T._heads_view(out, H), lse, sm_scale=0.1, dq=dq, dk=dk, dv=dv)
    assert torch.isfinite(out).all() and torch.isfinite(dqkv).all()
    assert copied and not any(copied)
    ref = _torch_attention(q, k, v, T._heads_view(dout, H), 0.1)
    assert rel_err(T._heads_view(out, H), ref[0]) <= 1e-5
    assert rel_err(dqkv, torch.stack(ref[2:], 0).permute(1, 3, 0, 2, 4).reshape(B, N, 3 * H * D)) <= 1e-5


def test_packed_qkv_graph_has_no_copy_ops(device):
    """The whole triton path (views, the custom op, autograd) issues no clone/copy, forward or backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    qkv = torch.randn(2, 20, 3 * 2 * 16, requires_grad=True, device=device)
    dout = torch.randn(2, 20, 32, device=device)
    with Record() as rec:
        out = ops.qkv_attention(qkv, 2, backend="triton")
        out.backward(dout)
    assert any("qkv_attention_fwd" in op for op in rec.ops) and any("qkv_attention_bwd" in op for op in rec.ops)
    bad = [op for op in rec.ops if any(w in op for w in ("clone", "copy", "contiguous", "bmm", "softmax"))]
    assert not bad, bad


@pytest.mark.parametrize("packed", [False, True])
def test_stride_zero_upstream_gradient(packed, device):
    B, H, N, D = 2, 2, 33, 16
    if packed:
        qkv = torch.randn(B, N, 3 * H * D, requires_grad=True, device=device)
        ops.qkv_attention(qkv, H, backend="triton").sum().backward()
        ref = qkv.detach().double().requires_grad_()
        q, k, v = ref.view(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        reference.attention(q, k, v).sum().backward()
        assert rel_err(qkv.grad, ref.grad) <= 1e-5
    else:
        leaves = [t.requires_grad_() for t in _qkv(B, H, N, N, D, torch.float32, device)]
        ops.attention(*leaves, backend="triton").sum().backward()
        ref = _torch_attention(*leaves, torch.ones(B, H, N, D, device=device), D ** -0.5)
        for leaf, expected in zip(leaves, ref[2:]):
            assert rel_err(leaf.grad, expected) <= 1e-5


def test_fp16_huge_logits_stay_finite(device):
    B, H, N, D = 1, 2, 130, 64
    q, k, v = _qkv(B, H, N, N, D, torch.float32, device)
    # Scale q and k so that the largest |logit| is 1e4 (fp16 itself tops out at 65504).
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    factor = math.sqrt(1e4 / logits.abs().max().item())
    q, k, v = (q * factor).half(), (k * factor).half(), v.half()
    assert ((q.float() @ k.float().transpose(-2, -1)) / math.sqrt(D)).abs().max() > 9e3
    dout = torch.randn(B, H, N, D, device=device).half()
    got = _launch(q, k, v, dout, 1.0 / math.sqrt(D))
    for name, t in zip(NAMES, got):
        assert torch.isfinite(t).all(), name
    ref = _torch_attention(q, k, v, dout, 1.0 / math.sqrt(D))
    assert rel_err(got[0], ref[0]) < 1e-2
    assert rel_err(got[1], ref[1]) < 1e-5


# ----------------------------------------------------------------------------------------------
# Determinism, lse, cls_attention
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu_quick
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_two_runs_bitwise_equal(p, device):
    q, k, v = _qkv(1, 2, 150, 150, 32, torch.float16, device)
    dout = torch.randn(1, 2, 150, 32, device=device).half()
    first = _launch(q, k, v, dout, 0.2, p=p, seed=1234)
    second = _launch(q, k, v, dout, 0.2, p=p, seed=1234)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------


def test_dropout_zero_is_exact_and_draws_nothing(device):
    q, k, v = _qkv(1, 2, 70, 70, 16, torch.float32, device)
    state = torch.get_rng_state()
    out = ops.attention(q, k, v, dropout_p=0.0, backend="triton")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, K.attention_fwd(q, k, v, sm_scale=0.25)[0])
    assert rel_err(out, reference.attention(q.double(), k.double(), v.double())) <= 1e-5


def test_dropout_same_seed_same_output(device):
    q, k, v = _qkv(2, 2, 50, 50, 16, torch.float32, device)
    torch.manual_seed(7)
    a = ops.attention(q, k, v, dropout_p=0.4, backend="triton")
    b = ops.attention(q, k, v, dropout_p=0.4, backend="triton")
    torch.manual_seed(7)
    c = ops.attention(q, k, v, dropout_p=0.4, backend="triton")
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_fraction(p, device):
    B, H, n_q, n_k = 2, 2, 130, 129
    keep = K.attention_dropout_mask(B, H, n_q, n_k, p, seed=987, device=device)
    n = keep.numel()
    dropped = 1.0 - keep.double().mean().item()
    assert abs(dropped - p) <= 5 * math.sqrt(p * (1 - p) / n)
    per_head = 1.0 - keep.double().mean(dim=(2, 3))
    assert (per_head - p).abs().max() <= 5 * math.sqrt(p * (1 - p) / (n_q * n_k))
    # Heads and rows draw different bits (the (bh, row, col) counter is not aliased).
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])
    assert not torch.equal(keep[0, 0, 0], keep[0, 0, 1])
    assert torch.equal(keep, K.attention_dropout_mask(B, H, n_q, n_k, p, seed=987, device=device))
    assert not torch.equal(keep, K.attention_dropout_mask(B, H, n_q, n_k, p, seed=988, device=device))


@pytest.mark.gpu_quick
@pytest.mark.parametrize("dtype,B,H,n_q,n_k,D", [(torch.float32, 2, 3, 97, 97, 32), (torch.float32, 1, 1, 17, 130, 80),
                                                 (torch.float16, 1, 2, 65, 65, 64)])
def test_dropout_matches_reference_with_the_kernels_mask(dtype, B, H, n_q, n_k, D, device):
    p, seed = 0.25, 4242
    q, k, v = _qkv(B, H, n_q, n_k, D, dtype, device)
    dout = torch.randn(B, H, n_q, D, device=device).to(dtype)
    scale = 1.0 / math.sqrt(D)
    keep = K.attention_dropout_mask(B, H, n_q, n_k, p, seed, device=device)
    got = _launch(q, k, v, dout, scale, p=p, seed=seed)
    ref = _torch_attention(q, k, v, dout, scale, keep=keep, p=p)
    lowp = None if dtype == torch.float32 else _torch_attention(q, k, v, dout, scale, keep=keep, p=p, dtype=dtype)
    _check_all(got, ref, dtype, lowp)


def test_dropout_through_the_op_uses_the_drawn_seed(device):
    """ops.attention draws its seed from torch's generator: replaying the draw gives the mask."""
    B, H, N, D = 1, 2, 40, 16
    q, k, v = _qkv(B, H, N, N, D, torch.float32, device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    dout = torch.randn(B, H, N, D, device=device)
    torch.manual_seed(99)
    out = ops.attention(*leaves, dropout_p=0.3, backend="triton")
    out.backward(dout)
    torch.manual_seed(99)
    seed = int(T.draw_seed(0.3))
    keep = K.attention_dropout_mask(B, H, N, N, 0.3, seed, device=device)
    ref = _torch_attention(q, k, v, dout, D ** -0.5, keep=keep, p=0.3)
    assert rel_err(out, ref[0]) <= 1e-5
    for leaf, expected in zip(leaves, ref[2:]):
        assert rel_err(leaf.grad, expected) <= 1e-5


