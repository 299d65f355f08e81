"""Fused multi-head attention (FlashAttention-2 style), forward and backward, in Triton.

softmax(q k^T * scale) v without the N x N matrix in memory, for any sequence lengths (197, 577,
4097: masked tails), any head_dim 1..256 (padded to a power of two inside the kernel), fp16,
bf16 and fp32, with optional attention dropout regenerated in the backward from a counter-based
RNG. q, k, v, out and their gradients are addressed by (batch, head, token) strides with a unit
last stride, so views of a packed qkv Linear output and an output laid out as (B, N, H*D) are
read and written in place.

Kernels:
  ``_attn_fwd``             one program per (query block, batch*head): online softmax in fp32
                            (exp2 with log2(e) folded into the scale); writes out and the
                            natural-log logsumexp of each row.
  ``_attn_bwd_preprocess``  delta = rowsum(dO * O) - dLse per row, fp32.
  ``_attn_bwd_dkdv``        one program per (key block, batch*head): dK, dV over all query blocks.
  ``_attn_bwd_dq``          one program per (query block, batch*head): dQ over all key blocks.
  ``_attn_dropout_mask``    the keep-mask the other kernels use, written out (tests, debugging).

Every program owns the rows it writes, so there are no atomics and two runs give bitwise-equal
gradients. Launchers here take and return tensors; autograd lives in
``fastvit/ops/_attention_triton.py``.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _configs
from ._interpret import INTERPRETING, dot, input_precision, interpreting

# Softmax runs in base 2 (exp2 is the native instruction): exp(x) = exp2(x * LOG2E).
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
MAX_HEAD_DIM = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _cast(x, DTYPE: tl.constexpr):
    """``x.to(DTYPE)`` with round-to-nearest-even everywhere.

    The interpreter truncates fp32 -> bf16, which biases every sum of rounded probabilities
    downwards; there, and only there, round by hand on the bit pattern first.
    """
    if INTERPRETING:
        if DTYPE == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            x = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def _dropout_keep(seed, dropout_p, bh, N_Q, N_K, rows, cols):
    """Keep-mask of the attention probabilities at (bh, rows, cols) (broadcastable int tensors).

    One Philox draw per (batch*head, query, key), indexed by its flat int64 position, so any
    kernel that visits the same element (in any tiling or orientation) regenerates the same bit.
    """
    offs = (bh.to(tl.int64) * N_Q + rows) * N_K + cols
    return tl.rand(seed, offs) >= dropout_p


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _program_block(N, BLOCK: tl.constexpr, H):
    """This program's block start along N, its flat batch*head index and the int64 batch and
    head offsets. Blocks vary fastest in the flat grid, so B*H is not limited to 65535 as it
    would be on grid axis 1."""
    num_blocks = tl.cdiv(N, BLOCK)
    pid = tl.program_id(0)
    pid_bh = pid // num_blocks
    return (pid % num_blocks) * BLOCK, pid_bh, (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)


@triton.jit
def _tile_ptrs(Base, off_b, off_h, start, stride_b, stride_h, stride_n, BLOCK: tl.constexpr, offs_d):
    """Pointers to rows start .. start+BLOCK of one (batch, head) slice: an int64 scalar base
    (B*H*N*D can pass 2^31) plus small int32 offsets within the tile."""
    return (Base + off_b * stride_b + off_h * stride_h + start.to(tl.int64) * stride_n
            + tl.arange(0, BLOCK)[:, None] * stride_n + offs_d[None, :])


@triton.jit
def _attn_fwd(
    Q, K, V, Out, Lse,
    sm_scale, seed, dropout_p,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, N_Q, N_K,
    N_Q_KEY, N_K_KEY,  # autotuning buckets (next power of two of N_Q, N_K); unused in the body
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # Query blocks fastest in the flat grid: neighbouring programs share K and V in L2.
    start_m, pid_bh, off_b, off_h = _program_block(N_Q, BLOCK_M, H)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_Q
    mask_d = offs_d < HEAD_DIM

    q_ptrs = _tile_ptrs(Q, off_b, off_h, start_m, stride_qb, stride_qh, stride_qn, BLOCK_M, offs_d)
    # In the loop: a scalar pointer advanced per block plus loop-invariant int32 tile offsets,
    # rather than 64-bit pointer tiles carried (and spilled) through the pipelined loop.
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh

    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    qk_scale = sm_scale * LOG2E

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N_K
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), INPUT_PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        # Every block holds at least one real key, so m_new is finite and exp2 never sees inf - inf.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            # The normaliser l_i sums the undropped probabilities: dropout acts after softmax.
            keep = _dropout_keep(seed, dropout_p, pid_bh, N_Q, N_K, offs_m[:, None], cols[None, :])
            p = tl.where(keep, p, 0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = dot(_cast(p, v.dtype), v, acc, INPUT_PRECISION)
        m_i = m_new
        k_base += BLOCK_N * stride_kn
        v_base += BLOCK_N * stride_vn

    acc = acc / l_i[:, None]
    if DROPOUT:
        acc = acc * (1.0 / (1.0 - dropout_p))
    o_ptrs = _tile_ptrs(Out, off_b, off_h, start_m, stride_ob, stride_oh, stride_on, BLOCK_M, offs_d)
    tl.store(o_ptrs, _cast(acc, Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    # Natural log for the caller; l_i >= 1 (the row maximum contributes exp2(0)).
    lse = (m_i + tl.math.log2(l_i)) * LN2
    tl.store(Lse + pid_bh.to(tl.int64) * N_Q + offs_m, lse, mask=mask_m)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two, at least 16 (tl.dot's minimum on tensor cores)."""
    return max(16, triton.next_power_of_2(int(head_dim)))


