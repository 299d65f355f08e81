"""The attention kernels compile for every GPU architecture we target, in the configurations the
autotuner may pick there: no register spills, shared memory / LDS within the architecture's
limit, and matrix instructions (HMMA, HGMMA, tcgen05, MFMA) in the tl.dot kernels. No GPU needed
(fastvit.profiling.compile_report).

Default run, a representative subset (a few minutes on two cores):
* sm_80 and sm_90: forward, dK/dV, dQ and the delta pass at head_dim 64, 80 and 128, fp16 and
  bf16, each kept configuration; dropout variants in fp16 (bf16 differs only in the dots'
  operand type, which the no-dropout bf16 specs compile);
* sm_100, sm_120, gfx942, gfx950 (and gfx90a): head_dim 64 and 80 (one power of two, one
  chunked), fp16, every kept configuration of the architecture's family, with and without dropout;
* RoPE (ROPE 1 and 2: q and k rotated in registers, kernels/_attention_rope.py), marked slow:
  sm_80 and sm_90, the three tl.dot kernels at head_dim 64, 80 and 128 in every configuration the
  autotuner keeps with RoPE, fp16 with and without dropout (``FASTVIT_AOT_FULL=1``: bf16 too).
The full list (every head dim and dtype of ``aot_specs``, every architecture) is one command:
    fastvit compile-report --arch sm_80,sm_90,sm_100,sm_120,gfx90a,gfx942,gfx950 --kernels attention
"""
from __future__ import annotations

import os

import pytest
import torch

from fastvit.kernels import _configs
from fastvit.kernels import attention as K
from fastvit.kernels import attention_bwd as KB
from fastvit.profiling import compile_report as cr
from tests._aot import check_fits

HEAD_DIMS = (64, 80, 128)
SPECS = (K.aot_specs(head_dims=HEAD_DIMS, dtypes=(torch.float16,), dropout=(False, True), rope=(0,))
         + K.aot_specs(head_dims=HEAD_DIMS, dtypes=(torch.bfloat16,), dropout=(False,), rope=(0,)))
NEW_ARCHS = ("sm_100", "sm_120", "gfx90a", "gfx942", "gfx950")
NEW_HEAD_DIMS = (64, 80)
DOT_KERNELS = ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq")


def _new_arch_pairs():
    return [(s, arch) for arch in NEW_ARCHS
            for s in K.aot_specs(head_dims=NEW_HEAD_DIMS, dtypes=(torch.float16,), dropout=(False, True),
                                 family=_configs.arch_family(arch), rope=(0,))]


@pytest.fixture(scope="module")
def reports():
    return cr.report(SPECS, archs=("sm_80", "sm_90"))


@pytest.fixture(scope="module")
def new_reports():
    pairs = _new_arch_pairs()
    return list(zip([p[0] for p in pairs], cr.report_pairs(pairs)))


def test_specs_cover_every_configuration_the_autotuner_may_pick():
    for dtype, dropouts in ((torch.float16, (False, True)), (torch.bfloat16, (False,))):
        for head_dim, dropout in ((h, d) for h in HEAD_DIMS for d in dropouts):
            dims = {k: v for k, v in zip(("BLOCK_D", "D1", "D2"), K.head_dim_chunks(head_dim))}
            for tuned_kernel in (K._attn_fwd_tuned, KB._attn_bwd_dkdv_tuned, KB._attn_bwd_dq_tuned):
                # What the autotuner's own prune hook keeps out of its full candidate list...
                pruned = tuned_kernel.tuner.early_config_prune(
                    tuned_kernel.tuner.configs, {"Q": torch.empty(0, dtype=dtype)}, **dims, DROPOUT=dropout)
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
        assert r.spill_bytes == 0, f"{r.name} {r.arch}: {r.spill_bytes} B spilled ({r.registers} registers)"
        assert r.registers <= 255 and r.blocks_per_sm >= 1, r.name
        assert r.shared_bytes <= r.shared_limit, f"{r.name} {r.arch}: {r.shared_bytes} B of shared memory"
        if r.arch == "sm_80":
            # The budget the configurations are pruned to: they launch on sm_86/sm_89 as well.
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
        # sm_90a: Triton emits warpgroup MMA when the dots' M (the rows a program owns) is at least
        # 64; below that it keeps the sm_80 MMA.
        assert specs[r.name].mma
        c = specs[r.name].constexprs
        rows = c["BLOCK_N"] if r.kernel == "_attn_bwd_dkdv" else c["BLOCK_M"]
        if rows >= 64:
            assert r.hgmma > 0, f"{r.name}: no HGMMA on sm_90"
        else:
            assert r.hmma + r.hgmma > 0, f"{r.name}: no tensor-core instruction on sm_90"


