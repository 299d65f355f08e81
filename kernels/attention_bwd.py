"""Backward of the fused attention (``kernels/attention.py``): kernels and launcher.

  ``_attn_bwd_preprocess``  delta = rowsum(dO * O) - dLse per row, fp32.
  ``_attn_bwd_dkdv``        one program per (key block, batch*head): dK, dV over all query blocks.
  ``_attn_bwd_dq``          one program per (query block, batch*head): dQ over all key blocks.

P is recomputed from the saved logsumexp and the dropout mask from its seed. Every program owns
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
    _dropout_keep,
    _program_block,
    _tile_ptrs,
    block_d,
    check_dropout,
    check_inputs,
    dot_kernel_specs,
    launch,
    length_keys,
    tuned,
    unit_last_stride,
)
from ._checks import require_out
from ._interpret import dot, input_precision

__all__ = ["attention_bwd", "aot_specs"]


@triton.jit
def _attn_bwd_preprocess(
    Out, DOut, DLse, Delta,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    H, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    HAS_DLSE: tl.constexpr,
):
    # delta_i = sum_j P_ij dP_ij = rowsum(dO * O) (dropout included, since O = P_dropped V).
    # A gradient flowing into lse adds dLse_i * P_ij to dS_ij: folded in as delta - dLse.
    start_m, pid_bh, off_b, off_h = _program_block(N_Q, BLOCK_M, H)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o_ptrs = _tile_ptrs(Out, off_b, off_h, start_m, stride_ob, stride_oh, stride_on, BLOCK_M, offs_d)
    do_ptrs = _tile_ptrs(DOut, off_b, off_h, start_m, stride_dob, stride_doh, stride_don, BLOCK_M, offs_d)
    o = tl.load(o_ptrs, mask=mask, other=0.0)
    do = tl.load(do_ptrs, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    row_ptrs = pid_bh.to(tl.int64) * N_Q + offs_m
    if HAS_DLSE:
        delta -= tl.load(DLse + row_ptrs, mask=offs_m < N_Q, other=0.0).to(tl.float32)
    tl.store(Delta + row_ptrs, delta, mask=offs_m < N_Q)


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DOut, Lse, Delta, DK, DV,
    sm_scale, seed, dropout_p,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    H, N_Q, N_K,
    N_Q_KEY, N_K_KEY,  # autotuning buckets; unused in the body
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # Works on transposed tiles (keys x queries) so that P^T and dS^T feed tl.dot without a
    # transpose of the fp32 tiles: dV += P_drop^T dO, dK += dS^T Q.
    start_n, pid_bh, off_b, off_h = _program_block(N_K, BLOCK_N, H)

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N_K
    mask_d = offs_d < HEAD_DIM
    kv_mask = mask_n[:, None] & mask_d[None, :]

    k_ptrs = _tile_ptrs(K, off_b, off_h, start_n, stride_kb, stride_kh, stride_kn, BLOCK_N, offs_d)
    v_ptrs = _tile_ptrs(V, off_b, off_h, start_n, stride_vb, stride_vh, stride_vn, BLOCK_N, offs_d)
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DOut + off_b * stride_dob + off_h * stride_doh
    row_base = pid_bh.to(tl.int64) * N_Q
    qk_scale = sm_scale * LOG2E
    if DROPOUT:
        drop_scale = 1.0 / (1.0 - dropout_p)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, N_Q, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < N_Q
        q_mask = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_don + offs_d[None, :], mask=q_mask, other=0.0)
        # lse = +inf on padded query rows makes their probabilities exactly 0.
        lse2 = tl.load(Lse + row_base + rows, mask=mask_m, other=float("inf")) * LOG2E
        delta = tl.load(Delta + row_base + rows, mask=mask_m, other=0.0)

        sT = dot(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), INPUT_PRECISION) * qk_scale
        pT = tl.math.exp2(sT - lse2[None, :])
        dpT = dot(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, pid_bh, N_Q, N_K, rows[None, :], offs_n[:, None])
            dv = dot(_cast(tl.where(keep, pT * drop_scale, 0.0), do.dtype), do, dv, INPUT_PRECISION)
            dpT = tl.where(keep, dpT * drop_scale, 0.0)
        else:
            dv = dot(_cast(pT, do.dtype), do, dv, INPUT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = dot(_cast(dsT, q.dtype), q, dk, INPUT_PRECISION)
        q_base += BLOCK_M * stride_qn
        do_base += BLOCK_M * stride_don

    dk = dk * sm_scale
    dk_ptrs = _tile_ptrs(DK, off_b, off_h, start_n, stride_dkb, stride_dkh, stride_dkn, BLOCK_N, offs_d)
    dv_ptrs = _tile_ptrs(DV, off_b, off_h, start_n, stride_dvb, stride_dvh, stride_dvn, BLOCK_N, offs_d)
    tl.store(dk_ptrs, _cast(dk, DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, _cast(dv, DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DOut, Lse, Delta, DQ,
    sm_scale, seed, dropout_p,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dqb, stride_dqh, stride_dqn,
    H, N_Q, N_K,
    N_Q_KEY, N_K_KEY,  # autotuning buckets; unused in the body
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    start_m, pid_bh, off_b, off_h = _program_block(N_Q, BLOCK_M, H)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_Q
    mask_d = offs_d < HEAD_DIM
    q_mask = mask_m[:, None] & mask_d[None, :]

    q_ptrs = _tile_ptrs(Q, off_b, off_h, start_m, stride_qb, stride_qh, stride_qn, BLOCK_M, offs_d)
    do_ptrs = _tile_ptrs(DOut, off_b, off_h, start_m, stride_dob, stride_doh, stride_don, BLOCK_M, offs_d)
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    do = tl.load(do_ptrs, mask=q_mask, other=0.0)
    row_ptrs = pid_bh.to(tl.int64) * N_Q + offs_m
    lse2 = tl.load(Lse + row_ptrs, mask=mask_m, other=0.0) * LOG2E
    delta = tl.load(Delta + row_ptrs, mask=mask_m, other=0.0)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    qk_scale = sm_scale * LOG2E
    if DROPOUT:
        drop_scale = 1.0 / (1.0 - dropout_p)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N_K
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION) * qk_scale
        # Padded keys were loaded as zeros (score 0, not -inf): zero their probabilities here.
        p = tl.where(mask_n[None, :], tl.math.exp2(s - lse2[:, None]), 0.0)
        dp = dot(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, pid_bh, N_Q, N_K, offs_m[:, None], cols[None, :])
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq = dot(_cast(ds, k.dtype), k, dq, INPUT_PRECISION)
        k_base += BLOCK_N * stride_kn
        v_base += BLOCK_N * stride_vn

    dq = dq * sm_scale
    dq_ptrs = _tile_ptrs(DQ, off_b, off_h, start_m, stride_dqb, stride_dqh, stride_dqn, BLOCK_M, offs_d)
    tl.store(dq_ptrs, _cast(dq, DQ.dtype.element_ty), mask=q_mask)


_attn_bwd_dkdv_tuned = tuned(_attn_bwd_dkdv, "dkdv", _configs.prune_attention_dkdv_configs)
_attn_bwd_dq_tuned = tuned(_attn_bwd_dq, "dq", _configs.prune_attention_dq_configs)


def _preprocess_block(head_dim: int) -> int:
    """Rows per program of the delta pass: a (rows x padded head dim) tile of O and dO each."""
    return 64 if head_dim <= 128 else 32


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``attention_fwd`` w.r.t. q, k, v, recomputing P from the saved logsumexp."""
    check_inputs(q, k, v)
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    check_dropout(dropout_p, seed)
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
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=pre_block, HAS_DLSE=dlse is not None,
        num_warps=4,
    )
    common = dict(
        sm_scale=float(sm_scale), seed=int(seed), dropout_p=float(dropout_p),
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_dob=dout.stride(0), stride_doh=dout.stride(1), stride_don=dout.stride(2),
        H=H, N_Q=n_q, N_K=n_k, **length_keys(n_q, n_k),
        HEAD_DIM=D, BLOCK_D=block_d(D),
        DROPOUT=dropout_p > 0.0, INPUT_PRECISION=input_precision(q.dtype),
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


def aot_specs(head_dims=(64, 80, 128), dtypes=(torch.float16, torch.bfloat16), dropout=(False, True)) -> list:
    """dK/dV and dQ in every configuration the autotuner may pick, and the delta pass."""
    both = {"Q": None, "K": None, "V": None, "DOut": None, "Lse": torch.float32, "Delta": torch.float32}
    specs = (dot_kernel_specs("dkdv", _attn_bwd_dkdv, {**both, "DK": None, "DV": None}, dtypes, head_dims, dropout)
             + dot_kernel_specs("dq", _attn_bwd_dq, {**both, "DQ": None}, dtypes, head_dims, dropout))
    for dtype in dtypes:
        for head_dim in head_dims:
            specs.append(aot_spec(
                f"_attn_bwd_preprocess_d{head_dim}_{dtype_tag(dtype)}", _attn_bwd_preprocess,
                pointers={"Out": dtype, "DOut": dtype, "DLse": torch.float32, "Delta": torch.float32},
                constexprs={"HEAD_DIM": head_dim, "BLOCK_D": block_d(head_dim),
                            "BLOCK_M": _preprocess_block(head_dim), "HAS_DLSE": False},
                aligned=[a for a in _attn_bwd_preprocess.arg_names if a.startswith("stride_")],
                num_warps=4, mma=False))
    return specs
