"""``fastvit.ops.mlp`` (fastvit/ops/mlp.py, _mlp_triton.py over kernels/gelu_linear_bwd.py) and the
``Mlp`` module that calls it, on the ``device`` fixture's device: forward and every gradient on
triton against float64 and against the eager backend; the recomputing and the storing paths
against each other, bitwise; what the MLP Functions save for the backward; autocast; the custom op
(opcheck); bad input refused, naming the argument, before any launch.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastvit.ops as ops
from fastvit import reference
from fastvit.kernels import gelu_linear_bwd as G
from fastvit.kernels import linear_gelu as K
from fastvit.kernels import linear_gelu_bwd as KB
from fastvit.layers import Mlp
from fastvit.kernels._interpret import interpreting
from tests._tolerances import assert_close_to_reference, rel_err
from tests.test_linear_gelu_kernel import BF16_ULP

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
APPROX = ["none", "tanh", "quick"]
NAMES = ("x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def _inputs(x_shape, hidden, out, dtype, device, bias=True):
    c = x_shape[-1]
    x = torch.randn(x_shape, device=device).to(dtype)
    w1 = (torch.randn(hidden, c, device=device) / c ** 0.5).to(dtype)
    b1 = torch.randn(hidden, device=device).to(dtype) if bias else None
    w2 = (torch.randn(out, hidden, device=device) / hidden ** 0.5).to(dtype)
    b2 = torch.randn(out, device=device).to(dtype) if bias else None
    return x, w1, b1, w2, b2


def _run(fn, inputs, dy, needs=None):
    """Output and the gradient of every input (None where it is None or not required)."""
    needs = needs or [True] * len(inputs)
    leaves = [t.detach().clone().requires_grad_(n) if t is not None else None for t, n in zip(inputs, needs)]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [t.grad if t is not None else None for t in leaves]


def _check(actual, expected64, dtype, baseline, what, ulps=1):
    """As test_linear_gelu_kernel's: 2x PyTorch's error, and under the interpreter (which
    truncates fp32 -> bf16 casts) ``ulps`` bf16 ulps more. fc2's weight gradient gets two: its
    GEMM reads GELU(pre) recomputed from a truncated pre and truncated again (or the truncated h),
    both biased the same way, before its own output is truncated."""
    floor = None
    if dtype == torch.bfloat16 and interpreting():
        floor = 2.0 * rel_err(baseline, expected64) + ulps * BF16_ULP
    assert actual.dtype == dtype and actual.shape == expected64.shape, what
    assert_close_to_reference(actual, expected64, dtype=dtype, lowp_baseline=baseline, floor=floor, what=what)


def _mlp64(x, w1, b1, w2, b2, approx):
    return F.linear(reference.gelu(F.linear(x, w1, b1), approx), w2, b2)


def _compare(inputs, dy, approx, dtype, fn, what=""):
    """fn's output and gradients against float64 (fastvit.reference) and the eager backend."""
    y, g = _run(fn, inputs, dy)
    y64, g64 = _run(lambda *a: _mlp64(*a, approx), [t.double() if t is not None else None for t in inputs],
                    dy.double())
    ye, ge = _run(lambda *a: ops.mlp(*a, approx, backend="eager"), inputs, dy)
    _check(y, y64, dtype, ye, f"{what}output")
    for name, a, e, base in zip(("dx", "dfc1_weight", "dfc1_bias", "dfc2_weight", "dfc2_bias"), g, g64, ge):
        if e is None:
            assert a is None, name
            continue
        _check(a, e, dtype, base, f"{what}{name}", ulps=2 if name == "dfc2_weight" else 1)
        if dtype == torch.float32:
            assert rel_err(a, base) <= 1e-5, f"{what}{name} vs eager"
    return y, g


# ----------------------------------------------------------------------------------------------
# Against float64 and the eager backend
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_float64_and_eager(dtype, approx, device):
    # M = 3 * 65 = 195 tokens, C_in = 72, hidden 197, C_out = 80: no size a multiple of a block
    inputs = _inputs((3, 65, 72), 197, 80, dtype, device)
    dy = torch.randn(3, 65, 80, device=device).to(dtype)
    _compare(inputs, dy, approx, dtype, lambda *a: ops.mlp(*a, approx, backend="triton"))


