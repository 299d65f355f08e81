"""Running a :class:`~fastvit.profiling.plan.Plan`: the results dict ``results.json`` holds.

Every section is labelled: ``source: "measured"`` (timed or tracked on this machine) or
``source: "model"`` (analytic: the FLOP count, the memory model, the roofline).

A case that raises stops the run with a :class:`~fastvit.profiling.failures.CaseError` naming
it; with ``keep_going`` it is recorded instead (its row has ``error``; ``results["failures"]``
lists every one) and the run goes on. Nothing here touches the environment: on a CPU the
triton rows need Triton's interpreter chosen before triton is imported (the CLI does that).
"""
from __future__ import annotations

import datetime
import os
import platform
import time

import torch

from . import speed
from .failures import CaseError, describe
from .plan import Plan, memory_jobs

__all__ = ["run_profile", "environment", "ROOFLINE_GPUS"]

ROOFLINE_GPUS = ("a100-sxm-80gb", "h100-sxm")


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


def _memory_section(plan: Plan, progress, keep_going: bool) -> dict:
    from .flops import vit_shape
    from .memory import fit_slopes, measure_attention

    dtype = speed.parse_dtype(plan.dtype)
    rows = []
    for mode, backend, size in memory_jobs(plan):
        label = f"memory {mode} {backend} {size}px"
        progress(label)
        s = vit_shape(plan.model, size)
        try:
            rows.append(measure_attention(size, patch_size=s.patch_size, num_heads=s.num_heads, head_dim=s.head_dim,
                                          num_prefix_tokens=s.num_prefix_tokens, backend=backend, mode=mode, batch=1,
                                          dtype=dtype, device=plan.device))
        except Exception as exc:  # noqa: BLE001 - re-raised as CaseError unless keep_going
            if not keep_going:
                raise CaseError(label, exc) from exc
            rows.append(dict(img_size=size, tokens=s.tokens, backend=backend, mode=mode, scope="attention",
                             model_bytes=None, peak_bytes=None, available=False, reason=None, error=describe(exc)))
    return {"scope": "one attention call, batch 1, with the model's heads and head_dim",
            "measured": ["peak_bytes", "slope"], "model": ["model_bytes", "model_slope"],
            "rows": rows, "slopes": fit_slopes(rows)}


def _speed_section(plan: Plan, progress, keep_going: bool) -> dict:
    from .defaults import CPU_COMPILE_REASON

    def skip(op, backend, mode, size):
        return CPU_COMPILE_REASON if backend == "compile" and op not in plan.compile_ops else None

    rows = []
    threads = torch.get_num_threads()
    if plan.speed_threads:
        torch.set_num_threads(plan.speed_threads)
    try:
        for g in plan.speed_groups:
            rows.extend(speed.compare(g["ops"], g["resolutions"], plan.speed_backends, g["modes"], model=plan.model,
                                      dtype=plan.dtype, device=plan.device, budget_s=plan.budget_s, reps=plan.reps,
                                      skip=skip, progress=progress, keep_going=keep_going))
    finally:
        torch.set_num_threads(threads)
    order = {op: i for i, op in enumerate(speed.OPS)}
    rows.sort(key=lambda r: (order[r["op"]], speed.MODES.index(r["mode"]), r["img_size"]))
    return {"source": "measured", "speedup": "eager median / backend median, timed interleaved in the same run",
            "threads": plan.speed_threads or threads, "rows": rows}


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
            for op, mode in (("attention", "fwd"), ("attention", "fwdbwd"), ("add + layer_norm", "fwd"),
                             ("fc1 + gelu", "fwd")):
                kinds = roofline.block_op_costs(op, mode, B, s.num_heads, s.tokens, s.head_dim, s.embed_dim,
                                                s.mlp_hidden, e)
                pred = {}
                for kind, parts in kinds.items():
                    ps = [roofline.predict_cost(c, g, dtype) for c in parts]
                    pred[kind] = {"time_s": sum(p["time_s"] for p in ps), "bytes": sum(c["bytes"] for c in parts),
                                  "bound": "+".join(sorted({p["bound"] for p in ps}))}
                row = {"gpu": g.name, "dtype": dtype, "op": op, "mode": mode, "img_size": size,
                       "tokens": s.tokens, "batch": B, "source": "model"}
                for kind in roofline.BACKEND_COLUMNS:
                    row[f"{kind}_us"] = pred[kind]["time_s"] * 1e6
                    row[f"{kind}_bound"] = pred[kind]["bound"]
                    row[f"{kind}_bytes"] = pred[kind]["bytes"]
                fused = pred["fused"]["time_s"]
                row["predicted_speedup"] = pred["eager"]["time_s"] / fused  # over eager (the baseline)
                row["speedup_vs_sdpa"] = pred["sdpa"]["time_s"] / fused
                row["speedup_vs_compile"] = pred["compile"]["time_s"] / fused
                rows.append(row)
    return {"source": "model", "dtype": dtype,
            "note": "roofline: time >= max(FLOPs / peak, DRAM bytes / bandwidth), data-sheet peaks; a prediction, "
                    "not a measurement", "rows": rows}


