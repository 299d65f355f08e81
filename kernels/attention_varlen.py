"""Variable-length (packed) self-attention in Triton: the block table, the forward and their
launchers; the backward in ``kernels/attention_varlen_bwd.py``.

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
Head dims up to 256 in power-of-two chunks (80 = 64 + 16) with the dense kernels' helpers
(``kernels/_attention_common.py``); the tiles, and so the autotuner's candidates and prune
filters, are the dense kernels'. Dropout reuses the dense kernels' counter, keyed on
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
from ._autotune import config_key, merged_args
from ._attention_common import (LN2, LOG2E, _cast, _dot_rows, _dot_rows_t, _dropout_keep, _hint_strides, _load_chunk,
                                _store_chunk, check_dropout, chunk_constexprs, dot_kernel_specs, stride_align, tuned,
                                unit_last_stride)
from ._checks import require_dtype, require_out, require_tensor
from ._interpret import input_precision

__all__ = ["varlen_block_table", "varlen_attention_fwd", "aot_specs", "TABLE_BLOCKS", "table_columns"]

# The block sizes the attention configs use along the token axis (_configs.ATTENTION_CONFIGS),
# one table row each; row r is for 16 << r.
TABLE_BLOCKS = (16, 32, 64, 128)
_TABLE_BLOCK_P = 64
_TABLE_BLOCK_S = 64
INDEX_POINTERS = {"CuSeqlens": "i32", "Table": "i32"}  # AOT pointer types of the int32 inputs


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
    tl.static_assert((16 << ROW) == BLOCK, "the block table has rows for blocks of 16, 32, 64 and 128 only")
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
    return tl.minimum(tl.maximum(start, lo), hi), lo, hi, pid // n_prog


@triton.jit
def _base(Base, h, stride_h, start, stride_t):
    """Pointer to token ``start`` of head ``h``, in int64 (T*H*D can pass 2^31); tiles are then
    addressed from it by small int32 offsets. (Rows of lse, H*T < 2^31, are int32 offsets.)"""
    return Base + h.to(tl.int64) * stride_h + start.to(tl.int64) * stride_t


@triton.jit
def _varlen_fwd(
    Q, K, V, Out, Lse, CuSeqlens, Table,
    sm_scale, seed, dropout_p,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    table_cols, T, S,
    N_Q_KEY, N_K_KEY,  # autotuning buckets (next power of two of max_seqlen); unused in the body
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,  # head-dim chunks (0: absent)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    STRIDE_ALIGN: tl.constexpr,  # 8: every stride is a multiple of 8 (see _hint_strides)
):
    # The dense forward's online softmax and head-dim chunks (kernels/attention.py), over the
    # keys [lo, hi) of this block's sequence instead of [0, N).
    _, stride_qh, stride_qt = _hint_strides(0, stride_qh, stride_qt, STRIDE_ALIGN)
    _, stride_kh, stride_kt = _hint_strides(0, stride_kh, stride_kt, STRIDE_ALIGN)
    _, stride_vh, stride_vt = _hint_strides(0, stride_vh, stride_vt, STRIDE_ALIGN)
    _, stride_oh, stride_ot = _hint_strides(0, stride_oh, stride_ot, STRIDE_ALIGN)
    start_m, lo, hi, h = _program_span(Table, CuSeqlens, table_cols, T, S, BLOCK_M)
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < hi  # the last block of a sequence stops at its end, not at T
    q_base = _base(Q, h, stride_qh, start_m, stride_qt)
    q0 = _load_chunk(q_base, rows, stride_qt, mask_m, 0, BLOCK_D, HEAD_DIM)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if D1 > 0:
        q1 = _load_chunk(q_base, rows, stride_qt, mask_m, BLOCK_D, D1, HEAD_DIM)
        acc1 = tl.zeros([BLOCK_M, D1], tl.float32)
    if D2 > 0:
        q2 = _load_chunk(q_base, rows, stride_qt, mask_m, BLOCK_D + D1, D2, HEAD_DIM)
        acc2 = tl.zeros([BLOCK_M, D2], tl.float32)
    k_base = _base(K, h, stride_kh, lo, stride_kt)
    v_base = _base(V, h, stride_vh, lo, stride_vt)
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < hi
        s = _dot_rows_t(q0, k_base, offs_n, stride_kt, mask_n, 0, BLOCK_D, HEAD_DIM,
                        tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION)
        if D1 > 0:
            s = _dot_rows_t(q1, k_base, offs_n, stride_kt, mask_n, BLOCK_D, D1, HEAD_DIM, s, INPUT_PRECISION)
        if D2 > 0:
            s = _dot_rows_t(q2, k_base, offs_n, stride_kt, mask_n, BLOCK_D + D1, D2, HEAD_DIM, s, INPUT_PRECISION)
        s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block holds a key of the sequence
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, h, T, T, offs_m[:, None], cols[None, :])
            p = tl.where(keep, p, 0.0)
        p = _cast(p, V.dtype.element_ty)
        acc0 = _dot_rows(p, v_base, offs_n, stride_vt, mask_n, 0, BLOCK_D, HEAD_DIM, acc0 * alpha[:, None],
                         INPUT_PRECISION)
        if D1 > 0:
            acc1 = _dot_rows(p, v_base, offs_n, stride_vt, mask_n, BLOCK_D, D1, HEAD_DIM, acc1 * alpha[:, None],
                             INPUT_PRECISION)
        if D2 > 0:
            acc2 = _dot_rows(p, v_base, offs_n, stride_vt, mask_n, BLOCK_D + D1, D2, HEAD_DIM,
                             acc2 * alpha[:, None], INPUT_PRECISION)
        m_i = m_new
        k_base += BLOCK_N * stride_kt
        v_base += BLOCK_N * stride_vt
    # l_i >= 1 on every row a program stores; surplus programs (no keys) divide by 1, not 0.
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    o_base = _base(Out, h, stride_oh, start_m, stride_ot)
    _store_chunk(o_base, rows, stride_ot, mask_m, _normalise(acc0, l_i, dropout_p, DROPOUT), 0, BLOCK_D, HEAD_DIM)
    if D1 > 0:
        _store_chunk(o_base, rows, stride_ot, mask_m, _normalise(acc1, l_i, dropout_p, DROPOUT), BLOCK_D, D1,
                     HEAD_DIM)
    if D2 > 0:
        _store_chunk(o_base, rows, stride_ot, mask_m, _normalise(acc2, l_i, dropout_p, DROPOUT), BLOCK_D + D1, D2,
                     HEAD_DIM)
    tl.store(Lse + h * T + offs_m, (m_i + tl.math.log2(l_i)) * LN2, mask=mask_m)


@triton.jit
def _normalise(acc, l_i, dropout_p, DROPOUT: tl.constexpr):
    """acc / l (and the 1/(1-p) of dropout), in the dense forward's order of operations."""
    acc = acc / l_i[:, None]
    if DROPOUT:
        acc = acc * (1.0 / (1.0 - dropout_p))
    return acc


