"""Peak memory of attention alone and of a whole FastViT, measured and modelled.

Measured:
  * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated before the call (parameters, inputs): the peak *above baseline*.
  * CPU: :class:`LiveTensorTracker`, a ``TorchDispatchMode`` that sees every tensor an operator
    returns, records each new storage (one not shared with the operator's inputs; for an input's
    storage, what it grew by in place) with its size, and drops it when the storage is freed (a
    weakref finalizer on the storage object, whose Python object PyTorch keeps for as long as
    the storage lives, so its id is a stable key while it is alive). Tensors
    that existed before (parameters, inputs) are never counted: the peak is above baseline, as
    on CUDA. The insides of ``torch.library.custom_op`` operators (the Triton launchers' own
    ``torch.empty`` calls, temporaries included) are run under the tracker too, so they count.
    What the tracker cannot see are buffers an ATen kernel allocates and frees inside itself in
    C++ (e.g. the per-thread blocks of CPU flash attention): small, but a GPU allocator counts them.
  * ``backend="triton"`` on CPU runs in Triton's interpreter (``TRITON_INTERPRET=1``), measured the
    same way: the tracker sees the tensors the launchers allocate, not the interpreter's numpy
    scratch (which a GPU would keep in registers and shared memory). The interpreter leaves its
    arguments in reference cycles after a launch; the tracker runs the garbage collector after
    each custom op so tensors die when a GPU run would free them. It is slow: one ViT-B attention
    call (12 heads, batch 1) takes ~4 s at 224 px, ~25 s at 384 px and ~15 min at 1024 px
    (inference, 2 CPU cores); training about three times that.
  * On CUDA every measurement is preceded by one unmeasured call (autotuning, cuBLAS workspaces).

Modelled (``model_bytes``, same "above baseline" scope), with e the dtype's size in bytes,
S = B*H*N^2*e one attention matrix, O = B*N*D*e one (B, N, H*Dh) activation and L = B*H*N*4 one
fp32 row statistic:
  attention, inference:  eager max(2S, S + O) (scores and scaled scores, then probabilities
                         and output);  sdpa / triton  O + L (output, logsumexp)
  attention, training:   eager max(3S + 2O, S + 4O, 5O) (probabilities kept for backward, their
                         gradient and the softmax gradient at once, with the output and dv; then
                         the scores' gradient with dq, dk; then a layout copy of dk);
                         sdpa 4O + max(L, O) (out, lse, dq, dk, dv, then a layout copy of a
                         gradient);  triton 4O + 2L (plus the backward's delta)
  model: see :func:`model_memory_bytes` (activations autograd saves per block, parameter
                         gradients, and the largest transient of a block).
"""
from __future__ import annotations

import gc
import math
import os
import sys
import time
import weakref
from dataclasses import asdict, dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["LiveTensorTracker", "PeakMeasurement", "measure_peak", "attention_scores", "attention_model_bytes",
           "model_memory_bytes", "measure_attention", "measure_model", "memory_table", "MemoryReport",
           "fit_slope", "fit_slopes", "triton_status", "format_memory_table", "DEFAULT_RESOLUTIONS",
           "MODES", "SCOPES", "MEMORY_BACKENDS"]

DEFAULT_RESOLUTIONS = (224, 384, 512, 768, 1024)
MODES = ("inference", "training")
SCOPES = ("attention", "model")
MEMORY_BACKENDS = ("eager", "sdpa", "triton")
_ATEN_NAMESPACES = ("aten", "prim", "prims")


def _interpreting() -> bool:
    from ..backend import interpreting
    return interpreting()


