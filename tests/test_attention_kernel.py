"""Triton fused attention (kernels/attention.py + fastvit/ops/_attention_triton.py) on the CPU
interpreter: forward, backward, dropout, the packed-qkv path, compile/export and bad input.

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
from fastvit.ops import _attention_triton as T
from tests._tolerances import assert_close_to_reference, rel_err

LOWP = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _qkv(B, H, n_q, n_k, D, dtype, std=1.0):
    q = (torch.randn(B, H, n_q, D) * std).to(dtype)
    k = (torch.randn(B, H, n_k, D) * std).to(dtype)
    v = torch.randn(B, H, n_k, D).to(dtype)
    return q, k, v


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
    out = torch.full(q.shape, float("nan"), dtype=q.dtype)
    lse = torch.full((B, H, n_q), float("nan"))
    out, lse = K.attention_fwd(q, k, v, sm_scale=scale, dropout_p=p, seed=seed, out=out, lse=lse)
    grads = tuple(torch.full(t.shape, float("nan"), dtype=t.dtype) for t in (q, k, v))
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
def test_fp32_matches_float64(B, H, n_q, n_k, D):
    q, k, v = _qkv(B, H, n_q, n_k, D, torch.float32)
    dout = torch.randn(B, H, n_q, D)
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


@pytest.mark.parametrize("dtype,B,H,n_q,n_k,D", LOWP_CASES)
def test_low_precision_within_2x_of_pytorch(dtype, B, H, n_q, n_k, D):
    q, k, v = _qkv(B, H, n_q, n_k, D, dtype)
    dout = torch.randn(B, H, n_q, D).to(dtype)
    scale = 1.0 / math.sqrt(D)
    got = _launch(q, k, v, dout, scale)
    ref = _torch_attention(q, k, v, dout, scale)
    lowp = _torch_attention(q, k, v, dout, scale, dtype=dtype)
    _check_all(got, ref, dtype, lowp)


def test_explicit_scale_and_the_functional_op():
    q, k, v = _qkv(2, 2, 30, 30, 32, torch.float32)
    dout = torch.randn(2, 2, 30, 32)
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
def test_strided_views_of_a_packed_qkv(dtype):
    B, N, H, D = 2, 37, 3, 24
    packed = torch.randn(B, N, 3, H, D).to(dtype)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous() and q.stride(-1) == 1
    dout = torch.randn(B, H, N, D).to(dtype)
    out_buf = torch.full((B, N, H * D), float("nan"), dtype=dtype)  # written as (B, N, H*D)
    out, lse = K.attention_fwd(q, k, v, sm_scale=D ** -0.5, out=out_buf.view(B, N, H, D).transpose(1, 2))
    ref = _torch_attention(q, k, v, dout, D ** -0.5)
    lowp = _torch_attention(q, k, v, dout, D ** -0.5, dtype=dtype)
    assert_close_to_reference(out_buf.view(B, N, H, D).transpose(1, 2), ref[0], dtype=dtype, lowp_baseline=lowp[0])
    grads = K.attention_bwd(dout, q, k, v, out, lse, sm_scale=D ** -0.5)
    for i, g in enumerate(grads):
        assert_close_to_reference(g, ref[2 + i], dtype=dtype, lowp_baseline=lowp[2 + i], what=NAMES[2 + i])


def test_non_unit_last_stride_is_copied():
    q, k, v = (torch.randn(1, 2, 24, 19).transpose(-1, -2) for _ in range(3))  # (1, 2, 19, 24), stride(-1) = 19
    assert q.stride(-1) != 1
    dout = torch.randn(1, 2, 19, 24)
    got = _launch(q, k, v, dout, 0.2)
    _check_all(got, _torch_attention(q, k, v, dout, 0.2), torch.float32)


@pytest.mark.parametrize("dtype,N,H,D", [(torch.float32, 197, 3, 64), (torch.float16, 65, 2, 80),
                                         (torch.bfloat16, 50, 4, 16)])
def test_packed_qkv_path_forward_backward(dtype, N, H, D):
    B = 2
    qkv = torch.randn(B, N, 3 * H * D).to(dtype)
    dout = torch.randn(B, N, H * D).to(dtype)
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


def test_packed_qkv_writes_every_element_with_no_copies(monkeypatch):
    """Launcher level: out (B, N, H*D) and dqkv (B, N, 3*H*D) NaN-poisoned views are fully written,
    and no input of the packed path needs a contiguous copy (forward or backward)."""
    B, N, H, D = 2, 45, 3, 40
    copied = []
    original = K._unit_last_stride
    monkeypatch.setattr(K, "_unit_last_stride", lambda t: copied.append(original(t) is not t) or original(t))
    qkv = torch.randn(B, N, 3 * H * D)
    q, k, v = T._qkv_views(qkv, H)
    out = torch.full((B, N, H * D), float("nan"))
    _, lse = K.attention_fwd(q, k, v, sm_scale=0.1, out=T._heads_view(out, H))
    dout = torch.randn(B, N, H * D)
    dqkv = torch.full_like(qkv, float("nan"))
    dq, dk, dv = T._qkv_views(dqkv, H)
    K.attention_bwd(T._heads_view(dout, H), q, k, v, T._heads_view(out, H), lse, sm_scale=0.1, dq=dq, dk=dk, dv=dv)
    assert torch.isfinite(out).all() and torch.isfinite(dqkv).all()
    assert copied and not any(copied)
    ref = _torch_attention(q, k, v, T._heads_view(dout, H), 0.1)
    assert rel_err(T._heads_view(out, H), ref[0]) <= 1e-5
    assert rel_err(dqkv, torch.stack(ref[2:], 0).permute(1, 3, 0, 2, 4).reshape(B, N, 3 * H * D)) <= 1e-5


def test_packed_qkv_graph_has_no_copy_ops():
    """The whole triton path (views, the custom op, autograd) issues no clone/copy, forward or backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    qkv = torch.randn(2, 20, 3 * 2 * 16, requires_grad=True)
    dout = torch.randn(2, 20, 32)
    with Record() as rec:
        out = ops.qkv_attention(qkv, 2, backend="triton")
        out.backward(dout)
    assert any("qkv_attention_fwd" in op for op in rec.ops) and any("qkv_attention_bwd" in op for op in rec.ops)
    bad = [op for op in rec.ops if any(w in op for w in ("clone", "copy", "contiguous", "bmm", "softmax"))]
    assert not bad, bad


