"""linear_gelu: GELU(x @ W^T + b) with bias and GELU in the GEMM epilogue, on the ``device``
fixture's device (the interpreter on CPU; a GPU with FASTVIT_TEST_ON_GPU=1): the op end to end,
both forward paths and the backward pass through the launchers. (Op-layer tests:
test_linear_gelu_ops.py; configurations, the GPU's autotuning and race: test_linear_gelu_configs.py.)

Every output and gradient is compared with float64 PyTorch (``fastvit.reference``): fp32 to a
relative error of 1e-5; fp16/bf16 to at most 2x the error of plain PyTorch in the same dtype.

bf16 under the interpreter: the interpreter truncates fp32 -> bf16 casts instead of rounding
them, so each bf16 value our kernels store can be one bf16 ulp off where a GPU (and PyTorch)
would be half an ulp off. We allow exactly that: the bound is 2x PyTorch's error plus one bf16
ulp (2^-7 relative to the largest magnitude, the unit ``rel_err`` normalises by). On a GPU
(``FASTVIT_TEST_ON_GPU``) no extra allowance is made.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton

import fastvit.ops as ops
from fastvit import reference
from fastvit.kernels import linear_gelu as K
from fastvit.kernels._interpret import interpreting
from tests._simulated_gpu import skip_on_gpu
from tests._tolerances import assert_close_to_reference, rel_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
APPROX = ["none", "tanh"]
BF16_ULP = 2.0 ** -7


def _check(actual, expected64, dtype, baseline, what):
    floor = None
    if dtype == torch.bfloat16 and interpreting():
        floor = 2.0 * rel_err(baseline, expected64) + BF16_ULP
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected64.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected64.shape)}"
    assert_close_to_reference(actual, expected64, dtype=dtype, lowp_baseline=baseline, floor=floor, what=what)


def _inputs(x_shape, n_out, dtype, device, bias=True):
    k = x_shape[-1]
    x = torch.randn(x_shape, device=device).to(dtype)
    w = (torch.randn(n_out, k, device=device) / k ** 0.5).to(dtype)
    b = torch.randn(n_out, device=device).to(dtype) if bias else None
    return x, w, b


def _grads(fn, inputs, dy):
    """Output and gradients of every input that requires grad (None elsewhere)."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [t.grad if t is not None else None for t in leaves]


def _compare_all(x, w, b, approx, dy, fn, dtype, what=""):
    """fn(x, w, b) and its gradients against float64 and against plain PyTorch in ``dtype``."""
    y, g = _grads(fn, (x, w, b), dy)
    y64, g64 = _grads(lambda x_, w_, b_: reference.linear_gelu(x_, w_, b_, approx),
                      [t.double() if t is not None else None for t in (x, w, b)], dy.double())
    yl, gl = _grads(lambda x_, w_, b_: F.gelu(F.linear(x_, w_, b_), approximate=approx), (x, w, b), dy)
    _check(y, y64, dtype, yl, f"{what}output")
    for name, a, e, base in zip(("dx", "dweight", "dbias"), g, g64, gl):
        if e is None:
            assert a is None
            continue
        _check(a, e, dtype, base, f"{what}{name}")


