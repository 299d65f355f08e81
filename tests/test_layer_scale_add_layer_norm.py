"""add_layer_norm with a layer scale on the Triton path: h = x + gamma * residual, y = LayerNorm(h),
gamma folded into the add kernel and into the backward's two launches (issue 11).

Oracle: the same expression in float64 PyTorch, forward and autograd backward. fp32: relative
error <= 1e-5 for h, y and the gradients of x, residual, gamma, weight and bias. fp16/bf16: at
most 2x the error of plain PyTorch in the same dtype, with the baseline of
``test_layer_norm_kernel.py`` (fp32 math on the low-precision inputs, rounded once; for bf16
under the interpreter rounded the way its fp32 -> bf16 cast rounds: by truncation). Every
buffer a launcher allocates starts as NaN (``poisoned_outputs``).
"""
from __future__ import annotations

import pytest
import torch

from fastvit import reference
from fastvit.kernels import _layer_norm_common
from fastvit.kernels import layer_norm as K
from fastvit.ops import _layer_norm_triton as T
from fastvit.ops import add_layer_norm
from fastvit.profiling.launches import count_launches
from tests._simulated_gpu import record_launches
from tests._tolerances import assert_close_to_reference
from tests.test_layer_norm_kernel import _leaves, _to_lowp

LOWP = (torch.float16, torch.bfloat16)
NAMES = ("x", "residual", "gamma", "weight", "bias")


@pytest.fixture(autouse=True)
def _poison():
    with K.poisoned_outputs():
        yield


def make_inputs(shape, dtype, *, weight=True, bias=True, device, param_dtype=None):
    """(x, residual, gamma, weight, bias); gamma of both signs and far from 1, as a trained layer
    scale is; parameters in ``param_dtype`` (autocast's fp32) when given."""
    n, pd = shape[-1], param_dtype or dtype
    x = torch.randn(shape, dtype=dtype, device=device) * 2 + 0.5
    r = torch.randn(shape, dtype=dtype, device=device)
    g = torch.randn(n, dtype=pd, device=device) * 0.3
    w = (torch.rand(n, dtype=pd, device=device) + 0.5) if weight else None
    b = torch.randn(n, dtype=pd, device=device) if bias else None
    return x, r, g, w, b


def reference_run(inputs, eps, dh, dy, cast):
    """Outputs (h, y) and the gradients of (x, residual, gamma, weight, bias) of the float64 /
    fp32 PyTorch expression on ``cast`` copies; None for an absent input or upstream."""
    x, r, g, w, b = leaves = _leaves(*(None if t is None else cast(t) for t in inputs))
    h = x + r * g
    y = reference.layer_norm(h, w, b, eps)
    loss = sum((o * cast(u)).sum() for o, u in ((h, dh), (y, dy)) if u is not None)
    loss.backward()
    return [h.detach(), y.detach()], [None if t is None else t.grad for t in leaves]


def check_scaled(inputs, *, eps=1e-5, used=("h", "y"), what=""):
    """The Triton op against float64 (and, in fp16/bf16, against PyTorch's own error)."""
    dtype = inputs[0].dtype
    ins = _leaves(*inputs)
    x, r, g, w, b = ins
    h, y = add_layer_norm(x, r, w, b, eps, backend="triton", residual_scale=g)
    assert h.shape == y.shape == x.shape and h.is_contiguous() and y.is_contiguous()
    dh = torch.randn_like(h) if "h" in used else None
    dy = torch.randn_like(y) if "y" in used else None
    torch.autograd.backward([o for o, u in ((h, dh), (y, dy)) if u is not None], [u for u in (dh, dy) if u is not None])

    ref = reference_run(inputs, eps, dh, dy, lambda t: t.double())
    base = None
    if dtype in LOWP:
        outs, grads = reference_run(inputs, eps, dh, dy, lambda t: t.float())
        base = ([_to_lowp(o, got.dtype) for o, got in zip(outs, (h, y))],
                [None if gr is None else _to_lowp(gr, t.dtype) for gr, t in zip(grads, inputs)])
    for i, (name, got) in enumerate((("h", h), ("y", y))):
        assert_close_to_reference(got, ref[0][i], dtype=got.dtype, lowp_baseline=None if base is None else base[0][i],
                                  what=f"{what} {name}")
    for i, name in enumerate(NAMES):
        want = ref[1][i]
        if want is None:  # absent input, or (weight, bias with only h used) no gradient at all
            assert ins[i] is None or ins[i].grad is None, f"{what} grad {name} should be None"
            continue
        got = ins[i].grad
        assert got is not None and got.dtype == ins[i].dtype and got.shape == ins[i].shape, f"{what} grad {name}"
        assert_close_to_reference(got, want, dtype=got.dtype, lowp_baseline=None if base is None else base[1][i],
                                  what=f"{what} grad {name}")
    return ins, h, y


