"""The first pass of the attention backward, shared by the dense (``kernels/attention_bwd.py``)
and the variable-length (``kernels/attention_varlen_bwd.py``) launchers:
``delta = rowsum(dO * O) - dLse`` per query row, fp32, over the head dim's power-of-two chunks."""
from __future__ import annotations

import triton
import triton.language as tl

from ._attention_common import _hint_strides, _load_chunk, _program_block, _slice_base, block_d, head_dim_chunks


@triton.jit
def _attn_bwd_preprocess(
    Out, DOut, DLse, Delta,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    H, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    HAS_DLSE: tl.constexpr,
    # Further head-dim chunks (0: absent), last and defaulted so that a launch with the padded
    # BLOCK_D alone (the varlen backward's) is still the single-chunk kernel.
    D1: tl.constexpr = 0, D2: tl.constexpr = 0, STRIDE_ALIGN: tl.constexpr = 1,
):
    stride_ob, stride_oh, stride_on = _hint_strides(stride_ob, stride_oh, stride_on, STRIDE_ALIGN)
    stride_dob, stride_doh, stride_don = _hint_strides(stride_dob, stride_doh, stride_don, STRIDE_ALIGN)
    # delta_i = sum_j P_ij dP_ij = rowsum(dO * O) (dropout included, since O = P_dropped V).
    # A gradient flowing into lse adds dLse_i * P_ij to dS_ij: folded in as delta - dLse.
    start_m, pid_bh, off_b, off_h = _program_block(N_Q, BLOCK_M, H)
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    mask_m = offs_m < N_Q
    o_base = _slice_base(Out, off_b, off_h, start_m, stride_ob, stride_oh, stride_on)
    do_base = _slice_base(DOut, off_b, off_h, start_m, stride_dob, stride_doh, stride_don)
    delta = _rowdot(o_base, do_base, rows, stride_on, stride_don, mask_m, 0, BLOCK_D, HEAD_DIM)
    if D1 > 0:
        delta += _rowdot(o_base, do_base, rows, stride_on, stride_don, mask_m, BLOCK_D, D1, HEAD_DIM)
    if D2 > 0:
        delta += _rowdot(o_base, do_base, rows, stride_on, stride_don, mask_m, BLOCK_D + D1, D2, HEAD_DIM)
    row_ptrs = pid_bh.to(tl.int64) * N_Q + offs_m
    if HAS_DLSE:
        delta -= tl.load(DLse + row_ptrs, mask=mask_m, other=0.0).to(tl.float32)
    tl.store(Delta + row_ptrs, delta, mask=mask_m)


@triton.jit
def _rowdot(a_base, b_base, rows, stride_a, stride_b, mask_rows, START: tl.constexpr, WIDTH: tl.constexpr,
            HEAD_DIM: tl.constexpr):
    """Per row, the fp32 sum over one head-dim chunk of a * b."""
    a = _load_chunk(a_base, rows, stride_a, mask_rows, START, WIDTH, HEAD_DIM)
    b = _load_chunk(b_base, rows, stride_b, mask_rows, START, WIDTH, HEAD_DIM)
    return tl.sum(a.to(tl.float32) * b.to(tl.float32), 1)


def _preprocess_block(head_dim: int) -> int:
    """Rows per program of the delta pass: a (rows x head dim) tile of O and dO each. 32 rows for
    head dims that are not powers of two: at 64 x (64 + 16) on 4 warps ptxas 13 (sm_100a) spills a
    register, at 32 rows it does not; the pass is memory-bound either way."""
    if head_dim > 128 or sum(head_dim_chunks(head_dim)) != block_d(head_dim):
        return 32
    return 64