@pytest.mark.parametrize("recompute", [True, False])
def test_without_biases_and_one_token(recompute, device):
    for shape in ((1, 40), (40,)):
        inputs = _inputs(shape, 65, 24, torch.float32, device, bias=False)
        dy = torch.randn(*shape[:-1], 24, device=device)
        _compare(inputs, dy, "tanh", torch.float32,
                 lambda *a: ops.mlp(*a, "tanh", recompute=recompute, backend="triton"), f"{shape}: ")


def test_only_some_inputs_need_grad(device):
    """Each gradient computed only when asked for: frozen fc1 (no dpre GEMM unless x needs its
    gradient), frozen fc2 weight (no dW2 GEMM)."""
    inputs = _inputs((2, 30, 40), 96, 40, torch.float32, device)
    dy = torch.randn(2, 30, 40, device=device)
    y64, g64 = _run(lambda *a: _mlp64(*a, "none"), [t.double() for t in inputs], dy.double())
    for needs in ([False, False, False, True, True], [True, False, False, False, False],
                  [False, True, False, False, True], [False, False, True, False, False]):
        _, g = _run(lambda *a: ops.mlp(*a, backend="triton"), inputs, dy, needs)
        for name, n, a, e in zip(NAMES, needs, g, g64):
            assert (a is not None) == n, (name, needs)
            if n:
                assert rel_err(a, e) <= 1e-5, (name, needs)


@pytest.mark.parametrize("kind", ["sum", "expanded_row"])
def test_stride0_upstream_grad(kind, device):
    inputs = _inputs((2, 37, 56), 72, 48, torch.float32, device)
    dy = torch.ones((), device=device).expand(2, 37, 48) if kind == "sum" else \
        torch.randn(48, device=device).expand(2, 37, 48)
    _compare(inputs, dy, "none", torch.float32, lambda *a: ops.mlp(*a, backend="triton"))


def test_float64_and_no_grad(device):
    """float64 runs PyTorch's ops on every backend; under no_grad nothing is saved."""
    inputs = _inputs((2, 21, 33), 47, 33, torch.float64, device)
    assert torch.equal(ops.mlp(*inputs, "tanh", backend="triton"), ops.mlp(*inputs, "tanh", backend="eager"))
    leaves = [t.float().requires_grad_() for t in inputs]
    with torch.no_grad():
        y = ops.mlp(*leaves, backend="triton")
    assert y.grad_fn is None
    assert torch.equal(y, ops.mlp(*[t.detach() for t in leaves], backend="triton"))


# ----------------------------------------------------------------------------------------------
# Recomputing vs storing the activation
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_recompute_and_store_give_the_same_gradients(dtype, device):
    """Bitwise, in every dtype: the output and every gradient. The forward applies GELU to the
    pre-activation rounded to the activation dtype (as PyTorch's addmm then gelu does), which is
    exactly what it stores, so the backward's prologue recomputes the GELU output's bits."""
    for approx in APPROX:
        inputs = _inputs((2, 50, 48), 130, 40, dtype, device)
        dy = torch.randn(2, 50, 40, device=device).to(dtype)
        y_r, g_r = _run(lambda *a: ops.mlp(*a, approx, recompute=True, backend="triton"), inputs, dy)
        y_s, g_s = _run(lambda *a: ops.mlp(*a, approx, recompute=False, backend="triton"), inputs, dy)
        assert torch.equal(y_r, y_s)
        for name, a, b in zip(NAMES, g_r, g_s):
            assert torch.equal(a, b), (dtype, approx, name)
    _compare(inputs, dy, approx, dtype, lambda *a: ops.mlp(*a, approx, recompute=True, backend="triton"), "recompute ")
    _compare(inputs, dy, approx, dtype, lambda *a: ops.mlp(*a, approx, recompute=False, backend="triton"), "store ")