_TUNED = {}


def _tuned(name: str, fn):
    """``fn`` autotuned over the pruned list of ``kernels/_configs.py`` (built on first use on a GPU)."""
    if name not in _TUNED:
        _TUNED[name] = triton.autotune(
            configs=_configs.ATTENTION_CONFIGS[name],
            key=["N_Q_KEY", "N_K_KEY", "HEAD_DIM", "DROPOUT", "INPUT_PRECISION"],
            prune_configs_by={"early_config_prune": functools.partial(_configs.prune_attention_configs, name)},
        )(fn)
    return _TUNED[name]


def _launch(name: str, fn, grid_rows, bh: int, args: dict) -> None:
    """Launch ``fn`` on the flat grid (cdiv(grid_rows, BLOCK) * bh,).

    Under the interpreter: one fixed small configuration (autotuning needs a driver). On a GPU:
    autotuned, keyed on the bucketed lengths, head dim, dtype, dropout and dot precision.
    """
    block = "BLOCK_N" if name == "dkdv" else "BLOCK_M"
    if interpreting():
        cfg = _configs.ATTENTION_INTERPRET_CONFIG
        fn[(triton.cdiv(grid_rows, cfg[block]) * bh,)](**args, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                                      num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return
    _tuned(name, fn)[lambda meta: (triton.cdiv(grid_rows, meta[block]) * bh,)](**args)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when the kernels can address it by strides, else a contiguous copy.

    The kernels need a unit last stride. Broadcast (stride-0) dimensions, as in the gradient of
    ``.sum()``, are copied too: the interpreter mis-reads them.
    """
    if t.stride(-1) != 1 or any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)):
        return t.contiguous()
    return t


def _check_out(t, name: str, shape, dtype, device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise ValueError(f"{name} must be a {dtype} tensor of shape {tuple(shape)} on {device}, got "
                         f"{t.dtype} {tuple(t.shape)} on {t.device}")
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a unit last stride, got strides {t.stride()}")
    return t


def _check_inputs(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: the Triton attention kernels take float16, bfloat16 or float32, got {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"q, k and v must share dtype and device, got {name} {t.dtype} on {t.device} "
                             f"and q {q.dtype} on {q.device}")
    B, H, _, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise ValueError(f"k and v must be (B, H, Nk, D) = ({B}, {H}, Nk, {D}) like q, got k {tuple(k.shape)} "
                         f"and v {tuple(v.shape)}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {D}")
    if k.shape[2] < 1:
        raise ValueError(f"k and v need at least one token, got shape {tuple(k.shape)}")


def _check_dropout(dropout_p, seed):
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0 and not (isinstance(seed, int) and 0 <= seed < 2**31):
        raise ValueError(f"seed must be an int in [0, 2**31) when dropout_p > 0, got {seed!r}")


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * sm_scale) (with dropout) v and the fp32 natural-log logsumexp of each row."""
    _check_inputs(q, k, v)
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    _check_dropout(dropout_p, seed)
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    out = torch.empty_like(q, memory_format=torch.contiguous_format) if out is None else out
    _check_out(out, "out", q.shape, q.dtype, q.device)
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32) if lse is None else lse
    _check_out(lse, "lse", (B, H, n_q), torch.float32, q.device)
    if not lse.is_contiguous():
        raise ValueError(f"lse must be contiguous, got strides {lse.stride()}")
    if B * H * n_q == 0:
        return out, lse
    args = dict(
        Q=q, K=k, V=v, Out=out, Lse=lse,
        sm_scale=float(sm_scale), seed=int(seed), dropout_p=float(dropout_p),
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_ob=out.stride(0), stride_oh=out.stride(1), stride_on=out.stride(2),
        H=H, N_Q=n_q, N_K=n_k,
        N_Q_KEY=triton.next_power_of_2(n_q), N_K_KEY=triton.next_power_of_2(n_k),
        HEAD_DIM=D, BLOCK_D=block_d(D),
        DROPOUT=dropout_p > 0.0, INPUT_PRECISION=input_precision(q.dtype),
    )
    _launch("fwd", _attn_fwd, n_q, B * H, args)
    return out, lse


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
    _check_inputs(q, k, v)
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    _check_dropout(dropout_p, seed)
    for name, t in (("dout", dout), ("out", out)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(q.shape) or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must be a {q.dtype} tensor of shape {tuple(q.shape)} on {q.device}, got "
                             f"{t.dtype} {tuple(t.shape)} on {t.device}")
    _check_out(lse, "lse", (B, H, n_q), torch.float32, q.device)
    if dlse is not None:
        if tuple(dlse.shape) != (B, H, n_q) or dlse.device != q.device:
            raise ValueError(f"dlse must have shape {(B, H, n_q)} on {q.device}, got {tuple(dlse.shape)} on {dlse.device}")
        dlse = dlse.float().contiguous()
    q, k, v, out, dout = (_unit_last_stride(t) for t in (q, k, v, out, dout))
    lse = lse.contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format) if dq is None else dq
    dk = torch.empty_like(k, memory_format=torch.contiguous_format) if dk is None else dk
    dv = torch.empty_like(v, memory_format=torch.contiguous_format) if dv is None else dv
    _check_out(dq, "dq", q.shape, q.dtype, q.device)
    _check_out(dk, "dk", k.shape, q.dtype, q.device)
    _check_out(dv, "dv", v.shape, q.dtype, q.device)
    if B * H == 0:
        return dq, dk, dv
    if n_q == 0:
        dk.zero_()
        dv.zero_()
        return dq, dk, dv

    delta = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    pre_block = 64 if D <= 128 else 32
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
        H=H, N_Q=n_q, N_K=n_k,
        N_Q_KEY=triton.next_power_of_2(n_q), N_K_KEY=triton.next_power_of_2(n_k),
        HEAD_DIM=D, BLOCK_D=block_d(D),
        DROPOUT=dropout_p > 0.0, INPUT_PRECISION=input_precision(q.dtype),
    )
    _launch("dkdv", _attn_bwd_dkdv, n_k, B * H, dict(
        Q=q, K=k, V=v, DOut=dout, Lse=lse, Delta=delta, DK=dk, DV=dv, **common,
        stride_dkb=dk.stride(0), stride_dkh=dk.stride(1), stride_dkn=dk.stride(2),
        stride_dvb=dv.stride(0), stride_dvh=dv.stride(1), stride_dvn=dv.stride(2),
    ))
    _launch("dq", _attn_bwd_dq, n_q, B * H, dict(
        Q=q, K=k, V=v, DOut=dout, Lse=lse, Delta=delta, DQ=dq, **common,
        stride_dqb=dq.stride(0), stride_dqh=dq.stride(1), stride_dqn=dq.stride(2),
    ))
    return dq, dk, dv


