"""What the attention forward (``kernels/attention.py``) and backward
(``kernels/attention_bwd.py``) share: device helpers, the launch-argument checks, the padded
head dim, the autotune key and the three kernels' launch through ``kernels/_autotune.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _configs
from ._aot import AotSpec, aot_spec, dtype_tag
from ._autotune import TunedKernel
from ._checks import require_dtype, require_tensor
from ._interpret import INTERPRETING, input_precision

# Softmax runs in base 2 (exp2 is the native instruction): exp(x) = exp2(x * LOG2E).
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
MAX_HEAD_DIM = 256
# Lengths enter the autotune key rounded up to a power of two (N_Q_KEY, N_K_KEY; unused in the
# kernels' bodies), so a new resolution does not re-tune or recompile everything.
TUNING_KEY = ["N_Q_KEY", "N_K_KEY", "HEAD_DIM", "DROPOUT", "INPUT_PRECISION"]


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
def _tile_ptrs(Base, off_b, off_h, start, stride_b, stride_h, stride_n, BLOCK: tl.constexpr, offs_d):
    """Pointers to rows start .. start+BLOCK of one (batch, head) slice: an int64 scalar base
    (B*H*N*D can pass 2^31) plus small int32 offsets within the tile."""
    return (Base + off_b * stride_b + off_h * stride_h + start.to(tl.int64) * stride_n
            + tl.arange(0, BLOCK)[:, None] * stride_n + offs_d[None, :])


# ----------------------------------------------------------------------------------------------
# Launch
# ----------------------------------------------------------------------------------------------


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two, at least 16 (tl.dot's minimum on tensor cores)."""
    return max(16, triton.next_power_of_2(int(head_dim)))


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


def dot_kernel_specs(kernel: str, fn, tensors: dict, dtypes, head_dims, dropout) -> list[AotSpec]:
    """One spec per (configuration the autotuner may pick, dtype, head_dim, dropout) of one of the
    three tl.dot kernels. ``tensors`` maps each pointer argument to its dtype (None: the
    activation dtype). Pointers and strides are 16-divisible at every launch compiled here (head
    dims multiples of 16; packed qkv or (B, H, N, D) layouts), which Triton specialises on."""
    specs = []
    for dtype in dtypes:
        for head_dim in head_dims:
            bd = block_d(head_dim)
            for drop in dropout:
                for cfg in _configs.attention_configs(kernel, bd, dtype, drop):
                    name = (f"{fn.__name__}_d{head_dim}_{dtype_tag(dtype)}_m{cfg.kwargs['BLOCK_M']}"
                            f"n{cfg.kwargs['BLOCK_N']}w{cfg.num_warps}s{cfg.num_stages}{'_dropout' if drop else ''}")
                    constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": bd, "DROPOUT": drop,
                                  "INPUT_PRECISION": input_precision(dtype), **cfg.kwargs}
                    specs.append(aot_spec(
                        name, fn, pointers={k: v or dtype for k, v in tensors.items()}, constexprs=constexprs,
                        floats=("sm_scale", "dropout_p"), aligned=[a for a in fn.arg_names if a.startswith("stride_")],
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages, mma=True))
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
