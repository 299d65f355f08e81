"""What is alive at the peak (``fastvit memory --peak-breakdown``): the live tensors at the measured
peak, grouped by what made them, largest first.

:class:`BreakdownTracker` is the CPU tracker of :mod:`fastvit.profiling.tracker` (same counting,
same peak) that also remembers, for each storage it counts, the operator that returned it, its
shape, dtype and bytes, and *where* it was made:

* in a forward, the module path (``blocks.3.attn``), from module forward pre/post hooks that keep
  a stack of the running modules (names from the root module's ``named_modules``);
* in a backward, ``backward of <path>``: the autograd node that is running
  (``torch._C._current_autograd_node``) carries in its metadata the module whose forward made
  it, tagged by those same hooks (a post hook tags the new nodes behind a module's outputs, a pre
  hook those behind its inputs with the calling module, so a parent's own ops are not credited to
  the next child).

At each new peak the live set is copied; at the end each storage of that copy is classified:

* ``parameter gradient``: it is the storage of a parameter's ``.grad`` when the call returns (at
  the attention scope, of q's, k's or v's: the leaves there);
* ``saved activation``: autograd saved it for the backward (a ``saved_tensors_hooks`` pack hook
  records every saved tensor's storage) and it was still alive at the peak;
* ``transient``: neither: outputs in flight, gradients of activations, workspace. In inference
  every tensor is transient.

The groups sum to the measured peak: they are the peak's own live set.
"""
from __future__ import annotations

import weakref

import torch

from .tracker import LiveTensorTracker

__all__ = ["BreakdownTracker", "CATEGORIES", "format_breakdown"]

CATEGORIES = ("parameter gradient", "saved activation", "transient")
_TAG = "fastvit_module"


