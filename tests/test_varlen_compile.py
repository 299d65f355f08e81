"""The varlen attention kernels compile for real GPUs (sm_80, sm_90) in every configuration the
autotuner may pick: no register spills, shared memory within the architecture's limit, and
tensor-core instructions for the tl.dot kernels. No GPU needed (fastvit.profiling.compile_report).

Coverage: forward, dK/dV and dQ at head_dim 64, 80 and 128 in fp16 with and without dropout,
and in bf16 at head_dim 128 (bf16 differs from fp16 only in the dot operands' type; 128 holds
the most registers), plus the block-table builder. The delta pass is the dense backward's
kernel, compiled by tests/test_attention_compile.py.
"""
from __future__ import annotations

import pytest
import torch

from fastvit.kernels._attention_common import chunk_constexprs
from fastvit.kernels import attention_varlen as KV
from fastvit.kernels import attention_varlen_bwd as KVB
from fastvit.profiling import compile_report as cr
from tests._aot import check_fits

HEAD_DIMS = (64, 80, 128)
SPECS = (KV.aot_specs(head_dims=HEAD_DIMS, dtypes=(torch.float16,), dropout=(False, True))
         + [s for s in KV.aot_specs(head_dims=(128,), dtypes=(torch.bfloat16,), dropout=(False,))
            if s.fn is not KV._varlen_block_table])
DOT_KERNELS = ("_varlen_fwd", "_varlen_bwd_dkdv", "_varlen_bwd_dq")
TUNED = (KV._varlen_fwd_tuned, KVB._varlen_bwd_dkdv_tuned, KVB._varlen_bwd_dq_tuned)


@pytest.fixture(scope="module")
def reports():
    return cr.report(SPECS, archs=("sm_80", "sm_90"))


def test_specs_cover_every_configuration_the_autotuner_may_pick():
    for dtype, head_dims, dropouts in ((torch.float16, HEAD_DIMS, (False, True)), (torch.bfloat16, (128,), (False,))):
        for head_dim in head_dims:
            for dropout in dropouts:
                for tuned_kernel in TUNED:
                    pruned = tuned_kernel.tuner.early_config_prune(
                        tuned_kernel.tuner.configs, {"Q": torch.empty(0, dtype=dtype)},
                        **{k: v for k, v in chunk_constexprs(head_dim).items() if k != "HEAD_DIM"}, DROPOUT=dropout)
                    tuned = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in pruned}
                    specs = {(s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.num_warps, s.num_stages)
                             for s in SPECS if s.fn is tuned_kernel.fn and s.constexprs["HEAD_DIM"] == head_dim
                             and s.constexprs["DROPOUT"] == dropout
                             and s.signature["Q"] == ("*fp16" if dtype == torch.float16 else "*bf16")}
                    assert tuned and tuned == specs, (tuned_kernel.__name__, dtype, head_dim, dropout)
                    # Every tile size has a row in the block table.
                    assert {m for m, n, _, _ in tuned} | {n for m, n, _, _ in tuned} <= set(KV.TABLE_BLOCKS)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_no_spills_and_shared_memory_within_limits(reports, arch):
    mine = check_fits(SPECS, reports, arch)
    assert {r.kernel for r in mine} == set(DOT_KERNELS) | {"_varlen_block_table"}
    for r in mine:
        assert r.registers <= 255 and r.blocks_per_sm >= 1, r.name
        if arch == "sm_80":  # the budget the configurations are pruned to: they launch on sm_86/sm_89 too
            assert r.shared_bytes <= cr.ARCH_LIMITS["sm_86"].smem_per_block, r.name


def test_tensor_core_instructions(reports):
    specs = {s.name: s for s in SPECS}
    for r in reports:
        if r.kernel not in DOT_KERNELS:
            continue
        assert r.hmma is not None and r.hgmma is not None, "cuobjdump is missing from the triton wheel"
        if r.arch == "sm_80":
            assert r.hmma > 0, f"{r.name}: no HMMA on sm_80"
            continue
        c = specs[r.name].constexprs
        rows = c["BLOCK_N"] if r.kernel == "_varlen_bwd_dkdv" else c["BLOCK_M"]
        # sm_90a: warpgroup MMA when the dots' M (the rows a program owns) is at least 64.
        if rows >= 64:
            assert r.hgmma > 0, f"{r.name}: no HGMMA on sm_90"
        else:
            assert r.hmma + r.hgmma > 0, f"{r.name}: no tensor-core instruction on sm_90"
