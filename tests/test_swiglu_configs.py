"""linear_glu's launch configurations: every gated-GEMM configuration of every dtype table and
the GPU's configurations of the elementwise kernels, each run once in the interpreter against
float64 on shapes that end in partial tiles; the candidates and their named prune filter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastvit.kernels import _autotune
from fastvit.kernels import _configs as C
from fastvit.kernels import _gemm_configs
from fastvit.kernels import linear_glu as K
from tests._simulated_gpu import skip_on_gpu
from tests._tolerances import rel_err
from tests.test_linear_gelu_kernel import _check

SMEM_SM80, SMEM_SM86 = 163 * 1024, 99 * 1024
GEMM_CASES = C.LINEAR_GLU_CONFIGS


def _act(t, activation):
    return F.silu(t) if activation == "silu" else F.gelu(t)


def test_candidates_fit_and_are_pruned_by_the_named_filter(monkeypatch):
    for dtype, prec in ((torch.float16, "ieee"), (torch.float32, "tf32"), (torch.float32, "ieee")):
        for c in C.linear_glu_gemm_configs(dtype, prec):
            kw = c.kwargs
            assert min(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]) >= 16  # tl.dot on a GPU
            assert C.linear_glu_smem_bytes(c, dtype.itemsize) <= SMEM_SM80
            # two accumulators: at most 64 fp32 values per thread, the limit the GELU GEMM keeps
            assert 2 * kw["BLOCK_M"] * kw["BLOCK_N"] // (32 * c.num_warps) <= 64
    tuner = K._linear_glu_fwd_tuned.tuner
    assert tuner.early_config_prune is C.prune_linear_glu_configs
    monkeypatch.setattr(_gemm_configs, "shared_memory_limit", lambda device: SMEM_SM86)
    kept = tuner.early_config_prune(tuner.configs, {}, X=torch.empty(0, dtype=torch.bfloat16), M=4096, N=2048,
                                    K=768, INPUT_PRECISION="ieee")
    want = [c for c in C.linear_glu_gemm_configs(torch.bfloat16, "ieee")
            if C.linear_glu_smem_bytes(c, 2) <= SMEM_SM86]
    assert [_autotune.config_key(c) for c in kept] == [_autotune.config_key(c) for c in want] and kept


@skip_on_gpu
@pytest.mark.parametrize("index", range(len(GEMM_CASES)),
                         ids=[_autotune.config_label(c).replace(", ", "-") for c in GEMM_CASES])
def test_every_gemm_configuration_matches_float64(index, device):
    """fp32, K = 100 (the masked K loop), the activations taking turns; the first configuration
    also in fp16 with K a multiple of BLOCK_K (the unmasked loop)."""
    config = GEMM_CASES[index]
    activation = ("silu", "gelu")[index % 2]
    cases = [(torch.float32, 100)] + ([(torch.float16, 2 * config.kwargs["BLOCK_K"])] if index == 0 else [])
    for dtype, k in cases:
        x = torch.randn(150, k, device=device).to(dtype)
        wg, wv = [(torch.randn(150, k, device=device) / k ** 0.5).to(dtype) for _ in range(2)]
        bg, bv = [torch.randn(150, device=device).to(dtype) for _ in range(2)]
        out = torch.full((150, 150), float("nan"), dtype=dtype, device=device)
        pre_out = torch.full((150, 300), float("nan"), dtype=dtype, device=device)
        y, pre = K.linear_glu_fwd(x, wg, wv, bg, bv, activation, store_pre=True, out=out, pre_out=pre_out,
                                  config=config)
        g64, v64 = F.linear(x.double(), wg.double(), bg.double()), F.linear(x.double(), wv.double(), bv.double())
        gl, vl = F.linear(x, wg, bg), F.linear(x, wv, bv)
        _check(pre, torch.cat([g64, v64], 1), dtype, torch.cat([gl, vl], 1), "pre-activations")
        _check(y, _act(g64, activation) * v64, dtype, _act(gl, activation) * vl, "output")


@skip_on_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_elementwise_configurations_match_float64(dtype, monkeypatch, device):
    """The cuBLAS path's epilogue and the backward with the GPU's tiles and program count."""
    monkeypatch.setattr(C, "LINEAR_GELU_INTERPRET_EPILOGUE", C.linear_gelu_epilogue_config(dtype))
    monkeypatch.setattr(C, "LINEAR_GELU_INTERPRET_BWD", C.linear_gelu_bwd_config(dtype))
    x = torch.randn(37, 24, device=device, dtype=dtype)
    wg, wv, = torch.randn(300, 24, device=device, dtype=dtype), torch.randn(300, 24, device=device, dtype=dtype)
    bg, bv = torch.randn(300, device=device, dtype=dtype), torch.randn(300, device=device, dtype=dtype)
    y, pre = K.linear_glu_fwd(x, wg, wv, bg, bv, "gelu", store_pre=True, gemm="cublas")
    g64, v64 = F.linear(x.double(), wg.double(), bg.double()), F.linear(x.double(), wv.double(), bv.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(y, F.gelu(g64) * v64) <= tol
    dy = torch.randn(37, 300, device=device, dtype=dtype)
    dpre, dbias = K.linear_glu_bwd(dy, pre, "silu", out=torch.full_like(pre, float("nan")))
    g, v = pre[:, :300].double().requires_grad_(), pre[:, 300:].double().requires_grad_()
    (F.silu(g) * v).backward(dy.double())
    want = torch.cat([g.grad, v.grad], 1)
    assert rel_err(dpre, want) <= tol and rel_err(dbias, want.sum(0)) <= tol