class BreakdownTracker(LiveTensorTracker):
    """A :class:`LiveTensorTracker` that also records the live set at the peak (see the module
    docstring). ``root`` names the modules (their paths in it); ``params`` are the parameters
    whose gradients are classified as such."""

    def __init__(self, root: torch.nn.Module | None = None, params=(), **kwargs):
        super().__init__(**kwargs)
        self._names = {id(m): n or type(m).__name__ for n, m in root.named_modules()} if root is not None else {}
        self._params = list(params)
        self._stack: list[str] = []
        self._info: dict[int, dict] = {}      # storage key -> what made it
        self._saved: set[int] = set()         # storage keys autograd saved for the backward
        self._peak_live: dict[int, dict] = {}
        self._handles = []
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)

    # -- where a tensor is made ---------------------------------------------------------------
    def _where(self) -> str:
        if self._stack:
            return self._stack[-1]
        node = torch._C._current_autograd_node()
        if node is not None:
            path = node.metadata.get(_TAG)
            return f"backward of {path}" if path else f"backward ({node.name()})"
        return "(outside any module)"

    def _tag(self, tensors, path: str) -> None:
        todo = [t.grad_fn for t in tensors if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or _TAG in node.metadata or type(node).__name__ == "AccumulateGrad":
                continue
            node.metadata[_TAG] = path
            todo.extend(n for n, _ in node.next_functions)

    def _pre(self, module, args):
        if self._stack:  # what the caller made so far is the caller's, not this module's
            self._tag(torch.utils._pytree.tree_leaves(args), self._stack[-1])
        self._stack.append(self._names.get(id(module), type(module).__name__))

    def _post(self, module, args, out):
        path = self._stack.pop() if self._stack else self._names.get(id(module), type(module).__name__)
        self._tag(torch.utils._pytree.tree_leaves(out), path)

    def _pack(self, t):
        try:
            self._saved.add(id(t.untyped_storage()))
        except (RuntimeError, NotImplementedError):
            pass
        return t

    # -- bookkeeping on top of the tracker's ------------------------------------------------------
    def _see(self, t, input_sizes, op):
        try:
            key = id(t.untyped_storage())
        except (RuntimeError, NotImplementedError):
            return super()._see(t, input_sizes, op)
        new = key not in self._live
        if new:  # before the tracker counts it: a new peak may be reached by this very storage
            self._info[key] = {"op": op.removesuffix(".default"), "where": self._where(), "shape": list(t.shape),
                               "dtype": str(t.dtype).replace("torch.", ""),
                               "ref": weakref.ref(t.untyped_storage())}
        super()._see(t, input_sizes, op)
        if new and key not in self._live:
            self._info.pop(key, None)

    def _grow(self, delta, op):
        super()._grow(delta, op)
        if delta > 0 and self.current_bytes == self.peak_bytes:
            self._peak_live = {k: dict(self._info[k], bytes=b) for k, b in self._live.items()}
            for k in self._peak_live:
                self._peak_live[k]["saved"] = k in self._saved

    def _free(self, key):
        super()._free(key)
        self._info.pop(key, None)
        self._saved.discard(key)  # the id may be reused by a storage that is not saved

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        self._saved_hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._saved_hooks.__exit__(*exc)
            for h in self._handles:
                h.remove()
            self._handles = []

    # -- the result ------------------------------------------------------------------------------
    def breakdown(self, top: int | None = None) -> dict:
        """The peak's live tensors grouped by (category, where, op, shape, dtype), largest first;
        the totals per category; ``total_bytes`` equals ``peak_bytes``. Call after the run."""
        grads = set()
        for p in self._params:
            if p.grad is not None:
                grads.add(id(p.grad.untyped_storage()))
        groups: dict[tuple, dict] = {}
        for key, info in self._peak_live.items():
            st = info["ref"]()
            if st is not None and id(st) in grads:
                cat = "parameter gradient"
            elif info["saved"]:
                cat = "saved activation"
            else:
                cat = "transient"
            k = (cat, info["where"], info["op"], tuple(info["shape"]), info["dtype"])
            g = groups.setdefault(k, {"category": cat, "where": info["where"], "op": info["op"],
                                      "shape": info["shape"], "dtype": info["dtype"], "count": 0, "bytes": 0})
            g["count"] += 1
            g["bytes"] += info["bytes"]
        rows = sorted(groups.values(), key=lambda g: -g["bytes"])
        by_cat = {c: sum(g["bytes"] for g in rows if g["category"] == c) for c in CATEGORIES}
        return {"peak_bytes": self.peak_bytes, "total_bytes": sum(by_cat.values()), "by_category": by_cat,
                "groups": rows[:top] if top else rows, "groups_left_out": max(0, len(rows) - top) if top else 0,
                "classified": {"parameter gradient": "the storage of a leaf's .grad (parameters; q, k, v for one "
                                                     "attention call) when the call returned",
                               "saved activation": "saved by autograd for the backward (a saved_tensors_hooks pack "
                                                   "hook saw it), alive at the peak",
                               "transient": "neither: outputs in flight, activation gradients, workspace"},
                "source": "measured"}


def format_breakdown(b: dict, top: int = 10) -> str:
    """A plain-text table of :meth:`BreakdownTracker.breakdown` (MiB), largest groups first."""
    mib = 2 ** 20
    lines = [f"  alive at the peak ({b['total_bytes'] / mib:,.2f} MiB = the measured peak): " +
             ", ".join(f"{c} {v / mib:,.2f}" for c, v in b["by_category"].items())]
    lines.append(f"  {'MiB':>9}  {'n':>3}  {'category':<19}{'where':<30}{'op':<28}shape, dtype")
    for g in b["groups"][:top]:
        lines.append(f"  {g['bytes'] / mib:>9,.3f}  {g['count']:>3}  {g['category']:<19}{g['where'][:29]:<30}"
                     f"{g['op'][:27]:<28}{tuple(g['shape'])}, {g['dtype']}")
    if len(b["groups"]) > top:
        rest = sum(g["bytes"] for g in b["groups"][top:])
        lines.append(f"  {rest / mib:>9,.3f}  ... {len(b['groups']) - top} more groups (all in --json)")
    return "\n".join(lines)