def test_new_architectures_compile_without_spills_with_matrix_instructions(new_reports):
    assert {r.arch for _, r in new_reports} == set(NEW_ARCHS)
    for spec, r in new_reports:
        where = f"{r.name} {r.arch}"
        assert r.head_dim in NEW_HEAD_DIMS and r.dtype == "fp16" and r.config["BLOCK_D"] == spec.constexprs["BLOCK_D"]
        assert r.spill_bytes == 0, f"{where}: {r.spill_bytes} B spilled ({r.registers} registers)"
        assert r.shared_bytes <= r.shared_limit == cr.ARCH_LIMITS[r.arch].smem_per_block, where
        assert r.blocks_per_sm >= 1, where
        if r.arch.startswith("gfx"):
            assert r.registers <= 512 and set(r.matrix_instructions) == {"MFMA"}, where
            # The family's compile hints reached the hip backend (they are in the spec's options).
            if r.kernel in DOT_KERNELS:
                assert spec.options == {"waves_per_eu": r.config["waves_per_eu"],
                                        "matrix_instr_nonkdim": _configs.AMD_MATRIX_INSTR_NONKDIM}, where
        else:
            assert r.registers <= 255, where
        if r.kernel not in DOT_KERNELS:
            assert r.tensor_core_instructions == 0, where
            continue
        mma = r.matrix_instructions
        if r.arch == "sm_100":
            # tcgen05 for the dots whose M (rows a program owns) is 64 or more; mma.sync below.
            rows = spec.constexprs["BLOCK_N"] if r.kernel == "_attn_bwd_dkdv" else spec.constexprs["BLOCK_M"]
            assert (mma["tcgen05"] if rows >= 64 else mma["HMMA"] + mma["tcgen05"]) > 0, (where, mma)
        elif r.arch == "sm_120":
            assert mma["HMMA"] > 0, (where, mma)  # consumer Blackwell: mma.sync, no tcgen05
        else:
            assert mma["MFMA"] > 0, (where, mma)


# ----------------------------------------------------------------------------------------------
# RoPE (ROPE 1 "half", 2 "interleaved"): the rotation in registers, every configuration the
# autotuner keeps with RoPE (kernels/_attention_configs.py: RopeBudget), sm_80 and sm_90.
# ----------------------------------------------------------------------------------------------

ROPE_SPECS = [s for s in (K.aot_specs(head_dims=HEAD_DIMS, dtypes=(torch.float16,), dropout=(False, True), rope=(1, 2))
                          + K.aot_specs(head_dims=HEAD_DIMS, dtypes=(torch.bfloat16,), dropout=(False,), rope=(1, 2)))
              if s.fn.__name__ in DOT_KERNELS]  # the delta pass does not rotate: compiled above


# Compiled by default: fp16 with and without dropout (bf16 differs only in the dots' operand type,
# as for the plain kernels above); FASTVIT_AOT_FULL=1 compiles bf16 too.
ROPE_COMPILED = [s for s in ROPE_SPECS if os.environ.get("FASTVIT_AOT_FULL") or s.signature["Q"] == "*fp16"]


@pytest.fixture(scope="module")
def rope_reports():
    return cr.report(ROPE_COMPILED, archs=("sm_80", "sm_90"))


def test_rope_specs_cover_every_configuration_the_autotuner_may_pick():
    for dtype, dropouts in ((torch.float16, (False, True)), (torch.bfloat16, (False,))):
        for head_dim, dropout, rope in ((h, d, r) for h in HEAD_DIMS for d in dropouts for r in (1, 2)):
            dims = {k: v for k, v in zip(("BLOCK_D", "D1", "D2"), K.head_dim_chunks(head_dim))}
            for tuned_kernel in (K._attn_fwd_tuned, KB._attn_bwd_dkdv_tuned, KB._attn_bwd_dq_tuned):
                pruned = tuned_kernel.tuner.early_config_prune(
                    tuned_kernel.tuner.configs, {"Q": torch.empty(0, dtype=dtype)}, **dims, DROPOUT=dropout, ROPE=rope)
                tuned = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in pruned}
                specs = {(s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.num_warps, s.num_stages)
                         for s in ROPE_SPECS if s.fn is tuned_kernel.fn and s.constexprs["HEAD_DIM"] == head_dim
                         and s.constexprs["DROPOUT"] == dropout and s.constexprs["ROPE"] == rope
                         and s.signature["Q"] == ("*fp16" if dtype == torch.float16 else "*bf16")}
                assert tuned and tuned == specs, (tuned_kernel.__name__, dtype, head_dim, dropout, rope)
                # Without RoPE the prune hook keeps what it kept before RoPE existed.
                plain = tuned_kernel.tuner.early_config_prune(
                    tuned_kernel.tuner.configs, {"Q": torch.empty(0, dtype=dtype)}, **dims, DROPOUT=dropout, ROPE=0)
                width = sum(K.head_dim_chunks(head_dim))
                kern = {"_attn_fwd": "fwd", "_attn_bwd_dkdv": "dkdv", "_attn_bwd_dq": "dq"}[tuned_kernel.__name__]
                assert [c.__dict__ for c in plain] == [c.__dict__ for c in _configs.attention_configs(
                    kern, width, dtype, dropout)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_rope_kernels_compile_without_spills(rope_reports, arch):
    """Forward, dK/dV and dQ with RoPE at head dims 64, 80 and 128: no spills, shared memory
    within the limit (and within sm_86's on sm_80), tensor cores. ``-s`` prints the table."""
    mine = check_fits(ROPE_COMPILED, rope_reports, arch)
    assert {r.kernel for r in mine} == set(DOT_KERNELS)
    assert {r.config["ROPE"] for r in mine} == {1, 2}
    for r in mine:
        assert r.registers <= 255 and r.blocks_per_sm >= 1, r.name
        assert r.hmma + r.hgmma > 0, f"{r.name} {arch}: no tensor-core instruction"
        if arch == "sm_80":
            assert r.shared_bytes <= cr.ARCH_LIMITS["sm_86"].smem_per_block, r.name
    print("\n" + cr.format_table(mine))
