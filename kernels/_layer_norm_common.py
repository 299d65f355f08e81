"""What the LayerNorm forward (``kernels/layer_norm.py``) and backward
(``kernels/layer_norm_bwd.py``) launchers share: argument checks, the (M, N) row view, and the
NaN-poisoned allocation tests use to catch unwritten elements."""
from __future__ import annotations

import contextlib

import torch
import triton

from ._checks import KERNEL_DTYPES, require_dtype, require_tensor
from ._configs import LAYER_NORM_MAX_WIDTH

_POISON = False


@contextlib.contextmanager
def poisoned_outputs():
    """Within this block every buffer a launcher allocates (outputs and the partial sums) starts
    as NaN, so a test sees any element a kernel forgot to write. A debugging aid; not
    thread-safe."""
    global _POISON
    previous, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = previous


def new(shape, dtype, device) -> torch.Tensor:
    """An output or scratch buffer (NaN-filled inside ``poisoned_outputs``)."""
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as an (M, N) matrix with unit column stride, copying only when it is not one.

    ``view`` succeeds exactly when the leading dimensions collapse into one evenly strided row
    dimension (a row stride of 0, an expanded row, included: rows are only read). A last
    stride other than 1 (e.g. the all-stride-0 gradient of ``.sum()``) is copied: the kernels
    rely on unit-stride rows for vector loads.
    """
    n = t.shape[-1]
    if t.stride(-1) != 1 and n > 1:
        t = t.contiguous()
    try:
        t2 = t.view(-1, n)
    except RuntimeError:
        t2 = t.reshape(-1, n).contiguous()
    return t2


def check(t: torch.Tensor | None, name: str, *, like: torch.Tensor | None = None, width: int | None = None):
    """An optional tensor input: a float16/bfloat16/float32 tensor on ``like``'s device, of
    shape (width,) when ``width`` is given."""
    if t is None:
        return
    require_tensor(t, name)
    require_dtype(t, name, what="the Triton LayerNorm kernels")
    if like is not None and t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but x is on {like.device}; they must match")
    if width is not None and (t.dim() != 1 or t.shape[0] != width):
        raise ValueError(f"{name} must have shape ({width},), got {tuple(t.shape)}")


def check_x(x: torch.Tensor, name: str = "x") -> int:
    """The normalised input; returns its width."""
    check(x, name)
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-D tensor")
    n = x.shape[-1]
    if not 1 <= n <= LAYER_NORM_MAX_WIDTH:
        raise ValueError(f"{name}.shape[-1] must be in [1, {LAYER_NORM_MAX_WIDTH}] for the Triton LayerNorm, got {n}")
    return n


def check_out_dtype(dtype, name: str) -> None:
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {dtype}")


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not float(eps) > 0.0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    return float(eps)


def rows_bucket(m: int) -> int:
    """Row counts enter the forward's autotune key rounded up to a power of two."""
    return triton.next_power_of_2(max(m, 1))


def h_dtype_of(x: torch.Tensor, residual: torch.Tensor | None, scale: torch.Tensor | None = None) -> torch.dtype:
    """The dtype of h = x + residual (or x + scale * residual): their promoted dtype, as the
    unfused ``x + residual * scale`` gives under autocast (an fp32 layer scale with bf16
    activations makes h fp32 there too)."""
    dtype = x.dtype
    for t in (residual, scale):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype
