"""Speed measurements shared by ``fastvit bench``, ``fastvit profile`` and ``benchmarks/``.

A *case* is one op (``attention``, ``layer_norm``, ``mlp``, ``block``, ``model``) on one backend,
in one mode (``fwd``: forward under ``torch.no_grad``; ``fwdbwd``: forward and backward), at one
resolution, with the sizes of a registered model (default ``vit_base_patch16_224``). Backends:

``eager``    the model as the papers write it (explicit softmax(QK^T)V): the baseline;
``sdpa``     PyTorch's fused attention (only attention, block and model differ from eager);
``compile``  ``torch.compile`` of the eager code (inductor);
``triton``   fastvit's kernels. Timed only on a CUDA GPU: on a CPU they run in Triton's
             interpreter, whose speed says nothing about a GPU.

Timing synchronises the device: CUDA events around each call on a GPU, ``time.perf_counter`` on
a CPU (where every call is synchronous). Warm-up calls (which also compile) are never timed.
:func:`compare` times the backends of one (op, mode, resolution) *interleaved*, one call of each
per round, so drift of a shared machine hits all of them alike, and reports speed-ups as ratios
measured side by side.

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
import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["OPS", "SPEED_BACKENDS", "MODES", "DTYPES", "SpeedCase", "Timing", "op_backends", "parse_dtype",
           "dtype_name", "backend_unavailable", "default_batch", "build_case", "synchronize", "time_fn",
           "time_interleaved", "do_bench_median_ms", "compare", "format_speed_table"]

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


def build_case(op: str, backend: str, mode: str, img_size: int, *, model: str = "vit_base_patch16_224",
               batch: int | None = None, dtype=torch.float32, device="cpu") -> SpeedCase:
    """Inputs and parameters for one case, allocated on ``device``; nothing is run yet.

    The sizes (width, heads, MLP hidden size, patch size) are those of ``model`` at
    ``img_size``. ``compile`` compiles the eager code afresh (``torch._dynamo.reset()`` first, so
    cases never share, or run out of, dynamo's per-function cache). Raises ValueError for a
    backend that ``op_backends(op)`` does not list or that cannot run on ``device``.
    """
    from .. import ops
    from ..layers import Block, Mlp
    from .flops import count_flops, vit_shape

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
    N, D, H, Dh, Hd = s.tokens, s.embed_dim, s.num_heads, s.head_dim, s.mlp_hidden
    B = default_batch(N, device) if batch is None else batch
    if isinstance(B, bool) or not isinstance(B, int) or B < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    train = mode == "fwdbwd"
    run_backend = "eager" if backend == "compile" else backend
    kw = dict(device=device, dtype=dtype)

    def leaf(*shape):
        return torch.randn(*shape, **kw).requires_grad_(train)

    nbytes = None
    if op == "attention":
        q, k, v = leaf(B, H, N, Dh), leaf(B, H, N, Dh), leaf(B, H, N, Dh)
        inputs, params = (q, k, v), ()

        def body(q, k, v):
            return ops.attention(q, k, v, backend=run_backend)
        out_shape = (B, H, N, Dh)
        flops = 4 * B * H * N * N * Dh
        desc = f"q, k, v ({B}, {H}, {N}, {Dh})"
    elif op == "layer_norm":
        x = leaf(B, N, D)
        w = (1 + 0.1 * torch.randn(D, **kw)).requires_grad_(train)
        b = (0.1 * torch.randn(D, **kw)).requires_grad_(train)
        inputs, params = (x,), (w, b)

        def body(x):
            return ops.layer_norm(x, w, b, LN_EPS, backend=run_backend)
        out_shape = (B, N, D)
        flops = None
        elem = B * N * D * torch.empty((), dtype=dtype).element_size()
        nbytes = (5 if train else 2) * elem
        desc = f"x ({B}, {N}, {D})"
    elif op in ("mlp", "block"):
        module = (Mlp(D, Hd) if op == "mlp" else Block(D, H, Hd / D, eps=LN_EPS)).to(**kw)
        module.train(train)
        x = leaf(B, N, D)
        inputs, params = (x,), tuple(module.parameters())
        call = torch.compile(module, dynamic=False) if backend == "compile" else module

        def body(x):
            return call(x, run_backend)
        out_shape = (B, N, D)
        flops = 4 * B * N * D * Hd
        if op == "block":
            flops = 2 * B * N * (4 * D * D + 2 * D * Hd) + 4 * B * H * N * N * Dh
        desc = f"x ({B}, {N}, {D})"
    else:  # model
        module = copy.deepcopy(_model_template(model, img_size)).set_backend(run_backend).to(**kw)
        module.train(train)
        img = torch.randn(B, module.patch_embed.proj.in_channels, img_size, img_size, **kw)
        inputs, params = (img,), tuple(module.parameters())
        call = torch.compile(module, dynamic=False) if backend == "compile" else module

        def body(img):
            return call(img)
        out_shape = (B, module.num_classes) if module.num_classes else (B, D)
        rep = count_flops(model, img_size, B)
        # backward_flops leaves out the image's own gradient, which no one asks for
        flops = rep.flops + rep.backward_flops if train else rep.flops
        desc = f"images ({B}, 3, {img_size}, {img_size})"
    if op in ("attention", "layer_norm") and backend == "compile":
        torch._dynamo.reset()
        body = torch.compile(body, dynamic=False)
    elif backend == "compile":
        torch._dynamo.reset()
    if train and op != "model":
        flops = None if flops is None else 3 * flops
    leaves = [t for t in (*inputs, *params) if t.requires_grad]

    if train:
        grad_out = torch.randn(out_shape, **kw)

        def fn():
            for t in leaves:
                t.grad = None
            body(*inputs).backward(grad_out)
    else:
        def fn():
            with torch.no_grad():
                body(*inputs)
    return SpeedCase(op=op, backend=backend, mode=mode, img_size=img_size, tokens=N, batch=B, dtype=dtype,
                     device=device, fn=fn, flops=flops, bytes=nbytes, shape=desc)


@functools.lru_cache(maxsize=1)
def _model_template(model: str, img_size: int):
    # Building a model initialises it with trunc_normal_, seconds for vit_base on a CPU; the
    # backends of one comparison (and the benchmark cases of one size) share one initialisation.
    from ..vit import create_model
    return create_model(model, img_size=img_size)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on CPU, where every call is synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median_s: float
    mean_s: float
    min_s: float
    max_s: float
    stdev_s: float
    reps: int
    method: str

    @classmethod
    def from_samples(cls, samples: list[float], method: str) -> "Timing":
        return cls(median_s=statistics.median(samples), mean_s=statistics.fmean(samples), min_s=min(samples),
                   max_s=max(samples), stdev_s=statistics.stdev(samples) if len(samples) > 1 else 0.0,
                   reps=len(samples), method=method)

    def to_dict(self) -> dict:
        return {"median_ms": self.median_s * 1e3, "mean_ms": self.mean_s * 1e3, "min_ms": self.min_s * 1e3,
                "max_ms": self.max_s * 1e3, "stdev_ms": self.stdev_s * 1e3, "reps": self.reps,
                "timer": self.method}


def _timer(device):
    """A function ``run(fn) -> finish()`` pair: ``finish()`` returns fn's seconds once synchronised."""
    device = torch.device(device)
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            return lambda: start.elapsed_time(end) / 1e3  # elapsed_time waits for `end`
        return run, "CUDA events"

    def run(fn):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        return lambda: dt
    return run, "time.perf_counter"


def _auto_reps(seconds: float, device, budget_s: float | None, max_reps: int | None) -> int:
    cuda = torch.device(device).type == "cuda"
    budget_s = (0.5 if cuda else 2.0) if budget_s is None else budget_s
    max_reps = (200 if cuda else 20) if max_reps is None else max_reps
    return max(3, min(max_reps, int(budget_s / max(seconds, 1e-6))))


def time_fn(fn: Callable[[], object], device, *, reps: int | None = None, warmup: int = 1,
            budget_s: float | None = None) -> Timing:
    """Median of ``reps`` synchronised calls of ``fn`` after ``warmup`` untimed ones. ``reps=None``
    picks 3 to 20 (CPU) or 200 (CUDA) from the last warm-up call's time and ``budget_s``."""
    return time_interleaved({"fn": fn}, device, reps=reps, warmup=warmup, budget_s=budget_s)["fn"]


def time_interleaved(fns: dict, device, *, reps: int | None = None, warmup: int = 1,
                     budget_s: float | None = None) -> dict:
    """Time several callables side by side: ``warmup`` untimed calls of each, then ``reps`` rounds
    with one synchronised call of each per round. Returns ``{name: Timing}``."""
    run, method = _timer(device)
    last = {}
    for name, fn in fns.items():
        for _ in range(warmup if reps is not None else max(1, warmup)):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            last[name] = time.perf_counter() - t0
    if reps is None:
        reps = _auto_reps(sum(last.values()), device, budget_s, None)
    pending = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            synchronize(device)
            pending[name].append(run(fn))
    synchronize(device)
    return {name: Timing.from_samples([f() for f in fs], method) for name, fs in pending.items()}


def do_bench_median_ms(fn: Callable[[], object]) -> float | None:
    """``triton.testing.do_bench``'s median in ms (it flushes the L2 cache between calls), or
    None where it cannot run (no GPU, or Triton's interpreter)."""
    from ..backend import interpreting

    if not torch.cuda.is_available() or interpreting():
        return None
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return float(do_bench(fn, return_mode="median"))


# ------------------------------------------------------------------------------------------------
# Side-by-side comparison
# ------------------------------------------------------------------------------------------------
def _release(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def compare(ops=("attention",), resolutions=(224,), backends=SPEED_BACKENDS, modes=("fwd",), *,
            model: str = "vit_base_patch16_224", dtype=torch.float32, device="cpu", batch: int | None = None,
            reps: int | None = None, warmup: int = 1, budget_s: float | None = None,
            skip: Callable | None = None, progress=None) -> list[dict]:
    """Time every (op, mode, resolution) on ``backends`` interleaved, eager always included as the
    baseline. One row per backend: ``median_ms`` and the other timing fields, ``speedup_vs_eager``
    (eager's median / this backend's median, measured in the same rounds), ``tflops`` / ``gbps``
    where defined, ``source: "measured"``. A backend that cannot run gives a row with
    ``available: False`` and the ``reason``; so does one that raises (e.g. out of memory).

    ``skip(op, backend, mode, img_size)`` may return a reason to leave a case out. ``progress``,
    if given, is called with a label before each (op, mode, resolution) group.
    """
    dtype = parse_dtype(dtype)
    device = torch.device(device)
    for b in backends:
        _check(b, SPEED_BACKENDS, "backend")
    order = ["eager"] + [b for b in SPEED_BACKENDS if b in backends and b != "eager"]
    rows = []
    for op in ops:
        _check(op, OPS, "op")
        for mode in modes:
            _check(mode, MODES, "mode")
            for size in resolutions:
                if progress is not None:
                    progress(f"speed {op} {mode} {size}px")
                rows.extend(_compare_group(op, mode, size, [b for b in order if b in op_backends(op)], model=model,
                                           dtype=dtype, device=device, batch=batch, reps=reps, warmup=warmup,
                                           budget_s=budget_s, skip=skip))
                _release(device)
    return rows


def _compare_group(op, mode, size, backends, *, model, dtype, device, batch, reps, warmup, budget_s, skip):
    from .flops import vit_shape

    tokens = vit_shape(model, size).tokens
    base = dict(op=op, mode=mode, img_size=size, tokens=tokens, dtype=dtype_name(dtype), device=str(device),
                model=model, source="measured")
    rows, cases, last = {}, {}, {}
    for b in backends:
        reason = backend_unavailable(b, device) or (skip(op, b, mode, size) if skip else None)
        if reason:
            rows[b] = dict(base, backend=b, available=False, reason=reason)
            continue
        try:
            case = build_case(op, b, mode, size, model=model, batch=batch, dtype=dtype, device=device)
            # the first calls compile (torch.compile, Triton's JIT): never timed, and a failure
            # here takes out this backend only
            for _ in range(max(1, warmup) + (1 if b in ("compile", "triton") else 0)):
                synchronize(device)
                t0 = time.perf_counter()
                case.fn()
                synchronize(device)
                last[b] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - reported in the row, the comparison goes on
            rows[b] = dict(base, backend=b, available=False, reason=f"{type(exc).__name__}: {exc}".splitlines()[0])
            _release(device)
            continue
        cases[b] = case
    if cases:
        try:
            n = reps if reps is not None else _auto_reps(sum(last[b] for b in cases), device, budget_s, None)
            timings = time_interleaved({b: c.fn for b, c in cases.items()}, device, reps=n, warmup=0)
        except Exception as exc:  # noqa: BLE001
            for b in cases:
                rows[b] = dict(base, backend=b, available=False, reason=f"{type(exc).__name__}: {exc}".splitlines()[0])
            return [rows[b] for b in backends]
        eager = timings.get("eager")
        for b, case in cases.items():
            t = timings[b]
            row = dict(base, backend=b, available=True, reason=None, batch=case.batch, shape=case.shape,
                       flops=case.flops, bytes=case.bytes, **t.to_dict(), **case.metrics(t.median_s))
            row["speedup_vs_eager"] = eager.median_s / t.median_s if eager is not None else None
            rows[b] = row
    return [rows[b] for b in backends]


def format_speed_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare` rows (all measured)."""
    header = ["op", "mode", "img", "tokens", "batch", "backend", "median ms", "vs eager", "TFLOP/s", "GB/s", "reps"]
    lines = []
    for r in rows:
        if not r.get("available", True):
            lines.append([r["op"], r["mode"], str(r["img_size"]), str(r["tokens"]), "-", r["backend"], "-", "-",
                          "-", "-", "-", f"not run: {r['reason']}"])
            continue
        sp = r.get("speedup_vs_eager")
        lines.append([r["op"], r["mode"], str(r["img_size"]), str(r["tokens"]), str(r["batch"]), r["backend"],
                      f"{r['median_ms']:.3f}", "-" if sp is None else f"{sp:.2f}x",
                      f"{r['tflops']:.3f}" if r.get("tflops") else "-", f"{r['gbps']:.1f}" if r.get("gbps") else "-",
                      str(r["reps"]), ""])
    widths = [max([len(h)] + [len(row[i]) for row in lines]) for i, h in enumerate(header)]

    def fmt(cells):
        body = "  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        extra = cells[len(header)] if len(cells) > len(header) else ""
        return (body + ("  " + extra if extra else "")).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in lines]
    return "\n".join(out)
