"""GELU and its derivative as Triton device functions, the bias + GELU epilogue both forward
paths of linear_gelu end in, and the launchers' shared checks (``kernels/linear_gelu.py``,
``kernels/linear_gelu_bwd.py``).

``APPROXIMATE`` selects the activation at compile time, one of ``GELU_APPROXIMATIONS``: "none"
(erf GELU, ``F.gelu``), "tanh" (``F.gelu(approximate="tanh")``), "quick" (QuickGELU,
x * sigmoid(1.702 x), the activation of CLIP's OpenAI weights).

The gated forms (``kernels/linear_glu.py``: SwiGLU, GEGLU) select the gate's activation with
``ACTIVATION``, one of ``GLU_ACTIVATIONS``: "silu" (x * sigmoid(x), SwiGLU) or "gelu" (erf GELU,
GEGLU); ``_bias_glu_store`` is their epilogue.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _interpret
from ._checks import KERNEL_DTYPES, require_tensor

# The values of ``approximate`` the kernels implement (fastvit/ops/_checks.py validates against
# this tuple).
GELU_APPROXIMATIONS = ("none", "tanh", "quick")
# The gate activations of the gated linear units (fastvit/ops/_checks.py validates against it).
GLU_ACTIVATIONS = ("silu", "gelu")
# The Triton GEMM takes KERNEL_DTYPES; float64 goes through the cuBLAS path and the elementwise
# kernels only (tensor cores have no use for it; it is for checking).
LINEAR_GELU_DTYPES = KERNEL_DTYPES + (torch.float64,)

_SQRT_HALF = tl.constexpr(0.7071067811865476)      # 1 / sqrt(2)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)   # 1 / sqrt(2 pi)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)  # sqrt(2 / pi)
_TANH_COEF = tl.constexpr(0.044715)
_QUICK_COEF = tl.constexpr(1.702)
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
def _gelu(x, APPROXIMATE: tl.constexpr):
    if APPROXIMATE == "tanh":
        u = _SQRT_2_OVER_PI * (x + _TANH_COEF * x * x * x)
        # 0.5 * (1 + tanh(u)) == sigmoid(2u): one exp, no cancellation near u = 0, saturating
        # where tanh does, and portable (tl has no tanh outside the per-backend libdevice).
        # The cap keeps exp finite: past it |GELU| is below 1e-34 anyway.
        return x / (1.0 + tl.exp(tl.minimum(-2.0 * u, _EXP_CAP)))
    elif APPROXIMATE == "quick":
        # x * sigmoid(1.702 x), capped like the tanh form.
        return x / (1.0 + tl.exp(tl.minimum(x * (-_QUICK_COEF), _EXP_CAP)))
    else:
        return 0.5 * x * (1.0 + tl.math.erf(x * _SQRT_HALF))


@triton.jit
def _gelu_grad(x, APPROXIMATE: tl.constexpr):
    if APPROXIMATE == "tanh":
        x2 = x * x
        u = _SQRT_2_OVER_PI * x * (1.0 + _TANH_COEF * x2)
        s = 1.0 / (1.0 + tl.exp(tl.minimum(-2.0 * u, _EXP_CAP)))  # 0.5 * (1 + tanh(u))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_COEF * x2)
        # d/dx [x * s] with ds/du = 2 s (1 - s)
        return s + 2.0 * x * s * (1.0 - s) * du
    elif APPROXIMATE == "quick":
        s = 1.0 / (1.0 + tl.exp(tl.minimum(x * (-_QUICK_COEF), _EXP_CAP)))
        # d/dx [x * s(1.702 x)] = s + 1.702 x s (1 - s)
        return s + _QUICK_COEF * x * s * (1.0 - s)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * _SQRT_HALF))
        pdf = tl.exp(-0.5 * x * x) * _INV_SQRT_2PI
        return cdf + x * pdf



@triton.jit
def _bias_gelu_store(v, offs_m64, mask_m, offs_n, N, Bias, Y, Pre,
                     stride_bn, stride_ym, stride_yn, stride_pm, stride_pn,
                     HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, APPROXIMATE: tl.constexpr):
    """The epilogue both forward paths share: v (rows offs_m64, columns offs_n) + bias -> Pre
    (optional), GELU -> Y."""
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    offs_n64 = offs_n.to(tl.int64)
    if HAS_BIAS:
        bias = tl.load(Bias + offs_n64 * stride_bn, mask=mask_n, other=0.0)
        v += bias.to(v.dtype)[None, :]
    # GELU of the pre-activation rounded to the output dtype, as PyTorch's addmm then gelu compute
    # it: the stored pre holds exactly these bits, so the MLP backward's prologue recomputes the
    # GELU output bit for bit from it (fastvit.ops.mlp; a no-op in fp32).
    pre = v.to(Y.dtype.element_ty)
    if STORE_PRE:
        tl.store(Pre + offs_m64[:, None] * stride_pm + offs_n64[None, :] * stride_pn, pre, mask=mask)
    y = _gelu(pre.to(v.dtype), APPROXIMATE)
    tl.store(Y + offs_m64[:, None] * stride_ym + offs_n64[None, :] * stride_yn, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _glu_act(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == "silu":
        # x * sigmoid(x), capped like QuickGELU: exp stays finite for very negative x
        return x / (1.0 + tl.exp(tl.minimum(-x, _EXP_CAP)))
    else:
        return _gelu(x, "none")


@triton.jit
def _glu_act_grad(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == "silu":
        s = 1.0 / (1.0 + tl.exp(tl.minimum(-x, _EXP_CAP)))
        return s + x * s * (1.0 - s)
    else:
        return _gelu_grad(x, "none")


@triton.jit
def _bias_glu_store(g, v, offs_m64, mask_m, offs_n, N, Bg, Bv, Y, Pre,
                    stride_bg, stride_bv, stride_ym, stride_yn, stride_pm, stride_pn,
                    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, ACTIVATION: tl.constexpr):
    """The gated epilogue: gate g and value v (rows offs_m64, hidden columns offs_n < N) + their
    biases -> Pre (optional, packed as the packed weight's output: gate in columns [0, N), value
    in [N, 2N)), act(g) * v -> Y (M, N)."""
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    offs_n64 = offs_n.to(tl.int64)
    if HAS_BIAS:
        g += tl.load(Bg + offs_n64 * stride_bg, mask=mask_n, other=0.0).to(g.dtype)[None, :]
        v += tl.load(Bv + offs_n64 * stride_bv, mask=mask_n, other=0.0).to(v.dtype)[None, :]
    if STORE_PRE:
        pre_ptrs = Pre + offs_m64[:, None] * stride_pm + offs_n64[None, :] * stride_pn
        tl.store(pre_ptrs, g.to(Pre.dtype.element_ty), mask=mask)
        tl.store(pre_ptrs + N * stride_pn, v.to(Pre.dtype.element_ty), mask=mask)
    y = _glu_act(g, ACTIVATION) * v
    tl.store(Y + offs_m64[:, None] * stride_ym + offs_n64[None, :] * stride_yn, y.to(Y.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def check_2d(t, name, dtype=None, device=None, shape=None):
    require_tensor(t, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def check_out(t, name, shape, like):
    if t is not None:
        check_2d(t, name, like.dtype, like.device, shape)


def check_approximate(approximate):
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")


def check_activation(activation):
    if activation not in GLU_ACTIVATIONS:
        raise ValueError(f"activation must be one of {GLU_ACTIVATIONS}, got {activation!r}")


def check_device(t, name):
    if t.device.type != "cuda" and not _interpret.interpreting():
        raise ValueError(f"{name} must be a CUDA tensor (or set TRITON_INTERPRET=1 for the CPU interpreter), "
                         f"got a tensor on {t.device}")


def check_grid(n_programs, name):
    if n_programs >= 2**31:
        raise ValueError(f"{name}: {n_programs} programs exceed CUDA's grid limit of 2^31 - 1")


def gemm_grid(rows: int, cols: int, name: str):
    """The launch grid of a tiled GEMM over (rows, cols): one program per (BLOCK_M, BLOCK_N)
    tile, checked against the grid limit (``name`` in the error)."""
    def grid(meta):
        programs = triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"])
        check_grid(programs, name)
        return (programs,)
    return grid
