"""``fastvit profile``: one run that measures what the kernels buy, and writes it down.

:func:`make_plan` decides what to run on the device at hand (fewer, smaller cases on a CPU, and
the plan says which and why); :func:`run_profile` runs it and returns a JSON-ready dict;
:func:`write_report` writes ``report.md``, ``results.json`` and the PNG plots.

Every figure is labelled: **measured** (timed or tracked on this machine) or **model** (analytic:
the FLOP count, the memory model, the roofline). Roofline predictions for data-centre GPUs sit
in their own table, never beside measurements.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import speed

__all__ = ["Plan", "Progress", "make_plan", "run_profile", "render_markdown", "make_plots", "write_report",
           "DEFAULT_RESOLUTIONS", "ROOFLINE_GPUS", "PLOT_FILES"]

DEFAULT_RESOLUTIONS = (224, 384, 512, 768, 1024)
ROOFLINE_GPUS = ("a100-sxm-80gb", "h100-sxm")
PLOT_FILES = {"memory": "memory_vs_resolution.png", "speedup": "speedup.png"}
# On a CPU the triton backend runs in Triton's interpreter: exact in memory, but tens of
# seconds per call at 384 px and minutes beyond, so its memory rows stop here.
CPU_TRITON_MEMORY_MAX = 384
CPU_COMPILE_OPS = ("attention", "layer_norm")
MIB = 2 ** 20


# ------------------------------------------------------------------------------------------------
# Progress on stderr
# ------------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on ``stream`` (stderr); one line per step when not a terminal."""

    def __init__(self, total: int, stream=None, enabled: bool = True, width: int = 24):
        self.total, self.done, self.width = max(1, total), 0, width
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_len = 0

    def __call__(self, label: str) -> None:
        """Announce the step about to run."""
        if not self.enabled:
            return
        self.done = min(self.done + 1, self.total)
        filled = int(self.width * (self.done - 1) / self.total)
        elapsed = time.perf_counter() - self.t0
        text = (f"[{'#' * filled}{'-' * (self.width - filled)}] {self.done}/{self.total} "
                f"{int(elapsed // 60)}m{int(elapsed % 60):02d}s  {label}")
        if self.tty:
            pad = max(0, self._last_len - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._last_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        text = f"[{'#' * self.width}] {self.total}/{self.total} done in {elapsed:.0f}s"
        self.stream.write(("\r" + text + " " * max(0, self._last_len - len(text)) if self.tty else text) + "\n")
        self.stream.flush()


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    model: str
    device: str
    dtype: str
    resolutions: list                 # memory table and attention-share table
    memory_backends: list
    triton_memory_resolutions: list
    speed_groups: list                # [{"resolutions": [...], "modes": [...], "ops": [...]}]
    speed_backends: list
    compile_ops: list                 # ops whose torch.compile case is timed
    notes: list = field(default_factory=list)
    budget_s: float | None = None     # timing budget per (op, mode, resolution)
    reps: int | None = None           # timed rounds; None: from the budget

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(model: str = "vit_base_patch16_224", device=None, dtype=None, resolutions=None,
              backends=None, reps: int | None = None) -> Plan:
    """What ``fastvit profile`` runs. On CUDA: everything. On a CPU: the triton backend's memory
    only up to 384 px (it runs in Triton's interpreter), no triton timing (meaningless there),
    ``torch.compile`` timed only for attention and LayerNorm, the whole model forward-only at the
    smallest resolution, forward + backward only at the smallest resolution."""
    from .memory import MEMORY_BACKENDS

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    dtype = speed.parse_dtype(dtype if dtype is not None else ("bf16" if cuda else "fp32"))
    resolutions = sorted(set(resolutions or DEFAULT_RESOLUTIONS))
    backends = list(backends or speed.SPEED_BACKENDS)
    if "eager" not in backends:
        backends.insert(0, "eager")  # the baseline of every ratio
    small, large = resolutions[0], resolutions[-1]
    mem_backends = [b for b in MEMORY_BACKENDS if b in backends]
    notes = []
    if cuda:
        triton_mem = list(resolutions)
        groups = [{"resolutions": sorted({small, large}), "modes": list(speed.MODES), "ops": list(speed.OPS)}]
        compile_ops = list(speed.OPS)
    else:
        triton_mem = [r for r in resolutions if r <= CPU_TRITON_MEMORY_MAX] or [small]
        groups = [{"resolutions": [small], "modes": ["fwd", "fwdbwd"], "ops": ["attention", "layer_norm", "mlp",
                                                                               "block"]},
                  {"resolutions": [small], "modes": ["fwd"], "ops": ["model"]}]
        if large != small:
            groups.append({"resolutions": [large], "modes": ["fwd"], "ops": ["attention", "layer_norm", "mlp",
                                                                           "block"]})
        compile_ops = list(CPU_COMPILE_OPS)
        parts = [f"forward and forward+backward at {small}px" + (f", forward only at {large}px" if large != small
                                                                  else ""),
                 f"the whole model forward-only at {small}px"]
        if "compile" in backends:
            parts.append(f"torch.compile timed for {' and '.join(CPU_COMPILE_OPS)} only (inductor compiles C++ with "
                         "gcc here: tens of seconds to minutes per block or model)")
        if "triton" in backends:
            parts.append("the triton backend is not timed (on a CPU it runs in Triton's interpreter, whose speed "
                         "says nothing about a GPU)")
        notes.append("CPU run: fewer, smaller cases than on a GPU. Speed: " + "; ".join(parts) + ".")
        if "triton" in mem_backends:
            notes.append(f"CPU run: the triton backend's memory is measured in Triton's interpreter (exact tensor "
                         f"bytes, but slow) at {', '.join(map(str, triton_mem))}px only.")
        notes.append("CPU timings on a shared machine are noisy; the ratios are fairer than the times, as the "
                     "backends of each case are timed interleaved, round by round.")
    return Plan(model=model, device=str(device), dtype=speed.dtype_name(dtype), resolutions=resolutions,
                memory_backends=mem_backends, triton_memory_resolutions=triton_mem, speed_groups=groups,
                speed_backends=backends, compile_ops=compile_ops, notes=notes, reps=reps)


def _memory_jobs(plan: Plan) -> list[tuple]:
    jobs = []
    for mode in ("inference", "training"):
        for backend in plan.memory_backends:
            sizes = plan.triton_memory_resolutions if backend == "triton" else plan.resolutions
            jobs.extend((mode, backend, size) for size in sizes)
    return jobs


def _speed_steps(plan: Plan) -> int:
    return sum(len(g["resolutions"]) * len(g["modes"]) * len(g["ops"]) for g in plan.speed_groups)


def steps(plan: Plan) -> int:
    """How many progress steps :func:`run_profile` announces for ``plan`` (plots not included)."""
    return 1 + len(_memory_jobs(plan)) + _speed_steps(plan) + 1


# ------------------------------------------------------------------------------------------------
# Running it
# ------------------------------------------------------------------------------------------------
def environment(device) -> dict:
    from importlib import metadata

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = None
    from .. import __version__
    return {"device": str(device), "device_name": name, "cpu_count": os.cpu_count(), "load_average": _load(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version(), "platform": platform.platform(), "fastvit": __version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flops_section(plan: Plan) -> dict:
    from .flops import attention_share_by_resolution, count_flops

    rep = count_flops(plan.model)
    return {"source": "model", "report": rep.to_dict(),
            "attention_share": attention_share_by_resolution(plan.model, plan.resolutions)}


def _memory_section(plan: Plan, progress) -> dict:
    from .flops import vit_shape
    from .memory import fit_slopes, measure_attention

    dtype = speed.parse_dtype(plan.dtype)
    rows = []
    for mode, backend, size in _memory_jobs(plan):
        progress(f"memory {mode} {backend} {size}px")
        s = vit_shape(plan.model, size)
        rows.append(measure_attention(size, patch_size=s.patch_size, num_heads=s.num_heads, head_dim=s.head_dim,
                                      backend=backend, mode=mode, batch=1, dtype=dtype, device=plan.device))
    return {"scope": "one attention call, batch 1, with the model's heads and head_dim",
            "measured": ["peak_bytes", "slope"], "model": ["model_bytes", "model_slope"],
            "rows": rows, "slopes": fit_slopes(rows)}


def _speed_section(plan: Plan, progress) -> dict:
    rows = []

    def skip(op, backend, mode, size):
        if backend == "compile" and op not in plan.compile_ops:
            return ("CPU: inductor takes tens of seconds to minutes to compile this op here; time it with "
                    "`fastvit bench --backends eager,compile`")
        return None

    for g in plan.speed_groups:
        rows.extend(speed.compare(g["ops"], g["resolutions"], plan.speed_backends, g["modes"], model=plan.model,
                                  dtype=plan.dtype, device=plan.device, budget_s=plan.budget_s, reps=plan.reps,
                                  skip=skip, progress=progress))
    order = {op: i for i, op in enumerate(speed.OPS)}
    rows.sort(key=lambda r: (order[r["op"]], speed.MODES.index(r["mode"]), r["img_size"]))
    return {"source": "measured", "speedup": "eager median / backend median, timed interleaved in the same run",
            "rows": rows}


def _roofline_section(plan: Plan) -> dict:
    from . import roofline
    from .flops import vit_shape

    dtype = plan.dtype if plan.dtype in ("fp16", "bf16") else "bf16"
    e = roofline.DTYPE_BYTES[dtype]
    sizes = sorted({r for g in plan.speed_groups for r in g["resolutions"]})
    rows = []
    for gpu in ROOFLINE_GPUS:
        g = roofline.get_gpu(gpu)
        for size in sizes:
            s = vit_shape(plan.model, size)
            B = speed.default_batch(s.tokens, "cuda")
            costs = {
                ("attention", "fwd"): {k: [roofline.attention_cost(B, s.num_heads, s.tokens, s.head_dim, e, k)]
                                       for k in ("eager", "fused")},
                ("attention", "fwdbwd"): {k: [roofline.attention_cost(B, s.num_heads, s.tokens, s.head_dim, e, k, bw)
                                              for bw in (False, True)] for k in ("eager", "fused")},
                ("add + layer_norm", "fwd"): {
                    "eager": [roofline.layer_norm_cost(B * s.tokens, s.embed_dim, e, fused=False, residual=True)],
                    "fused": [roofline.layer_norm_cost(B * s.tokens, s.embed_dim, e, fused=True, residual=True)]},
                ("fc1 + gelu", "fwd"): {
                    "eager": [roofline.mlp_fc1_cost(B * s.tokens, s.embed_dim, s.mlp_hidden, e, fused=False)],
                    "fused": [roofline.mlp_fc1_cost(B * s.tokens, s.embed_dim, s.mlp_hidden, e, fused=True)]},
            }
            for (op, mode), kinds in costs.items():
                pred = {}
                for kind, parts in kinds.items():
                    ps = [roofline.predict_cost(c, g, dtype) for c in parts]
                    pred[kind] = {"time_s": sum(p["time_s"] for p in ps), "flops": sum(c["flops"] for c in parts),
                                  "bytes": sum(c["bytes"] for c in parts),
                                  "bound": "+".join(sorted({p["bound"] for p in ps}))}
                rows.append({"gpu": g.name, "dtype": dtype, "op": op, "mode": mode, "img_size": size,
                             "tokens": s.tokens, "batch": B, "eager_us": pred["eager"]["time_s"] * 1e6,
                             "fused_us": pred["fused"]["time_s"] * 1e6, "eager_bound": pred["eager"]["bound"],
                             "fused_bound": pred["fused"]["bound"], "eager_bytes": pred["eager"]["bytes"],
                             "fused_bytes": pred["fused"]["bytes"],
                             "predicted_speedup": pred["eager"]["time_s"] / pred["fused"]["time_s"],
                             "source": "model"})
    return {"source": "model", "dtype": dtype,
            "note": "roofline: time >= max(FLOPs / peak, DRAM bytes / bandwidth), data-sheet peaks; a prediction, "
                    "not a measurement", "rows": rows}


def run_profile(plan: Plan, progress=None, command: str | None = None) -> dict:
    """Run ``plan``; ``progress(label)`` is called before each step. Returns the results dict
    that ``results.json`` holds."""
    progress = progress or (lambda label: None)
    t0 = time.perf_counter()
    load_start = _load()
    if torch.device(plan.device).type == "cpu" and "triton" in plan.memory_backends:
        _choose_interpreter()
    progress("FLOPs (analytic)")
    flops = _flops_section(plan)
    memory = _memory_section(plan, progress)
    speed_rows = _speed_section(plan, progress)
    progress("roofline predictions (model)")
    roof = _roofline_section(plan)
    env = environment(plan.device)
    env["load_average"] = {"start": load_start, "end": env["load_average"]}
    return {
        "fastvit_profile": 1,
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "plan": plan.to_dict(),
        "flops": flops,
        "memory": memory,
        "speed": speed_rows,
        "roofline": roof,
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }


def _choose_interpreter() -> None:
    """On CPU the triton backend needs Triton's interpreter, chosen when triton is first imported."""
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"


# ------------------------------------------------------------------------------------------------
# Writing it down
# ------------------------------------------------------------------------------------------------
def _md_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _g(x) -> str:
    return f"{x / 1e9:,.2f}"


def _mib(x) -> str:
    return "-" if x is None else f"{x / MIB:,.2f}"


def render_markdown(results: dict) -> str:
    plan, env = results["plan"], results["environment"]
    out = ["# fastvit profile", ""]
    cmd = results.get("command") or "fastvit profile"
    out += [f"`{cmd}` on **{env['device_name']}** ({env['device']}, {env['cpu_count']} CPUs, "
            f"{env['torch_threads']} torch threads), torch {env['torch']}, triton {env['triton']}, "
            f"fastvit {env['fastvit']}, {results['created']}; took {results['elapsed_s']:.0f} s.", "",
            f"Model **{plan['model']}**, dtype **{plan['dtype']}**. Every figure is labelled **measured** "
            "(on this machine) or **model** (analytic). Predictions for GPUs are in their own table at the end.", ""]
    for n in plan["notes"]:
        out += [f"> {n}", ""]
    load = env.get("load_average") or {}
    busy = max((v for v in (load.get("start"), load.get("end")) if v is not None), default=None)
    if busy is not None and env["device"] == "cpu" and busy > 0.75 * (env["cpu_count"] or 1):
        out += [f"> The machine was busy with other work (1-minute load average {load.get('start')} at the start, "
                f"{load.get('end')} at the end, on {env['cpu_count']} CPUs): CPU times are inflated and noisy.", ""]

    # FLOPs
    f = results["flops"]["report"]
    img = f["img_size"] if isinstance(f["img_size"], int) else "x".join(map(str, f["img_size"]))
    out += [f"## FLOPs (model: analytic count) of {f['model']} at {img}px", "",
            f"{f['tokens']} tokens, {f['params']:,} parameters, **{_g(f['flops'])} GFLOPs** "
            f"({_g(f['macs'])} GMACs; FLOPs = 2 x MACs, matrix products only), batch {f['batch']}.", ""]
    rows = [[k, _g(v), f"{v / f['flops']:.1%}"] for k, v in f["by_component"]["matmul"].items()]
    rows.append(["**total**", f"**{_g(f['flops'])}**", "100%"])
    out += [_md_table(["matrix product", "GFLOPs", "share"], rows), ""]
    ew = f["by_component"]["elementwise"]
    out += ["Element-wise work, apart (GFLOPs): " + ", ".join(f"{k} {_g(v)}" for k, v in ew.items() if v) +
            f"; backward matrix products {_g(f['backward_flops'])} GFLOPs.", ""]
    out += ["### Attention share across resolutions (model)", ""]
    rows = [[r["img_size"], r["tokens"], _g(r["attention_flops"]), _g(r["linear_flops"]), f"{r['attention_share']:.1%}",
             f"{r['attention_to_linear']:.3f}"] for r in results["flops"]["attention_share"]]
    out += [_md_table(["img px", "tokens", "attention GFLOPs", "other GFLOPs", "attention share", "attention / other"],
                      rows), ""]

    # Memory
    m = results["memory"]
    out += ["## Attention peak memory (measured, with the model beside it)", "",
            f"Scope: {m['scope']}; {plan['dtype']} on {plan['device']}. Peak bytes allocated above "
            "the inputs, **measured** (`torch.cuda.max_memory_allocated` on CUDA, a tensor tracker on CPU), and "
            "the analytic **model** of `fastvit.profiling.memory`. Inference = forward under no_grad; training = "
            "forward + backward.", ""]
    rows = []
    for r in m["rows"]:
        if not r.get("available", True):
            rows.append([r["mode"], r["backend"], r["img_size"], r["tokens"], "n/a", _mib(r["model_bytes"]),
                         f"not run: {r['reason']}"])
            continue
        ratio = r["peak_bytes"] / r["model_bytes"] if r["model_bytes"] else float("nan")
        rows.append([r["mode"], r["backend"], r["img_size"], r["tokens"], _mib(r["peak_bytes"]),
                     _mib(r["model_bytes"]), f"{ratio:.2f}"])
    out += [_md_table(["mode", "backend", "img px", "tokens", "peak MiB (measured)", "MiB (model)",
                       "measured / model"], rows, "llrrrrr"), ""]
    out += ["### Log-log slope of peak memory against tokens", "",
            "2 means quadratic in the token count (the N x N matrix), 1 linear.", ""]
    rows = [[s["mode"], s["backend"], s["points"], "-" if s["slope"] is None else f"{s['slope']:.2f}",
             "-" if s["model_slope"] is None else f"{s['model_slope']:.2f}"] for s in m["slopes"]]
    out += [_md_table(["mode", "backend", "points", "slope (measured)", "slope (model)"], rows, "llrrr"), ""]
    out += _plot_ref(results, "memory", "Attention peak memory against tokens, log-log (measured: coloured lines; "
                                        "model: black dotted with x)")

    # Speed
    s = results["speed"]
    out += ["## Speed (measured)", "",
            f"Median time per call on {plan['device']} ({plan['dtype']}); speed-up = eager median / backend median, "
            "the backends of each row group timed interleaved, round by round, in this run. `fwd` = forward under "
            "no_grad, `fwdbwd` = forward + backward. TFLOP/s counts matrix-product FLOPs (backward = 2 x forward); "
            "GB/s the minimum LayerNorm traffic.", ""]
    rows, skipped = [], []
    for r in s["rows"]:
        if not r.get("available", True):
            skipped.append(r)
            continue
        sp = r.get("speedup_vs_eager")
        thr = f"{r['tflops']:.3f} TFLOP/s" if r.get("tflops") else (f"{r['gbps']:.1f} GB/s" if r.get("gbps") else "-")
        rows.append([r["op"], r["mode"], r["img_size"], r["batch"], r["backend"], f"{r['median_ms']:.3f}",
                     "-" if sp is None else f"**{sp:.2f}x**" if r["backend"] != "eager" else "1.00x", thr, r["reps"]])
    out += [_md_table(["op", "mode", "img px", "batch", "backend", "median ms", "speed-up vs eager", "throughput",
                       "reps"], rows, "llrrlrrrr"), ""]
    if skipped:
        reasons: dict[str, list[str]] = {}
        for r in skipped:
            reasons.setdefault(f"{r['backend']}: {r['reason']}", []).append(f"{r['op']} {r['mode']} {r['img_size']}px")
        out += ["Not run:", ""]
        out += [f"- {k} ({', '.join(v)})" for k, v in reasons.items()]
        out += [""]
    out += _plot_ref(results, "speedup", "Speed-up against eager (measured)")

    # Roofline
    rf = results["roofline"]
    out += ["## Roofline predictions for GPUs (model, not measured)", "",
            f"{rf['note']}. {rf['dtype']}, batch as the GPU benchmarks use it. `eager` counts the unfused kernels "
            "(the N x N matrix through DRAM; a separate residual add, bias and GELU), `fused` our kernels.", ""]
    rows = [[r["gpu"], r["op"], r["mode"], r["img_size"], r["batch"], f"{r['eager_us']:,.1f} ({r['eager_bound']})",
             f"{r['fused_us']:,.1f} ({r['fused_bound']})", f"{r['predicted_speedup']:.2f}x"] for r in rf["rows"]]
    out += [_md_table(["GPU", "op", "mode", "img px", "batch", "eager us (model)", "fused us (model)",
                       "speed-up (model)"], rows, "lllrrrrr"), ""]
    out += ["Raw numbers: `results.json` (same labels: `source: measured` or `source: model`).", ""]
    return "\n".join(out)


def _plot_ref(results: dict, key: str, caption: str) -> list[str]:
    plots = results.get("plots") or {}
    if PLOT_FILES[key] in plots.get("files", []):
        return [f"![{caption}]({PLOT_FILES[key]})", ""]
    if plots.get("note"):
        return [f"_No plot: {plots['note']}_", ""]
    return []


def make_plots(results: dict, out_dir) -> tuple[list[str], str | None]:
    """Draw the PNGs into ``out_dir``; returns (file names, None) or ([], why not)."""
    try:
        import matplotlib
    except ImportError:
        return [], "matplotlib is not installed: pip install 'fastvit[plot]' for the plots"
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    files = []
    if _plot_memory(plt, results, out_dir / PLOT_FILES["memory"]):
        files.append(PLOT_FILES["memory"])
    if _plot_speedup(plt, results, out_dir / PLOT_FILES["speedup"]):
        files.append(PLOT_FILES["speedup"])
    return files, None


_COLORS = {"eager": "#d62728", "sdpa": "#1f77b4", "compile": "#9467bd", "triton": "#2ca02c"}


def _plot_memory(plt, results, path) -> bool:
    rows = [r for r in results["memory"]["rows"] if r.get("available", True) and r.get("peak_bytes")]
    if not rows:
        return False
    modes = [m for m in ("inference", "training") if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.6), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        ticks, model_label = {}, "model (analytic)"
        for backend in ("eager", "sdpa", "triton"):
            rs = sorted((r for r in rows if r["mode"] == mode and r["backend"] == backend), key=lambda r: r["tokens"])
            if not rs:
                continue
            x = [r["tokens"] for r in rs]
            c = _COLORS[backend]
            ax.plot(x, [r["peak_bytes"] / MIB for r in rs], "o-", color=c, linewidth=1.2, label=f"{backend} (measured)")
            ax.plot(x, [r["model_bytes"] / MIB for r in rs], ":", color="black", alpha=0.8, linewidth=1.6,
                    marker="x", markersize=7, label=model_label)
            model_label = None
            ticks.update({r["tokens"]: r["img_size"] for r in rs})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted(ticks))
        ax.set_xticklabels([f"{t}\n{ticks[t]}px" for t in sorted(ticks)], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("tokens (image size)")
        ax.set_ylabel("peak MiB above inputs")
        ax.set_title(f"attention, {mode}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    plan = results["plan"]
    fig.suptitle(f"Attention peak memory vs resolution, log-log ({plan['model']}, {plan['dtype']}, "
                 f"{results['environment']['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_speedup(plt, results, path) -> bool:
    rows = [r for r in results["speed"]["rows"] if r.get("available", True) and r.get("speedup_vs_eager")]
    groups = []
    for r in rows:
        key = (r["op"], r["mode"], r["img_size"])
        if key not in groups and r["backend"] != "eager":
            groups.append(key)
    backends = [b for b in speed.SPEED_BACKENDS if b != "eager" and any(r["backend"] == b for r in rows)]
    if not groups or not backends:
        return False
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) + 2), 4.6))
    for i, b in enumerate(backends):
        xs, ys = [], []
        for j, key in enumerate(groups):
            r = next((r for r in rows if (r["op"], r["mode"], r["img_size"]) == key and r["backend"] == b), None)
            if r is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(r["speedup_vs_eager"])
        bars = ax.bar(xs, ys, width, color=_COLORS[b], label=f"{b} (measured)")
        for bar, y in zip(bars, ys):
            ax.annotate(f"{y:.2f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color=_COLORS["eager"], linestyle="--", linewidth=1, label="eager = 1")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{op}\n{mode} {size}px" for op, mode, size in groups], fontsize=8)
    ax.set_ylabel("speed-up vs eager (higher is better)")
    plan = results["plan"]
    ax.set_title(f"Measured speed-up vs eager ({results['environment']['device_name']}, {plan['dtype']})",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
