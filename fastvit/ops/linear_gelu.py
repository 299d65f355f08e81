"""The MLP's first layer: GELU(x @ weight^T + bias), bias and GELU in the GEMM's epilogue."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import resolve_backend
from ._checks import check_approximate, check_params, check_tensor


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                approximate: str = "none", backend: str = "auto") -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias), approximate=approximate)`` for x of any leading shape
    (on ``eager`` and ``sdpa`` exactly those PyTorch ops). ``approximate="quick"`` is QuickGELU,
    ``y * sigmoid(1.702 y)``."""
    check_tensor(x, "x", min_ndim=1)
    check_tensor(weight, "weight", ndim=2)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must have shape (out_features, {x.shape[-1]}) to match the last dimension of x, "
                         f"got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},) = (out_features,), got {tuple(bias.shape)}")
    check_params({"x": x, "weight": weight, "bias": bias})
    approximate = check_approximate(approximate)
    if resolve_backend(backend, x.device, x.dtype) == "triton":
        from ._linear_gelu_triton import triton_linear_gelu
        return triton_linear_gelu(x, weight, bias, approximate)
    return gelu(F.linear(x, weight, bias), approximate)


def gelu(y: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """The activation alone, in PyTorch: ``F.gelu``, or QuickGELU for ``"quick"``."""
    if approximate == "quick":
        return y * torch.sigmoid(1.702 * y)
    return F.gelu(y, approximate=approximate)
