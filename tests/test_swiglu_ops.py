"""linear_glu (SwiGLU / GEGLU with biases, activation and product in the GEMM epilogue):
the op end to end and the launchers, against float64 PyTorch, on the ``device`` fixture.

fp32 to a relative error of 1e-5; fp16/bf16 to at most 2x the error of plain PyTorch in the same
dtype (bf16 under the interpreter: plus one bf16 ulp, the interpreter truncating its fp32 -> bf16
casts; see tests/test_linear_gelu_kernel.py). Oracles: timm's own ``SwiGLU`` and ``GluMlp``
modules for the layouts, and the formula act(x W_g^T + b_g) * (x W_v^T + b_v) in float64.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastvit.ops as ops
from fastvit.kernels import linear_glu as K
from tests._tolerances import rel_err
from tests.test_linear_gelu_kernel import _check

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _act(t, activation):
    return F.silu(t) if activation == "silu" else F.gelu(t)


def _glu64(x, w, b, activation):
    """The packed form in float64: gate rows first (timm's SwiGLUPacked / GluMlp(gate_last=False))."""
    y = F.linear(x.double(), w.double(), None if b is None else b.double())
    g, v = y.chunk(2, dim=-1)
    return _act(g, activation) * v


def _lowp(x, w, b, activation):
    g, v = F.linear(x, w, b).chunk(2, dim=-1)
    return _act(g, activation) * v


def _inputs(shape, hidden, dtype, device, bias=True):
    k = shape[-1]
    x = torch.randn(shape, device=device).to(dtype)
    w = (torch.randn(2 * hidden, k, device=device) / k ** 0.5).to(dtype)
    b = torch.randn(2 * hidden, device=device).to(dtype) if bias else None
    return x, w, b


def _run(fn, tensors, dy):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_op_matches_float64(dtype, bias, activation, device):
    # M = 2 * 61, hidden N = 75 (2N = 150), K = 93: no multiple of any block size
    x, w, b = _inputs((2, 61, 93), 75, dtype, device, bias)
    dy = torch.randn(2, 61, 75, device=device).to(dtype)
    y, g = _run(lambda *a: ops.linear_glu(*a, activation=activation, backend="triton"), (x, w, b), dy)
    y64, g64 = _run(lambda *a: _glu64(*a, activation), [t.double() if t is not None else None for t in (x, w, b)],
                    dy.double())
    yl, gl = _run(lambda *a: _lowp(*a, activation), (x, w, b), dy)
    _check(y, y64, dtype, yl, "output")
    for name, a, e, base in zip(("dx", "dweight", "dbias"), g, g64, gl):
        if e is None:
            assert a is None, name
        else:
            _check(a, e, dtype, base, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_weights_match_timm_swiglu(dtype, device):
    """The pair form on timm's ``SwiGLU`` (fc1_g, fc1_x): output and every gradient."""
    from timm.layers import SwiGLU
    m = SwiGLU(40, 70).to(device)
    with torch.no_grad():
        for p in m.parameters():  # timm zero/one-inits some: every parameter random
            p.copy_(torch.randn_like(p) / 7)
    x = torch.randn(3, 29, 40, device=device)
    dy = torch.randn(3, 29, 70, device=device)
    params = (m.fc1_g.weight, m.fc1_x.weight, m.fc1_g.bias, m.fc1_x.bias)

    def fast(x_, wg, wv, bg, bv):
        return ops.linear_glu(x_, (wg, wv), (bg, bv), backend="triton")

    def timm_hidden(x_, wg, wv, bg, bv):  # timm's forward up to fc2: act(fc1_g(x)) * fc1_x(x)
        return m.act(F.linear(x_, wg, bg)) * F.linear(x_, wv, bv)

    ins = [t.detach().to(dtype) for t in (x, *params)]
    y, g = _run(fast, ins, dy.to(dtype))
    y64, g64 = _run(timm_hidden, [t.double() for t in ins], dy.double())
    yl, gl = _run(timm_hidden, ins, dy.to(dtype))
    _check(y, y64, dtype, yl, "output")
    for name, a, e, base in zip(("dx", "dw_gate", "dw_value", "db_gate", "db_value"), g, g64, gl):
        _check(a, e, dtype, base, name)


def test_packed_layout_is_timm_swiglu_packed(device):
    """Gate rows first, as timm's ``SwiGLUPacked`` chunks its fc1 (every backend)."""
    from timm.layers import SwiGLUPacked
    m = SwiGLUPacked(48, 2 * 36).to(device)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) / 7)
    x = torch.randn(2, 17, 48, device=device)
    want = m.drop1(m.act(m.fc1(x).chunk(2, -1)[0]) * m.fc1(x).chunk(2, -1)[1])
    for backend in ("eager", "sdpa", "triton"):
        got = ops.linear_glu(x, m.fc1.weight, m.fc1.bias, "silu", backend=backend)
        assert rel_err(got, want) <= 1e-5, backend