def _saved(fn, *args):
    """Tensors an autograd graph saves while ``fn(*args)`` runs: (shape, bytes) of each."""
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.numel() * t.element_size()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return saved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_activation_is_not_saved(dtype, device):
    M, C_in, H, C_out = 2 * 45, 40, 160, 40
    inputs = [t.requires_grad_() for t in _inputs((2, 45, C_in), H, C_out, dtype, device)]
    e = torch.empty((), dtype=dtype).element_size()
    recompute = _saved(lambda *a: ops.mlp(*a, backend="triton"), *inputs)
    store = _saved(lambda *a: ops.mlp(*a, recompute=False, backend="triton"), *inputs)
    unfused = _saved(lambda *a: F.linear(ops.linear_gelu(*a[:3], backend="triton"), a[3], a[4]), *inputs)
    # x, fc1's weight, the pre-activation, fc2's weight: no other (M, H) tensor
    assert sorted(recompute) == sorted([((M, C_in), M * C_in * e), ((H, C_in), H * C_in * e), ((M, H), M * H * e),
                                        ((C_out, H), C_out * H * e)])
    assert [s for s, _ in recompute].count((M, H)) == 1
    assert sum(b for _, b in store) == sum(b for _, b in recompute) + M * H * e
    assert sum(b for _, b in unfused) == sum(b for _, b in recompute) + M * H * e  # today's path keeps h


def test_module_takes_the_mlp_op_unless_dropout_is_active(monkeypatch, device):
    calls = []
    real = ops.mlp

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "mlp", spy)
    x = torch.randn(2, 9, 16, device=device)
    m = Mlp(16, 64, approximate="tanh", backend="triton").to(device).train()
    y = m(x)
    assert calls == ["triton"]
    expected = m.fc2(ops.linear_gelu(x, m.fc1.weight, m.fc1.bias, "tanh", backend="triton"))
    assert rel_err(y, expected) <= 1e-6
    names = [n for n, _ in m.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    dropping = Mlp(16, 64, drop=0.5, backend="triton").to(device)
    dropping.train()(x)
    assert len(calls) == 1  # dropout between GELU and fc2: linear_gelu, dropout, fc2 as before
    dropping.eval()(x)
    assert len(calls) == 2


def test_model_saves_less_on_triton(monkeypatch, device):
    """A whole model's training graph on triton keeps one (tokens, hidden) tensor per block less
    than the same model with the activation stored (recompute=False)."""
    from fastvit import FastViT
    model = FastViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                    backend="triton").to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    recomputing = sum(b for _, b in _saved(model, x))
    real = ops.mlp
    monkeypatch.setattr(ops, "mlp", lambda *a, **k: real(*a, **{**k, "recompute": False}))
    storing = sum(b for _, b in _saved(model, x))
    depth, tokens, hidden = 2, 2 * 17, 128
    assert storing - recomputing == depth * tokens * hidden * 4


# ----------------------------------------------------------------------------------------------
# Autocast, the custom op
# ----------------------------------------------------------------------------------------------

def test_autocast_runs_in_autocast_dtype(device):
    inputs = _inputs((3, 17, 40), 64, 40, torch.float32, device)
    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = ops.mlp(*leaves, backend="triton")
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, ops.mlp(*[t.bfloat16() for t in inputs], backend="triton"))
    y.float().sum().backward()
    for t in leaves:
        assert t.grad.dtype == torch.float32


def test_opcheck(device):
    M, C_out, H = 13, 24, 40
    dy, pre = torch.randn(M, C_out, device=device), torch.randn(M, H, device=device)
    w2, h = torch.randn(C_out, H, device=device), torch.randn(M, H, device=device)
    for stored in (None, h):
        for flags in ((True, True, True), (True, False, True), (False, False, True), (True, True, False)):
            torch.library.opcheck(torch.ops.fastvit.mlp_bwd.default, (dy, pre, w2, stored, "tanh", *flags))


# ----------------------------------------------------------------------------------------------
# Bad input: errors naming the argument, before any launch
# ----------------------------------------------------------------------------------------------

