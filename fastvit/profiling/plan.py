"""What ``fastvit profile`` runs on the device at hand, and why: the plan, before anything runs.

On CUDA nearly everything; on a CPU fewer, smaller cases, by the policy of
:mod:`fastvit.profiling.defaults`, and the plan's ``notes`` say which and why (they are printed
at the top of the report).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from . import defaults, speed_cases
from .defaults import CPU_COMPILE_OPS, DEFAULT_MODEL, DEFAULT_RESOLUTIONS

__all__ = ["Plan", "make_plan", "memory_jobs", "steps"]

_CPU_SPEED_OPS = ["attention", "layer_norm", "mlp", "block"]


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
    speed_threads: int | None = None  # torch threads while timing (None: as they are)
    budget_s: float | None = None     # timing budget per (op, mode, resolution)
    reps: int | None = None           # timed rounds; None: from the budget
    compare: dict | None = None       # --compare CNN: {"cnn", "resolutions", "backends", "speed_sizes", ...}
    mixed: dict | None = None         # --mixed: {"model", "spec", "sizes", "memory_backends", ...} (see _mixed_plan)

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(model: str = DEFAULT_MODEL, device=None, dtype=None, resolutions=None, backends=None,
              reps: int | None = None, threads: int | None = None, compare: str | None = None,
              mixed: bool = False) -> Plan:
    """What ``fastvit profile`` runs. On CUDA: memory at every resolution; speed of every op at
    the smallest and the largest, the whole model at the smallest only (at the largest it adds
    nothing a block does not show, and compiling it twice more costs minutes). On a CPU: the
    triton backend's memory only up to ``CPU_TRITON_MEMORY_MAX`` (Triton's interpreter), no
    triton timing (meaningless there), ``torch.compile`` timed only for ``CPU_COMPILE_OPS``, the
    whole model forward-only at the smallest resolution, forward + backward only at the
    smallest resolution, timed on ``CPU_TIMING_THREADS`` torch threads unless ``threads`` says
    otherwise."""
    from .memory_model import MEMORY_BACKENDS

    device = torch.device(device if device is not None else defaults.default_device())
    cuda = device.type == "cuda"
    dtype = speed_cases.parse_dtype(dtype if dtype is not None else defaults.default_dtype(device))
    resolutions = sorted(set(resolutions or DEFAULT_RESOLUTIONS))
    backends = list(backends or speed_cases.SPEED_BACKENDS)
    if "eager" not in backends:
        backends.insert(0, "eager")  # the baseline of every ratio
    small, large = resolutions[0], resolutions[-1]
    mem_backends = [b for b in MEMORY_BACKENDS if b in backends]
    triton_mem = defaults.triton_memory_resolutions(resolutions, device)
    notes, speed_threads = [], threads
    if cuda:
        ops = [op for op in speed_cases.OPS if op != "model"]
        groups = [{"resolutions": sorted({small, large}), "modes": list(speed_cases.MODES), "ops": ops},
                  {"resolutions": [small], "modes": list(speed_cases.MODES), "ops": ["model"]}]
        compile_ops = list(speed_cases.OPS)
        if large != small:
            notes.append(f"The whole model is timed at {small}px only; its blocks are timed at {large}px too.")
    else:
        groups = [{"resolutions": [small], "modes": ["fwd", "fwdbwd"], "ops": list(_CPU_SPEED_OPS)},
                  {"resolutions": [small], "modes": ["fwd"], "ops": ["model"]}]
        if large != small:
            groups.append({"resolutions": [large], "modes": ["fwd"], "ops": list(_CPU_SPEED_OPS)})
        compile_ops = list(CPU_COMPILE_OPS)
        speed_threads = threads or defaults.CPU_TIMING_THREADS
        notes += _cpu_notes(small, large, backends, mem_backends, triton_mem, speed_threads, threads is not None)
    cmp = _compare_plan(compare, model, device, backends, notes) if compare else None
    mix = _mixed_plan(model, device, backends, notes) if mixed else None
    return Plan(model=model, device=str(device), dtype=speed_cases.dtype_name(dtype), resolutions=resolutions,
                memory_backends=mem_backends, triton_memory_resolutions=triton_mem, speed_groups=groups,
                speed_backends=backends, compile_ops=compile_ops, notes=notes, reps=reps,
                speed_threads=speed_threads, compare=cmp, mixed=mix)


def _compare_plan(cnn: str, model: str, device: torch.device, backends: list, notes: list) -> dict:
    """What the ViT-against-a-CNN section runs: whole-model memory of the CNN and of the ViT on
    each attention backend at ``defaults.compare_resolutions``; speed of both at the smallest
    size (forward; forward + backward too on a GPU)."""
    from .cnn import count_cnn_flops
    from .flops import vit_shape

    count_cnn_flops(cnn)  # refuses, before anything runs, a network the counter cannot count (< 1 s: meta device)
    cuda = device.type == "cuda"
    vit_backends = [b for b in ("eager", "sdpa", "triton") if b in backends and (cuda or b != "triton")]
    p = vit_shape(model).patch_size[0]  # the ViT needs whole patches
    sizes = list(dict.fromkeys(p * max(1, round(s / p)) for s in defaults.compare_resolutions(device)))
    if not cuda:
        notes.append(f"CPU run: ViT against {cnn}: whole-model memory at {', '.join(map(str, sizes))}px (a GPU run "
                     f"goes to {defaults.COMPARE_RESOLUTIONS['cuda'][-1]}px), the ViT on "
                     f"{' and '.join(vit_backends)} (" + defaults.CPU_COMPARE_REASON.removeprefix("CPU: ") +
                     "); speed forward only, at the smallest size.")
    return {"cnn": cnn, "resolutions": sizes, "backends": vit_backends, "flops_size": defaults.COMPARE_FLOPS_SIZE,
            "speed_sizes": sizes[:1], "speed_modes": list(speed_cases.MODES) if cuda else ["fwd"]}


def _mixed_plan(model: str, device: torch.device, backends: list, notes: list) -> dict:
    """The mixed-resolution section: the mix of ``defaults.mixed_spec`` (its sizes drawn here, so the
    plan records them), on the profile's model on CUDA or the spec's stand-in on a CPU; memory on
    eager, sdpa (and triton: on a CPU the attention op only, in Triton's interpreter); speed on the
    backends that change attention (triton only on CUDA: the rows say why not)."""
    from .flops import vit_shape
    from .mixed import draw_sizes

    cuda = device.type == "cuda"
    spec = defaults.mixed_spec(device)
    name = spec["model"] or model
    sizes = draw_sizes(spec, vit_shape(name).patch_size[0])
    attn = [b for b in ("eager", "sdpa", "triton") if b in backends]
    if not cuda:
        notes.append(f"CPU run: mixed resolution on a stand-in mix, {spec['images']} images of {spec['min_side']}-"
                     f"{spec['max_side']}px on {name} (a GPU run: {defaults.MIXED['cuda']['images']} images of "
                     f"{defaults.MIXED['cuda']['min_side']}-{defaults.MIXED['cuda']['max_side']}px on the profile's "
                     "model)" + ("; the triton backend: attention-op memory measured in Triton's interpreter, "
                                 "whole-model memory and speed not run" if "triton" in backends else "") + ".")
    return {"model": name, "spec": spec, "sizes": sizes, "memory_backends": attn, "attention_backends": attn,
            "speed_backends": [b for b in ("eager", "sdpa", "triton") if b in backends],
            "speed_modes": list(speed_cases.MODES)}


def _cpu_notes(small, large, backends, mem_backends, triton_mem, threads, asked) -> list[str]:
    parts = [f"forward and forward+backward at {small}px" + (f", forward only at {large}px" if large != small
                                                              else ""),
             f"the whole model forward-only at {small}px"]
    if "compile" in backends:
        parts.append(f"torch.compile timed for {' and '.join(CPU_COMPILE_OPS)} only (inductor compiles C++ with "
                     "gcc here: tens of seconds to minutes per block or model)")
    if "triton" in backends:
        parts.append("the triton backend is not timed (on a CPU it runs in Triton's interpreter, whose speed "
                     "says nothing about a GPU)")
    notes = ["CPU run: fewer, smaller cases than on a GPU. Speed: " + "; ".join(parts) + "."]
    if "triton" in mem_backends:
        notes.append(f"CPU run: the triton backend's memory is measured in Triton's interpreter (exact tensor "
                     f"bytes, but slow) at {', '.join(map(str, triton_mem))}px only.")
    if not asked:
        notes.append(f"CPU run: timed on {threads} torch thread{'s' if threads > 1 else ''} (on a machine shared with "
                     "other work, torch's worker threads spin against it and inflate times many-fold; "
                     "--threads N times on N).")
    notes.append("CPU timings on a shared machine are noisy; the ratios are fairer than the times, as the "
                 "backends of each case are timed interleaved, round by round.")
    return notes


def memory_jobs(plan: Plan) -> list[tuple]:
    """``(mode, backend, img_size)`` of every memory row, in the order they run."""
    jobs = []
    for mode in ("inference", "training"):
        for backend in plan.memory_backends:
            sizes = plan.triton_memory_resolutions if backend == "triton" else plan.resolutions
            jobs.extend((mode, backend, size) for size in sizes)
    return jobs


def steps(plan: Plan) -> int:
    """How many progress steps ``run_profile`` announces for ``plan`` (plots not included)."""
    speed_steps = sum(len(g["resolutions"]) * len(g["modes"]) * len(g["ops"]) for g in plan.speed_groups)
    cmp = plan.compare
    compare_steps = 0
    if cmp:
        compare_steps = 1 + 2 * len(cmp["resolutions"]) * (1 + len(cmp["backends"])) + len(cmp["speed_modes"])
    mx = plan.mixed
    mixed_steps = 0
    if mx:
        mixed_steps = 1 + 2 * 3 * (len(mx["memory_backends"]) + len(mx["attention_backends"])) + len(mx["speed_modes"])
    return 1 + len(memory_jobs(plan)) + speed_steps + 1 + compare_steps + mixed_steps
