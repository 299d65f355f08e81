"""Backward of the LayerNorm (``kernels/layer_norm.py``): kernels and launcher.

Two passes and no atomics, so two runs give the same bits:
  1. ``_layer_norm_bwd``: each program owns a contiguous range of rows, writes dx for them and
     accumulates sum(dy * xhat) and sum(dy) for its rows in fp32 registers, then writes those
     as one row of a (programs, N) fp32 partial-sum buffer. Rows wider than 4096 go to
     ``_layer_norm_bwd_wide`` instead, which walks each row in chunks and keeps the partial
     sums in its own row of that buffer (registers cannot hold them without spilling).
  2. ``_layer_norm_bwd_dwdb``: sums the partial rows in a fixed order into dweight and dbias.

The configurations are fixed per width bucket (``kernels/_configs.py``), never autotuned: the
order of the sums, hence their bits, must not depend on a timing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _autotune
from . import _configs as C
from ._aot import aot_spec, tl_type
from ._layer_norm_common import check, check_out_dtype, check_x, new, rows

__all__ = ["layer_norm_bwd", "aot_specs"]


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


def _bwd_programs(m: int, block_m: int, programs_per_sm: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) of the backward. Fixed by (device, M, config) alone, so
    the order of the dweight/dbias sums, hence their bits, is too."""
    tiles = triton.cdiv(m, block_m)
    if _autotune.on_gpu():
        cap = torch.cuda.get_device_properties(device).multi_processor_count * programs_per_sm
    else:
        cap = C.LAYER_NORM_INTERPRET_PROGRAMS
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
    n = check_x(x)
    check(dy, "dy", like=x)
    check(dh, "dh", like=x)
    check(weight, "weight", like=x, width=n)
    for name, t in (("dy", dy), ("dh", dh)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    for name, t in (("mean", mean), ("rstd", rstd)):
        if t.dtype != torch.float32 or t.shape != x.shape[:-1]:
            raise ValueError(f"{name} must be float32 of shape {tuple(x.shape[:-1])}, got {t.dtype} {tuple(t.shape)}")
    if bias_dtype is not None:
        check_out_dtype(bias_dtype, "bias_dtype")

    weight = None if weight is None else weight.contiguous()
    x2 = rows(x)                                         # (M, N)
    dy2 = rows(dy)                                       # (M, N)
    dh2 = None if dh is None else rows(dh)               # (M, N)
    mean1 = mean.reshape(-1).contiguous()                # (M,)
    rstd1 = rstd.reshape(-1).contiguous()                # (M,)
    m = x2.shape[0]
    has_w, has_b = weight is not None, bias_dtype is not None
    dx = new(x.shape, x.dtype, x.device)                 # (..., N) contiguous
    dw = new((n,), weight.dtype, x.device) if has_w else None  # (N,)
    db = new((n,), bias_dtype, x.device) if has_b else None     # (N,)

    on_gpu = _autotune.on_gpu()
    cfg = (C.layer_norm_bwd_config if on_gpu else C.layer_norm_interpret_bwd_config)(C.layer_norm_block_n(n))
    programs, rows_per_program = _bwd_programs(m, cfg.block_m, cfg.programs_per_sm, x.device) if m > 0 else (0, 0)
    dw_partial = new((programs, n), torch.float32, x.device) if has_w else None  # (P, N)
    db_partial = new((programs, n), torch.float32, x.device) if has_b else None  # (P, N)
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
            block_p, block_n2, warps2 = (C.layer_norm_dwdb_config if on_gpu else C.layer_norm_interpret_dwdb_config)(n)
            _layer_norm_bwd_dwdb[(triton.cdiv(n, block_n2),)](
                dw_partial, db_partial, dw, db, programs, n,
                BLOCK_P=block_p, BLOCK_N=block_n2, HAS_WEIGHT=has_w, HAS_BIAS=has_b,
                num_warps=warps2, num_stages=1,
            )
    return dx, dw, db


def aot_specs(dtypes, block_ns, alignments) -> list:
    """Every bucket's backward config x {plain, with dh}, and the dweight/dbias reduction's, per
    dtype and alignment (see ``layer_norm.aot_specs``)."""
    specs = []
    for dtype in dtypes:
        t = tl_type(dtype)
        for aligned in alignments:
            tag = "" if aligned else "_unaligned"
            for block_n in block_ns:
                for residual in (False, True):
                    res = "_res" if residual else ""
                    cfg = C.layer_norm_bwd_config(block_n)
                    ints = ["n_cols", "stride_dym", "stride_xm", "stride_dxm"] + (["stride_dhm"] if residual else [])
                    common = dict(
                        pointers={"DY": dtype, "X": dtype, "W": dtype, "Mean": torch.float32, "Rstd": torch.float32,
                                  "DH": dtype if residual else None, "DX": dtype, "DW_partial": torch.float32,
                                  "DB_partial": torch.float32},
                        aligned=ints if aligned else (), num_warps=cfg.num_warps, mma=False)
                    flags = {"BLOCK_N": cfg.block_n, "HAS_WEIGHT": True, "HAS_BIAS": True, "HAS_DH": residual}
                    if cfg.wide:
                        specs.append(aot_spec(
                            f"_layer_norm_bwd_wide_{t}_n{block_n}_chunk{cfg.block_n}_w{cfg.num_warps}{res}{tag}",
                            _layer_norm_bwd_wide, constexprs=flags, **common))
                    else:
                        specs.append(aot_spec(
                            f"_layer_norm_bwd_{t}_n{block_n}_m{cfg.block_m}_w{cfg.num_warps}{res}{tag}",
                            _layer_norm_bwd, constexprs={**flags, "BLOCK_M": cfg.block_m}, **common))
            for block_p, block_n2, num_warps in sorted({C.layer_norm_dwdb_config(b) for b in block_ns}):
                specs.append(aot_spec(
                    f"_layer_norm_bwd_dwdb_{t}_p{block_p}_n{block_n2}_w{num_warps}{tag}", _layer_norm_bwd_dwdb,
                    pointers={"DW_partial": torch.float32, "DB_partial": torch.float32, "DW": dtype, "DB": dtype},
                    constexprs={"BLOCK_P": block_p, "BLOCK_N": block_n2, "HAS_WEIGHT": True, "HAS_BIAS": True},
                    aligned=["n_cols"] if aligned else (), num_warps=num_warps, mma=False))
    return specs
