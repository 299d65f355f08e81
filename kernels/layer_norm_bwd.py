"""Backward of the LayerNorm (``kernels/layer_norm.py``): kernels and launchers.

Two passes and no atomics, so two runs give the same bits:
  1. ``_layer_norm_bwd``: each program owns a contiguous range of rows, writes dx for them and
     accumulates sum(dy * xhat) and sum(dy) for its rows in fp32 registers, then writes those
     as one row of a (programs, N) fp32 partial-sum buffer. Rows wider than 4096 go to
     ``_layer_norm_bwd_wide`` instead, which walks each row in chunks and keeps the partial
     sums in its own row of that buffer (registers cannot hold them without spilling).
  2. ``_layer_norm_bwd_dwdb``: sums the partial rows in a fixed order into dweight and dbias.

With a layer scale (h = x + gamma * residual, ``add_layer_norm_bwd``) the same two launches do
the rest: pass 1, which has the gradient of h (dh_total) in registers anyway, also writes
dresidual = gamma * dh_total and accumulates sum(residual * dh_total) into a third partial
buffer; pass 2 sums that into dgamma. dx = dh_total is stored in x's dtype directly.

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

__all__ = ["layer_norm_bwd", "add_layer_norm_bwd", "aot_specs"]


@triton.jit(do_not_specialize=["n_rows", "rows_per_program"])
def _layer_norm_bwd(
    DY, X, W, Mean, Rstd, DH, R, G, DX, DR, DW_partial, DB_partial, DG_partial,
    stride_dym, stride_xm, stride_dhm, stride_rm, stride_dxm,
    n_rows, n_cols, rows_per_program,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DH: tl.constexpr, HAS_SCALE: tl.constexpr,
):
    """Rows up to 4096 wide: BLOCK_M whole rows at a time in registers, partials in registers."""
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_cols

    if HAS_WEIGHT:
        w = tl.load(W + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_SCALE:
        g = tl.load(G + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    # Partials stay 2-D across the row loop and are reduced over rows once at the end: one
    # cross-warp reduction per program instead of one per row tile.
    acc_dw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_db = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_dg = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

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
        if HAS_SCALE:
            # h = x + gamma * r: dr = gamma * dh, dgamma = sum over rows of r * dh (fp32 dh,
            # not its rounded copy). DR is allocated like DX: same row stride.
            r = tl.load(R + rows[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(DR + rows[:, None] * stride_dxm + offs_n[None, :], (dx * g[None, :]).to(DR.dtype.element_ty),
                     mask=mask)
            acc_dg += r * dx

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
    if HAS_SCALE:
        tl.store(DG_partial + partial, tl.sum(acc_dg, axis=0), mask=mask_n)


@triton.jit(do_not_specialize=["n_rows", "rows_per_program"])
def _layer_norm_bwd_wide(
    DY, X, W, Mean, Rstd, DH, R, G, DX, DR, DW_partial, DB_partial, DG_partial,
    stride_dym, stride_xm, stride_dhm, stride_rm, stride_dxm,
    n_rows, n_cols, rows_per_program,
    BLOCK_N: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DH: tl.constexpr, HAS_SCALE: tl.constexpr,
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
        if HAS_SCALE:
            tl.store(DG_partial + partial_row + offs_n, tl.zeros((BLOCK_N,), dtype=tl.float32), mask=mask_n)

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
            if HAS_SCALE:
                r = tl.load(R + row64 * stride_rm + offs_n, mask=mask_n, other=0.0).to(tl.float32)
                g = tl.load(G + offs_n, mask=mask_n, other=0.0).to(tl.float32)
                tl.store(DR + row64 * stride_dxm + offs_n, (dx * g).to(DR.dtype.element_ty), mask=mask_n)
                acc = tl.load(DG_partial + partial_row + offs_n, mask=mask_n, other=0.0)
                tl.store(DG_partial + partial_row + offs_n, acc + r * dx, mask=mask_n)
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
    DW_partial, DB_partial, DG_partial, DW, DB, DG,
    n_partials, n_cols,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
):
    # Column blocks are independent; within one, partial rows are summed in a fixed order.
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_cols
    acc_dw = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    acc_db = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    acc_dg = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for p0 in range(0, n_partials, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = (offs_p < n_partials)[:, None] & mask_n[None, :]
        offs = offs_p.to(tl.int64)[:, None] * n_cols + offs_n[None, :]
        if HAS_WEIGHT:
            acc_dw += tl.load(DW_partial + offs, mask=mask, other=0.0)
        if HAS_BIAS:
            acc_db += tl.load(DB_partial + offs, mask=mask, other=0.0)
        if HAS_SCALE:
            acc_dg += tl.load(DG_partial + offs, mask=mask, other=0.0)
    if HAS_WEIGHT:
        tl.store(DW + offs_n, tl.sum(acc_dw, axis=0).to(DW.dtype.element_ty), mask=mask_n)
    if HAS_BIAS:
        tl.store(DB + offs_n, tl.sum(acc_db, axis=0).to(DB.dtype.element_ty), mask=mask_n)
    if HAS_SCALE:
        tl.store(DG + offs_n, tl.sum(acc_dg, axis=0).to(DG.dtype.element_ty), mask=mask_n)


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


def _bwd(dy, x, weight, mean, rstd, dh, bias_dtype, residual=None, scale=None, dx_dtype=None):
    """The one launcher body: (dx, dweight, dbias, dresidual, dscale), None where not asked for."""
    n = check_x(x)
    check(dy, "dy", like=x)
    check(dh, "dh", like=x)
    check(residual, "residual", like=x)
    check(weight, "weight", like=x, width=n)
    check(scale, "residual_scale", like=x, width=n)
    for name, t in (("dy", dy), ("dh", dh), ("residual", residual)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    for name, t in (("mean", mean), ("rstd", rstd)):
        if t.dtype != torch.float32 or t.shape != x.shape[:-1]:
            raise ValueError(f"{name} must be float32 of shape {tuple(x.shape[:-1])}, got {t.dtype} {tuple(t.shape)}")
    for name, dt in (("bias_dtype", bias_dtype), ("dx_dtype", dx_dtype)):
        if dt is not None:
            check_out_dtype(dt, name)

    weight = None if weight is None else weight.contiguous()
    scale = None if scale is None else scale.contiguous()
    x2 = rows(x)                                         # (M, N)
    dy2 = rows(dy)                                       # (M, N)
    dh2 = None if dh is None else rows(dh)               # (M, N)
    r2 = None if residual is None else rows(residual)    # (M, N)
    mean1 = mean.reshape(-1).contiguous()                # (M,)
    rstd1 = rstd.reshape(-1).contiguous()                # (M,)
    m = x2.shape[0]
    has_w, has_b, has_g = weight is not None, bias_dtype is not None, scale is not None
    dx = new(x.shape, dx_dtype or x.dtype, x.device)     # (..., N) contiguous
    dr = new(x.shape, residual.dtype, x.device) if has_g else None  # (..., N) contiguous, like dx
    dw = new((n,), weight.dtype, x.device) if has_w else None  # (N,)
    db = new((n,), bias_dtype, x.device) if has_b else None     # (N,)
    dg = new((n,), scale.dtype, x.device) if has_g else None    # (N,)

    on_gpu = _autotune.on_gpu()
    cfg = (C.layer_norm_bwd_config if on_gpu else C.layer_norm_interpret_bwd_config)(C.layer_norm_block_n(n))
    programs, rows_per_program = _bwd_programs(m, cfg.block_m, cfg.programs_per_sm, x.device) if m > 0 else (0, 0)
    # (P, N) fp32 partial sums, one row per program of the grid.
    dw_partial, db_partial, dg_partial = (new((programs, n), torch.float32, x.device) if has else None
                                          for has in (has_w, has_b, has_g))
    if m > 0:
        args = (dy2, x2, weight, mean1, rstd1, dh2, r2, scale, dx.view(m, n), None if dr is None else dr.view(m, n),
                dw_partial, db_partial, dg_partial,
                dy2.stride(0), x2.stride(0), 0 if dh2 is None else dh2.stride(0), 0 if r2 is None else r2.stride(0),
                n, m, n, rows_per_program)
        flags = dict(BLOCK_N=cfg.block_n, HAS_WEIGHT=has_w, HAS_BIAS=has_b, HAS_DH=dh is not None, HAS_SCALE=has_g,
                     num_warps=cfg.num_warps, num_stages=1)
        if cfg.wide:
            _layer_norm_bwd_wide[(programs,)](*args, **flags)
        else:
            _layer_norm_bwd[(programs,)](*args, BLOCK_M=cfg.block_m, **flags)
    if has_w or has_b or has_g:
        if programs == 0:  # no rows: the sums are empty
            for t in (dw, db, dg):
                if t is not None:
                    t.zero_()
        else:
            block_p, block_n2, warps2 = (C.layer_norm_dwdb_config if on_gpu else C.layer_norm_interpret_dwdb_config)(n)
            _layer_norm_bwd_dwdb[(triton.cdiv(n, block_n2),)](
                dw_partial, db_partial, dg_partial, dw, db, dg, programs, n,
                BLOCK_P=block_p, BLOCK_N=block_n2, HAS_WEIGHT=has_w, HAS_BIAS=has_b, HAS_SCALE=has_g,
                num_warps=warps2, num_stages=1,
            )
    return dx, dw, db, dr, dg


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
    dx, dw, db, _, _ = _bwd(dy, x, weight, mean, rstd, dh, bias_dtype)
    return dx, dw, db


def add_layer_norm_bwd(
    dy: torch.Tensor,              # (..., N) gradient of y
    h: torch.Tensor,               # (..., N) h = x + residual_scale * residual, saved by forward
    weight: torch.Tensor | None,   # (N,)
    mean: torch.Tensor,            # (...) fp32 from forward
    rstd: torch.Tensor,            # (...) fp32 from forward
    dh: torch.Tensor | None,       # (..., N) gradient of h, or None
    residual: torch.Tensor,        # (..., N) the forward's residual input
    residual_scale: torch.Tensor,  # (N,) the layer scale gamma
    *,
    bias_dtype: torch.dtype | None = None,  # dtype of dbias; None: no dbias
    x_dtype: torch.dtype | None = None,     # dtype of dx; default h.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Backward of add_layer_norm with a layer scale, in the launches of the plain backward.
    With dh_total = dh + the LayerNorm backward of dy, returns (dx = dh_total in ``x_dtype``,
    dresidual = gamma * dh_total in residual.dtype, dweight or None, dbias or None,
    dgamma = sum over rows of residual * dh_total in gamma's dtype)."""
    if residual is None or residual_scale is None:
        raise ValueError("add_layer_norm_bwd needs residual and residual_scale tensors, got "
                         f"{type(residual).__name__} and {type(residual_scale).__name__}")
    dx, dw, db, dr, dg = _bwd(dy, h, weight, mean, rstd, dh, bias_dtype, residual, residual_scale, x_dtype)
    return dx, dr, dw, db, dg


