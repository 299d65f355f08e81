"""Ahead-of-time compile report: toy kernels compiled for sm_80 / sm_90 (and Blackwell, AMD
Instinct) without a GPU.

The kernels live at module level on purpose: under TRITON_INTERPRET=1 the report compiles in a
child process that imports them by name.
"""
import json

import pytest
import triton
import triton.language as tl

from fastvit.kernels._aot import AotSpec, aot_spec
from fastvit.profiling import arch_limits
from fastvit.profiling import compile_report as cr


@triton.jit
def _toy_matmul(A, B, C, M, N, K, stride_am, stride_bk, stride_cm,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(A + offs_m[:, None] * stride_am + (k0 + offs_k)[None, :],
                    mask=(offs_m[:, None] < M) & ((k0 + offs_k)[None, :] < K), other=0.0)
        b = tl.load(B + (k0 + offs_k)[:, None] * stride_bk + offs_n[None, :],
                    mask=((k0 + offs_k)[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
    tl.store(C + offs_m[:, None] * stride_cm + offs_n[None, :], acc.to(tl.float16),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _toy_add(X, Y, Out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask)
    y = tl.load(Y + offs, mask=mask)
    tl.store(Out + offs, x + y, mask=mask)


@triton.jit
def _toy_tiny_dot(A, C, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(A + offs[:, None] * BLOCK + offs[None, :])
    tl.store(C + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, a))


MATMUL = aot_spec("toy_matmul_fp16", _toy_matmul, pointers={"A": "fp16", "B": "fp16", "C": "fp16"},
                  constexprs={"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3)
# Built by hand: the format the builder produces.
ADD = AotSpec(name="toy_add_fp16", fn=_toy_add,
              signature={"X": "*fp16", "Y": "*fp16", "Out": "*fp16", "n": "i32", "BLOCK": "constexpr"},
              constexprs={"BLOCK": 1024}, num_warps=4, num_stages=1, aligned=("X", "Y", "Out"))


def test_builder_types_every_argument():
    assert MATMUL.signature == {"A": "*fp16", "B": "*fp16", "C": "*fp16", "M": "i32", "N": "i32", "K": "i32",
                                "stride_am": "i32", "stride_bk": "i32", "stride_cm": "i32",
                                "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
    assert MATMUL.aligned == ("A", "B", "C") and MATMUL["name"] == "toy_matmul_fp16"
    spec = aot_spec("x", _toy_matmul, pointers={"A": "fp16", "B": "fp16", "C": None}, unit_strides=("stride_bk",),
                    aligned=("N", "stride_bk"), constexprs={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=1)
    assert spec.signature["C"] == "constexpr" and spec.constexprs["C"] is None
    assert spec.signature["stride_bk"] == "constexpr" and spec.constexprs["stride_bk"] == 1
    assert spec.aligned == ("A", "B", "N")  # a unit stride is a constant, not an aligned argument


@pytest.fixture(scope="module")
def reports():
    """Both toy kernels for sm_80 and sm_90, compiled once (one worker process)."""
    out = cr.report([MATMUL, ADD], archs=(80, 90))
    return {(r.name, r.cc): r for r in out}


@pytest.mark.parametrize("arch", [80, 90])
def test_matmul_resources(reports, arch):
    r = reports["toy_matmul_fp16", arch]
    assert r.kernel == "_toy_matmul" and r.arch == f"sm_{arch}" and r.cc == arch
    assert r.num_warps == 4 and r.num_stages == 3
    assert 0 < r.registers <= 255
    assert r.spill_store_bytes == r.spill_load_bytes == r.spill_bytes == 0
    # tl.dot operands are staged through shared memory, which Triton allocates dynamically.
    assert r.dynamic_shared_bytes > 0
    assert r.shared_bytes == r.static_shared_bytes + r.dynamic_shared_bytes
    assert r.shared_bytes <= r.shared_limit == arch_limits.limits(arch).smem_per_block
    assert r.occupancy == pytest.approx(cr.occupancy(r.registers, r.shared_bytes, 4, arch))
    assert 0 < r.occupancy <= 1
    assert r.ptx.lstrip().startswith("//") and ".entry _toy_matmul" in r.ptx and r.cubin[:4] == b"\x7fELF"


def test_matmul_uses_the_tensor_cores(reports):
    ampere, hopper = reports["toy_matmul_fp16", 80], reports["toy_matmul_fp16", 90]
    assert ampere.hmma > 0 and ampere.hgmma == 0, (ampere.hmma, ampere.hgmma)
    assert "HMMA.16816.F32" in ampere.sass()
    # sm_90a: Triton lowers this tile to warpgroup MMA.
    assert hopper.hgmma > 0 and hopper.tensor_core_instructions == hopper.hmma + hopper.hgmma


@pytest.mark.parametrize("arch", [80, 90])
def test_elementwise_has_no_tensor_core_instructions(reports, arch):
    r = reports["toy_add_fp16", arch]
    assert r.registers > 0 and r.spill_bytes == 0
    assert r.hmma == 0 and r.hgmma == 0 and r.tensor_core_instructions == 0
    assert "EXIT" in r.sass()  # the SASS was read, so the zeros are counts, not "unknown"


def test_report_is_cached_and_ordered(reports):
    again = cr.report([ADD, MATMUL], archs=(90, 80))  # served from the in-process cache
    assert [(r.name, r.arch) for r in again] == [("toy_add_fp16", "sm_90"), ("toy_add_fp16", "sm_80"),
                                                  ("toy_matmul_fp16", "sm_90"), ("toy_matmul_fp16", "sm_80")]
    assert again[0] is reports["toy_add_fp16", 90]
    assert cr.compile_spec(MATMUL, 80) is reports["toy_matmul_fp16", 80]
    assert cr.compile_spec(MATMUL, "sm_80a") is reports["toy_matmul_fp16", 80]  # one name per arch


def test_to_dict_and_table(reports):
    rows = [reports[k] for k in sorted(reports)]
    d = rows[0].to_dict()
    json.dumps(d)
    for key in ("name", "arch", "num_warps", "num_stages", "registers", "spill_store_bytes", "spill_load_bytes",
                "spill_bytes", "shared_bytes", "shared_limit", "hmma", "hgmma", "occupancy", "head_dim", "dtype",
                "config", "matrix_instructions"):
        assert key in d
    assert "ptx" not in d and "cubin" not in d
    mm = reports["toy_matmul_fp16", 80].to_dict()
    assert mm["arch"] == "sm_80" and mm["dtype"] == "fp16" and mm["head_dim"] is None
    assert mm["config"] == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}
    assert mm["matrix_instructions"] == {"HMMA": mm["hmma"]} and mm["hmma"] > 0
    table = cr.format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["kernel", "arch", "warps", "stages", "regs"]
    assert len(lines) == 2 + len(rows)
    assert any(line.startswith("toy_matmul_fp16") and " sm_80 " in line for line in lines)


def test_gpu_only_defect_is_reported_by_name():
    # An 8x8 tl.dot runs in the interpreter but no GPU backend accepts it (M, N, K >= 16).
    bad = aot_spec("tiny_dot", _toy_tiny_dot, pointers={"A": "fp16", "C": "fp16"}, constexprs={"BLOCK": 8},
                   num_warps=1)
    with pytest.raises(cr.CompileReportError, match=r"tiny_dot \(sm_80\)"):
        cr.compile_spec(bad, 80)


def test_bad_specs_fail_before_compiling():
    with pytest.raises(TypeError, match="AotSpec"):
        cr.compile_spec({"name": "x", "fn": _toy_add}, 80)
    fields = dict(name=ADD.name, fn=ADD.fn, signature=ADD.signature, constexprs=ADD.constexprs, num_warps=4,
                  num_stages=1)
    with pytest.raises(ValueError, match="no type for"):
        AotSpec(**{**fields, "signature": {"X": "*fp16"}})
    with pytest.raises(ValueError, match="not arguments"):
        AotSpec(**{**fields, "signature": {**ADD.signature, "Z": "i32"}})
    with pytest.raises(ValueError, match="have no value"):
        AotSpec(**{**fields, "constexprs": {}})
    with pytest.raises(ValueError, match="num_warps"):
        AotSpec(**{**fields, "num_warps": 0})
    with pytest.raises(ValueError, match="aligned names"):
        AotSpec(**fields, aligned=("BLOCK",))
    with pytest.raises(ValueError, match=r"no value for the constexpr arguments \['BLOCK'\]"):
        aot_spec("add", _toy_add, pointers={"X": "fp16", "Y": "fp16", "Out": "fp16"}, num_warps=4)
    with pytest.raises(ValueError, match="not arguments"):
        aot_spec("add", _toy_add, pointers={"Q": "fp16"}, constexprs={"BLOCK": 8}, num_warps=4)
    with pytest.raises(ValueError, match="arch must be one of"):
        cr.compile_spec(ADD, 75)
    with pytest.raises(ValueError, match="arch must be one of"):
        cr.compile_spec(ADD, "gfx1100")
    with pytest.raises(TypeError, match="triton.jit"):
        AotSpec(**{**fields, "fn": print})


def test_collect_specs_skips_missing_modules():
    collected = cr.collect_specs(("no_such_kernel",))
    assert collected.specs == [] and collected.skipped == {"no_such_kernel": "module not written yet"}


def test_tools_come_from_the_wheel():
    paths = cr.tool_paths()
    assert paths["ptxas"] and "triton" in paths["ptxas"]


# ---- occupancy, checked against hand computation (CUDA occupancy calculator rules) -----------

@pytest.mark.parametrize("regs, smem, warps, arch, blocks, occ, limiter", [
    # 168 regs -> 5376 per warp; 16384 per sub-partition holds 3 warps -> 12 warps -> 3 blocks of 4.
    (168, 8192, 4, 80, 3, 12 / 64, ["registers"]),
    # 32 regs -> 1024 per warp -> 16 warps per sub-partition -> 64 warps: the warp limit too.
    (32, 0, 4, 80, 16, 1.0, ["registers", "warps"]),
    # 100 KiB + 1 KiB reserved per block: 164 // 101 = 1 block on sm_80, 228 // 101 = 2 on sm_90.
    (64, 100 * 1024, 8, 80, 1, 8 / 64, ["shared_memory"]),
    (64, 100 * 1024, 8, 90, 2, 16 / 64, ["shared_memory"]),
    # ...and more than the 99 KiB per block sm_86 allows: it cannot launch.
    (64, 100 * 1024, 8, 86, 0, 0.0, ["shared_memory"]),
    # 1024 threads on sm_86: 48 // 32 = 1 block.
    (16, 0, 32, 86, 1, 32 / 48, ["warps"]),
    # one-warp blocks on sm_89 stop at 24 resident blocks.
    (16, 0, 1, 89, 24, 24 / 48, ["blocks"]),
    # 255 regs round up to 8192 per warp: 2 warps per sub-partition.
    (255, 0, 4, 90, 2, 8 / 64, ["registers"]),
    # 16 warps x 8192 registers exceed the 64K register file: no launch.
    (255, 0, 16, 80, 0, 0.0, ["registers"]),
])
def test_occupancy_hand_computed(regs, smem, warps, arch, blocks, occ, limiter):
    d = arch_limits.occupancy_details(regs, smem, warps, arch)
    assert d["blocks_per_sm"] == blocks
    assert d["occupancy"] == pytest.approx(occ)
    assert d["limited_by"] == limiter
    assert arch_limits.occupancy(regs, smem, warps, arch) == pytest.approx(occ)
    assert cr.occupancy is arch_limits.occupancy  # re-exported for the CLI and earlier callers


def test_occupancy_rejects_bad_input():
    with pytest.raises(ValueError, match="arch"):
        cr.occupancy(32, 0, 4, 70)
    with pytest.raises(ValueError, match="num_warps"):
        cr.occupancy(32, 0, 0, 80)


def test_parsers():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "ptxas info    : Function properties for k\n"
           "    8 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n")
    assert cr.parse_ptxas_log(log) == {"registers": 255, "spill_store_bytes": 12, "spill_load_bytes": 20,
                                       "stack_bytes": 8, "static_shared_bytes": 2048}
    with pytest.raises(ValueError):
        cr.parse_ptxas_log("nothing here")
    sass = ("        /*0100*/                   HMMA.16816.F32 R4, R8, R12, R4 ;\n"
            "        /*0110*/              @!P0 HMMA.16816.F32 R8, R8, R12, R8 ;\n"
            "        /*0120*/                   HGMMA.64x64x16.F32 gdesc[UR4], RZ, !UPT ;\n"
            "        /*0130*/                   MOV R1, c[0x0][0x28] ;  // HMMA in a comment\n")
    assert cr.count_sass_opcodes(sass) == {"HMMA": 2, "HGMMA": 1}


# ---- Blackwell and AMD Instinct ---------------------------------------------------------------

MATMUL_AMD = aot_spec("toy_matmul_fp16_mfma16", _toy_matmul, pointers={"A": "fp16", "B": "fp16", "C": "fp16"},
                      constexprs={"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2,
                      options={"waves_per_eu": 2, "matrix_instr_nonkdim": 16})


@pytest.fixture(scope="module")
def new_reports():
    pairs = [(MATMUL, "sm_100"), (MATMUL, "sm_120"), (ADD, "gfx942"), (MATMUL_AMD, "gfx942"), (MATMUL, "gfx950"),
             (MATMUL, "gfx90a")]
    return {(r.name, r.arch): r for r in cr.report_pairs(pairs)}


def test_blackwell(new_reports):
    b200, rtx = new_reports["toy_matmul_fp16", "sm_100"], new_reports["toy_matmul_fp16", "sm_120"]
    assert b200.cc == 100 and set(b200.matrix_instructions) == {"HMMA", "tcgen05"}
    assert b200.tensor_core_instructions > 0 and b200.spill_bytes == 0
    assert b200.shared_limit == 227 * 1024
    # Consumer Blackwell has no tcgen05: mma.sync, and 99 KB of shared memory per block.
    assert rtx.matrix_instructions == {"HMMA": rtx.hmma} and rtx.hmma > 0 and rtx.shared_limit == 99 * 1024


def test_amd_instinct(new_reports):
    for arch in ("gfx90a", "gfx942", "gfx950"):
        r = new_reports["toy_matmul_fp16" if arch != "gfx942" else "toy_matmul_fp16_mfma16", arch]
        assert r.arch == arch and r.cc is None and r.hmma is None and r.hgmma is None
        assert set(r.matrix_instructions) == {"MFMA"} and r.mfma > 0, r.matrix_instructions
        assert 0 < r.registers <= 512 and r.spill_bytes == 0
        assert r.shared_limit == (160 if arch == "gfx950" else 64) * 1024 and r.shared_bytes <= r.shared_limit
        assert r.dynamic_shared_bytes > 0  # the dot's operands staged through LDS
        assert r.occupancy == pytest.approx(cr.occupancy(r.registers, r.shared_bytes, 4, arch)) and r.occupancy > 0
        assert ".amdgpu_metadata" in r.sass() and r.cubin[:4] == b"\x7fELF"  # AMDGCN text, hsaco binary
    # The spec's options reached the hip compiler: 16x16 MFMA was asked for.
    r = new_reports["toy_matmul_fp16_mfma16", "gfx942"]
    assert "v_mfma_f32_16x16" in r.sass() and r.config["matrix_instr_nonkdim"] == 16
    add = new_reports["toy_add_fp16", "gfx942"]
    assert add.mfma == 0 and add.tensor_core_instructions == 0 and add.spill_bytes == 0


def test_parse_amdgcn():
    text = ("\tv_mfma_f32_16x16x16_f16 a[0:3], v[0:1], v[2:3], a[0:3]\n"
            "\tv_mfma_f32_16x16x16_f16 a[4:7], v[0:1], v[2:3], a[4:7]\n"
            "\tv_add_f32 v1, v2, v3 ; v_mfma in a comment is not counted\n"
            "    .agpr_count:     8\n    .group_segment_fixed_size: 512\n    .private_segment_fixed_size: 16\n"
            "    .sgpr_count:     20\n    .sgpr_spill_count: 0\n    .vgpr_count:     136\n"
            "    .vgpr_spill_count: 3\n    .wavefront_size: 64\n")
    assert cr.parse_amdgcn(text) == {"vgpr_count": 136, "agpr_count": 8, "sgpr_count": 20, "vgpr_spill_count": 3,
                                     "sgpr_spill_count": 0, "group_segment_fixed_size": 512,
                                     "private_segment_fixed_size": 16, "wavefront_size": 64, "mfma": 2}
    with pytest.raises(ValueError, match="vgpr_count"):
        cr.parse_amdgcn("nothing")


@pytest.mark.parametrize("vgprs, lds, waves, arch, blocks, occ, limiter", [
    # 128 VGPRs -> 512 // 128 = 4 waves per SIMD -> 16 per CU -> 4 workgroups of 4; 64 KiB of LDS
    # holds 2 workgroups of 32 KiB: LDS limits.
    (128, 32768, 4, "gfx942", 2, 8 / 32, ["shared_memory"]),
    # gfx950's 160 KiB holds 5: the registers limit at 4.
    (128, 32768, 4, "gfx950", 4, 16 / 32, ["registers"]),
    # 256 VGPRs (two waves per SIMD), no LDS: 8 waves per CU, 2 workgroups.
    (256, 0, 4, "gfx90a", 2, 8 / 32, ["registers"]),
    # 40 VGPRs round up to 40: 512 // 40 = 12, capped at 8 waves per SIMD -> 32 per CU: the wave limit.
    (40, 1024, 4, "gfx942", 8, 1.0, ["registers", "warps"]),
])
def test_amd_occupancy_hand_computed(vgprs, lds, waves, arch, blocks, occ, limiter):
    d = arch_limits.occupancy_details(vgprs, lds, waves, arch)
    assert (d["blocks_per_sm"], d["limited_by"]) == (blocks, limiter)
    assert d["occupancy"] == pytest.approx(occ)


def test_arch_names():
    assert [arch_limits.arch_name(a) for a in (80, "sm80", "SM_90a", "sm_100", "gfx942:sramecc+:xnack-")] == \
        ["sm_80", "sm_80", "sm_90", "sm_100", "gfx942"]
    for bad in ("sm_75", "gfx1100", "hopper"):
        with pytest.raises(ValueError, match="arch must be one of"):
            arch_limits.arch_name(bad)
