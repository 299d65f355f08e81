"""Fused multi-head attention (FlashAttention-2 style) in Triton: the forward kernel and its
launcher here, the backward in ``kernels/attention_bwd.py`` (re-exported below), shared helpers
in ``kernels/_attention_common.py``.

softmax(q k^T * scale) v without the N x N matrix in memory, for any sequence lengths (197, 577,
4097: masked tails), any head_dim 1..256 (split into power-of-two chunks inside the kernels: 80 = 64 + 16, see
``kernels/_attention_common.py``), fp16,
bf16 and fp32, with optional attention dropout regenerated in the backward from a counter-based
RNG. q, k, v, out and their gradients are addressed by (batch, head, token) strides with a unit
last stride, so views of a packed qkv Linear output and an output laid out as (B, N, H*D) are
read and written in place. With rotary tables (``cos``, ``sin``: self-attention) q and k are
rotated inside the kernels' loads and dq, dk rotated back as stored (``kernels/_attention_rope.py``):
the rotated q and k never exist in memory.

Kernels here:
  ``_attn_fwd``             one program per (query block, batch*head): online softmax in fp32
                            (exp2 with log2(e) folded into the scale); writes out and the
                            natural-log logsumexp of each row.
  ``_attn_dropout_mask``    the keep-mask the other kernels use, written out (tests, debugging).

Launchers take and return tensors; autograd lives in ``fastvit/ops/_attention_triton.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _configs
from ._attention_common import (
    LN2,
    LOG2E,
    _cast,
    _dot_rows,
    _dropout_keep,
    _program_block,
    _slice_base,
    _hint_strides,
    _store_chunk,
    block_d,
    check_dropout,
    check_inputs,
    chunk_constexprs,
    dot_kernel_specs,
    head_dim_chunks,
    launch,
    length_keys,
    stride_align,
    tuned,
    unit_last_stride,
)
from ._attention_rope import _dot_rows_t_qk, _load_qk, rope_args
from ._checks import KERNEL_DTYPES, require_out
from ._interpret import dot, input_precision
from .attention_bwd import aot_specs as _bwd_aot_specs
from .attention_bwd import attention_bwd

__all__ = ["attention_fwd", "attention_bwd", "attention_dropout_mask", "aot_specs", "block_d", "head_dim_chunks"]


@triton.jit
def _attn_fwd(
    Q, K, V, Out, Lse,
    Cos, Sin,  # RoPE tables (N - NUM_PREFIX, HEAD_DIM) fp32, or None (ROPE 0)
    sm_scale, seed, dropout_p,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, N_Q, N_K,
    NUM_PREFIX,  # tokens before the first rotated one (RoPE only)
    N_Q_KEY, N_K_KEY,  # autotuning buckets (next power of two of N_Q, N_K); unused in the body
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,  # head-dim chunks (0: absent)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    STRIDE_ALIGN: tl.constexpr,  # 8: every stride is a multiple of 8 (see _hint_strides)
    ROPE: tl.constexpr,  # 0 none, 1 "half", 2 "interleaved": q, k rotated in registers (_attention_rope.py)
):
    stride_qb, stride_qh, stride_qn = _hint_strides(stride_qb, stride_qh, stride_qn, STRIDE_ALIGN)
    stride_kb, stride_kh, stride_kn = _hint_strides(stride_kb, stride_kh, stride_kn, STRIDE_ALIGN)
    stride_vb, stride_vh, stride_vn = _hint_strides(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
    stride_ob, stride_oh, stride_on = _hint_strides(stride_ob, stride_oh, stride_on, STRIDE_ALIGN)
    # Query blocks fastest in the flat grid: neighbouring programs share K and V in L2.
    start_m, pid_bh, off_b, off_h = _program_block(N_Q, BLOCK_M, H)

    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < N_Q

    q_base = _slice_base(Q, off_b, off_h, start_m, stride_qb, stride_qh, stride_qn)
    # In the loop: a scalar pointer advanced per block plus loop-invariant int32 tile offsets,
    # rather than 64-bit pointer tiles carried (and spilled) through the pipelined loop.
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh

    # One q tile and one output accumulator per head-dim chunk (the second and third exist only
    # when the head dim is not a power of two: compile-time branches). With RoPE, q and k are
    # rotated as they are loaded, in pair order (kernels/_attention_rope.py).
    q0 = _load_qk(q_base, rows, stride_qn, mask_m, 0, BLOCK_D, HEAD_DIM, Cos, Sin, offs_m, NUM_PREFIX, ROPE)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if D1 > 0:
        q1 = _load_qk(q_base, rows, stride_qn, mask_m, BLOCK_D, D1, HEAD_DIM, Cos, Sin, offs_m, NUM_PREFIX, ROPE)
        acc1 = tl.zeros([BLOCK_M, D1], tl.float32)
    if D2 > 0:
        q2 = _load_qk(q_base, rows, stride_qn, mask_m, BLOCK_D + D1, D2, HEAD_DIM, Cos, Sin, offs_m, NUM_PREFIX,
                      ROPE)
        acc2 = tl.zeros([BLOCK_M, D2], tl.float32)
    qk_scale = sm_scale * LOG2E

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N_K
        # q k^T: one dot per chunk, summed in the fp32 score tile.
        s = _dot_rows_t_qk(q0, k_base, offs_n, stride_kn, mask_n, 0, BLOCK_D, HEAD_DIM,
                           tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION, Cos, Sin, cols, NUM_PREFIX, ROPE)
        if D1 > 0:
            s = _dot_rows_t_qk(q1, k_base, offs_n, stride_kn, mask_n, BLOCK_D, D1, HEAD_DIM, s, INPUT_PRECISION,
                               Cos, Sin, cols, NUM_PREFIX, ROPE)
        if D2 > 0:
            s = _dot_rows_t_qk(q2, k_base, offs_n, stride_kn, mask_n, BLOCK_D + D1, D2, HEAD_DIM, s, INPUT_PRECISION,
                               Cos, Sin, cols, NUM_PREFIX, ROPE)
        s = s * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        # Every block holds at least one real key, so m_new is finite and exp2 never sees inf - inf.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            # The normaliser l_i sums the undropped probabilities: dropout acts after softmax.
            keep = _dropout_keep(seed, dropout_p, pid_bh, N_Q, N_K, offs_m[:, None], cols[None, :])
            p = tl.where(keep, p, 0.0)
        p = _cast(p, V.dtype.element_ty)
        acc0 = _dot_rows(p, v_base, offs_n, stride_vn, mask_n, 0, BLOCK_D, HEAD_DIM, acc0 * alpha[:, None],
                         INPUT_PRECISION)
        if D1 > 0:
            acc1 = _dot_rows(p, v_base, offs_n, stride_vn, mask_n, BLOCK_D, D1, HEAD_DIM, acc1 * alpha[:, None],
                             INPUT_PRECISION)
        if D2 > 0:
            acc2 = _dot_rows(p, v_base, offs_n, stride_vn, mask_n, BLOCK_D + D1, D2, HEAD_DIM,
                             acc2 * alpha[:, None], INPUT_PRECISION)
        m_i = m_new
        k_base += BLOCK_N * stride_kn
        v_base += BLOCK_N * stride_vn

    # out = acc / l (times 1/(1-p) with dropout), chunk by chunk.
    o_base = _slice_base(Out, off_b, off_h, start_m, stride_ob, stride_oh, stride_on)
    _store_chunk(o_base, rows, stride_on, mask_m, _finish(acc0, l_i, dropout_p, DROPOUT), 0, BLOCK_D, HEAD_DIM)
    if D1 > 0:
        _store_chunk(o_base, rows, stride_on, mask_m, _finish(acc1, l_i, dropout_p, DROPOUT), BLOCK_D, D1, HEAD_DIM)
    if D2 > 0:
        _store_chunk(o_base, rows, stride_on, mask_m, _finish(acc2, l_i, dropout_p, DROPOUT), BLOCK_D + D1, D2,
                     HEAD_DIM)
    # Natural log for the caller; l_i >= 1 (the row maximum contributes exp2(0)).
    lse = (m_i + tl.math.log2(l_i)) * LN2
    tl.store(Lse + pid_bh.to(tl.int64) * N_Q + offs_m, lse, mask=mask_m)


@triton.jit
def _finish(acc, l_i, dropout_p, DROPOUT: tl.constexpr):
    acc = acc / l_i[:, None]
    if DROPOUT:
        acc = acc * (1.0 / (1.0 - dropout_p))
    return acc


@triton.jit
def _attn_dropout_mask(
    Mask, seed, dropout_p,
    N_Q, N_K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    num_m = tl.cdiv(N_Q, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    pid_bh = pid // num_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        keep = _dropout_keep(seed, dropout_p, pid_bh, N_Q, N_K, offs_m[:, None], cols[None, :])
        ptrs = Mask + (pid_bh.to(tl.int64) * N_Q + offs_m[:, None]) * N_K + cols[None, :]
        tl.store(ptrs, keep.to(tl.int8), mask=(offs_m < N_Q)[:, None] & (cols < N_K)[None, :])


_attn_fwd_tuned = tuned(_attn_fwd, "fwd", _configs.prune_attention_fwd_configs)


def attention_fwd(
    q: torch.Tensor,  # (B, H, Nq, D), any strides with a unit last stride (copied otherwise)
    k: torch.Tensor,  # (B, H, Nk, D)
    v: torch.Tensor,  # (B, H, Nk, D)
    *,
    sm_scale: float,  # softmax scale, usually 1/sqrt(D)
    dropout_p: float = 0.0,  # probability of zeroing an attention probability
    seed: int = 0,  # Philox seed of the dropout mask, in [0, 2**31)
    out: torch.Tensor | None = None,  # (B, H, Nq, D) in q's dtype, unit last stride (e.g. a view of (B, Nq, H*D))
    lse: torch.Tensor | None = None,  # (B, H, Nq) fp32, contiguous
    cos: torch.Tensor | None = None,  # (N - num_prefix_tokens, D) fp32 contiguous RoPE tables (fastvit/rope.py)
    sin: torch.Tensor | None = None,  # (N - num_prefix_tokens, D), with cos
    num_prefix_tokens: int = 0,  # leading tokens not rotated (class / register tokens)
    pairing: str = "half",  # "half" (channel i with i + D/2) or "interleaved" (2i with 2i + 1)
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * sm_scale) (with dropout) v and the fp32 natural-log logsumexp of each row.

    With ``cos`` and ``sin`` (self-attention only), q and k are first rotated as
    ``fastvit.ops.rope.apply_rope`` does (fp32, rounded once to the input dtype), inside the
    kernel's loads: the rotated q and k never exist in memory."""
    check_inputs(q, k, v)
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    check_dropout(dropout_p, seed)
    rope = rope_args(q, k, cos, sin, num_prefix_tokens, pairing)
    q, k, v = (unit_last_stride(t) for t in (q, k, v))
    out = torch.empty_like(q, memory_format=torch.contiguous_format) if out is None else out
    require_out(out, "out", q.shape, q.dtype, q.device)
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32) if lse is None else lse
    require_out(lse, "lse", (B, H, n_q), torch.float32, q.device)
    if not lse.is_contiguous():
        raise ValueError(f"lse must be contiguous, got strides {lse.stride()}")
    if B * H * n_q == 0:
        return out, lse
    launch(_attn_fwd_tuned, n_q, B * H, dict(
        Q=q, K=k, V=v, Out=out, Lse=lse,
        sm_scale=float(sm_scale), seed=int(seed), dropout_p=float(dropout_p),
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_ob=out.stride(0), stride_oh=out.stride(1), stride_on=out.stride(2),
        H=H, N_Q=n_q, N_K=n_k, **length_keys(n_q, n_k),
        **chunk_constexprs(D), **rope,
        DROPOUT=dropout_p > 0.0, INPUT_PRECISION=input_precision(q.dtype), STRIDE_ALIGN=stride_align(q, k, v, out),
    ))
    return out, lse


