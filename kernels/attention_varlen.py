"""Variable-length (packed) self-attention in Triton: forward, backward and launchers.

Tokens of S sequences (images of different sizes) are packed along one axis: q, k, v are
(T, H, D) with a unit last stride (views of a packed qkv Linear output work by strides), and
``cu_seqlens`` (S+1 int32, 0 = cu[0] < cu[1] < ... < cu[S] = T) says where each sequence
starts. Each sequence attends only to itself; no padding exists anywhere, so none is computed.

Programs and sequences. A program owns one block of BLOCK rows of one sequence and one head.
The (sequence, block) of each program comes from a block table that ``_varlen_block_table``
builds on the device in one launch, from cu_seqlens alone (no host synchronisation): for each
block size the autotuner may pick (16, 32, 64, 128; the size is only known once a config is
chosen, so all four rows are built, a few KB), entry p holds the sequence of the p-th block in
packed order and the block's first token. The grid is sized from shapes alone: there are at
most (T + S*(BLOCK-1)) // BLOCK blocks in all (each sequence wastes less than one block), so
a few surplus programs (fewer than S per head) find sequence -1 in the table, loop zero times
and store nothing. ``max_seqlen`` only picks the autotuning bucket: results never depend on it.

Whatever cu_seqlens holds (its values are not checked on a GPU, which would need a host read),
every index is clamped to [0, T], so a bad table cannot read or write out of bounds.

Kernels here:
  ``_varlen_block_table``  the table, one program per (BLOCK_P entries, block size).
  ``_varlen_fwd``          online softmax per (query block, head); out and lse (H, T) fp32.
  ``_varlen_bwd_dkdv``     dK, dV per (key block, head) over the sequence's queries.
  ``_varlen_bwd_dq``       dQ per (query block, head) over the sequence's keys.
The delta pass is the dense backward's ``_attn_bwd_preprocess`` (it is per token: a packed
(T, H, D) tensor is a batch of one). Dropout reuses the dense kernels' counter, keyed on
(seed, head, global query token, global key token), so one sequence alone draws exactly the
dense kernel's mask, and ``attention_dropout_mask(1, H, T, T, p, seed)`` holds the varlen mask
on its block diagonal.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _configs
from ._aot import aot_spec
from ._attention_common import (LN2, LOG2E, _cast, _dropout_keep, block_d, check_dropout, dot_kernel_specs,
                                tuned, unit_last_stride)
from ._checks import require_dtype, require_out, require_tensor
from ._interpret import dot, input_precision
from .attention_bwd import _attn_bwd_preprocess, _preprocess_block

__all__ = ["varlen_block_table", "varlen_attention_fwd", "varlen_attention_bwd", "aot_specs", "TABLE_BLOCKS"]

# The block sizes the attention configs use along the token axis (_configs.ATTENTION_CONFIGS),
# one table row each; row r is for 16 << r.
TABLE_BLOCKS = (16, 32, 64, 128)
_TABLE_BLOCK_P = 64
_TABLE_BLOCK_S = 64


def table_columns(total: int, num_seqs: int) -> int:
    """Entries per table row: the bound on the number of 16-row blocks (larger blocks need fewer)."""
    return (total + num_seqs * (TABLE_BLOCKS[0] - 1)) // TABLE_BLOCKS[0]


@triton.jit
def _varlen_block_table(CuSeqlens, Table, S, T, table_cols,
                        BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
    # Entry p of row r: the sequence whose blocks of 16 << r rows contain the p-th block, i.e.
    # the number of sequences whose blocks all come before p, found by counting (no search loop).
    r = tl.program_id(1)
    bm = 16 << r
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    count = tl.zeros([BLOCK_P], tl.int32)
    first = tl.zeros([BLOCK_P], tl.int32)  # the first block of that sequence
    carry = 0
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask_s = offs_s < S
        lo = tl.minimum(tl.maximum(tl.load(CuSeqlens + offs_s, mask=mask_s, other=0), 0), T)
        hi = tl.minimum(tl.maximum(tl.load(CuSeqlens + offs_s + 1, mask=mask_s, other=0), lo), T)
        nblk = tl.where(mask_s, (hi - lo + bm - 1) // bm, 0)
        ends = carry + tl.cumsum(nblk, 0)
        before = (ends[None, :] <= offs_p[:, None]) & mask_s[None, :]
        count += tl.sum(before.to(tl.int32), 1)
        first = tl.maximum(first, tl.max(tl.where(before, ends[None, :], 0), 1))
        carry += tl.sum(nblk, 0)
    valid = offs_p < carry
    seq_lo = tl.minimum(tl.maximum(tl.load(CuSeqlens + tl.minimum(count, S - 1)), 0), T)
    row = Table + r * 2 * table_cols
    store = offs_p < table_cols
    tl.store(row + offs_p, tl.where(valid, count, -1), mask=store)
    tl.store(row + table_cols + offs_p, tl.where(valid, seq_lo + (offs_p - first) * bm, 0), mask=store)


@triton.jit
def _program_span(Table, CuSeqlens, table_cols, T, S, BLOCK: tl.constexpr):
    """(first token of this program's block, its sequence's [lo, hi) token range, head).
    Surplus programs get lo = hi: their loops run zero times and their stores are masked."""
    ROW: tl.constexpr = (BLOCK >= 32) + (BLOCK >= 64) + (BLOCK >= 128)
    n_prog = (T + S * (BLOCK - 1)) // BLOCK
    pid = tl.program_id(0)
    p = pid % n_prog
    row = Table + ROW * 2 * table_cols
    seq = tl.load(row + p)
    start = tl.load(row + table_cols + p)
    seq_c = tl.maximum(seq, 0)
    lo = tl.minimum(tl.maximum(tl.load(CuSeqlens + seq_c), 0), T)
    hi = tl.minimum(tl.maximum(tl.load(CuSeqlens + seq_c + 1), lo), T)
    hi = tl.where(seq >= 0, hi, lo)
    return tl.minimum(tl.maximum(start, lo), hi), lo, hi, (pid // n_prog).to(tl.int64)


@triton.jit
def _rows(Base, h, stride_h, stride_t, start, offs, offs_d):
    """Pointers to tokens start + offs of head h: int64 base, int32 offsets inside the tile."""
    return Base + h * stride_h + start.to(tl.int64) * stride_t + offs[:, None] * stride_t + offs_d[None, :]


@triton.jit
def _varlen_fwd(
    Q, K, V, Out, Lse, CuSeqlens, Table,
    sm_scale, seed, dropout_p,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    table_cols, T, S,
    N_Q_KEY, N_K_KEY,  # autotuning buckets (next power of two of max_seqlen); unused in the body
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    start_m, lo, hi, h = _program_span(Table, CuSeqlens, table_cols, T, S, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < hi  # the last block of a sequence stops at its end, not at T
    mask_d = offs_d < HEAD_DIM
    q = tl.load(_rows(Q, h, stride_qh, stride_qt, start_m, tl.arange(0, BLOCK_M), offs_d),
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    k_base = K + h * stride_kh + lo.to(tl.int64) * stride_kt
    v_base = V + h * stride_vh + lo.to(tl.int64) * stride_vt
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < hi
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        s = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block holds a key of the sequence
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, h, T, T, offs_m[:, None], cols[None, :])
            p = tl.where(keep, p, 0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = dot(_cast(p, v.dtype), v, acc, INPUT_PRECISION)
        m_i = m_new
        k_base += BLOCK_N * stride_kt
        v_base += BLOCK_N * stride_vt
    # l_i >= 1 on every row a program stores; surplus programs (no keys) divide by 1, not 0.
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    acc = acc / l_i[:, None]
    if DROPOUT:
        acc = acc * (1.0 / (1.0 - dropout_p))
    o_ptrs = _rows(Out, h, stride_oh, stride_ot, start_m, tl.arange(0, BLOCK_M), offs_d)
    tl.store(o_ptrs, _cast(acc, Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(Lse + h * T + offs_m, (m_i + tl.math.log2(l_i)) * LN2, mask=mask_m)


@triton.jit
def _varlen_bwd_dkdv(
    Q, K, V, DOut, Lse, Delta, DK, DV, CuSeqlens, Table,
    sm_scale, seed, dropout_p,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    table_cols, T, S,
    N_Q_KEY, N_K_KEY,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # Transposed tiles (keys x queries), as the dense dK/dV: dV += P_drop^T dO, dK += dS^T Q.
    start_n, lo, hi, h = _program_span(Table, CuSeqlens, table_cols, T, S, BLOCK_N)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    kv_mask = (offs_n < hi)[:, None] & mask_d[None, :]
    k = tl.load(_rows(K, h, stride_kh, stride_kt, start_n, tl.arange(0, BLOCK_N), offs_d), mask=kv_mask, other=0.0)
    v = tl.load(_rows(V, h, stride_vh, stride_vt, start_n, tl.arange(0, BLOCK_N), offs_d), mask=kv_mask, other=0.0)
    q_base = Q + h * stride_qh + lo.to(tl.int64) * stride_qt
    do_base = DOut + h * stride_doh + lo.to(tl.int64) * stride_dot
    qk_scale = sm_scale * LOG2E
    if DROPOUT:
        drop_scale = 1.0 / (1.0 - dropout_p)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < hi
        q_mask = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=q_mask, other=0.0)
        # lse = +inf on rows past the sequence makes their probabilities exactly 0.
        lse2 = tl.load(Lse + h * T + rows, mask=mask_m, other=float("inf")) * LOG2E
        delta = tl.load(Delta + h * T + rows, mask=mask_m, other=0.0)
        sT = dot(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), INPUT_PRECISION) * qk_scale
        pT = tl.math.exp2(sT - lse2[None, :])
        dpT = dot(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, h, T, T, rows[None, :], offs_n[:, None])
            dv = dot(_cast(tl.where(keep, pT * drop_scale, 0.0), do.dtype), do, dv, INPUT_PRECISION)
            dpT = tl.where(keep, dpT * drop_scale, 0.0)
        else:
            dv = dot(_cast(pT, do.dtype), do, dv, INPUT_PRECISION)
        dk = dot(_cast(pT * (dpT - delta[None, :]), q.dtype), q, dk, INPUT_PRECISION)
        q_base += BLOCK_M * stride_qt
        do_base += BLOCK_M * stride_dot
    dk_ptrs = _rows(DK, h, stride_dkh, stride_dkt, start_n, tl.arange(0, BLOCK_N), offs_d)
    dv_ptrs = _rows(DV, h, stride_dvh, stride_dvt, start_n, tl.arange(0, BLOCK_N), offs_d)
    tl.store(dk_ptrs, _cast(dk * sm_scale, DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, _cast(dv, DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _varlen_bwd_dq(
    Q, K, V, DOut, Lse, Delta, DQ, CuSeqlens, Table,
    sm_scale, seed, dropout_p,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh,
    table_cols, T, S,
    N_Q_KEY, N_K_KEY,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    start_m, lo, hi, h = _program_span(Table, CuSeqlens, table_cols, T, S, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < hi
    mask_d = offs_d < HEAD_DIM
    q_mask = mask_m[:, None] & mask_d[None, :]
    q = tl.load(_rows(Q, h, stride_qh, stride_qt, start_m, tl.arange(0, BLOCK_M), offs_d), mask=q_mask, other=0.0)
    do = tl.load(_rows(DOut, h, stride_doh, stride_dot, start_m, tl.arange(0, BLOCK_M), offs_d), mask=q_mask,
                 other=0.0)
    lse2 = tl.load(Lse + h * T + offs_m, mask=mask_m, other=0.0) * LOG2E
    delta = tl.load(Delta + h * T + offs_m, mask=mask_m, other=0.0)
    k_base = K + h * stride_kh + lo.to(tl.int64) * stride_kt
    v_base = V + h * stride_vh + lo.to(tl.int64) * stride_vt
    qk_scale = sm_scale * LOG2E
    if DROPOUT:
        drop_scale = 1.0 / (1.0 - dropout_p)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < hi
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        s = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION) * qk_scale
        # Keys past the sequence were loaded as zeros (score 0, not -inf): zero them here.
        p = tl.where(mask_n[None, :], tl.math.exp2(s - lse2[:, None]), 0.0)
        dp = dot(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, h, T, T, offs_m[:, None], cols[None, :])
            dp = tl.where(keep, dp * drop_scale, 0.0)
        dq = dot(_cast(p * (dp - delta[:, None]), k.dtype), k, dq, INPUT_PRECISION)
        k_base += BLOCK_N * stride_kt
        v_base += BLOCK_N * stride_vt
    dq_ptrs = _rows(DQ, h, stride_dqh, stride_dqt, start_m, tl.arange(0, BLOCK_M), offs_d)
    tl.store(dq_ptrs, _cast(dq * sm_scale, DQ.dtype.element_ty), mask=q_mask)


# The dense kernels' candidates and named prune filters apply unchanged: the tiles, the
# registers they hold and the shared memory they stream are the same; only addressing differs.
_varlen_fwd_tuned = tuned(_varlen_fwd, "fwd", _configs.prune_attention_fwd_configs)
_varlen_bwd_dkdv_tuned = tuned(_varlen_bwd_dkdv, "dkdv", _configs.prune_attention_dkdv_configs)
_varlen_bwd_dq_tuned = tuned(_varlen_bwd_dq, "dq", _configs.prune_attention_dq_configs)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _check_packed(q, k, v, cu_seqlens, table=None) -> None:
    """Cheap invariants (shapes, dtypes, devices); cu_seqlens' values are the op layer's job."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(t, name)
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D (T, H, D), got shape {tuple(t.shape)}")
        require_dtype(t, name, what="the Triton varlen attention kernels")
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"q, k and v must share shape, dtype and device, got {name} {t.dtype} "
                             f"{tuple(t.shape)} on {t.device} and q {q.dtype} {tuple(q.shape)} on {q.device}")
    if not 1 <= q.shape[2] <= 256:
        raise ValueError(f"head_dim must be in [1, 256], got {q.shape[2]}")
    require_tensor(cu_seqlens, "cu_seqlens")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens must be a 1-D int32 tensor of length >= 2 on {q.device}, got "
                         f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)} on {cu_seqlens.device}")
    if table is not None:
        shape = (len(TABLE_BLOCKS), 2, table_columns(q.shape[0], cu_seqlens.numel() - 1))
        require_out(table, "table", shape, torch.int32, q.device)
        if not table.is_contiguous():
            raise ValueError("table must be contiguous (from varlen_block_table)")