# ----------------------------------------------------------------------------------------------
# The op end to end (autograd): odd GEMM sizes, 3-D input, both GELUs, every dtype
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_op_matches_float64(dtype, approx, device):
    # M = 2 * 99 = 198, N = 300, K = 200: none a multiple of any block size (the launcher tests
    # below run the 197 x 1000 x 200 GEMM)
    x, w, b = _inputs((2, 99, 200), 300, dtype, device)
    dy = torch.randn(2, 99, 300, device=device).to(dtype)
    _compare_all(x, w, b, approx, dy, lambda x_, w_, b_: ops.linear_gelu(x_, w_, b_, approx, backend="triton"), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_2d_without_bias(dtype, device):
    x, w, _ = _inputs((53, 72), 90, dtype, device)
    dy = torch.randn(53, 90, device=device).to(dtype)
    _compare_all(x, w, None, "none", dy, lambda x_, w_, b_: ops.linear_gelu(x_, w_, b_, backend="triton"), dtype)


def test_op_1d_input(device):
    x, w, b = _inputs((40,), 24, torch.float32, device)
    dy = torch.randn(24, device=device)
    _compare_all(x, w, b, "tanh", dy, lambda x_, w_, b_: ops.linear_gelu(x_, w_, b_, "tanh", backend="triton"),
                 torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_op_strided_inputs(dtype, device):
    """x a strided slice, weight stored transposed (column-major), bias a strided slice."""
    big = torch.randn(3, 31, 2 * 48, device=device).to(dtype)
    x = big[:, :, ::2]                                               # (3, 31, 48), stride 2 along K
    w = (torch.randn(48, 70, device=device) / 48 ** 0.5).to(dtype).t()  # (70, 48), strides (1, 70)
    b = torch.randn(140, device=device).to(dtype)[::2]               # (70,), stride 2
    assert not x.is_contiguous() and not w.is_contiguous() and b.stride(0) == 2
    dy = torch.randn(3, 31, 70, device=device).to(dtype)
    _compare_all(x, w, b, "none", dy, lambda x_, w_, b_: ops.linear_gelu(x_, w_, b_, backend="triton"), dtype)


def test_op_transposed_x(device):
    """x whose rows are strided and columns contiguous-in-M (a transposed view): no copy needed."""
    x = torch.randn(36, 45, device=device).t()                       # (45, 36), strides (1, 45)
    w = torch.randn(50, 36, device=device) / 6
    b = torch.randn(50, device=device)
    dy = torch.randn(45, 50, device=device)
    _compare_all(x, w, b, "tanh", dy, lambda x_, w_, b_: ops.linear_gelu(x_, w_, b_, "tanh", backend="triton"),
                 torch.float32)


@pytest.mark.parametrize("kind", ["sum", "expanded_row"])
def test_stride0_upstream_grad(kind, device):
    """Upstream gradients with stride 0 (from .sum() or an expanded vector)."""
    x, w, b = _inputs((2, 37, 56), 72, torch.float32, device)
    if kind == "sum":
        dy = torch.ones((), device=device).expand(2, 37, 72)
    else:
        dy = torch.randn(72, device=device).expand(2, 37, 72)
    assert 0 in dy.stride()
    _compare_all(x, w, b, "none", dy, lambda x_, w_, b_: ops.linear_gelu(x_, w_, b_, backend="triton"), torch.float32)
    # the same through .sum(), the way a user meets it
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ops.linear_gelu(*leaves, backend="triton").sum().backward()
    ref = [t.double().requires_grad_() for t in (x, w, b)]
    reference.linear_gelu(*ref).sum().backward()
    for name, a, e in zip(("dx", "dweight", "dbias"), leaves, ref):
        assert rel_err(a.grad, e.grad) <= 1e-5, name


def test_only_some_inputs_need_grad(device):
    x, w, b = _inputs((30, 40), 50, torch.float32, device)
    w.requires_grad_(True)  # frozen x and bias
    y = ops.linear_gelu(x, w, b, backend="triton")
    dy = torch.randn_like(y)
    y.backward(dy)
    w64 = w.detach().double().requires_grad_()
    reference.linear_gelu(x.double(), w64, b.double()).backward(dy.double())
    assert rel_err(w.grad, w64.grad) <= 1e-5


def test_no_grad_keeps_no_pre_activation(device):
    """Inference does not write the pre-activation (the custom op returns an empty one)."""
    x, w, b = _inputs((20, 16), 24, torch.float32, device)
    y, pre = torch.ops.fastvit.linear_gelu_fwd(x, w, b, "none", False)
    assert pre.numel() == 0
    with torch.no_grad():
        out = ops.linear_gelu(x, w.requires_grad_(), b, backend="triton")
    assert out.grad_fn is None
    assert torch.equal(out, y)


def test_empty_and_zero_width(device):
    # no rows: empty output, zero weight and bias gradients
    x = torch.randn(0, 8, device=device, requires_grad=True)
    w = torch.randn(5, 8, device=device, requires_grad=True)
    b = torch.randn(5, device=device, requires_grad=True)
    y = ops.linear_gelu(x, w, b, backend="triton")
    assert y.shape == (0, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    # K = 0: the GEMM sums nothing, y = GELU(bias)
    x = torch.randn(3, 0, device=device)
    w = torch.randn(5, 0, device=device)
    y = ops.linear_gelu(x, w, b.detach(), backend="triton")
    assert rel_err(y, reference.gelu(b.detach().double()).expand(3, 5)) <= 1e-6


def test_float64_uses_matmul_path(device):
    x, w, b = _inputs((2, 21, 33), 47, torch.float64, device)
    dy = torch.randn(2, 21, 47, device=device, dtype=torch.float64)
    y, g = _grads(lambda *a: ops.linear_gelu(*a, approximate="tanh", backend="triton"), (x, w, b), dy)
    y64, g64 = _grads(lambda *a: reference.linear_gelu(*a, approximate="tanh"), (x, w, b), dy)
    assert y.dtype == torch.float64 and rel_err(y, y64) <= 1e-12
    for a, e in zip(g, g64):
        assert rel_err(a, e) <= 1e-12


# ----------------------------------------------------------------------------------------------
# Launchers: poisoned outputs, both forward paths, the backward pass
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gemm", ["triton", "cublas"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_launcher_poisoned(dtype, gemm, device):
    """197 x 1000 x 200 (no multiple of any block), outputs pre-filled with NaN; both paths."""
    approx = "tanh" if dtype == torch.float16 else "none"
    x, w, b = _inputs((197, 200), 1000, dtype, device)
    out = torch.full((197, 1000), float("nan"), dtype=dtype, device=device)
    pre_out = torch.full_like(out, float("nan"))
    y, pre = K.linear_gelu_fwd(x, w, b, approx, store_pre=True, out=out, pre_out=pre_out, gemm=gemm)
    assert y.data_ptr() == out.data_ptr() and pre.data_ptr() == pre_out.data_ptr()
    pre64 = F.linear(x.double(), w.double(), b.double())
    _check(pre, pre64, dtype, F.linear(x, w, b), f"{gemm} pre-activation")
    _check(y, reference.gelu(pre64, approx), dtype, F.gelu(F.linear(x, w, b), approximate=approx), f"{gemm} output")


@skip_on_gpu
def test_forward_auto_is_triton_gemm_under_interpreter(device, monkeypatch):
    x, w, b = _inputs((70, 40), 66, torch.float32, device)
    y_triton, _ = K.linear_gelu_fwd(x, w, b, gemm="triton")

    def no_cublas(*args, **kwargs):
        raise AssertionError("gemm='auto' must run the Triton GEMM under the interpreter")

    monkeypatch.setattr(K, "_launch_cublas", no_cublas)
    y_auto, pre = K.linear_gelu_fwd(x, w, b)
    assert pre is None and torch.equal(y_auto, y_triton)


@pytest.mark.parametrize("even_k", [True, False])
@pytest.mark.parametrize("split", [1, 2])
def test_forward_small_tiles_many_groups(even_k, split, device):
    """16 x 16 x 16 tiles, GROUP_M 3: 10 row blocks in groups of 3, 3, 3, 1; K a multiple of
    BLOCK_K (unmasked K loop) or not."""
    k = 64 if even_k else 57
    x, w, b = _inputs((150, k), 77, torch.float32, device)
    cfg = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 3, "EPILOGUE_SPLIT": split},
                        num_warps=4, num_stages=1)
    out = torch.full((150, 77), float("nan"), device=device)
    y, _ = K.linear_gelu_fwd(x, w, b, "tanh", out=out, config=cfg)
    assert rel_err(y, reference.linear_gelu(x.double(), w.double(), b.double(), "tanh")) <= 1e-5


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_launcher_poisoned(dtype, approx, device):
    M, N = 197, 1000
    pre = (2.5 * torch.randn(M, N, device=device)).to(dtype)
    dy = torch.randn(M, N, device=device).to(dtype)
    out = torch.full((M, N), float("nan"), dtype=dtype, device=device)
    dpre, dbias = K.linear_gelu_bwd(dy, pre, approx, out=out)
    assert dpre.data_ptr() == out.data_ptr()
    p64 = pre.double().requires_grad_()
    reference.gelu(p64, approx).backward(dy.double())
    base = torch.ops.aten.gelu_backward(dy, pre, approximate=approx)
    _check(dpre, p64.grad, dtype, base, "dpre")
    _check(dbias, p64.grad.sum(0), dtype, base.sum(0), "dbias")
    _, none = K.linear_gelu_bwd(dy, pre, approx, bias_grad=False)
    assert none is None


def test_backward_bias_grad_deterministic_and_multi_tile(device):
    """Programs loop over several row tiles (TARGET_PROGRAMS small), partial sums reduced in a
    fixed order: bitwise reproducible."""
    pre, dy = torch.randn(300, 130, device=device), torch.randn(300, 130, device=device)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "TARGET_PROGRAMS": 5}
    d1, b1 = K.linear_gelu_bwd(dy, pre, config=cfg)
    d2, b2 = K.linear_gelu_bwd(dy, pre, config=cfg)
    assert torch.equal(d1, d2) and torch.equal(b1, b2)
    p64 = pre.double().requires_grad_()
    reference.gelu(p64).backward(dy.double())
    assert rel_err(d1, p64.grad) <= 1e-5 and rel_err(b1, p64.grad.sum(0)) <= 1e-5


