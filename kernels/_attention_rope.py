"""Rotary position embeddings (RoPE) inside the dense attention kernels (``kernels/attention.py``,
``kernels/attention_bwd.py``): the device helpers and the launchers' table checks.

The semantics are ``fastvit/ops/rope.py: apply_rope``'s: token t >= P (``num_prefix_tokens``)
has each channel pair (a, b) rotated by table row t - P, a' = a cos - b sin, b' = b cos + a sin,
in fp32 and rounded once to the input dtype; tokens t < P (class, register tokens) are not
rotated. "half" pairs channel i with i + D/2, "interleaved" 2i with 2i + 1. The tables (cos, sin:
fp32, contiguous, (N - P, D)) hold the same value in both channels of a pair.

Pair order. Scores depend on q_rot . k_rot only, so q and k (and dq, dk) live in registers in
any channel order that is the same for both. The kernels use "pair order": tile position
j = 2i + c holds channel ch(2i + c), with ch(j) = j for "interleaved" and ch(2i) = i,
ch(2i + 1) = i + D/2 for "half". A rotation pair is then two adjacent columns inside one
head-dim chunk (chunks have even widths >= 16 at even offsets), so a chunk is rotated on its own:
its halves a = x[:, ch(2i)], b = x[:, ch(2i+1)] are loaded ("half": two gathered loads, each a
contiguous run of W/2 channels; "interleaved": the chunk's contiguous columns, split), rotated in
fp32, interleaved back into a (rows, W) tile and rounded once to the input dtype. Gradients with
respect to the rotated q and k come out of the dots in the same pair order and get the
transposed rotation (da = ga cos + gb sin, db = gb cos - ga sin) as they are stored. v, dv, out
and dO are untouched.

What the compiler needed (sm_80/sm_90, triton 3.8; tests/test_attention_compile.py):
* The rotation is written as a sum over a size-2 axis (``tl.sum`` of the joined products). The
  same arithmetic written elementwise let Triton's layout pass recompute it in the dot-operand
  layout, where every warp holds the whole k tile (255 registers and spills even in the
  forward); a reduction stops that, so the tile is rotated in a distributed layout and reaches
  the dot through shared memory, as a plain k tile does.
* The tables hold one value per pair: the launcher hands "half" tables over as they are (their
  first half) and compacts "interleaved" ones (every other column, (N - P, D/2)): stride-2
  table loads cost one address per element and spilled dK/dV and dQ.
* The gradient's table loads are volatile: otherwise they merge with the identical loads that
  rotated the resident tile before the key loop and stay live across it.
RoPE costs registers and shared memory (cos and sin are pipelined with the rotated operand), so
the autotuner keeps smaller tiles with it (kernels/_attention_configs.py: RopeBudget).

ROPE (constexpr): 0 none, 1 "half", 2 "interleaved". Every helper here that the kernels call on
every path (``_load_qk``, ``_dot_rows_t_qk``, ``_store_dqk``) is the plain load / dot / store when
ROPE is 0: a compile-time branch, so a kernel without tables compiles to the code it had before
RoPE existed (the PTX is identical but for the one unused NUM_PREFIX parameter).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl

from ._attention_common import _cast, _load_chunk, _store_chunk
from ._checks import require_tensor
from ._interpret import dot

ROPE_PAIRINGS = {"half": 1, "interleaved": 2}


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _pair_cols(START: tl.constexpr, WIDTH: tl.constexpr, HEAD_DIM: tl.constexpr, ROPE: tl.constexpr):
    """The channels held by the chunk [START, START + WIDTH) in pair order: ch(2i), ch(2i + 1)
    for i in START/2 .. (START + WIDTH)/2, and which of the pairs exist (2i < HEAD_DIM)."""
    i = START // 2 + tl.arange(0, WIDTH // 2)
    if ROPE == 1:
        ch_a = i
        ch_b = i + HEAD_DIM // 2
    else:
        ch_a = 2 * i
        ch_b = ch_a + 1
    return ch_a, ch_b, i < HEAD_DIM // 2


@triton.jit
def _tables(Cos, Sin, tokens, mask_rows, num_prefix, START: tl.constexpr, WIDTH: tl.constexpr,
            HEAD_DIM: tl.constexpr, ROPE: tl.constexpr, VOLATILE: tl.constexpr):
    """cos and sin (rows x WIDTH/2, fp32) of the tokens ``tokens`` for the pairs of the chunk
    [START, START + WIDTH): table row token - num_prefix, column i (the pair); 1 and 0 (no
    rotation) for prefix and padded rows and absent pairs. The launcher passes one value per pair
    (``rope_args``), rows of HEAD_DIM (the first half of a "half" table row) or HEAD_DIM / 2."""
    i = START // 2 + tl.arange(0, WIDTH // 2)
    t = tokens - num_prefix
    mask = (mask_rows & (t >= 0))[:, None] & (i < HEAD_DIM // 2)[None, :]
    offs = t[:, None] * (HEAD_DIM if ROPE == 1 else HEAD_DIM // 2) + i[None, :]
    return (tl.load(Cos + offs, mask=mask, other=1.0, volatile=VOLATILE),
            tl.load(Sin + offs, mask=mask, other=0.0, volatile=VOLATILE))


@triton.jit
def _load_rotated(base, rows, stride_n, mask_rows, Cos, Sin, tokens, num_prefix, START: tl.constexpr,
                  WIDTH: tl.constexpr, HEAD_DIM: tl.constexpr, ROPE: tl.constexpr):
    """The chunk [START, START + WIDTH) of ``rows`` (tokens ``tokens``) rotated, in pair order and
    the input dtype; zeros in padded rows and in pairs at or past HEAD_DIM."""
    ch_a, ch_b, valid = _pair_cols(START, WIDTH, HEAD_DIM, ROPE)
    if ROPE == 1:
        mask = mask_rows[:, None] & valid[None, :]
        ptrs = base + rows[:, None] * stride_n
        a = tl.load(ptrs + ch_a[None, :], mask=mask, other=0.0)
        b = tl.load(ptrs + ch_b[None, :], mask=mask, other=0.0)
    else:
        # Interleaved pairs are adjacent in memory: one contiguous (vectorised) load, split.
        a, b = tl.split(tl.reshape(_load_chunk(base, rows, stride_n, mask_rows, START, WIDTH, HEAD_DIM),
                                   (rows.shape[0], WIDTH // 2, 2)))
    a = a.to(tl.float32)
    b = b.to(tl.float32)
    cos, sin = _tables(Cos, Sin, tokens, mask_rows, num_prefix, START, WIDTH, HEAD_DIM, ROPE, False)
    # (a cos - b sin, b cos + a sin) as a sum over a size-2 axis: a layout barrier (module docstring).
    terms = tl.join(tl.join(a * cos, -(b * sin)), tl.join(b * cos, a * sin))
    x = tl.reshape(tl.sum(terms, axis=2), (a.shape[0], WIDTH))
    return _cast(x, base.dtype.element_ty)


@triton.jit
def _load_qk(base, rows, stride_n, mask_rows, START: tl.constexpr, WIDTH: tl.constexpr, HEAD_DIM: tl.constexpr,
             Cos, Sin, tokens, num_prefix, ROPE: tl.constexpr):
    """A q or k chunk: ``_load_chunk`` without RoPE, else ``_load_rotated`` (pair order)."""
    if ROPE > 0:
        x = _load_rotated(base, rows, stride_n, mask_rows, Cos, Sin, tokens, num_prefix, START, WIDTH, HEAD_DIM,
                          ROPE)
    else:
        x = _load_chunk(base, rows, stride_n, mask_rows, START, WIDTH, HEAD_DIM)
    return x


@triton.jit
def _dot_rows_t_qk(a, base, rows, stride_n, mask_rows, START: tl.constexpr, WIDTH: tl.constexpr,
                   HEAD_DIM: tl.constexpr, acc, INPUT_PRECISION: tl.constexpr, Cos, Sin, tokens, num_prefix,
                   ROPE: tl.constexpr):
    """acc + a @ k_chunk^T with the k chunk loaded by ``_load_qk`` (``_dot_rows_t`` for keys)."""
    b = _load_qk(base, rows, stride_n, mask_rows, START, WIDTH, HEAD_DIM, Cos, Sin, tokens, num_prefix, ROPE)
    return dot(a, tl.trans(b), acc, INPUT_PRECISION)


@triton.jit
def _store_dqk(base, rows, stride_n, mask_rows, g, START: tl.constexpr, WIDTH: tl.constexpr,
               HEAD_DIM: tl.constexpr, Cos, Sin, tokens, num_prefix, ROPE: tl.constexpr):
    """Store dq or dk: the fp32 gradient ``g`` of a chunk (``_store_chunk``); with RoPE, ``g`` is
    the gradient of the rotated chunk in pair order, stored through the transposed rotation."""
    if ROPE > 0:
        ga, gb = tl.split(tl.reshape(g, (g.shape[0], WIDTH // 2, 2)))
        ch_a, ch_b, valid = _pair_cols(START, WIDTH, HEAD_DIM, ROPE)
        # Volatile: not merged with the resident tile's table loads before the loop (docstring).
        cos, sin = _tables(Cos, Sin, tokens, mask_rows, num_prefix, START, WIDTH, HEAD_DIM, ROPE, True)
        mask = mask_rows[:, None] & valid[None, :]
        ptrs = base + rows[:, None] * stride_n
        dtype = base.dtype.element_ty
        tl.store(ptrs + ch_a[None, :], _cast(ga * cos + gb * sin, dtype), mask=mask)
        tl.store(ptrs + ch_b[None, :], _cast(gb * cos - ga * sin, dtype), mask=mask)
    else:
        _store_chunk(base, rows, stride_n, mask_rows, g, START, WIDTH, HEAD_DIM)


# ----------------------------------------------------------------------------------------------
# Launch
# ----------------------------------------------------------------------------------------------


def rope_args(q: torch.Tensor, k: torch.Tensor, cos, sin, num_prefix_tokens, pairing) -> dict:
    """The kernels' RoPE arguments (Cos, Sin, NUM_PREFIX, ROPE) for a launch on q (B, H, N, D)
    and k, after checking the tables: ROPE 0 and no tables when ``cos`` is None (or no token is
    rotated)."""
    if pairing not in ROPE_PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(map(repr, ROPE_PAIRINGS))}, got {pairing!r}")
    n_q, n_k, D = q.shape[2], k.shape[2], q.shape[3]
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) \
            or not 0 <= num_prefix_tokens <= n_q:
        raise ValueError(f"num_prefix_tokens must be an int in [0, N = {n_q}], got {num_prefix_tokens!r}")
    if cos is None and sin is None:
        return {"Cos": None, "Sin": None, "NUM_PREFIX": 0, "ROPE": 0}
    if cos is None or sin is None:
        raise ValueError(f"cos and sin go together: got {'sin' if cos is None else 'cos'} without "
                         f"{'cos' if cos is None else 'sin'}")
    if n_q != n_k:
        raise ValueError(f"cos/sin (RoPE) rotate q and k by the same per-token tables: self-attention only, q and k "
                         f"must have the same number of tokens, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if D % 2:
        raise ValueError(f"cos/sin (RoPE) need an even head_dim (channels rotate in pairs), got {D}")
    want = (n_q - num_prefix_tokens, D)
    for name, t in (("cos", cos), ("sin", sin)):
        require_tensor(t, name)
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape (N - num_prefix_tokens, head_dim) = {want}, got "
                             f"{tuple(t.shape)}")
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32 (the rotation runs in fp32), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")
    if want[0] == 0:  # every token is a prefix token: nothing rotates
        return {"Cos": None, "Sin": None, "NUM_PREFIX": 0, "ROPE": 0}
    if pairing == "interleaved":
        # One value per pair, contiguous (module docstring); "half" tables are read in place.
        cos, sin = _compact_pairs(cos), _compact_pairs(sin)
    return {"Cos": cos, "Sin": sin, "NUM_PREFIX": int(num_prefix_tokens), "ROPE": ROPE_PAIRINGS[pairing]}


_COMPACT: "OrderedDict[int, tuple]" = OrderedDict()
_COMPACT_ENTRIES = 16


def _compact_pairs(table: torch.Tensor) -> torch.Tensor:
    """``table[:, 0::2]`` made contiguous, kept for as long as ``table`` is unchanged.

    A model's tables are made once per grid and shared by every layer, forward and backward, so
    the copy is made once too rather than at every launch (a launch and 2 x (N - P) x D/2 x 4
    bytes each time). An entry holds its source tensor, so the source's identity cannot be
    reused while it is cached, and its in-place version, so a table written in place is
    compacted again; the 16 most recent tables are kept."""
    entry = _COMPACT.get(id(table))
    if entry is not None and entry[0] is table and entry[1] == table._version:
        _COMPACT.move_to_end(id(table))
        return entry[2]
    compact = table[:, 0::2].contiguous()
    _COMPACT[id(table)] = (table, table._version, compact)
    while len(_COMPACT) > _COMPACT_ENTRIES:
        _COMPACT.popitem(last=False)
    return compact

