"""The LayerNorm op layer on the Triton path (fastvit/ops/_layer_norm_triton.py over
kernels/layer_norm.py): float64 and autocast policy, custom ops (opcheck), torch.compile, bad
input refused before any launch, and the launchers' own checks. On the ``device`` fixture's device.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastvit import reference
from fastvit.kernels import layer_norm as K
from fastvit.ops import _layer_norm_triton as T
from fastvit.ops import add_layer_norm, layer_norm
from tests._tolerances import assert_close_to_reference
from tests.test_layer_norm_kernel import _inputs, _leaves, _to_lowp


def test_float64_goes_to_pytorch(device):
    x, r, w, b = (t.double() for t in _inputs((7, 192), torch.float32, residual=True, device=device))
    torch.testing.assert_close(layer_norm(x, w, b, backend="triton"), F.layer_norm(x, (192,), w, b), rtol=0, atol=0)
    h, y = add_layer_norm(x, r, w, b, backend="triton")
    torch.testing.assert_close(y, F.layer_norm(x + r, (192,), w, b), rtol=0, atol=0)


def test_autocast_runs_in_fp32_like_cuda_autocast(device):
    """Under autocast LayerNorm runs in fp32 and returns fp32 (CUDA autocast's policy for
    layer_norm, applied on every device), reading fp16/bf16 activations and fp32 parameters
    without copies; gradients come back in each input's dtype."""
    x = torch.randn(2, 9, 384, dtype=torch.bfloat16, requires_grad=True, device=device)
    r = torch.randn(2, 9, 384, dtype=torch.float32, requires_grad=True, device=device)
    w = torch.randn(384, requires_grad=True, device=device)
    b = torch.randn(384, requires_grad=True, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = T.triton_layer_norm(x, w, b, 1e-6)
        h, y2 = T.triton_add_layer_norm(x, r, w, b, 1e-6)
    assert y.dtype == torch.float32 and h.dtype == torch.float32 and y2.dtype == torch.float32
    (y.sum() + (y2 * y2).sum() + h.sum()).backward()
    assert x.grad.dtype == torch.bfloat16 and r.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32

    xr, rr, wr, br = (t.detach().double().requires_grad_() for t in (x, r, w, b))
    yr = reference.layer_norm(xr, wr, br, 1e-6)
    hr, y2r = reference.add_layer_norm(xr, rr, wr, br, 1e-6)
    (yr.sum() + (y2r * y2r).sum() + hr.sum()).backward()
    for got, want in ((y, yr), (y2, y2r), (h, hr), (r.grad, rr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        assert_close_to_reference(got, want, dtype=torch.float32)
    assert_close_to_reference(x.grad, xr.grad, dtype=torch.bfloat16, lowp_baseline=_to_lowp(xr.grad, torch.bfloat16))


# --------------------------------------------------------------------------------------------
# torch.library custom ops and torch.compile
# --------------------------------------------------------------------------------------------

def test_opcheck_custom_ops(device):
    x, r, w, b = _inputs((3, 7, 192), torch.float32, residual=True, device=device)
    torch.library.opcheck(torch.ops.fastvit.layer_norm_fwd.default, (x, w, b, 1e-5, None))
    torch.library.opcheck(torch.ops.fastvit.layer_norm_fwd.default, (x.half(), None, None, 1e-5, torch.float32))
    torch.library.opcheck(torch.ops.fastvit.add_layer_norm_fwd.default, (x, r, w, b, 1e-5, None))
    torch.library.opcheck(torch.ops.fastvit.add_layer_norm_fwd.default, (x, r, None, b, 1e-5, None))
    _, mean, rstd = K.layer_norm_fwd(x, w, b, 1e-5)
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.fastvit.layer_norm_bwd.default, (dy, x, w, mean, rstd, None, torch.float32))
    torch.library.opcheck(torch.ops.fastvit.layer_norm_bwd.default, (dy, x, None, mean, rstd, dy.clone(), None))


def test_compile_fullgraph_aot_eager(device):
    torch._dynamo.reset()

    def block(x, r, w1, b1, w2, b2):
        h, y = add_layer_norm(x, r, w1, b1, 1e-6)
        return layer_norm(h * 2 + y, w2, b2, 1e-6).sum() + h.sum()

    x, r, w1, b1 = _inputs((2, 9, 192), torch.float32, residual=True, device=device)
    w2, b2 = torch.randn(192, device=device), torch.randn(192, device=device)
    eager_in = _leaves(x, r, w1, b1, w2, b2)
    compiled_in = _leaves(x, r, w1, b1, w2, b2)
    out_e = block(*eager_in)
    out_e.backward()
    out_c = torch.compile(block, fullgraph=True, backend="aot_eager")(*compiled_in)
    out_c.backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-5)
    for a, c in zip(eager_in, compiled_in):
        torch.testing.assert_close(c.grad, a.grad, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# bad input: clear errors before any launch
# --------------------------------------------------------------------------------------------

@pytest.fixture
def no_launch(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a kernel was launched for bad input")
    monkeypatch.setattr(K, "_fwd", boom)
    monkeypatch.setattr(K, "layer_norm_bwd", boom)


def _x(device, *shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=device)


BAD = [
    ("weight width", lambda d: layer_norm(_x(d, 3, 192), _x(d, 191), None, backend="triton"), ValueError, r"weight must have shape \(192,\)"),
    ("bias width", lambda d: layer_norm(_x(d, 3, 192), None, _x(d, 384), backend="triton"), ValueError, r"bias must have shape \(192,\)"),
    ("2-D weight", lambda d: layer_norm(_x(d, 3, 192), _x(d, 1, 192), None, backend="triton"), ValueError, r"weight must be 1-D"),
    ("dtype mismatch", lambda d: layer_norm(_x(d, 3, 192), _x(d, 192, dtype=torch.float16), None, backend="triton"), ValueError, r"dtype"),
    ("residual dtype", lambda d: add_layer_norm(_x(d, 3, 192), _x(d, 3, 192, dtype=torch.bfloat16), backend="triton"), ValueError, r"dtype"),
    ("device mismatch", lambda d: layer_norm(_x(d, 3, 192), torch.empty(192, device="meta"), None, backend="triton"), ValueError, r"device"),
    ("integer x", lambda d: layer_norm(torch.ones(3, 192, dtype=torch.int32, device=d), backend="triton"), TypeError, r"x must have a floating dtype"),
    ("integer weight", lambda d: layer_norm(_x(d, 3, 192), torch.ones(192, dtype=torch.int64, device=d), backend="triton"), TypeError, r"weight must have a floating dtype"),
    ("eps zero", lambda d: layer_norm(_x(d, 3, 192), eps=0.0, backend="triton"), ValueError, r"eps must be a positive float"),
    ("eps negative", lambda d: add_layer_norm(_x(d, 3, 192), _x(d, 3, 192), eps=-1e-5, backend="triton"), ValueError, r"eps must be a positive float"),
    ("eps not a number", lambda d: layer_norm(_x(d, 3, 192), eps="1e-5", backend="triton"), ValueError, r"eps must be a positive float"),
    ("residual shape", lambda d: add_layer_norm(_x(d, 3, 192), _x(d, 4, 192), backend="triton"), ValueError, r"residual must have the shape of x"),
    ("too wide", lambda d: layer_norm(_x(d, 1, 16385), backend="triton"), ValueError, r"widths \(x.shape\[-1\]\) up to 16384"),
    ("0-D x", lambda d: layer_norm(torch.tensor(1.0, device=d), backend="triton"), ValueError, r"x must have at least 1 dimensions"),
    ("not a tensor", lambda d: layer_norm([1.0, 2.0], backend="triton"), TypeError, r"x must be a torch.Tensor"),
]


@pytest.mark.parametrize("name,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_before_launch(no_launch, name, call, exc, match, device):
    with pytest.raises(exc, match=match):
        call(device)


def test_launchers_validate_what_they_rely_on(device):
    x = _x(device, 3, 192)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        K.layer_norm_fwd(x.double(), None, None, 1e-5)
    with pytest.raises(ValueError, match=r"weight must have shape \(192,\)"):
        K.layer_norm_fwd(x, _x(device, 10), None, 1e-5)
    with pytest.raises(ValueError, match="eps must be a positive float"):
        K.layer_norm_fwd(x, None, None, 0)
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must be in \[1, 16384\]"):
        K.layer_norm_fwd(_x(device, 1, 20000), None, None, 1e-5)
    _, mean, rstd = K.layer_norm_fwd(x, None, None, 1e-5)
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        K.layer_norm_bwd(_x(device, 3, 191), x, None, mean, rstd)
    with pytest.raises(ValueError, match="mean must be float32"):
        K.layer_norm_bwd(x, x, None, mean.double(), rstd)
