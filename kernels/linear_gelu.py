"""GELU(x @ W^T + b) with the bias and the GELU in a tiled GEMM's epilogue, and its backward's
fused elementwise pass.

Forward, two interchangeable paths, both ending in the same GELU code:
  * ``triton``: ``_linear_gelu_fwd``, a tiled GEMM (grouped program order for L2 reuse, fp32
    accumulation) whose epilogue adds the bias, optionally stores the pre-activation for the
    backward, applies GELU and stores the output;
  * ``cublas``: ``torch.matmul`` (cuBLAS on a GPU) then ``_bias_gelu_fwd``, one elementwise pass
    doing the same epilogue.
On a GPU the launcher times both (every pruned Triton configuration and cuBLAS) once per bucketed
shape and dtype, and keeps the faster: a Triton GEMM weaker than cuBLAS for some shape must never
make the model slower than eager. Under the interpreter the Triton GEMM always runs (the path we
test); ``gemm="cublas"`` forces the other one so tests cover both.

Backward: ``_gelu_bwd`` computes dpre = dy * GELU'(pre) from the pre-activation saved by the
forward (see ``linear_gelu_bwd`` for why it is read rather than recomputed) and writes
per-program fp32 partial column sums of dpre; ``_bias_grad_reduce`` adds those partials up in a
fixed order (deterministic bias gradient, no atomics). The two GEMMs of the backward (dx, dW) are
plain ``torch.matmul`` calls made by ``fastvit.ops``.

Launchers: tensors in, tensors out, no autograd.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _configs
from ._interpret import dot, input_precision, interpreting

APPROXIMATIONS = ("none", "tanh")
GEMM_PATHS = ("auto", "triton", "cublas")
_GEMM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# float64 is served by the cuBLAS path only (tensor cores have no use for it; it is for checking).
_DTYPES = _GEMM_DTYPES + (torch.float64,)

_SQRT_HALF = tl.constexpr(0.7071067811865476)      # 1 / sqrt(2)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)   # 1 / sqrt(2 pi)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)  # sqrt(2 / pi)
_TANH_COEF = tl.constexpr(0.044715)
_EXP_CAP = tl.constexpr(80.0)  # exp(80) ~ 5.5e34 is finite in fp32


# ----------------------------------------------------------------------------------------------
# GELU and its derivative, on fp32 (or fp64) values
# ----------------------------------------------------------------------------------------------

@triton.jit
def _upcast(x):
    """fp32 arithmetic for 16- and 32-bit tensors; fp64 tensors keep fp64."""
    if x.dtype == tl.float64:
        return x
    else:
        return x.to(tl.float32)


@triton.jit
def _gelu(x, APPROXIMATE_TANH: tl.constexpr):
    if APPROXIMATE_TANH:
        u = _SQRT_2_OVER_PI * (x + _TANH_COEF * x * x * x)
        # 0.5 * (1 + tanh(u)) == sigmoid(2u): one exp, no cancellation near u = 0, saturating
        # where tanh does, and portable (tl has no tanh outside the per-backend libdevice).
        # The cap keeps exp finite: past it |GELU| is below 1e-34 anyway.
        return x / (1.0 + tl.exp(tl.minimum(-2.0 * u, _EXP_CAP)))
    else:
        return 0.5 * x * (1.0 + tl.math.erf(x * _SQRT_HALF))


@triton.jit
def _gelu_grad(x, APPROXIMATE_TANH: tl.constexpr):
    if APPROXIMATE_TANH:
        x2 = x * x
        u = _SQRT_2_OVER_PI * x * (1.0 + _TANH_COEF * x2)
        s = 1.0 / (1.0 + tl.exp(tl.minimum(-2.0 * u, _EXP_CAP)))  # 0.5 * (1 + tanh(u))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_COEF * x2)
        # d/dx [x * s] with ds/du = 2 s (1 - s)
        return s + 2.0 * x * s * (1.0 - s) * du
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * _SQRT_HALF))
        pdf = tl.exp(-0.5 * x * x) * _INV_SQRT_2PI
        return cdf + x * pdf


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _linear_gelu_fwd(
    X, W, Bias, Y, Pre,
    M, N, K,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_bn,
    stride_ym, stride_yn,
    stride_pm, stride_pn,
    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, APPROXIMATE_TANH: tl.constexpr,
    EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: consecutive programs walk down a band of GROUP_M row blocks before moving
    # to the next column block, so programs running at the same time share a few X row panels
    # and W column panels, read from L2 rather than each streaming its own from DRAM.
    pids_per_group = GROUP_M * num_pid_n
    group = pid // pids_per_group
    first_pid_m = group * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % rows_in_group
    pid_n = (pid % pids_per_group) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # int64: M * stride_xm passes 2^31 for large batches (e.g. 4096 images x 197 tokens x 3072).
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
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
        acc = dot(a, b, acc, INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue, on the fp32 accumulator: the output's GELU sees the unrounded pre-activation.
    if EPILOGUE_SPLIT == 2:
        # Two column halves one after the other: GELU's temporaries on a whole 128-value-per-thread
        # accumulator would spill registers; on half of it they do not.
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        acc_lo, acc_hi = tl.split(halves)
        offs_lo = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _bias_gelu_store(acc_lo, offs_m64, mask_m, offs_lo, N, Bias, Y, Pre, stride_bn, stride_ym, stride_yn,
                         stride_pm, stride_pn, HAS_BIAS, STORE_PRE, APPROXIMATE_TANH)
        _bias_gelu_store(acc_hi, offs_m64, mask_m, offs_lo + BLOCK_N // 2, N, Bias, Y, Pre, stride_bn, stride_ym,
                         stride_yn, stride_pm, stride_pn, HAS_BIAS, STORE_PRE, APPROXIMATE_TANH)
    else:
        _bias_gelu_store(acc, offs_m64, mask_m, offs_n, N, Bias, Y, Pre, stride_bn, stride_ym, stride_yn,
                         stride_pm, stride_pn, HAS_BIAS, STORE_PRE, APPROXIMATE_TANH)


@triton.jit
def _bias_gelu_store(v, offs_m64, mask_m, offs_n, N, Bias, Y, Pre,
                     stride_bn, stride_ym, stride_yn, stride_pm, stride_pn,
                     HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, APPROXIMATE_TANH: tl.constexpr):
    """The epilogue both forward paths share: v (rows offs_m64, columns offs_n) + bias -> Pre
    (optional), GELU -> Y."""
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    offs_n64 = offs_n.to(tl.int64)
    if HAS_BIAS:
        bias = tl.load(Bias + offs_n64 * stride_bn, mask=mask_n, other=0.0)
        v += bias.to(v.dtype)[None, :]
    if STORE_PRE:
        tl.store(Pre + offs_m64[:, None] * stride_pm + offs_n64[None, :] * stride_pn,
                 v.to(Pre.dtype.element_ty), mask=mask)
    y = _gelu(v, APPROXIMATE_TANH)
    tl.store(Y + offs_m64[:, None] * stride_ym + offs_n64[None, :] * stride_yn, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_fwd(
    Mm, Bias, Y, Pre,
    M, N,
    stride_mm, stride_mn,
    stride_bn,
    stride_ym, stride_yn,
    stride_pm, stride_pn,
    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, APPROXIMATE_TANH: tl.constexpr,
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
                     stride_pm, stride_pn, HAS_BIAS, STORE_PRE, APPROXIMATE_TANH)


@triton.jit
def _gelu_bwd(
    Dy, Pre, Dpre, Partial,
    M, N, rows_per_program,
    stride_dym, stride_dyn,
    stride_pm, stride_pn,
    stride_dpm, stride_dpn,
    stride_partp,
    BIAS_GRAD: tl.constexpr, APPROXIMATE_TANH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dpre = dy * GELU'(pre) over rows [pid_p * rows_per_program, ...) and columns of pid_n;
    with BIAS_GRAD also this program's column sums of dpre into Partial[pid_p, :]."""
    pid_p = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_n64 = offs_n.to(tl.int64)
    row_start = pid_p * rows_per_program
    row_stop = tl.minimum(row_start + rows_per_program, M)
    col_sum = _upcast(tl.zeros((BLOCK_N,), dtype=Pre.dtype.element_ty))
    for start in range(row_start, row_stop, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask = (offs_m < row_stop)[:, None] & mask_n[None, :]
        offs_m64 = offs_m.to(tl.int64)
        dy = tl.load(Dy + offs_m64[:, None] * stride_dym + offs_n64[None, :] * stride_dyn, mask=mask, other=0.0)
        pre = tl.load(Pre + offs_m64[:, None] * stride_pm + offs_n64[None, :] * stride_pn, mask=mask, other=0.0)
        dpre = _upcast(dy) * _gelu_grad(_upcast(pre), APPROXIMATE_TANH)
        tl.store(Dpre + offs_m64[:, None] * stride_dpm + offs_n64[None, :] * stride_dpn,
                 dpre.to(Dpre.dtype.element_ty), mask=mask)
        if BIAS_GRAD:
            # masked entries are 0 * GELU'(0) = 0, so they add nothing
            col_sum += tl.sum(dpre, axis=0)
    if BIAS_GRAD:
        tl.store(Partial + pid_p.to(tl.int64) * stride_partp + offs_n, col_sum, mask=mask_n)


@triton.jit
def _bias_grad_reduce(
    Partial, Dbias,
    P, N,
    stride_partp,
    stride_dbn,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Dbias[n] = sum_p Partial[p, n], always in the same order: deterministic."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=Partial.dtype.element_ty)
    for start in range(0, P, BLOCK_P):
        offs_p = start + tl.arange(0, BLOCK_P)
        mask = (offs_p < P)[:, None] & mask_n[None, :]
        acc += tl.load(Partial + offs_p.to(tl.int64)[:, None] * stride_partp + offs_n[None, :], mask=mask, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(Dbias + offs_n * stride_dbn, total.to(Dbias.dtype.element_ty), mask=mask_n)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def _check_2d(t, name, dtype=None, device=None, shape=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def _check_out(t, name, shape, like):
    if t is None:
        return
    _check_2d(t, name, like.dtype, like.device, shape)


def _check_approximate(approximate):
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be 'none' or 'tanh' (as in F.gelu), got {approximate!r}")


def _check_device(t, name):
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(f"{name} must be a CUDA tensor (or set TRITON_INTERPRET=1 for the CPU interpreter), "
                         f"got a tensor on {t.device}")


def _check_grid(n_programs, name):
    if n_programs >= 2**31:
        raise ValueError(f"{name}: {n_programs} programs exceed CUDA's grid limit of 2^31 - 1")


# ----------------------------------------------------------------------------------------------
# Forward launchers
# ----------------------------------------------------------------------------------------------

def _launch_gemm(x, weight, bias, y, pre, approximate, precision, cfg):
    M, K = x.shape
    N = weight.shape[0]
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _check_grid(grid[0], "linear_gelu GEMM")
    dummy = y
    _linear_gelu_fwd[grid](
        x, weight,                            # (M, K), (N, K)
        bias if bias is not None else dummy,  # (N,) or unused
        y,                                    # (M, N)
        pre if pre is not None else dummy,    # (M, N) or unused
        M, N, K,
        x.stride(0), x.stride(1),
        weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        y.stride(0), y.stride(1),
        *(pre.stride() if pre is not None else (0, 0)),
        HAS_BIAS=bias is not None, STORE_PRE=pre is not None, APPROXIMATE_TANH=approximate == "tanh",
        EVEN_K=K % cfg["BLOCK_K"] == 0, INPUT_PRECISION=precision,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        EPILOGUE_SPLIT=cfg.get("EPILOGUE_SPLIT", 1),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def _launch_cublas(x, weight, bias, y, pre, approximate, cfg):
    M = x.shape[0]
    N = weight.shape[0]
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
        HAS_BIAS=bias is not None, STORE_PRE=pre is not None, APPROXIMATE_TANH=approximate == "tanh",
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        num_warps=cfg["num_warps"],
    )


# GPU only: (device, dtype, precision, approximate, has_bias, store_pre, bucketed M, N, K) -> the
# winning ("triton", config) or ("cublas", None).
_CHOICES: dict[tuple, tuple[str, dict | None]] = {}


def _bucket(n: int) -> int:
    """Next power of two (at least 16): a new batch size or resolution reuses an earlier choice."""
    return max(16, triton.next_power_of_2(n))


def _smem_limit(device) -> int:
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024


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


def _choose_gpu(x, weight, bias, y, pre, approximate, precision):
    """Time every pruned Triton configuration and cuBLAS + epilogue once per bucketed shape;
    remember the fastest. Runs on the first call for a new key (so also on torch.compile'd
    models: the custom op is opaque to the compiler)."""
    M, K = x.shape
    N = weight.shape[0]
    key = (x.device.index, x.dtype, precision, approximate, bias is not None, pre is not None,
           _bucket(M), _bucket(N), _bucket(K))
    choice = _CHOICES.get(key)
    if choice is not None:
        return choice
    if torch.cuda.is_current_stream_capturing():
        # No timing during CUDA-graph capture: cuBLAS is never slower than eager. Not cached.
        return ("cublas", None)
    from triton.testing import do_bench

    ew = _configs.linear_gelu_epilogue_config(dtype=x.dtype)
    candidates = [("cublas", None)]
    candidates += [("triton", c) for c in _configs.prune_linear_gelu_configs(
        _configs.linear_gelu_gemm_configs(x.dtype, precision), M=M, N=N, K=K, dtype=x.dtype,
        smem_limit=_smem_limit(x.device))]
    best, best_ms = ("cublas", None), float("inf")
    for path, cfg in candidates:
        if path == "cublas":
            fn = lambda: _launch_cublas(x, weight, bias, y, pre, approximate, ew)  # noqa: E731
        else:
            fn = lambda cfg=cfg: _launch_gemm(x, weight, bias, y, pre, approximate, precision, cfg)  # noqa: E731
        try:
            ms = do_bench(fn, warmup=5, rep=20)
        except Exception:  # a configuration the device cannot run (out of resources): skip it
            continue
        if ms < best_ms:
            best, best_ms = (path, cfg), ms
    _CHOICES[key] = best
    return best


def linear_gelu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    approximate: str = "none", *, store_pre: bool = False,
                    out: torch.Tensor | None = None, pre_out: torch.Tensor | None = None,
                    gemm: str = "auto", config: dict | None = None):
    """y = GELU(x @ weight^T + bias) for 2-D x; returns (y, pre) with pre = x @ weight^T + bias
    when ``store_pre`` (kept for the backward), else (y, None).

    x (M, K), weight (N, K), bias (N,) or None, any strides; y and pre are (M, N) contiguous
    unless ``out`` / ``pre_out`` are given. ``gemm``: "auto" (interpreter: the Triton GEMM; GPU:
    the faster of Triton and cuBLAS for this bucketed shape when the operands are aligned, see
    ``_gemm_eligible``, else cuBLAS; float64: cuBLAS), "triton" or "cublas" to force one.
    ``config`` overrides the Triton GEMM's tile configuration (tests).
    """
    _check_2d(x, "x")
    if x.dtype not in _DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    _check_device(x, "x")
    M, K = x.shape
    _check_2d(weight, "weight", x.dtype, x.device)
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
    _check_approximate(approximate)
    if gemm not in GEMM_PATHS:
        raise ValueError(f"gemm must be one of {GEMM_PATHS}, got {gemm!r}")
    if gemm == "triton" and x.dtype not in _GEMM_DTYPES:
        raise TypeError(f"gemm='triton' supports float16, bfloat16 and float32, got {x.dtype}")
    _check_out(out, "out", (M, N), x)
    _check_out(pre_out, "pre_out", (M, N), x)

    if bias is not None and bias.stride(0) != 1 and not interpreting():
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
        elif interpreting() or config is not None:
            gemm = "triton"
        elif _gemm_eligible(x, weight, bias, y, pre):
            gemm, config = _choose_gpu(x, weight, bias, y, pre, approximate, precision)
        else:
            gemm = "cublas"
    if gemm == "cublas":
        _launch_cublas(x, weight, bias, y, pre, approximate, _configs.linear_gelu_epilogue_config(dtype=x.dtype))
    else:
        if config is None:
            config = (_configs.LINEAR_GELU_INTERPRET if interpreting()
                      else _configs.linear_gelu_gemm_configs(x.dtype, precision)[0])
        _launch_gemm(x, weight, bias, y, pre, approximate, precision, config)
    return y, pre


# ----------------------------------------------------------------------------------------------
# Backward launcher
# ----------------------------------------------------------------------------------------------

def linear_gelu_bwd(dy: torch.Tensor, pre: torch.Tensor, approximate: str = "none", *,
                    bias_grad: bool = True, out: torch.Tensor | None = None,
                    config: dict | None = None):
    """(dpre, dbias): dpre = dy * GELU'(pre) (M, N), dbias = dpre.sum(0) (N,) or None.

    Reads the pre-activation the forward saved rather than recomputing it: recomputing
    x @ W^T + b costs a whole extra GEMM (2*M*N*K flops), while saving it costs one M x N store
    in a forward epilogue that is compute-bound anyway, and one M x N load here, in a pass that
    reads dy of the same size regardless. It is also what eager nn.GELU keeps. GELU'(pre) itself
    is recomputed (a few flops per element, free in this memory-bound pass).

    The bias gradient sums the fp32 dpre (before rounding to the output dtype): each program
    writes the column sums of its row range to an fp32 partials buffer, and a second kernel adds
    those in a fixed order; no atomics, so it is bitwise reproducible.
    """
    _check_2d(dy, "dy")
    _check_2d(pre, "pre", dy.dtype, dy.device, dy.shape)
    if dy.dtype not in _DTYPES:
        raise TypeError(f"dy must be float16, bfloat16, float32 or float64, got {dy.dtype}")
    _check_device(dy, "dy")
    _check_approximate(approximate)
    _check_out(out, "out", dy.shape, dy)
    M, N = dy.shape
    if interpreting() and 0 in dy.stride():
        # The interpreter misreads stride-0 tensors (e.g. the gradient of a .sum()); a GPU does not.
        dy = dy.contiguous()
    dpre = out if out is not None else torch.empty((M, N), dtype=dy.dtype, device=dy.device)
    acc_dtype = torch.float64 if dy.dtype == torch.float64 else torch.float32
    dbias = torch.empty((N,), dtype=dy.dtype, device=dy.device) if bias_grad else None
    if N == 0:
        return dpre, dbias
    if M == 0:
        if dbias is not None:
            dbias.zero_()
        return dpre, dbias

    cfg = config or _configs.linear_gelu_bwd_config(dtype=dy.dtype)
    # Enough row ranges to fill the machine, each a multiple of BLOCK_M rows: fewer partial rows
    # to reduce than one per BLOCK_M tile.
    n_col = triton.cdiv(N, cfg["BLOCK_N"])
    n_row_tiles = triton.cdiv(M, cfg["BLOCK_M"])
    tiles_per_program = max(1, triton.cdiv(n_row_tiles * n_col, cfg["TARGET_PROGRAMS"]))
    rows_per_program = tiles_per_program * cfg["BLOCK_M"]
    P = triton.cdiv(M, rows_per_program)
    _check_grid(P, "linear_gelu backward")
    partial = torch.empty((P, N), dtype=acc_dtype, device=dy.device) if bias_grad else dpre
    _gelu_bwd[(P, n_col)](
        dy, pre, dpre,       # (M, N) each
        partial,             # (P, N) fp32 partial sums, or unused
        M, N, rows_per_program,
        dy.stride(0), dy.stride(1),
        pre.stride(0), pre.stride(1),
        dpre.stride(0), dpre.stride(1),
        partial.stride(0),
        BIAS_GRAD=bias_grad, APPROXIMATE_TANH=approximate == "tanh",
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
    )
    if bias_grad:
        rcfg = _configs.LINEAR_GELU_BIAS_REDUCE
        _bias_grad_reduce[(triton.cdiv(N, rcfg["BLOCK_N"]),)](
            partial,         # (P, N)
            dbias,           # (N,)
            P, N,
            partial.stride(0),
            dbias.stride(0),
            BLOCK_P=rcfg["BLOCK_P"], BLOCK_N=rcfg["BLOCK_N"], num_warps=rcfg["num_warps"],
        )
    return dpre, dbias


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (fastvit.profiling.compile_report)
# ----------------------------------------------------------------------------------------------

_TL_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def _spec(name, fn, dtypes: dict, ints: tuple, unit_strides: tuple, aligned: tuple, constexprs: dict,
          num_warps: int, num_stages: int, mma: bool) -> dict:
    """One compile spec. Strides in ``unit_strides`` are the contiguous dimension of their
    tensor: Triton specialises an int argument equal to 1 to a constant at launch, and so do we
    here. ``aligned`` are the int arguments divisible by 16 in the common case (ViT widths are
    multiples of 16); pointers are always 16-byte aligned from torch's allocator."""
    signature = {}
    for arg in fn.arg_names:
        if arg in dtypes:
            signature[arg] = "*" + dtypes[arg]
        elif arg in unit_strides:
            signature[arg] = "constexpr"
        elif arg in ints:
            signature[arg] = "i32"
        else:
            signature[arg] = "constexpr"
    constexprs = {**constexprs, **{s: 1 for s in unit_strides}}
    missing = [a for a, t in signature.items() if t == "constexpr" and a not in constexprs]
    assert not missing, f"{name}: no value for {missing}"
    return {"name": name, "fn": fn, "signature": signature, "constexprs": constexprs,
            "aligned": list(dtypes) + list(aligned), "num_warps": num_warps, "num_stages": num_stages, "mma": mma}


def aot_specs() -> list[dict]:
    """One spec per (kernel, configuration the launchers may pick on a GPU, dtype, GELU variant).

    The GEMM only runs on a GPU for aligned, K-contiguous operands (``_gemm_eligible``): that is
    what is compiled, with bias and stored pre-activation (the training forward, the heavier
    one), with and without K masks (EVEN_K: every ViT width is a multiple of BLOCK_K). The
    elementwise kernels are compiled contiguous and fully strided. ``mma`` says whether
    tensor-core instructions are expected (every 16-bit or TF32 dot)."""
    specs = []
    for dtype in _GEMM_DTYPES:
        t = _TL_NAME[dtype]
        for precision in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)):
            for cfg in _configs.linear_gelu_gemm_configs(dtype, precision):
                tiles = (f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}"
                         f"_w{cfg['num_warps']}s{cfg['num_stages']}")
                for approximate, even_k in ((a, e) for a in APPROXIMATIONS for e in (False, True)):
                    specs.append(_spec(
                        f"_linear_gelu_fwd[{t},{precision},{approximate},{tiles}{',evenk' if even_k else ''}]",
                        _linear_gelu_fwd,
                        dtypes={p: t for p in ("X", "W", "Bias", "Y", "Pre")},
                        ints=("M", "N", "K", "stride_xm", "stride_wn", "stride_ym", "stride_pm"),
                        unit_strides=("stride_xk", "stride_wk", "stride_bn", "stride_yn", "stride_pn"),
                        aligned=("N", "K", "stride_xm", "stride_wn", "stride_ym", "stride_pm"),
                        constexprs={"HAS_BIAS": True, "STORE_PRE": True, "APPROXIMATE_TANH": approximate == "tanh",
                                    "EVEN_K": even_k, "INPUT_PRECISION": precision,
                                    **{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M",
                                                           "EPILOGUE_SPLIT")}},
                        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                        mma=dtype != torch.float32 or precision == "tf32"))
    red = _configs.LINEAR_GELU_BIAS_REDUCE
    # Elementwise kernels: contiguous, widths multiples of 16 (the usual case), and "strided":
    # no stride known to be 1, no width alignment (e.g. a stride-0 dy from .sum(), odd widths).
    for dtype in _DTYPES:
        t = _TL_NAME[dtype]
        acc = "fp64" if dtype == torch.float64 else "fp32"
        ew = _configs.linear_gelu_epilogue_config(interpret=False, dtype=dtype)
        bw = _configs.linear_gelu_bwd_config(interpret=False, dtype=dtype)
        for layout in ("contiguous", "strided"):
            plain = layout == "contiguous"
            tag = "" if plain else ",strided"
            for approximate in APPROXIMATIONS:
                tanh = approximate == "tanh"
                specs.append(_spec(
                    f"_bias_gelu_fwd[{t},{approximate}{tag}]", _bias_gelu_fwd,
                    dtypes={p: t for p in ("Mm", "Bias", "Y", "Pre")},
                    ints=("M", "N", "stride_mm", "stride_mn", "stride_bn", "stride_ym", "stride_yn",
                          "stride_pm", "stride_pn"),
                    unit_strides=("stride_mn", "stride_bn", "stride_yn", "stride_pn") if plain else (),
                    aligned=("N", "stride_mm", "stride_ym", "stride_pm") if plain else (),
                    constexprs={"HAS_BIAS": True, "STORE_PRE": True, "APPROXIMATE_TANH": tanh,
                                "BLOCK_M": ew["BLOCK_M"], "BLOCK_N": ew["BLOCK_N"]},
                    num_warps=ew["num_warps"], num_stages=1, mma=False))
                specs.append(_spec(
                    f"_gelu_bwd[{t},{approximate}{tag}]", _gelu_bwd,
                    dtypes={"Dy": t, "Pre": t, "Dpre": t, "Partial": acc},
                    ints=("M", "N", "rows_per_program", "stride_dym", "stride_dyn", "stride_pm", "stride_pn",
                          "stride_dpm", "stride_dpn", "stride_partp"),
                    unit_strides=("stride_dyn", "stride_pn", "stride_dpn") if plain else (),
                    aligned=("N", "rows_per_program", "stride_dym", "stride_pm", "stride_dpm", "stride_partp")
                    if plain else ("rows_per_program",),
                    constexprs={"BIAS_GRAD": True, "APPROXIMATE_TANH": tanh,
                                "BLOCK_M": bw["BLOCK_M"], "BLOCK_N": bw["BLOCK_N"]},
                    num_warps=bw["num_warps"], num_stages=1, mma=False))
            specs.append(_spec(
                f"_bias_grad_reduce[{t}{tag}]", _bias_grad_reduce,
                dtypes={"Partial": acc, "Dbias": t},
                ints=("P", "N", "stride_partp", "stride_dbn"), unit_strides=("stride_dbn",) if plain else (),
                aligned=("N", "stride_partp") if plain else (),
                constexprs={"BLOCK_P": red["BLOCK_P"], "BLOCK_N": red["BLOCK_N"]},
                num_warps=red["num_warps"], num_stages=1, mma=False))
    return specs


__all__ = ["linear_gelu_fwd", "linear_gelu_bwd", "aot_specs", "APPROXIMATIONS", "GEMM_PATHS"]
