"""fastvit.ops.layer_norm / add_layer_norm on the Triton backend, on the ``device`` fixture's
device (the interpreter on CPU; a GPU with FASTVIT_TEST_ON_GPU=1): numerics, layouts and
determinism. (Op-layer tests: test_layer_norm_ops.py; every GPU configuration and the simulated
GPU path: test_layer_norm_configs.py.)

Oracle: ``fastvit.reference`` (LayerNorm spelled out) in float64, forward and autograd
backward. fp32: relative error <= 1e-5 for every output and gradient. fp16/bf16: at most 2x the
error of plain PyTorch in the same dtype. PyTorch's fp16/bf16 LayerNorm computes in fp32 and
rounds the result once; the low-precision baseline here is exactly that (fp32 PyTorch on the
low-precision inputs, converted once), except that for bf16 under the interpreter the one
conversion truncates, as the interpreter's fp32 -> bf16 cast does (a reference that rounds the
same way, rather than a blanket extra ulp). On a GPU the baseline rounds.

Every buffer the launchers allocate (outputs and the dweight/dbias partial sums) starts as NaN
(``poisoned_outputs``, autouse below), so an element a kernel forgot to write fails the test.
"""
from __future__ import annotations

import pytest
import torch

from fastvit import reference
from fastvit.kernels import _configs as C
from fastvit.kernels import layer_norm as K
from fastvit.kernels import layer_norm_bwd as KB
from fastvit.kernels._layer_norm_common import rows
from fastvit.kernels._interpret import interpreting
from fastvit.ops import add_layer_norm, layer_norm
from tests._tolerances import assert_close_to_reference

LOWP = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, *LOWP)


@pytest.fixture(autouse=True)
def _poison():
    with K.poisoned_outputs():
        yield


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _to_lowp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 -> dtype the way the kernel's final cast does it on this device."""
    t = t.float()
    if dtype == torch.bfloat16 and interpreting():
        return (t.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)  # exact: low bits are 0
    return t.to(dtype)


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _grads(tensors):
    return [None if t is None else t.grad for t in tensors]


def _run_reference(kind, x, residual, weight, bias, eps, dy, dh, dtype):
    """float64 outputs and gradients, plus the low-precision baseline (None for fp32)."""
    def run(cast):
        xs = _leaves(*(None if t is None else cast(t) for t in (x, residual, weight, bias)))
        if kind == "ln":
            outs = [reference.layer_norm(xs[0], xs[2], xs[3], eps)]
            ups = [dy]
        else:
            outs = list(reference.add_layer_norm(xs[0], xs[1], xs[2], xs[3], eps))
            ups = [dh, dy]
        loss = sum((o * cast(u)).sum() for o, u in zip(outs, ups) if u is not None)
        loss.backward()
        return [o.detach() for o in outs], _grads(xs)

    ref = run(lambda t: t.double())
    base = None
    if dtype in LOWP:
        # Inputs are already in dtype (exactly representable in fp32): fp32 math, one conversion.
        outs, grads = run(lambda t: t.float())
        base = ([_to_lowp(o, dtype) for o in outs], [None if g is None else _to_lowp(g, dtype) for g in grads])
    return ref, base


def _check_all(kind, x, residual, weight, bias, *, eps=1e-5, dy=None, dh=None, upstream="random"):
    """Run the Triton op forward and backward and hold every output and gradient to the rules."""
    dtype = x.dtype
    ins = _leaves(x, residual, weight, bias)
    if kind == "ln":
        outs = [layer_norm(ins[0], ins[2], ins[3], eps, backend="triton")]
    else:
        outs = list(add_layer_norm(ins[0], ins[1], ins[2], ins[3], eps, backend="triton"))
    for o in outs:
        assert o.dtype == dtype and o.shape == x.shape and o.is_contiguous()

    if upstream == "sum":
        # .sum() hands every output a stride-0 gradient.
        sum(o.sum() for o in outs).backward()
        ups = [torch.ones_like(o) for o in outs]
    else:
        ups = [torch.randn_like(o) for o in outs] if dy is None else ([dh, dy] if kind == "add" else [dy])
        sum((o * u).sum() for o, u in zip(outs, ups) if u is not None).backward()
    if kind == "ln":
        r_dy, r_dh = ups[0], None
    else:
        r_dh, r_dy = ups
    ref, base = _run_reference(kind, x, residual, weight, bias, eps, r_dy, r_dh, dtype)

    names = ["y"] if kind == "ln" else ["h", "y"]
    for i, name in enumerate(names):
        assert_close_to_reference(outs[i], ref[0][i], dtype=dtype, lowp_baseline=None if base is None else base[0][i],
                                  what=name)
    for i, name in enumerate(("x", "residual", "weight", "bias")):
        g_ref = ref[1][i]
        g = ins[i].grad if ins[i] is not None else None
        if g_ref is None:
            assert ins[i] is None
            continue
        assert g is not None and g.dtype == ins[i].dtype and g.shape == ins[i].shape, f"grad of {name}"
        assert_close_to_reference(g, g_ref, dtype=dtype, lowp_baseline=None if base is None else base[1][i],
                                  what=f"grad {name}")


