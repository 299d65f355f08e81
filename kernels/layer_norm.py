"""LayerNorm over the last dimension, forward and backward, optionally with the residual add
folded in (h = x + residual; y = LayerNorm(h)), as Triton kernels and their launchers.

Layout: inputs are viewed as (M, N) row-major matrices; every row is one normalisation. A whole
row (padded to BLOCK_N, the next power of two) is held in registers, so the forward reads each
input once and writes each output once. Narrow rows are packed BLOCK_M to a program so a
192-wide row does not leave most of a 4096-element tile idle.

Backward is two passes and has no atomics, so two runs give the same bits:
  1. ``_layer_norm_bwd``: each program owns a contiguous range of rows, writes dx for them and
     accumulates sum(dy * xhat) and sum(dy) for its rows in fp32 registers, then writes those
     as one row of a (programs, N) fp32 partial-sum buffer. Rows wider than 4096 go to
     ``_layer_norm_bwd_wide`` instead, which walks each row in chunks and keeps the partial
     sums in its own row of that buffer (registers cannot hold them without spilling).
  2. ``_layer_norm_bwd_dwdb``: sums the partial rows in a fixed order into dweight and dbias.

Statistics (mean, rstd) are fp32 whatever the input dtype; so is all arithmetic.

Launchers take tensors and return tensors (no autograd): see ``fastvit/ops/_layer_norm_triton.py``.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._configs import (
    LAYER_NORM_INTERPRET_PROGRAMS,
    LAYER_NORM_MAX_WIDTH,
    layer_norm_block_n,
    layer_norm_bwd_config,
    layer_norm_dwdb_config,
    layer_norm_fwd_autotune_configs,
    layer_norm_interpret_bwd_config,
    layer_norm_interpret_dwdb_config,
    layer_norm_interpret_fwd_config,
    layer_norm_fwd_configs_for,
    prune_layer_norm_fwd_configs,
)
from ._interpret import interpreting

__all__ = [
    "layer_norm_fwd",
    "add_layer_norm_fwd",
    "layer_norm_bwd",
    "aot_specs",
    "poisoned_outputs",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

# Row counts vary with the batch: not specialised on, so a new batch size compiles nothing.
@triton.jit(do_not_specialize=["n_rows", "rows_bucket"])
def _layer_norm_fwd(
    X, R, H, Y, W, B, Mean, Rstd,
    stride_xm, stride_rm, stride_hm, stride_ym,
    n_rows, n_cols, eps,
    rows_bucket,  # unused by the kernel: only the autotune key, so a new batch size does not re-tune
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < n_rows
    mask_n = offs_n < n_cols
    mask = mask_m[:, None] & mask_n[None, :]
    # Row offsets in int64: M * stride passes 2^31 for large batches of wide rows.
    rows = offs_m.to(tl.int64)

    x = tl.load(X + rows[:, None] * stride_xm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(R + rows[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        # Round h to its storage dtype before normalising it, so y is exactly LayerNorm of the h
        # we return (as the unfused x + residual followed by layer_norm would give).
        h = (x + r).to(H.dtype.element_ty)
        tl.store(H + rows[:, None] * stride_hm + offs_n[None, :], h, mask=mask)
        x = h.to(tl.float32)

    mean = tl.sum(x, axis=1) / n_cols
    # Padding lanes must not count in the variance: they hold 0 - mean, not 0.
    diff = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(diff * diff, axis=1) / n_cols
    # Round-to-nearest sqrt: the fast approximate one costs accuracy in rstd for nothing here
    # (once per row).
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    tl.store(Mean + offs_m, mean, mask=mask_m)
    tl.store(Rstd + offs_m, rstd, mask=mask_m)

    y = diff * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(W + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_BIAS:
        b = tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(Y + rows[:, None] * stride_ym + offs_n[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_rows", "rows_per_program"])
def _layer_norm_bwd(
    DY, X, W, Mean, Rstd, DH, DX, DW_partial, DB_partial,
    stride_dym, stride_xm, stride_dhm, stride_dxm,
    n_rows, n_cols, rows_per_program,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DH: tl.constexpr,
):
    """Rows up to 4096 wide: BLOCK_M whole rows at a time in registers, partials in registers."""
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_cols

    if HAS_WEIGHT:
        w = tl.load(W + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    # Partials stay 2-D across the row loop and are reduced over rows once at the end: one
    # cross-warp reduction per program instead of one per row tile.
    acc_dw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_db = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    for m0 in range(row_start, row_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < row_end
        mask = mask_m[:, None] & mask_n[None, :]
        rows = offs_m.to(tl.int64)

        dy = tl.load(DY + rows[:, None] * stride_dym + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows[:, None] * stride_xm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + offs_m, mask=mask_m, other=0.0)
        rstd = tl.load(Rstd + offs_m, mask=mask_m, other=0.0)

        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_WEIGHT:
            wdy = dy * w[None, :]
        else:
            wdy = dy
        # dx = rstd * (wdy - mean(xhat * wdy) * xhat - mean(wdy)); padding lanes are 0 in both.
        c1 = tl.sum(xhat * wdy, axis=1) / n_cols
        c2 = tl.sum(wdy, axis=1) / n_cols
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DH:
            # add_layer_norm: h also feeds the residual stream, so its gradient joins here.
            dx += tl.load(DH + rows[:, None] * stride_dhm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dxm + offs_n[None, :], dx.to(DX.dtype.element_ty), mask=mask)

        if HAS_WEIGHT:
            acc_dw += dy * xhat
        if HAS_BIAS:
            acc_db += dy

    # Every program writes its whole partial row, so the second pass never reads memory nobody
    # wrote.
    partial = pid.to(tl.int64) * n_cols + offs_n
    if HAS_WEIGHT:
        tl.store(DW_partial + partial, tl.sum(acc_dw, axis=0), mask=mask_n)
    if HAS_BIAS:
        tl.store(DB_partial + partial, tl.sum(acc_db, axis=0), mask=mask_n)


@triton.jit(do_not_specialize=["n_rows", "rows_per_program"])
def _layer_norm_bwd_wide(
    DY, X, W, Mean, Rstd, DH, DX, DW_partial, DB_partial,
    stride_dym, stride_xm, stride_dhm, stride_dxm,
    n_rows, n_cols, rows_per_program,
    BLOCK_N: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DH: tl.constexpr,
):
    """Rows wider than 4096: a whole row of dy and xhat plus two full-width accumulators does not
    fit in registers, so each row is walked in BLOCK_N chunks twice (the sums c1, c2, then dx;
    the second walk re-reads the row from L2) and the partial sums live in this program's own
    row of the partial buffers (no other program touches it: still no atomics)."""
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    offs = tl.arange(0, BLOCK_N)
    partial_row = pid.to(tl.int64) * n_cols

    for n0 in range(0, n_cols, BLOCK_N):
        offs_n = n0 + offs
        mask_n = offs_n < n_cols
        if HAS_WEIGHT:
            tl.store(DW_partial + partial_row + offs_n, tl.zeros((BLOCK_N,), dtype=tl.float32), mask=mask_n)
        if HAS_BIAS:
            tl.store(DB_partial + partial_row + offs_n, tl.zeros((BLOCK_N,), dtype=tl.float32), mask=mask_n)

    for i in range(0, row_end - row_start):
        row64 = row_start.to(tl.int64) + i
        mean = tl.load(Mean + row64)
        rstd = tl.load(Rstd + row64)
        acc_c1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc_c2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for n0 in range(0, n_cols, BLOCK_N):
            offs_n = n0 + offs
            mask_n = offs_n < n_cols
            dy = tl.load(DY + row64 * stride_dym + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            x = tl.load(X + row64 * stride_xm + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            xhat = tl.where(mask_n, (x - mean) * rstd, 0.0)
            if HAS_WEIGHT:
                dy = dy * tl.load(W + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            acc_c1 += xhat * dy
            acc_c2 += dy
        c1 = tl.sum(acc_c1, axis=0) / n_cols
        c2 = tl.sum(acc_c2, axis=0) / n_cols

        for n0 in range(0, n_cols, BLOCK_N):
            offs_n = n0 + offs
            mask_n = offs_n < n_cols
            dy = tl.load(DY + row64 * stride_dym + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            x = tl.load(X + row64 * stride_xm + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            xhat = tl.where(mask_n, (x - mean) * rstd, 0.0)
            if HAS_WEIGHT:
                wdy = dy * tl.load(W + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            else:
                wdy = dy
            dx = (wdy - (xhat * c1 + c2)) * rstd
            if HAS_DH:
                dx += tl.load(DH + row64 * stride_dhm + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            tl.store(DX + row64 * stride_dxm + offs_n, dx.to(DX.dtype.element_ty), mask=mask_n)
            # Same pointer tensor, same layout as the zeroing above: each thread updates only
            # the elements it wrote itself, so program order makes the update safe.
            if HAS_WEIGHT:
                acc = tl.load(DW_partial + partial_row + offs_n, mask=mask_n, other=0.0)
                tl.store(DW_partial + partial_row + offs_n, acc + dy * xhat, mask=mask_n)
            if HAS_BIAS:
                acc = tl.load(DB_partial + partial_row + offs_n, mask=mask_n, other=0.0)
                tl.store(DB_partial + partial_row + offs_n, acc + dy, mask=mask_n)
        # Belt and braces should a layout ever split those: a barrier per row of >= 8192
        # elements costs nothing measurable.
        tl.debug_barrier()


@triton.jit(do_not_specialize=["n_partials"])
def _layer_norm_bwd_dwdb(
    DW_partial, DB_partial, DW, DB,
    n_partials, n_cols,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    # Column blocks are independent; within one, partial rows are summed in a fixed order.
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_cols
    acc_dw = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    acc_db = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for p0 in range(0, n_partials, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = (offs_p < n_partials)[:, None] & mask_n[None, :]
        offs = offs_p.to(tl.int64)[:, None] * n_cols + offs_n[None, :]
        if HAS_WEIGHT:
            acc_dw += tl.load(DW_partial + offs, mask=mask, other=0.0)
        if HAS_BIAS:
            acc_db += tl.load(DB_partial + offs, mask=mask, other=0.0)
    if HAS_WEIGHT:
        tl.store(DW + offs_n, tl.sum(acc_dw, axis=0).to(DW.dtype.element_ty), mask=mask_n)
    if HAS_BIAS:
        tl.store(DB + offs_n, tl.sum(acc_db, axis=0).to(DB.dtype.element_ty), mask=mask_n)


# Autotuned twin of the forward, used on GPUs only: the interpreter cannot benchmark.
_layer_norm_fwd_tuned = triton.autotune(
    configs=layer_norm_fwd_autotune_configs(),
    key=["BLOCK_N", "rows_bucket"],
    prune_configs_by={"early_config_prune": prune_layer_norm_fwd_configs},
)(_layer_norm_fwd)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

_POISON = False


@contextlib.contextmanager
def poisoned_outputs():
    """Within this block every buffer a launcher allocates (outputs and the partial sums) starts
    as NaN, so a test sees any element a kernel forgot to write. A debugging aid; not
    thread-safe."""
    global _POISON
    previous, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = previous


def _new(shape, dtype, device) -> torch.Tensor:
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as an (M, N) matrix with unit column stride, copying only when it is not one.

    ``view`` succeeds exactly when the leading dimensions collapse into one evenly strided row
    dimension (a row stride of 0, an expanded row, included: rows are only read). A last
    stride other than 1 (e.g. the all-stride-0 gradient of ``.sum()``) is copied: the kernels
    rely on unit-stride rows for vector loads.
    """
    n = t.shape[-1]
    if t.stride(-1) != 1 and n > 1:
        t = t.contiguous()
    try:
        t2 = t.view(-1, n)
    except RuntimeError:
        t2 = t.reshape(-1, n).contiguous()
    return t2


