"""Backward of the fused attention (``kernels/attention.py``): kernels and launcher.

  ``_attn_bwd_preprocess``  delta = rowsum(dO * O) - dLse per row, fp32.
  ``_attn_bwd_dkdv``        one program per (key block, batch*head): dK, dV over all query blocks.
  ``_attn_bwd_dq``          one program per (query block, batch*head): dQ over all key blocks.

P is recomputed from the saved logsumexp and the dropout mask from its seed; with RoPE, q and k
are rotated again as they are loaded (``kernels/_attention_rope.py``). Every program owns
the rows it writes, so there are no atomics and two runs give bitwise-equal gradients.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _configs
from ._aot import aot_spec, dtype_tag
from ._attention_common import (
    LOG2E,
    _cast,
    _dot_rows_t,
    _dropout_keep,
    _hint_strides,
    _load_chunk,
    _program_block,
    _slice_base,
    _store_chunk,
    aligned_strides,
    check_dropout,
    check_inputs,
    chunk_constexprs,
    dot_kernel_specs,
    kernel_head_dim,
    launch,
    length_keys,
    stride_align,
    tuned,
    unit_last_stride,
)
from ._attention_rope import _load_qk, _store_dqk, rope_args
from ._attention_delta import _attn_bwd_preprocess, _preprocess_block
from ._checks import require_out
from ._interpret import dot, input_precision

__all__ = ["attention_bwd", "aot_specs"]


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DOut, Lse, Delta, DK, DV,
    Cos, Sin,  # RoPE tables (N - NUM_PREFIX, HEAD_DIM) fp32, or None (ROPE 0)
    sm_scale, seed, dropout_p,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    H, N_Q, N_K,
    NUM_PREFIX,  # tokens before the first rotated one (RoPE only)
    N_Q_KEY, N_K_KEY,  # autotuning buckets; unused in the body
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,  # head-dim chunks (0: absent)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    STRIDE_ALIGN: tl.constexpr,  # 8: every stride is a multiple of 8 (see _hint_strides)
    ROPE: tl.constexpr,  # 0 none, 1 "half", 2 "interleaved" (kernels/_attention_rope.py)
):
    stride_qb, stride_qh, stride_qn = _hint_strides(stride_qb, stride_qh, stride_qn, STRIDE_ALIGN)
    stride_kb, stride_kh, stride_kn = _hint_strides(stride_kb, stride_kh, stride_kn, STRIDE_ALIGN)
    stride_vb, stride_vh, stride_vn = _hint_strides(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
    stride_dob, stride_doh, stride_don = _hint_strides(stride_dob, stride_doh, stride_don, STRIDE_ALIGN)
    stride_dkb, stride_dkh, stride_dkn = _hint_strides(stride_dkb, stride_dkh, stride_dkn, STRIDE_ALIGN)
    stride_dvb, stride_dvh, stride_dvn = _hint_strides(stride_dvb, stride_dvh, stride_dvn, STRIDE_ALIGN)
    # Works on transposed tiles (keys x queries) so that P^T and dS^T feed tl.dot without a
    # transpose of the fp32 tiles: dV += P_drop^T dO, dK += dS^T Q. Per head-dim chunk c:
    # resident k_c, v_c and accumulators dk_c, dv_c; streamed q_c, dO_c. The chunks' dots sum
    # into one score tile (S^T) and one dP^T tile.
    start_n, pid_bh, off_b, off_h = _program_block(N_K, BLOCK_N, H)

    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < N_K

    k_base = _slice_base(K, off_b, off_h, start_n, stride_kb, stride_kh, stride_kn)
    v_base = _slice_base(V, off_b, off_h, start_n, stride_vb, stride_vh, stride_vn)
    # With RoPE, k (resident) and q (streamed) rotated as loaded, dk rotated back as stored.
    k0 = _load_qk(k_base, cols, stride_kn, mask_n, 0, BLOCK_D, HEAD_DIM, Cos, Sin, offs_n, NUM_PREFIX, ROPE)
    v0 = _load_chunk(v_base, cols, stride_vn, mask_n, 0, BLOCK_D, HEAD_DIM)
    dk0 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv0 = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if D1 > 0:
        k1 = _load_qk(k_base, cols, stride_kn, mask_n, BLOCK_D, D1, HEAD_DIM, Cos, Sin, offs_n, NUM_PREFIX, ROPE)
        v1 = _load_chunk(v_base, cols, stride_vn, mask_n, BLOCK_D, D1, HEAD_DIM)
        dk1 = tl.zeros([BLOCK_N, D1], tl.float32)
        dv1 = tl.zeros([BLOCK_N, D1], tl.float32)
    if D2 > 0:
        k2 = _load_qk(k_base, cols, stride_kn, mask_n, BLOCK_D + D1, D2, HEAD_DIM, Cos, Sin, offs_n, NUM_PREFIX,
                      ROPE)
        v2 = _load_chunk(v_base, cols, stride_vn, mask_n, BLOCK_D + D1, D2, HEAD_DIM)
        dk2 = tl.zeros([BLOCK_N, D2], tl.float32)
        dv2 = tl.zeros([BLOCK_N, D2], tl.float32)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DOut + off_b * stride_dob + off_h * stride_doh
    row_base = pid_bh.to(tl.int64) * N_Q
    qk_scale = sm_scale * LOG2E
    if DROPOUT:
        drop_scale = 1.0 / (1.0 - dropout_p)

    for start_m in range(0, N_Q, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < N_Q
        q0 = _load_qk(q_base, offs_m, stride_qn, mask_m, 0, BLOCK_D, HEAD_DIM, Cos, Sin, rows, NUM_PREFIX, ROPE)
        do0 = _load_chunk(do_base, offs_m, stride_don, mask_m, 0, BLOCK_D, HEAD_DIM)
        if D1 > 0:
            q1 = _load_qk(q_base, offs_m, stride_qn, mask_m, BLOCK_D, D1, HEAD_DIM, Cos, Sin, rows, NUM_PREFIX, ROPE)
            do1 = _load_chunk(do_base, offs_m, stride_don, mask_m, BLOCK_D, D1, HEAD_DIM)
        if D2 > 0:
            q2 = _load_qk(q_base, offs_m, stride_qn, mask_m, BLOCK_D + D1, D2, HEAD_DIM, Cos, Sin, rows, NUM_PREFIX,
                          ROPE)
            do2 = _load_chunk(do_base, offs_m, stride_don, mask_m, BLOCK_D + D1, D2, HEAD_DIM)
        # lse = +inf on padded query rows makes their probabilities exactly 0.
        lse2 = tl.load(Lse + row_base + rows, mask=mask_m, other=float("inf")) * LOG2E
        delta = tl.load(Delta + row_base + rows, mask=mask_m, other=0.0)

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
            keep = _dropout_keep(seed, dropout_p, pid_bh, N_Q, N_K, rows[None, :], offs_n[:, None])
            p_dv = _cast(tl.where(keep, pT * drop_scale, 0.0), do0.dtype)
            dpT = tl.where(keep, dpT * drop_scale, 0.0)
        else:
            p_dv = _cast(pT, do0.dtype)
        dv0 = dot(p_dv, do0, dv0, INPUT_PRECISION)
        if D1 > 0:
            dv1 = dot(p_dv, do1, dv1, INPUT_PRECISION)
        if D2 > 0:
            dv2 = dot(p_dv, do2, dv2, INPUT_PRECISION)
        dsT = _cast(pT * (dpT - delta[None, :]), q0.dtype)
        dk0 = dot(dsT, q0, dk0, INPUT_PRECISION)
        if D1 > 0:
            dk1 = dot(dsT, q1, dk1, INPUT_PRECISION)
        if D2 > 0:
            dk2 = dot(dsT, q2, dk2, INPUT_PRECISION)
        q_base += BLOCK_M * stride_qn
        do_base += BLOCK_M * stride_don

    dk_base = _slice_base(DK, off_b, off_h, start_n, stride_dkb, stride_dkh, stride_dkn)
    dv_base = _slice_base(DV, off_b, off_h, start_n, stride_dvb, stride_dvh, stride_dvn)
    _store_dqk(dk_base, cols, stride_dkn, mask_n, dk0 * sm_scale, 0, BLOCK_D, HEAD_DIM, Cos, Sin, offs_n, NUM_PREFIX,
               ROPE)
    _store_chunk(dv_base, cols, stride_dvn, mask_n, dv0, 0, BLOCK_D, HEAD_DIM)
    if D1 > 0:
        _store_dqk(dk_base, cols, stride_dkn, mask_n, dk1 * sm_scale, BLOCK_D, D1, HEAD_DIM, Cos, Sin, offs_n,
                   NUM_PREFIX, ROPE)
        _store_chunk(dv_base, cols, stride_dvn, mask_n, dv1, BLOCK_D, D1, HEAD_DIM)
    if D2 > 0:
        _store_dqk(dk_base, cols, stride_dkn, mask_n, dk2 * sm_scale, BLOCK_D + D1, D2, HEAD_DIM, Cos, Sin, offs_n,
                   NUM_PREFIX, ROPE)
        _store_chunk(dv_base, cols, stride_dvn, mask_n, dv2, BLOCK_D + D1, D2, HEAD_DIM)


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DOut, Lse, Delta, DQ,
    Cos, Sin,  # RoPE tables (N - NUM_PREFIX, HEAD_DIM) fp32, or None (ROPE 0)
    sm_scale, seed, dropout_p,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dqb, stride_dqh, stride_dqn,
    H, N_Q, N_K,
    NUM_PREFIX,  # tokens before the first rotated one (RoPE only)
    N_Q_KEY, N_K_KEY,  # autotuning buckets; unused in the body
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,  # head-dim chunks (0: absent)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    STRIDE_ALIGN: tl.constexpr,  # 8: every stride is a multiple of 8 (see _hint_strides)
    ROPE: tl.constexpr,  # 0 none, 1 "half", 2 "interleaved" (kernels/_attention_rope.py)
):
    stride_qb, stride_qh, stride_qn = _hint_strides(stride_qb, stride_qh, stride_qn, STRIDE_ALIGN)
    stride_kb, stride_kh, stride_kn = _hint_strides(stride_kb, stride_kh, stride_kn, STRIDE_ALIGN)
    stride_vb, stride_vh, stride_vn = _hint_strides(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
    stride_dob, stride_doh, stride_don = _hint_strides(stride_dob, stride_doh, stride_don, STRIDE_ALIGN)
    stride_dqb, stride_dqh, stride_dqn = _hint_strides(stride_dqb, stride_dqh, stride_dqn, STRIDE_ALIGN)
    # Per head-dim chunk c: resident q_c, dO_c and accumulator dq_c; streamed k_c, v_c.
    start_m, pid_bh, off_b, off_h = _program_block(N_Q, BLOCK_M, H)

    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < N_Q

    q_base = _slice_base(Q, off_b, off_h, start_m, stride_qb, stride_qh, stride_qn)
    do_base = _slice_base(DOut, off_b, off_h, start_m, stride_dob, stride_doh, stride_don)
    # With RoPE, q (resident) and k (streamed) rotated as loaded, dq rotated back as stored.
    q0 = _load_qk(q_base, rows, stride_qn, mask_m, 0, BLOCK_D, HEAD_DIM, Cos, Sin, offs_m, NUM_PREFIX, ROPE)
    do0 = _load_chunk(do_base, rows, stride_don, mask_m, 0, BLOCK_D, HEAD_DIM)
    dq0 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if D1 > 0:
        q1 = _load_qk(q_base, rows, stride_qn, mask_m, BLOCK_D, D1, HEAD_DIM, Cos, Sin, offs_m, NUM_PREFIX, ROPE)
        do1 = _load_chunk(do_base, rows, stride_don, mask_m, BLOCK_D, D1, HEAD_DIM)
        dq1 = tl.zeros([BLOCK_M, D1], tl.float32)
    if D2 > 0:
        q2 = _load_qk(q_base, rows, stride_qn, mask_m, BLOCK_D + D1, D2, HEAD_DIM, Cos, Sin, offs_m, NUM_PREFIX,
                      ROPE)
        do2 = _load_chunk(do_base, rows, stride_don, mask_m, BLOCK_D + D1, D2, HEAD_DIM)
        dq2 = tl.zeros([BLOCK_M, D2], tl.float32)
    row_ptrs = pid_bh.to(tl.int64) * N_Q + offs_m
    lse2 = tl.load(Lse + row_ptrs, mask=mask_m, other=0.0) * LOG2E
    delta = tl.load(Delta + row_ptrs, mask=mask_m, other=0.0)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    qk_scale = sm_scale * LOG2E
    if DROPOUT:
        drop_scale = 1.0 / (1.0 - dropout_p)

    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N_K
        k0 = _load_qk(k_base, offs_n, stride_kn, mask_n, 0, BLOCK_D, HEAD_DIM, Cos, Sin, cols, NUM_PREFIX, ROPE)
        if D1 > 0:
            k1 = _load_qk(k_base, offs_n, stride_kn, mask_n, BLOCK_D, D1, HEAD_DIM, Cos, Sin, cols, NUM_PREFIX, ROPE)
        if D2 > 0:
            k2 = _load_qk(k_base, offs_n, stride_kn, mask_n, BLOCK_D + D1, D2, HEAD_DIM, Cos, Sin, cols, NUM_PREFIX,
                          ROPE)
        s = dot(q0, tl.trans(k0), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION)
        if D1 > 0:
            s = dot(q1, tl.trans(k1), s, INPUT_PRECISION)
        if D2 > 0:
            s = dot(q2, tl.trans(k2), s, INPUT_PRECISION)
        # Padded keys were loaded as zeros (score 0, not -inf): zero their probabilities here.
        p = tl.where(mask_n[None, :], tl.math.exp2(s * qk_scale - lse2[:, None]), 0.0)
        # dO v^T: v is used once per chunk, so it is loaded inside the dot helper.
        dp = _dot_rows_t(do0, v_base, offs_n, stride_vn, mask_n, 0, BLOCK_D, HEAD_DIM,
                         tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION)
        if D1 > 0:
            dp = _dot_rows_t(do1, v_base, offs_n, stride_vn, mask_n, BLOCK_D, D1, HEAD_DIM, dp, INPUT_PRECISION)
        if D2 > 0:
            dp = _dot_rows_t(do2, v_base, offs_n, stride_vn, mask_n, BLOCK_D + D1, D2, HEAD_DIM, dp,
                             INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, pid_bh, N_Q, N_K, offs_m[:, None], cols[None, :])
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = _cast(p * (dp - delta[:, None]), k0.dtype)
        dq0 = dot(ds, k0, dq0, INPUT_PRECISION)
        if D1 > 0:
            dq1 = dot(ds, k1, dq1, INPUT_PRECISION)
        if D2 > 0:
            dq2 = dot(ds, k2, dq2, INPUT_PRECISION)
        k_base += BLOCK_N * stride_kn
        v_base += BLOCK_N * stride_vn

    dq_base = _slice_base(DQ, off_b, off_h, start_m, stride_dqb, stride_dqh, stride_dqn)
    _store_dqk(dq_base, rows, stride_dqn, mask_m, dq0 * sm_scale, 0, BLOCK_D, HEAD_DIM, Cos, Sin, offs_m, NUM_PREFIX,
               ROPE)
    if D1 > 0:
        _store_dqk(dq_base, rows, stride_dqn, mask_m, dq1 * sm_scale, BLOCK_D, D1, HEAD_DIM, Cos, Sin, offs_m,
                   NUM_PREFIX, ROPE)
    if D2 > 0:
        _store_dqk(dq_base, rows, stride_dqn, mask_m, dq2 * sm_scale, BLOCK_D + D1, D2, HEAD_DIM, Cos, Sin, offs_m,
                   NUM_PREFIX, ROPE)


_attn_bwd_dkdv_tuned = tuned(_attn_bwd_dkdv, "dkdv", _configs.prune_attention_dkdv_configs)
_attn_bwd_dq_tuned = tuned(_attn_bwd_dq, "dq", _configs.prune_attention_dq_configs)


def attention_bwd(
    dout: torch.Tensor,  # (B, H, Nq, D) gradient of out, any strides (copied unless unit last stride)
    q: torch.Tensor,  # (B, H, Nq, D) as given to attention_fwd
    k: torch.Tensor,  # (B, H, Nk, D)
    v: torch.Tensor,  # (B, H, Nk, D)
    out: torch.Tensor,  # (B, H, Nq, D) from attention_fwd
    lse: torch.Tensor,  # (B, H, Nq) fp32 from attention_fwd
    *,
    sm_scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,  # the forward's seed: the mask is regenerated, not stored
    dlse: torch.Tensor | None = None,  # (B, H, Nq) gradient of lse, if lse was used downstream
    dq: torch.Tensor | None = None,  # (B, H, Nq, D) outputs: any strides with a unit last stride
    dk: torch.Tensor | None = None,  # (B, H, Nk, D)
    dv: torch.Tensor | None = None,  # (B, H, Nk, D)
    cos: torch.Tensor | None = None,  # the forward's RoPE tables (N - num_prefix_tokens, D) fp32, contiguous
    sin: torch.Tensor | None = None,
    num_prefix_tokens: int = 0,
    pairing: str = "half",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``attention_fwd`` w.r.t. q, k, v, recomputing P from the saved logsumexp.

    With the forward's ``cos``, ``sin`` (q and k as given, unrotated), dq and dk are the
    gradients w.r.t. the unrotated q and k: rotated again in registers, rotated back as stored."""
    check_inputs(q, k, v)
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    check_dropout(dropout_p, seed)
    rope = rope_args(q, k, cos, sin, num_prefix_tokens, pairing)
    for name, t in (("dout", dout), ("out", out)):
        require_out(t, name, q.shape, q.dtype, q.device, unit_last_stride=False)
    require_out(lse, "lse", (B, H, n_q), torch.float32, q.device)
    if dlse is not None:
        if tuple(dlse.shape) != (B, H, n_q) or dlse.device != q.device:
            raise ValueError(f"dlse must have shape {(B, H, n_q)} on {q.device}, got {tuple(dlse.shape)} on {dlse.device}")
        dlse = dlse.float().contiguous()
    q, k, v, out, dout = (unit_last_stride(t) for t in (q, k, v, out, dout))
    lse = lse.contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format) if dq is None else dq
    dk = torch.empty_like(k, memory_format=torch.contiguous_format) if dk is None else dk
    dv = torch.empty_like(v, memory_format=torch.contiguous_format) if dv is None else dv
    require_out(dq, "dq", q.shape, q.dtype, q.device)
    require_out(dk, "dk", k.shape, q.dtype, q.device)
    require_out(dv, "dv", v.shape, q.dtype, q.device)
    if B * H == 0:
        return dq, dk, dv
    if n_q == 0:
        dk.zero_()
        dv.zero_()
        return dq, dk, dv

    delta = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    pre_block = _preprocess_block(D)
    _attn_bwd_preprocess[(triton.cdiv(n_q, pre_block) * B * H,)](
        out, dout, dlse if dlse is not None else delta, delta,
        out.stride(0), out.stride(1), out.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2),
        H, n_q,
        **chunk_constexprs(D), BLOCK_M=pre_block, HAS_DLSE=dlse is not None, STRIDE_ALIGN=stride_align(out, dout),
        num_warps=4,
    )
    common = dict(
        sm_scale=float(sm_scale), seed=int(seed), dropout_p=float(dropout_p),
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_dob=dout.stride(0), stride_doh=dout.stride(1), stride_don=dout.stride(2),
        H=H, N_Q=n_q, N_K=n_k, **length_keys(n_q, n_k),
        **chunk_constexprs(D), **rope,
        DROPOUT=dropout_p > 0.0, INPUT_PRECISION=input_precision(q.dtype),
        STRIDE_ALIGN=stride_align(q, k, v, dout, dq, dk, dv),
    )
    launch(_attn_bwd_dkdv_tuned, n_k, B * H, dict(
        Q=q, K=k, V=v, DOut=dout, Lse=lse, Delta=delta, DK=dk, DV=dv, **common,
        stride_dkb=dk.stride(0), stride_dkh=dk.stride(1), stride_dkn=dk.stride(2),
        stride_dvb=dv.stride(0), stride_dvh=dv.stride(1), stride_dvn=dv.stride(2),
    ), block="BLOCK_N")
    launch(_attn_bwd_dq_tuned, n_q, B * H, dict(
        Q=q, K=k, V=v, DOut=dout, Lse=lse, Delta=delta, DQ=dq, **common,
        stride_dqb=dq.stride(0), stride_dqh=dq.stride(1), stride_dqn=dq.stride(2),
    ))
    return dq, dk, dv


