"""The MLP backward's GEMMs (kernels/gelu_linear_bwd.py) through their launchers, on the ``device``
fixture's device: fc2's weight gradient with GELU recomputed in the prologue
(``gelu_linear_dw``) and the gradient into fc1's output with GELU' in the epilogue
(``gelu_linear_dpre``), against float64 PyTorch (fp32: 1e-5 relative; fp16/bf16: 2x PyTorch's
own error in that dtype, plus one bf16 ulp under the interpreter, see test_linear_gelu_kernel.py),
odd sizes, every GELU, outputs poisoned with NaN; the identity prologue; the cuBLAS path; every
GPU configuration once in the interpreter; the GPU's autotuned launch path, simulated. (Op layer:
test_mlp_ops.py; compile, export, AOT: test_mlp_compile.py.)
"""
from __future__ import annotations

import pytest
import torch
import triton

from fastvit import reference
from fastvit.kernels import _autotune
from fastvit.kernels import _configs as C
from fastvit.kernels import _gemm_configs
from fastvit.kernels import gelu_linear_bwd as G
from fastvit.kernels import linear_gelu as K
from fastvit.ops.linear_gelu import gelu
from tests._simulated_gpu import clear_tuning, simulated_gpu, skip_on_gpu
from tests._tolerances import rel_err
from tests.test_linear_gelu_kernel import _check

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
APPROX = list(K.GELU_APPROXIMATIONS)
# (tokens, hidden, out features): none a multiple of a block; one token; hidden 65 and 197
SHAPES = [(197, 80, 72), (1, 65, 16), (65, 197, 80)]


def _data(T, H, C_out, dtype, device):
    dy = torch.randn(T, C_out, device=device).to(dtype)
    pre = (2.0 * torch.randn(T, H, device=device)).to(dtype)
    w = (torch.randn(C_out, H, device=device) / H ** 0.5).to(dtype)
    return dy, pre, w


def _dw_refs(dy, pre, approx):
    """dW2 = dy^T @ GELU(pre): float64 (``fastvit.reference``), and the eager backend's PyTorch ops
    in the low precision (the baseline)."""
    return (dy.double().t() @ reference.gelu(pre.double(), approx),
            dy.t() @ gelu(pre, approx))


def _dpre_refs(dy, w, pre, approx):
    """dpre = (dy @ W) * GELU'(pre) by autograd: float64, and the eager ops in the low precision."""
    out = []
    for t, d, ww, act in ((pre.double(), dy.double(), w.double(), reference.gelu), (pre, dy, w, gelu)):
        p = t.clone().requires_grad_()
        act(p, approx).backward(d @ ww)
        out.append(p.grad)
    return out


