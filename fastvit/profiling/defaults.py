"""The defaults of every profiling entry point, defined once: the CLI, the profile report and the
benchmark suite (``benchmarks/``) all read them from here.

Two kinds of things live here:

* defaults a user can override (model, resolutions, device, dtype, backends);
* the CPU-run policy: which cases run when there is no GPU, and why the others do not. On a
  CPU the triton backend runs in Triton's interpreter (exact tensors, so its *memory* is
  measured, but slow, and its *speed* says nothing about a GPU), and ``torch.compile`` compiles
  C++ with gcc (tens of seconds per block or model).
"""
from __future__ import annotations

DEFAULT_MODEL = "vit_base_patch16_224"
# The memory table, the attention-share table and the largest/smallest speed sizes of the profile.
DEFAULT_RESOLUTIONS = (224, 384, 512, 768, 1024)
# ``fastvit bench`` without --resolutions.
BENCH_RESOLUTIONS = {"cuda": (224, 384, 512, 1024), "cpu": (224,)}
BENCH_OPS = ("attention", "layer_norm", "mlp", "block")
# The pytest-benchmark suite's parametrisation (every case on a GPU).
SUITE_RESOLUTIONS = (224, 384, 512, 1024)
SUITE_TARGETS = (("cpu", "fp32"), ("cuda", "fp16"), ("cuda", "bf16"))

# ``fastvit profile --compare CNN``: whole-model peak memory of the CNN and the ViT against resolution.
COMPARE_RESOLUTIONS = {"cuda": (224, 384, 512, 768, 1024), "cpu": (224, 320, 448)}
# FLOPs and parameters of both are compared at this size (torchvision's published figures are at 224).
COMPARE_FLOPS_SIZE = 224

# ``fastvit profile --mixed``: a seeded mix of image sizes, packed (``model(list)``) against padded and
# one image at a time. Sides from ``min_side`` to ``max_side`` in steps of ``step`` px (rounded to the
# patch size); each image's height drawn first, then its width among the sides within the aspect
# ratios (width / height) ``min_aspect`` to ``max_aspect``. ``model`` None: the profile's model.
MIXED = {
    "cuda": {"images": 32, "min_side": 128, "max_side": 512, "step": 16, "min_aspect": 0.5, "max_aspect": 2.0,
             "seed": 0, "model": None},
    # a CPU stand-in: 8 small images and a tiny model (the mix's whole-model training step in the tracker
    # takes seconds here; ViT-B's on the GPU mix would take many minutes)
    "cpu": {"images": 8, "min_side": 32, "max_side": 128, "step": 16, "min_aspect": 0.5, "max_aspect": 2.0,
            "seed": 0, "model": "vit_tiny_patch16_224"},
}

# -- the CPU-run policy -------------------------------------------------------------------------
# The triton backend's memory rows stop here on a CPU: the interpreter takes ~25 s per attention
# call at 384 px and ~15 min at 1024 px on two cores.
CPU_TRITON_MEMORY_MAX = 384
# Torch threads for timing on a CPU (``fastvit profile``; --threads overrides). On a machine shared
# with other work, torch's OpenMP workers spin against the other processes: on this project's
# 2-core machine at a load of ~5, one LayerNorm of (1, 197, 768) took ~8 ms on 2 threads and
# ~0.08 ms on one. One thread keeps the times, and so the ratios, meaningful there.
CPU_TIMING_THREADS = 1
# ``fastvit profile`` times torch.compile only for these ops on a CPU.
CPU_COMPILE_OPS = ("attention", "layer_norm")
CPU_COMPILE_REASON = ("CPU: inductor takes tens of seconds to minutes to compile this op here; time it with "
                      "`fastvit bench --backends eager,compile`")
# The benchmark suite's quick CPU subset (FASTVIT_BENCH_FULL=1 runs everything): op -> mode -> sizes.
SUITE_CPU_CASES = {
    "attention": {"fwd": (224, 384, 512), "fwdbwd": (224, 384, 512)},
    "layer_norm": {"fwd": SUITE_RESOLUTIONS, "fwdbwd": SUITE_RESOLUTIONS},
    "mlp": {"fwd": (224, 384), "fwdbwd": (224, 384)},
    "block": {"fwd": (224, 384), "fwdbwd": (224,)},
    "model": {"fwd": (224,), "fwdbwd": (224,)},
}
# The --compare section on a CPU: whole-model memory at ``COMPARE_RESOLUTIONS["cpu"]`` (up to 448 px:
# ViT-B forward + backward at 448 px takes ~20 s here, at 1024 px minutes), the ViT's triton
# backend left out (a whole ViT-B in Triton's interpreter takes minutes per call), speed forward
# only at 224 px.
CPU_COMPARE_REASON = ("CPU: a whole ViT in Triton's interpreter takes minutes per call; its memory is measured on "
                      "a GPU run")
# The --mixed section on a CPU: the whole model on the triton backend is not measured (Triton's interpreter
# runs every GEMM of every block in numpy: minutes per call even for the tiny model); the attention op is.
CPU_MIXED_MODEL_REASON = ("CPU: the whole model in Triton's interpreter takes minutes per call; its memory is "
                          "measured on a GPU run")
# ... and the only torch.compile cases of that subset: (op, mode, size).
SUITE_CPU_COMPILE = {("attention", "fwd", 224), ("block", "fwd", 224)}


def default_device() -> str:
    """``"cuda"`` when a CUDA device is visible, else ``"cpu"``."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device) -> str:
    """bf16 on CUDA (what a GPU user trains in), fp32 on a CPU (where bf16 matmuls are emulated)."""
    return "bf16" if str(device).startswith("cuda") else "fp32"


def default_memory_backends(device) -> tuple[str, ...]:
    """``fastvit memory`` without --backends: triton only on CUDA (on a CPU it is exact but slow:
    ask for it explicitly)."""
    return ("eager", "sdpa", "triton") if str(device).startswith("cuda") else ("eager", "sdpa")


def bench_resolutions(device) -> tuple[int, ...]:
    return BENCH_RESOLUTIONS["cuda" if str(device).startswith("cuda") else "cpu"]


def triton_memory_resolutions(resolutions, device) -> list[int]:
    """The sizes at which the triton backend's memory is measured: all on CUDA, up to
    ``CPU_TRITON_MEMORY_MAX`` on a CPU (at least the smallest)."""
    sizes = sorted(resolutions)
    if str(device).startswith("cuda"):
        return sizes
    return [r for r in sizes if r <= CPU_TRITON_MEMORY_MAX] or sizes[:1]


def compare_resolutions(device) -> tuple[int, ...]:
    return COMPARE_RESOLUTIONS["cuda" if str(device).startswith("cuda") else "cpu"]


def suite_cpu_skip_reason(op: str, backend: str, mode: str, size: int) -> str | None:
    """Why the benchmark suite's quick CPU subset leaves a case out (None: it runs)."""
    if backend == "compile" and (op, mode, size) not in SUITE_CPU_COMPILE:
        return ("CPU: torch.compile (inductor + gcc) takes tens of seconds per case, so only attention and "
                "block at 224px fwd run by default; set FASTVIT_BENCH_FULL=1 to run it")
    if size not in SUITE_CPU_CASES[op][mode]:
        return f"CPU: {op} {mode} at {size}px is slow here; set FASTVIT_BENCH_FULL=1 to run it"
    return None


def mixed_spec(device) -> dict:
    """The image mix of ``fastvit profile --mixed`` on ``device`` (a copy of ``MIXED[...]``)."""
    return dict(MIXED["cuda" if str(device).startswith("cuda") else "cpu"])
