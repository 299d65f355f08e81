"""What the attention forward (``kernels/attention.py``) and backward
(``kernels/attention_bwd.py``) share: device helpers, the launch-argument checks, the head dim's
power-of-two chunks, the autotune key and the three kernels' launch through
``kernels/_autotune.py``.

Head dims that are not powers of two
------------------------------------
``tl.dot`` and ``tl.arange`` need power-of-two tile widths, and padding a head dim to the next
power of two wastes tensor-core work: 80 computed as 128 is 1.6x the multiply-adds, 72 is 1.8x.
So the head dim is split into up to three power-of-two chunks of at least 16 columns, largest
first, passed as the constexprs ``BLOCK_D`` (the first chunk), ``D1`` and ``D2`` (0: absent):
80 = 64 + 16, 96 = 64 + 32, 112 = 64 + 32 + 16; 72 = 64 + 16, 88 = 64 + 32 and 104 = 64 + 32 + 16
with the last chunk's tail masked: the head dim is rounded up to a multiple of 16 (the tensor
cores' K step) and that is written in binary, so 88 takes two chunks rather than 64 + 16 + 16
(the same 96 columns, one dot fewer).
Every q k^T is a sum of one dot per chunk into the same fp32 score tile, every P V and gradient
has one fp32 accumulator per chunk. Why constexpr chunks rather than a loop over a chunk index
or a tuple of tiles: the tiles a kernel keeps across its key loop (q, or k and v) and its
accumulators must stay in registers, and a chunk of a different width is a tensor of a different
type, so they are separate variables, each under a compile-time ``if``; a power of two has
D1 = D2 = 0, the branches vanish at compile time, and the code is exactly the single-tile code
(no slowdown for 64 and 128). ``BLOCK_D`` keeps its earlier meaning there (the padded head dim),
so code that launches a kernel with ``BLOCK_D`` alone (D1, D2 defaulted to 0) still works.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _configs
from ._aot import AotSpec, aot_spec, dtype_tag
from ._autotune import TunedKernel
from ._checks import require_dtype, require_tensor
from ._interpret import INTERPRETING, dot, input_precision

# Softmax runs in base 2 (exp2 is the native instruction): exp(x) = exp2(x * LOG2E).
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
MAX_HEAD_DIM = 256
# Lengths enter the autotune key rounded up to a power of two (N_Q_KEY, N_K_KEY; unused in the
# kernels' bodies), so a new resolution does not re-tune or recompile everything.
# ROPE (dense kernels only; a key a kernel does not take is skipped by the autotuner).
TUNING_KEY = ["N_Q_KEY", "N_K_KEY", "HEAD_DIM", "DROPOUT", "INPUT_PRECISION", "ROPE"]


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
def _slice_base(Base, off_b, off_h, start, stride_b, stride_h, stride_n):
    """Pointer to token ``start`` of one (batch, head) slice, in int64 (B*H*N*D can pass 2^31);
    tiles are then addressed from it by small int32 offsets."""
    return Base + off_b * stride_b + off_h * stride_h + start.to(tl.int64) * stride_n


@triton.jit
def _load_chunk(base, rows, stride_n, mask_rows, START: tl.constexpr, WIDTH: tl.constexpr,
                HEAD_DIM: tl.constexpr):
    """Rows ``rows`` x head-dim columns [START, START + WIDTH) of the slice at ``base``; zeros
    in padded rows and in columns at or past HEAD_DIM (the masked tail of the last chunk)."""
    cols = START + tl.arange(0, WIDTH)
    return tl.load(base + rows[:, None] * stride_n + cols[None, :],
                   mask=mask_rows[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def _store_chunk(base, rows, stride_n, mask_rows, x, START: tl.constexpr, WIDTH: tl.constexpr,
                 HEAD_DIM: tl.constexpr):
    """Store the fp32 tile ``x`` (rows x WIDTH) at columns [START, START + WIDTH), rounded to
    the pointer's dtype, leaving padded rows and columns untouched."""
    cols = START + tl.arange(0, WIDTH)
    tl.store(base + rows[:, None] * stride_n + cols[None, :], _cast(x, base.dtype.element_ty),
             mask=mask_rows[:, None] & (cols < HEAD_DIM)[None, :])