@pytest.mark.parametrize("packed", [False, True])
def test_stride_zero_upstream_gradient(packed):
    B, H, N, D = 2, 2, 33, 16
    if packed:
        qkv = torch.randn(B, N, 3 * H * D, requires_grad=True)
        ops.qkv_attention(qkv, H, backend="triton").sum().backward()
        ref = qkv.detach().double().requires_grad_()
        q, k, v = ref.view(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        reference.attention(q, k, v).sum().backward()
        assert rel_err(qkv.grad, ref.grad) <= 1e-5
    else:
        leaves = [t.requires_grad_() for t in _qkv(B, H, N, N, D, torch.float32)]
        ops.attention(*leaves, backend="triton").sum().backward()
        ref = _torch_attention(*leaves, torch.ones(B, H, N, D), D ** -0.5)
        for leaf, expected in zip(leaves, ref[2:]):
            assert rel_err(leaf.grad, expected) <= 1e-5


def test_fp16_huge_logits_stay_finite():
    B, H, N, D = 1, 2, 130, 64
    q, k, v = _qkv(B, H, N, N, D, torch.float32)
    # Scale q and k so that the largest |logit| is 1e4 (fp16 itself tops out at 65504).
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    factor = math.sqrt(1e4 / logits.abs().max().item())
    q, k, v = (q * factor).half(), (k * factor).half(), v.half()
    assert ((q.float() @ k.float().transpose(-2, -1)) / math.sqrt(D)).abs().max() > 9e3
    dout = torch.randn(B, H, N, D).half()
    got = _launch(q, k, v, dout, 1.0 / math.sqrt(D))
    for name, t in zip(NAMES, got):
        assert torch.isfinite(t).all(), name
    ref = _torch_attention(q, k, v, dout, 1.0 / math.sqrt(D))
    assert rel_err(got[0], ref[0]) < 1e-2
    assert rel_err(got[1], ref[1]) < 1e-5


# ----------------------------------------------------------------------------------------------
# Determinism, lse, cls_attention
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_two_runs_bitwise_equal(p):
    q, k, v = _qkv(1, 2, 150, 150, 32, torch.float16)
    dout = torch.randn(1, 2, 150, 32).half()
    first = _launch(q, k, v, dout, 0.2, p=p, seed=1234)
    second = _launch(q, k, v, dout, 0.2, p=p, seed=1234)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_lse_gradient_flows():
    """lse is an output like any other: a loss that uses it gets d lse / d scores = P."""
    q, k, v = _qkv(1, 2, 40, 50, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ops.attention(*leaves, backend="triton", return_lse=True)
    w = torch.randn_like(lse)
    (out.sum() + (lse * w).sum()).backward()
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    scores = (ref[0] @ ref[1].transpose(-2, -1)) / 4.0
    (torch.softmax(scores, -1) @ ref[2]).sum().add((torch.logsumexp(scores, -1) * w.double()).sum()).backward()
    for leaf, r in zip(leaves, ref):
        assert rel_err(leaf.grad, r.grad) <= 1e-5
    # Only lse used: out's gradient is absent, not a zero tensor someone has to allocate.
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    _, lse = ops.attention(*leaves, backend="triton", return_lse=True)
    lse.sum().backward()
    assert torch.isfinite(leaves[0].grad).all() and leaves[2].grad.abs().max() == 0


@pytest.mark.parametrize("N", [1, 197])
def test_cls_attention_rows(N):
    q, k, v = _qkv(2, 3, N, N, 32, torch.float32)
    _, lse = ops.attention(q, k, v, backend="triton", return_lse=True)
    probs = reference.attention_probs(q.double(), k.double())
    for row in (0, N - 1):
        got = ops.cls_attention(q, k, lse, row=row)
        assert got.shape == (2, 3, N)
        assert rel_err(got, probs[:, :, row]) <= 1e-5
        assert torch.allclose(got.double().sum(-1), torch.ones(2, 3, dtype=torch.float64), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------


def test_dropout_zero_is_exact_and_draws_nothing():
    q, k, v = _qkv(1, 2, 70, 70, 16, torch.float32)
    state = torch.get_rng_state()
    out = ops.attention(q, k, v, dropout_p=0.0, backend="triton")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, K.attention_fwd(q, k, v, sm_scale=0.25)[0])
    assert rel_err(out, reference.attention(q.double(), k.double(), v.double())) <= 1e-5


def test_dropout_same_seed_same_output():
    q, k, v = _qkv(2, 2, 50, 50, 16, torch.float32)
    torch.manual_seed(7)
    a = ops.attention(q, k, v, dropout_p=0.4, backend="triton")
    b = ops.attention(q, k, v, dropout_p=0.4, backend="triton")
    torch.manual_seed(7)
    c = ops.attention(q, k, v, dropout_p=0.4, backend="triton")
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_fraction(p):
    B, H, n_q, n_k = 2, 2, 130, 129
    keep = K.attention_dropout_mask(B, H, n_q, n_k, p, seed=987)
    n = keep.numel()
    dropped = 1.0 - keep.double().mean().item()
    assert abs(dropped - p) <= 5 * math.sqrt(p * (1 - p) / n)
    per_head = 1.0 - keep.double().mean(dim=(2, 3))
    assert (per_head - p).abs().max() <= 5 * math.sqrt(p * (1 - p) / (n_q * n_k))
    # Heads and rows draw different bits (the (bh, row, col) counter is not aliased).
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])
    assert not torch.equal(keep[0, 0, 0], keep[0, 0, 1])
    assert torch.equal(keep, K.attention_dropout_mask(B, H, n_q, n_k, p, seed=987))
    assert not torch.equal(keep, K.attention_dropout_mask(B, H, n_q, n_k, p, seed=988))