def test_backward_stride0_dy(device):
    pre = torch.randn(40, 30, device=device)
    dy = torch.randn(30, device=device).expand(40, 30)
    dpre, dbias = K.linear_gelu_bwd(dy, pre, "tanh")
    p64 = pre.double().requires_grad_()
    reference.gelu(p64, "tanh").backward(dy.double())
    assert rel_err(dpre, p64.grad) <= 1e-5 and rel_err(dbias, p64.grad.sum(0)) <= 1e-5




# ----------------------------------------------------------------------------------------------
# QuickGELU (x * sigmoid(1.702 x), CLIP's OpenAI weights), through the launchers
# ----------------------------------------------------------------------------------------------

def _quick_gelu(t):
    return t * torch.sigmoid(1.702 * t)


@pytest.mark.gpu_quick
@pytest.mark.parametrize("gemm", ["triton", "cublas"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quick_gelu_forward_and_backward(dtype, gemm, device):
    """Both forward paths' epilogue and the backward's derivative, 197 x 300 x 72 (no multiple
    of any tile), every output poisoned first; pre-activations reach +-9, where the sigmoid
    saturates."""
    x, w, b = _inputs((197, 72), 300, dtype, device)
    w = (w * 3).to(dtype)
    out = torch.full((197, 300), float("nan"), dtype=dtype, device=device)
    pre_out = torch.full_like(out, float("nan"))
    y, pre = K.linear_gelu_fwd(x, w, b, "quick", store_pre=True, out=out, pre_out=pre_out, gemm=gemm)
    pre64 = F.linear(x.double(), w.double(), b.double())
    low = F.linear(x, w, b)
    _check(pre, pre64, dtype, low, "pre-activation")
    _check(y, _quick_gelu(pre64), dtype, _quick_gelu(low.float()).to(dtype), "output")

    dy = torch.randn(197, 300, device=device).to(dtype)
    dpre, dbias = K.linear_gelu_bwd(dy, pre, "quick", out=torch.full_like(dy, float("nan")))
    p64 = pre.double().requires_grad_()
    _quick_gelu(p64).backward(dy.double())
    pl = pre.float().requires_grad_()
    _quick_gelu(pl).backward(dy.float())
    _check(dpre, p64.grad, dtype, pl.grad.to(dtype), "dpre")
    _check(dbias, p64.grad.sum(0), dtype, pl.grad.sum(0).to(dtype), "dbias")