def varlen_block_table(
    cu_seqlens: torch.Tensor,  # (S+1,) int32 on the kernels' device
    total: int,  # T, the number of packed tokens
) -> torch.Tensor:
    """(4, 2, table_columns(T, S)) int32: per block size 16 << r, each block's sequence (-1: none)
    and first token. One launch, no host synchronisation; built once per call, shared by the
    forward and the backward."""
    S = cu_seqlens.numel() - 1
    cols = table_columns(total, S)
    table = torch.empty((len(TABLE_BLOCKS), 2, cols), dtype=torch.int32, device=cu_seqlens.device)
    if cols:
        _varlen_block_table[(triton.cdiv(cols, _TABLE_BLOCK_P), len(TABLE_BLOCKS))](
            cu_seqlens, table, S, total, cols, BLOCK_P=_TABLE_BLOCK_P, BLOCK_S=_TABLE_BLOCK_S, num_warps=4)
    return table


def _launch(kernel, block: str, total: int, num_seqs: int, heads: int, args: dict) -> None:
    def grid(meta):
        return ((total + num_seqs * (meta[block] - 1)) // meta[block] * heads,)
    kernel[grid](**args)


def _common(q, k, v, cu_seqlens, table, sm_scale, seed, dropout_p, max_seqlen) -> dict:
    key = triton.next_power_of_2(max(1, int(max_seqlen)))
    return dict(
        Q=q, K=k, V=v, CuSeqlens=cu_seqlens, Table=table,
        sm_scale=float(sm_scale), seed=int(seed), dropout_p=float(dropout_p),
        stride_qt=q.stride(0), stride_qh=q.stride(1), stride_kt=k.stride(0), stride_kh=k.stride(1),
        stride_vt=v.stride(0), stride_vh=v.stride(1),
        table_cols=table.shape[2], T=q.shape[0], S=cu_seqlens.numel() - 1, N_Q_KEY=key, N_K_KEY=key,
        HEAD_DIM=q.shape[2], BLOCK_D=block_d(q.shape[2]),
        DROPOUT=dropout_p > 0.0, INPUT_PRECISION=input_precision(q.dtype),
    )


def varlen_attention_fwd(
    q: torch.Tensor,  # (T, H, D), unit last stride (copied otherwise)
    k: torch.Tensor,  # (T, H, D)
    v: torch.Tensor,  # (T, H, D)
    cu_seqlens: torch.Tensor,  # (S+1,) int32, sequence boundaries
    table: torch.Tensor,  # from varlen_block_table(cu_seqlens, T)
    *,
    max_seqlen: int,  # longest sequence: the autotuning bucket only
    sm_scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    out: torch.Tensor | None = None,  # (T, H, D) in q's dtype, unit last stride (e.g. a view of (T, H*D))
    lse: torch.Tensor | None = None,  # (H, T) fp32, contiguous
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's softmax(q k^T * sm_scale) (with dropout) v, and lse (H, T) fp32."""
    _check_packed(q, k, v, cu_seqlens, table)
    check_dropout(dropout_p, seed)
    T, H, _ = q.shape
    q, k, v = (unit_last_stride(t) for t in (q, k, v))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    require_out(out, "out", q.shape, q.dtype, q.device)
    lse = torch.empty((H, T), dtype=torch.float32, device=q.device) if lse is None else lse
    require_out(lse, "lse", (H, T), torch.float32, q.device)
    if not lse.is_contiguous():
        raise ValueError(f"lse must be contiguous, got strides {lse.stride()}")
    if T * H == 0:
        return out, lse
    _launch(_varlen_fwd_tuned, "BLOCK_M", T, cu_seqlens.numel() - 1, H, dict(
        _common(q, k, v, cu_seqlens, table, sm_scale, seed, dropout_p, max_seqlen),
        Out=out, Lse=lse, stride_ot=out.stride(0), stride_oh=out.stride(1)))
    return out, lse


def varlen_attention_bwd(
    dout: torch.Tensor,  # (T, H, D) gradient of out
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # (T, H, D) as given to the forward
    out: torch.Tensor,  # (T, H, D) from the forward
    lse: torch.Tensor,  # (H, T) fp32 from the forward
    cu_seqlens: torch.Tensor, table: torch.Tensor,  # as given to the forward
    *,
    max_seqlen: int, sm_scale: float, dropout_p: float = 0.0, seed: int = 0,  # the forward's
    dlse: torch.Tensor | None = None,  # (H, T) gradient of lse, if it was used
    dq: torch.Tensor | None = None,  # (T, H, D) outputs, unit last stride (e.g. views of one dqkv)
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv: P recomputed from lse, the dropout mask from the seed; no atomics."""
    _check_packed(q, k, v, cu_seqlens, table)
    check_dropout(dropout_p, seed)
    T, H, D = q.shape
    for name, t in (("dout", dout), ("out", out)):
        require_out(t, name, q.shape, q.dtype, q.device, unit_last_stride=False)
    require_out(lse, "lse", (H, T), torch.float32, q.device)
    if dlse is not None:
        require_out(dlse, "dlse", (H, T), dlse.dtype, q.device, unit_last_stride=False)
        dlse = dlse.float().contiguous()
    q, k, v, out, dout = (unit_last_stride(t) for t in (q, k, v, out, dout))
    lse = lse.contiguous()
    grads = []
    for name, g in (("dq", dq), ("dk", dk), ("dv", dv)):
        g = torch.empty(q.shape, dtype=q.dtype, device=q.device) if g is None else g
        grads.append(require_out(g, name, q.shape, q.dtype, q.device))
    dq, dk, dv = grads
    if T * H == 0:
        return dq, dk, dv
    delta = torch.empty((H, T), dtype=torch.float32, device=q.device)
    # Per token: the dense delta pass on a batch of one, (T, H, D) read as (1, H, T, D).
    pre_block = _preprocess_block(D)
    _attn_bwd_preprocess[(triton.cdiv(T, pre_block) * H,)](
        out, dout, dlse if dlse is not None else delta, delta,
        0, out.stride(1), out.stride(0), 0, dout.stride(1), dout.stride(0), H, T,
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=pre_block, HAS_DLSE=dlse is not None, num_warps=4)
    common = dict(_common(q, k, v, cu_seqlens, table, sm_scale, seed, dropout_p, max_seqlen),
                  DOut=dout, Lse=lse, Delta=delta, stride_dot=dout.stride(0), stride_doh=dout.stride(1))
    S = cu_seqlens.numel() - 1
    _launch(_varlen_bwd_dkdv_tuned, "BLOCK_N", T, S, H, dict(
        common, DK=dk, DV=dv, stride_dkt=dk.stride(0), stride_dkh=dk.stride(1),
        stride_dvt=dv.stride(0), stride_dvh=dv.stride(1)))
    _launch(_varlen_bwd_dq_tuned, "BLOCK_M", T, S, H, dict(common, DQ=dq, stride_dqt=dq.stride(0),
                                                            stride_dqh=dq.stride(1)))
    return dq, dk, dv


def aot_specs(head_dims=(64, 80, 128), dtypes=(torch.float16, torch.bfloat16), dropout=(False, True)) -> list:
    """Every configuration the GPU autotuner may pick for the three varlen tl.dot kernels (per
    dtype, head_dim, dropout: what ``kernels/_configs.py`` keeps), and the table builder."""
    idx = {"CuSeqlens": "i32", "Table": "i32"}
    both = {"Q": None, "K": None, "V": None, "DOut": None, "Lse": torch.float32, "Delta": torch.float32, **idx}
    specs = (dot_kernel_specs("fwd", _varlen_fwd, {"Q": None, "K": None, "V": None, "Out": None,
                                                    "Lse": torch.float32, **idx}, dtypes, head_dims, dropout)
             + dot_kernel_specs("dkdv", _varlen_bwd_dkdv, {**both, "DK": None, "DV": None}, dtypes, head_dims,
                                dropout)
             + dot_kernel_specs("dq", _varlen_bwd_dq, {**both, "DQ": None}, dtypes, head_dims, dropout))
    specs.append(aot_spec("_varlen_block_table", _varlen_block_table, pointers=idx,
                          constexprs={"BLOCK_P": _TABLE_BLOCK_P, "BLOCK_S": _TABLE_BLOCK_S}, num_warps=4, mma=False))
    return specs