def test_float64_and_cublas_path(device):
    x, w, b = _inputs((33, 41), 27, torch.float64, device)
    dy = torch.randn(33, 27, device=device, dtype=torch.float64)
    y, g = _run(lambda *a: ops.linear_glu(*a, activation="gelu", backend="triton"), (x, w, b), dy)
    y64, g64 = _run(lambda *a: _glu64(*a, "gelu"), (x, w, b), dy)
    assert y.dtype == torch.float64 and rel_err(y, y64) <= 1e-12
    for a, e in zip(g, g64):
        assert rel_err(a, e) <= 1e-12


@pytest.mark.parametrize("gemm", ["triton", "cublas"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_launcher_poisoned(dtype, gemm, device):
    """Both forward paths with NaN-filled outputs, on strided operands (x a column slice, the
    value weight a separate transposed tensor): every element written, pre-activations packed."""
    activation = "gelu" if dtype == torch.float16 else "silu"
    big = torch.randn(131, 2 * 70, device=device).to(dtype)
    x = big[:, ::2]                                                     # (131, 70), stride 2 along K
    wg = (torch.randn(97, 70, device=device) / 9).to(dtype)
    wv = (torch.randn(70, 97, device=device) / 9).to(dtype).t()       # (97, 70), strides (1, 97)
    bg, bv = torch.randn(97, device=device).to(dtype), torch.randn(97, device=device).to(dtype)
    out = torch.full((131, 97), float("nan"), dtype=dtype, device=device)
    pre_out = torch.full((131, 194), float("nan"), dtype=dtype, device=device)
    y, pre = K.linear_glu_fwd(x, wg, wv, bg, bv, activation, store_pre=True, out=out, pre_out=pre_out, gemm=gemm)
    assert y is out and pre is pre_out
    g64 = F.linear(x.double(), wg.double(), bg.double())
    v64 = F.linear(x.double(), wv.double(), bv.double())
    gl, vl = F.linear(x, wg, bg), F.linear(x, wv, bv)
    _check(pre[:, :97], g64, dtype, gl, "gate pre-activation")
    _check(pre[:, 97:], v64, dtype, vl, "value pre-activation")
    _check(y, _act(g64, activation) * v64, dtype, _act(gl, activation) * vl, "output")


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_launcher_poisoned(dtype, activation, device):
    """dpre = [dy * v * act'(g) | dy * act(g)] and its column sums, NaN-poisoned output; the
    pre-activations span SiLU's and GELU's saturated tails (|g| up to 40)."""
    M, N = 203, 77
    dy = torch.randn(M, N, device=device, dtype=dtype)
    pre = torch.randn(M, 2 * N, device=device, dtype=dtype) * 3
    pre[:5, :N] *= 13
    out = torch.full((M, 2 * N), float("nan"), dtype=dtype, device=device)
    dpre, dbias = K.linear_glu_bwd(dy, pre, activation, out=out)
    g = pre[:, :N].double().requires_grad_()
    v = pre[:, N:].double().requires_grad_()
    (_act(g, activation) * v).backward(dy.double())
    want = torch.cat([g.grad, v.grad], dim=1)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert dpre is out and rel_err(dpre, want) <= tol and rel_err(dbias, want.sum(0)) <= tol


def test_stride0_grad_and_no_grad(device):
    x, w, b = _inputs((2, 19, 40), 24, torch.float32, device)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ops.linear_glu(*leaves, backend="triton").sum().backward()  # dy of stride 0
    ref = [t.double().requires_grad_() for t in (x, w, b)]
    _glu64(*ref, "silu").sum().backward()
    for name, a, e in zip(("dx", "dweight", "dbias"), leaves, ref):
        assert rel_err(a.grad, e.grad) <= 1e-5, name
    y, pre = torch.ops.fastvit.linear_glu_fwd(x.view(-1, 40), w[:24], w[24:], b[:24], b[24:], "silu", False)
    assert pre.numel() == 0  # inference keeps no pre-activations
    with torch.no_grad():
        out = ops.linear_glu(x, w.requires_grad_(), b, backend="triton")
    assert out.grad_fn is None and torch.equal(out.view(-1, 24), y)


def test_autocast_and_opcheck(device):
    x, w, b = _inputs((3, 11, 40), 20, torch.float32, device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = ops.linear_glu(x, w, b, backend="triton")
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, ops.linear_glu(x.bfloat16(), w.bfloat16(), b.bfloat16(), backend="triton"))
    x2 = x.view(-1, 40)
    for bias in ((b[:20], b[20:]), (None, None)):
        for store_pre in (True, False):
            torch.library.opcheck(torch.ops.fastvit.linear_glu_fwd.default,
                                  (x2, w[:20], w[20:], *bias, "gelu", store_pre))
    dy, pre = torch.randn(33, 20, device=device), torch.randn(33, 40, device=device)
    for bias_grad in (True, False):
        torch.library.opcheck(torch.ops.fastvit.linear_glu_bwd.default, (dy, pre, "silu", bias_grad))


def test_bad_input_is_refused_by_name(device):
    x, w, b = _inputs((4, 8), 6, torch.float32, device)
    with pytest.raises(ValueError, match="even number of rows"):
        ops.linear_glu(x, w[:11], backend="triton")
    with pytest.raises(ValueError, match=r"bias must have shape \(12,\), got \(11,\)"):
        ops.linear_glu(x, w, b[:11], backend="triton")
    with pytest.raises(ValueError, match=r"activation must be one of 'silu', 'gelu', got 'relu'"):
        ops.linear_glu(x, w, b, "relu", backend="triton")
    with pytest.raises(ValueError, match="gate_weight and value_weight must have the same shape"):
        ops.linear_glu(x, (w[:6], w[:5]), backend="triton")
    with pytest.raises(TypeError, match="bias must be a pair"):
        ops.linear_glu(x, (w[:6], w[6:]), b, backend="triton")
    with pytest.raises(ValueError, match=r"weight must have shape \(out_features, 8\)"):
        ops.linear_glu(x, torch.randn(12, 9), backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        ops.linear_glu(x, w.half(), backend="triton")
    with pytest.raises(ValueError, match="b_gate and b_value must both be given"):
        K.linear_glu_fwd(x, w[:6], w[6:], b[:6], None)
    with pytest.raises(ValueError, match=r"pre must have shape \(4, 12\)"):
        K.linear_glu_bwd(torch.randn(4, 6), torch.randn(4, 6))


def test_glu_flops_model():
    from fastvit.eva import glu_flops
    f = glu_flops(tokens=197, dim=384, hidden=1024, activation="silu")
    assert f == {"gemm": 2 * 197 * 384 * 2 * 1024, "gating": 197 * 1024 * 5}
    assert glu_flops(1, 8, 4, "gelu")["gating"] == 4 * 9
