"""Head dims that are not powers of two (issue 15): split into power-of-two chunks, not padded.

1. The split itself (``head_dim_chunks``) and the stride-alignment flag of the launchers.
2. Numerics at head dims 72, 80, 88, 96, 104, 112 (two or three chunks; masked tails at 72, 88
   and 104):
   forward and every gradient against float64, fp32 / fp16 / bf16, odd N, the packed-qkv layout
   (whose head stride of 72 takes the STRIDE_ALIGN path) and dropout. (Every autotune
   configuration at these head dims: tests/test_attention_configs.py.)
3. Evidence from the compiled code, no GPU: on sm_80, HMMA has one shape, so the number of HMMA
   instructions per program measures the work; at the same tile, the forward, dK/dV and dQ at
   head dim d issue (d rounded up to 16) / 64 times the instructions of head dim 64, within 10%
   (padded to a power of two it was 2.0 for all of them). On sm_90 the kernels at these head dims
   still use warpgroup MMA, and nothing spills on either.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastvit.kernels import _attention_common as C
from fastvit.kernels import attention as K
from fastvit.profiling import compile_report as cr
from fastvit.profiling import head_dim_report as hdr
from tests.test_attention_kernel import _check_all, _launch, _torch_attention

CHUNKED = (72, 80, 88, 96, 104, 112)


# ----------------------------------------------------------------------------------------------
# 1. The split
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim, chunks", [
    (1, (16, 0, 0)), (16, (16, 0, 0)), (24, (32, 0, 0)), (40, (32, 16, 0)), (64, (64, 0, 0)),
    (72, (64, 16, 0)), (80, (64, 16, 0)), (88, (64, 32, 0)), (104, (64, 32, 16)), (96, (64, 32, 0)), (112, (64, 32, 16)),
    (128, (128, 0, 0)), (176, (128, 32, 16)), (192, (128, 64, 0)), (200, (128, 64, 16)),
    (240, (256, 0, 0)), (256, (256, 0, 0)),
])
def test_head_dim_chunks(head_dim, chunks):
    assert C.head_dim_chunks(head_dim) == chunks


def test_every_head_dim_is_covered_by_powers_of_two_of_at_least_16():
    for d in range(1, C.MAX_HEAD_DIM + 1):
        chunks = [c for c in C.head_dim_chunks(d) if c]
        assert all(c >= 16 and c & (c - 1) == 0 for c in chunks), d
        assert chunks == sorted(chunks, reverse=True)
        assert d <= sum(chunks) <= max(-(-d // 16) * 16, 16) or sum(chunks) == C.block_d(d), d
    with pytest.raises(ValueError, match="head_dim"):
        C.head_dim_chunks(257)


def test_stride_align():
    qkv = torch.empty(2, 10, 3, 4, 72).permute(2, 0, 3, 1, 4)  # packed qkv: head stride 72
    assert C.stride_align(*qkv) == 8
    assert C.stride_align(torch.empty(2, 4, 10, 64)) == 1  # all multiples of 16: Triton sees it
    assert C.stride_align(torch.empty(2, 4, 10, 20)) == 1  # not multiples of 8: no claim


# ----------------------------------------------------------------------------------------------
# 2. Numerics
# ----------------------------------------------------------------------------------------------

CASES = ([(torch.float32, 1, 2, 65, 65, d) for d in CHUNKED] + [(torch.float32, 1, 1, 197, 197, 88),
                                                                  (torch.float32, 2, 1, 1, 1, 112)]
         + [(dt, 1, 2, 65, 65, d) for dt in (torch.float16, torch.bfloat16) for d in CHUNKED]
         + [(torch.float16, 1, 1, 197, 197, 112), (torch.bfloat16, 1, 1, 197, 65, 72)])


@pytest.mark.parametrize("dtype,B,H,n_q,n_k,D", CASES)
def test_chunked_head_dims_match_float64(dtype, B, H, n_q, n_k, D, device):
    q, k, v = (torch.randn(B, H, n, D, device=device).to(dtype) for n in (n_q, n_k, n_k))
    dout = torch.randn(B, H, n_q, D, device=device).to(dtype)
    scale = 1.0 / math.sqrt(D)
    got = _launch(q, k, v, dout, scale)
    lowp = None if dtype == torch.float32 else _torch_attention(q, k, v, dout, scale, dtype=dtype)
    _check_all(got, _torch_attention(q, k, v, dout, scale), dtype, lowp)


@pytest.mark.parametrize("dtype,D", [(torch.float16, 72), (torch.bfloat16, 88)])
def test_packed_qkv_at_head_dims_that_are_multiples_of_8(dtype, D, device):
    """Views of one (B, N, 3, H, D) buffer: every stride a multiple of 8, the head stride not of
    16, so the kernels run with STRIDE_ALIGN = 8 (asserted), and must still be right."""
    B, N, H = 1, 65, 2
    qkv = torch.randn(B, N, 3, H, D, device=device).to(dtype).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    assert C.stride_align(q, k, v) == 8
    dout = torch.randn(B, H, N, D, device=device).to(dtype)
    got = _launch(q, k, v, dout, D ** -0.5)
    lowp = _torch_attention(q, k, v, dout, D ** -0.5, dtype=dtype)
    _check_all(got, _torch_attention(q, k, v, dout, D ** -0.5), dtype, lowp)


def test_chunked_head_dim_with_dropout(device):
    B, H, N, D, p = 1, 2, 65, 88, 0.25
    q, k, v, dout = (torch.randn(B, H, N, D, device=device) for _ in range(4))
    keep = K.attention_dropout_mask(B, H, N, N, p, 123, device=device)
    got = _launch(q, k, v, dout, D ** -0.5, p=p, seed=123)
    _check_all(got, _torch_attention(q, k, v, dout, D ** -0.5, keep=keep, p=p), torch.float32)


# ----------------------------------------------------------------------------------------------
# 3. The compiled code
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaling():
    specs = hdr.specs("sm_80")
    return hdr.rows(cr.report(specs, ["sm_80"])), cr.report(hdr.specs("sm_90"), ["sm_90"])


def test_instruction_ratio_follows_the_chunked_head_dim_on_sm80(scaling):
    rows, _ = scaling
    assert {(r["kernel"], r["head_dim"]) for r in rows} == {(k, d) for k in ("fwd", "dkdv", "dq")
                                                           for d in hdr.HEAD_DIMS}
    for r in rows:
        where = f"{r['kernel']} d{r['head_dim']}: {r['matrix_instructions']} HMMA"
        assert r["matrix_instructions"] > 0, where
        expected = -(-r["head_dim"] // 16) * 16 / 64
        assert r["ratio_measured"] == pytest.approx(expected, rel=0.10), where
        if r["head_dim"] != 64:  # what padding to 128 issued
            assert r["ratio_padded_model"] == 2.0 and r["ratio_measured"] < 1.9, where
        assert r["spill_bytes"] == 0, where
    # The compile report's table (fastvit compile-report prints it; --json has the rows).
    table = hdr.format_markdown(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| sm_80 | fwd | 64 |")


def test_sm90_keeps_warpgroup_mma_at_chunked_head_dims(scaling):
    _, reports = scaling
    assert {r.head_dim for r in reports} == set(hdr.HEAD_DIMS)
    for r in reports:
        assert r.spill_bytes == 0, f"{r.name}: {r.spill_bytes} B spilled"
        rows = r.config["BLOCK_N"] if r.kernel == "_attn_bwd_dkdv" else r.config["BLOCK_M"]
        if rows >= 64:
            assert r.hgmma > 0, f"{r.name}: no HGMMA on sm_90 ({r.matrix_instructions})"
