"""LayerNorm over the last dimension, forward and backward, optionally with the residual add
folded in (h = x + residual; y = LayerNorm(h)), as Triton kernels and their launchers.

Layout: inputs are viewed as (M, N) row-major matrices; every row is one normalisation. A whole
row (padded to BLOCK_N, the next power of two) is held in registers, so the forward reads each
input once and writes each output once. Narrow rows are packed BLOCK_M to a program so a
192-wide row does not leave most of a 4096-element tile idle.

Backward is two passes and has no atomics, so two runs give the same bits:
  1. ``_layer_norm_bwd``: each program owns a contiguous range of rows, writes dx for them and
     accumulates sum(dy * xhat) and sum(dy) for its rows in fp32 registers, then writes those
     as one row of a (programs, N) fp32 partial-sum buffer.
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
    LAYER_NORM_BWD_PROGRAMS_PER_SM,
    LAYER_NORM_INTERPRET_PROGRAMS,
    LAYER_NORM_MAX_WIDTH,
    layer_norm_block_n,
    layer_norm_bwd_config,
    layer_norm_dwdb_config,
    layer_norm_fwd_autotune_configs,
    layer_norm_fwd_config,
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

@triton.jit
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


@triton.jit
def _layer_norm_bwd(
    DY, X, W, Mean, Rstd, DH, DX, DW_partial, DB_partial,
    stride_dym, stride_xm, stride_dhm, stride_dxm,
    n_rows, n_cols, rows_per_program,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DH: tl.constexpr,
):
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
        # dx = rstd * (wdy - mean(xhat * wdy) * xhat - mean(wdy)), masked lanes are 0 in both.
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

    # Every program writes its partial row, even one that got no rows (zeros), so the second
    # pass never reads memory nobody wrote.
    partial = pid.to(tl.int64) * n_cols + offs_n
    if HAS_WEIGHT:
        tl.store(DW_partial + partial, tl.sum(acc_dw, axis=0), mask=mask_n)
    if HAS_BIAS:
        tl.store(DB_partial + partial, tl.sum(acc_db, axis=0), mask=mask_n)


@triton.jit
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
    """Within this block every buffer a launcher allocates starts as NaN (ints as -1), so a test
    sees any element a kernel forgot to write. A debugging aid; not thread-safe."""
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


def _rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` as an (M, N) matrix with unit column stride, copying only when it is not one.

    ``view`` succeeds exactly when the leading dimensions collapse into one evenly strided row
    dimension. A last stride other than 1 (e.g. a stride-0 gradient from ``.sum()``) is copied:
    the kernels rely on contiguous rows for vector loads.
    """
    n = t.shape[-1]
    if t.stride(-1) != 1 and n > 1:
        t = t.contiguous()
    try:
        t2 = t.view(-1, n)
    except RuntimeError:
        t2 = t.reshape(-1, n).contiguous()
    if t2.shape[0] > 1 and t2.stride(0) == 0 and interpreting():
        # The interpreter mis-reads overlapping (stride-0) rows; a GPU reads them fine.
        t2 = t2.contiguous()
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

    lead = x.shape[:-1]
    x2 = _rows(x, "x")                                  # (M, N)
    r2 = None if residual is None else _rows(residual, "residual")  # (M, N)
    m = x2.shape[0]
    y = _new((m, n), y_dtype, x.device)                 # (M, N)
    h = None if residual is None else _new((m, n), h_dtype, x.device)  # (M, N)
    mean = _new((m,), torch.float32, x.device)          # (M,)
    rstd = _new((m,), torch.float32, x.device)          # (M,)
    if m > 0:
        block_n = layer_norm_block_n(n)
        args = (
            x2, r2, h, y, weight, bias, mean, rstd,
            x2.stride(0), 0 if r2 is None else r2.stride(0), 0 if h is None else h.stride(0), y.stride(0),
            m, n, eps, _rows_bucket(m),
        )
        flags = dict(BLOCK_N=block_n, HAS_RESIDUAL=residual is not None,
                     HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None)
        if interpreting() or x.device.type != "cuda":
            block_m, num_warps = layer_norm_fwd_config(block_n, m)
            grid = (triton.cdiv(m, block_m),)
            _layer_norm_fwd[grid](*args, BLOCK_M=block_m, **flags, num_warps=num_warps, num_stages=1)
        else:
            def grid(meta):
                return (triton.cdiv(m, meta["BLOCK_M"]),)
            _layer_norm_fwd_tuned[grid](*args, **flags)
    y = y.view(*lead, n)
    h = None if h is None else h.view(*lead, n)
    return y, h, mean.view(lead), rstd.view(lead)


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