def run_profile(plan: Plan, progress=None, command: str | None = None, keep_going: bool = False) -> dict:
    """Run ``plan``; ``progress(label)`` is called before each step. ``command`` is recorded as
    given (the CLI passes what the user typed, made free of this machine's paths). Returns the
    results dict that ``results.json`` holds; raises :class:`CaseError` when a case raises,
    unless ``keep_going`` (then ``results["failures"]`` lists them)."""
    from .autotune import autotune_picks

    progress = progress or (lambda label: None)
    t0 = time.perf_counter()
    load_start = _load()
    progress("FLOPs (analytic)")
    flops = _flops_section(plan)
    memory = _memory_section(plan, progress, keep_going)
    progress("training memory per block (model; launches measured)")
    from .training import training_section
    training = training_section(plan.model, backends=plan.memory_backends)
    speed_rows = _speed_section(plan, progress, keep_going)
    compare = None
    if plan.compare:
        from .compare import run_compare
        compare = run_compare(plan, progress, keep_going)
    mixed = None
    if plan.mixed:
        from .mixed import run_mixed
        mixed = run_mixed(plan, progress, keep_going)
    progress("roofline predictions (model)")
    roof = _roofline_section(plan)
    env = environment(plan.device)
    env["load_average"] = {"start": load_start, "end": env["load_average"]}
    failures = [{"case": f"memory {r['mode']} {r['backend']} {r['img_size']}px", "error": r["error"]}
                for r in memory["rows"] if r.get("error")]
    failures += [{"case": speed.case_label(r["op"], r["mode"], r["img_size"], r["backend"]), "error": r["error"]}
                 for r in speed_rows["rows"] if r.get("error")]
    if compare:
        failures += [{"case": f"compare {part} {r['mode']} {r['network']} {r['backend']} {r['img_size']}px",
                      "error": r["error"]} for part in ("memory", "speed") for r in compare[part]["rows"]
                     if r.get("error")]
    if mixed:
        failures += [{"case": " ".join(["mixed", part] + [r[k] for k in ("scope", "mode", "backend", "way") if k in r]),
                      "error": r["error"]} for part in ("memory", "speed") for r in mixed[part]["rows"]
                     if r.get("error")]
    return {
        "fastvit_profile": 1,
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "plan": plan.to_dict(),
        "flops": flops,
        "memory": memory,
        "training_memory": training,
        "speed": speed_rows,
        "roofline": roof,
        **({"compare": compare} if compare else {}),
        **({"mixed": mixed} if mixed else {}),
        "autotune": {"source": "measured", "picks": autotune_picks(),
                     "note": "the configuration each autotuned kernel picked in this run, by autotune key"},
        "failures": failures,
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