def attention_dropout_mask(B: int, H: int, n_q: int, n_k: int, dropout_p: float, seed: int,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """The (B, H, Nq, Nk) bool keep-mask that the kernels apply for ``(dropout_p, seed)``.

    Written by the same RNG formula the forward and backward use: for tests and debugging only
    (it is the N x N matrix the kernels never store).
    """
    check_dropout(dropout_p, seed)
    mask = torch.empty((B, H, n_q, n_k), device=device, dtype=torch.int8)
    if mask.numel():
        _attn_dropout_mask[(triton.cdiv(n_q, 64) * B * H,)](mask, int(seed), float(dropout_p), n_q, n_k,
                                                            BLOCK_M=64, BLOCK_N=64)
    return mask.bool()


def aot_specs(head_dims=(64, 80, 128), dtypes=(torch.float16, torch.bfloat16), dropout=(False, True), *,
              family: str = "nvidia", rope=(0, 1, 2)) -> list:
    """Every configuration the GPU autotuner may pick on the architecture family ``family``
    (``_configs.ARCH_FAMILIES``), per dtype, head_dim, dropout and ROPE (0 none, 1 "half",
    2 "interleaved"), for the forward here and the backward's kernels
    (``attention_bwd.aot_specs``): exactly those ``kernels/_configs.py`` keeps after pruning, so a
    compile report over them covers everything a GPU can run."""
    for dtype in dtypes:
        if dtype not in KERNEL_DTYPES:
            raise ValueError(f"dtypes: the attention kernels take {KERNEL_DTYPES}, got {dtype}")
    fwd = [s for r in rope for s in dot_kernel_specs(
        "fwd", _attn_fwd, {"Q": None, "K": None, "V": None, "Out": None, "Lse": torch.float32}, dtypes, head_dims,
        dropout, family=family, rope=r)]
    return fwd + _bwd_aot_specs(head_dims, dtypes, dropout, family=family, rope=rope)


def head_dim_scaling_specs(head_dims, dtype=torch.float16, *, family: str = "nvidia") -> list:
    """The forward, dK/dV and dQ at each head dim in one fixed tile per kernel (the autotuner's
    first choice for ``family`` at the widest of the head dims, which every narrower one can
    also run), no dropout: compiled side by side, their matrix-instruction counts compare the
    work per program across head dims (``fastvit.profiling.head_dim_report``)."""
    from .attention_bwd import _attn_bwd_dkdv, _attn_bwd_dq

    both = {"Q": None, "K": None, "V": None, "DOut": None, "Lse": torch.float32, "Delta": torch.float32}
    kernels = (("fwd", _attn_fwd, {"Q": None, "K": None, "V": None, "Out": None, "Lse": torch.float32}),
               ("dkdv", _attn_bwd_dkdv, {**both, "DK": None, "DV": None}),
               ("dq", _attn_bwd_dq, {**both, "DQ": None}))
    width = max(sum(head_dim_chunks(d)) for d in head_dims)
    specs = []
    for kernel, fn, tensors in kernels:
        tile = _configs.attention_configs(kernel, width, dtype, False, family=family)[0]
        specs += dot_kernel_specs(kernel, fn, tensors, (dtype,), head_dims, (False,), family=family,
                                  configs=lambda *_, tile=tile: [tile])
    return specs