# --------------------------------------------------------------------------------------------
# numerics
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", (torch.float32, *LOWP), ids=str)
@pytest.mark.parametrize("width", [72, 80, 768])
@pytest.mark.parametrize("rows", [1, 65, 197])
def test_layer_scale_matches_float64(rows, width, dtype, device):
    check_scaled(make_inputs((rows, width), dtype, device=device))


def test_batched_leading_dims(device):
    check_scaled(make_inputs((2, 197, 768), torch.float32, device=device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_wide_rows_take_the_chunked_backward(dtype, monkeypatch, device):
    launches = record_launches(monkeypatch)
    check_scaled(make_inputs((3, 10000), dtype, device=device))
    kernels = [launch.kernel for launch in launches]
    assert kernels == ["_layer_norm_fwd", "_layer_norm_bwd_wide", "_layer_norm_bwd_dwdb"], kernels


@pytest.mark.parametrize("weight,bias", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_weight_or_bias_absent(weight, bias, dtype, device):
    check_scaled(make_inputs((2, 37, 768), dtype, weight=weight, bias=bias, device=device))


@pytest.mark.parametrize("used", [("h",), ("y",)], ids=["h_only", "y_only"])
def test_one_output_used(used, device):
    check_scaled(make_inputs((65, 80), torch.float32, device=device), used=used)


def test_strided_residual_and_stride_zero_upstream(device):
    x = torch.randn(3, 40, 2 * 384, device=device)[..., 384:]      # row stride 768: read in place
    r = torch.randn(3, 41, 384, device=device)[:, 1:]               # rows not evenly strided: copied
    g, w, b = (torch.randn(384, device=device) for _ in range(3))
    check_scaled((x, r, g, w, b))
    ins = _leaves(x, r, g, w, b)
    h, y = add_layer_norm(ins[0], ins[1], ins[3], ins[4], backend="triton", residual_scale=ins[2])
    (h.sum() + y.sum()).backward()  # stride-0 upstream gradients
    ref = reference_run((x, r, g, w, b), 1e-5, torch.ones_like(h), torch.ones_like(y), lambda t: t.double())
    for i, name in enumerate(NAMES):
        assert_close_to_reference(ins[i].grad, ref[1][i], dtype=torch.float32, what=f"sum(): grad {name}")


def test_zero_rows(device):
    ins = _leaves(*make_inputs((0, 192), torch.float32, device=device))
    h, y = add_layer_norm(ins[0], ins[1], ins[3], ins[4], backend="triton", residual_scale=ins[2])
    (h.sum() + y.sum()).backward()
    for t in ins[2:]:
        assert torch.equal(t.grad, torch.zeros(192, device=device))
    assert ins[0].grad.shape == ins[1].grad.shape == (0, 192)


def test_two_backward_runs_are_bitwise_equal(device):
    # 394 rows at 768: several programs each write a dgamma partial row, then the fixed-order sum.
    x, r, g, w, b = make_inputs((2, 197, 768), torch.float32, device=device)
    dy, dh = torch.randn_like(x), torch.randn_like(x)
    runs = []
    for _ in range(2):
        h, y, mean, rstd = K.add_layer_norm_fwd(x, r, w, b, 1e-5, residual_scale=g)
        runs.append((h, y, *K.add_layer_norm_bwd(dy, h, w, mean, rstd, dh, r, g, bias_dtype=b.dtype)))
    for a, c in zip(*runs):
        assert torch.equal(a, c)


# --------------------------------------------------------------------------------------------
# autocast: fp16/bf16 activations, fp32 parameters
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("x_dtype,r_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                             (torch.float32, torch.bfloat16)], ids=str)
def test_autocast(x_dtype, r_dtype, device):
    """h is x + gamma * residual in the promoted dtype of the three (fp32 with an fp32 gamma, as
    the unfused expression gives under autocast), y fp32; every gradient in its input's dtype."""
    act = r_dtype
    x, r, g, w, b = make_inputs((2, 65, 384), act, device=device, param_dtype=torch.float32)
    x = x.to(x_dtype)
    ins = _leaves(x, r, g, w, b)
    with torch.autocast(device.type, dtype=act):
        h, y = add_layer_norm(ins[0], ins[1], ins[3], ins[4], 1e-6, backend="triton", residual_scale=ins[2])
    assert h.dtype == y.dtype == torch.float32
    dh, dy = torch.randn_like(h), torch.randn_like(y)
    torch.autograd.backward([h, y], [dh, dy])
    ref = reference_run((x, r, g, w, b), 1e-6, dh, dy, lambda t: t.double())
    lowp = reference_run((x, r, g, w, b), 1e-6, dh, dy, lambda t: t.float())[1]
    assert_close_to_reference(h, ref[0][0], dtype=torch.float32, what="h")
    assert_close_to_reference(y, ref[0][1], dtype=torch.float32, what="y")
    for i, name in enumerate(NAMES):
        got = ins[i].grad
        assert got.dtype == ins[i].dtype, f"grad {name}: {got.dtype}"
        assert_close_to_reference(got, ref[1][i], dtype=got.dtype, lowp_baseline=_to_lowp(lowp[i], got.dtype),
                                  what=f"grad {name}")


# --------------------------------------------------------------------------------------------
# custom ops, launches, saved tensors
# --------------------------------------------------------------------------------------------

def test_opcheck_custom_ops(device):
    x, r, g, w, b = make_inputs((3, 7, 192), torch.float32, device=device)
    fwd, bwd = torch.ops.fastvit.add_layer_norm_fwd.default, torch.ops.fastvit.add_layer_norm_bwd.default
    torch.library.opcheck(fwd, (x, r, w, b, 1e-5, None, g))
    torch.library.opcheck(fwd, (x, r, None, None, 1e-5, None, g))
    xb, rb = x.bfloat16(), r.bfloat16()  # autocast's mix: bf16 activations, fp32 parameters
    torch.library.opcheck(fwd, (xb, rb, w, b, 1e-5, torch.float32, g))
    h, _, mean, rstd = K.add_layer_norm_fwd(x, r, w, b, 1e-5, residual_scale=g)
    dy = torch.randn_like(x)
    torch.library.opcheck(bwd, (dy, h, w, mean, rstd, dy.clone(), r, g, torch.float32, torch.float32))
    torch.library.opcheck(bwd, (dy, h, None, mean, rstd, None, r, g, None, torch.float32))
    hm, _, mean, rstd = K.add_layer_norm_fwd(xb, rb, w, b, 1e-5, torch.float32, g)
    torch.library.opcheck(bwd, (dy, hm, w, mean, rstd, dy.clone(), rb, g, torch.float32, torch.bfloat16))


def _counts(fn):
    with count_launches() as c:
        out = fn()
    return c.to_dict(), out


@pytest.mark.parametrize("scaled", [False, True], ids=["no_scale", "scale"])
def test_launches_and_saved_tensors(scaled, monkeypatch, device):
    """One forward launch, two backward launches (dx/dresidual + partials, then the sums), no
    PyTorch op; the residual is saved for the backward only with a layer scale."""
    monkeypatch.setattr(_layer_norm_common, "_POISON", False)  # NaN fills would count as ops
    x, r, g, w, b = _leaves(*make_inputs((65, 80), torch.float32, device=device))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fwd, (h, y) = _counts(lambda: add_layer_norm(x, r, w, b, backend="triton",
                                                     residual_scale=g if scaled else None))
    assert fwd == {"total": 1, "triton": {"_layer_norm_fwd": 1}, "torch": {}}
    assert any(t is r for t in saved) == scaled and not any(t is x for t in saved)
    # Intermediate inputs (as in a model): their gradients flow on, no copy into a leaf's .grad.
    ups = [torch.randn_like(h), torch.randn_like(y)]
    bwd, _ = _counts(lambda: torch.autograd.grad([h, y], [x, r, w, b] + ([g] if scaled else []), ups))
    assert bwd["triton"] == {"_layer_norm_bwd": 1, "_layer_norm_bwd_dwdb": 1}, bwd
    assert bwd["torch"] == {}, bwd


def test_compile_fullgraph_aot_eager(device):
    torch._dynamo.reset()

    def block(x, r, g, w, b):
        h, y = add_layer_norm(x, r, w, b, 1e-6, residual_scale=g)
        return (y * y).sum() + h.sum()

    inputs = make_inputs((2, 9, 192), torch.float32, device=device)
    eager_in, compiled_in = _leaves(*inputs), _leaves(*inputs)
    block(*eager_in).backward()
    torch.compile(block, fullgraph=True, backend="aot_eager")(*compiled_in).backward()
    for a, c in zip(eager_in, compiled_in):
        torch.testing.assert_close(c.grad, a.grad, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

def test_bad_residual_scale_is_refused(device):
    x, r, g, w, b = make_inputs((3, 192), torch.float32, device=device)
    with pytest.raises(ValueError, match=r"residual_scale must have shape \(192,\).*got \(191,\)"):
        add_layer_norm(x, r, w, b, backend="triton", residual_scale=g[:191])
    with pytest.raises(ValueError, match=r"residual_scale must be 1-D"):
        add_layer_norm(x, r, w, b, backend="triton", residual_scale=g[None])
    with pytest.raises(ValueError, match=r"dtype"):
        add_layer_norm(x, r, w, b, backend="triton", residual_scale=g.half())
    # The launchers' own checks, for callers that reach them directly.
    with pytest.raises(ValueError, match=r"residual_scale must have shape \(192,\), got \(191,\)"):
        K.add_layer_norm_fwd(x, r, w, b, 1e-5, residual_scale=g[:191])
    h, _, mean, rstd = K.add_layer_norm_fwd(x, r, w, b, 1e-5, residual_scale=g)
    with pytest.raises(ValueError, match=r"residual must have the shape of x \(3, 192\), got \(2, 192\)"):
        K.add_layer_norm_bwd(x, h, w, mean, rstd, None, r[:2], g)
    with pytest.raises(ValueError, match="needs residual and residual_scale tensors, got Tensor and NoneType"):
        K.add_layer_norm_bwd(x, h, w, mean, rstd, None, r, None)
    with pytest.raises(TypeError, match="dx_dtype must be float16, bfloat16 or float32, got torch.float64"):
        K.add_layer_norm_bwd(x, h, w, mean, rstd, None, r, g, x_dtype=torch.float64)


def test_triton_entry_point_without_scale_is_unchanged(device):
    """residual_scale=None: the plain add (h = x + residual), as before issue 11."""
    x, r, _, w, b = make_inputs((7, 192), torch.float32, device=device)
    h, y = T.triton_add_layer_norm(x, r, w, b, 1e-5)
    ref_h, ref_y = reference.add_layer_norm(x.double(), r.double(), w.double(), b.double(), 1e-5)
    assert_close_to_reference(h, ref_h, dtype=torch.float32, what="h")
    assert_close_to_reference(y, ref_y, dtype=torch.float32, what="y")


# --------------------------------------------------------------------------------------------
# memory: the backward allocates its outputs and grid-sized partial sums, nothing else
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scaled", [False, True], ids=["no_scale", "scale"])
def test_backward_allocates_only_outputs_and_partials(scaled, device):
    """Peak bytes of the backward (``fastvit.profiling.tracker``) equal the gradients it returns
    (dx and dresidual one shared buffer without a scale, two with one; dweight, dbias, dgamma)
    plus one fp32 (programs, N) partial-sum row per program and parameter gradient: no
    full-size scratch, no cast copies."""
    from fastvit.kernels import _configs as C
    from fastvit.kernels import layer_norm_bwd as KB
    from fastvit.profiling.tracker import measure_peak

    shape, n = (2, 197, 768), 768
    x, r, g, w, b = _leaves(*make_inputs(shape, torch.float32, device=device))
    h, y = add_layer_norm(x, r, w, b, backend="triton", residual_scale=g if scaled else None)
    ups = [torch.randn_like(h), torch.randn_like(y)]
    wrt = [x, r, w, b] + ([g] if scaled else [])
    m = measure_peak(lambda: torch.autograd.grad([h, y], wrt, ups), device=device)
    rows = h.numel() // n
    on_gpu = device.type == "cuda"
    cfg = (C.layer_norm_bwd_config if on_gpu else C.layer_norm_interpret_bwd_config)(C.layer_norm_block_n(n))
    programs, _ = KB._bwd_programs(rows, cfg.block_m, cfg.programs_per_sm, h.device)
    params = 3 if scaled else 2
    want = (2 if scaled else 1) * rows * n * 4 + params * n * 4 + params * programs * n * 4
    assert m.peak_bytes == want, (m.peak_bytes, want)
