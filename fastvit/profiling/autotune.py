"""Which configuration each autotuned Triton kernel picked in this process (measured on a GPU).

Triton's ``Autotuner`` keeps its choice per autotune key in ``.cache``. The kernels hold their
autotuners as module attributes or in a dict of them (``kernels/attention.py`` builds them on
first use); both are found by scanning the imported ``fastvit.kernels`` modules, so nothing here
needs to know a kernel's name. Under Triton's interpreter nothing is autotuned (a fixed small
configuration runs), so the list is empty on a CPU.
"""
from __future__ import annotations

import sys

__all__ = ["autotune_picks"]

_PREFIX = "fastvit.kernels"


def _autotuner_class():
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:  # pragma: no cover - triton ships with torch on Linux
        return None
    return Autotuner


def _kernel_name(tuner) -> str:
    fn = getattr(tuner, "base_fn", None) or getattr(tuner, "fn", None)
    while fn is not None and not hasattr(fn, "__name__") and hasattr(fn, "fn"):
        fn = fn.fn
    return getattr(fn, "__name__", type(tuner).__name__)


def _plain(v):
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def _config_dict(cfg) -> dict:
    kw = cfg.all_kwargs() if hasattr(cfg, "all_kwargs") else dict(getattr(cfg, "kwargs", {}))
    return {k: _plain(v) for k, v in kw.items() if v is not None}


def autotune_picks(modules=None) -> list[dict]:
    """``[{"kernel", "module", "key", "config"}]`` for every choice an autotuner of an imported
    ``fastvit.kernels`` module has made, sorted by kernel and key. ``modules`` (default: those in
    ``sys.modules``) is for tests."""
    Autotuner = _autotuner_class()
    if Autotuner is None:
        return []
    if modules is None:
        modules = {n: m for n, m in list(sys.modules.items()) if n == _PREFIX or n.startswith(_PREFIX + ".")}
    picks, seen = [], set()
    for mod_name, mod in sorted(modules.items()):
        for value in list(vars(mod).values()):
            tuners = [value] if isinstance(value, Autotuner) else (
                [v for v in value.values() if isinstance(v, Autotuner)] if isinstance(value, dict) else [])
            for tuner in tuners:
                if id(tuner) in seen:
                    continue
                seen.add(id(tuner))
                for key, cfg in getattr(tuner, "cache", {}).items():
                    picks.append({"kernel": _kernel_name(tuner), "module": mod_name,
                                  "key": [_plain(k) for k in (key if isinstance(key, tuple) else (key,))],
                                  "config": _config_dict(cfg)})
    picks.sort(key=lambda p: (p["kernel"], str(p["key"])))
    return picks
