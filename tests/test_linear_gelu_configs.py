"""linear_gelu's launch configurations, every one a GPU may run, and the GPU's launch path.

1. The GEMM candidates and their named prune filter; which layouts may take the Triton GEMM.
2. Every GEMM configuration of every dtype table, and the GPU's configurations of the
   elementwise kernels (epilogue, GELU backward, bias-gradient reduction), run once in the
   interpreter against float64 on shapes that end in partial tiles.
3. The GPU's path, simulated in the interpreter (``tests/_simulated_gpu.py``): the Triton GEMM
   autotuned over its pruned candidates, then raced against cuBLAS + epilogue with the same
   timer; the faster path runs and is remembered; failing configurations are reported by name.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import triton

from fastvit import reference
from fastvit.kernels import _autotune
from fastvit.kernels import _configs as C
from fastvit.kernels import _gemm_configs
from fastvit.kernels import linear_gelu as K
from tests._simulated_gpu import clear_tuning, simulated_gpu, skip_on_gpu
from tests._tolerances import rel_err
from tests.test_linear_gelu_kernel import _check, _inputs

SMEM_SM80, SMEM_SM86 = 163 * 1024, 99 * 1024


def _tile(c):
    kw = c.kwargs if isinstance(c, triton.Config) else c
    return kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]


# ----------------------------------------------------------------------------------------------
# Candidates and pruning
# ----------------------------------------------------------------------------------------------

def test_gemm_configs_and_shape_pruning():
    for dtype, prec in ((torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "tf32"),
                        (torch.float32, "ieee")):
        configs = C.linear_gelu_gemm_configs(dtype, prec)
        assert configs
        for c in configs:
            # tl.dot needs every tile dimension >= 16 on a GPU; everything fits sm_80's 163 KB
            assert min(_tile(c)) >= 16
            assert C.linear_gelu_smem_bytes(c, dtype.itemsize) <= SMEM_SM80
        fit = dict(dtype=dtype, smem_limit=SMEM_SM80)
        assert C.linear_gelu_fitting_configs(configs, M=25216, N=3072, K=768, **fit) == configs
        small = C.linear_gelu_fitting_configs(configs, M=20, N=20, K=20, **fit)
        assert len(small) >= 1 and all(c in configs for c in small)
        assert len(C.linear_gelu_fitting_configs(configs, M=4096, N=4096, K=4096, dtype=dtype, smem_limit=1)) == 1
    sm86 = C.linear_gelu_fitting_configs(C.linear_gelu_gemm_configs(torch.float16, "ieee"), M=4096, N=4096, K=768,
                                         dtype=torch.float16, smem_limit=SMEM_SM86)
    assert sm86 and all(C.linear_gelu_smem_bytes(c, 2) <= SMEM_SM86 for c in sm86)


def test_the_autotuner_prunes_through_the_named_filter(monkeypatch):
    tuner = K._linear_gelu_fwd_tuned.tuner
    assert tuner.early_config_prune is C.prune_linear_gelu_configs
    assert tuner.keys == ["M_BUCKET", "N", "K", "HAS_BIAS", "STORE_PRE", "APPROXIMATE", "INPUT_PRECISION"]
    monkeypatch.setattr(_gemm_configs, "shared_memory_limit", lambda device: SMEM_SM86)
    for dtype, prec in ((torch.bfloat16, "ieee"), (torch.float32, "tf32"), (torch.float32, "ieee")):
        kept = tuner.early_config_prune(tuner.configs, {}, X=torch.empty(0, dtype=dtype), M=4096, N=3072, K=768,
                                        INPUT_PRECISION=prec)
        want = C.linear_gelu_fitting_configs(C.linear_gelu_gemm_configs(dtype, prec), M=4096, N=3072, K=768,
                                             dtype=dtype, smem_limit=SMEM_SM86)
        assert [_autotune.config_key(c) for c in kept] == [_autotune.config_key(c) for c in want]


def test_gpu_gemm_eligibility():
    """On a GPU the Triton GEMM only runs on the layout aot_specs compiles and checks (aligned,
    K-contiguous); everything else takes cuBLAS + the epilogue kernel."""
    x, w, b = torch.randn(10, 64), torch.randn(32, 64), torch.randn(32)
    y = torch.empty(10, 32)
    assert K._gemm_eligible(x, w, b, y, None) and K._gemm_eligible(x, w, None, y, torch.empty(10, 32))
    assert not K._gemm_eligible(torch.randn(10, 200)[:, :72], torch.randn(32, 72), b, y, None)  # row stride 200
    assert not K._gemm_eligible(torch.randn(10, 72), torch.randn(32, 72), b, y, None)  # K = 72
    assert not K._gemm_eligible(x, torch.randn(64, 32).t(), b, y, None)  # weight not K-contiguous
    assert not K._gemm_eligible(torch.randn(10, 65)[:, 1:], w, b, y, None)  # misaligned pointer
    assert not K._gemm_eligible(x, torch.randn(24, 64), torch.randn(24), torch.empty(10, 24), None)  # N = 24
    assert not K._gemm_eligible(x, w, torch.randn(64)[::2], y, None)  # strided bias


# ----------------------------------------------------------------------------------------------
# Every configuration a GPU may run, in the interpreter
# ----------------------------------------------------------------------------------------------

GEMM_CASES = C.LINEAR_GELU_CONFIGS


def _activation(t, approx):
    """float64 (or low-precision) reference of each epilogue activation."""
    if approx == "quick":
        return t * torch.sigmoid(1.702 * t)
    return F.gelu(t, approximate=approx)


@skip_on_gpu
@pytest.mark.parametrize("index", range(len(GEMM_CASES)),
                         ids=[_autotune.config_label(c).replace(", ", "-") for c in GEMM_CASES])
def test_every_gemm_configuration_matches_float64(index, device):
    """M, N, K end in partial tiles (K not a multiple of BLOCK_K: the masked K loop), fp32, the
    activations taking turns over the configurations; the first configuration also with every
    activation in fp16 with K a multiple of BLOCK_K (the unmasked loop)."""
    config = GEMM_CASES[index]
    approximations = K.GELU_APPROXIMATIONS
    cases = [(torch.float32, approximations[index % len(approximations)], 100)]
    if index == 0:
        cases += [(torch.float16, a, 2 * config.kwargs["BLOCK_K"]) for a in approximations]
    for dtype, approx, k in cases:
        x, w, b = _inputs((150, k), 300, dtype, device)
        out = torch.full((150, 300), float("nan"), dtype=dtype, device=device)
        pre_out = torch.full_like(out, float("nan"))
        y, pre = K.linear_gelu_fwd(x, w, b, approx, store_pre=True, out=out, pre_out=pre_out, config=config)
        pre64 = F.linear(x.double(), w.double(), b.double())
        _check(pre, pre64, dtype, F.linear(x, w, b), "pre-activation")
        _check(y, _activation(pre64, approx), dtype, _activation(F.linear(x, w, b), approx), "output")


@skip_on_gpu
@pytest.mark.parametrize("approx", ["tanh", "quick"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_elementwise_configurations_match_float64(dtype, approx, monkeypatch, device):
    """The cuBLAS path's epilogue and the backward with the GPU's tiles (fp64: its own, narrower)
    and program count, forced in place of the interpreter's."""
    monkeypatch.setattr(C, "LINEAR_GELU_INTERPRET_EPILOGUE", C.linear_gelu_epilogue_config(dtype))
    monkeypatch.setattr(C, "LINEAR_GELU_INTERPRET_BWD", C.linear_gelu_bwd_config(dtype))
    x, w, b = _inputs((37, 24), 300, dtype, device)
    y, pre = K.linear_gelu_fwd(x, w, b, approx, store_pre=True, gemm="cublas")
    pre64 = F.linear(x.double(), w.double(), b.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(y, _activation(pre64, approx)) <= tol
    dy = torch.randn(37, 300, device=device, dtype=dtype)
    dpre, dbias = K.linear_gelu_bwd(dy, pre, approx, out=torch.full_like(dy, float("nan")))
    p64 = pre.double().requires_grad_()
    _activation(p64, approx).backward(dy.double())
    assert rel_err(dpre, p64.grad) <= tol and rel_err(dbias, p64.grad.sum(0)) <= tol


# ----------------------------------------------------------------------------------------------
# The GPU's path (autotuned GEMM raced against cuBLAS), simulated
# ----------------------------------------------------------------------------------------------

M, KDIM, N = 40, 64, 96  # aligned (the Triton GEMM is eligible); buckets keep two fp16 tiles
PRUNED = [_tile(c) for c in C.linear_gelu_fitting_configs(C.linear_gelu_gemm_configs(torch.float16, "ieee"),
                                                          M=M, N=N, K=KDIM, dtype=torch.float16, smem_limit=SMEM_SM80)]


@pytest.fixture
def fresh_choices():
    clear_tuning(K._linear_gelu_fwd_tuned)
    K._CHOICES.clear()
    yield
    clear_tuning(K._linear_gelu_fwd_tuned)
    K._CHOICES.clear()


def _ranking(times: dict, cublas: float):
    """Fake time of a timed candidate: cuBLAS + epilogue (an epilogue launch) or the Triton
    GEMM by the tile of its last launch (for the race's Triton candidate: the tuned winner)."""
    def rank(launched):
        last = launched[-1]
        if last.kernel == "_bias_gelu_fwd":
            return cublas
        return times[(last.meta["BLOCK_M"], last.meta["BLOCK_N"], last.meta["BLOCK_K"])]
    return rank


def _data(device):
    x, w, b = _inputs((M, KDIM), N, torch.float16, device)
    return x, w, b, F.linear(x.double(), w.double(), b.double())


def _kernels_of(timed):
    return [[launch.kernel for launch in t] for t in timed]


@skip_on_gpu
def test_simulated_gpu_triton_wins_the_race(monkeypatch, device, fresh_choices):
    assert len(PRUNED) == 2, PRUNED  # the test needs a real choice among the Triton tiles
    times = {PRUNED[0]: 2.0, PRUNED[1]: 1.0}
    x, w, b, pre64 = _data(device)
    with simulated_gpu(monkeypatch, _ranking(times, cublas=5.0)) as (launches, timed):
        y, pre = K.linear_gelu_fwd(x, w, b, store_pre=True)
        # Autotuning timed each pruned tile, inside the race's Triton candidate; cuBLAS was timed too.
        tuning = [t for t in timed if len(t) == 1 and t[0].kernel == "_linear_gelu_fwd"]
        assert [(lc.meta["BLOCK_M"], lc.meta["BLOCK_N"], lc.meta["BLOCK_K"]) for (lc,) in tuning] == PRUNED
        assert ["_bias_gelu_fwd"] in _kernels_of(timed)
        assert all(t[0].meta["EVEN_K"] for t in tuning)  # K = 64 divides every BLOCK_K: the heuristic
        last = launches[-1]
        assert last.kernel == "_linear_gelu_fwd" and (last.meta["BLOCK_M"], last.meta["BLOCK_N"],
                                                      last.meta["BLOCK_K"]) == PRUNED[1]
        assert list(K._CHOICES.values()) == ["triton"]
        # Same bucket (M = 50 -> 64): no timing at all, the Triton GEMM with the tuned tile.
        n_timed = len(timed)
        x2 = torch.randn(50, KDIM, device=device).half()
        K.linear_gelu_fwd(x2, w, b, store_pre=True)
        assert len(timed) == n_timed and launches[-1].kernel == "_linear_gelu_fwd"
    _check(y, reference.gelu(pre64), torch.float16, F.gelu(F.linear(x, w, b)), "output")
    _check(pre, pre64, torch.float16, F.linear(x, w, b), "pre-activation")


@skip_on_gpu
def test_simulated_gpu_cublas_wins_the_race(monkeypatch, device, fresh_choices):
    x, w, b, pre64 = _data(device)
    with simulated_gpu(monkeypatch, _ranking({t: 1.0 for t in PRUNED}, cublas=0.5)) as (launches, timed):
        y, _ = K.linear_gelu_fwd(x, w, b)
        assert launches[-1].kernel == "_bias_gelu_fwd" and list(K._CHOICES.values()) == ["cublas"]
        n_timed = len(timed)
        K.linear_gelu_fwd(x, w, b)
        assert len(timed) == n_timed and launches[-1].kernel == "_bias_gelu_fwd"
    _check(y, reference.gelu(pre64), torch.float16, F.gelu(F.linear(x, w, b)), "output")


@skip_on_gpu
def test_simulated_gpu_warns_about_a_failing_configuration(monkeypatch, device, fresh_choices):
    x, w, b, pre64 = _data(device)
    bad = PRUNED[0]

    def fails(launch):
        return launch.kernel == "_linear_gelu_fwd" and (launch.meta["BLOCK_M"], launch.meta["BLOCK_N"],
                                                        launch.meta["BLOCK_K"]) == bad

    with simulated_gpu(monkeypatch, _ranking({t: 1.0 for t in PRUNED}, cublas=5.0), fail=fails) as (launches, _):
        with pytest.warns(_autotune.AutotuneWarning) as caught:
            y, _ = K.linear_gelu_fwd(x, w, b)
        (message,) = [str(c.message) for c in caught]
        assert "_linear_gelu_fwd" in message and f"BLOCK_M={bad[0]}, BLOCK_N={bad[1]}, BLOCK_K={bad[2]}" in message
        assert launches[-1].kernel == "_linear_gelu_fwd" and list(K._CHOICES.values()) == ["triton"]
    _check(y, reference.gelu(pre64), torch.float16, F.gelu(F.linear(x, w, b)), "output")


@skip_on_gpu
def test_simulated_gpu_falls_back_to_cublas_when_every_triton_config_fails(monkeypatch, device, fresh_choices):
    x, w, b, pre64 = _data(device)
    with simulated_gpu(monkeypatch, _ranking({t: 1.0 for t in PRUNED}, cublas=5.0),
                       fail=lambda launch: launch.kernel == "_linear_gelu_fwd") as (launches, _):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y, _ = K.linear_gelu_fwd(x, w, b)
        messages = [str(c.message) for c in caught if issubclass(c.category, _autotune.AutotuneWarning)]
        # One warning per Triton configuration, then one for the race's Triton candidate.
        assert len(messages) == len(PRUNED) + 1
        assert messages[-1].startswith("linear_gelu: candidate [triton] failed")
        assert launches[-1].kernel == "_bias_gelu_fwd" and list(K._CHOICES.values()) == ["cublas"]
    _check(y, reference.gelu(pre64), torch.float16, F.gelu(F.linear(x, w, b)), "output")
