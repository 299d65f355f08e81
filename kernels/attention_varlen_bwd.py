"""Backward of the varlen (packed) attention (``kernels/attention_varlen.py``): kernels, launcher.

  ``_varlen_bwd_dkdv``  dK, dV per (key block of one sequence, head), over that sequence's queries.
  ``_varlen_bwd_dq``    dQ per (query block of one sequence, head), over that sequence's keys.

The delta pass (rowsum(dO * O) - dLse) is per token, so it is the dense backward's
``_attn_bwd_preprocess`` on the packed tensors read as a batch of one. P is recomputed from the
saved lse and the dropout mask from its seed; programs own the rows they write (no atomics), so
gradients are bitwise reproducible. Programs find their (sequence, block) in the forward's block
table, as the forward does; head dims are split into power-of-two chunks as in the dense kernels
(``kernels/_attention_common.py``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._attention_common import (LOG2E, _cast, _dot_rows_t, _dropout_keep, _hint_strides, _load_chunk, _store_chunk,
                                check_dropout, chunk_constexprs, dot_kernel_specs, stride_align, tuned,
                                unit_last_stride)
from ._checks import require_out
from ._interpret import dot
from ._attention_delta import _attn_bwd_preprocess, _preprocess_block
from .attention_varlen import (INDEX_POINTERS, _base, _program_span, check_packed, launch, launch_args,
                               varlen_configs, varlen_prune)

__all__ = ["varlen_attention_bwd", "aot_specs"]


@triton.jit
def _varlen_bwd_dkdv(
    Q, K, V, DOut, Lse, Delta, DK, DV, CuSeqlens, Table,
    sm_scale, seed, dropout_p,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    table_cols, T, S,
    N_Q_KEY, N_K_KEY,  # autotuning buckets; unused in the body
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,  # head-dim chunks (0: absent)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr, STRIDE_ALIGN: tl.constexpr,
):
    _, stride_qh, stride_qt = _hint_strides(0, stride_qh, stride_qt, STRIDE_ALIGN)
    _, stride_kh, stride_kt = _hint_strides(0, stride_kh, stride_kt, STRIDE_ALIGN)
    _, stride_vh, stride_vt = _hint_strides(0, stride_vh, stride_vt, STRIDE_ALIGN)
    _, stride_doh, stride_dot = _hint_strides(0, stride_doh, stride_dot, STRIDE_ALIGN)
    _, stride_dkh, stride_dkt = _hint_strides(0, stride_dkh, stride_dkt, STRIDE_ALIGN)
    _, stride_dvh, stride_dvt = _hint_strides(0, stride_dvh, stride_dvt, STRIDE_ALIGN)
    # Transposed tiles (keys x queries), as the dense dK/dV: dV += P_drop^T dO, dK += dS^T Q;
    # per head-dim chunk c resident k_c, v_c, dk_c, dv_c, streamed q_c, dO_c.
    start_n, lo, hi, h = _program_span(Table, CuSeqlens, table_cols, T, S, BLOCK_N)
    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < hi
    k_base = _base(K, h, stride_kh, start_n, stride_kt)
    v_base = _base(V, h, stride_vh, start_n, stride_vt)
    k0 = _load_chunk(k_base, cols, stride_kt, mask_n, 0, BLOCK_D, HEAD_DIM)
    v0 = _load_chunk(v_base, cols, stride_vt, mask_n, 0, BLOCK_D, HEAD_DIM)
    dk0 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv0 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if D1 > 0:
        k1 = _load_chunk(k_base, cols, stride_kt, mask_n, BLOCK_D, D1, HEAD_DIM)
        v1 = _load_chunk(v_base, cols, stride_vt, mask_n, BLOCK_D, D1, HEAD_DIM)
        dk1 = tl.zeros([BLOCK_N, D1], tl.float32)
        dv1 = tl.zeros([BLOCK_N, D1], tl.float32)
    if D2 > 0:
        k2 = _load_chunk(k_base, cols, stride_kt, mask_n, BLOCK_D + D1, D2, HEAD_DIM)
        v2 = _load_chunk(v_base, cols, stride_vt, mask_n, BLOCK_D + D1, D2, HEAD_DIM)
        dk2 = tl.zeros([BLOCK_N, D2], tl.float32)
        dv2 = tl.zeros([BLOCK_N, D2], tl.float32)
    q_base = _base(Q, h, stride_qh, lo, stride_qt)
    do_base = _base(DOut, h, stride_doh, lo, stride_dot)
    qk_scale = sm_scale * LOG2E
    if DROPOUT:
        drop_scale = 1.0 / (1.0 - dropout_p)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < hi
        q0 = _load_chunk(q_base, offs_m, stride_qt, mask_m, 0, BLOCK_D, HEAD_DIM)
        do0 = _load_chunk(do_base, offs_m, stride_dot, mask_m, 0, BLOCK_D, HEAD_DIM)
        if D1 > 0:
            q1 = _load_chunk(q_base, offs_m, stride_qt, mask_m, BLOCK_D, D1, HEAD_DIM)
            do1 = _load_chunk(do_base, offs_m, stride_dot, mask_m, BLOCK_D, D1, HEAD_DIM)
        if D2 > 0:
            q2 = _load_chunk(q_base, offs_m, stride_qt, mask_m, BLOCK_D + D1, D2, HEAD_DIM)
            do2 = _load_chunk(do_base, offs_m, stride_dot, mask_m, BLOCK_D + D1, D2, HEAD_DIM)
        # lse = +inf on rows past the sequence makes their probabilities exactly 0.
        lse2 = tl.load(Lse + h * T + rows, mask=mask_m, other=float("inf")) * LOG2E
        delta = tl.load(Delta + h * T + rows, mask=mask_m, other=0.0)
        # S^T to P^T before dP^T is started: one score-sized fp32 tile live at a time, not two.
        sT = dot(k0, tl.trans(q0), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), INPUT_PRECISION)
        if D1 > 0:
            sT = dot(k1, tl.trans(q1), sT, INPUT_PRECISION)
        if D2 > 0:
            sT = dot(k2, tl.trans(q2), sT, INPUT_PRECISION)
        pT = tl.math.exp2(sT * qk_scale - lse2[None, :])
        dpT = dot(v0, tl.trans(do0), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), INPUT_PRECISION)
        if D1 > 0:
            dpT = dot(v1, tl.trans(do1), dpT, INPUT_PRECISION)
        if D2 > 0:
            dpT = dot(v2, tl.trans(do2), dpT, INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, h, T, T, rows[None, :], offs_n[:, None])
            p_dv = _cast(tl.where(keep, pT * drop_scale, 0.0), do0.dtype)
            dpT = tl.where(keep, dpT * drop_scale, 0.0)
        else:
            p_dv = _cast(pT, do0.dtype)
        # dV and dK interleaved per chunk: with all of dV's dots first, ptxas spilled 8 B at head
        # dim 80 with dropout (sm_80 and sm_90; tests/test_varlen_compile.py).
        dsT = _cast(pT * (dpT - delta[None, :]), q0.dtype)
        dv0 = dot(p_dv, do0, dv0, INPUT_PRECISION)
        dk0 = dot(dsT, q0, dk0, INPUT_PRECISION)
        if D1 > 0:
            dv1 = dot(p_dv, do1, dv1, INPUT_PRECISION)
            dk1 = dot(dsT, q1, dk1, INPUT_PRECISION)
        if D2 > 0:
            dv2 = dot(p_dv, do2, dv2, INPUT_PRECISION)
            dk2 = dot(dsT, q2, dk2, INPUT_PRECISION)
        q_base += BLOCK_M * stride_qt
        do_base += BLOCK_M * stride_dot
    dk_base = _base(DK, h, stride_dkh, start_n, stride_dkt)
    dv_base = _base(DV, h, stride_dvh, start_n, stride_dvt)
    _store_chunk(dk_base, cols, stride_dkt, mask_n, dk0 * sm_scale, 0, BLOCK_D, HEAD_DIM)
    _store_chunk(dv_base, cols, stride_dvt, mask_n, dv0, 0, BLOCK_D, HEAD_DIM)
    if D1 > 0:
        _store_chunk(dk_base, cols, stride_dkt, mask_n, dk1 * sm_scale, BLOCK_D, D1, HEAD_DIM)
        _store_chunk(dv_base, cols, stride_dvt, mask_n, dv1, BLOCK_D, D1, HEAD_DIM)
    if D2 > 0:
        _store_chunk(dk_base, cols, stride_dkt, mask_n, dk2 * sm_scale, BLOCK_D + D1, D2, HEAD_DIM)
        _store_chunk(dv_base, cols, stride_dvt, mask_n, dv2, BLOCK_D + D1, D2, HEAD_DIM)


@triton.jit
def _varlen_bwd_dq(
    Q, K, V, DOut, Lse, Delta, DQ, CuSeqlens, Table,
    sm_scale, seed, dropout_p,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh,
    table_cols, T, S,
    N_Q_KEY, N_K_KEY,  # autotuning buckets; unused in the body
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,  # head-dim chunks (0: absent)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr, STRIDE_ALIGN: tl.constexpr,
):
    _, stride_qh, stride_qt = _hint_strides(0, stride_qh, stride_qt, STRIDE_ALIGN)
    _, stride_kh, stride_kt = _hint_strides(0, stride_kh, stride_kt, STRIDE_ALIGN)
    _, stride_vh, stride_vt = _hint_strides(0, stride_vh, stride_vt, STRIDE_ALIGN)
    _, stride_doh, stride_dot = _hint_strides(0, stride_doh, stride_dot, STRIDE_ALIGN)
    _, stride_dqh, stride_dqt = _hint_strides(0, stride_dqh, stride_dqt, STRIDE_ALIGN)
    # Per head-dim chunk c: resident q_c, dO_c and accumulator dq_c; streamed k_c, v_c.
    start_m, lo, hi, h = _program_span(Table, CuSeqlens, table_cols, T, S, BLOCK_M)
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < hi
    q_base = _base(Q, h, stride_qh, start_m, stride_qt)
    do_base = _base(DOut, h, stride_doh, start_m, stride_dot)
    q0 = _load_chunk(q_base, rows, stride_qt, mask_m, 0, BLOCK_D, HEAD_DIM)
    do0 = _load_chunk(do_base, rows, stride_dot, mask_m, 0, BLOCK_D, HEAD_DIM)
    dq0 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if D1 > 0:
        q1 = _load_chunk(q_base, rows, stride_qt, mask_m, BLOCK_D, D1, HEAD_DIM)
        do1 = _load_chunk(do_base, rows, stride_dot, mask_m, BLOCK_D, D1, HEAD_DIM)
        dq1 = tl.zeros([BLOCK_M, D1], tl.float32)
    if D2 > 0:
        q2 = _load_chunk(q_base, rows, stride_qt, mask_m, BLOCK_D + D1, D2, HEAD_DIM)
        do2 = _load_chunk(do_base, rows, stride_dot, mask_m, BLOCK_D + D1, D2, HEAD_DIM)
        dq2 = tl.zeros([BLOCK_M, D2], tl.float32)
    lse2 = tl.load(Lse + h * T + offs_m, mask=mask_m, other=0.0) * LOG2E
    delta = tl.load(Delta + h * T + offs_m, mask=mask_m, other=0.0)
    k_base = _base(K, h, stride_kh, lo, stride_kt)
    v_base = _base(V, h, stride_vh, lo, stride_vt)
    qk_scale = sm_scale * LOG2E
    if DROPOUT:
        drop_scale = 1.0 / (1.0 - dropout_p)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < hi
        k0 = _load_chunk(k_base, offs_n, stride_kt, mask_n, 0, BLOCK_D, HEAD_DIM)
        s = dot(q0, tl.trans(k0), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION)
        if D1 > 0:
            k1 = _load_chunk(k_base, offs_n, stride_kt, mask_n, BLOCK_D, D1, HEAD_DIM)
            s = dot(q1, tl.trans(k1), s, INPUT_PRECISION)
        if D2 > 0:
            k2 = _load_chunk(k_base, offs_n, stride_kt, mask_n, BLOCK_D + D1, D2, HEAD_DIM)
            s = dot(q2, tl.trans(k2), s, INPUT_PRECISION)
        # Keys past the sequence were loaded as zeros (score 0, not -inf): zero them here.
        p = tl.where(mask_n[None, :], tl.math.exp2(s * qk_scale - lse2[:, None]), 0.0)
        # dO v^T after S is consumed (one score-sized tile live); v is used once per chunk.
        dp = _dot_rows_t(do0, v_base, offs_n, stride_vt, mask_n, 0, BLOCK_D, HEAD_DIM,
                         tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION)
        if D1 > 0:
            dp = _dot_rows_t(do1, v_base, offs_n, stride_vt, mask_n, BLOCK_D, D1, HEAD_DIM, dp, INPUT_PRECISION)
        if D2 > 0:
            dp = _dot_rows_t(do2, v_base, offs_n, stride_vt, mask_n, BLOCK_D + D1, D2, HEAD_DIM, dp,
                             INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, h, T, T, offs_m[:, None], cols[None, :])
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = _cast(p * (dp - delta[:, None]), k0.dtype)
        dq0 = dot(ds, k0, dq0, INPUT_PRECISION)
        if D1 > 0:
            dq1 = dot(ds, k1, dq1, INPUT_PRECISION)
        if D2 > 0:
            dq2 = dot(ds, k2, dq2, INPUT_PRECISION)
        k_base += BLOCK_N * stride_kt
        v_base += BLOCK_N * stride_vt
    dq_base = _base(DQ, h, stride_dqh, start_m, stride_dqt)
    _store_chunk(dq_base, rows, stride_dqt, mask_m, dq0 * sm_scale, 0, BLOCK_D, HEAD_DIM)
    if D1 > 0:
        _store_chunk(dq_base, rows, stride_dqt, mask_m, dq1 * sm_scale, BLOCK_D, D1, HEAD_DIM)
    if D2 > 0:
        _store_chunk(dq_base, rows, stride_dqt, mask_m, dq2 * sm_scale, BLOCK_D + D1, D2, HEAD_DIM)


# The dense kernels' candidates and filter, less the measured exceptions (attention_varlen.py).
_varlen_bwd_dkdv_tuned = tuned(_varlen_bwd_dkdv, "dkdv", varlen_prune("dkdv"))
_varlen_bwd_dq_tuned = tuned(_varlen_bwd_dq, "dq", varlen_prune("dq"))


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
    check_packed(q, k, v, cu_seqlens, table)
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
        **chunk_constexprs(D), BLOCK_M=pre_block, HAS_DLSE=dlse is not None,
        STRIDE_ALIGN=stride_align(out, dout), num_warps=4)
    common = dict(launch_args(q, k, v, cu_seqlens, table, sm_scale, seed, dropout_p, max_seqlen, dout, dq, dk, dv),
                  DOut=dout, Lse=lse, Delta=delta, stride_dot=dout.stride(0), stride_doh=dout.stride(1))
    S = cu_seqlens.numel() - 1
    launch(_varlen_bwd_dkdv_tuned, "BLOCK_N", T, S, H, dict(
        common, DK=dk, DV=dv, stride_dkt=dk.stride(0), stride_dkh=dk.stride(1),
        stride_dvt=dv.stride(0), stride_dvh=dv.stride(1)))
    launch(_varlen_bwd_dq_tuned, "BLOCK_M", T, S, H, dict(common, DQ=dq, stride_dqt=dq.stride(0),
                                                           stride_dqh=dq.stride(1)))
    return dq, dk, dv


def aot_specs(head_dims=(64, 80, 128), dtypes=(torch.float16, torch.bfloat16), dropout=(False, True)) -> list:
    """dK/dV and dQ in every configuration the autotuner may pick (``attention_varlen.aot_specs``
    adds the forward and the table builder)."""
    both = {"Q": None, "K": None, "V": None, "DOut": None, "Lse": torch.float32, "Delta": torch.float32,
            **INDEX_POINTERS}
    return (dot_kernel_specs("dkdv", _varlen_bwd_dkdv, {**both, "DK": None, "DV": None}, dtypes, head_dims, dropout,
                             configs=varlen_configs)
            + dot_kernel_specs("dq", _varlen_bwd_dq, {**both, "DQ": None}, dtypes, head_dims, dropout,
                               configs=varlen_configs))