# ------------------------------------------------------------------------------------------------
# The CPU tracker
# ------------------------------------------------------------------------------------------------
class LiveTensorTracker(TorchDispatchMode):
    """Bytes of live tensor storages created while the mode is active, and their peak.

    A storage counts from the operator that first returns it (``aten.empty`` included) until it
    is freed; an output sharing a storage with one of the operator's inputs (a view, an in-place
    or ``out=`` result, ``set_``) is not new. A storage that grows in place (``resize_``) is
    re-measured. Only storages on ``device`` (default: any) are counted. With ``trace=True``
    every allocation and free is logged in ``events`` as ``(op, +bytes | -bytes, current)``.
    """

    def __init__(self, device=None, trace: bool = False, collect_cycles: bool | None = None):
        super().__init__()
        self.device = None if device is None else torch.device(device)
        self.trace = trace
        # Triton's interpreter leaves its argument tensors in reference cycles after a launch, alive
        # until the garbage collector runs; a GPU launch does not. Collecting after each custom op
        # gives the lifetimes a GPU run would have.
        self.collect_cycles = _interpreting() if collect_cycles is None else collect_cycles
        self.events: list[tuple[str, int, int]] = []
        self.current_bytes = 0
        self.peak_bytes = 0
        self.num_allocations = 0
        self._live: dict[int, int] = {}  # id(storage object) -> bytes; the object lives as long as the storage
        self._base: dict[int, int] = {}  # bytes a pre-existing storage had before it grew in place
        self._finalizers: list[weakref.finalize] = []

    # -- bookkeeping -------------------------------------------------------------------------
    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes

    def _free(self, key: int) -> None:
        nbytes = self._live.pop(key, None)
        self._base.pop(key, None)
        if nbytes is not None:
            self.current_bytes -= nbytes
            if self.trace:
                self.events.append(("free", -nbytes, self.current_bytes))

    def _counted(self, t: torch.Tensor) -> bool:
        if self.device is None:
            return t.device.type != "meta"
        return t.device.type == self.device.type and (self.device.index is None or t.device == self.device)

    def _see(self, t: torch.Tensor, input_sizes: dict, op: str) -> None:
        if not self._counted(t):
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or other storage-less layouts
            return
        key, nbytes = id(st), st.nbytes()
        old = self._live.get(key)
        if old is not None:
            counted = nbytes - self._base.get(key, 0)
            if counted != old:  # resized in place
                self._live[key] = counted
                self._grow(counted - old, op)
            return
        # An input's storage (a view, an in-place or out= result) is not new; only what it grew
        # by in this op (resize_, out= into an empty tensor) is.
        base = input_sizes.get(key, 0)
        if nbytes <= base or nbytes == 0:
            return
        if base:
            self._base[key] = base
        self._live[key] = nbytes - base
        self.num_allocations += 1
        self._finalizers.append(weakref.finalize(st, self._free, key))
        self._grow(nbytes - base, op)

    def _grow(self, delta: int, op: str) -> None:
        self.current_bytes += delta
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
        if self.trace:
            self.events.append((op, delta, self.current_bytes))

    # -- the mode ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        input_sizes = {}  # id(storage) -> bytes before the op, for every storage among the inputs
        for a in tree_leaves((args, kwargs)):
            st = a
            if isinstance(a, torch.Tensor):
                try:
                    st = a.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
            if isinstance(st, torch.UntypedStorage):
                input_sizes[id(st)] = st.nbytes()
        impl = self._custom_op_impl(func, args, kwargs)
        if impl is not None:
            # Run the operator's Python body with the tracker on, so the tensors its launchers
            # allocate (outputs and temporaries) are seen; a dispatch mode is otherwise switched
            # off for everything below the operator it intercepts.
            with self:
                out = impl(*args, **kwargs)
            if self.collect_cycles:
                gc.collect()
        else:
            out = func(*args, **kwargs)
        name = str(func)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._see(t, input_sizes, name)
        return out

    @staticmethod
    def _custom_op_impl(func, args, kwargs):
        if getattr(func, "namespace", "aten") in _ATEN_NAMESPACES:
            return None
        try:
            from torch._library.custom_ops import _maybe_get_opdef
        except ImportError:  # pragma: no cover - older torch: the op is measured as a whole
            return None
        opdef = _maybe_get_opdef(func)
        if opdef is None:
            return None
        device_type = next((a.device.type for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)), None)
        backend_fns = getattr(opdef, "_backend_fns", {})
        return backend_fns.get(device_type) or getattr(opdef, "_init_fn", None)


@dataclass
class PeakMeasurement:
    """``peak_bytes`` above ``baseline_bytes`` (what was allocated before), ``end_bytes`` still
    held when the call returned (above baseline), wall ``seconds``, and how it was measured."""
    peak_bytes: int
    end_bytes: int
    baseline_bytes: int
    seconds: float
    method: str
    result: object = field(default=None, repr=False)


