"""One ahead-of-time compile spec format for every kernel, and the one builder of it.

Each kernel module's ``aot_specs()`` returns ``AotSpec``s built by ``aot_spec``;
``fastvit.profiling.compile_report`` compiles them for a GPU architecture without a GPU, and the
compile tests check the result (no spills, shared memory within limits, tensor cores).

A spec types every argument of its kernel as a launch would: pointers by element type, int and
float scalars, compile-time constants by value. Two facts Triton specialises on at launch are
spelled out, or the compile would differ from what runs: int arguments equal to 1 (unit strides)
become constants, and pointers (torch allocations are 16-byte aligned) and ints divisible by 16
are compiled with the ``tt.divisibility = 16`` hint (``aligned``).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Iterable, Mapping

import torch

TL_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def tl_type(dtype) -> str:
    """Triton's name of a torch dtype (``"fp16"``); a name is returned as it is."""
    if isinstance(dtype, str):
        return dtype
    if dtype not in TL_TYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in TL_TYPES]} or a Triton type name, got {dtype!r}")
    return TL_TYPES[dtype]


def dtype_tag(dtype) -> str:
    """``float16`` for torch.float16: how spec names spell a dtype."""
    return str(dtype).replace("torch.", "")


def python_function(fn):
    """The plain Python function under a JITFunction, InterpretedFunction, Autotuner or Heuristics."""
    obj = fn
    for _ in range(16):
        if inspect.isfunction(obj):
            return obj
        obj = getattr(obj, "fn", None)
    raise TypeError(f"fn must be a @triton.jit function (possibly autotuned), got {fn!r}")


def _constexpr_params(pyfn) -> dict:
    """Each ``tl.constexpr`` parameter -> its default (``inspect.Parameter.empty`` if none)."""
    # Kernel modules use postponed annotations, so an annotation may be the string "tl.constexpr".
    return {name: p.default for name, p in inspect.signature(pyfn).parameters.items()
            if p.annotation is not inspect.Parameter.empty and "constexpr" in str(p.annotation)}


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One kernel configuration to compile ahead of time.

    ``signature`` types every argument of ``fn`` (``"*fp16"``, ``"i32"``, ``"fp32"``,
    ``"constexpr"``); ``constexprs`` holds the value of each ``"constexpr"`` one; ``aligned`` names
    the arguments compiled as divisible by 16; ``mma`` says whether tensor-core instructions are
    expected (None: not a claim of the spec); ``options`` are further compile options of the
    target's backend, as a launch passes them (AMD's ``waves_per_eu``, ``matrix_instr_nonkdim``;
    a backend that does not know an option ignores it, as at launch).
    """

    name: str
    fn: Any
    signature: Mapping[str, str]
    constexprs: Mapping[str, Any]
    num_warps: int
    num_stages: int
    aligned: tuple = ()
    mma: bool | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        for key in ("num_warps", "num_stages"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"spec {self.name!r}: {key} must be a positive int, got {value!r}")
        params = list(inspect.signature(python_function(self.fn)).parameters)
        unknown = [k for k in (*self.signature, *self.constexprs) if k not in params]
        if unknown:
            raise ValueError(f"spec {self.name!r}: {unknown} are not arguments of the kernel {tuple(params)}")
        untyped = [p for p in params if p not in self.signature]
        if untyped:
            raise ValueError(f"spec {self.name!r}: the signature has no type for {untyped}")
        valueless = [k for k, v in self.signature.items() if v == "constexpr" and k not in self.constexprs]
        if valueless:
            raise ValueError(f"spec {self.name!r}: constexpr arguments {valueless} have no value in constexprs")
        stray = [k for k in self.aligned if k not in self.signature or self.signature[k] == "constexpr"]
        if stray:
            raise ValueError(f"spec {self.name!r}: aligned names {stray} are not runtime arguments")
        object.__setattr__(self, "signature", dict(self.signature))
        object.__setattr__(self, "constexprs", dict(self.constexprs))
        object.__setattr__(self, "aligned", tuple(self.aligned))
        clash = [k for k in self.options if k in params or k in ("num_warps", "num_stages")]
        if clash:
            raise ValueError(f"spec {self.name!r}: options {clash} are kernel arguments or launch fields")
        object.__setattr__(self, "options", dict(self.options))

    def __getitem__(self, key: str):
        """Read access by field name (``spec["name"]``), as callers of the former dict specs use."""
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


def aot_spec(name: str, fn, *, pointers: Mapping[str, Any], constexprs: Mapping[str, Any] = (),
             floats: Iterable[str] = (), unit_strides: Iterable[str] = (), aligned: Iterable[str] = (),
             num_warps: int, num_stages: int = 1, mma: bool | None = None,
             options: Mapping[str, Any] = ()) -> AotSpec:
    """The spec of ``fn`` compiled with these arguments.

    ``pointers``: tensor argument -> element dtype (torch dtype or Triton name), or None for an
    optional tensor left out (then a constexpr None, as at launch). ``constexprs``: values of the
    ``tl.constexpr`` arguments. ``floats``: fp32 scalars. ``unit_strides``: int arguments equal
    to 1 at launch (Triton makes them constants). ``aligned``: int arguments divisible by 16 at
    launch. Every other argument is an i32 scalar. A constexpr with a default in the kernel's
    signature takes that default unless ``constexprs`` gives it. ``options``: compile options
    beyond warps and stages (see ``AotSpec``).
    """
    pyfn = python_function(fn)
    params = list(inspect.signature(pyfn).parameters)
    constexprs = dict(constexprs)
    unit_strides, floats = set(unit_strides), set(floats)
    unknown = [k for k in (*pointers, *floats, *unit_strides) if k not in params]
    if unknown:
        raise ValueError(f"spec {name!r}: {unknown} are not arguments of {pyfn.__name__}{tuple(params)}")
    declared = _constexpr_params(pyfn)
    for p, default in declared.items():
        if p not in constexprs and default is not inspect.Parameter.empty:
            constexprs[p] = default
    missing = [p for p in declared if p not in constexprs]
    if missing:
        raise ValueError(f"spec {name!r}: no value for the constexpr arguments {missing} of {pyfn.__name__}")
    signature = {}
    for arg in params:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in pointers:
            if pointers[arg] is None:
                signature[arg] = "constexpr"
                constexprs[arg] = None
            else:
                signature[arg] = "*" + tl_type(pointers[arg])
        elif arg in unit_strides:
            signature[arg] = "constexpr"
            constexprs[arg] = 1
        else:
            signature[arg] = "fp32" if arg in floats else "i32"
    runtime_pointers = [k for k, v in signature.items() if v.startswith("*")]
    return AotSpec(name=name, fn=fn, signature=signature, constexprs=constexprs, num_warps=num_warps,
                   num_stages=num_stages, aligned=tuple(runtime_pointers) + tuple(a for a in aligned
                                                                                  if a not in unit_strides),
                   mma=mma, options=dict(options))