# The dense kernels' candidates and filter (the same tiles, registers and shared memory; only
# addressing differs), less one measured exception: dK/dV at 64 x 64 on 8 warps sits at the
# 255-register limit in the dense kernel at chunked head dims, and the varlen loop's bound (a
# register, where the dense kernel's is a launch parameter) makes ptxas spill it (12 bytes,
# head_dim 80 = 64 + 16, fp16, sm_80). It is left out at every chunked (non-power-of-two) width.
_SPILLS_AT_CHUNKED_WIDTHS = {"dkdv": {(64, 64, 8)}}


def varlen_configs(kernel: str, width: int, dtype, dropout: bool = False, *, family: str = "nvidia") -> list:
    """What the autotuner may pick for a varlen kernel: ``_configs.attention_configs`` less the
    exceptions above (never empty)."""
    kept = _configs.attention_configs(kernel, width, dtype, dropout, family=family)
    if width & (width - 1) == 0:
        return kept
    bad = _SPILLS_AT_CHUNKED_WIDTHS.get(kernel, set())
    return [c for c in kept if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) not in bad] or kept


def varlen_prune(kernel: str):
    """The ``early_config_prune`` of a varlen kernel: ``varlen_configs`` for the launch."""
    def prune(configs, named_args, **kwargs):
        args = merged_args(named_args, kwargs)
        keep = {config_key(c) for c in varlen_configs(kernel, _configs.attention_width(args), args["Q"].dtype,
                                                      bool(args["DROPOUT"]),
                                                      family=_configs.device_family(args["Q"].device))}
        return [c for c in configs if config_key(c) in keep]
    prune.__name__ = f"prune_varlen_{kernel}_configs"
    return prune


