"""Peak memory of a call above what existed before it (the measuring half of ``memory.py``).

  * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated before the call (parameters, inputs): the peak *above baseline*.
  * CPU: :class:`LiveTensorTracker`, a ``TorchDispatchMode`` that sees every tensor an operator
    returns, records each new storage (one not shared with the operator's inputs; for an input's
    storage, what it grew by in place) with its size, and drops it when the storage is freed (a
    weakref finalizer on the storage object, whose Python object PyTorch keeps for as long as
    the storage lives, so its id is a stable key while it is alive). Tensors that existed before
    (parameters, inputs) are never counted: the peak is above baseline, as on CUDA. The insides
    of ``torch.library.custom_op`` operators (the Triton launchers' own ``torch.empty`` calls,
    temporaries included) are run under the tracker too, so they count. What the tracker cannot
    see are buffers an ATen kernel allocates and frees inside itself in C++ (e.g. the per-thread
    blocks of CPU flash attention): small, but a GPU allocator counts them.
  * ``backend="triton"`` on CPU runs in Triton's interpreter (``TRITON_INTERPRET=1``), measured the
    same way: the tracker sees the tensors the launchers allocate, not the interpreter's numpy
    scratch (which a GPU would keep in registers and shared memory). The interpreter leaves its
    arguments in reference cycles after a launch; the tracker runs the garbage collector after
    each custom op so tensors die when a GPU run would free them.
"""
from __future__ import annotations

import gc
import time
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["LiveTensorTracker", "PeakMeasurement", "measure_peak"]

_ATEN_NAMESPACES = ("aten", "prim", "prims")


def _interpreting() -> bool:
    from ..backend import interpreting
    return interpreting()


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
    breakdown: dict | None = None  # what was alive at the peak, when a breakdown tracker measured it


def measure_peak(fn, *args, device=None, baseline=(), keep_result: bool = False, tracker=None,
                 **kwargs) -> PeakMeasurement:
    """Run ``fn(*args, **kwargs)`` and measure its peak memory above what existed before.

    ``device`` (default: that of the first tensor in ``baseline`` or ``args``, else CPU) picks the
    method: ``torch.cuda.max_memory_allocated`` on CUDA, :class:`LiveTensorTracker` elsewhere.
    ``baseline`` (tensors, modules) is only reported: its bytes in ``baseline_bytes``. The result
    of ``fn`` is alive until measurement ends (so its bytes count), then dropped unless
    ``keep_result``. ``tracker`` (a :class:`LiveTensorTracker`, e.g. a
    :class:`~fastvit.profiling.breakdown.BreakdownTracker`) measures instead, on any device (on
    CUDA too: then the peak is the tracker's tensor bytes, not the allocator's), and its
    ``breakdown()``, if it has one, is returned with the peak.
    """
    if device is None:
        first = next((t for t in tree_leaves((baseline, args, kwargs)) if isinstance(t, torch.Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    base = _bytes_of(baseline)
    if device.type == "cuda" and tracker is None:
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
        tracker = tracker if tracker is not None else LiveTensorTracker(device)
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
        method = f"{type(tracker).__name__} (TorchDispatchMode)"
    breakdown = tracker.breakdown() if hasattr(tracker, "breakdown") else None
    return PeakMeasurement(peak, end, base, seconds, method, result if keep_result else None, breakdown)


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