class _NoLaunch:
    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched for bad input")


@pytest.fixture
def no_launch(monkeypatch):
    for module, name in ((K, "_linear_gelu_fwd_tuned"), (K, "_bias_gelu_fwd"), (KB, "_gelu_bwd"),
                         (KB, "_bias_grad_reduce"), (G, "_gelu_linear_dw_tuned"), (G, "_gelu_linear_dpre_tuned"),
                         (G, "_bias_grad_reduce"), (G, "_bias_gelu_fwd")):
        monkeypatch.setattr(module, name, _NoLaunch())


def test_bad_input_op(device, no_launch):
    x, w1, b1, w2, b2 = _inputs((4, 8), 6, 5, torch.float32, device)
    cases = [
        ((x, torch.randn(6, 9), b1, w2, b2), {}, ValueError, r"fc1_weight must have shape \(hidden_features, 8\)"),
        ((x, w1, torch.randn(7), w2, b2), {}, ValueError, r"fc1_bias must have shape \(6,\)"),
        ((x, w1, b1, torch.randn(5, 7), b2), {}, ValueError, r"fc2_weight must have shape \(out_features, 6\)"),
        ((x, w1, b1, w2, torch.randn(6)), {}, ValueError, r"fc2_bias must have shape \(5,\)"),
        ((x, w1, b1, w2[0], b2), {}, ValueError, "fc2_weight must be 2-D"),
        ((x, w1, b1[None], w2, b2), {}, ValueError, "fc1_bias must be 1-D"),
        ((x, w1, b1, w2.half(), b2), {}, ValueError, "fc2_weight has dtype"),
        ((x, w1, b1, w2, b2.to("meta")), {}, ValueError, "fc2_bias has device"),
        ((x.int(), w1, b1, w2, b2), {}, TypeError, "x must have a floating dtype"),
        ((x.tolist(), w1, b1, w2, b2), {}, TypeError, "x must be a torch.Tensor"),
        ((x, w1, b1, "w2", b2), {}, TypeError, "fc2_weight must be a torch.Tensor"),
        ((x, w1, b1, w2, b2, "sigmoid"), {}, ValueError, "approximate must be one of"),
        ((x, w1, b1, w2, b2), {"recompute": 1}, TypeError, "recompute must be a bool"),
        ((x, w1, b1, w2, b2), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            ops.mlp(*args, **{"backend": "triton", **kwargs})


def test_bad_input_launchers(device, no_launch):
    dy, pre, w = torch.randn(4, 6), torch.randn(4, 5), torch.randn(6, 5)
    with pytest.raises(ValueError, match=r"pre must have shape \(4, H\)"):
        G.gelu_linear_dw(dy, torch.randn(3, 5))
    with pytest.raises(TypeError, match="pre must have dtype"):
        G.gelu_linear_dw(dy, pre.half())
    with pytest.raises(ValueError, match=r"out must have shape \(6, 5\)"):
        G.gelu_linear_dw(dy, pre, out=torch.empty(5, 6))
    with pytest.raises(ValueError, match="approximate"):
        G.gelu_linear_dw(dy, pre, "fast")
    with pytest.raises(ValueError, match="dy must be 2-D"):
        G.gelu_linear_dpre(dy[None], w, pre)
    with pytest.raises(ValueError, match=r"weight must have shape \(6, H\)"):
        G.gelu_linear_dpre(dy, w.t(), pre)
    with pytest.raises(ValueError, match=r"pre must have shape \(4, 5\)"):
        G.gelu_linear_dpre(dy, w, pre[:, :4])
    with pytest.raises(TypeError, match="dy must be float16"):
        G.gelu_linear_dpre(dy.int(), w.int(), pre.int())
    with pytest.raises(ValueError, match="gemm must be one of"):
        G.gelu_linear_dpre(dy, w, pre, gemm="cutlass")
    with pytest.raises(TypeError, match="gemm='triton' supports"):
        G.gelu_linear_dw(dy.double(), pre.double(), gemm="triton")