def _poison(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------
# fc2's weight gradient, GELU recomputed in the prologue
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dw_matches_float64(dtype, approx, device):
    for T, H, C_out in SHAPES:
        dy, pre, _ = _data(T, H, C_out, dtype, device)
        out = _poison((C_out, H), dtype, device)
        dw = G.gelu_linear_dw(dy, pre, approx, out=out)
        assert dw.data_ptr() == out.data_ptr()
        ref64, base = _dw_refs(dy, pre, approx)
        _check(dw, ref64, dtype, base, f"dW {T}x{H}x{C_out}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_prologue_is_the_same_gemm(dtype, device):
    """recompute=False reads h itself. On h = GELU(pre) as the forward epilogue stores it, fp32
    gives bitwise the recomputing GEMM's result; in every dtype the recomputing GEMM equals the
    identity GEMM on GELU(pre) as the kernels round it (the cuBLAS path's GELU pass)."""
    for approx in APPROX:
        x = torch.randn(197, 40, device=device).to(dtype)
        w1 = (torch.randn(200, 40, device=device) / 7).to(dtype)
        b1 = torch.randn(200, device=device).to(dtype)
        h, pre = K.linear_gelu_fwd(x, w1, b1, approx, store_pre=True)
        dy = torch.randn(197, 72, device=device).to(dtype)
        recomputed = G.gelu_linear_dw(dy, pre, approx)
        h_kernel = torch.empty_like(pre)
        G._launch_gelu(pre, h_kernel, approx)
        assert torch.equal(recomputed, G.gelu_linear_dw(dy, h_kernel, approx, recompute=False)), approx
        if dtype == torch.float32:
            assert torch.equal(h_kernel, h)
            assert torch.equal(recomputed, G.gelu_linear_dw(dy, h, approx, recompute=False)), approx
        ref64, base = _dw_refs(dy, pre, approx)
        _check(G.gelu_linear_dw(dy, h, approx, recompute=False), dy.double().t() @ h.double(), dtype,
               dy.t() @ h, "identity dW")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dw_cublas_path(dtype, device):
    dy, pre, _ = _data(150, 90, 70, dtype, device)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for approx in APPROX:
        ref64, _ = _dw_refs(dy, pre, approx)
        assert rel_err(G.gelu_linear_dw(dy, pre, approx, gemm="cublas"), ref64) <= tol
        h = reference.gelu(pre, approx)
        assert rel_err(G.gelu_linear_dw(dy, h, approx, recompute=False, gemm="cublas"), ref64) <= tol
    if dtype == torch.float32:
        assert torch.equal(G.gelu_linear_dw(dy, pre, "tanh", gemm="cublas"),
                           G.gelu_linear_dw(dy, pre, "tanh", gemm="cublas"))


def test_dw_strided_and_stride0_operands(device):
    """dy an expanded row (stride 0, as from .sum()), pre a transposed view, out a transposed
    buffer: any strides."""
    T, H, C_out = 70, 48, 40
    dy = torch.randn(C_out, device=device).expand(T, C_out)
    pre = torch.randn(H, T, device=device).t()
    out = _poison((H, C_out), torch.float32, device).t()
    dw = G.gelu_linear_dw(dy, pre, "none", out=out)
    assert rel_err(dw, _dw_refs(dy, pre, "none")[0]) <= 1e-5


def test_dw_empty(device):
    assert torch.equal(G.gelu_linear_dw(torch.randn(0, 5, device=device), torch.randn(0, 7, device=device)),
                       torch.zeros(5, 7, device=device))
    assert G.gelu_linear_dw(torch.randn(4, 0, device=device), torch.randn(4, 7, device=device)).shape == (0, 7)


# ----------------------------------------------------------------------------------------------
# The gradient into fc1's output, GELU' in the epilogue, fc1's bias gradient from its partials
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dpre_matches_float64(dtype, approx, device):
    for T, H, C_out in SHAPES:
        dy, pre, w = _data(T, H, C_out, dtype, device)
        out = _poison((T, H), dtype, device)
        dpre, dbias = G.gelu_linear_dpre(dy, w, pre, approx, out=out)
        assert dpre.data_ptr() == out.data_ptr()
        ref64, base = _dpre_refs(dy, w, pre, approx)
        _check(dpre, ref64, dtype, base, f"dpre {T}x{H}x{C_out}")
        _check(dbias, ref64.sum(0), dtype, base.sum(0), f"dbias {T}x{H}x{C_out}")
        dpre2, none = G.gelu_linear_dpre(dy, w, pre, approx, bias_grad=False)
        assert none is None and torch.equal(dpre2, dpre)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dpre_cublas_path(dtype, device):
    dy, pre, w = _data(150, 90, 70, dtype, device)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for approx in APPROX:
        ref64, _ = _dpre_refs(dy, w, pre, approx)
        out = _poison((150, 90), dtype, device)
        dpre, dbias = G.gelu_linear_dpre(dy, w, pre, approx, out=out, gemm="cublas")
        assert dpre.data_ptr() == out.data_ptr()
        assert rel_err(dpre, ref64) <= tol and rel_err(dbias, ref64.sum(0)) <= tol


def test_dpre_strided_operands_and_deterministic_bias(device):
    """dy a strided slice, W a transposed view, pre transposed: any strides. The bias gradient
    (partials per 64-row band, then a fixed-order sum) is bitwise reproducible."""
    T, H, C_out = 150, 70, 48
    dy = torch.randn(T, 2 * C_out, device=device)[:, ::2]
    w = (torch.randn(H, C_out, device=device) / 7).t()
    pre = torch.randn(H, T, device=device).t()
    d1, b1 = G.gelu_linear_dpre(dy, w, pre, "quick")
    ref64, _ = _dpre_refs(dy, w, pre, "quick")
    assert rel_err(d1, ref64) <= 1e-5 and rel_err(b1, ref64.sum(0)) <= 1e-5
    d2, b2 = G.gelu_linear_dpre(dy, w, pre, "quick")
    assert torch.equal(d1, d2) and torch.equal(b1, b2)


def test_dpre_empty(device):
    dpre, dbias = G.gelu_linear_dpre(torch.randn(0, 5, device=device), torch.randn(5, 7, device=device),
                                     torch.randn(0, 7, device=device))
    assert dpre.shape == (0, 7) and torch.equal(dbias, torch.zeros(7, device=device))


# ----------------------------------------------------------------------------------------------
# Candidates, pruning, and every configuration a GPU may run, in the interpreter
# ----------------------------------------------------------------------------------------------

def _label(c):
    return _autotune.config_label(c).replace(", ", "-")


def test_candidates_and_named_prune_filters(monkeypatch):
    dw, dpre = G._gelu_linear_dw_tuned.tuner, G._gelu_linear_dpre_tuned.tuner
    assert dw.early_config_prune is C.prune_gelu_linear_dw_configs
    assert dpre.early_config_prune is C.prune_gelu_linear_dpre_configs
    assert dw.keys == ["T_BUCKET", "H", "C", "RECOMPUTE", "APPROXIMATE", "INPUT_PRECISION"]
    assert dpre.keys == ["M_BUCKET", "N", "K", "BIAS_GRAD", "APPROXIMATE", "INPUT_PRECISION"]
    for c in dpre.configs:  # the bias-gradient bands never straddle two programs
        assert c.kwargs["BLOCK_M"] % C.GELU_LINEAR_DPRE_PARTIAL_ROWS == 0
    assert C.LINEAR_GELU_INTERPRET.kwargs["BLOCK_M"] % C.GELU_LINEAR_DPRE_PARTIAL_ROWS == 0
    monkeypatch.setattr(_gemm_configs, "shared_memory_limit", lambda device: 99 * 1024)
    for dtype, prec in ((torch.bfloat16, "ieee"), (torch.float32, "tf32"), (torch.float32, "ieee")):
        # ViT-B's fc2 with 128 images: dW2^T is (3072, 768), reduced over 25216 tokens
        kept = dw.early_config_prune(dw.configs, {}, Dy=torch.empty(0, dtype=dtype), H=3072, C=768, T=25216,
                                     INPUT_PRECISION=prec)
        want = C.linear_gelu_fitting_configs(C.gelu_linear_dw_gemm_configs(dtype, prec), M=3072, N=768, K=25216,
                                             dtype=dtype, smem_limit=99 * 1024)
        assert kept and sorted(map(_autotune.config_key, kept)) == sorted(map(_autotune.config_key, want))
        kept = dpre.early_config_prune(dpre.configs, {}, Dy=torch.empty(0, dtype=dtype), M=25216, N=3072, K=768,
                                       INPUT_PRECISION=prec)
        want = C.linear_gelu_fitting_configs(C.linear_gelu_gemm_configs(dtype, prec), M=25216, N=3072, K=768,
                                             dtype=dtype, smem_limit=99 * 1024)
        assert kept and sorted(map(_autotune.config_key, kept)) == sorted(map(_autotune.config_key, want))
    tables = {_autotune.config_key(c) for d, p in ((torch.float16, "ieee"), (torch.float32, "tf32"),
                                                   (torch.float32, "ieee"))
              for c in C.gelu_linear_dw_gemm_configs(d, p)}
    assert {_autotune.config_key(c) for c in dw.configs} == tables


DW_CASES = C.GELU_LINEAR_DW_CONFIGS
DPRE_CASES = C.LINEAR_GELU_CONFIGS


@skip_on_gpu
@pytest.mark.parametrize("index", range(len(DW_CASES)), ids=[_label(c) for c in DW_CASES])
def test_every_dw_configuration_matches_float64(index, device):
    """T, H, C end in partial tiles (T not a multiple of BLOCK_K: the masked reduction), fp32 with
    the prologues taking turns; the first configuration also fp16 with T a multiple of BLOCK_K."""
    config = DW_CASES[index]
    prologues = APPROX + ["identity"]
    cases = [(torch.float32, prologues[index % len(prologues)], 100)]
    if index == 0:
        cases.append((torch.float16, "tanh", 2 * config.kwargs["BLOCK_K"]))
    for dtype, approx, T in cases:
        dy, pre, _ = _data(T, 300, 150, dtype, device)
        recompute = approx != "identity"
        act = approx if recompute else "none"
        operand = pre if recompute else reference.gelu(pre, "tanh")
        dw = G.gelu_linear_dw(dy, operand, act, recompute=recompute, out=_poison((150, 300), dtype, device),
                              config=config)
        ref64, base = _dw_refs(dy, pre, act) if recompute else (dy.double().t() @ operand.double(),
                                                                dy.t() @ operand)
        _check(dw, ref64, dtype, base, f"dW [{_label(config)}] {approx}")


@skip_on_gpu
@pytest.mark.parametrize("index", range(len(DPRE_CASES)), ids=[_label(c) for c in DPRE_CASES])
def test_every_dpre_configuration_matches_float64(index, device):
    """M, N, K end in partial tiles (M = 150: two 64-row bands and a partial one, with 128-row
    tiles one program holding two bands), fp32 with the GELUs taking turns; the first
    configuration also fp16 with K a multiple of BLOCK_K."""
    config = DPRE_CASES[index]
    cases = [(torch.float32, APPROX[index % len(APPROX)], 100)]
    if index == 0:
        cases.append((torch.float16, "none", 2 * config.kwargs["BLOCK_K"]))
    for dtype, approx, k in cases:
        dy, pre, w = _data(150, 300, k, dtype, device)
        dpre, dbias = G.gelu_linear_dpre(dy, w, pre, approx, out=_poison((150, 300), dtype, device), config=config)
        ref64, base = _dpre_refs(dy, w, pre, approx)
        _check(dpre, ref64, dtype, base, f"dpre [{_label(config)}]")
        _check(dbias, ref64.sum(0), dtype, base.sum(0), f"dbias [{_label(config)}]")


# ----------------------------------------------------------------------------------------------
# The GPU's path, simulated: autotuned over the pruned candidates; unaligned layouts -> cuBLAS
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_tuning():
    clear_tuning(G._gelu_linear_dw_tuned, G._gelu_linear_dpre_tuned)
    yield
    clear_tuning(G._gelu_linear_dw_tuned, G._gelu_linear_dpre_tuned)


def _tile(launch):
    return launch.meta["BLOCK_M"], launch.meta["BLOCK_N"], launch.meta["BLOCK_K"]


@skip_on_gpu
def test_simulated_gpu_autotunes_both_gemms(monkeypatch, device, fresh_tuning):
    """fp16, aligned widths: each GEMM times its pruned tiles and runs the fastest (the fake
    timer prefers the largest tile: for dpre a 128-row one, two bias bands per program)."""
    T, H, C_out = 200, 256, 128
    dy, pre, w = _data(T, H, C_out, torch.float16, device)

    def rank(launched):
        m, n, _ = _tile(launched[-1])
        return 1.0 / (m * n)

    with simulated_gpu(monkeypatch, rank) as (launches, timed):
        dw = G.gelu_linear_dw(dy, pre, "none")
        dw_timed = [_tile(t[0]) for t in timed if t[0].kernel == "_gelu_linear_dw"]
        assert len(dw_timed) > 1 and launches[-1].kernel == "_gelu_linear_dw"
        assert _tile(launches[-1]) == max(dw_timed, key=lambda t: t[0] * t[1])
        dpre, dbias = G.gelu_linear_dpre(dy, w, pre, "none")
        dpre_timed = [_tile(t[0]) for t in timed if t[0].kernel == "_gelu_linear_dpre"]
        assert len(dpre_timed) > 1 and [lc.kernel for lc in launches[-2:]] == ["_gelu_linear_dpre",
                                                                                "_bias_grad_reduce"]
        assert _tile(launches[-2])[0] == 128
    ref64, base = _dw_refs(dy, pre, "none")
    _check(dw, ref64, torch.float16, base, "dW")
    ref64, base = _dpre_refs(dy, w, pre, "none")
    _check(dpre, ref64, torch.float16, base, "dpre")
    _check(dbias, ref64.sum(0), torch.float16, base.sum(0), "dbias")


@skip_on_gpu
def test_simulated_gpu_unaligned_layouts_take_cublas(monkeypatch, device, fresh_tuning):
    """Widths not multiples of 16 (H = 72 + 1): the Triton GEMMs are not compiled for them on a
    GPU; cuBLAS + linear_gelu's elementwise kernels run instead."""
    dy, pre, w = _data(50, 73, 32, torch.float32, device)
    with simulated_gpu(monkeypatch, lambda launched: 1.0) as (launches, _):
        dw = G.gelu_linear_dw(dy, pre, "tanh")
        assert [lc.kernel for lc in launches] == ["_bias_gelu_fwd"]
        dpre, dbias = G.gelu_linear_dpre(dy, w, pre, "tanh")
        assert [lc.kernel for lc in launches[1:]] == ["_gelu_bwd", "_bias_grad_reduce"]
    assert rel_err(dw, _dw_refs(dy, pre, "tanh")[0]) <= 1e-5
    ref64, _ = _dpre_refs(dy, w, pre, "tanh")
    assert rel_err(dpre, ref64) <= 1e-5 and rel_err(dbias, ref64.sum(0)) <= 1e-5


def test_small_tiles_many_groups_and_bands(device):
    """Small tiles, GROUP_M 3: many programs, groups ending early; the reduction masked (57) and
    not (64). dpre with and without the split epilogue, one bias band per program (BLOCK_M 64)
    and two (BLOCK_M 128: M = 150, the second program's second band past M)."""
    for k in (64, 57):
        dy, pre, w = _data(150, 77, k, torch.float32, device)
        ref64, _ = _dpre_refs(dy, w, pre, "tanh")
        for block_m, split in ((64, 1), (64, 2), (128, 2)):
            cfg = triton.Config({"BLOCK_M": block_m, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 3,
                                 "EPILOGUE_SPLIT": split}, num_warps=4, num_stages=1)
            dpre, dbias = G.gelu_linear_dpre(dy, w, pre, "tanh", config=cfg)
            assert rel_err(dpre, ref64) <= 1e-5 and rel_err(dbias, ref64.sum(0)) <= 1e-5, cfg
        dy, pre, _ = _data(k, 150, 77, torch.float32, device)
        cfg = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 3}, num_warps=4, num_stages=1)
        dw = G.gelu_linear_dw(dy, pre, "tanh", config=cfg)
        assert rel_err(dw, _dw_refs(dy, pre, "tanh")[0]) <= 1e-5