@triton.jit
def _hint_strides(stride_b, stride_h, stride_n, STRIDE_ALIGN: tl.constexpr):
    """The strides of one tensor, declared multiples of STRIDE_ALIGN when it is above 1.

    Triton specialises integer arguments on divisibility by 16 only, so at head dim 72 or 88
    (packed qkv: a head stride of 72) it sees strides of unknown alignment and loads every
    element alone (and spills); the launcher checks that every stride is a multiple of 8 and
    says so here, which lets 16-byte vector loads through. (x // 8) * 8 rather than
    tl.multiple_of: the same value when the launcher's check holds, and the compiler's
    alignment analysis reads it off the multiplication; tl.multiple_of on the argument changed
    nothing in the PTX (triton 3.8: scalar b16 loads at head dim 72 either way).)"""
    if STRIDE_ALIGN > 1:
        stride_b = (stride_b // STRIDE_ALIGN) * STRIDE_ALIGN
        stride_h = (stride_h // STRIDE_ALIGN) * STRIDE_ALIGN
        stride_n = (stride_n // STRIDE_ALIGN) * STRIDE_ALIGN
    return stride_b, stride_h, stride_n


@triton.jit
def _dot_rows_t(a, base, rows, stride_n, mask_rows, START: tl.constexpr, WIDTH: tl.constexpr,
                HEAD_DIM: tl.constexpr, acc, INPUT_PRECISION: tl.constexpr):
    """acc + a @ chunk^T, the chunk (rows x WIDTH) loaded from ``base``: one head-dim chunk's
    share of q k^T (or dO v^T)."""
    b = _load_chunk(base, rows, stride_n, mask_rows, START, WIDTH, HEAD_DIM)
    return dot(a, tl.trans(b), acc, INPUT_PRECISION)


@triton.jit
def _dot_rows(a, base, rows, stride_n, mask_rows, START: tl.constexpr, WIDTH: tl.constexpr,
              HEAD_DIM: tl.constexpr, acc, INPUT_PRECISION: tl.constexpr):
    """acc + a @ chunk, the chunk (rows x WIDTH) loaded from ``base``: P V for one chunk."""
    b = _load_chunk(base, rows, stride_n, mask_rows, START, WIDTH, HEAD_DIM)
    return dot(a, b, acc, INPUT_PRECISION)


@triton.jit
def _tile_ptrs(Base, off_b, off_h, start, stride_b, stride_h, stride_n, BLOCK: tl.constexpr, offs_d):
    """Pointers to rows start .. start+BLOCK of one (batch, head) slice: an int64 scalar base
    (B*H*N*D can pass 2^31) plus small int32 offsets within the tile."""
    return (Base + off_b * stride_b + off_h * stride_h + start.to(tl.int64) * stride_n
            + tl.arange(0, BLOCK)[:, None] * stride_n + offs_d[None, :])


# ----------------------------------------------------------------------------------------------
# Launch
# ----------------------------------------------------------------------------------------------


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two, at least 16 (tl.dot's minimum on tensor cores): the
    single-chunk width. The kernels here use ``head_dim_chunks`` instead."""
    return max(16, triton.next_power_of_2(int(head_dim)))


MAX_CHUNKS = 3


def head_dim_chunks(head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_D, D1, D2): the head dim's power-of-two chunks (see the module docstring).

    The head dim rounded up to a multiple of 16, written as a sum of distinct powers of two,
    largest first; a power of two is one chunk. Three chunks cover every multiple of 16 up to
    256 except 240 (128 + 64 + 32 + 16), which is padded to one chunk of 256, as before.
    """
    head_dim = int(head_dim)
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    padded = max(16, -(-head_dim // 16) * 16)
    parts = [1 << b for b in range(padded.bit_length() - 1, 3, -1) if padded >> b & 1]
    if len(parts) > MAX_CHUNKS:
        parts = [block_d(head_dim)]
    return tuple(parts + [0] * (MAX_CHUNKS - len(parts)))


def chunk_width(chunks) -> int:
    """The head-dim columns a kernel computes on: the sum of its chunks."""
    return sum(chunks)


def chunk_constexprs(head_dim: int) -> dict:
    """The head-dim constexprs of a chunked kernel: HEAD_DIM, BLOCK_D, D1, D2."""
    first, d1, d2 = head_dim_chunks(head_dim)
    return {"HEAD_DIM": int(head_dim), "BLOCK_D": first, "D1": d1, "D2": d2}


def tuned(fn, kernel: str, prune) -> TunedKernel:
    """Attention kernel ``kernel`` ("fwd", "dkdv", "dq") with its GPU candidates, its named
    prune filter and the interpreter's configuration."""
    return TunedKernel(fn, configs=_configs.ATTENTION_CONFIGS[kernel], key=TUNING_KEY, prune=prune,
                       interpret_config=_configs.attention_interpret_config)


def launch(kernel: TunedKernel, grid_rows: int, bh: int, args: dict, *, block: str = "BLOCK_M") -> None:
    """``kernel`` on the flat grid (cdiv(grid_rows, <block>) * bh,), ``block`` naming the
    meta-parameter that tiles ``grid_rows``."""
    kernel[lambda meta: (triton.cdiv(grid_rows, meta[block]) * bh,)](**args)


def length_keys(n_q: int, n_k: int) -> dict:
    return {"N_Q_KEY": triton.next_power_of_2(n_q), "N_K_KEY": triton.next_power_of_2(n_k)}


def stride_align(*tensors) -> int:
    """STRIDE_ALIGN for a launch (see ``_hint_strides``): 8 when every stride of every tensor is
    a multiple of 8 but not all are multiples of 16 (which Triton detects by itself), else 1."""
    strides = [s for t in tensors for s in t.stride()[:-1]]  # the unit last stride is not an argument
    if all(s % 16 == 0 for s in strides) or any(s % 8 for s in strides):
        return 1
    return 8


def aligned_strides(fn, head_dim: int) -> list[str]:
    """The stride arguments Triton sees as multiples of 16 at a launch with this head dim: all of
    them when the head dim is a multiple of 16 ((B, H, N, D) tensors and packed qkv alike), none
    otherwise (packed qkv at head dim 72 has a head stride of 72; ``STRIDE_ALIGN`` = 8 then)."""
    if int(head_dim) % 16:
        return []
    return [a for a in fn.arg_names if a.startswith("stride_")]


def kernel_head_dim(fn, head_dim: int) -> dict:
    """The head-dim constexprs ``fn`` takes at ``head_dim``: chunked (HEAD_DIM, BLOCK_D, D1, D2)
    when it has the chunk parameters, else HEAD_DIM and the padded BLOCK_D."""
    if "D1" in fn.arg_names:
        dims = chunk_constexprs(head_dim)
        if "STRIDE_ALIGN" in fn.arg_names:
            # What a launch on packed qkv passes (every stride a multiple of 8 at head dims that are).
            dims["STRIDE_ALIGN"] = 8 if int(head_dim) % 16 and int(head_dim) % 8 == 0 else 1
        return dims
    return {"HEAD_DIM": int(head_dim), "BLOCK_D": block_d(head_dim)}


def dot_kernel_specs(kernel: str, fn, tensors: dict, dtypes, head_dims, dropout, *, family: str = "nvidia",
                     configs=None, rope: int = 0) -> list[AotSpec]:
    """One spec per (configuration the autotuner may pick, dtype, head_dim, dropout) of one of the
    three tl.dot kernels. ``tensors`` maps each pointer argument to its dtype (None: the
    activation dtype). Pointers are 16-byte aligned at every launch compiled here (views of
    packed qkv at head dims that are multiples of 8), strides per ``aligned_strides``: what
    Triton specialises on. ``family``: the architecture family (``_configs.ARCH_FAMILIES``) whose
    configurations are compiled; ``configs(kernel, width, dtype, dropout)`` replaces them (default:
    what ``_configs.attention_configs`` keeps for the family, i.e. what its autotuner may pick).
    ``rope``: the ROPE constexpr of a kernel that takes one (1 "half", 2 "interleaved": fp32
    tables; 0: none), which the configurations are pruned for too.
    Configuration keywords that are not kernel arguments (AMD's ``waves_per_eu``,
    ``matrix_instr_nonkdim``) are compile options, as they are at launch."""
    if configs is None:
        def configs(kern, width, dtype, drop):
            return _configs.attention_configs(kern, width, dtype, drop, family=family, rope=bool(rope))
    rope_pointers, rope_constexprs = {}, {}
    if "ROPE" in fn.arg_names:
        table = torch.float32 if rope else None
        rope_pointers, rope_constexprs = {"Cos": table, "Sin": table}, {"ROPE": int(rope)}
    elif rope:
        raise ValueError(f"rope: {fn.__name__} takes no RoPE tables")
    specs = []
    for dtype in dtypes:
        for head_dim in head_dims:
            dims = kernel_head_dim(fn, head_dim)
            width = _configs.attention_width(dims)
            for drop in dropout:
                for cfg in configs(kernel, width, dtype, drop):
                    name = (f"{fn.__name__}_d{head_dim}_{dtype_tag(dtype)}_m{cfg.kwargs['BLOCK_M']}"
                            f"n{cfg.kwargs['BLOCK_N']}w{cfg.num_warps}s{cfg.num_stages}"
                            + "".join(f"_{k}{v}" for k, v in sorted(cfg.kwargs.items())
                                      if k not in ("BLOCK_M", "BLOCK_N"))
                            + ("_dropout" if drop else "") + (f"_rope{rope}" if rope else ""))
                    constexprs = {**dims, **rope_constexprs, "DROPOUT": drop, "INPUT_PRECISION": input_precision(dtype),
                                  **{k: v for k, v in cfg.kwargs.items() if k in fn.arg_names}}
                    specs.append(aot_spec(
                        name, fn, pointers={**{k: v or dtype for k, v in tensors.items()}, **rope_pointers},
                        constexprs=constexprs,
                        floats=("sm_scale", "dropout_p"), aligned=aligned_strides(fn, head_dim),
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages, mma=True,
                        options={k: v for k, v in cfg.kwargs.items() if k not in fn.arg_names}))
    return specs


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when the kernels can address it by strides, else a contiguous copy.

    The kernels need a unit last stride. Broadcast (stride-0) dimensions, as in the gradient of
    ``.sum()``, are copied too: the interpreter mis-reads them.
    """
    if t.stride(-1) != 1 or any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)):
        return t.contiguous()
    return t


def check_inputs(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(t, name)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D), got shape {tuple(t.shape)}")
        require_dtype(t, name, what="the Triton attention kernels")
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


def check_dropout(dropout_p, seed) -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0 and not (isinstance(seed, int) and 0 <= seed < 2**31):
        raise ValueError(f"seed must be an int in [0, 2**31) when dropout_p > 0, got {seed!r}")