def attention_dropout_mask(B: int, H: int, n_q: int, n_k: int, dropout_p: float, seed: int,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """The (B, H, Nq, Nk) bool keep-mask that the kernels apply for ``(dropout_p, seed)``.

    Written by the same RNG formula the forward and backward use: for tests and debugging only
    (it is the N x N matrix the kernels never store).
    """
    _check_dropout(dropout_p, seed)
    mask = torch.empty((B, H, n_q, n_k), device=device, dtype=torch.int8)
    if mask.numel():
        _attn_dropout_mask[(triton.cdiv(n_q, 64) * B * H,)](mask, int(seed), float(dropout_p), n_q, n_k,
                                                            BLOCK_M=64, BLOCK_N=64)
    return mask.bool()


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs
# ----------------------------------------------------------------------------------------------


def _aot_signature(fn, pointers: dict, constexprs: dict, floats=("sm_scale", "dropout_p")) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _aligned_args(signature: dict) -> list[str]:
    """Arguments Triton sees as 16-divisible at run time for the head dims compiled here (multiples
    of 16, packed qkv or (B, H, N, D) layouts): all pointers and strides. Without this hint an
    ahead-of-time compile assumes unaligned scalar loads and reports spills no launch has."""
    return [name for name, ty in signature.items() if ty.startswith("*") or name.startswith("stride_")]


def aot_specs(head_dims=(64, 80, 128), dtypes=(torch.float16, torch.bfloat16), dropout=(False, True)) -> list[dict]:
    """One spec per (kernel, configuration the autotuner may pick, dtype, head_dim, dropout).

    Each spec also lists ``aligned``: the arguments to compile with Triton's 16-divisibility
    specialization (``ASTSource(attrs={(i,): [["tt.divisibility", 16]]})``), as a launch would.

    The configurations are exactly those ``kernels/_configs.py`` keeps after pruning for the
    head dim and dtype, so a compile report over these covers everything a GPU can run.
    """
    specs = []
    for dtype in dtypes:
        tl_name = "*" + {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
        precision = input_precision(dtype)
        for head_dim in head_dims:
            bd = block_d(head_dim)
            for kernel, fn, tensors in (
                ("fwd", _attn_fwd, {"Q": tl_name, "K": tl_name, "V": tl_name, "Out": tl_name, "Lse": "*fp32"}),
                ("dkdv", _attn_bwd_dkdv, {"Q": tl_name, "K": tl_name, "V": tl_name, "DOut": tl_name,
                                          "Lse": "*fp32", "Delta": "*fp32", "DK": tl_name, "DV": tl_name}),
                ("dq", _attn_bwd_dq, {"Q": tl_name, "K": tl_name, "V": tl_name, "DOut": tl_name,
                                      "Lse": "*fp32", "Delta": "*fp32", "DQ": tl_name}),
            ):
                for drop in dropout:
                    for cfg in _configs.attention_configs(kernel, bd, dtype, drop):
                        constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": bd, "DROPOUT": drop,
                                      "INPUT_PRECISION": precision, **cfg.kwargs}
                        signature = _aot_signature(fn, tensors, constexprs)
                        specs.append({
                            "name": (f"{fn.__name__}_d{head_dim}_{str(dtype).replace('torch.', '')}"
                                     f"_m{cfg.kwargs['BLOCK_M']}n{cfg.kwargs['BLOCK_N']}"
                                     f"w{cfg.num_warps}s{cfg.num_stages}{'_dropout' if drop else ''}"),
                            "fn": fn,
                            "signature": signature,
                            "constexprs": constexprs,
                            "aligned": _aligned_args(signature),
                            "num_warps": cfg.num_warps,
                            "num_stages": cfg.num_stages,
                        })
            constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": bd, "BLOCK_M": 64 if head_dim <= 128 else 32,
                          "HAS_DLSE": False}
            signature = _aot_signature(_attn_bwd_preprocess, {"Out": tl_name, "DOut": tl_name, "DLse": "*fp32",
                                                              "Delta": "*fp32"}, constexprs)
            specs.append({
                "name": f"_attn_bwd_preprocess_d{head_dim}_{str(dtype).replace('torch.', '')}",
                "fn": _attn_bwd_preprocess,
                "signature": signature,
                "constexprs": constexprs,
                "aligned": _aligned_args(signature),
                "num_warps": 4,
                "num_stages": 1,
            })
    return specs
