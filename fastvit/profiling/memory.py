"""Peak memory of attention alone and of a whole FastViT, measured beside the analytic model.

How it is measured (``torch.cuda.max_memory_allocated`` on CUDA, :class:`LiveTensorTracker` on a
CPU) is in :mod:`fastvit.profiling.tracker`; what is modelled, in
:mod:`fastvit.profiling.memory_model`. This module builds the inputs, runs one case per row and
puts the measured peak (``peak_bytes``) beside the model (``model_bytes``).

* On CUDA every measurement is preceded by one unmeasured call (autotuning, cuBLAS workspaces).
* ``backend="triton"`` on a CPU needs Triton's interpreter, which is chosen when triton is first
  imported (``TRITON_INTERPRET=1``): the ``fastvit`` CLI sets it at its entry; library code never
  does. Without it the triton rows are not run, and say why. It is slow: one ViT-B attention call
  (12 heads, batch 1) takes ~4 s at 224 px, ~25 s at 384 px and ~15 min at 1024 px (inference, 2
  CPU cores); training about three times that.
* A case that raises is not a row: the exception propagates (``fastvit profile`` names the case).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .defaults import DEFAULT_MODEL, DEFAULT_RESOLUTIONS
from .memory_model import (MEMORY_BACKENDS, MODES, _check_choice, _pair, attention_model_bytes, attention_scores,
                           model_memory_bytes)
from .tracker import LiveTensorTracker, PeakMeasurement, measure_peak

__all__ = ["LiveTensorTracker", "PeakMeasurement", "measure_peak", "attention_scores", "attention_model_bytes",
           "model_memory_bytes", "measure_attention", "measure_model", "memory_table", "MemoryReport",
           "fit_slope", "fit_slopes", "triton_unavailable", "not_modelled", "format_memory_table",
           "DEFAULT_RESOLUTIONS", "MODES", "SCOPES", "MEMORY_BACKENDS"]

SCOPES = ("attention", "model")


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------
def triton_unavailable(device) -> str | None:
    """Why ``backend="triton"`` cannot run on ``device`` (None when it can). The only reasons are
    stated ones: no CUDA device of compute capability >= 8.0, and, on a CPU, no interpreter. A
    kernel that raises is not a reason: that exception reaches the caller."""
    from ..backend import interpreting, triton_supported

    device = torch.device(device)
    if device.type == "cuda":
        return None if triton_supported(device) else "needs CUDA compute capability >= 8.0"
    if not interpreting():
        return ("needs CUDA, or Triton's CPU interpreter: TRITON_INTERPRET=1 set before triton is imported "
                "(the fastvit CLI sets it on a CPU)")
    return None


def measure_attention(img_size=224, *, patch_size=16, num_heads: int = 12, head_dim: int = 64,
                      backend: str = "eager", mode: str = "inference", batch: int = 1, dtype=torch.float32,
                      device="cpu", peak_breakdown: bool = False, num_prefix_tokens: int = 1) -> dict:
    """Peak memory of one attention call (q, k, v of shape (batch, heads, tokens, head_dim), tokens
    = patches + ``num_prefix_tokens``: the model's class, distillation and register tokens, by
    default one CLS) on ``backend``: ``inference`` under no_grad, ``training`` forward + backward
    with q, k, v requiring grad. Returns a row dict (see :func:`memory_table`)."""
    _check_choice(backend, MEMORY_BACKENDS, "backend")
    _check_choice(mode, MODES, "mode")
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be a non-negative int, got {num_prefix_tokens!r}")
    device = torch.device(device)
    sc = attention_scores(img_size, patch_size)
    N = sc["patches"] + num_prefix_tokens
    h, w = _pair(img_size)
    row = dict(img_size=h if h == w else [h, w], tokens=N, backend=backend, mode=mode, scope="attention",
               batch=batch, heads=num_heads, head_dim=head_dim, depth=1, dtype=str(dtype).replace("torch.", ""),
               device=str(device),
               model_bytes=attention_model_bytes(N, num_heads, head_dim, backend=backend, mode=mode, batch=batch,
                                                 dtype=dtype),
               peak_bytes=None, available=True, reason=None, seconds=None, method=None)
    reason = triton_unavailable(device) if backend == "triton" else None
    if reason:
        row.update(available=False, reason=reason)
        return row
    from .. import ops

    training = mode == "training"
    q, k, v = (torch.randn(batch, num_heads, N, head_dim, device=device, dtype=dtype, requires_grad=training)
               for _ in range(3))
    grad = torch.randn(batch, num_heads, N, head_dim, device=device, dtype=dtype) if training else None

    def run():
        if training:
            out = ops.attention(q, k, v, backend=backend)
            out.backward(grad)
            return out
        with torch.no_grad():
            return ops.attention(q, k, v, backend=backend)

    _warm_up(run, device, backend)
    for t in (q, k, v):
        t.grad = None
    m = measure_peak(run, device=device, baseline=(q, k, v, grad), tracker=_breakdown_tracker(peak_breakdown, device, None, (q, k, v)))
    row.update(peak_bytes=m.peak_bytes, seconds=round(m.seconds, 4), method=m.method, baseline_bytes=m.baseline_bytes)
    if m.breakdown is not None:
        row["breakdown"] = m.breakdown
    return row


def measure_model(model_or_name=DEFAULT_MODEL, img_size=None, *, backend: str = "eager",
                  mode: str = "inference", batch: int = 1, depth: int | None = None, dtype=torch.float32,
                  device="cpu", peak_breakdown: bool = False, **overrides) -> dict:
    """Peak memory of a whole FastViT: ``inference`` = forward under no_grad, ``training`` =
    forward + backward of the summed logits (parameter gradients included). A name or config is
    built with ``depth`` (and other ``overrides``) applied, so a few blocks stand for the model on
    a small machine; a built ``FastViT`` is measured as it is (``depth`` must then be None).
    ``peak_breakdown``: also what was alive at the peak, by module and op (row ``breakdown``, see
    :mod:`fastvit.profiling.breakdown`). Returns a row dict (see :func:`memory_table`)."""
    from ..vit import FastViT
    from .flops import vit_shape

    _check_choice(backend, MEMORY_BACKENDS, "backend")
    _check_choice(mode, MODES, "mode")
    device = torch.device(device)
    if depth is not None:
        overrides["depth"] = depth
    shape = vit_shape(model_or_name, img_size, **overrides)
    h, w = shape.img_size
    unmodelled = not_modelled(shape, mode)
    row = dict(img_size=h if h == w else [h, w], tokens=shape.tokens, backend=backend, mode=mode, scope="model",
               batch=batch, heads=shape.num_heads, head_dim=shape.head_dim, depth=shape.depth,
               dtype=str(dtype).replace("torch.", ""), device=str(device),
               model_bytes=None if unmodelled else model_memory_bytes(
                   model_or_name, img_size, backend=backend, mode=mode, batch=batch, dtype=dtype, **overrides)["bytes"],
               peak_bytes=None, available=True, reason=None, seconds=None, method=None)
    if unmodelled:
        row["model_note"] = f"not modelled: {unmodelled}"
    reason = triton_unavailable(device) if backend == "triton" else None
    if reason:
        row.update(available=False, reason=reason)
        return row
    if isinstance(model_or_name, FastViT):
        model = model_or_name
        prev_backend = model.backend
    else:
        kwargs = _model_kwargs(model_or_name, overrides)
        model = FastViT(**kwargs).to(device=device, dtype=dtype)
        prev_backend = None
    model.set_backend(backend)
    was_training = model.training
    model.train(mode == "training")
    x = torch.randn(batch, model.patch_embed.proj.in_channels, h, w, device=device, dtype=dtype)
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]
    for p in params:
        p.grad = None

    def run():
        if mode == "training":
            model(x).sum().backward()
            return None
        with torch.no_grad():
            return model(x)

    try:
        _warm_up(run, device, backend)
        for p in params:
            p.grad = None
        m = measure_peak(run, device=device, baseline=(model, x),
                         tracker=_breakdown_tracker(peak_breakdown, device, model, params))
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        model.train(was_training)
        if prev_backend is not None:
            model.set_backend(prev_backend)
    row.update(peak_bytes=m.peak_bytes, seconds=round(m.seconds, 4), method=m.method, baseline_bytes=m.baseline_bytes)
    if m.breakdown is not None:
        row["breakdown"] = m.breakdown
    return row


def not_modelled(shape, mode: str) -> str | None:
    """The parts of a model (a ``ViTShape``) that the analytic model of a whole FastViT
    (:func:`fastvit.profiling.memory_model.model_memory_bytes`) does not represent in ``mode``,
    as a phrase, or None when it represents them all. Rows of such models get no ``model_bytes``
    (their ``model_note`` says "not modelled: ...") rather than a number that is wrong. Measured
    against the model on small configurations: rotary embeddings, SwiGLU, the norm inside the MLP,
    Eva blocks and qk_norm change the peak in both modes; layer scale, the MAP head and norm_pre
    change what training keeps for the backward. Update this list as memory_model.py grows."""
    b = shape.blocks[0]
    parts = []
    if b.kind == "eva":
        eva = [name for name, on in (("rope", b.rope), ("SwiGLU", b.mlp.gated), ("scale_mlp norm", b.mlp.norm))
               if on]
        parts.append("Eva blocks" + (f" ({', '.join(eva)})" if eva else ""))
    if b.qk_norm:
        parts.append("qk_norm")
    if mode == "training":
        parts += [name for name, on in (("layer scale", shape.layer_scale),
                                        ("MAP pooling", shape.attn_pool is not None), ("norm_pre", shape.norm_pre))
                  if on]
    return ", ".join(parts) or None


def _breakdown_tracker(wanted: bool, device, root=None, params=()):
    if not wanted:
        return None
    from .breakdown import BreakdownTracker
    return BreakdownTracker(root, params, device=device)


def _warm_up(run, device: torch.device, backend: str) -> None:
    """One unmeasured call on CUDA, so autotuning, compilation and library workspaces (allocated
    once per process) stay out of the peak. The CPU paths allocate nothing once-only."""
    if device.type == "cuda":
        run()
        torch.cuda.synchronize(device)


def _model_kwargs(model_or_name, overrides: dict) -> dict:
    from ..vit import VariantConfig, model_config

    if isinstance(model_or_name, str):
        kwargs = model_config(model_or_name).kwargs()
    elif isinstance(model_or_name, VariantConfig):
        kwargs = model_or_name.kwargs()
    elif isinstance(model_or_name, dict):
        kwargs = dict(model_or_name)
    else:
        raise TypeError(f"model_or_name must be a FastViT, a name, a VariantConfig or a dict, got "
                        f"{type(model_or_name).__name__}")
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------
# Tables and slopes
# ------------------------------------------------------------------------------------------------
def fit_slope(xs, ys) -> float:
    """Least-squares slope of log(ys) against log(xs)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    n = len(lx)
    if n < 2:
        raise ValueError("a slope needs at least two points")
    mx, my = sum(lx) / n, sum(ly) / n
    den = sum((a - mx) ** 2 for a in lx)
    if den == 0:
        raise ValueError("a slope needs at least two different token counts")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den


