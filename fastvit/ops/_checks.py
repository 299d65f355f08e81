"""The one validation layer of the ops: every bad input is refused here, before any launch.

Limits and dtype sets are defined once here and read by the three op families; the launchers
in ``fastvit.kernels`` keep only cheap invariant checks (tests hold the two in agreement).
"""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# What the kernels compute in; float64 never reaches them (fastvit.backend's float64 rule).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256            # attention: q/k/v tiles held in registers, split in chunks
MAX_LAYER_NORM_WIDTH = 16384  # layer_norm: one row per program, held whole
# F.gelu's "none" (erf) and "tanh", and "quick": x * sigmoid(1.702 x), the QuickGELU of CLIP's
# OpenAI weights (the sigmoid approximation of GELU).
GELU_APPROXIMATIONS = ("none", "tanh", "quick")
# The gate activations of linear_glu: SiLU (SwiGLU) and erf GELU (GEGLU).
GLU_ACTIVATIONS = ("silu", "gelu")
# How rope pairs the channels it rotates: "half" (channel i with i + D/2: rotate_half, DINOv3,
# timm's rope_rotate_half) or "interleaved" (channels 2i and 2i+1: EVA-02, timm's default).
ROPE_PAIRINGS = ("half", "interleaved")


def check_tensor(t, name: str, *, ndim: int | None = None, min_ndim: int | None = None,
                 dtypes=FLOAT_DTYPES) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({allowed}), got {t.dtype}")
    return t


def check_same(tensors: dict, what: str) -> None:
    """All tensors agree on ``what`` ("dtype" or "device")."""
    items = [(n, getattr(t, what)) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, value in items[1:]:
        if value != first:
            raise ValueError(f"{name} has {what} {value} but {first_name} has {what} {first}; they must match")


def check_params(tensors: dict) -> None:
    """Activations and parameters on one device, and of one dtype unless autocast mixes them
    (fp16/bf16 activations with fp32 parameters, which the ops accept as F.linear does)."""
    first = next(t for t in tensors.values() if t is not None)
    if not autocasting(first.device):
        check_same(tensors, "dtype")
    check_same(tensors, "device")


def check_positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def check_dropout(p, name: str = "dropout_p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {p!r}")
    return float(p)


def check_scale(scale, name: str = "scale") -> float | None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"{name} must be a finite float or None, got {scale!r}")
    return None if scale is None else float(scale)


def check_eps(eps, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not float(eps) > 0.0:
        raise ValueError(f"{name} must be a positive float, got {eps!r}")
    return float(eps)


def check_approximate(approximate) -> str:
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {', '.join(map(repr, GELU_APPROXIMATIONS))}, "
                         f"got {approximate!r}")
    return approximate


def check_choice(value, choices, name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_kernel_limit(value: int, limit: int, what: str) -> None:
    """A size the Triton kernels cannot take; raised for backend 'triton' only."""
    if value > limit:
        raise ValueError(f"backend='triton' supports {what} up to {limit}, got {value}; "
                         f"use backend='sdpa' or 'eager' for it")


def autocasting(device: torch.device) -> bool:
    """Whether autocast is on for ``device``."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # device types autocast does not know (meta)
        return False


def autocast_inputs(*tensors):
    """The tensors cast to the autocast dtype of their device when autocast is on there, as
    autocast casts the inputs of F.linear and SDPA (float64 and None are left alone)."""
    device = next(t for t in tensors if t is not None).device
    if not autocasting(device):
        return tensors
    dtype = torch.get_autocast_dtype(device.type)
    return tuple(t.to(dtype) if t is not None and t.dtype != torch.float64 else t for t in tensors)


def check_cu_seqlens(cu_seqlens, total: int, max_seqlen, device: torch.device, *, values: bool | None = None) -> None:
    """Sequence boundaries of packed tokens: an int32 tensor (S+1,) on ``device`` with
    0 = cu[0] < cu[1] < ... < cu[S] = total (every sequence at least one token: an empty one is
    refused rather than silently skipped), and ``max_seqlen`` >= the longest sequence.

    The values live on the tensor's device. They are checked when reading them costs no device
    synchronisation (a CPU tensor, outside torch.compile / export tracing) or when ``values`` is
    True (one device->host read: a debugging path). Unchecked values cannot make the Triton
    kernels read or write out of bounds (they clamp every index); results are then undefined.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"cu_seqlens must have dtype int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be 1-D of length S+1 >= 2 (S sequences), got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != torch.device(device):
        raise ValueError(f"cu_seqlens must be on the device of q ({device}), got {cu_seqlens.device}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, torch.SymInt)) or max_seqlen < 1:
        raise ValueError(f"max_seqlen must be a positive int, got {max_seqlen!r}")
    if values is None:
        values = cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling()
    if not values:
        return
    cu = cu_seqlens.tolist()
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got cu_seqlens[0] = {cu[0]}")
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    for i, n in enumerate(lengths):
        if n < 1:
            what = "decreases" if n < 0 else "repeats a value (an empty sequence)"
            raise ValueError(f"cu_seqlens must be strictly increasing (every sequence at least one token), but it "
                             f"{what} at index {i + 1}: cu_seqlens[{i}] = {cu[i]}, cu_seqlens[{i + 1}] = {cu[i + 1]}")
    if cu[-1] != total:
        raise ValueError(f"cu_seqlens must end at the number of tokens T = {total}, got cu_seqlens[-1] = {cu[-1]}")
    longest = max(lengths)
    if longest > max_seqlen:
        raise ValueError(f"max_seqlen must be at least the longest sequence ({longest} tokens, sequence "
                         f"{lengths.index(longest)}), got {max_seqlen}")
