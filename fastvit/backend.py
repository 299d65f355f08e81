"""Backend resolution: which implementation an op runs. Decided here, in one function.

``eager``  the model as the papers write it: explicit softmax(QK^T)V with the N x N matrix in
           memory. The baseline every speed-up is measured against.
``sdpa``   PyTorch's fused ``F.scaled_dot_product_attention`` (what timm and transformers use);
           LayerNorm, GELU and the residual adds as separate PyTorch ops.
``triton`` fastvit's own kernels (``fastvit.kernels``).
``auto``   ``triton`` where the kernels run (a CUDA device of compute capability 8.0 or more,
           or whenever ``TRITON_INTERPRET=1``), otherwise ``sdpa``.

``FASTVIT_BACKEND`` in the environment replaces ``auto`` as the default.

Modules store the name they were built with (``"auto"`` included); every op resolves it against
its input's device with :func:`resolve_backend`, so a model moved between devices keeps working.

float64, one rule for every op: the kernels compute in fp32, so float64 inputs always run the
PyTorch path (``sdpa``'s ops), on ``triton`` and ``auto`` alike. That keeps ``model.double()``
usable as a numerical reference and never returns fp32-accurate results in a float64 tensor.
"""
from __future__ import annotations

import difflib
import os

import torch

BACKENDS = ("auto", "eager", "sdpa", "triton")
_ENV_VAR = "FASTVIT_BACKEND"


def check_backend(backend: str, argname: str = "backend") -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        close = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{argname} must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}{hint}")
    return backend


def default_backend() -> str:
    """The backend that ``"auto"`` stands for before looking at a device: the env var or auto."""
    return check_backend(os.environ.get(_ENV_VAR, "auto"), argname=f"environment variable {_ENV_VAR}")


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (defined in ``fastvit.kernels._interpret``;
    imports triton, so set ``TRITON_INTERPRET`` before the first call)."""
    try:
        from .kernels._interpret import interpreting as _interpreting
    except ImportError:  # no triton on this platform
        return False
    return _interpreting()


def explain(device: torch.device | str) -> str | None:
    """Why fastvit's Triton kernels cannot run on ``device``, or None when they can."""
    device = torch.device(device)
    try:
        import triton  # noqa: F401
    except ImportError as exc:  # no triton on this platform
        return f"triton is not importable ({exc})"
    if interpreting():
        return None
    if device.type != "cuda":
        return (f"tensors on {device}: the kernels need a CUDA/ROCm GPU, or Triton's CPU interpreter "
                f"(TRITON_INTERPRET=1 set before triton is imported)")
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    if torch.version.hip is not None:
        arch = torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]
        if arch in ROCM_ARCHS:
            return None
        return f"AMD GPU {arch}: the kernels are built for {', '.join(ROCM_ARCHS)} (AMD Instinct)"
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return None
    return f"CUDA compute capability {major}.{minor}: the kernels need 8.0 or more (Ampere and newer)"


ROCM_ARCHS = ("gfx90a", "gfx942", "gfx950")


def triton_supported(device: torch.device | str) -> bool:
    """Whether fastvit's Triton kernels can run on tensors of ``device``."""
    return explain(device) is None


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into the concrete one for inputs on ``device``.

    The one place the choice is made. float64 inputs get ``sdpa`` where ``triton`` was asked
    for or chosen (see the module docstring). ``"triton"`` where the kernels cannot run raises.
    """
    backend = check_backend(backend)
    if backend == "auto":
        backend = default_backend()
    if backend == "auto":
        backend = "triton" if triton_supported(device) else "sdpa"
    elif backend == "triton":
        reason = explain(device)
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run here: {reason}. Use backend='sdpa' or 'eager', "
                               f"or 'auto' to fall back by itself.")
    if backend == "triton" and dtype == torch.float64:
        return "sdpa"
    return backend