def _check(t: torch.Tensor | None, name: str, *, like: torch.Tensor | None = None, width: int | None = None):
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32 for the Triton LayerNorm, got {t.dtype}")
    if like is not None and t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but x is on {like.device}; they must match")
    if width is not None and (t.dim() != 1 or t.shape[0] != width):
        raise ValueError(f"{name} must have shape ({width},), got {tuple(t.shape)}")


def _check_x(x: torch.Tensor, name: str = "x") -> int:
    _check(x, name)
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-D tensor")
    n = x.shape[-1]
    if not 1 <= n <= LAYER_NORM_MAX_WIDTH:
        raise ValueError(f"{name}.shape[-1] must be in [1, {LAYER_NORM_MAX_WIDTH}] for the Triton LayerNorm, got {n}")
    return n


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not float(eps) > 0.0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    return float(eps)


def _rows_bucket(m: int) -> int:
    return triton.next_power_of_2(max(m, 1))


def _fwd(x, residual, weight, bias, eps, out_dtype):
    n = _check_x(x)
    _check(residual, "residual", like=x)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    _check(weight, "weight", like=x, width=n)
    _check(bias, "bias", like=x, width=n)
    eps = _check_eps(eps)

    h_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    y_dtype = h_dtype if out_dtype is None else out_dtype
    if y_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"out_dtype must be float16, bfloat16 or float32, got {y_dtype}")

    # Parameters are N elements: copying a strided one costs nothing, and the kernels index them
    # as contiguous vectors.
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    lead = x.shape[:-1]
    x2 = _rows(x)                                       # (M, N)
    r2 = None if residual is None else _rows(residual)  # (M, N)
    m = x2.shape[0]
    # Outputs are allocated in their final shapes (no views handed back to autograd).
    y = _new(x.shape, y_dtype, x.device)                # (..., N) contiguous
    h = None if residual is None else _new(x.shape, h_dtype, x.device)  # (..., N) contiguous
    mean = _new(lead, torch.float32, x.device)          # (...)
    rstd = _new(lead, torch.float32, x.device)          # (...)
    if m > 0:
        block_n = layer_norm_block_n(n)
        args = (
            x2, r2, None if h is None else h.view(m, n), y.view(m, n), weight, bias, mean, rstd,
            x2.stride(0), 0 if r2 is None else r2.stride(0), n, n,
            m, n, eps, _rows_bucket(m),
        )
        flags = dict(BLOCK_N=block_n, HAS_RESIDUAL=residual is not None,
                     HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None)
        if interpreting() or x.device.type != "cuda":
            block_m, num_warps = layer_norm_interpret_fwd_config(block_n, m)
            grid = (triton.cdiv(m, block_m),)
            _layer_norm_fwd[grid](*args, BLOCK_M=block_m, **flags, num_warps=num_warps, num_stages=1)
        else:
            def grid(meta):
                return (triton.cdiv(m, meta["BLOCK_M"]),)
            _layer_norm_fwd_tuned[grid](*args, **flags)
    return y, h, mean, rstd