def _bwd_programs(m: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) of the backward. Fixed by (device, M, BLOCK_M) alone, so
    the order of the dweight/dbias sums, hence their bits, is too."""
    tiles = triton.cdiv(m, block_m)
    if interpreting() or device.type != "cuda":
        cap = LAYER_NORM_INTERPRET_PROGRAMS
    else:
        cap = torch.cuda.get_device_properties(device).multi_processor_count * LAYER_NORM_BWD_PROGRAMS_PER_SM
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

    lead = x.shape[:-1]
    x2 = _rows(x, "x")                                   # (M, N)
    dy2 = _rows(dy, "dy")                                # (M, N)
    dh2 = None if dh is None else _rows(dh, "dh")        # (M, N)
    mean1 = mean.reshape(-1).contiguous()                # (M,)
    rstd1 = rstd.reshape(-1).contiguous()                # (M,)
    m = x2.shape[0]
    has_w, has_b = weight is not None, bias_dtype is not None
    dx = _new((m, n), x.dtype, x.device)                 # (M, N)
    dw = _new((n,), weight.dtype, x.device) if has_w else None  # (N,)
    db = _new((n,), bias_dtype, x.device) if has_b else None     # (N,)

    block_n = layer_norm_block_n(n)
    block_m, num_warps = layer_norm_bwd_config(block_n)
    programs, rows_per_program = _bwd_programs(m, block_m, x.device) if m > 0 else (0, 0)
    dw_partial = _new((programs, n), torch.float32, x.device) if has_w else None  # (P, N)
    db_partial = _new((programs, n), torch.float32, x.device) if has_b else None  # (P, N)
    if m > 0:
        _layer_norm_bwd[(programs,)](
            dy2, x2, weight, mean1, rstd1, dh2, dx, dw_partial, db_partial,
            dy2.stride(0), x2.stride(0), 0 if dh2 is None else dh2.stride(0), dx.stride(0),
            m, n, rows_per_program,
            BLOCK_M=block_m, BLOCK_N=block_n, HAS_WEIGHT=has_w, HAS_BIAS=has_b, HAS_DH=dh is not None,
            num_warps=num_warps, num_stages=1,
        )
    if has_w or has_b:
        if programs == 0:  # no rows: the sums are empty
            if has_w:
                dw.zero_()
            if has_b:
                db.zero_()
        else:
            block_p, block_n2, warps2 = layer_norm_dwdb_config(n)
            _layer_norm_bwd_dwdb[(triton.cdiv(n, block_n2),)](
                dw_partial, db_partial, dw, db, programs, n,
                BLOCK_P=block_p, BLOCK_N=block_n2, HAS_WEIGHT=has_w, HAS_BIAS=has_b,
                num_warps=warps2, num_stages=1,
            )
    return dx.view(*lead, n), dw, db


# --------------------------------------------------------------------------------------------
# Ahead-of-time compile specs
# --------------------------------------------------------------------------------------------

_TL_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def aot_specs(dtypes=SUPPORTED_DTYPES, block_ns=None) -> list[dict]:
    """One spec per (kernel, configuration the launchers may pick, dtype, variant).

    Forward: every BLOCK_N bucket x every autotune config that survives the width-dependent
    pruning x {plain, residual} (weight and bias present: the most registers). Backward: every
    bucket's fixed config x {plain, residual}. dweight/dbias reduction: every config it uses.
    Weight dtype equals the activation dtype; autocast's fp32 weights and output change no
    register count that matters (fp32 is already among the dtypes).
    """
    if block_ns is None:
        block_ns = [layer_norm_block_n(1) << i for i in range(64)
                    if (layer_norm_block_n(1) << i) <= layer_norm_block_n(LAYER_NORM_MAX_WIDTH)]
    specs = []
    for dtype in dtypes:
        t = "*" + _TL_NAME[dtype]
        for block_n in block_ns:
            for residual in (False, True):
                for block_m, num_warps in layer_norm_fwd_configs_for(block_n):
                    specs.append({
                        "name": f"_layer_norm_fwd_{_TL_NAME[dtype]}_n{block_n}_m{block_m}_w{num_warps}"
                                + ("_res" if residual else ""),
                        "fn": _layer_norm_fwd,
                        "signature": {
                            "X": t, "R": t if residual else "constexpr", "H": t if residual else "constexpr",
                            "Y": t, "W": t, "B": t, "Mean": "*fp32", "Rstd": "*fp32",
                            "stride_xm": "i32", "stride_rm": "i32", "stride_hm": "i32", "stride_ym": "i32",
                            "n_rows": "i32", "n_cols": "i32", "eps": "fp32", "rows_bucket": "i32",
                            "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "HAS_RESIDUAL": "constexpr",
                            "HAS_WEIGHT": "constexpr", "HAS_BIAS": "constexpr",
                        },
                        "constexprs": {
                            **({} if residual else {"R": None, "H": None}),
                            "BLOCK_M": block_m, "BLOCK_N": block_n, "HAS_RESIDUAL": residual,
                            "HAS_WEIGHT": True, "HAS_BIAS": True,
                        },
                        "num_warps": num_warps, "num_stages": 1,
                    })
                block_m, num_warps = layer_norm_bwd_config(block_n)
                specs.append({
                    "name": f"_layer_norm_bwd_{_TL_NAME[dtype]}_n{block_n}_m{block_m}_w{num_warps}"
                            + ("_res" if residual else ""),
                    "fn": _layer_norm_bwd,
                    "signature": {
                        "DY": t, "X": t, "W": t, "Mean": "*fp32", "Rstd": "*fp32",
                        "DH": t if residual else "constexpr", "DX": t,
                        "DW_partial": "*fp32", "DB_partial": "*fp32",
                        "stride_dym": "i32", "stride_xm": "i32", "stride_dhm": "i32", "stride_dxm": "i32",
                        "n_rows": "i32", "n_cols": "i32", "rows_per_program": "i32",
                        "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                        "HAS_WEIGHT": "constexpr", "HAS_BIAS": "constexpr", "HAS_DH": "constexpr",
                    },
                    "constexprs": {
                        **({} if residual else {"DH": None}),
                        "BLOCK_M": block_m, "BLOCK_N": block_n,
                        "HAS_WEIGHT": True, "HAS_BIAS": True, "HAS_DH": residual,
                    },
                    "num_warps": num_warps, "num_stages": 1,
                })
        seen = set()
        for block_n in block_ns:
            cfg = layer_norm_dwdb_config(block_n)
            if cfg in seen:
                continue
            seen.add(cfg)
            block_p, block_n2, num_warps = cfg
            specs.append({
                "name": f"_layer_norm_bwd_dwdb_{_TL_NAME[dtype]}_p{block_p}_n{block_n2}_w{num_warps}",
                "fn": _layer_norm_bwd_dwdb,
                "signature": {
                    "DW_partial": "*fp32", "DB_partial": "*fp32", "DW": t, "DB": t,
                    "n_partials": "i32", "n_cols": "i32",
                    "BLOCK_P": "constexpr", "BLOCK_N": "constexpr",
                    "HAS_WEIGHT": "constexpr", "HAS_BIAS": "constexpr",
                },
                "constexprs": {"BLOCK_P": block_p, "BLOCK_N": block_n2, "HAS_WEIGHT": True, "HAS_BIAS": True},
                "num_warps": num_warps, "num_stages": 1,
            })
    return specs