def _inputs(shape, dtype, weight=True, bias=True, residual=False, *, device):
    n = shape[-1]
    x = torch.randn(shape, dtype=dtype, device=device) * 2 + 0.5
    r = torch.randn(shape, dtype=dtype, device=device) if residual else None
    w = (torch.rand(n, dtype=dtype, device=device) + 0.5) if weight else None
    b = torch.randn(n, dtype=dtype, device=device) if bias else None
    return x, r, w, b


# --------------------------------------------------------------------------------------------
# numerics
# --------------------------------------------------------------------------------------------

SHAPES = [(1, 192), (7, 384), (197, 768), (2, 197, 1000), (1, 197, 1280), (7, 1000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm_matches_float64(shape, dtype, device):
    x, _, w, b = _inputs(shape, dtype, device=device)
    _check_all("ln", x, None, w, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 192), (197, 384), (2, 197, 768), (1, 1000), (7, 1280)], ids=str)
def test_add_layer_norm_matches_float64(shape, dtype, device):
    x, r, w, b = _inputs(shape, dtype, residual=True, device=device)
    _check_all("add", x, r, w, b)


@pytest.mark.parametrize("rows,width", [(3, 16384), (2, 10000), (5, 5000)])
@pytest.mark.parametrize("kind", ["ln", "add"])
def test_wide_rows(rows, width, kind, device):
    # All three take the chunked backward (partial sums in memory, rows past 4096): 16384 and
    # 10000 in the widest bucket, 5000 in the 8192 one.
    for dtype in (torch.float32, torch.bfloat16):
        x, r, w, b = _inputs((rows, width), dtype, residual=kind == "add", device=device)
        _check_all(kind, x, r, w, b)


