"""The launchers' invariant checks that more than one kernel family needs, and the dtypes the
kernels take. (User-facing validation lives in ``fastvit/ops/_checks.py``; these guard what a
launcher relies on, for callers that reach the launchers directly.)"""
from __future__ import annotations

import torch

# What the Triton kernels compute on (always accumulating in fp32).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def dtype_names(dtypes) -> str:
    """``float16, bfloat16 or float32``."""
    names = [str(d).replace("torch.", "") for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def require_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def require_dtype(t: torch.Tensor, name: str, dtypes=KERNEL_DTYPES, what: str = "the Triton kernels") -> None:
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: {what} take {dtype_names(dtypes)}, got {t.dtype}")


def require_out(t, name: str, shape, dtype, device, *, unit_last_stride: bool = True) -> torch.Tensor:
    """A caller-provided output buffer: a tensor of exactly this shape, dtype and device (and a
    unit last stride, which the kernels' stores rely on)."""
    require_tensor(t, name)
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise ValueError(f"{name} must be a {dtype} tensor of shape {tuple(shape)} on {device}, got "
                         f"{t.dtype} {tuple(t.shape)} on {t.device}")
    if unit_last_stride and t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a unit last stride, got strides {t.stride()}")
    return t
