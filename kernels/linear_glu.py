"""Gated linear units, act(x @ W_g^T + b_g) * (x @ W_v^T + b_v) (SwiGLU with act = SiLU, GEGLU
with act = GELU), with the biases, the activation and the product in one GEMM's epilogue: the
forward kernels and launcher here, the backward in ``kernels/linear_glu_bwd.py``.

The gate and value weights are two pointers with their own strides, so the one kernel serves
timm's packed ``SwiGLUPacked`` / ``GluMlp`` (one (2H, K) fc1, gate rows first: two views of it)
and its split ``SwiGLU`` (fc1_g, fc1_x) without concatenating weights. Each program computes the
same BLOCK_N hidden columns of both products, so the epilogue has gate and value side by side.
The pre-activations the backward needs are stored packed, (M, 2H) [gate | value], which is
exactly the output of the packed fc1: its gradient is the packed weight's.

Two forward paths end in the same epilogue (``_bias_glu_store``), as for linear_gelu: the tiled
Triton GEMM (``triton``) and ``torch.matmul`` + one elementwise pass (``cublas``; also float64's
path). On a GPU the launcher races them once per bucketed shape and keeps the faster; under the
interpreter the Triton GEMM runs. Launchers: tensors in, tensors out, no autograd.
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
from ._gelu import (GLU_ACTIVATIONS, LINEAR_GELU_DTYPES, _bias_glu_store, _upcast, check_2d, check_activation,
                    check_device, check_out, gemm_grid)
from ._interpret import dot, input_precision
from .linear_glu_bwd import aot_specs as _bwd_aot_specs
from .linear_glu_bwd import linear_glu_bwd

__all__ = ["linear_glu_fwd", "linear_glu_bwd", "aot_specs", "GLU_ACTIVATIONS"]


@triton.jit
def _linear_glu_fwd(
    X, Wg, Wv, Bg, Bv, Y, Pre,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk,
    stride_wgn, stride_wgk,
    stride_wvn, stride_wvk,
    stride_bg, stride_bv,
    stride_ym, stride_yn,
    stride_pm, stride_pn,
    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, ACTIVATION: tl.constexpr,
    EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped program order (as linear_gelu): programs running together share X and W panels in L2.
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % rows_in_group
    pid_n = (pid % pids_per_group) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_m64 = offs_m.to(tl.int64)  # int64: M * stride_xm passes 2^31 for large batches
    offs_n64 = offs_n.to(tl.int64)
    x_ptrs = X + offs_m64[:, None] * stride_xm + offs_k[None, :] * stride_xk        # (BLOCK_M, BLOCK_K)
    wg_ptrs = Wg + offs_n64[None, :] * stride_wgn + offs_k[:, None] * stride_wgk    # (BLOCK_K, BLOCK_N)
    wv_ptrs = Wv + offs_n64[None, :] * stride_wvn + offs_k[:, None] * stride_wvk    # (BLOCK_K, BLOCK_N)

    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
            bg = tl.load(wg_ptrs, mask=mask_n[None, :], other=0.0)
            bv = tl.load(wv_ptrs, mask=mask_n[None, :], other=0.0)
        else:
            k_left = K - k * BLOCK_K  # zeros past K add nothing to the dots
            a = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
            bg = tl.load(wg_ptrs, mask=mask_n[None, :] & (offs_k[:, None] < k_left), other=0.0)
            bv = tl.load(wv_ptrs, mask=mask_n[None, :] & (offs_k[:, None] < k_left), other=0.0)
        # one X tile feeds both products: X is read once for gate and value
        acc_g = dot(a, bg, acc_g, INPUT_PRECISION)
        acc_v = dot(a, bv, acc_v, INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        wg_ptrs += BLOCK_K * stride_wgk
        wv_ptrs += BLOCK_K * stride_wvk

    _bias_glu_store(acc_g, acc_v, offs_m64, mask_m, offs_n, N, Bg, Bv, Y, Pre, stride_bg, stride_bv,
                    stride_ym, stride_yn, stride_pm, stride_pn, HAS_BIAS, STORE_PRE, ACTIVATION)


@triton.jit
def _bias_glu_fwd(
    Mm, Bg, Bv, Y, Pre,
    M, N,
    stride_mm, stride_mn,
    stride_bg, stride_bv,
    stride_ym, stride_yn,
    stride_pm, stride_pn,
    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The gated epilogue as its own pass over a packed (M, 2N) matmul result (the cuBLAS path)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask = mask_m[:, None] & (offs_n < N)[None, :]
    offs_m64 = offs_m.to(tl.int64)
    ptrs = Mm + offs_m64[:, None] * stride_mm + offs_n.to(tl.int64)[None, :] * stride_mn
    g = tl.load(ptrs, mask=mask, other=0.0)
    v = tl.load(ptrs + N * stride_mn, mask=mask, other=0.0)
    _bias_glu_store(_upcast(g), _upcast(v), offs_m64, mask_m, offs_n, N, Bg, Bv, Y, Pre, stride_bg, stride_bv,
                    stride_ym, stride_yn, stride_pm, stride_pn, HAS_BIAS, STORE_PRE, ACTIVATION)


_linear_glu_fwd_tuned = TunedKernel(
    triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(_linear_glu_fwd),
    configs=C.LINEAR_GLU_CONFIGS,
    key=["M_BUCKET", "N", "K", "HAS_BIAS", "STORE_PRE", "ACTIVATION", "INPUT_PRECISION"],
    prune=C.prune_linear_glu_configs, interpret_config=C.linear_glu_interpret_config)


def _bucket(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _bias_args(bg, bv):
    if bg is None:
        return {"stride_bg": 0, "stride_bv": 0}
    return {"stride_bg": bg.stride(0), "stride_bv": bv.stride(0)}


def _launch_gemm(x, wg, wv, bg, bv, y, pre, activation, precision, config=None):
    M, K = x.shape
    N = wg.shape[0]

    grid = gemm_grid(M, N, "linear_glu GEMM")

    args = dict(
        X=x, Wg=wg, Wv=wv,                              # (M, K), (N, K), (N, K)
        Bg=bg if bg is not None else y,                 # (N,) or unused
        Bv=bv if bv is not None else y,                 # (N,) or unused
        Y=y,                                            # (M, N)
        Pre=pre if pre is not None else y,              # (M, 2N) [gate | value] or unused
        M=M, N=N, K=K, M_BUCKET=_bucket(M),
        stride_xm=x.stride(0), stride_xk=x.stride(1), stride_wgn=wg.stride(0), stride_wgk=wg.stride(1),
        stride_wvn=wv.stride(0), stride_wvk=wv.stride(1), **_bias_args(bg, bv),
        stride_ym=y.stride(0), stride_yn=y.stride(1),
        stride_pm=pre.stride(0) if pre is not None else 0, stride_pn=pre.stride(1) if pre is not None else 0,
        HAS_BIAS=bg is not None, STORE_PRE=pre is not None, ACTIVATION=activation, INPUT_PRECISION=precision,
    )
    if config is None:
        _linear_glu_fwd_tuned[grid](**args)
    else:
        _linear_glu_fwd_tuned.fn[grid](**args, **config.all_kwargs())


def _launch_cublas(x, wg, wv, bg, bv, y, pre, activation):
    M, N = x.shape[0], wg.shape[0]
    cfg = C.linear_gelu_epilogue_config(x.dtype) if _autotune.on_gpu() else C.LINEAR_GELU_INTERPRET_EPILOGUE
    # Both products land in one packed (M, 2N) buffer, the pre-activation's when it is kept (the
    # epilogue reads and rewrites each element in the same program).
    mm = pre if pre is not None else torch.empty((M, 2 * N), dtype=x.dtype, device=x.device)
    torch.matmul(x, wg.t(), out=mm[:, :N])
    torch.matmul(x, wv.t(), out=mm[:, N:])
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
    _bias_glu_fwd[grid](
        mm,                                    # (M, 2N)
        bg if bg is not None else y,           # (N,) or unused
        bv if bv is not None else y,           # (N,) or unused
        y,                                     # (M, N)
        pre if pre is not None else y,         # (M, 2N) or unused
        M, N,
        mm.stride(0), mm.stride(1),
        *_bias_args(bg, bv).values(),
        y.stride(0), y.stride(1),
        *(pre.stride() if pre is not None else (0, 0)),
        HAS_BIAS=bg is not None, STORE_PRE=pre is not None, ACTIVATION=activation,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
    )


# GPU only: (device, dtype, precision, activation, has_bias, store_pre, bucketed M, N, K) -> path
_CHOICES: dict[tuple, str] = {}


def _gemm_eligible(x, wg, wv, bg, bv, y, pre) -> bool:
    """The layout the GEMM's compile specs check (K-contiguous, widths, row strides and pointers
    aligned to 16): anything else takes cuBLAS + the epilogue kernel (as linear_gelu)."""
    K, N = x.shape[1], wg.shape[0]
    tensors = [t for t in (x, wg, wv, y, pre) if t is not None]
    ptrs = [t.data_ptr() for t in tensors + [b for b in (bg, bv) if b is not None]]
    return (all(t.stride(1) == 1 for t in tensors) and K % 16 == 0 and N % 16 == 0
            and all(t.stride(0) % 16 == 0 for t in tensors) and all(p % 16 == 0 for p in ptrs)
            and (bg is None or (bg.stride(0) == 1 and bv.stride(0) == 1)))


def _choose_gpu(x, wg, wv, bg, bv, y, pre, activation, precision) -> str:
    M, K = x.shape
    key = (x.device.index, x.dtype, precision, activation, bg is not None, pre is not None, _bucket(M),
           wg.shape[0], K)
    choice = _CHOICES.get(key)
    if choice is None:
        if torch.cuda.is_current_stream_capturing():
            return "cublas"  # no timing during CUDA-graph capture; not cached
        choice = _autotune.race("linear_glu", {
            "triton": lambda: _launch_gemm(x, wg, wv, bg, bv, y, pre, activation, precision),
            "cublas": lambda: _launch_cublas(x, wg, wv, bg, bv, y, pre, activation),
        })
        _CHOICES[key] = choice
    return choice


def linear_glu_fwd(x: torch.Tensor, w_gate: torch.Tensor, w_value: torch.Tensor,
                   b_gate: torch.Tensor | None = None, b_value: torch.Tensor | None = None,
                   activation: str = "silu", *, store_pre: bool = False, out: torch.Tensor | None = None,
                   pre_out: torch.Tensor | None = None, gemm: str = "auto", config: triton.Config | None = None):
    """y = act(x @ w_gate^T + b_gate) * (x @ w_value^T + b_value) for 2-D x; returns (y, pre)
    with pre (M, 2N) = [gate | value] pre-activations when ``store_pre``, else (y, None).

    x (M, K), w_gate and w_value (N, K), biases (N,) (both or neither), any strides. ``gemm``:
    "auto", "triton" or "cublas", as ``linear_gelu_fwd``; ``config`` forces the GEMM's (tests).
    """
    check_2d(x, "x")
    if x.dtype not in LINEAR_GELU_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    check_device(x, "x")
    M, K = x.shape
    check_2d(w_gate, "w_gate", x.dtype, x.device)
    if w_gate.shape[1] != K:
        raise ValueError(f"w_gate must have shape (N, {K}) to match x's width, got {tuple(w_gate.shape)}")
    N = w_gate.shape[0]
    check_2d(w_value, "w_value", x.dtype, x.device, (N, K))
    if (b_gate is None) != (b_value is None):
        raise ValueError("b_gate and b_value must both be given or both be None")
    for name, b in (("b_gate", b_gate), ("b_value", b_value)):
        if b is not None and (not isinstance(b, torch.Tensor) or b.shape != (N,) or b.dtype != x.dtype
                              or b.device != x.device):
            got = f"{b.dtype} {tuple(b.shape)} on {b.device}" if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"{name} must be a {x.dtype} tensor of shape ({N},) on {x.device}, got {got}")
    check_activation(activation)
    if gemm not in ("auto", "triton", "cublas"):
        raise ValueError(f"gemm must be one of ('auto', 'triton', 'cublas'), got {gemm!r}")
    if gemm == "triton" and x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"gemm='triton' supports float16, bfloat16 and float32, got {x.dtype}")
    check_out(out, "out", (M, N), x)
    check_out(pre_out, "pre_out", (M, 2 * N), x)

    y = out if out is not None else torch.empty((M, N), dtype=x.dtype, device=x.device)
    pre = None
    if store_pre:
        pre = pre_out if pre_out is not None else torch.empty((M, 2 * N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y, pre
    precision = input_precision(x.dtype)
    if gemm == "auto":
        if x.dtype not in KERNEL_DTYPES:
            gemm = "cublas"
        elif config is not None or not _autotune.on_gpu():
            gemm = "triton"
        elif _gemm_eligible(x, w_gate, w_value, b_gate, b_value, y, pre):
            gemm = _choose_gpu(x, w_gate, w_value, b_gate, b_value, y, pre, activation, precision)
        else:
            gemm = "cublas"
    if gemm == "cublas":
        _launch_cublas(x, w_gate, w_value, b_gate, b_value, y, pre, activation)
    else:
        _launch_gemm(x, w_gate, w_value, b_gate, b_value, y, pre, activation, precision, config)
    return y, pre


def aot_specs() -> list:
    """The gated GEMM for every configuration, dtype, dot precision and activation (aligned,
    K-contiguous, bias and stored pre-activations, K masked or not), the epilogue kernel
    contiguous and strided per dtype and activation, and the backward's (linear_glu_bwd)."""
    specs = []
    for dtype in KERNEL_DTYPES:
        t = tl_type(dtype)
        for precision in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)):
            for cfg in C.linear_glu_gemm_configs(dtype, precision):
                kw = cfg.kwargs
                tiles = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}_w{cfg.num_warps}s{cfg.num_stages}"
                for activation in GLU_ACTIVATIONS:
                    for even_k in (False, True):
                        specs.append(aot_spec(
                            f"_linear_glu_fwd[{t},{precision},{activation},{tiles}{',evenk' if even_k else ''}]",
                            _linear_glu_fwd, pointers={p: dtype for p in ("X", "Wg", "Wv", "Bg", "Bv", "Y", "Pre")},
                            unit_strides=("stride_xk", "stride_wgk", "stride_wvk", "stride_bg", "stride_bv",
                                          "stride_yn", "stride_pn"),
                            aligned=("N", "K", "M_BUCKET", "stride_xm", "stride_wgn", "stride_wvn", "stride_ym",
                                     "stride_pm"),
                            constexprs={"HAS_BIAS": True, "STORE_PRE": True, "ACTIVATION": activation,
                                        "EVEN_K": even_k, "INPUT_PRECISION": precision, **kw},
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                            mma=dtype != torch.float32 or precision == "tf32"))
    for dtype in LINEAR_GELU_DTYPES:
        ew = C.linear_gelu_epilogue_config(dtype)
        for plain in (True, False):
            for activation in GLU_ACTIVATIONS:
                specs.append(aot_spec(
                    f"_bias_glu_fwd[{tl_type(dtype)},{activation}{'' if plain else ',strided'}]", _bias_glu_fwd,
                    pointers={p: dtype for p in ("Mm", "Bg", "Bv", "Y", "Pre")},
                    unit_strides=("stride_mn", "stride_bg", "stride_bv", "stride_yn", "stride_pn") if plain else (),
                    aligned=("N", "stride_mm", "stride_ym", "stride_pm") if plain else (),
                    constexprs={"HAS_BIAS": True, "STORE_PRE": True, "ACTIVATION": activation,
                                "BLOCK_M": ew["BLOCK_M"], "BLOCK_N": ew["BLOCK_N"]},
                    num_warps=ew["num_warps"], mma=False))
    return specs + _bwd_aot_specs(LINEAR_GELU_DTYPES)
