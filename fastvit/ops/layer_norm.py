"""LayerNorm ops over the last dimension: plain and with the residual add folded in."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import resolve_backend
from ._checks import MAX_LAYER_NORM_WIDTH, check_eps, check_kernel_limit, check_params, check_tensor


def _check_ln(x, weight, bias, eps, extra: dict | None = None):
    check_tensor(x, "x", min_ndim=1)
    width = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        check_tensor(t, name, ndim=1)
        if t.shape[0] != width:
            raise ValueError(f"{name} must have shape ({width},) to match the last dimension of x, got {tuple(t.shape)}")
    check_params({"x": x, **(extra or {}), "weight": weight, "bias": bias})
    return check_eps(eps)


def _use_triton(x: torch.Tensor, backend: str) -> bool:
    if resolve_backend(backend, x.device, x.dtype) != "triton":
        return False
    check_kernel_limit(x.shape[-1], MAX_LAYER_NORM_WIDTH, "LayerNorm widths (x.shape[-1])")
    return True


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, backend: str = "auto") -> torch.Tensor:
    """``F.layer_norm(x, (x.shape[-1],), weight, bias, eps)``; weight and bias optional."""
    eps = _check_ln(x, weight, bias, eps)
    if _use_triton(x, backend):
        from ._layer_norm_triton import triton_layer_norm
        return triton_layer_norm(x, weight, bias, eps)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, backend: str = "auto", *,
                   residual_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, layer_norm(h))`` with ``h = x + residual`` (``x + residual_scale * residual`` with a
    (width,) ``residual_scale``: timm's layer scale ``gamma``), one pass over memory on
    ``triton`` (on ``eager`` and ``sdpa`` a multiply, an add and ``F.layer_norm``)."""
    check_tensor(residual, "residual", min_ndim=1)
    extra = {"residual": residual}
    if residual_scale is not None:
        check_tensor(residual_scale, "residual_scale", ndim=1)
        if residual_scale.shape[0] != x.shape[-1]:
            raise ValueError(f"residual_scale must have shape ({x.shape[-1]},) to match the last dimension of x, "
                             f"got {tuple(residual_scale.shape)}")
        extra["residual_scale"] = residual_scale
    eps = _check_ln(x, weight, bias, eps, extra=extra)
    if residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    if _use_triton(x, backend):
        from ._layer_norm_triton import triton_add_layer_norm
        return triton_add_layer_norm(x, residual, weight, bias, eps, residual_scale)
    h = x + (residual if residual_scale is None else residual * residual_scale)
    return h, F.layer_norm(h, (h.shape[-1],), weight, bias, eps)
