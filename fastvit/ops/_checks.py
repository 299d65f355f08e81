"""Argument checks shared by the ops: every bad input is refused here, before any launch."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def check_dropout(p, name: str = "dropout_p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {p!r}")
    return float(p)


def check_eps(eps, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not float(eps) > 0.0:
        raise ValueError(f"{name} must be a positive float, got {eps!r}")
    return float(eps)


def check_approximate(approximate) -> str:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh' (as in F.gelu), got {approximate!r}")
    return approximate


def autocasting(device: torch.device) -> bool:
    """Whether autocast is on for ``device``: then fp16/bf16 activations meet fp32 parameters,
    which the ops accept as F.linear and F.layer_norm do."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # device types autocast does not know (meta)
        return False