def layer_norm_fwd(
    x: torch.Tensor,               # (..., N) any float dtype, any strides
    weight: torch.Tensor | None,   # (N,)
    bias: torch.Tensor | None,     # (N,)
    eps: float,
    out_dtype: torch.dtype | None = None,  # dtype of y; default x.dtype (fp32 under autocast)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = LayerNorm(x) over the last dimension. Returns (y (..., N) contiguous, mean (...) fp32,
    rstd (...) fp32)."""
    y, _, mean, rstd = _fwd(x, None, weight, bias, eps, out_dtype)
    return y, mean, rstd


def add_layer_norm_fwd(
    x: torch.Tensor,               # (..., N)
    residual: torch.Tensor,        # (..., N) same shape as x
    weight: torch.Tensor | None,   # (N,)
    bias: torch.Tensor | None,     # (N,)
    eps: float,
    out_dtype: torch.dtype | None = None,  # dtype of y; default the dtype of h
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = x + residual (in the promoted dtype of the two), y = LayerNorm(h), in one pass.
    Returns (h, y, mean, rstd); mean and rstd are fp32 statistics of h."""
    if residual is None:
        raise ValueError("residual must be a tensor for add_layer_norm_fwd")
    y, h, mean, rstd = _fwd(x, residual, weight, bias, eps, out_dtype)
    return h, y, mean, rstd


def _bwd_programs(m: int, block_m: int, programs_per_sm: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) of the backward. Fixed by (device, M, config) alone, so
    the order of the dweight/dbias sums, hence their bits, is too."""
    tiles = triton.cdiv(m, block_m)
    if interpreting() or device.type != "cuda":
        cap = LAYER_NORM_INTERPRET_PROGRAMS
    else:
        cap = torch.cuda.get_device_properties(device).multi_processor_count * programs_per_sm
    programs = max(1, min(tiles, cap))
    rows_per_program = triton.cdiv(tiles, programs) * block_m
    return triton.cdiv(m, rows_per_program), rows_per_program


def layer_norm_bwd(
    dy: torch.Tensor,              # (..., N) gradient of y, any strides (stride 0 included)
    x: torch.Tensor,               # (..., N) the LayerNorm input saved by forward (h for add_layer_norm)
    weight: torch.Tensor | None,   # (N,)
    mean: torch.Tensor,            # (...) fp32 from forward
    rstd: torch.Tensor,            # (...) fp32 from forward
    dh: torch.Tensor | None = None,  # (..., N) gradient of h for add_layer_norm, or None
    *,
    bias_dtype: torch.dtype | None = None,  # dtype of dbias; None: no dbias
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Returns (dx (..., N) in x.dtype, dweight (N,) or None, dbias (N,) or None).

    With ``dh``, dx is the gradient of h: dh + the LayerNorm backward of dy.
    """
    n = _check_x(x)
    _check(dy, "dy", like=x)
    _check(dh, "dh", like=x)
    _check(weight, "weight", like=x, width=n)
    for name, t in (("dy", dy), ("dh", dh)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    for name, t in (("mean", mean), ("rstd", rstd)):
        if t.dtype != torch.float32 or t.shape != x.shape[:-1]:
            raise ValueError(f"{name} must be float32 of shape {tuple(x.shape[:-1])}, got {t.dtype} {tuple(t.shape)}")
    if bias_dtype is not None and bias_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"bias_dtype must be float16, bfloat16 or float32, got {bias_dtype}")

    weight = None if weight is None else weight.contiguous()
    x2 = _rows(x)                                        # (M, N)
    dy2 = _rows(dy)                                      # (M, N)
    dh2 = None if dh is None else _rows(dh)              # (M, N)
    mean1 = mean.reshape(-1).contiguous()                # (M,)
    rstd1 = rstd.reshape(-1).contiguous()                # (M,)
    m = x2.shape[0]
    has_w, has_b = weight is not None, bias_dtype is not None
    dx = _new(x.shape, x.dtype, x.device)                # (..., N) contiguous
    dw = _new((n,), weight.dtype, x.device) if has_w else None  # (N,)
    db = _new((n,), bias_dtype, x.device) if has_b else None     # (N,)

    on_gpu = x.device.type == "cuda" and not interpreting()
    cfg = (layer_norm_bwd_config if on_gpu else layer_norm_interpret_bwd_config)(layer_norm_block_n(n))
    programs, rows_per_program = _bwd_programs(m, cfg.block_m, cfg.programs_per_sm, x.device) if m > 0 else (0, 0)
    dw_partial = _new((programs, n), torch.float32, x.device) if has_w else None  # (P, N)
    db_partial = _new((programs, n), torch.float32, x.device) if has_b else None  # (P, N)
    if m > 0:
        args = (dy2, x2, weight, mean1, rstd1, dh2, dx.view(m, n), dw_partial, db_partial,
                dy2.stride(0), x2.stride(0), 0 if dh2 is None else dh2.stride(0), n,
                m, n, rows_per_program)
        flags = dict(BLOCK_N=cfg.block_n, HAS_WEIGHT=has_w, HAS_BIAS=has_b, HAS_DH=dh is not None,
                     num_warps=cfg.num_warps, num_stages=1)
        if cfg.wide:
            _layer_norm_bwd_wide[(programs,)](*args, **flags)
        else:
            _layer_norm_bwd[(programs,)](*args, BLOCK_M=cfg.block_m, **flags)
    if has_w or has_b:
        if programs == 0:  # no rows: the sums are empty
            if has_w:
                dw.zero_()
            if has_b:
                db.zero_()
        else:
            block_p, block_n2, warps2 = (layer_norm_dwdb_config if on_gpu else layer_norm_interpret_dwdb_config)(n)
            _layer_norm_bwd_dwdb[(triton.cdiv(n, block_n2),)](
                dw_partial, db_partial, dw, db, programs, n,
                BLOCK_P=block_p, BLOCK_N=block_n2, HAS_WEIGHT=has_w, HAS_BIAS=has_b,
                num_warps=warps2, num_stages=1,
            )
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# Ahead-of-time compile specs
# --------------------------------------------------------------------------------------------

_TL_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _spec(name, fn, signature, constexprs, num_warps, aligned_ints):
    # Torch allocations are 16-byte aligned and Triton specialises on it, as it does on ints
    # divisible by 16 (widths of 192 ... 1280, and the row strides of such rows). The
    # "unaligned" specs (a width of 1000) list only the pointers.
    aligned = [k for k, v in signature.items() if v.startswith("*")] + list(aligned_ints)
    for k, v in constexprs.items():
        signature.setdefault(k, "constexpr")
    return {"name": name, "fn": fn, "signature": signature, "constexprs": constexprs,
            "num_warps": num_warps, "num_stages": 1, "aligned": aligned}


def _all_block_ns() -> list[int]:
    out, block_n = [], layer_norm_block_n(1)
    while block_n <= layer_norm_block_n(LAYER_NORM_MAX_WIDTH):
        out.append(block_n)
        block_n *= 2
    return out


def aot_specs(dtypes=SUPPORTED_DTYPES, block_ns=None, alignments=(True, False)) -> list[dict]:
    """One spec per (kernel, configuration the launchers may pick, dtype, variant).

    Forward: every BLOCK_N bucket x every autotune config left by the width-dependent pruning
    x {plain, residual}. Backward: every bucket's fixed config x {plain, with dh}. dweight/dbias
    reduction: its config. Each x {width divisible by 16, not}. Weight and bias are present
    (the most registers); the weight dtype is the activation dtype (autocast's fp32 weights and
    output are the fp32 case's loads and stores).
    """
    block_ns = _all_block_ns() if block_ns is None else list(block_ns)
    specs = []
    for dtype in dtypes:
        t, tn = "*" + _TL_NAME[dtype], _TL_NAME[dtype]
        for aligned in alignments:
            tag = "" if aligned else "_unaligned"
            for block_n in block_ns:
                for residual in (False, True):
                    res = "_res" if residual else ""
                    ints = ["n_cols", "stride_xm", "stride_ym"] + (["stride_rm", "stride_hm"] if residual else [])
                    for block_m, num_warps in layer_norm_fwd_configs_for(block_n):
                        specs.append(_spec(
                            f"_layer_norm_fwd_{tn}_n{block_n}_m{block_m}_w{num_warps}{res}{tag}", _layer_norm_fwd,
                            {"X": t, "R": t if residual else "constexpr", "H": t if residual else "constexpr",
                             "Y": t, "W": t, "B": t, "Mean": "*fp32", "Rstd": "*fp32",
                             "stride_xm": "i32", "stride_rm": "i32", "stride_hm": "i32", "stride_ym": "i32",
                             "n_rows": "i32", "n_cols": "i32", "eps": "fp32", "rows_bucket": "i32"},
                            {**({} if residual else {"R": None, "H": None}),
                             "BLOCK_M": block_m, "BLOCK_N": block_n, "HAS_RESIDUAL": residual,
                             "HAS_WEIGHT": True, "HAS_BIAS": True},
                            num_warps, ints if aligned else []))
                    cfg = layer_norm_bwd_config(block_n)
                    ints = ["n_cols", "stride_dym", "stride_xm", "stride_dxm"] + (["stride_dhm"] if residual else [])
                    sig = {"DY": t, "X": t, "W": t, "Mean": "*fp32", "Rstd": "*fp32",
                           "DH": t if residual else "constexpr", "DX": t, "DW_partial": "*fp32", "DB_partial": "*fp32",
                           "stride_dym": "i32", "stride_xm": "i32", "stride_dhm": "i32", "stride_dxm": "i32",
                           "n_rows": "i32", "n_cols": "i32", "rows_per_program": "i32"}
                    cx = {**({} if residual else {"DH": None}), "BLOCK_N": cfg.block_n,
                          "HAS_WEIGHT": True, "HAS_BIAS": True, "HAS_DH": residual}
                    if cfg.wide:
                        name = f"_layer_norm_bwd_wide_{tn}_n{block_n}_chunk{cfg.block_n}_w{cfg.num_warps}{res}{tag}"
                        specs.append(_spec(name, _layer_norm_bwd_wide, sig, cx, cfg.num_warps, ints if aligned else []))
                    else:
                        name = f"_layer_norm_bwd_{tn}_n{block_n}_m{cfg.block_m}_w{cfg.num_warps}{res}{tag}"
                        specs.append(_spec(name, _layer_norm_bwd, sig, {**cx, "BLOCK_M": cfg.block_m}, cfg.num_warps,
                                           ints if aligned else []))
            for block_p, block_n2, num_warps in sorted({layer_norm_dwdb_config(b) for b in block_ns}):
                specs.append(_spec(
                    f"_layer_norm_bwd_dwdb_{tn}_p{block_p}_n{block_n2}_w{num_warps}{tag}", _layer_norm_bwd_dwdb,
                    {"DW_partial": "*fp32", "DB_partial": "*fp32", "DW": t, "DB": t, "n_partials": "i32", "n_cols": "i32"},
                    {"BLOCK_P": block_p, "BLOCK_N": block_n2, "HAS_WEIGHT": True, "HAS_BIAS": True},
                    num_warps, ["n_cols"] if aligned else []))
    return specs
