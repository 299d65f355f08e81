"""The cases ``fastvit bench``, ``fastvit profile`` and ``benchmarks/`` time, built in one place.

A *case* is one op (``attention``, ``layer_norm``, ``mlp``, ``block``, ``model``) on one backend,
in one mode (``fwd``: forward under ``torch.no_grad``; ``fwdbwd``: forward and backward), at one
resolution, with the sizes of a registered model (default ``vit_base_patch16_224``). Backends:

``eager``    the model as the papers write it (explicit softmax(QK^T)V): the baseline;
``sdpa``     PyTorch's fused attention (only attention, block and model differ from eager);
``compile``  ``torch.compile`` of the eager code (inductor);
``triton``   fastvit's kernels. Timed only on a CUDA GPU: on a CPU they run in Triton's
             interpreter, whose speed says nothing about a GPU.

Work counts beside the times (``tflops``, ``gbps``) are analytic:
  * FLOPs are matrix-product FLOPs, 2 x multiply-accumulates (as in ``fastvit.profiling.flops``);
    a backward counts 2x its forward (the useful work: recomputation by fused kernels is not
    counted, so every backend is measured against the same work).
  * LayerNorm bytes are the minimum traffic: forward reads x and writes y; backward reads x and
    dy and writes dx (weight, bias and the fp32 row statistics are negligible and left out).
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .defaults import DEFAULT_MODEL

__all__ = ["OPS", "SPEED_BACKENDS", "MODES", "DTYPES", "SpeedCase", "op_backends", "parse_dtype", "dtype_name",
           "backend_unavailable", "default_batch", "build_case"]

OPS = ("attention", "layer_norm", "mlp", "block", "model")
SPEED_BACKENDS = ("eager", "sdpa", "compile", "triton")
MODES = ("fwd", "fwdbwd")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
# Ops whose code does not involve attention: the sdpa backend runs exactly the eager code there.
_NO_ATTENTION = ("layer_norm", "mlp")
LN_EPS = 1e-6


def parse_dtype(name) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` (or the torch names, or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name}")
    key = str(name).strip().lower().removeprefix("torch.")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def op_backends(op: str) -> tuple[str, ...]:
    """The backends whose code differs for ``op`` (sdpa only changes attention)."""
    _check(op, OPS, "op")
    return tuple(b for b in SPEED_BACKENDS if not (b == "sdpa" and op in _NO_ATTENTION))


def backend_unavailable(backend: str, device) -> str | None:
    """Why ``backend`` cannot be timed on ``device`` (None when it can)."""
    from ..backend import interpreting, triton_supported

    _check(backend, SPEED_BACKENDS, "backend")
    device = torch.device(device)
    if backend == "triton":
        if device.type != "cuda":
            return ("needs CUDA (on CPU the triton backend runs only in Triton's interpreter, where timing "
                    "is meaningless)")
        if interpreting():
            return "needs CUDA without TRITON_INTERPRET=1 (the interpreter's timing is meaningless)"
        if not triton_supported(device):
            return "needs CUDA compute capability >= 8.0"
    if backend == "compile" and device.type == "cuda" and interpreting():
        return "needs TRITON_INTERPRET unset (torch.compile's GPU kernels would run in Triton's interpreter)"
    return None


def default_batch(tokens: int, device) -> int:
    """1 on a CPU; on a GPU a power of two near 8192 / tokens (32 at 224 px, 1 at 1024 px)."""
    if torch.device(device).type != "cuda":
        return 1
    return max(1, 2 ** int(math.floor(math.log2(max(1.0, 8192 / tokens)))))


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------
@dataclass
class SpeedCase:
    """One timed callable. ``fn()`` runs a single step and returns nothing."""
    op: str
    backend: str
    mode: str
    img_size: int
    tokens: int
    batch: int
    dtype: torch.dtype
    device: torch.device
    fn: Callable[[], None] = field(repr=False)
    flops: int | None = None   # matrix-product FLOPs of one step (see the module docstring)
    bytes: int | None = None   # minimum DRAM bytes of one step (layer_norm only)
    shape: str = ""

    def metrics(self, seconds: float) -> dict:
        """Throughput of one step that took ``seconds``: TFLOP/s, GB/s, images/s where defined."""
        out = {}
        if seconds and seconds > 0:
            if self.flops:
                out["tflops"] = self.flops / seconds / 1e12
            if self.bytes:
                out["gbps"] = self.bytes / seconds / 1e9
            if self.op == "model":
                out["images_per_s"] = self.batch / seconds
        return out

    def info(self) -> dict:
        return {"op": self.op, "backend": self.backend, "mode": self.mode, "img_size": self.img_size,
                "tokens": self.tokens, "batch": self.batch, "dtype": dtype_name(self.dtype),
                "device": str(self.device), "shape": self.shape, "flops": self.flops, "bytes": self.bytes}


def _check(v, choices, name):
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


@dataclass
class _Work:
    """What one op's case runs: ``body(*inputs)`` (``body(call, *inputs)`` when there is a
    ``module``: ``call`` is the module, or its compiled form) returns a tensor or a tuple of
    tensors, each of ``out_shapes`` (the backward is seeded with random gradients of those)."""
    inputs: tuple
    params: tuple
    body: Callable
    out_shapes: tuple
    flops: int | None
    nbytes: int | None
    desc: str
    module: torch.nn.Module | None = None  # what the compile backend compiles, when there is one


def _attention_work(s, B, backend, leaf, kw) -> _Work:
    from .. import ops

    N, H, Dh = s.tokens, s.num_heads, s.head_dim
    q, k, v = leaf(B, H, N, Dh), leaf(B, H, N, Dh), leaf(B, H, N, Dh)
    return _Work((q, k, v), (), lambda q, k, v: ops.attention(q, k, v, backend=backend), ((B, H, N, Dh),),
                 4 * B * H * N * N * Dh, None, f"q, k, v ({B}, {H}, {N}, {Dh})")


def _layer_norm_work(s, B, backend, leaf, kw) -> _Work:
    from .. import ops

    N, D = s.tokens, s.embed_dim
    x = leaf(B, N, D)
    w = (1 + 0.1 * torch.randn(D, **kw)).requires_grad_(x.requires_grad)
    b = (0.1 * torch.randn(D, **kw)).requires_grad_(x.requires_grad)
    elem = B * N * D * torch.empty((), dtype=kw["dtype"]).element_size()
    return _Work((x,), (w, b), lambda x: ops.layer_norm(x, w, b, LN_EPS, backend=backend), ((B, N, D),), None,
                 (5 if x.requires_grad else 2) * elem, f"x ({B}, {N}, {D})")


def _mlp_work(s, B, backend, leaf, kw) -> _Work:
    from ..layers import Mlp

    N, D, Hd = s.tokens, s.embed_dim, s.mlp_hidden
    module = Mlp(D, Hd, backend=backend).to(**kw)
    x = leaf(B, N, D)
    return _Work((x,), tuple(module.parameters()), lambda call, x: call(x), ((B, N, D),), 4 * B * N * D * Hd, None,
                 f"x ({B}, {N}, {D})", module)


def _block_work(s, B, backend, leaf, kw) -> _Work:
    # The form the model runs: the block's input is x + the previous block's MLP branch, still
    # pending (its residual add folded into this block's norm1), and it returns (h, pending) for
    # the next LayerNorm to add. Block(...)(x, Pending(branch)) is exactly what FastViT runs for
    # every block but the first.
    from ..layers import Block, Pending

    N, D, H, Dh, Hd = s.tokens, s.embed_dim, s.num_heads, s.head_dim, s.mlp_hidden
    module = Block(D, H, Hd / D, eps=LN_EPS, backend=backend).to(**kw)
    x, branch = leaf(B, N, D), leaf(B, N, D)

    def body(call, x, branch):
        h, pending = call(x, Pending(branch))
        return h, pending.branch

    flops = 2 * B * N * (4 * D * D + 2 * D * Hd) + 4 * B * H * N * N * Dh
    return _Work((x, branch), tuple(module.parameters()), body, ((B, N, D), (B, N, D)), flops, None,
                 f"x, pending branch ({B}, {N}, {D})", module)


def _model_work(s, B, backend, leaf, kw, *, model, img_size, train) -> _Work:
    from .flops import count_flops

    module = copy.deepcopy(_model_template(model, img_size)).set_backend(backend).to(**kw)
    img = torch.randn(B, module.patch_embed.proj.in_channels, img_size, img_size, **kw)
    rep = count_flops(model, img_size, B)
    # backward_flops leaves out the image's own gradient, which no one asks for
    flops = rep.flops + rep.backward_flops if train else rep.flops
    out = (B, module.num_classes) if module.num_classes else (B, s.embed_dim)
    return _Work((img,), tuple(module.parameters()), lambda call, img: call(img), (out,), flops, None,
                 f"images ({B}, 3, {img_size}, {img_size})", module)


_WORK = {"attention": _attention_work, "layer_norm": _layer_norm_work, "mlp": _mlp_work, "block": _block_work}


def build_case(op: str, backend: str, mode: str, img_size: int, *, model: str = DEFAULT_MODEL,
               batch: int | None = None, dtype=torch.float32, device="cpu") -> SpeedCase:
    """Inputs and parameters for one case, allocated on ``device``; nothing is run yet.

    The sizes (width, heads, MLP hidden size, patch size) are those of ``model`` at
    ``img_size``. Modules are built with ``backend=`` (``mlp``, ``block``, ``model``), and run as
    the model runs them. ``compile`` compiles the eager code afresh (``torch._dynamo.reset()``
    first, so cases never share, or run out of, dynamo's per-function cache). Raises ValueError
    for a backend that ``op_backends(op)`` does not list or that cannot run on ``device``.
    """
    from .flops import vit_shape

    _check(op, OPS, "op")
    _check(mode, MODES, "mode")
    if backend not in op_backends(op):
        raise ValueError(f"backend must be one of {', '.join(map(repr, op_backends(op)))} for op {op!r}, "
                         f"got {backend!r}")
    reason = backend_unavailable(backend, device)
    if reason:
        raise ValueError(f"backend {backend!r} cannot be timed on {device}: {reason}")
    dtype = parse_dtype(dtype)
    device = torch.device(device)
    s = vit_shape(model, img_size)
    B = default_batch(s.tokens, device) if batch is None else batch
    if isinstance(B, bool) or not isinstance(B, int) or B < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    train = mode == "fwdbwd"
    run_backend = "eager" if backend == "compile" else backend
    kw = dict(device=device, dtype=dtype)

    def leaf(*shape):
        return torch.randn(*shape, **kw).requires_grad_(train)

    if op == "model":
        work = _model_work(s, B, run_backend, leaf, kw, model=model, img_size=img_size, train=train)
    else:
        work = _WORK[op](s, B, run_backend, leaf, kw)
    if backend == "compile":
        torch._dynamo.reset()
    if work.module is not None:
        work.module.train(train)
        call = torch.compile(work.module, dynamic=False) if backend == "compile" else work.module
        body = functools.partial(work.body, call)
    else:
        body = torch.compile(work.body, dynamic=False) if backend == "compile" else work.body
    flops = work.flops
    if train and op != "model" and flops is not None:
        flops = 3 * flops  # a backward is two matrix products per forward one
    leaves = [t for t in (*work.inputs, *work.params) if t.requires_grad]
    inputs = work.inputs

    if train:
        grads = [torch.randn(shape, **kw) for shape in work.out_shapes]

        def fn():
            for t in leaves:
                t.grad = None
            out = body(*inputs)
            torch.autograd.backward(out if isinstance(out, tuple) else (out,), grads)
    else:
        def fn():
            with torch.no_grad():
                body(*inputs)
    return SpeedCase(op=op, backend=backend, mode=mode, img_size=img_size, tokens=s.tokens, batch=B, dtype=dtype,
                     device=device, fn=fn, flops=flops, bytes=work.nbytes, shape=work.desc)


@functools.lru_cache(maxsize=1)
def _model_template(model: str, img_size: int):
    # Building a model initialises it with trunc_normal_, seconds for vit_base on a CPU; the
    # backends of one comparison (and the benchmark cases of one size) share one initialisation.
    from ..vit import create_model
    return create_model(model, img_size=img_size)
