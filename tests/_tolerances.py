"""Error measures shared by the kernel tests."""
from __future__ import annotations

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (a norm-wise relative error, safe near zeros)."""
    actual = actual.double()
    expected = expected.double()
    denom = expected.abs().max().clamp_min(1e-30)
    return ((actual - expected).abs().max() / denom).item()


def assert_close_to_reference(actual, expected64, *, dtype, lowp_baseline=None, fp32_rtol=1e-5, factor=2.0,
                              floor=None, what="output"):
    """fp32: relative error <= fp32_rtol. fp16/bf16: error <= factor x the error of plain PyTorch
    in the same dtype (``lowp_baseline``), with a small floor so an exact baseline does not demand
    exactness."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = rel_err(actual, expected64)
    if dtype in (torch.float32, torch.float64):
        assert err <= fp32_rtol, f"{what}: relative error {err:.3g} > {fp32_rtol:g}"
        return
    base = rel_err(lowp_baseline, expected64)
    if floor is None:
        floor = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    bound = max(factor * base, floor)
    assert err <= bound, f"{what}: relative error {err:.3g} > {factor:g} x PyTorch {dtype} error {base:.3g} (bound {bound:.3g})"