@pytest.mark.parametrize("dtype,B,H,n_q,n_k,D", [(torch.float32, 2, 3, 97, 97, 32), (torch.float32, 1, 1, 17, 130, 80),
                                                 (torch.float16, 1, 2, 65, 65, 64)])
def test_dropout_matches_reference_with_the_kernels_mask(dtype, B, H, n_q, n_k, D):
    p, seed = 0.25, 4242
    q, k, v = _qkv(B, H, n_q, n_k, D, dtype)
    dout = torch.randn(B, H, n_q, D).to(dtype)
    scale = 1.0 / math.sqrt(D)
    keep = K.attention_dropout_mask(B, H, n_q, n_k, p, seed)
    got = _launch(q, k, v, dout, scale, p=p, seed=seed)
    ref = _torch_attention(q, k, v, dout, scale, keep=keep, p=p)
    lowp = None if dtype == torch.float32 else _torch_attention(q, k, v, dout, scale, keep=keep, p=p, dtype=dtype)
    _check_all(got, ref, dtype, lowp)


def test_dropout_through_the_op_uses_the_drawn_seed():
    """ops.attention draws its seed from torch's generator: replaying the draw gives the mask."""
    B, H, N, D = 1, 2, 40, 16
    q, k, v = _qkv(B, H, N, N, D, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    dout = torch.randn(B, H, N, D)
    torch.manual_seed(99)
    out = ops.attention(*leaves, dropout_p=0.3, backend="triton")
    out.backward(dout)
    torch.manual_seed(99)
    seed = int(T.draw_seed(0.3))
    keep = K.attention_dropout_mask(B, H, N, N, 0.3, seed)
    ref = _torch_attention(q, k, v, dout, D ** -0.5, keep=keep, p=0.3)
    assert rel_err(out, ref[0]) <= 1e-5
    for leaf, expected in zip(leaves, ref[2:]):
        assert rel_err(leaf.grad, expected) <= 1e-5


# ----------------------------------------------------------------------------------------------
# torch.library / compile / export / autocast
# ----------------------------------------------------------------------------------------------


def test_opcheck_all_ops():
    q, k, v = _qkv(1, 2, 9, 12, 16, torch.float32)
    seed = torch.tensor(5)
    for p, s in ((0.0, None), (0.2, seed)):
        torch.library.opcheck(torch.ops.fastvit.attention_fwd.default, (q, k, v, p, 0.25, s))
        out, lse = torch.ops.fastvit.attention_fwd(q, k, v, p, 0.25, s)
        for dlse in (None, torch.randn_like(lse)):
            torch.library.opcheck(torch.ops.fastvit.attention_bwd.default,
                                  (torch.randn_like(out), q, k, v, out, lse, dlse, p, 0.25, s))
    qkv = torch.randn(1, 9, 3 * 2 * 16).half()
    torch.library.opcheck(torch.ops.fastvit.qkv_attention_fwd.default, (qkv, 2, 0.0, 0.25, None))
    out, lse = torch.ops.fastvit.qkv_attention_fwd(qkv, 2, 0.0, 0.25, None)
    torch.library.opcheck(torch.ops.fastvit.qkv_attention_bwd.default,
                          (torch.randn_like(out), qkv, out, lse, None, 2, 0.0, 0.25, None))


def _fastvit_ops(gm):
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "fastvit" in str(n.target)]


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_compile_fullgraph_sees_one_opaque_op(p):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    H = 2
    qkv = torch.randn(2, 20, 3 * H * 16, requires_grad=True)
    dout = torch.randn(2, 20, H * 16)

    def fn(x):
        return ops.qkv_attention(x, H, dropout_p=p, backend="triton")

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    torch.manual_seed(3)
    out = compiled(qkv)
    out.backward(dout)
    grad = qkv.grad.clone()
    assert [_fastvit_ops(g) for g in graphs] == [["fastvit.qkv_attention_fwd.default"],
                                                 ["fastvit.qkv_attention_bwd.default"]]
    for g in graphs:
        assert not [n for n in g.graph.nodes if "mm" in str(n.target) or "softmax" in str(n.target)]
    qkv.grad = None
    torch.manual_seed(3)
    eager = fn(qkv)
    eager.backward(dout)
    assert torch.equal(out, eager) and torch.equal(grad, qkv.grad)
    # The stock backend the issue names, too.
    torch._dynamo.reset()
    torch.manual_seed(3)
    assert torch.equal(torch.compile(fn, fullgraph=True, backend="aot_eager")(qkv), eager)