def aot_specs(head_dims=(64, 80, 128), dtypes=(torch.float16, torch.bfloat16), dropout=(False, True), *,
              family: str = "nvidia", rope=(0, 1, 2)) -> list:
    """dK/dV and dQ in every configuration the autotuner may pick on ``family`` (per ROPE in
    ``rope``), and the delta pass (which RoPE does not touch)."""
    both = {"Q": None, "K": None, "V": None, "DOut": None, "Lse": torch.float32, "Delta": torch.float32}
    specs = [s for r in rope for s in (
        dot_kernel_specs("dkdv", _attn_bwd_dkdv, {**both, "DK": None, "DV": None}, dtypes, head_dims, dropout,
                         family=family, rope=r)
        + dot_kernel_specs("dq", _attn_bwd_dq, {**both, "DQ": None}, dtypes, head_dims, dropout, family=family, rope=r))]
    for dtype in dtypes:
        for head_dim in head_dims:
            specs.append(aot_spec(
                f"_attn_bwd_preprocess_d{head_dim}_{dtype_tag(dtype)}", _attn_bwd_preprocess,
                pointers={"Out": dtype, "DOut": dtype, "DLse": torch.float32, "Delta": torch.float32},
                constexprs={**kernel_head_dim(_attn_bwd_preprocess, head_dim), "BLOCK_M": _preprocess_block(head_dim),
                            "HAS_DLSE": False},
                aligned=aligned_strides(_attn_bwd_preprocess, head_dim), num_warps=4, mma=False))
    return specs
