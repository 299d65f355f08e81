"""Ahead-of-time compile of the gated GEMM (SwiGLU / GEGLU) kernels for sm_80 and sm_90 (no GPU
needed): zero spill bytes, shared memory within each architecture's limit, tensor-core MMA in the
GEMM and none in the elementwise kernels.

The default run compiles every 16-bit GEMM tile in its heavier variants (bf16, erf-GELU gate, K
masked; fp16 compiles to the same code), the TF32 and exact-fp32 tiles with SiLU, and the
elementwise kernels in their heaviest forms (fp64, strided); ``FASTVIT_AOT_FULL=1`` compiles all.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastvit.kernels import _configs as C
from fastvit.kernels import linear_glu as K
from fastvit.kernels import linear_glu_bwd as KB
from fastvit.profiling import compile_report as cr
from tests._aot import check_fits

ARCHS = (80, 90)


def _subset(specs):
    if os.environ.get("FASTVIT_AOT_FULL"):
        return specs
    wanted = [
        lambda n: n.startswith("_linear_glu_fwd[bf16,ieee,gelu,") and not n.endswith(",evenk]"),
        lambda n: n.startswith("_linear_glu_fwd[fp32,") and ",silu," in n and not n.endswith(",evenk]"),
        lambda n: n in ("_linear_glu_fwd[fp16,ieee,silu,128x64x64_w8s4,evenk]", "_bias_glu_fwd[fp16,silu]",
                        "_bias_glu_fwd[fp64,gelu,strided]", "_glu_bwd[bf16,silu]", "_glu_bwd[fp64,gelu,strided]",
                        "_glu_bwd[fp32,gelu]"),
    ]
    return [s for s in specs if any(w(s.name) for w in wanted)]


@pytest.fixture(scope="module")
def reports():
    specs = _subset(K.aot_specs())
    return specs, cr.report(specs, ARCHS)


def test_specs_cover_every_configuration():
    specs = K.aot_specs()
    names = {s.name for s in specs}
    assert len(names) == len(specs)
    for dtype, t, precs in ((torch.float16, "fp16", ("ieee",)), (torch.bfloat16, "bf16", ("ieee",)),
                            (torch.float32, "fp32", ("ieee", "tf32"))):
        for prec in precs:
            for c in C.linear_glu_gemm_configs(dtype, prec):
                kw = c.kwargs
                for act in K.GLU_ACTIVATIONS:
                    for tag in ("", ",evenk"):
                        assert (f"_linear_glu_fwd[{t},{prec},{act},{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}"
                                f"_w{c.num_warps}s{c.num_stages}{tag}]") in names
    for t in ("fp16", "bf16", "fp32", "fp64"):
        for act in K.GLU_ACTIVATIONS:
            for tag in ("", ",strided"):
                assert f"_bias_glu_fwd[{t},{act}{tag}]" in names and f"_glu_bwd[{t},{act}{tag}]" in names
    for s in specs:
        cr._job(s, 80)  # packs the job a compile worker gets, without compiling


def test_subset_holds_every_kernel_and_16bit_tile(reports):
    specs, _ = reports
    assert {s.fn for s in specs} == {K._linear_glu_fwd, K._bias_glu_fwd, KB._glu_bwd}
    tiles = {(s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.num_warps, s.num_stages)
             for s in specs if s.fn is K._linear_glu_fwd}
    for dtype, prec in ((torch.bfloat16, "ieee"), (torch.float32, "tf32"), (torch.float32, "ieee")):
        for c in C.linear_glu_gemm_configs(dtype, prec):
            assert (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in tiles


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills_shared_memory_fits_tensor_cores(reports, arch):
    specs, reps = reports
    for spec, r in zip(specs, check_fits(specs, reps, arch)):
        assert r.name == spec.name and r.hmma is not None and r.hgmma is not None, r.notes
        if spec.mma:
            count = r.hmma if arch == 80 else r.hgmma
            assert count > 0, f"{r.name} sm_{arch}: no tensor-core MMA (HMMA {r.hmma}, HGMMA {r.hgmma})"
        else:
            assert r.hmma == 0 and r.hgmma == 0, f"{r.name} sm_{arch}: unexpected MMA instructions"