@pytest.mark.parametrize("weight,bias", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("kind", ["ln", "add"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_weight_or_bias_absent(weight, bias, kind, dtype, device):
    x, r, w, b = _inputs((2, 37, 768), dtype, weight=weight, bias=bias, residual=kind == "add", device=device)
    _check_all(kind, x, r, w, b)


@pytest.mark.parametrize("kind", ["ln", "add"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_stride_zero_upstream_gradients(kind, dtype, device):
    x, r, w, b = _inputs((2, 197, 384), dtype, residual=kind == "add", device=device)
    _check_all(kind, x, r, w, b, upstream="sum")


def test_expanded_row_gradient_and_input(device):
    # Row stride 0 with unit column stride is read in place (rows are only read).
    x, _, w, b = _inputs((9, 192), torch.float32, device=device)
    dy = torch.randn(1, 192, device=device).expand(9, 192)
    _check_all("ln", x, None, w, b, dy=dy)
    xe = torch.randn(1, 192, device=device).expand(9, 192)
    _check_all("ln", xe, None, w, b)


def test_add_layer_norm_with_one_output_used(device):
    x, r, w, b = _inputs((7, 192), torch.float32, residual=True, device=device)
    for used in ("h", "y"):
        ins = _leaves(x, r, w, b)
        h, y = add_layer_norm(*ins, backend="triton")
        g = torch.randn_like(h)
        ((h if used == "h" else y) * g).sum().backward()
        dh = g if used == "h" else None
        dy = g if used == "y" else None
        ref, _ = _run_reference("add", x, r, w, b, 1e-5, dy, dh, torch.float32)
        for i in range(2):
            assert_close_to_reference(ins[i].grad, ref[1][i], dtype=torch.float32, what=f"{used} only: grad {i}")
        if used == "h":
            assert ins[2].grad is None and ins[3].grad is None
        else:
            assert_close_to_reference(ins[2].grad, ref[1][2], dtype=torch.float32, what="grad weight")


# --------------------------------------------------------------------------------------------
# strides: copy only when the last stride is not 1 or rows are not evenly strided
# --------------------------------------------------------------------------------------------

def test_rows_view_or_copy(device):
    base = torch.randn(4, 50, 3 * 192, device=device)
    even = base[..., 192:384]                     # row stride 576: a view
    assert rows(even).data_ptr() == even.data_ptr()
    assert rows(even).stride() == (576, 1)
    uneven = base[:, 1:, :192]                    # (4, 49, 192): rows not evenly strided
    assert rows(uneven).is_contiguous() and rows(uneven).data_ptr() != uneven.data_ptr()
    transposed = torch.randn(192, 30, device=device).t()         # last stride 30
    assert rows(transposed).stride(-1) == 1
    summed = torch.tensor(1.0, device=device).expand(5, 192)     # .sum()'s gradient: all strides 0
    assert rows(summed).stride() == (192, 1)


@pytest.mark.parametrize("kind", ["ln", "add"])
@pytest.mark.parametrize("layout", ["even_view", "uneven_view", "transposed"])
def test_strided_inputs(kind, layout, device):
    dtype = torch.float32
    if layout == "even_view":
        x = torch.randn(3, 40, 2 * 384, dtype=dtype, device=device)[..., 384:]
        r = torch.randn(3, 40, 3 * 384, dtype=dtype, device=device)[..., :384]
    elif layout == "uneven_view":
        x = torch.randn(3, 41, 384, dtype=dtype, device=device)[:, 1:]
        r = torch.randn(4, 40, 384, dtype=dtype, device=device)[1:]
    else:
        x = torch.randn(384, 120, dtype=dtype, device=device).t()
        r = torch.randn(384, 120, dtype=dtype, device=device).t()
    w = torch.randn(2 * 384, dtype=dtype, device=device)[::2]  # a strided weight too
    b = torch.randn(384, dtype=dtype, device=device)
    _check_all(kind, x, r if kind == "add" else None, w, b)


# --------------------------------------------------------------------------------------------
# launchers, configurations, determinism
# --------------------------------------------------------------------------------------------

def test_statistics_are_fp32(device):
    x = torch.randn(2, 5, 768, dtype=torch.bfloat16, device=device)
    y, mean, rstd = K.layer_norm_fwd(x, None, None, 1e-6)
    assert mean.dtype == rstd.dtype == torch.float32 and mean.shape == rstd.shape == (2, 5)
    x64 = x.double()
    torch.testing.assert_close(mean.double(), x64.mean(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(x64.var(-1, unbiased=False) + 1e-6), rtol=1e-5, atol=0)


def test_two_backward_runs_are_bitwise_equal(device):
    # 394 rows at 768: four programs each summing a share of the rows, then the second pass.
    x, r, w, b = _inputs((2, 197, 768), torch.float32, residual=True, device=device)
    dy, dh = torch.randn_like(x), torch.randn_like(x)
    runs = []
    for _ in range(2):
        h, y, mean, rstd = K.add_layer_norm_fwd(x, r, w, b, 1e-5)
        runs.append((h, y, *K.layer_norm_bwd(dy, h, w, mean, rstd, dh, bias_dtype=b.dtype)))
    for a, c in zip(*runs):
        assert torch.equal(a, c)
    programs, _ = KB._bwd_programs(394, C.layer_norm_interpret_bwd_config(1024).block_m, 1, x.device)
    assert programs > 1, "the test must exercise more than one partial row"


def test_zero_rows(device):
    x = torch.randn(0, 384, requires_grad=True, device=device)
    w = torch.randn(384, requires_grad=True, device=device)
    b = torch.randn(384, requires_grad=True, device=device)
    y = layer_norm(x, w, b, backend="triton")
    assert y.shape == (0, 384)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(384, device=device)) and torch.equal(b.grad, torch.zeros(384, device=device))
    assert x.grad.shape == (0, 384)


def test_one_dimensional_input(device):
    x, _, w, b = _inputs((768,), torch.float32, device=device)
    _check_all("ln", x, None, w, b)


def test_eps_is_used(device):
    x = torch.randn(4, 192, device=device) * 1e-3
    for eps in (1e-6, 1e-2):
        y = layer_norm(x, None, None, eps, backend="triton")
        assert_close_to_reference(y, reference.layer_norm(x.double(), None, None, eps), dtype=torch.float32)