_varlen_fwd_tuned = tuned(_varlen_fwd, "fwd", varlen_prune("fwd"))


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def check_packed(q, k, v, cu_seqlens, table=None) -> None:
    """Cheap invariants (shapes, dtypes, devices); cu_seqlens' values are the op layer's job."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(t, name)
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D (T, H, D), got shape {tuple(t.shape)}")
        require_dtype(t, name, what="the Triton varlen attention kernels")
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"q, k and v must share shape, dtype and device, got {name} {t.dtype} "
                             f"{tuple(t.shape)} on {t.device} and q {q.dtype} {tuple(q.shape)} on {q.device}")
    if q.shape[0] * q.shape[1] >= 2**31:  # lse and delta rows are int32 offsets in the kernels
        raise ValueError(f"T * H must be below 2**31, got q of shape {tuple(q.shape)}")
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


def launch(kernel, block: str, total: int, num_seqs: int, heads: int, args: dict) -> None:
    def grid(meta):
        return ((total + num_seqs * (meta[block] - 1)) // meta[block] * heads,)
    kernel[grid](**args)


def launch_args(q, k, v, cu_seqlens, table, sm_scale, seed, dropout_p, max_seqlen, *outputs) -> dict:
    """The arguments the forward and both backward kernels share; ``outputs`` (and q, k, v) set
    STRIDE_ALIGN, so pass every tensor the kernel will address."""
    key = triton.next_power_of_2(max(1, int(max_seqlen)))
    return dict(
        Q=q, K=k, V=v, CuSeqlens=cu_seqlens, Table=table,
        sm_scale=float(sm_scale), seed=int(seed), dropout_p=float(dropout_p),
        stride_qt=q.stride(0), stride_qh=q.stride(1), stride_kt=k.stride(0), stride_kh=k.stride(1),
        stride_vt=v.stride(0), stride_vh=v.stride(1),
        table_cols=table.shape[2], T=q.shape[0], S=cu_seqlens.numel() - 1, N_Q_KEY=key, N_K_KEY=key,
        **chunk_constexprs(q.shape[2]), STRIDE_ALIGN=stride_align(q, k, v, *outputs),
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
    check_packed(q, k, v, cu_seqlens, table)
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
    launch(_varlen_fwd_tuned, "BLOCK_M", T, cu_seqlens.numel() - 1, H, dict(
        launch_args(q, k, v, cu_seqlens, table, sm_scale, seed, dropout_p, max_seqlen, out),
        Out=out, Lse=lse, stride_ot=out.stride(0), stride_oh=out.stride(1)))
    return out, lse


def aot_specs(head_dims=(64, 80, 128), dtypes=(torch.float16, torch.bfloat16), dropout=(False, True)) -> list:
    """Every configuration the GPU autotuner may pick for the three varlen tl.dot kernels (per
    dtype, head_dim, dropout: what ``kernels/_configs.py`` keeps), and the table builder."""
    from .attention_varlen_bwd import aot_specs as bwd_specs  # that module imports this one

    fwd = dot_kernel_specs("fwd", _varlen_fwd, {"Q": None, "K": None, "V": None, "Out": None,
                                                 "Lse": torch.float32, **INDEX_POINTERS}, dtypes, head_dims, dropout,
                           configs=varlen_configs)
    table = aot_spec("_varlen_block_table", _varlen_block_table, pointers=INDEX_POINTERS,
                     constexprs={"BLOCK_P": _TABLE_BLOCK_P, "BLOCK_S": _TABLE_BLOCK_S}, num_warps=4, mma=False)
    return fwd + bwd_specs(head_dims, dtypes, dropout) + [table]