def aot_specs(dtypes, block_ns, alignments) -> list:
    """Every bucket's backward config x {plain, with dh (``_res``), with a layer scale without /
    with dh (``_scale``, ``_res_scale``)}, and the dweight/dbias(/dgamma) reduction's, per dtype
    and alignment (see ``layer_norm.aot_specs``)."""
    variants = {"": (False, False), "_res": (True, False), "_scale": (False, True), "_res_scale": (True, True)}
    specs = []
    for dtype in dtypes:
        t = tl_type(dtype)
        for aligned in alignments:
            tag = "" if aligned else "_unaligned"
            for block_n in block_ns:
                for res, (has_dh, scale) in variants.items():
                    cfg = C.layer_norm_bwd_config(block_n)
                    ints = (["n_cols", "stride_dym", "stride_xm", "stride_dxm"] + (["stride_dhm"] if has_dh else [])
                            + (["stride_rm"] if scale else []))
                    common = dict(
                        pointers={"DY": dtype, "X": dtype, "W": dtype, "Mean": torch.float32, "Rstd": torch.float32,
                                  "DH": dtype if has_dh else None, "R": dtype if scale else None,
                                  "G": dtype if scale else None, "DX": dtype, "DR": dtype if scale else None,
                                  "DW_partial": torch.float32, "DB_partial": torch.float32,
                                  "DG_partial": torch.float32 if scale else None},
                        aligned=ints if aligned else (), num_warps=cfg.num_warps, mma=False)
                    flags = {"BLOCK_N": cfg.block_n, "HAS_WEIGHT": True, "HAS_BIAS": True, "HAS_DH": has_dh,
                             "HAS_SCALE": scale}
                    if cfg.wide:
                        specs.append(aot_spec(
                            f"_layer_norm_bwd_wide_{t}_n{block_n}_chunk{cfg.block_n}_w{cfg.num_warps}{res}{tag}",
                            _layer_norm_bwd_wide, constexprs=flags, **common))
                    else:
                        specs.append(aot_spec(
                            f"_layer_norm_bwd_{t}_n{block_n}_m{cfg.block_m}_w{cfg.num_warps}{res}{tag}",
                            _layer_norm_bwd, constexprs={**flags, "BLOCK_M": cfg.block_m}, **common))
            for block_p, block_n2, num_warps in sorted({C.layer_norm_dwdb_config(b) for b in block_ns}):
                for res, scale in (("", False), ("_scale", True)):
                    specs.append(aot_spec(
                        f"_layer_norm_bwd_dwdb_{t}_p{block_p}_n{block_n2}_w{num_warps}{res}{tag}", _layer_norm_bwd_dwdb,
                        pointers={"DW_partial": torch.float32, "DB_partial": torch.float32,
                                  "DG_partial": torch.float32 if scale else None, "DW": dtype, "DB": dtype,
                                  "DG": dtype if scale else None},
                        constexprs={"BLOCK_P": block_p, "BLOCK_N": block_n2, "HAS_WEIGHT": True, "HAS_BIAS": True,
                                    "HAS_SCALE": scale},
                        aligned=["n_cols"] if aligned else (), num_warps=num_warps, mma=False))
    return specs
