"""Ahead-of-time compile of the linear_gelu kernels for sm_80 and sm_90 (no GPU needed): zero
spill bytes, shared memory within each architecture's per-block limit, tensor-core MMA in the
GEMM's SASS (HMMA on sm_80, warpgroup HGMMA on sm_90) and none in the elementwise kernels.

``aot_specs()`` lists every (kernel, configuration the launchers or the GPU autotuner may pick,
dtype, GELU variant (erf, tanh, quick), K masked or not, layout): 146 specs, about fifteen
minutes to compile for both architectures on two idle cores. The default run compiles a subset that holds every GEMM tile
configuration (bf16, erf GELU, K masked: fp16 compiles to the same code, and the erf epilogue
and the masks are the heavier variants; one unmasked for comparison), the TF32 and exact-fp32
GEMMs, each elementwise kernel in its heaviest forms (fp64, strided), and the QuickGELU epilogue
on the largest tiles and in the elementwise kernels; ``FASTVIT_AOT_FULL=1``
compiles all of them.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastvit.kernels import _configs as C
from fastvit.kernels import linear_gelu as K
from fastvit.kernels import linear_gelu_bwd as KB
from fastvit.profiling import compile_report as cr
from tests._aot import check_fits

ARCHS = (80, 90)


def _subset(specs: list[dict]) -> list[dict]:
    if os.environ.get("FASTVIT_AOT_FULL"):
        return specs
    wanted = [
        lambda n: n.startswith("_linear_gelu_fwd[bf16,ieee,none,") and not n.endswith(",evenk]"),
        lambda n: n == "_linear_gelu_fwd[bf16,ieee,none,128x128x64_w8s4,evenk]",
        lambda n: n == "_linear_gelu_fwd[fp32,tf32,none,128x128x32_w8s3]",
        lambda n: n.startswith("_linear_gelu_fwd[fp32,ieee,tanh,") and not n.endswith(",evenk]"),
        lambda n: n in ("_bias_gelu_fwd[fp16,none]", "_gelu_bwd[fp16,none]", "_gelu_bwd[fp16,tanh,strided]",
                        "_bias_gelu_fwd[fp64,none]", "_bias_gelu_fwd[fp64,none,strided]", "_gelu_bwd[fp64,none]",
                        "_gelu_bwd[fp64,none,strided]", "_bias_grad_reduce[fp32]",
                        "_bias_grad_reduce[fp64,strided]"),
        # QuickGELU: the largest tiles' epilogue, and the heaviest elementwise forms.
        lambda n: n in ("_linear_gelu_fwd[bf16,ieee,quick,128x128x64_w8s4]",
                        "_linear_gelu_fwd[fp16,ieee,quick,64x256x64_w8s3,evenk]",
                        "_linear_gelu_fwd[fp32,tf32,quick,128x128x32_w8s3]",
                        "_bias_gelu_fwd[fp64,quick,strided]", "_gelu_bwd[fp64,quick,strided]", "_gelu_bwd[bf16,quick]"),
    ]
    return [s for s in specs if any(w(s.name) for w in wanted)]


@pytest.fixture(scope="module")
def reports():
    specs = _subset(K.aot_specs())
    return specs, cr.report(specs, ARCHS)


def test_subset_holds_every_kernel_and_gemm_tile(reports):
    specs, _ = reports
    assert {s.fn for s in specs} == {K._linear_gelu_fwd, K._bias_gelu_fwd, KB._gelu_bwd, KB._bias_grad_reduce}
    tiles = {(s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.constexprs["BLOCK_K"], s.num_warps, s.num_stages)
             for s in specs if s.fn is K._linear_gelu_fwd}
    for dtype, prec in ((torch.bfloat16, "ieee"), (torch.float32, "ieee")):
        for c in C.linear_gelu_gemm_configs(dtype, prec):
            assert (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) in tiles


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills_shared_memory_fits_tensor_cores(reports, arch):
    specs, reps = reports
    mine = check_fits(specs, reps, arch)
    for spec, r in zip(specs, mine):
        assert r.name == spec.name and r.hmma is not None and r.hgmma is not None, r.notes
        if spec.mma:
            # sm_80: mma.sync (HMMA); sm_90a: Triton lowers these tiles to warpgroup MMA (HGMMA)
            count = r.hmma if arch == 80 else r.hgmma
            assert count > 0, f"{r.name} sm_{arch}: no tensor-core MMA (HMMA {r.hmma}, HGMMA {r.hgmma})"
        else:
            assert r.hmma == 0 and r.hgmma == 0, f"{r.name} sm_{arch}: unexpected MMA instructions"


def test_specs_cover_every_configuration_the_launchers_may_pick():
    """Cheap (no compiling): every GEMM configuration of every dtype and dot precision, for both
    GELUs; every elementwise kernel for every dtype, GELU and layout, with the configuration
    the launcher uses on a GPU. Each spec types every argument of its kernel."""
    specs = K.aot_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    by_name = dict(zip(names, specs))
    for dtype, t, precs in ((torch.float16, "fp16", ("ieee",)), (torch.bfloat16, "bf16", ("ieee",)),
                            (torch.float32, "fp32", ("ieee", "tf32"))):
        for prec in precs:
            for c in C.linear_gelu_gemm_configs(dtype, prec):
                kw = c.kwargs
                assert min(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]) >= 16  # tl.dot on a GPU
                for approx in K.GELU_APPROXIMATIONS:
                    for even_k in (False, True):
                        s = by_name[f"_linear_gelu_fwd[{t},{prec},{approx},{kw['BLOCK_M']}x{kw['BLOCK_N']}x"
                                    f"{kw['BLOCK_K']}_w{c.num_warps}s{c.num_stages}{',evenk' if even_k else ''}]"]
                        assert s.constexprs["EVEN_K"] == even_k and s.constexprs["APPROXIMATE"] == approx
                    assert s.mma == (dtype != torch.float32 or prec == "tf32")
                    assert s.constexprs["EPILOGUE_SPLIT"] == kw["EPILOGUE_SPLIT"]
                    assert s.constexprs["GROUP_M"] == kw["GROUP_M"]
    for dtype, t in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"), (torch.float32, "fp32"),
                     (torch.float64, "fp64")):
        ew = C.linear_gelu_epilogue_config(dtype)
        bw = C.linear_gelu_bwd_config(dtype)
        for tag in ("", ",strided"):
            for approx in K.GELU_APPROXIMATIONS:
                s = by_name[f"_bias_gelu_fwd[{t},{approx}{tag}]"]
                assert (s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.num_warps) == \
                    (ew["BLOCK_M"], ew["BLOCK_N"], ew["num_warps"])
                s = by_name[f"_gelu_bwd[{t},{approx}{tag}]"]
                assert (s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.num_warps) == \
                    (bw["BLOCK_M"], bw["BLOCK_N"], bw["num_warps"])
            assert f"_bias_grad_reduce[{t}{tag}]" in by_name
    for s in specs:
        cr._job(s, 80)  # packs the job a compile worker gets, without compiling


def test_every_gemm_candidate_is_in_a_table():
    """The autotuner's one candidate list is exactly the union of the per-dtype tables."""
    from fastvit.kernels._autotune import config_key
    tables = {config_key(c) for dtype, prec in ((torch.float16, "ieee"), (torch.float32, "tf32"),
                                                (torch.float32, "ieee"))
              for c in C.linear_gelu_gemm_configs(dtype, prec)}
    assert {config_key(c) for c in K._linear_gelu_fwd_tuned.configs} == tables
