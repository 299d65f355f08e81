"""Backend resolution: which implementation an op or a model runs.

``eager``  the model as the papers write it: explicit softmax(QK^T)V with the N x N matrix in
           memory. The baseline every speed-up is measured against.
``sdpa``   PyTorch's fused ``F.scaled_dot_product_attention`` (what timm does).
``triton`` fastvit's own kernels (``fastvit.kernels``).
``auto``   ``triton`` on CUDA devices of compute capability 8.0 or more, or whenever
           ``TRITON_INTERPRET=1``; otherwise ``sdpa``.

``FASTVIT_BACKEND`` in the environment replaces ``auto`` as the default.
"""
from __future__ import annotations

import difflib
import os

import torch

BACKENDS = ("auto", "eager", "sdpa", "triton")
_ENV_VAR = "FASTVIT_BACKEND"


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def check_backend(backend: str, argname: str = "backend") -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        close = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{argname} must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}{hint}")
    return backend


def default_backend() -> str:
    """The backend that ``"auto"`` stands for before looking at a device: the env var or auto."""
    return check_backend(os.environ.get(_ENV_VAR, "auto"), argname=f"environment variable {_ENV_VAR}")


def triton_supported(device: torch.device | str) -> bool:
    """Whether fastvit's Triton kernels can run on tensors of ``device``."""
    device = torch.device(device)
    if interpreting():
        return True
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into the concrete one used for ``device``.

    Raises a clear error when ``"triton"`` is asked for where it cannot run.
    """
    backend = check_backend(backend)
    if backend == "auto":
        backend = default_backend()
    if backend == "auto":
        return "triton" if triton_supported(device) else "sdpa"
    if backend == "triton" and not triton_supported(device):
        raise RuntimeError(
            f"backend='triton' needs a CUDA device of compute capability >= 8.0, or the Triton "
            f"interpreter (set TRITON_INTERPRET=1 before importing triton); got tensors on "
            f"{torch.device(device)}. Use backend='sdpa' or 'eager' there."
        )
    return backend
