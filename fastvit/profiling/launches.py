"""Count the kernels a forward pass launches: Triton launches and PyTorch compute ops.

A Triton launch is counted where every launch ends up (``JITFunction.run``, or
``InterpretedFunction.run`` under the interpreter), so autotuned and plain kernels alike are
seen. PyTorch's side is counted with a ``TorchDispatchMode``: every aten op that computes
(on a GPU, one kernel launch each, give or take cuBLAS internals), leaving out ops that only
allocate or re-describe memory (views, ``empty``, ``detach``).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that launch nothing: they allocate, or only change how existing memory is described.
_NO_KERNEL = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view", "reshape",
    "permute", "transpose", "t", "expand", "unsqueeze", "squeeze", "select", "slice", "unbind", "split",
    "split_with_sizes", "chunk", "alias", "detach", "as_strided", "_reshape_alias", "lift_fresh",
    "view_as", "unflatten", "flatten", "narrow", "_to_copy_noop", "is_same_size", "sym_size", "sym_stride",
    "sym_numel", "sym_storage_offset", "dim", "size", "stride", "numel", "is_contiguous",
    "_has_compatible_shallow_copy_type",
}


@dataclass
class LaunchCount:
    triton: Counter = field(default_factory=Counter)  # kernel name -> launches
    torch: Counter = field(default_factory=Counter)  # aten op name -> calls

    @property
    def total(self) -> int:
        return sum(self.triton.values()) + sum(self.torch.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "triton": dict(self.triton), "torch": dict(self.torch)}


class _AtenCounter(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        # fastvit's own custom ops are counted by the Triton launches they make inside.
        if func.namespace != "fastvit" and name not in _NO_KERNEL:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_launches():
    """``with count_launches() as c: model(x)``; then ``c.triton``, ``c.torch``, ``c.total``."""
    result = LaunchCount()
    patched = []
    for cls in _launch_classes():
        original = cls.run

        def run(self, *args, _original=original, **kwargs):
            if not kwargs.get("warmup", False):
                fn = getattr(self, "fn", None)
                result.triton[getattr(fn, "__name__", type(self).__name__)] += 1
            return _original(self, *args, **kwargs)

        cls.run = run
        patched.append((cls, original))
    try:
        with _AtenCounter(result.torch):
            yield result
    finally:
        for cls, original in patched:
            cls.run = original


def _launch_classes():
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:  # pragma: no cover - triton ships with torch on Linux
        return []
    classes = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    return classes


def block_launches(backend: str, model: str = "vit_base_patch16_224", batch: int = 2) -> LaunchCount:
    """Launches of one inference block as the model runs it: the second block, whose input
    still has the first block's MLP branch pending (its residual add folded into norm1), on its
    second call (what a model keeps between calls, such as EVA's packed q/v bias or the rotary
    tables of a grid, is made on the first), with the model's prefix tokens and rotary tables."""
    from ..layers import Pending
    from ..vit import create_model

    net = create_model(model, depth=2, backend=backend).eval()
    tokens = net.patch_embed.num_patches + net.num_prefix_tokens
    x, branch = torch.randn(batch, tokens, net.embed_dim), torch.randn(batch, tokens, net.embed_dim)
    rope = () if net.rope is None else (net.rope(net.patch_embed.grid_size, x.device),)  # made once per grid
    with torch.no_grad():
        net.blocks[1](x, Pending(branch), None, *rope)  # the first call makes what is kept between calls
        with count_launches() as c:
            net.blocks[1](x, Pending(branch), None, *rope)
    return c


if __name__ == "__main__":  # python -m fastvit.profiling.launches [model]
    import sys

    from ..backend import triton_supported

    name = sys.argv[1] if len(sys.argv) > 1 else "vit_base_patch16_224"
    print(f"kernel launches per inference block of {name} (batch 2)")
    for b in ("eager", "sdpa", "triton"):
        if b == "triton" and not triton_supported("cpu"):
            print(f"{b:>7}: needs CUDA or TRITON_INTERPRET=1")
            continue
        c = block_launches(b, name)
        detail = ", ".join(f"{k} x{v}" for k, v in sorted({**c.triton, **c.torch}.items()))
        print(f"{b:>7}: {c.total:2d}  ({detail})")