def test_double_backward_raises_instead_of_a_silent_zero():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 1, 8, 8, 16, torch.float32))
    dout = torch.randn(1, 1, 8, 16, requires_grad=True)
    (gq,) = torch.autograd.grad(ops.attention(q, k, v, backend="triton"), q, dout, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gq.sum().backward()


def test_export_sees_one_opaque_op():
    class Block(torch.nn.Module):
        def forward(self, q, k, v):
            return ops.attention(q, k, v, backend="triton")

    q, k, v = _qkv(1, 2, 17, 17, 16, torch.float32)
    ep = torch.export.export(Block(), (q, k, v))
    assert _fastvit_ops(ep.graph_module) == ["fastvit.attention_fwd.default"]
    assert torch.equal(ep.module()(q, k, v), ops.attention(q, k, v, backend="triton"))


def test_autocast_runs_in_the_autocast_dtype_like_sdpa():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 33, 33, 16, torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.attention(q, k, v, backend="triton")
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert out.dtype == sdpa.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()
    ref = reference.attention(q.double(), k.double(), v.double())
    low = reference.attention(*(t.detach().bfloat16() for t in (q, k, v)))
    assert_close_to_reference(out, ref, dtype=torch.bfloat16, lowp_baseline=low)
    qkv = torch.randn(1, 33, 3 * 2 * 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = ops.qkv_attention(qkv, 2, backend="triton")
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert qkv.grad.dtype == torch.float32 and torch.isfinite(qkv.grad).all()


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors before any launch
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_launch(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel was launched for bad input")

    monkeypatch.setattr(K, "_launch", forbidden)
    monkeypatch.setattr(K, "attention_fwd", forbidden)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16).half(), torch.randn(1, 2, 8, 16)), ValueError, "dtype"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)), ValueError, "batch"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16)), ValueError, "heads"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)), ValueError, "head_dim"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 9, 16)), ValueError, "same shape"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16, device="meta")),
     ValueError, "device"),
    (lambda: tuple(torch.randn(1, 1, 4, 257) for _ in range(3)), ValueError, "head_dim up to 256"),
    (lambda: tuple(torch.ones(1, 1, 4, 8, dtype=torch.int32) for _ in range(3)), TypeError, "floating dtype"),
    (lambda: tuple(torch.randn(1, 4, 8) for _ in range(3)), ValueError, "4-D"),
    (lambda: tuple(torch.randn(1, 1, 4, 8, dtype=torch.float64) for _ in range(3)), TypeError, "float64"),
])
def test_bad_input_is_refused_before_launch(no_launch, make, exc, match):
    with pytest.raises(exc, match=match):
        ops.attention(*make(), backend="triton")


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), True])
def test_bad_dropout_is_refused(no_launch, p):
    q, k, v = _qkv(1, 1, 4, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="dropout_p"):
        ops.attention(q, k, v, dropout_p=p, backend="triton")
    with pytest.raises(ValueError, match="dropout_p"):
        ops.qkv_attention(torch.randn(1, 4, 24), 1, dropout_p=p, backend="triton")


