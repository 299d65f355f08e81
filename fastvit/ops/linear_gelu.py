"""The MLP's first layer: GELU(x @ weight^T + bias), or a gated unit (SwiGLU, GEGLU), with the
bias and the activation in the GEMM's epilogue."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import resolve_backend
from ._checks import GLU_ACTIVATIONS, check_approximate, check_choice, check_params, check_tensor


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


def linear_glu(x: torch.Tensor, weight, bias=None, activation: str = "silu", backend: str = "auto") -> torch.Tensor:
    """A gated linear unit, ``act(gate) * value`` with ``[gate | value] = F.linear(x, weight,
    bias)``: SwiGLU for ``activation="silu"``, GEGLU for ``"gelu"`` (erf). On triton, one GEMM
    whose epilogue adds the biases and writes the product (``fastvit.kernels.linear_glu``).

    ``weight``: (2 * hidden, in) packed as timm's ``SwiGLUPacked`` / ``GluMlp(gate_last=False)``
    holds its fc1 (gate rows first), with ``bias`` (2 * hidden,) or None; or a pair
    ``(gate_weight, value_weight)`` of (hidden, in) as timm's ``SwiGLU`` holds them (fc1_g, fc1_x),
    with ``bias`` a pair or None. Returns (..., hidden). On eager and sdpa: exactly those PyTorch
    ops (timm's modules' own computation)."""
    check_tensor(x, "x", min_ndim=1)
    packed = not isinstance(weight, (tuple, list))
    if packed:
        check_tensor(weight, "weight", ndim=2)
        if weight.shape[0] % 2:
            raise ValueError(f"weight must have an even number of rows (2 * hidden: gate rows, then value rows), "
                             f"got shape {tuple(weight.shape)}")
        hidden = weight.shape[0] // 2
        weights = {"weight": weight}
        if isinstance(bias, (tuple, list)):
            raise TypeError("bias must be a tensor (2 * hidden,) or None with a packed weight, got a pair")
        biases = {"bias": bias} if bias is not None else {}
        bias_shape = (2 * hidden,)
    else:
        if len(weight) != 2:
            raise ValueError(f"weight must be a (2 * hidden, in) tensor or a pair (gate_weight, value_weight), "
                             f"got a sequence of {len(weight)}")
        weights = {"gate_weight": weight[0], "value_weight": weight[1]}
        for name, w in weights.items():
            check_tensor(w, name, ndim=2)
        hidden = weight[0].shape[0]
        if weight[1].shape != weight[0].shape:
            raise ValueError(f"gate_weight and value_weight must have the same shape, got "
                             f"{tuple(weight[0].shape)} and {tuple(weight[1].shape)}")
        if bias is not None and (not isinstance(bias, (tuple, list)) or len(bias) != 2):
            raise TypeError("bias must be a pair (gate_bias, value_bias) or None with a pair of weights, "
                            f"got {type(bias).__name__}")
        biases = {"gate_bias": bias[0], "value_bias": bias[1]} if bias is not None else {}
        bias_shape = (hidden,)
    for name, w in weights.items():
        if w.shape[1] != x.shape[-1]:
            raise ValueError(f"{name} must have shape (out_features, {x.shape[-1]}) to match the last dimension of "
                             f"x, got {tuple(w.shape)}")
    for name, b in biases.items():
        check_tensor(b, name, ndim=1)
        if tuple(b.shape) != bias_shape:
            raise ValueError(f"{name} must have shape {bias_shape}, got {tuple(b.shape)}")
    check_params({"x": x, **weights, **biases})
    activation = check_choice(activation, GLU_ACTIVATIONS, "activation")
    if resolve_backend(backend, x.device, x.dtype) == "triton":
        from ._linear_gelu_triton import triton_linear_glu
        return triton_linear_glu(x, weight, bias, activation, packed)
    act = F.silu if activation == "silu" else F.gelu
    if packed:
        gate, value = F.linear(x, weight, bias).chunk(2, dim=-1)
        return act(gate) * value
    return act(F.linear(x, weight[0], None if bias is None else bias[0])) * F.linear(
        x, weight[1], None if bias is None else bias[1])
