"""Backward of GELU -> Linear (the MLP's fc2 and the activation before it) without the activation:
two GEMMs that read the pre-activation and apply GELU, or its derivative, where they load it.

The MLP forward (``fastvit.ops.mlp``) keeps pre = x @ W1^T + b1 (M, H) for fc1's backward anyway;
fc2's weight gradient needs h = GELU(pre) (M, H), the largest activation of a block. Instead of
storing h, the backward recomputes it inside the GEMM that consumes it:

  * ``_gelu_linear_dw``: dW2 = dy^T @ GELU(pre) (C, H), fp32 accumulation over the M tokens. Its
    prologue applies GELU (``kernels/_gelu.py``, the device function the forward epilogue uses)
    to each pre tile as it is loaded and rounds the result to pre's dtype, as the forward rounds
    the h it stores, before the dot. ``RECOMPUTE=False`` is the identity prologue: the operand
    is h itself, so the storing path and the recomputing path run the same GEMM. The recomputed
    h has the stored h's bits in every dtype: the forward epilogue applies GELU to the
    pre-activation rounded to the activation dtype (``kernels/_gelu.py: _bias_gelu_store``), the
    value it stores and the one loaded here.
  * ``_gelu_linear_dpre``: dpre = (dy @ W2) * GELU'(pre) (M, H) in one GEMM whose epilogue loads
    the pre tile: no (M, H) dh transient and no separate elementwise pass. With ``BIAS_GRAD``
    the epilogue also writes fp32 column sums of dpre per band of ``PARTIAL_ROWS`` rows (a
    divisor of every BLOCK_M, so the partials' layout does not depend on the tuned tile); the
    bias gradient is their fixed-order sum (``linear_gelu_bwd._bias_grad_reduce``), no atomics.

Both run the GEMM main loop of ``kernels/linear_gelu.py`` (``_grouped_tile``, ``_gemm_acc``),
autotuned on a GPU over ``kernels/_configs.py``'s candidates. On a GPU, operands the Triton GEMM
is not compiled for (see ``_aligned``) and float64 take cuBLAS + the family's elementwise kernels
instead (``gemm="cublas"`` forces that path, for tests); under the interpreter the Triton GEMM
runs. Launchers: tensors in, tensors out, no autograd.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _autotune, _interpret
from . import _configs as C
from ._aot import aot_spec, tl_type
from ._autotune import TunedKernel
from ._checks import KERNEL_DTYPES
from ._gelu import (GELU_APPROXIMATIONS, LINEAR_GELU_DTYPES, _gelu_grad, _upcast, check_2d, check_approximate,
                    check_device, check_out, gemm_grid)
from ._interpret import input_precision
from .linear_gelu import GEMM_PATHS, _bias_gelu_fwd, _bucket, _gemm_acc, _grouped_tile
from .linear_gelu_bwd import _bias_grad_reduce, linear_gelu_bwd

__all__ = ["gelu_linear_dw", "gelu_linear_dpre", "aot_specs"]


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

# dW2[c, h] = sum_t GELU(pre[t, h]) dy[t, c]: the GEMM runs as dW2^T = GELU(pre)^T @ dy, hidden
# units as rows, so the activation is on the first operand (which Hopper's warpgroup MMA can take
# from registers); the tile is stored transposed. T_BUCKET (T rounded up to a power of two) is
# only the autotune key.
@triton.jit
def _gelu_linear_dw(
    Pre, Dy, Dw,
    T, H, C, T_BUCKET,
    stride_pt, stride_ph,
    stride_dyt, stride_dyc,
    stride_dwc, stride_dwh,
    RECOMPUTE: tl.constexpr, APPROXIMATE: tl.constexpr,
    EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(H, C, BLOCK_M, BLOCK_N, GROUP_M)
    offs_h = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_h = offs_h < H
    mask_c = offs_c < C
    offs_h64 = offs_h.to(tl.int64)
    offs_c64 = offs_c.to(tl.int64)
    # X = pre^T (H, T) with the GELU prologue (RECOMPUTE) or h^T; W = dy^T (C, T): K runs over tokens.
    acc = _gemm_acc(Pre, Dy, T, offs_h64, mask_h, offs_c64, mask_c, stride_ph, stride_pt, stride_dyc, stride_dyt,
                    RECOMPUTE, APPROXIMATE, EVEN_K, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.store(Dw + offs_c64[None, :] * stride_dwc + offs_h64[:, None] * stride_dwh, acc.to(Dw.dtype.element_ty),
             mask=mask_h[:, None] & mask_c[None, :])


@triton.jit
def _dpre_store(dh, offs_m, mask_m, offs_n, N, Pre, Dpre, Partial, first_band, P,
                stride_pm, stride_pn, stride_dpm, stride_dpn, stride_partp,
                BIAS_GRAD: tl.constexpr, APPROXIMATE: tl.constexpr, BLOCK_M: tl.constexpr,
                PARTIAL_ROWS: tl.constexpr):
    """The epilogue: dh (fp32, rows offs_m, columns offs_n) * GELU'(pre) -> Dpre; with BIAS_GRAD
    the column sums of each PARTIAL_ROWS-row band of the fp32 dpre -> Partial[first_band + r].
    Rows and columns past M and N hold dh = 0, so they add nothing."""
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    pre = tl.load(Pre + offs_m64[:, None] * stride_pm + offs_n64[None, :] * stride_pn, mask=mask, other=0.0)
    dpre = dh * _gelu_grad(_upcast(pre), APPROXIMATE)
    tl.store(Dpre + offs_m64[:, None] * stride_dpm + offs_n64[None, :] * stride_dpn,
             dpre.to(Dpre.dtype.element_ty), mask=mask)
    if BIAS_GRAD:
        if BLOCK_M == PARTIAL_ROWS:
            tl.store(Partial + first_band.to(tl.int64) * stride_partp + offs_n, tl.sum(dpre, axis=0),
                     mask=mask_n)
        else:
            band = (tl.arange(0, BLOCK_M) // PARTIAL_ROWS)[:, None]
            for r in tl.static_range(BLOCK_M // PARTIAL_ROWS):
                col_sum = tl.sum(tl.where(band == r, dpre, 0.0), axis=0)
                tl.store(Partial + (first_band + r).to(tl.int64) * stride_partp + offs_n, col_sum,
                         mask=mask_n & (first_band + r < P))


@triton.jit
def _gelu_linear_dpre(
    Dy, W, Pre, Dpre, Partial,
    M, N, K, M_BUCKET, P,
    stride_dym, stride_dyk,
    stride_wk, stride_wn,
    stride_pm, stride_pn,
    stride_dpm, stride_dpn,
    stride_partp,
    BIAS_GRAD: tl.constexpr, APPROXIMATE: tl.constexpr, PARTIAL_ROWS: tl.constexpr,
    EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    """dpre (M, N) = (dy (M, K) @ W (K, N)) * GELU'(pre (M, N)); M tokens, N hidden, K out features."""
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    acc = _gemm_acc(Dy, W, K, offs_m.to(tl.int64), mask_m, offs_n.to(tl.int64), offs_n < N,
                    stride_dym, stride_dyk, stride_wn, stride_wk,
                    False, APPROXIMATE, EVEN_K, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    first_band = pid_m * (BLOCK_M // PARTIAL_ROWS)
    if EPILOGUE_SPLIT == 2:
        # Column halves one after the other, as linear_gelu's epilogue: GELU' on a whole
        # accumulator's worth of values per thread would spill registers.
        acc_lo, acc_hi = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        offs_lo = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _dpre_store(acc_lo, offs_m, mask_m, offs_lo, N, Pre, Dpre, Partial, first_band, P, stride_pm, stride_pn,
                    stride_dpm, stride_dpn, stride_partp, BIAS_GRAD, APPROXIMATE, BLOCK_M, PARTIAL_ROWS)
        _dpre_store(acc_hi, offs_m, mask_m, offs_lo + BLOCK_N // 2, N, Pre, Dpre, Partial, first_band, P,
                    stride_pm, stride_pn, stride_dpm, stride_dpn, stride_partp, BIAS_GRAD, APPROXIMATE, BLOCK_M,
                    PARTIAL_ROWS)
    else:
        _dpre_store(acc, offs_m, mask_m, offs_n, N, Pre, Dpre, Partial, first_band, P, stride_pm, stride_pn,
                    stride_dpm, stride_dpn, stride_partp, BIAS_GRAD, APPROXIMATE, BLOCK_M, PARTIAL_ROWS)


# EVEN_K (no masks along the reduction) depends on the configuration's BLOCK_K: derived per launch.
_gelu_linear_dw_tuned = TunedKernel(
    triton.heuristics({"EVEN_K": lambda args: args["T"] % args["BLOCK_K"] == 0})(_gelu_linear_dw),
    configs=C.GELU_LINEAR_DW_CONFIGS,
    key=["T_BUCKET", "H", "C", "RECOMPUTE", "APPROXIMATE", "INPUT_PRECISION"],
    prune=C.prune_gelu_linear_dw_configs, interpret_config=C.gelu_linear_dw_interpret_config)

_gelu_linear_dpre_tuned = TunedKernel(
    triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(_gelu_linear_dpre),
    configs=C.LINEAR_GELU_CONFIGS,
    key=["M_BUCKET", "N", "K", "BIAS_GRAD", "APPROXIMATE", "INPUT_PRECISION"],
    prune=C.prune_gelu_linear_dpre_configs, interpret_config=C.gelu_linear_dpre_interpret_config)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _aligned(unit: list, rows: list, widths: list, tensors: list) -> bool:
    """Whether the Triton GEMM may run on a GPU: the layout ``aot_specs`` compiles and checks
    (unit strides where named, row strides and widths multiples of 16 elements, 16-byte aligned
    pointers), as ``linear_gelu._gemm_eligible`` decides for the forward."""
    return (all(s == 1 for s in unit) and all(r % 16 == 0 for r in rows) and all(w % 16 == 0 for w in widths)
            and all(t.data_ptr() % 16 == 0 for t in tensors))


def _choose(gemm, dtype, config, eligible) -> str:
    if gemm not in GEMM_PATHS:
        raise ValueError(f"gemm must be one of {GEMM_PATHS}, got {gemm!r}")
    if gemm == "triton" and dtype not in KERNEL_DTYPES:
        raise TypeError(f"gemm='triton' supports float16, bfloat16 and float32, got {dtype}")
    if gemm != "auto":
        return gemm
    if dtype not in KERNEL_DTYPES:
        return "cublas"
    if config is not None or not _autotune.on_gpu():
        return "triton"
    return "triton" if eligible() else "cublas"


def _check_dy(dy):
    check_2d(dy, "dy")
    if dy.dtype not in LINEAR_GELU_DTYPES:
        raise TypeError(f"dy must be float16, bfloat16, float32 or float64, got {dy.dtype}")
    check_device(dy, "dy")
    if _interpret.interpreting() and 0 in dy.stride():
        # The interpreter misreads stride-0 tensors (e.g. the gradient of a .sum()); a GPU does not.
        dy = dy.contiguous()
    return dy


def gelu_linear_dw(dy: torch.Tensor, pre: torch.Tensor, approximate: str = "none", *, recompute: bool = True,
                   out: torch.Tensor | None = None, gemm: str = "auto", config: triton.Config | None = None):
    """fc2's weight gradient dW = dy^T @ GELU(pre) (C, H), GELU recomputed in the GEMM's prologue;
    with ``recompute=False``, ``pre`` is the activation h itself and dW = dy^T @ h (the same GEMM).

    dy (T, C), pre (T, H), any strides; dW (C, H) contiguous unless ``out`` is given. ``gemm``:
    "auto" (interpreter: the Triton GEMM; GPU: Triton for aligned operands, else cuBLAS after
    one elementwise GELU pass; float64: cuBLAS), "triton" or "cublas" to force one. ``config``
    forces the Triton GEMM's configuration (tests).
    """
    dy = _check_dy(dy)
    check_2d(pre, "pre", dy.dtype, dy.device)
    if pre.shape[0] != dy.shape[0]:
        raise ValueError(f"pre must have shape ({dy.shape[0]}, H) to match dy's rows, got {tuple(pre.shape)}")
    check_approximate(approximate)
    T, C = dy.shape
    H = pre.shape[1]
    check_out(out, "out", (C, H), dy)
    dw = out if out is not None else torch.empty((C, H), dtype=dy.dtype, device=dy.device)
    if C == 0 or H == 0:
        return dw
    if T == 0:
        return dw.zero_()
    path = _choose(gemm, dy.dtype, config, lambda: _aligned(
        [dy.stride(1), pre.stride(1), dw.stride(1)], [dy.stride(0), pre.stride(0), dw.stride(0)], [C, H],
        [dy, pre, dw]))
    if path == "cublas":
        h = pre
        if recompute:
            h = torch.empty((T, H), dtype=pre.dtype, device=pre.device)  # a transient: one GELU pass
            _launch_gelu(pre, h, approximate)
        torch.matmul(dy.t(), h, out=dw)
        return dw

    grid = gemm_grid(H, C, "gelu_linear_dw GEMM")

    args = dict(
        Pre=pre, Dy=dy, Dw=dw,                          # (T, H), (T, C), (C, H)
        T=T, H=H, C=C, T_BUCKET=_bucket(T),
        stride_pt=pre.stride(0), stride_ph=pre.stride(1), stride_dyt=dy.stride(0), stride_dyc=dy.stride(1),
        stride_dwc=dw.stride(0), stride_dwh=dw.stride(1),
        RECOMPUTE=recompute, APPROXIMATE=approximate, INPUT_PRECISION=input_precision(dy.dtype),
    )
    if config is None:
        _gelu_linear_dw_tuned[grid](**args)
    else:
        _gelu_linear_dw_tuned.fn[grid](**args, **config.all_kwargs())
    return dw


def _launch_gelu(pre, h, approximate):
    """h = GELU(pre) by linear_gelu's epilogue kernel (no bias, no stored pre): the cuBLAS path's
    recomputation, rounded as the forward rounds h."""
    M, N = pre.shape
    cfg = C.linear_gelu_epilogue_config(pre.dtype) if _autotune.on_gpu() else C.LINEAR_GELU_INTERPRET_EPILOGUE
    _bias_gelu_fwd[(triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))](
        pre, h, h, h,                          # Mm (M, N), Bias unused, Y (M, N), Pre unused
        M, N, pre.stride(0), pre.stride(1), 0, h.stride(0), h.stride(1), 0, 0,
        HAS_BIAS=False, STORE_PRE=False, APPROXIMATE=approximate,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])


