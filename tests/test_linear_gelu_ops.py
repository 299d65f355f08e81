"""The linear_gelu op layer on the Triton path (fastvit/ops/_linear_gelu_triton.py over
kernels/linear_gelu.py): autocast, custom ops (opcheck), torch.compile, and bad input refused
before any launch, by the op and by the launchers. On the ``device`` fixture's device.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastvit.ops as ops
from fastvit.kernels import linear_gelu as K
from fastvit.kernels import linear_gelu_bwd as KB
from fastvit.ops import _linear_gelu_triton as T
from tests.test_linear_gelu_kernel import _grads, _inputs

# ----------------------------------------------------------------------------------------------
# Autocast, custom ops, torch.compile
# ----------------------------------------------------------------------------------------------

def test_autocast_runs_in_autocast_dtype(device):
    x, w, b = _inputs((3, 17, 40), 36, torch.float32, device)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = ops.linear_gelu(*leaves, backend="triton")
        expected = F.gelu(F.linear(x, w, b))
    assert y.dtype == expected.dtype == torch.bfloat16
    y_cast = ops.linear_gelu(x.bfloat16(), w.bfloat16(), b.bfloat16(), backend="triton")
    assert torch.equal(y, y_cast)
    y.float().sum().backward()
    for t in leaves:
        assert t.grad.dtype == torch.float32
    # mixed dtypes, as autocast allows for F.linear: bf16 activations, fp32 parameters
    xb = x.bfloat16().requires_grad_()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y_mixed = T.triton_linear_gelu(xb, w, b, "none")
    assert torch.equal(y_mixed, y_cast)
    y_mixed.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16


def test_opcheck(device):
    x, w, b = _inputs((13, 24), 20, torch.float32, device)
    for bias in (b, None):
        for store_pre in (True, False):
            torch.library.opcheck(torch.ops.fastvit.linear_gelu_fwd.default, (x, w, bias, "tanh", store_pre))
    dy, pre = torch.randn(13, 20, device=device), torch.randn(13, 20, device=device)
    for bias_grad in (True, False):
        torch.library.opcheck(torch.ops.fastvit.linear_gelu_bwd.default, (dy, pre, "none", bias_grad))


def test_torch_compile_fullgraph(device):
    x, w, b = _inputs((2, 19, 48), 40, torch.float32, device)
    dy = torch.randn(2, 19, 40, device=device)

    def fn(x_, w_, b_):
        return ops.linear_gelu(x_, w_, b_, "tanh", backend="triton")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    y_c, g_c = _grads(compiled, (x, w, b), dy)
    y_e, g_e = _grads(fn, (x, w, b), dy)
    assert torch.equal(y_c, y_e)
    for a, e in zip(g_c, g_e):
        assert torch.allclose(a, e, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors, before any launch
# ----------------------------------------------------------------------------------------------

class _NoLaunch:
    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched for bad input")


@pytest.fixture
def no_launch(monkeypatch):
    for module, name in ((K, "_linear_gelu_fwd_tuned"), (K, "_bias_gelu_fwd"), (KB, "_gelu_bwd"),
                         (KB, "_bias_grad_reduce")):
        monkeypatch.setattr(module, name, _NoLaunch())


def test_bad_input_op(device, no_launch):
    x, w, b = _inputs((4, 8), 6, torch.float32, device)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.linear_gelu(x, torch.randn(6, 9), b, backend="triton")
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.linear_gelu(x, w, torch.randn(7), backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        ops.linear_gelu(x, w.half(), b, backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        ops.linear_gelu(x, w, b.double(), backend="triton")
    with pytest.raises(ValueError, match="device"):
        ops.linear_gelu(x, w.to("meta"), b, backend="triton")
    with pytest.raises(TypeError, match="floating dtype"):
        ops.linear_gelu(x.to(torch.int32), w.to(torch.int32), None, backend="triton")
    with pytest.raises(TypeError, match="floating dtype"):
        ops.linear_gelu(torch.ones(4, 8, dtype=torch.int64), w, b, backend="triton")
    with pytest.raises(ValueError, match="approximate"):
        ops.linear_gelu(x, w, b, approximate="sigmoid", backend="triton")
    with pytest.raises(ValueError, match="approximate"):
        ops.linear_gelu(x, w, b, approximate=None, backend="triton")
    with pytest.raises(ValueError, match="weight must be 2-D"):
        ops.linear_gelu(x, w[0], b, backend="triton")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.linear_gelu(x.tolist(), w, b, backend="triton")


def test_bad_input_launchers(device, no_launch):
    x, w, b = _inputs((4, 8), 6, torch.float32, device)
    with pytest.raises(ValueError, match="x must be 2-D"):
        K.linear_gelu_fwd(x[None], w, b)
    with pytest.raises(ValueError, match=r"weight must have shape \(N, 8\)"):
        K.linear_gelu_fwd(x, w[:, :5], b)
    with pytest.raises(TypeError, match="weight must have dtype"):
        K.linear_gelu_fwd(x, w.half(), b)
    with pytest.raises(TypeError, match="x must be float16"):
        K.linear_gelu_fwd(x.int(), w.int(), None)
    with pytest.raises(ValueError, match="gemm must be one of"):
        K.linear_gelu_fwd(x, w, b, gemm="cutlass")
    with pytest.raises(TypeError, match="gemm='triton' supports"):
        K.linear_gelu_fwd(x.double(), w.double(), b.double(), gemm="triton")
    with pytest.raises(ValueError, match="out must have shape"):
        K.linear_gelu_fwd(x, w, b, out=torch.empty(4, 7))
    with pytest.raises(ValueError, match="approximate"):
        K.linear_gelu_fwd(x, w, b, "fast")
    with pytest.raises(ValueError, match="pre must have shape"):
        K.linear_gelu_bwd(torch.randn(4, 6), torch.randn(4, 5))
    with pytest.raises(TypeError, match="pre must have dtype"):
        K.linear_gelu_bwd(torch.randn(4, 6), torch.randn(4, 6).half())


