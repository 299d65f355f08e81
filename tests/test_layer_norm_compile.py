"""Ahead-of-time compile of the LayerNorm kernels for sm_80 and sm_90 (no GPU needed): zero
spill bytes, shared memory within each architecture's per-block limit.

``aot_specs()`` lists every (kernel, configuration a launcher or the autotuner may pick, dtype,
variant, width divisible by 16 or not): 534 specs (178 per dtype; variants plain, residual,
residual with layer scale), 15-30 minutes to compile for both architectures on two cores. The
default run compiles a fixed subset (40 specs) chosen to hold ViT widths (192 to 2048, fp32: the
most registers; every variant), an unaligned width (1000), the widest bucket in fp16 and bf16
(the chunked backward, the 32-warp forward; the residual variants with and without layer scale,
which use the most registers) and the reduction; ``FASTVIT_AOT_FULL=1`` compiles all of them.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastvit.kernels import _configs as C
from fastvit.kernels import layer_norm as K
from fastvit.kernels import layer_norm_bwd as KB
from fastvit.profiling import compile_report as cr
from tests._aot import check_fits

ARCHS = (80, 90)


def _subset() -> list[dict]:
    if os.environ.get("FASTVIT_AOT_FULL"):
        return K.aot_specs()
    specs = K.aot_specs(dtypes=(torch.float32,), block_ns=(256, 2048), alignments=(True,))
    unaligned = K.aot_specs(dtypes=(torch.float32,), block_ns=(1024,), alignments=(False,))
    wide = K.aot_specs(dtypes=(torch.float16, torch.bfloat16), block_ns=(16384,), alignments=(True,))
    specs += [s for s in unaligned if "dwdb" not in s.name]
    specs += [s for s in wide if s.name.endswith(("_res", "_res_scale"))]
    return specs


@pytest.fixture(scope="module")
def reports():
    specs = _subset()
    return specs, cr.report(specs, ARCHS)


def test_every_kernel_is_in_the_subset(reports):
    specs, _ = reports
    kernels = {s.fn for s in specs}
    assert kernels == {K._layer_norm_fwd, KB._layer_norm_bwd, KB._layer_norm_bwd_wide, KB._layer_norm_bwd_dwdb}


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills_and_shared_memory_fits(reports, arch):
    specs, reps = reports
    mine = check_fits(specs, reps, arch)
    # No tl.dot anywhere: any tensor-core instruction would mean the report read the wrong code.
    assert all(r.hmma == 0 and r.hgmma == 0 for r in mine), "cuobjdump missing, or tensor-core code in LayerNorm"


def test_specs_cover_every_configuration_the_launchers_may_pick():
    """Cheap (no compiling): the full aot_specs() list holds every forward autotune config of
    every bucket, every bucket's backward config, and the reduction's, per dtype x variant x
    alignment."""
    specs = K.aot_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    block_ns = C.layer_norm_block_ns()
    assert block_ns[0] == C.layer_norm_block_n(1) and block_ns[-1] == C.layer_norm_block_n(C.LAYER_NORM_MAX_WIDTH)
    for dtype in ("fp16", "bf16", "fp32"):
        for tag in ("", "_unaligned"):
            for block_n in block_ns:
                for res in ("", "_res", "_res_scale"):
                    for block_m, warps in C.layer_norm_fwd_configs_for(block_n):
                        assert f"_layer_norm_fwd_{dtype}_n{block_n}_m{block_m}_w{warps}{res}{tag}" in names
                # The backward also runs with a layer scale but no gradient of h (only y used).
                for res in ("", "_res", "_scale", "_res_scale"):
                    cfg = C.layer_norm_bwd_config(block_n)
                    if cfg.wide:
                        want = f"_layer_norm_bwd_wide_{dtype}_n{block_n}_chunk{cfg.block_n}_w{cfg.num_warps}{res}{tag}"
                    else:
                        want = f"_layer_norm_bwd_{dtype}_n{block_n}_m{cfg.block_m}_w{cfg.num_warps}{res}{tag}"
                    assert want in names
            block_p, block_n2, warps = C.layer_norm_dwdb_config(C.LAYER_NORM_MAX_WIDTH)
            for res in ("", "_scale"):
                assert f"_layer_norm_bwd_dwdb_{dtype}_p{block_p}_n{block_n2}_w{warps}{res}{tag}" in names
    # Every config in the autotuner's list belongs to some bucket, so it is compiled above.
    per_bucket = {c for b in block_ns for c in C.layer_norm_fwd_configs_for(b)}
    assert {(c.kwargs["BLOCK_M"], c.num_warps) for c in C.layer_norm_fwd_autotune_configs()} == per_bucket


def test_prune_keeps_the_buckets_configs_and_fits_the_rows():
    configs = C.layer_norm_fwd_autotune_configs()
    kept = C.prune_layer_norm_fwd_configs(configs, {"rows_bucket": 1024}, BLOCK_N=1024)
    assert {(c.kwargs["BLOCK_M"], c.num_warps) for c in kept} == set(C.layer_norm_fwd_configs_for(1024))
    few_rows = C.prune_layer_norm_fwd_configs(configs, {"rows_bucket": 4}, BLOCK_N=1024)
    assert {c.kwargs["BLOCK_M"] for c in few_rows} == {4}
    one_row = C.prune_layer_norm_fwd_configs(configs, {"rows_bucket": 1}, BLOCK_N=256)
    assert one_row and all(c.kwargs["BLOCK_M"] == min(b for b, _ in C.layer_norm_fwd_configs_for(256)) for c in one_row)


def test_the_gpu_autotuner_prunes_through_the_named_filter():
    # The Autotuner object the GPU path launches through, pruning the way its run() does.
    tuner = K._layer_norm_fwd_tuned.tuner
    assert tuner.keys == ["BLOCK_N", "rows_bucket"]
    assert tuner.early_config_prune is C.prune_layer_norm_fwd_configs
    tuner.nargs = {"rows_bucket": 512}
    try:
        kept = tuner.prune_configs({"BLOCK_N": 256, "HAS_RESIDUAL": False, "HAS_SCALE": False, "HAS_WEIGHT": True,
                                    "HAS_BIAS": True})
    finally:
        tuner.nargs = None
    assert {(c.kwargs["BLOCK_M"], c.num_warps) for c in kept} == set(C.layer_norm_fwd_configs_for(256))
