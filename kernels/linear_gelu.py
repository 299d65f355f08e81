"""GELU(x @ W^T + b) with the bias and the GELU in a tiled GEMM's epilogue: forward kernels and
launcher here, the backward in ``kernels/linear_gelu_bwd.py`` (re-exported below), GELU and the
shared epilogue in ``kernels/_gelu.py``.

Forward, two interchangeable paths, both ending in the same epilogue code:
  * ``triton``: ``_linear_gelu_fwd``, a tiled GEMM (grouped program order for L2 reuse, fp32
    accumulation) whose epilogue adds the bias, optionally stores the pre-activation for the
    backward, applies GELU and stores the output; autotuned on a GPU like every other kernel
    (``kernels/_autotune.py``);
  * ``cublas``: ``torch.matmul`` (cuBLAS on a GPU) then ``_bias_gelu_fwd``, one elementwise pass
    doing the same epilogue.
On a GPU the launcher races the tuned Triton GEMM against cuBLAS once per bucketed shape and
dtype (``_autotune.race``, the same timer the autotuner uses) and keeps the faster: a Triton
GEMM weaker than cuBLAS for some shape must never make the model slower than eager. Under the
interpreter the Triton GEMM always runs (the path we test); ``gemm="cublas"`` forces the other
one so tests cover both.

Launchers: tensors in, tensors out, no autograd.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _autotune
from . import _configs as C
from ._aot import aot_spec, tl_type
from ._autotune import TunedKernel
from ._checks import KERNEL_DTYPES
from ._gelu import (
    GELU_APPROXIMATIONS,
    LINEAR_GELU_DTYPES,
    _bias_gelu_store,
    _gelu,
    _upcast,
    check_2d,
    check_approximate,
    check_device,
    gemm_grid,
    check_out,
)
from ._interpret import dot, input_precision
from .linear_gelu_bwd import aot_specs as _bwd_aot_specs
from .linear_gelu_bwd import linear_gelu_bwd

__all__ = ["linear_gelu_fwd", "linear_gelu_bwd", "aot_specs", "GELU_APPROXIMATIONS", "GEMM_PATHS"]

GEMM_PATHS = ("auto", "triton", "cublas")
_GEMM_DTYPES = KERNEL_DTYPES


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

# The GEMM main loop, shared by every GEMM of the linear_gelu family (this forward; the MLP
# backward's GEMMs in kernels/gelu_linear_bwd.py): grouped program order, then an fp32
# accumulator of X @ W^T over K, with an optional activation prologue on the X tiles. Each
# kernel adds its own epilogue.

@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program's output tile, in grouped order: consecutive programs walk
    down a band of GROUP_M row blocks before moving to the next column block, so programs
    running at the same time share a few X row panels and W column panels, read from L2 rather
    than each streaming its own from DRAM."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    group = pid // pids_per_group
    first_pid_m = group * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % rows_in_group
    pid_n = (pid % pids_per_group) // rows_in_group
    return pid_m, pid_n


@triton.jit
def _gemm_acc(X, W, K, offs_m64, mask_m, offs_n64, mask_n,
              stride_xm, stride_xk, stride_wn, stride_wk,
              X_ACT: tl.constexpr, APPROXIMATE: tl.constexpr, EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 (BLOCK_M, BLOCK_N) = X[offs_m, :K] @ W[offs_n, :K]^T (X (M, K), W (N, K), any
    strides; rows and columns outside the masks read as zeros). With X_ACT each X tile passes
    through GELU (``APPROXIMATE``) as it is loaded, rounded back to X's dtype before the dot as
    the forward epilogue rounds the activation it stores (GELU(0) = 0: masked entries stay 0)."""
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + offs_m64[:, None] * stride_xm + offs_k[None, :] * stride_xk   # (BLOCK_M, BLOCK_K)
    w_ptrs = W + offs_n64[None, :] * stride_wn + offs_k[:, None] * stride_wk   # (BLOCK_K, BLOCK_N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
            b = tl.load(w_ptrs, mask=mask_n[None, :], other=0.0)
        else:
            # zeros past K contribute nothing to the dot
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(w_ptrs, mask=mask_n[None, :] & (offs_k[:, None] < k_left), other=0.0)
        if X_ACT:
            a = _gelu(_upcast(a), APPROXIMATE).to(a.dtype)
        acc = dot(a, b, acc, INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    return acc


# M_BUCKET (M rounded up to a power of two, at least 16) is only the autotune key, unused in the
# body: a new batch size reuses the tuning result of its bucket.
@triton.jit
def _linear_gelu_fwd(
    X, W, Bias, Y, Pre,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_bn,
    stride_ym, stride_yn,
    stride_pm, stride_pn,
    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, APPROXIMATE: tl.constexpr,
    EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # int64: M * stride_xm passes 2^31 for large batches (e.g. 4096 images x 197 tokens x 3072).
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    acc = _gemm_acc(X, W, K, offs_m64, mask_m, offs_n64, mask_n, stride_xm, stride_xk, stride_wn, stride_wk,
                    False, APPROXIMATE, EVEN_K, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)

    # Epilogue, on the fp32 accumulator: bias, then GELU of the pre-activation rounded as it is stored
    # (kernels/_gelu.py: _bias_gelu_store).
    if EPILOGUE_SPLIT == 2:
        # Two column halves one after the other: GELU's temporaries on a whole 128-value-per-thread
        # accumulator would spill registers; on half of it they do not.
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        acc_lo, acc_hi = tl.split(halves)
        offs_lo = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _bias_gelu_store(acc_lo, offs_m64, mask_m, offs_lo, N, Bias, Y, Pre, stride_bn, stride_ym, stride_yn,
                         stride_pm, stride_pn, HAS_BIAS, STORE_PRE, APPROXIMATE)
        _bias_gelu_store(acc_hi, offs_m64, mask_m, offs_lo + BLOCK_N // 2, N, Bias, Y, Pre, stride_bn, stride_ym,
                         stride_yn, stride_pm, stride_pn, HAS_BIAS, STORE_PRE, APPROXIMATE)
    else:
        _bias_gelu_store(acc, offs_m64, mask_m, offs_n, N, Bias, Y, Pre, stride_bn, stride_ym, stride_yn,
                         stride_pm, stride_pn, HAS_BIAS, STORE_PRE, APPROXIMATE)



@triton.jit
def _bias_gelu_fwd(
    Mm, Bias, Y, Pre,
    M, N,
    stride_mm, stride_mn,
    stride_bn,
    stride_ym, stride_yn,
    stride_pm, stride_pn,
    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, APPROXIMATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The GEMM epilogue as its own pass over a torch.matmul result (the cuBLAS path)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask = mask_m[:, None] & (offs_n < N)[None, :]
    offs_m64 = offs_m.to(tl.int64)
    v = tl.load(Mm + offs_m64[:, None] * stride_mm + offs_n.to(tl.int64)[None, :] * stride_mn, mask=mask, other=0.0)
    _bias_gelu_store(_upcast(v), offs_m64, mask_m, offs_n, N, Bias, Y, Pre, stride_bn, stride_ym, stride_yn,
                     stride_pm, stride_pn, HAS_BIAS, STORE_PRE, APPROXIMATE)


# EVEN_K (no K masks) depends on the configuration's BLOCK_K, so it is derived per launch.
_linear_gelu_fwd_tuned = TunedKernel(
    triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(_linear_gelu_fwd),
    configs=C.LINEAR_GELU_CONFIGS,
    key=["M_BUCKET", "N", "K", "HAS_BIAS", "STORE_PRE", "APPROXIMATE", "INPUT_PRECISION"],
    prune=C.prune_linear_gelu_configs, interpret_config=C.linear_gelu_interpret_config)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _bucket(n: int) -> int:
    """Next power of two (at least 16): a new batch size reuses an earlier tuning and race."""
    return max(16, triton.next_power_of_2(n))


def _launch_gemm(x, weight, bias, y, pre, approximate, precision, config=None):
    """The Triton GEMM: autotuned (GPU) or the interpreter's configuration, unless ``config``
    (a triton.Config) is forced."""
    M, K = x.shape
    N = weight.shape[0]

    grid = gemm_grid(M, N, "linear_gelu GEMM")

    args = dict(
        X=x, W=weight,                                  # (M, K), (N, K)
        Bias=bias if bias is not None else y,           # (N,) or unused
        Y=y,                                            # (M, N)
        Pre=pre if pre is not None else y,              # (M, N) or unused
        M=M, N=N, K=K, M_BUCKET=_bucket(M),
        stride_xm=x.stride(0), stride_xk=x.stride(1), stride_wn=weight.stride(0), stride_wk=weight.stride(1),
        stride_bn=bias.stride(0) if bias is not None else 0,
        stride_ym=y.stride(0), stride_yn=y.stride(1),
        stride_pm=pre.stride(0) if pre is not None else 0, stride_pn=pre.stride(1) if pre is not None else 0,
        HAS_BIAS=bias is not None, STORE_PRE=pre is not None, APPROXIMATE=approximate, INPUT_PRECISION=precision,
    )
    if config is None:
        _linear_gelu_fwd_tuned[grid](**args)
    else:
        _linear_gelu_fwd_tuned.fn[grid](**args, **config.all_kwargs())


def _launch_cublas(x, weight, bias, y, pre, approximate):
    M = x.shape[0]
    N = weight.shape[0]
    cfg = C.linear_gelu_epilogue_config(x.dtype) if _autotune.on_gpu() else C.LINEAR_GELU_INTERPRET_EPILOGUE
    # The matmul result is written where the pre-activation goes when it is kept (the epilogue
    # reads and rewrites each element in the same program), else into y itself: no extra buffer.
    mm = pre if pre is not None else y
    torch.matmul(x, weight.t(), out=mm)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
    _bias_gelu_fwd[grid](
        mm,                                    # (M, N)
        bias if bias is not None else y,       # (N,) or unused
        y,                                     # (M, N)
        pre if pre is not None else y,         # (M, N) or unused
        M, N,
        mm.stride(0), mm.stride(1),
        bias.stride(0) if bias is not None else 0,
        y.stride(0), y.stride(1),
        *(pre.stride() if pre is not None else (0, 0)),
        HAS_BIAS=bias is not None, STORE_PRE=pre is not None, APPROXIMATE=approximate,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        num_warps=cfg["num_warps"],
    )


# GPU only: (device, dtype, precision, approximate, has_bias, store_pre, bucketed M, N, K) -> the
# faster path, "triton" or "cublas".
_CHOICES: dict[tuple, str] = {}


def _gemm_eligible(x, weight, bias, y, pre) -> bool:
    """Whether the Triton GEMM may run on a GPU: K-contiguous operands whose widths and row
    strides are multiples of 16 elements and whose pointers are 16-byte aligned (every ViT).
    That is the variant ``aot_specs`` compiles and checks (no spills, tensor cores). Without
    those facts Triton cannot vectorise the tile loads and the kernel spills registers, so
    anything else goes to cuBLAS + the epilogue kernel, which takes any layout."""
    K, N = x.shape[1], weight.shape[0]
    unit = x.stride(1) == 1 and weight.stride(1) == 1 and y.stride(1) == 1 and (pre is None or pre.stride(1) == 1)
    rows = [x.stride(0), weight.stride(0), y.stride(0)] + ([pre.stride(0)] if pre is not None else [])
    ptrs = [t.data_ptr() for t in (x, weight, bias, y, pre) if t is not None]
    return (unit and K % 16 == 0 and N % 16 == 0 and all(r % 16 == 0 for r in rows)
            and all(p % 16 == 0 for p in ptrs) and (bias is None or bias.stride(0) == 1))


def _choose_gpu(x, weight, bias, y, pre, approximate, precision) -> str:
    """The faster of the tuned Triton GEMM and cuBLAS + epilogue for this bucketed shape, timed
    once (the Triton side's own tuning happens in its first timed call) and remembered. Runs on
    the first call for a new key (so also on torch.compile'd models: the custom op is opaque to
    the compiler)."""
    M, K = x.shape
    N = weight.shape[0]
    key = (x.device.index, x.dtype, precision, approximate, bias is not None, pre is not None, _bucket(M), N, K)
    choice = _CHOICES.get(key)
    if choice is not None:
        return choice
    if torch.cuda.is_current_stream_capturing():
        # No timing during CUDA-graph capture: cuBLAS is never slower than eager. Not cached.
        return "cublas"
    choice = _autotune.race("linear_gelu", {
        "triton": lambda: _launch_gemm(x, weight, bias, y, pre, approximate, precision),
        "cublas": lambda: _launch_cublas(x, weight, bias, y, pre, approximate),
    })
    _CHOICES[key] = choice
    return choice


def linear_gelu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    approximate: str = "none", *, store_pre: bool = False,
                    out: torch.Tensor | None = None, pre_out: torch.Tensor | None = None,
                    gemm: str = "auto", config: triton.Config | None = None):
    """y = GELU(x @ weight^T + bias) for 2-D x; returns (y, pre) with pre = x @ weight^T + bias
    when ``store_pre`` (kept for the backward), else (y, None).

    x (M, K), weight (N, K), bias (N,) or None, any strides; y and pre are (M, N) contiguous
    unless ``out`` / ``pre_out`` are given. ``gemm``: "auto" (interpreter: the Triton GEMM; GPU:
    the faster of Triton and cuBLAS for this bucketed shape when the operands are aligned, see
    ``_gemm_eligible``, else cuBLAS; float64: cuBLAS), "triton" or "cublas" to force one.
    ``config`` forces the Triton GEMM's configuration (tests).
    """
    check_2d(x, "x")
    if x.dtype not in LINEAR_GELU_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    check_device(x, "x")
    M, K = x.shape
    check_2d(weight, "weight", x.dtype, x.device)
    if weight.shape[1] != K:
        raise ValueError(f"weight must have shape (N, {K}) to match x's width, got {tuple(weight.shape)}")
    N = weight.shape[0]
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (N,):
            raise ValueError(f"bias must be a tensor of shape ({N},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise ValueError(f"bias must have x's dtype {x.dtype} and device {x.device}, "
                             f"got {bias.dtype} on {bias.device}")
    check_approximate(approximate)
    if gemm not in GEMM_PATHS:
        raise ValueError(f"gemm must be one of {GEMM_PATHS}, got {gemm!r}")
    if gemm == "triton" and x.dtype not in _GEMM_DTYPES:
        raise TypeError(f"gemm='triton' supports float16, bfloat16 and float32, got {x.dtype}")
    check_out(out, "out", (M, N), x)
    check_out(pre_out, "pre_out", (M, N), x)

    if bias is not None and bias.stride(0) != 1 and _autotune.on_gpu():
        bias = bias.contiguous()  # N elements: keeps GPU launches on the compiled unit-stride variant
    y = out if out is not None else torch.empty((M, N), dtype=x.dtype, device=x.device)
    pre = None
    if store_pre:
        pre = pre_out if pre_out is not None else torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y, pre
    precision = input_precision(x.dtype)

    if gemm == "auto":
        if x.dtype not in _GEMM_DTYPES:
            gemm = "cublas"
        elif config is not None or not _autotune.on_gpu():
            gemm = "triton"
        elif _gemm_eligible(x, weight, bias, y, pre):
            gemm = _choose_gpu(x, weight, bias, y, pre, approximate, precision)
        else:
            gemm = "cublas"
    if gemm == "cublas":
        _launch_cublas(x, weight, bias, y, pre, approximate)
    else:
        _launch_gemm(x, weight, bias, y, pre, approximate, precision, config)
    return y, pre


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (fastvit.profiling.compile_report)
# ----------------------------------------------------------------------------------------------

def aot_specs() -> list:
    """One spec per (kernel, configuration the launchers may pick on a GPU, dtype, GELU variant).

    The GEMM only runs on a GPU for aligned, K-contiguous operands (``_gemm_eligible``): that is
    what is compiled, with bias and stored pre-activation (the training forward, the heavier
    one), with and without K masks (EVEN_K: every ViT width is a multiple of BLOCK_K). The
    elementwise kernels (here the epilogue; the backward's in ``linear_gelu_bwd.aot_specs``)
    are compiled contiguous and fully strided. ``mma`` says whether tensor-core instructions are
    expected (every 16-bit or TF32 dot)."""
    specs = []
    for dtype in _GEMM_DTYPES:
        t = tl_type(dtype)
        for precision in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)):
            for cfg in C.linear_gelu_gemm_configs(dtype, precision):
                kw = cfg.kwargs
                tiles = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}_w{cfg.num_warps}s{cfg.num_stages}"
                for approximate, even_k in ((a, e) for a in GELU_APPROXIMATIONS for e in (False, True)):
                    specs.append(aot_spec(
                        f"_linear_gelu_fwd[{t},{precision},{approximate},{tiles}{',evenk' if even_k else ''}]",
                        _linear_gelu_fwd, pointers={p: dtype for p in ("X", "W", "Bias", "Y", "Pre")},
                        unit_strides=("stride_xk", "stride_wk", "stride_bn", "stride_yn", "stride_pn"),
                        aligned=("N", "K", "M_BUCKET", "stride_xm", "stride_wn", "stride_ym", "stride_pm"),
                        constexprs={"HAS_BIAS": True, "STORE_PRE": True, "APPROXIMATE": approximate,
                                    "EVEN_K": even_k, "INPUT_PRECISION": precision, **kw},
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                        mma=dtype != torch.float32 or precision == "tf32"))
    # Elementwise kernels: contiguous, widths multiples of 16 (the usual case), and "strided":
    # no stride known to be 1, no width alignment (e.g. odd widths, transposed views).
    for dtype in LINEAR_GELU_DTYPES:
        ew = C.linear_gelu_epilogue_config(dtype)
        for plain in (True, False):
            for approximate in GELU_APPROXIMATIONS:
                specs.append(aot_spec(
                    f"_bias_gelu_fwd[{tl_type(dtype)},{approximate}{'' if plain else ',strided'}]", _bias_gelu_fwd,
                    pointers={p: dtype for p in ("Mm", "Bias", "Y", "Pre")},
                    unit_strides=("stride_mn", "stride_bn", "stride_yn", "stride_pn") if plain else (),
                    aligned=("N", "stride_mm", "stride_ym", "stride_pm") if plain else (),
                    constexprs={"HAS_BIAS": True, "STORE_PRE": True, "APPROXIMATE": approximate,
                                "BLOCK_M": ew["BLOCK_M"], "BLOCK_N": ew["BLOCK_N"]},
                    num_warps=ew["num_warps"], mma=False))
    return specs + _bwd_aot_specs(LINEAR_GELU_DTYPES)
