"""The attention kernels compile for real GPUs (sm_80, sm_90) in every configuration the
autotuner may pick: no register spills, shared memory within the architecture's limit, and
tensor-core instructions for the tl.dot kernels. No GPU needed (fastvit.profiling.compile_report).

Coverage: forward, dK/dV, dQ and the delta preprocess at head_dim 64, 80 and 128, fp16 and bf16,
each kept configuration; the dropout variants too for fp16 (bf16 differs from fp16 only in the
dtype of the dot operands, which the no-dropout bf16 specs already compile).
"""
from __future__ import annotations

import pytest
import torch

from fastvit.kernels import attention as K
from fastvit.kernels import attention_bwd as KB
from fastvit.profiling import compile_report as cr

HEAD_DIMS = (64, 80, 128)
SPECS = (K.aot_specs(head_dims=HEAD_DIMS, dtypes=(torch.float16,), dropout=(False, True))
         + K.aot_specs(head_dims=HEAD_DIMS, dtypes=(torch.bfloat16,), dropout=(False,)))
DOT_KERNELS = ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq")


@pytest.fixture(scope="module")
def reports():
    return cr.report(SPECS, archs=(80, 90))


def test_specs_cover_every_configuration_the_autotuner_may_pick():
    for dtype, dropouts in ((torch.float16, (False, True)), (torch.bfloat16, (False,))):
        for head_dim, dropout in ((h, d) for h in HEAD_DIMS for d in dropouts):
            block_d = K.block_d(head_dim)
            for tuned_kernel in (K._attn_fwd_tuned, KB._attn_bwd_dkdv_tuned, KB._attn_bwd_dq_tuned):
                # What the autotuner's own prune hook keeps out of its full candidate list...
                pruned = tuned_kernel.tuner.early_config_prune(
                    tuned_kernel.tuner.configs, {"Q": torch.empty(0, dtype=dtype)}, BLOCK_D=block_d, DROPOUT=dropout)
                tuned = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in pruned}
                # ...is exactly what the specs compile.
                specs = {(s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.num_warps, s.num_stages)
                         for s in SPECS if s.fn is tuned_kernel.fn and s.constexprs["HEAD_DIM"] == head_dim
                         and s.constexprs["DROPOUT"] == dropout
                         and s.signature["Q"] == ("*fp16" if dtype == torch.float16 else "*bf16")}
                assert tuned and tuned == specs, (tuned_kernel.__name__, dtype, head_dim, dropout)
                assert all(min(m, n) >= 16 for m, n, _, _ in tuned)  # tl.dot's minimum on tensor cores


def test_no_spills_and_shared_memory_within_limits(reports):
    assert len(reports) == 2 * len(SPECS)
    assert {r.kernel for r in reports} == set(DOT_KERNELS) | {"_attn_bwd_preprocess"}
    for r in reports:
        assert r.spill_bytes == 0, f"{r.name} sm_{r.arch}: {r.spill_bytes} B spilled ({r.registers} registers)"
        assert r.registers <= 255 and r.blocks_per_sm >= 1, r.name
        assert r.shared_bytes <= r.shared_limit, f"{r.name} sm_{r.arch}: {r.shared_bytes} B of shared memory"
        if r.arch == 80:
            # The budget the configurations are pruned to: they launch on sm_86/sm_89 as well.
            assert r.shared_bytes <= cr.ARCH_LIMITS[86].smem_per_block, r.name


def test_tensor_core_instructions(reports):
    specs = {s.name: s for s in SPECS}
    for r in reports:
        if r.kernel not in DOT_KERNELS:
            continue
        assert r.hmma is not None and r.hgmma is not None, "cuobjdump is missing from the triton wheel"
        if r.arch == 80:
            assert r.hmma > 0, f"{r.name}: no HMMA on sm_80"
            continue
        # sm_90a: Triton emits warpgroup MMA when the dots' M (the rows a program owns) is at least
        # 64; below that it keeps the sm_80 MMA.
        assert specs[r.name].mma
        c = specs[r.name].constexprs
        rows = c["BLOCK_N"] if r.kernel == "_attn_bwd_dkdv" else c["BLOCK_M"]
        if rows >= 64:
            assert r.hgmma > 0, f"{r.name}: no HGMMA on sm_90"
        else:
            assert r.hmma + r.hgmma > 0, f"{r.name}: no tensor-core instruction on sm_90"