def fit_slopes(rows: list[dict]) -> list[dict]:
    """Log-log slope of measured peak bytes (and of ``model_bytes``) against tokens, per
    (scope, mode, backend) over the available rows with at least two token counts."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scope"], r["mode"], r["backend"]), []).append(r)
    out = []
    for (scope, mode, backend), rs in groups.items():
        ok = [r for r in rs if r.get("available", True) and r.get("peak_bytes")]
        entry = {"scope": scope, "mode": mode, "backend": backend, "points": len(ok), "slope": None,
                 "model_slope": None}
        if len({r["tokens"] for r in ok}) >= 2:
            entry["slope"] = fit_slope([r["tokens"] for r in ok], [r["peak_bytes"] for r in ok])
            if all(r.get("model_bytes") for r in ok):  # "not modelled" rows have none
                entry["model_slope"] = fit_slope([r["tokens"] for r in ok], [r["model_bytes"] for r in ok])
        out.append(entry)
    return out


@dataclass
class MemoryReport:
    rows: list = field(default_factory=list)
    slopes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def memory_table(model_or_name=DEFAULT_MODEL, resolutions=DEFAULT_RESOLUTIONS, *,
                 backends=MEMORY_BACKENDS, modes=MODES, scopes=SCOPES, batch: int = 1, depth: int | None = None,
                 dtype=torch.float32, device=None, **overrides) -> MemoryReport:
    """Measure every (scope, mode, backend, resolution) combination. Attention-scope rows use the
    model's heads and head_dim for one layer; model-scope rows build the model with ``depth``
    blocks (default: all). A backend that cannot run here (see :func:`triton_unavailable`) gives
    rows with ``available=False`` and the ``reason``; a case that raises raises. ``device``
    defaults to CUDA when available, else CPU."""
    from .flops import vit_shape

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    for b in backends:
        _check_choice(b, MEMORY_BACKENDS, "backend")
    for m in modes:
        _check_choice(m, MODES, "mode")
    for s in scopes:
        _check_choice(s, SCOPES, "scope")
    rows = []
    for scope in scopes:
        for mode in modes:
            for backend in backends:
                for size in resolutions:
                    if scope == "attention":
                        shape = vit_shape(model_or_name, size, **overrides)
                        rows.append(measure_attention(size, patch_size=shape.patch_size, num_heads=shape.num_heads,
                                                      head_dim=shape.head_dim, backend=backend, mode=mode,
                                                      batch=batch, dtype=dtype, device=device,
                                                      num_prefix_tokens=shape.num_prefix_tokens))
                    else:
                        rows.append(measure_model(model_or_name, size, backend=backend, mode=mode, batch=batch,
                                                  depth=depth, dtype=dtype, device=device, **overrides))
    return MemoryReport(rows=rows, slopes=fit_slopes(rows))


def _mb(x) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def format_memory_table(report: MemoryReport | dict) -> str:
    """A plain-text table of a :class:`MemoryReport` (MiB), then the log-log slopes."""
    d = report.to_dict() if isinstance(report, MemoryReport) else report
    lines = [f"{'scope':<10}{'mode':<10}{'backend':<8}{'img':>6}{'tokens':>7}{'peak MiB':>12}{'model MiB':>12}"
             f"{'ratio':>7}{'sec':>8}"]
    for r in d["rows"]:
        size = r["img_size"] if isinstance(r["img_size"], int) else "x".join(map(str, r["img_size"]))
        if not r.get("available", True):
            why = f"failed: {r['error']}" if r.get("error") else f"not run: {r['reason']}"
            lines.append(f"{r['scope']:<10}{r['mode']:<10}{r['backend']:<8}{size:>6}{r['tokens']:>7}"
                         f"{'n/a':>12}{_mb(r['model_bytes']):>12}  {why}")
            continue
        if r.get("model_bytes") is None and r.get("model_note"):  # the analytic model does not cover it
            lines.append(f"{r['scope']:<10}{r['mode']:<10}{r['backend']:<8}{size:>6}{r['tokens']:>7}"
                         f"{_mb(r['peak_bytes']):>12}{'-':>12}{'-':>7}{r['seconds']:>8.2f}  {r['model_note']}")
            continue
        ratio = r["peak_bytes"] / r["model_bytes"] if r["model_bytes"] else float("nan")
        lines.append(f"{r['scope']:<10}{r['mode']:<10}{r['backend']:<8}{size:>6}{r['tokens']:>7}"
                     f"{_mb(r['peak_bytes']):>12}{_mb(r['model_bytes']):>12}{ratio:>7.2f}{r['seconds']:>8.2f}")
    if d.get("slopes"):
        lines.append("log-log slope of peak bytes vs tokens (measured / model):")
        for s in d["slopes"]:
            meas = "-" if s["slope"] is None else f"{s['slope']:.2f}"
            mod = "-" if s["model_slope"] is None else f"{s['model_slope']:.2f}"
            lines.append(f"  {s['scope']:<10}{s['mode']:<10}{s['backend']:<8}{meas:>6} / {mod}")
    return "\n".join(lines)