def test_bad_qkv_shapes_are_refused(no_launch):
    with pytest.raises(ValueError, match="3 \\* num_heads"):
        ops.qkv_attention(torch.randn(1, 4, 25), 1, backend="triton")
    with pytest.raises(ValueError, match="num_heads"):
        ops.qkv_attention(torch.randn(1, 4, 24), 0, backend="triton")
    with pytest.raises(ValueError, match="head_dim up to 256"):
        ops.qkv_attention(torch.randn(1, 4, 3 * 2 * 300), 2, backend="triton")
    with pytest.raises(TypeError, match="float64"):
        ops.qkv_attention(torch.randn(1, 4, 24, dtype=torch.float64), 2, backend="triton")


def test_cpu_tensors_without_the_interpreter_are_refused(no_launch, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv(1, 1, 4, 4, 8, torch.float32)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        ops.attention(q, k, v, backend="triton")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        ops.qkv_attention(torch.randn(1, 4, 24), 1, backend="triton")
    # auto falls back to sdpa there instead of failing.
    assert torch.allclose(ops.attention(q, k, v), reference.attention(q, k, v), atol=1e-6)


def test_launcher_validates_outputs_and_seed():
    q, k, v = _qkv(1, 2, 8, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="out must be"):
        K.attention_fwd(q, k, v, sm_scale=0.1, out=torch.empty(1, 2, 8, 8))
    with pytest.raises(ValueError, match="out must be"):
        K.attention_fwd(q, k, v, sm_scale=0.1, out=torch.empty(1, 2, 8, 16).half())
    with pytest.raises(ValueError, match="unit last stride"):
        K.attention_fwd(q, k, v, sm_scale=0.1, out=torch.empty(1, 2, 16, 8).transpose(-1, -2))
    with pytest.raises(ValueError, match="lse must be"):
        K.attention_fwd(q, k, v, sm_scale=0.1, lse=torch.empty(1, 2, 8).half())
    with pytest.raises(ValueError, match="seed"):
        K.attention_fwd(q, k, v, sm_scale=0.1, dropout_p=0.1, seed=-1)
    with pytest.raises(ValueError, match="dropout_p"):
        K.attention_dropout_mask(1, 1, 4, 4, 1.0, seed=1)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        K.attention_fwd(q.double(), k.double(), v.double(), sm_scale=0.1)
    with pytest.raises(ValueError, match="head_dim"):
        K.attention_fwd(*(torch.randn(1, 1, 4, 300) for _ in range(3)), sm_scale=0.1)
    out, lse = K.attention_fwd(q, k, v, sm_scale=0.1)
    with pytest.raises(ValueError, match="dout must be"):
        K.attention_bwd(torch.randn(1, 2, 8, 8), q, k, v, out, lse, sm_scale=0.1)
    with pytest.raises(ValueError, match="dq must be"):
        K.attention_bwd(torch.randn_like(out), q, k, v, out, lse, sm_scale=0.1, dq=torch.empty(1, 2, 8, 8))


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("allow_tf32,expected", [(False, "ieee"), (True, "tf32")])
def test_fp32_dot_precision_follows_allow_tf32(monkeypatch, allow_tf32, expected):
    seen = []
    monkeypatch.setattr(K, "_launch", lambda name, fn, rows, bh, args: seen.append(args["INPUT_PRECISION"]))
    q, k, v = _qkv(1, 1, 4, 4, 16, torch.float32)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        K.attention_fwd(q, k, v, sm_scale=0.1)
        K.attention_fwd(q.half(), k.half(), v.half(), sm_scale=0.1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert seen == [expected, "ieee"]


def test_gpu_autotuner_keys_and_pruning(monkeypatch):
    """What a GPU launch would tune over: bucketed keys and the pruned list of kernels/_configs.py."""
    from fastvit.kernels import _configs

    tuner = K._tuned("fwd", K._attn_fwd)
    assert list(tuner.keys) == ["N_Q_KEY", "N_K_KEY", "HEAD_DIM", "DROPOUT", "INPUT_PRECISION"]
    named = {"Q": torch.empty(0, dtype=torch.float16)}
    for block_d, dropout in ((64, False), (128, False), (128, True), (256, False)):
        kept = tuner.early_config_prune(tuner.configs, named, BLOCK_D=block_d, DROPOUT=dropout)
        assert 1 <= len(kept) <= _configs.ATTENTION_MAX_CONFIGS
        for c in kept:
            assert _configs.attention_config_fits("fwd", c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                                  c.num_stages, block_d, 2, dropout)
    # Lengths share a compiled, tuned kernel per power-of-two bucket (197 and 256 do; 257 does not).
    args = {}
    monkeypatch.setattr(K, "_launch", lambda name, fn, rows, bh, a: args.update(a))
    q = torch.randn(1, 1, 197, 16)
    K.attention_fwd(q, q, q, sm_scale=0.1)
    assert (args["N_Q_KEY"], args["N_K_KEY"], args["BLOCK_D"]) == (256, 256, 16)
