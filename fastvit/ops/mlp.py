"""The transformer MLP as one op, fc2(GELU(fc1(x))): on triton the GELU output is not kept for the
backward but recomputed inside fc2's weight-gradient GEMM (``fastvit/ops/_mlp_triton.py``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import resolve_backend
from ._checks import check_approximate, check_params, check_tensor
from .linear_gelu import gelu


def mlp(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor | None, fc2_weight: torch.Tensor,
        fc2_bias: torch.Tensor | None, approximate: str = "none", *, recompute: bool = True,
        backend: str = "auto") -> torch.Tensor:
    """``F.linear(GELU(F.linear(x, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)`` for x of any
    leading shape; ``approximate`` as ``linear_gelu`` ("none", "tanh", "quick").

    On ``eager`` and ``sdpa``: ``linear_gelu`` then ``F.linear``, exactly those PyTorch ops. On
    ``triton``: fc1 + bias + GELU in one GEMM, and for training only fc1's pre-activation kept
    (not the (..., hidden) GELU output): the backward recomputes GELU where fc2's weight gradient
    consumes it. ``recompute=False`` keeps the GELU output instead (same kernels, gradients equal
    bit for bit in every dtype: the forward applies GELU to the pre-activation rounded to the
    activation dtype, as PyTorch's addmm then gelu does, and that is what it stores)."""
    check_tensor(x, "x", min_ndim=1)
    check_tensor(fc1_weight, "fc1_weight", ndim=2)
    if fc1_weight.shape[1] != x.shape[-1]:
        raise ValueError(f"fc1_weight must have shape (hidden_features, {x.shape[-1]}) to match the last dimension "
                         f"of x, got {tuple(fc1_weight.shape)}")
    hidden = fc1_weight.shape[0]
    if fc1_bias is not None:
        check_tensor(fc1_bias, "fc1_bias", ndim=1)
        if fc1_bias.shape[0] != hidden:
            raise ValueError(f"fc1_bias must have shape ({hidden},) = (hidden_features,), got {tuple(fc1_bias.shape)}")
    check_tensor(fc2_weight, "fc2_weight", ndim=2)
    if fc2_weight.shape[1] != hidden:
        raise ValueError(f"fc2_weight must have shape (out_features, {hidden}) to match fc1_weight's "
                         f"hidden_features, got {tuple(fc2_weight.shape)}")
    if fc2_bias is not None:
        check_tensor(fc2_bias, "fc2_bias", ndim=1)
        if fc2_bias.shape[0] != fc2_weight.shape[0]:
            raise ValueError(f"fc2_bias must have shape ({fc2_weight.shape[0]},) = (out_features,), "
                             f"got {tuple(fc2_bias.shape)}")
    check_params({"x": x, "fc1_weight": fc1_weight, "fc1_bias": fc1_bias, "fc2_weight": fc2_weight,
                  "fc2_bias": fc2_bias})
    approximate = check_approximate(approximate)
    if not isinstance(recompute, bool):
        raise TypeError(f"recompute must be a bool, got {type(recompute).__name__}")
    if resolve_backend(backend, x.device, x.dtype) == "triton":
        from ._mlp_triton import triton_mlp
        return triton_mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, approximate, recompute)
    return F.linear(gelu(F.linear(x, fc1_weight, fc1_bias), approximate), fc2_weight, fc2_bias)
