"""``fastvit.ops.mlp`` under the PyTorch compilers, and the ahead-of-time compile of its backward's
GEMMs (kernels/gelu_linear_bwd.py) for sm_80 and sm_90 (no GPU needed).

torch.compile(fullgraph=True) runs forward and backward as eager mode does, and its backward
graph receives the pre-activation but not the GELU output (unless recompute=False);
torch.export sees the fused forward op.

``aot_specs()``: every (GEMM, configuration the GPU autotuner may pick, dtype and dot precision,
prologue (erf, tanh, quick GELU, identity) or GELU' epilogue, reduction masked or not): 210 specs,
about 40 minutes for both architectures on two cores. The default run compiles every tile
configuration of both GEMMs in their heaviest form (bf16 and TF32, erf, masked: erf is the
variant that uses the most registers), the exact fp32 GEMMs, the identity prologue and QuickGELU
on the largest tiles (24 specs, about ten minutes); ``FASTVIT_AOT_FULL=1`` compiles all of them.
"""
from __future__ import annotations

import os

import pytest
import torch

import fastvit.ops as ops
from fastvit.kernels import _configs as C
from fastvit.kernels import gelu_linear_bwd as G
from fastvit.layers import Mlp
from fastvit.profiling import compile_report as cr
from tests._aot import check_fits
from tests._tolerances import rel_err
from tests.test_mlp_ops import _inputs, _run

ARCHS = (80, 90)


# ----------------------------------------------------------------------------------------------
# torch.compile, torch.export
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recompute", [True, False])
def test_torch_compile_fullgraph(recompute, device):
    """Same output and gradients as eager mode; the backward graph's (M, H) inputs: the
    pre-activation, and the GELU output only when it is stored."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    torch._dynamo.reset()
    M, H = 2 * 19, 96
    inputs = _inputs((2, 19, 48), H, 40, torch.float32, device)
    dy = torch.randn(2, 19, 40, device=device)
    backward_inputs = []

    def fw(gm, example_inputs):
        return make_boxed_func(gm.forward)

    def bw(gm, example_inputs):
        backward_inputs.extend(tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor))
        return make_boxed_func(gm.forward)

    def fn(*a):
        return ops.mlp(*a, "tanh", recompute=recompute, backend="triton")

    compiled = torch.compile(fn, fullgraph=True, backend=aot_autograd(fw_compiler=fw, bw_compiler=bw))
    y_c, g_c = _run(compiled, inputs, dy)
    y_e, g_e = _run(fn, inputs, dy)
    assert torch.equal(y_c, y_e)
    for a, e in zip(g_c, g_e):
        assert torch.allclose(a, e, rtol=1e-6, atol=1e-6)
    assert backward_inputs.count((M, H)) == (1 if recompute else 2), backward_inputs


def test_torch_export_sees_the_fused_forward(device):
    m = Mlp(48, 96, approximate="quick", backend="triton").to(device).eval()
    x = torch.randn(2, 19, 48, device=device)
    exported = torch.export.export(m, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "fastvit.linear_gelu_fwd.default" in targets, targets
    x2 = torch.randn(2, 19, 48, device=device)
    with torch.no_grad():
        assert rel_err(exported.module()(x2), m(x2)) <= 1e-6


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile
# ----------------------------------------------------------------------------------------------

def _subset(specs):
    if os.environ.get("FASTVIT_AOT_FULL"):
        return specs
    wanted = [
        lambda n: n.startswith(("_gelu_linear_dw[bf16,ieee,none,", "_gelu_linear_dpre[bf16,ieee,none,",
                                "_gelu_linear_dw[fp32,tf32,none,", "_gelu_linear_dpre[fp32,tf32,none,"))
        and not n.endswith(",evenk]"),
        lambda n: n in ("_gelu_linear_dw[bf16,ieee,id,128x128x32_w8s4]", "_gelu_linear_dw[fp16,ieee,id,64x256x32_w8s3]",
                        "_gelu_linear_dw[fp16,ieee,quick,128x128x32_w8s4,evenk]",
                        "_gelu_linear_dpre[fp16,ieee,quick,64x256x64_w8s3,evenk]",
                        "_gelu_linear_dw[fp32,ieee,id,32x64x32_w4s3]", "_gelu_linear_dw[fp32,ieee,none,32x64x32_w4s3]",
                        "_gelu_linear_dpre[fp32,ieee,none,64x64x32_w4s3]"),
    ]
    return [s for s in specs if any(w(s.name) for w in wanted)]


@pytest.fixture(scope="module")
def reports():
    specs = _subset(G.aot_specs())
    return specs, cr.report(specs, ARCHS)


def test_specs_cover_every_configuration_the_autotuner_may_pick():
    """Cheap (no compiling): every configuration of both GEMMs, per dtype and dot precision, every
    prologue / epilogue variant, masked and not; every argument typed."""
    specs = G.aot_specs()
    by_name = {s.name: s for s in specs}
    assert len(by_name) == len(specs)
    for dtype, t, precs in ((torch.float16, "fp16", ("ieee",)), (torch.bfloat16, "bf16", ("ieee",)),
                            (torch.float32, "fp32", ("ieee", "tf32"))):
        for prec in precs:
            mma = dtype != torch.float32 or prec == "tf32"
            for kernel, configs, variants in (
                    ("_gelu_linear_dw", C.gelu_linear_dw_gemm_configs(dtype, prec), G.GELU_APPROXIMATIONS + ("id",)),
                    ("_gelu_linear_dpre", C.linear_gelu_gemm_configs(dtype, prec), G.GELU_APPROXIMATIONS)):
                for c in configs:
                    kw = c.kwargs
                    tiles = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}_w{c.num_warps}s{c.num_stages}"
                    for v in variants:
                        for even in (False, True):
                            s = by_name[f"{kernel}[{t},{prec},{v},{tiles}{',evenk' if even else ''}]"]
                            assert s.constexprs["EVEN_K"] == even and s.mma == mma
                            assert all(s.constexprs[k] == val for k, val in kw.items())
                            if kernel == "_gelu_linear_dw":
                                assert s.constexprs["RECOMPUTE"] == (v != "id")
    for s in specs:
        cr._job(s, 80)  # packs the job a compile worker gets, without compiling


def test_subset_holds_every_tile(reports):
    specs, _ = reports
    for fn, configs in ((G._gelu_linear_dw, C.GELU_LINEAR_DW_CONFIGS), (G._gelu_linear_dpre, C.LINEAR_GELU_CONFIGS)):
        tiles = {(s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.constexprs["BLOCK_K"], s.num_warps, s.num_stages)
                 for s in specs if s.fn is fn}
        for c in configs:
            assert (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) in tiles


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills_shared_memory_fits_tensor_cores(reports, arch):
    specs, reps = reports
    mine = check_fits(specs, reps, arch)
    for spec, r in zip(specs, mine):
        assert r.name == spec.name and r.hmma is not None and r.hgmma is not None, r.notes
        count = r.hmma if arch == 80 else r.hgmma
        if spec.mma:
            assert count > 0, f"{r.name} sm_{arch}: no tensor-core MMA (HMMA {r.hmma}, HGMMA {r.hgmma})"
        else:
            assert r.hmma == 0 and r.hgmma == 0, f"{r.name} sm_{arch}: unexpected MMA instructions"