def gelu_linear_dpre(dy: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor, approximate: str = "none", *,
                     bias_grad: bool = True, out: torch.Tensor | None = None, gemm: str = "auto",
                     config: triton.Config | None = None):
    """(dpre, dbias): the gradient into fc1's output through fc2 (``weight`` (C, H)) and GELU,
    dpre = (dy @ weight) * GELU'(pre) (M, H), in one GEMM with GELU' in its epilogue; dbias =
    dpre.sum(0) (H,) (fc1's bias gradient, summed from the fp32 dpre before rounding, in a fixed
    order) or None.

    dy (M, C), weight (C, H), pre (M, H), any strides; dpre (M, H) contiguous unless ``out`` is
    given. ``gemm`` and ``config`` as ``gelu_linear_dw`` (the cuBLAS path: dy @ weight into dpre's
    buffer, then ``linear_gelu_bwd`` in place).
    """
    dy = _check_dy(dy)
    M, K = dy.shape
    check_2d(weight, "weight", dy.dtype, dy.device)
    if weight.shape[0] != K:
        raise ValueError(f"weight must have shape ({K}, H) to match dy's width, got {tuple(weight.shape)}")
    N = weight.shape[1]
    check_2d(pre, "pre", dy.dtype, dy.device, (M, N))
    check_approximate(approximate)
    check_out(out, "out", (M, N), dy)
    dpre = out if out is not None else torch.empty((M, N), dtype=dy.dtype, device=dy.device)
    dbias = torch.empty((N,), dtype=dy.dtype, device=dy.device) if bias_grad else None
    if N == 0:
        return dpre, dbias
    if M == 0:
        return dpre, (dbias.zero_() if bias_grad else None)
    path = _choose(gemm, dy.dtype, config, lambda: _aligned(
        [dy.stride(1), weight.stride(1), pre.stride(1), dpre.stride(1)],
        [dy.stride(0), weight.stride(0), pre.stride(0), dpre.stride(0)], [K, N], [dy, weight, pre, dpre]))
    if path == "cublas":
        torch.matmul(dy, weight, out=dpre)
        # in place: each program reads its dh tile before writing dpre over it
        return linear_gelu_bwd(dpre, pre, approximate, bias_grad=bias_grad, out=dpre)

    rows = C.GELU_LINEAR_DPRE_PARTIAL_ROWS
    P = triton.cdiv(M, rows)
    partial = torch.empty((P, N), dtype=torch.float32, device=dy.device) if bias_grad else dpre

    grid = gemm_grid(M, N, "gelu_linear_dpre GEMM")

    args = dict(
        Dy=dy, W=weight, Pre=pre, Dpre=dpre,            # (M, K), (K, N), (M, N), (M, N)
        Partial=partial,                                # (P, N) fp32 column sums per band, or unused
        M=M, N=N, K=K, M_BUCKET=_bucket(M), P=P,
        stride_dym=dy.stride(0), stride_dyk=dy.stride(1), stride_wk=weight.stride(0), stride_wn=weight.stride(1),
        stride_pm=pre.stride(0), stride_pn=pre.stride(1), stride_dpm=dpre.stride(0), stride_dpn=dpre.stride(1),
        stride_partp=partial.stride(0),
        BIAS_GRAD=bias_grad, APPROXIMATE=approximate, PARTIAL_ROWS=rows, INPUT_PRECISION=input_precision(dy.dtype),
    )
    if config is None:
        _gelu_linear_dpre_tuned[grid](**args)
    else:
        _gelu_linear_dpre_tuned.fn[grid](**args, **config.all_kwargs())
    if bias_grad:
        rcfg = C.LINEAR_GELU_BIAS_REDUCE
        _bias_grad_reduce[(triton.cdiv(N, rcfg["BLOCK_N"]),)](
            partial, dbias,                             # (P, N), (N,)
            P, N, partial.stride(0), dbias.stride(0),
            BLOCK_P=rcfg["BLOCK_P"], BLOCK_N=rcfg["BLOCK_N"], num_warps=rcfg["num_warps"])
    return dpre, dbias


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (fastvit.profiling.compile_report)
# ----------------------------------------------------------------------------------------------

