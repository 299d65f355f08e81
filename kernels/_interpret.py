"""Everything that differs between a real GPU and Triton's CPU interpreter, in one place."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


# Read once at import, as Triton itself does: the interpreter is chosen before triton is imported.
INTERPRETING = tl.constexpr(interpreting())


@triton.jit
def dot(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """``tl.dot(a, b, acc)`` that is also right under the interpreter.

    The interpreter multiplies the raw bit patterns of bfloat16 operands (triton issue 11584),
    so there, and only there, bf16 operands are upcast to fp32 first. On a GPU the operands go
    to the tensor cores untouched.
    """
    if INTERPRETING:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
        if b.dtype == tl.bfloat16:
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


def input_precision(dtype: torch.dtype) -> str:
    """The ``tl.dot`` precision for operands of ``dtype``.

    fp16/bf16 dots are exact products with fp32 accumulation anyway. For fp32 we use exact
    ("ieee") dots unless the user allowed TF32 exactly as they would for torch.matmul.
    """
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"