def measure_peak(fn, *args, device=None, baseline=(), keep_result: bool = False, **kwargs) -> PeakMeasurement:
    """Run ``fn(*args, **kwargs)`` and measure its peak memory above what existed before.

    ``device`` (default: that of the first tensor in ``baseline`` or ``args``, else CPU) picks the
    method: ``torch.cuda.max_memory_allocated`` on CUDA, :class:`LiveTensorTracker` elsewhere.
    ``baseline`` (tensors, modules) is only reported: its bytes in ``baseline_bytes``. The result
    of ``fn`` is alive until measurement ends (so its bytes count), then dropped unless
    ``keep_result``.
    """
    if device is None:
        first = next((t for t in tree_leaves((baseline, args, kwargs)) if isinstance(t, torch.Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    base = _bytes_of(baseline)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start_alloc = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) - start_alloc
        end = torch.cuda.memory_allocated(device) - start_alloc
        method = "torch.cuda.max_memory_allocated"
    else:
        tracker = LiveTensorTracker(device)
        gc.collect()
        if tracker.collect_cycles:
            gc.freeze()  # what exists now is not garbage: keeps the tracker's collections cheap
        t0 = time.perf_counter()
        try:
            with tracker:
                result = fn(*args, **kwargs)
        finally:
            if tracker.collect_cycles:
                gc.unfreeze()
        seconds = time.perf_counter() - t0
        peak, end = tracker.peak_bytes, tracker.current_bytes
        method = "LiveTensorTracker (TorchDispatchMode)"
    return PeakMeasurement(peak, end, base, seconds, method, result if keep_result else None)


def _bytes_of(objs) -> int:
    seen, total = set(), 0
    for o in tree_leaves(objs):
        tensors = list(o.parameters()) + list(o.buffers()) if isinstance(o, torch.nn.Module) else [o]
        for t in tensors:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if id(st) not in seen:
                    seen.add(id(st))
                    total += st.nbytes()
    return total


# ------------------------------------------------------------------------------------------------
# Analytic model
# ------------------------------------------------------------------------------------------------
def _pair(v) -> tuple[int, int]:
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in pair):
        raise ValueError(f"expected a positive int or a pair of positive ints, got {v!r}")
    return pair


def attention_scores(img_size, patch_size=16, heads: int = 1, layers: int = 1, batch: int = 1) -> dict:
    """How many attention scores one image makes: ``patches`` and ``tokens`` (patches + CLS),
    scores per head per layer with patches only (``patches**2``) and with the CLS token
    (``tokens**2``), and the totals over ``heads`` x ``layers`` x ``batch`` for both.

    E.g. 384 px, 16 px patches: 576 patches, 331,776 scores per head per layer, 3,981,312 with 12
    heads (with CLS: 577**2 = 332,929 per head); 1024 px: 4,096 patches, 16,777,216 per head.
    """
    h, w = _pair(img_size)
    ph, pw = _pair(patch_size)
    if h % ph or w % pw:
        raise ValueError(f"img_size {(h, w)} must be a multiple of the patch size {(ph, pw)}")
    for name, v in (("heads", heads), ("layers", layers), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    patches = (h // ph) * (w // pw)
    tokens = patches + 1
    mult = heads * layers * batch
    return {"patches": patches, "tokens": tokens,
            "scores_per_head": patches ** 2, "scores_per_head_with_cls": tokens ** 2,
            "scores": patches ** 2 * mult, "scores_with_cls": tokens ** 2 * mult,
            "heads": heads, "layers": layers, "batch": batch}


def _esize(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def attention_model_bytes(tokens: int, num_heads: int, head_dim: int, *, backend: str, mode: str, batch: int = 1,
                          dtype=torch.float32) -> int:
    """Modelled peak bytes of one attention call above its inputs q, k, v (and, in training, the
    incoming gradient): see the module docstring for the terms."""
    _check_choice(backend, MEMORY_BACKENDS, "backend")
    _check_choice(mode, MODES, "mode")
    e = _esize(dtype)
    S = batch * num_heads * tokens * tokens * e
    O = batch * num_heads * tokens * head_dim * e
    L = batch * num_heads * tokens * 4
    if backend == "eager":
        if mode == "inference":
            return max(2 * S, S + O)
        # softmax backward (P, dP, dS; out, dv), then dS with dq, dk (out, dv), then dk copied
        # into the leaf's layout by AccumulateGrad (PyTorch's bmm gives it transposed)
        return max(3 * S + 2 * O, S + 4 * O, 5 * O)
    if mode == "inference":
        return O + L
    if backend == "sdpa":
        # out, lse, dq, dk, dv; PyTorch returns the gradients in its own (B, N, H, D) layout and
        # AccumulateGrad copies each into the leaf's layout, one at a time (lse is gone by then)
        return 4 * O + max(L, O)
    return 4 * O + 2 * L


def model_memory_bytes(model_or_name, img_size=None, *, backend: str, mode: str, batch: int = 1,
                       dtype=torch.float32, **overrides) -> dict:
    """Modelled peak bytes of a whole FastViT forward (``inference``) or forward + backward
    (``training``), above parameters and the input image: ``{"bytes": peak, "terms": {...}}``.

    Built from which tensors are alive when, as ``FastViT.forward`` holds them. With O one
    (B, N, D) activation, S one attention matrix (B, H, N, N), L one fp32 (B, H, N) row statistic
    and r = mlp_ratio:

    inference (eager, sdpa): the larger of the attention phase, block input + norm1 output + qkv
      (5 O) plus the attention's own peak (eager 2 S: scores and scaled scores, or its output and
      the (B, N, H*D) copy, 2 O; fused O + L: output and logsumexp); and the MLP phase, block
      input, residual, norm2 output, fc1 and GELU outputs ((3 + 2r) O).
    inference (triton, the pending-residual form of ``FastViT._blocks_pending``): each block
      holds its input and the previous MLP branch (2 O carried from the second block on, 1 O in
      a one-block model), the add+norm pair (2 O), qkv, output and logsumexp: 8 O + L; or, in the
      MLP, the attention branch, the second add+norm pair, the fused fc1+GELU output and fc2's:
      (6 + r) O.
    training: autograd keeps per block (8 + 2r) O (block input, norm1 output, qkv, attention
      output, residual, norm2 output, fc1 and GELU outputs) plus S (eager: the probabilities) or
      L (fused: the logsumexp) and the LayerNorm statistics. The peak is the largest of: the last
      block's MLP backward (everything saved + the incoming gradient + the GELU-output gradient,
      (1 + r) O; triton's fused fc1+GELU backward holds both its gradients and dx at once,
      (2 + r) O; + head, fc2 (and fc1) weight gradients); its attention backward (one block's MLP
      part freed; eager adds the probabilities' and the softmax gradient 2 S, dv and the residual
      gradient; fused dq, dk, dv, their packed copy and the residual gradient 7 O); the end of the
      backward (every parameter gradient, 2 O).
    """
    from .flops import vit_shape

    _check_choice(backend, MEMORY_BACKENDS, "backend")
    _check_choice(mode, MODES, "mode")
    s = vit_shape(model_or_name, img_size, **overrides)
    e = _esize(dtype)
    B, N, D, H, Hd = batch, s.tokens, s.embed_dim, s.num_heads, s.mlp_hidden
    r = Hd / D
    O = B * N * D * e
    S = B * H * N * N * e
    L = B * H * N * 4
    stats = 2 * B * N * 4  # one LayerNorm's mean and rstd, fp32
    eager, triton = backend == "eager", backend == "triton"
    if mode == "inference":
        attn_peak = attention_model_bytes(N, H, s.head_dim, backend=backend, mode="inference", batch=B, dtype=dtype)
        if eager:  # the (B, H, N, Dh) output is copied to (B, N, H*D) while qkv is alive
            attn_peak = max(attn_peak, 2 * O)
        if triton:
            carry = 2 * O if s.depth >= 2 else O
            norm1 = 2 * O if s.depth >= 2 else O
            terms = {"attention_phase": int(carry + norm1 + 3 * O + attn_peak),
                     "mlp_phase": int(carry + 3 * O + r * O + O)}
        else:
            terms = {"attention_phase": int(5 * O + attn_peak),
                     "mlp_phase": int(3 * O + 2 * r * O)}
        return {"bytes": max(terms.values()), "terms": terms}
    per_block = 8 * O + 2 * r * O + (S if eager else L) + 2 * stats
    saved = s.depth * per_block
    params = lambda *shapes: sum(math.prod(x) for x in shapes) * e  # noqa: E731
    head_grads = params((s.num_classes, D), (s.num_classes,), (2 * D,)) if s.num_classes else params((2 * D,))
    fc2_grads = params((D, Hd), (D,))
    fc1_grads = params((Hd, D), (Hd,))
    rest_grads = fc1_grads + params((2 * D,), (D, D), (D,))  # fc1, norm2, proj
    mlp_part = 3 * O + 2 * r * O + stats  # residual, norm2 output, attention output/copy, fc1/GELU outputs
    attn_transient = (2 * S + 2 * O) if eager else 7 * O
    if triton:
        mlp_backward = saved + (2 + r) * O + head_grads + fc2_grads + fc1_grads
    else:
        mlp_backward = saved + (1 + r) * O + head_grads + fc2_grads
    terms = {
        "mlp_backward": int(mlp_backward),
        "attention_backward": int(saved - mlp_part + attn_transient + head_grads + fc2_grads + rest_grads),
        "end_of_backward": int(s.params * e + 2 * O),
    }
    return {"bytes": max(terms.values()), "terms": terms}


def _check_choice(v, choices, name):
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------
_TRITON_NOT_READY = (NotImplementedError, RuntimeError, ImportError)


def _prepare_triton(device: torch.device) -> str | None:
    """None when the Triton backend can be tried on ``device``, else the reason it cannot."""
    from ..backend import interpreting

    if device.type == "cuda":
        return None
    if not interpreting():
        if "triton" in sys.modules:
            return ("backend='triton' on CPU needs the Triton interpreter, and triton was imported without "
                    "TRITON_INTERPRET=1; set it before anything imports triton")
        os.environ["TRITON_INTERPRET"] = "1"  # nothing imported triton yet: choose the interpreter now
    return None


_TRITON_OK: set = set()


def triton_status(scope: str = "attention", device="cpu") -> tuple[bool, str | None]:
    """Whether ``backend="triton"`` works for ``scope`` ("attention": ``fastvit.ops.attention``,
    "model": a tiny FastViT) on ``device``, forward and backward, tried on tiny inputs; with the
    reason when it does not (e.g. the kernel has not landed: NotImplementedError)."""
    from .. import ops
    from ..vit import FastViT

    _check_choice(scope, SCOPES, "scope")
    device = torch.device(device)
    if (scope, str(device)) in _TRITON_OK:  # only successes are remembered: kernels may land later
        return True, None
    reason = _prepare_triton(device)
    if reason:
        return False, reason
    try:
        if scope == "attention":
            q, k, v = (torch.randn(1, 2, 5, 16, device=device, requires_grad=True) for _ in range(3))
            ops.attention(q, k, v, backend="triton").sum().backward()
        else:
            m = FastViT(img_size=8, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3,
                        backend="triton").to(device)
            m(torch.randn(1, 3, 8, 8, device=device)).sum().backward()
    except _TRITON_NOT_READY as exc:
        return False, f"{type(exc).__name__}: {exc}"
    _TRITON_OK.add((scope, str(device)))
    return True, None


def measure_attention(img_size=224, *, patch_size=16, num_heads: int = 12, head_dim: int = 64,
                      backend: str = "eager", mode: str = "inference", batch: int = 1, dtype=torch.float32,
                      device="cpu") -> dict:
    """Peak memory of one attention call (q, k, v of shape (batch, heads, tokens, head_dim), tokens
    = patches + CLS) on ``backend``: ``inference`` under no_grad, ``training`` forward + backward
    with q, k, v requiring grad. Returns a row dict (see :func:`memory_table`)."""
    _check_choice(backend, MEMORY_BACKENDS, "backend")
    _check_choice(mode, MODES, "mode")
    device = torch.device(device)
    sc = attention_scores(img_size, patch_size)
    N = sc["tokens"]
    h, w = _pair(img_size)
    row = dict(img_size=h if h == w else [h, w], tokens=N, backend=backend, mode=mode, scope="attention",
               batch=batch, heads=num_heads, head_dim=head_dim, depth=1, dtype=str(dtype).replace("torch.", ""),
               device=str(device),
               model_bytes=attention_model_bytes(N, num_heads, head_dim, backend=backend, mode=mode, batch=batch,
                                                 dtype=dtype),
               peak_bytes=None, available=True, reason=None, seconds=None, method=None)
    if backend == "triton":
        ok, reason = triton_status("attention", device)
        if not ok:
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
    m = measure_peak(run, device=device, baseline=(q, k, v, grad))
    row.update(peak_bytes=m.peak_bytes, seconds=round(m.seconds, 4), method=m.method, baseline_bytes=m.baseline_bytes)
    return row


def measure_model(model_or_name="vit_base_patch16_224", img_size=None, *, backend: str = "eager",
                  mode: str = "inference", batch: int = 1, depth: int | None = None, dtype=torch.float32,
                  device="cpu", **overrides) -> dict:
    """Peak memory of a whole FastViT: ``inference`` = forward under no_grad, ``training`` =
    forward + backward of the summed logits (parameter gradients included). A name or config is
    built with ``depth`` (and other ``overrides``) applied, so a few blocks stand for the model on
    a small machine; a built ``FastViT`` is measured as it is (``depth`` must then be None).
    Returns a row dict (see :func:`memory_table`)."""
    from ..vit import FastViT
    from .flops import vit_shape

    _check_choice(backend, MEMORY_BACKENDS, "backend")
    _check_choice(mode, MODES, "mode")
    device = torch.device(device)
    if depth is not None:
        overrides["depth"] = depth
    shape = vit_shape(model_or_name, img_size, **overrides)
    h, w = shape.img_size
    row = dict(img_size=h if h == w else [h, w], tokens=shape.tokens, backend=backend, mode=mode, scope="model",
               batch=batch, heads=shape.num_heads, head_dim=shape.head_dim, depth=shape.depth,
               dtype=str(dtype).replace("torch.", ""), device=str(device),
               model_bytes=model_memory_bytes(model_or_name, img_size, backend=backend, mode=mode, batch=batch,
                                              dtype=dtype, **overrides)["bytes"],
               peak_bytes=None, available=True, reason=None, seconds=None, method=None)
    if backend == "triton":
        ok, reason = triton_status("model", device)
        if not ok:
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
        m = measure_peak(run, device=device, baseline=(model, x))
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        model.train(was_training)
        if prev_backend is not None:
            model.set_backend(prev_backend)
    row.update(peak_bytes=m.peak_bytes, seconds=round(m.seconds, 4), method=m.method, baseline_bytes=m.baseline_bytes)
    return row


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
            entry["model_slope"] = fit_slope([r["tokens"] for r in ok], [r["model_bytes"] for r in ok])
        out.append(entry)
    return out


@dataclass
class MemoryReport:
    rows: list = field(default_factory=list)
    slopes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def memory_table(model_or_name="vit_base_patch16_224", resolutions=DEFAULT_RESOLUTIONS, *,
                 backends=MEMORY_BACKENDS, modes=MODES, scopes=SCOPES, batch: int = 1, depth: int | None = None,
                 dtype=torch.float32, device=None, **overrides) -> MemoryReport:
    """Measure every (scope, mode, backend, resolution) combination. Attention-scope rows use the
    model's heads and head_dim for one layer; model-scope rows build the model with ``depth``
    blocks (default: all). A backend that does not work yet gives rows with ``available=False``
    and the ``reason``. ``device`` defaults to CUDA when available, else CPU."""
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
                                                      batch=batch, dtype=dtype, device=device))
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
            lines.append(f"{r['scope']:<10}{r['mode']:<10}{r['backend']:<8}{size:>6}{r['tokens']:>7}"
                         f"{'n/a':>12}{_mb(r['model_bytes']):>12}  unavailable: {r['reason']}")
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