def aot_specs() -> list:
    """Both GEMMs in every configuration the GPU autotuner may pick, per dtype and dot precision,
    GELU variant (dW: also the identity prologue, ``id``) and K masked or not, on the aligned
    layout ``_aligned`` admits (the only one they run on a GPU), with the bias gradient (the
    heavier epilogue). The cuBLAS path's elementwise kernels are linear_gelu's own specs."""
    specs = []
    for dtype in KERNEL_DTYPES:
        t = tl_type(dtype)
        for precision in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)):
            mma = dtype != torch.float32 or precision == "tf32"
            for cfg in C.gelu_linear_dw_gemm_configs(dtype, precision):
                kw = cfg.kwargs
                tiles = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}_w{cfg.num_warps}s{cfg.num_stages}"
                for prologue in GELU_APPROXIMATIONS + ("id",):
                    for even_k in (False, True):
                        specs.append(aot_spec(
                            f"_gelu_linear_dw[{t},{precision},{prologue},{tiles}{',evenk' if even_k else ''}]",
                            _gelu_linear_dw, pointers={"Pre": dtype, "Dy": dtype, "Dw": dtype},
                            unit_strides=("stride_ph", "stride_dyc", "stride_dwh"),
                            aligned=("H", "C", "T_BUCKET", "stride_pt", "stride_dyt", "stride_dwc"),
                            constexprs={"RECOMPUTE": prologue != "id",
                                        "APPROXIMATE": "none" if prologue == "id" else prologue,
                                        "EVEN_K": even_k, "INPUT_PRECISION": precision, **kw},
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages, mma=mma))
            for cfg in C.linear_gelu_gemm_configs(dtype, precision):
                kw = cfg.kwargs
                tiles = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}_w{cfg.num_warps}s{cfg.num_stages}"
                for approximate in GELU_APPROXIMATIONS:
                    for even_k in (False, True):
                        specs.append(aot_spec(
                            f"_gelu_linear_dpre[{t},{precision},{approximate},{tiles}{',evenk' if even_k else ''}]",
                            _gelu_linear_dpre,
                            pointers={"Dy": dtype, "W": dtype, "Pre": dtype, "Dpre": dtype, "Partial": torch.float32},
                            unit_strides=("stride_dyk", "stride_wn", "stride_pn", "stride_dpn"),
                            aligned=("N", "K", "M_BUCKET", "stride_dym", "stride_wk", "stride_pm", "stride_dpm",
                                     "stride_partp"),
                            constexprs={"BIAS_GRAD": True, "APPROXIMATE": approximate,
                                        "PARTIAL_ROWS": C.GELU_LINEAR_DPRE_PARTIAL_ROWS, "EVEN_K": even_k,
                                        "INPUT_PRECISION": precision, **kw},
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages, mma=mma))
    return specs
