"""``fastvit profile``: one run that measures what the kernels buy, and writes it down.

The job is split by stage, one module each:

* :mod:`~fastvit.profiling.plan` -- :func:`make_plan` decides what runs on the device at hand
  (fewer, smaller cases on a CPU, by the policy of :mod:`~fastvit.profiling.defaults`; the plan
  says which and why);
* :mod:`~fastvit.profiling.run` -- :func:`run_profile` runs it and returns a JSON-ready dict;
* :mod:`~fastvit.profiling.render` and :mod:`~fastvit.profiling.plots` -- ``report.md`` and the
  PNGs; :func:`write_report` (here) writes them with ``results.json``.

Every figure is labelled: **measured** (timed or tracked on this machine) or **model** (analytic:
the FLOP count, the memory model, the roofline). Roofline predictions for data-centre GPUs sit
in their own table, never beside measurements.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .defaults import CPU_COMPILE_OPS, CPU_TRITON_MEMORY_MAX, DEFAULT_RESOLUTIONS
from .failures import CaseError
from .plan import Plan, make_plan, steps
from .plots import make_plots
from .progress import Progress
from .render import PLOT_FILES, render_markdown
from .run import ROOFLINE_GPUS, run_profile

__all__ = ["Plan", "Progress", "CaseError", "make_plan", "steps", "run_profile", "render_markdown", "make_plots",
           "write_report", "DEFAULT_RESOLUTIONS", "ROOFLINE_GPUS", "PLOT_FILES", "CPU_TRITON_MEMORY_MAX",
           "CPU_COMPILE_OPS"]


def write_report(results: dict, out_dir, plots: bool = True) -> dict:
    """Write ``report.md``, ``results.json`` and (with matplotlib) the PNGs into ``out_dir``.
    Returns ``{"report": path, "results": path, "plots": [paths], "plot_note": str | None}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        files, note = make_plots(results, out_dir)
    else:
        files, note = [], "plots not requested (--no-plots)"
    results["plots"] = {"files": files, "note": note}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    (out_dir / "report.md").write_text(render_markdown(results))
    return {"report": str(out_dir / "report.md"), "results": str(out_dir / "results.json"),
            "plots": [str(out_dir / f) for f in files], "plot_note": note}


def _json_default(o):
    if isinstance(o, (torch.dtype, torch.device)):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
