"""The ``fastvit`` command.

  fastvit profile          FLOPs, attention memory and backend speed on this machine -> fastvit-report/
  fastvit flops MODEL      analytic FLOPs of a model, by component, and the attention share by resolution
  fastvit memory           peak memory of attention (or the model) by resolution, measured and modelled
  fastvit bench            speed of the backends side by side, with ratios against eager
  fastvit compile-report   registers, spills, shared memory, tensor-core instructions, occupancy of
                           the Triton kernels compiled for sm_80 / sm_90 (no GPU needed)

Every subcommand takes ``--json`` (the result on stdout, progress and notes on stderr). Bad
arguments give one line on stderr and exit status 2; ``FASTVIT_DEBUG=1`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys

__all__ = ["main", "build_parser"]

DEFAULT_MODEL = "vit_base_patch16_224"
SHARE_RESOLUTIONS = (224, 384, 512, 768, 1024)


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage too: one line is enough
        raise CLIError(f"{self.prog}: error: {message} (see {self.prog} --help)")


# ------------------------------------------------------------------------------------------------
# Argument types: each turns a bad value into one clear line
# ------------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, e.g. 224,512; got {text!r}")
    return values


def _choice_list(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}; got {text!r}")
        return list(dict.fromkeys(values))
    return parse


def _dtype(text: str) -> str:
    from .profiling.speed import dtype_name, parse_dtype
    try:
        return dtype_name(parse_dtype(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model(text: str) -> str:
    from .vit import model_config
    try:
        model_config(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _archs(text: str) -> list[int]:
    from .profiling.compile_report import ARCH_LIMITS
    archs = []
    for item in (v.strip().lower() for v in text.split(",") if v.strip()):
        digits = item.removeprefix("sm_").removeprefix("sm").removesuffix("a")
        if not digits.isdigit() or int(digits) not in ARCH_LIMITS:
            supported = ", ".join(f"sm_{a}" for a in sorted(ARCH_LIMITS))
            raise argparse.ArgumentTypeError(f"unknown architecture {item!r} (supported: {supported})")
        archs.append(int(digits))
    if not archs:
        raise argparse.ArgumentTypeError(f"expected e.g. sm_80,sm_90; got {text!r}")
    return list(dict.fromkeys(archs))


def _device(text: str) -> str:
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here (torch.cuda.is_available() is "
                                             "False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return str(dev)


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_dtype(device: str) -> str:
    return "bf16" if device.startswith("cuda") else "fp32"


def _check_resolutions(model: str, sizes, option: str) -> None:
    from .vit import model_config
    p = model_config(model).patch_size
    bad = [s for s in sizes if s % p]
    if bad:
        what = "a multiple" if len(bad) == 1 else "multiples"
        raise CLIError(f"{option} must be {what} of the patch size {p} of {model}, got {', '.join(map(str, bad))}")


# ------------------------------------------------------------------------------------------------
# The parser
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .profiling import speed

    parser = _Parser(prog="fastvit", description="Profile and benchmark fastvit's Vision Transformer kernels.")
    parser.add_argument("--version", action="version", version=f"fastvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p, *, device=True, model=True):
        p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        if device:
            p.add_argument("--threads", type=_positive_int, default=None,
                           help="torch CPU threads (torch.set_num_threads; default: torch's own choice)")
            p.add_argument("--device", type=_device, default=None, help="cpu or cuda[:N] (default: cuda if available)")
            p.add_argument("--dtype", type=_dtype, default=None,
                           help="fp32, fp16 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
        if model:
            p.add_argument("--model", type=_model, default=DEFAULT_MODEL,
                           help=f"a registered model, for its sizes (default {DEFAULT_MODEL}; fastvit.list_models())")

    p = sub.add_parser("profile", help="FLOPs, attention memory and backend speed -> a report folder",
                       description="Measure and model what the kernels buy on this machine; writes report.md, "
                                   "results.json and PNG plots. On a CPU it runs fewer, smaller cases and says so.")
    common(p)
    p.add_argument("--resolutions", type=_int_list, default=None,
                   help="image sizes for the memory table; speed is compared at the smallest and the largest "
                        "(default 224,384,512,768,1024)")
    p.add_argument("--backends", type=_choice_list(speed.SPEED_BACKENDS), default=None,
                   help="backends to measure (default all: eager,sdpa,compile,triton; eager is always included)")
    p.add_argument("--reps", type=_positive_int, default=None, help="timed rounds per case (default: from a time "
                   "budget, 3 to 20 on CPU)")
    p.add_argument("--out", default="fastvit-report", help="output folder (default fastvit-report)")
    p.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("flops", help="analytic FLOPs of a model by component",
                       description="Analytic FLOPs (= 2 x MACs, matrix products; element-wise work apart) of one "
                                   "forward pass, and the attention share across resolutions.")
    p.add_argument("model", type=_model, nargs="?", default=DEFAULT_MODEL, metavar="MODEL",
                   help=f"a registered model (default {DEFAULT_MODEL})")
    p.add_argument("--img-size", type=_positive_int, default=None, help="image size (default: the model's)")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--resolutions", type=_int_list, default=None,
                   help="sizes of the attention-share table (default 224,...,1024 rounded to the patch size)")
    common(p, device=False, model=False)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("memory", help="peak memory by resolution, measured and modelled",
                       description="Peak memory above the inputs of one attention call (or the whole model), "
                                   "measured, beside the analytic model, and the log-log slopes against tokens.")
    common(p)
    p.add_argument("--resolutions", type=_int_list, default=[224, 384, 512, 768, 1024])
    p.add_argument("--backends", type=_choice_list(("eager", "sdpa", "triton")), default=None,
                   help="default eager,sdpa,triton on CUDA; eager,sdpa on CPU (triton runs in Triton's "
                        "interpreter there: exact but slow; ask for it explicitly)")
    p.add_argument("--modes", type=_choice_list(("inference", "training")), default=["inference", "training"])
    p.add_argument("--scope", choices=("attention", "model"), default="attention")
    p.add_argument("--depth", type=_positive_int, default=None, help="blocks of the model (--scope model)")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("bench", help="backend speed side by side, ratios against eager",
                       description="Time the backends of each (op, mode, resolution) interleaved and report "
                                   "median times and speed-ups against eager measured in the same run.")
    common(p)
    p.add_argument("--ops", type=_choice_list(speed.OPS), default=["attention", "layer_norm", "mlp", "block"])
    p.add_argument("--resolutions", type=_int_list, default=None, help="default 224 on CPU, 224,384,512,1024 on CUDA")
    p.add_argument("--backends", type=_choice_list(speed.SPEED_BACKENDS), default=list(speed.SPEED_BACKENDS))
    p.add_argument("--modes", type=_choice_list(speed.MODES), default=list(speed.MODES))
    p.add_argument("--batch", type=_positive_int, default=None, help="default 1 on CPU, ~8192/tokens on CUDA")
    p.add_argument("--reps", type=_positive_int, default=None, help="timed rounds (default: from a time budget)")
    p.add_argument("--warmup", type=_positive_int, default=1, help="untimed calls first (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compile-report", help="resources of the Triton kernels compiled for GPUs (no GPU needed)",
                       description="Compile every kernel configuration for the given architectures and report "
                                   "registers, spills, shared memory, HMMA/HGMMA counts and occupancy. All of "
                                   "them take many minutes on a small CPU the first time (Triton's cache makes "
                                   "reruns fast); --kernels and --name narrow the set.")
    p.add_argument("--arch", type=_archs, default=[80, 90], help="e.g. sm_80,sm_90 (default)")
    p.add_argument("--kernels", type=_choice_list(("attention", "layer_norm", "linear_gelu")),
                   default=["attention", "layer_norm", "linear_gelu"], help="kernel modules (default all)")
    p.add_argument("--name", default=None, help="only configurations whose name contains this text")
    common(p, device=False, model=False)
    p.set_defaults(func=cmd_compile_report)
    return parser


# ------------------------------------------------------------------------------------------------
# Subcommands
# ------------------------------------------------------------------------------------------------
def _emit_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str, allow_nan=False) if _finite(obj) else
          json.dumps(_nan_to_none(obj), indent=1, default=str))


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return True


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _device_dtype(args) -> tuple[str, str]:
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)
    device = args.device or _default_device()
    return device, args.dtype or _default_dtype(device)


def _progress(total: int, enabled: bool):
    from .profiling.report import Progress
    return Progress(total, enabled=enabled)


def cmd_flops(args) -> int:
    from .profiling.flops import attention_share_by_resolution, count_flops, format_attention_share_table, \
        format_flops_table
    from .vit import model_config

    cfg = model_config(args.model)
    p = cfg.patch_size
    if args.img_size is not None:
        _check_resolutions(args.model, [args.img_size], "--img-size")
    if args.resolutions:
        _check_resolutions(args.model, args.resolutions, "--resolutions")
        sizes = args.resolutions
    else:  # the usual sizes, rounded to whole patches
        sizes = list(dict.fromkeys(p * max(1, round(s / p)) for s in SHARE_RESOLUTIONS))
    rep = count_flops(args.model, args.img_size, args.batch)
    share = attention_share_by_resolution(args.model, sizes, args.batch)
    if args.json:
        out = rep.to_dict()
        out.update(source="model", attention_share_by_resolution=share)
        _emit_json(out)
    else:
        print(format_flops_table(rep))
        print()
        print(f"Attention share of the matrix-product FLOPs across resolutions ({args.model}, model):")
        print(format_attention_share_table(share))
    return 0


def cmd_memory(args) -> int:
    from .profiling.flops import vit_shape
    from .profiling.memory import fit_slopes, format_memory_table, measure_attention, measure_model
    from .profiling.speed import parse_dtype

    device, dtype = _device_dtype(args)
    _check_resolutions(args.model, args.resolutions, "--resolutions")
    backends = args.backends or (["eager", "sdpa", "triton"] if device.startswith("cuda") else ["eager", "sdpa"])
    if device == "cpu" and "triton" in backends and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"  # the only way the triton backend runs on a CPU
    if args.depth is not None and args.scope != "model":
        raise CLIError("--depth applies to --scope model only")
    jobs = [(m, b, s) for m in args.modes for b in backends for s in args.resolutions]
    progress = _progress(len(jobs), enabled=not args.no_progress)
    rows = []
    for mode, backend, size in jobs:
        progress(f"{args.scope} {mode} {backend} {size}px")
        if args.scope == "attention":
            s = vit_shape(args.model, size)
            rows.append(measure_attention(size, patch_size=s.patch_size, num_heads=s.num_heads, head_dim=s.head_dim,
                                          backend=backend, mode=mode, batch=args.batch, dtype=parse_dtype(dtype),
                                          device=device))
        else:
            rows.append(measure_model(args.model, size, backend=backend, mode=mode, batch=args.batch,
                                      depth=args.depth, dtype=parse_dtype(dtype), device=device))
    progress.close()
    result = {"model": args.model, "scope": args.scope, "device": device, "dtype": dtype, "batch": args.batch,
              "labels": {"measured": ["peak_bytes", "slope"], "model": ["model_bytes", "model_slope"]},
              "rows": rows, "slopes": fit_slopes(rows)}
    if args.json:
        _emit_json(result)
    else:
        print(f"Peak memory above the inputs, {args.scope}, {args.model}, {dtype} on {device} "
              "(peak: measured; model: analytic):")
        print(format_memory_table(result))
        if device == "cpu" and "triton" not in backends:
            print("(triton on CPU runs in Triton's interpreter, exact but slow: add --backends eager,sdpa,triton)")
    return 0


def cmd_bench(args) -> int:
    from .profiling import speed

    device, dtype = _device_dtype(args)
    sizes = args.resolutions or ([224, 384, 512, 1024] if device.startswith("cuda") else [224])
    _check_resolutions(args.model, sizes, "--resolutions")
    total = sum(1 for _ in args.ops for _ in args.modes for _ in sizes)
    progress = _progress(total, enabled=not args.no_progress)
    rows = speed.compare(args.ops, sizes, args.backends, args.modes, model=args.model, dtype=dtype, device=device,
                         batch=args.batch, reps=args.reps, warmup=args.warmup, progress=progress)
    progress.close()
    if args.json:
        _emit_json({"model": args.model, "device": device, "dtype": dtype, "source": "measured",
                    "speedup": "eager median / backend median, timed interleaved in the same run", "rows": rows})
    else:
        print(f"Speed on {device} ({dtype}), sizes of {args.model}; all measured. vs eager = eager median / backend "
              "median, the backends of each case timed interleaved in this run.")
        print(speed.format_speed_table(rows))
    return 0


def cmd_compile_report(args) -> int:
    from .profiling.compile_report import CompileReportError, collect_specs, format_table, report

    collected = collect_specs(args.kernels)
    specs = [s for s in collected.specs if args.name is None or args.name in s["name"]]
    if not specs:
        why = "; ".join(f"{k}: {v}" for k, v in collected.skipped.items())
        raise CLIError(f"no kernel configuration matches"
                       f"{f' --name {args.name!r}' if args.name else ''}{f' ({why})' if why else ''}")
    print(f"compiling {len(specs)} configuration(s) for {', '.join(f'sm_{a}' for a in args.arch)} ...",
          file=sys.stderr)
    try:
        reports = report(specs, args.arch)
    except CompileReportError as exc:
        print(f"fastvit compile-report: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _emit_json({"archs": [f"sm_{a}" for a in args.arch], "reports": [r.to_dict() for r in reports],
                    "skipped": collected.skipped})
    else:
        print(format_table(reports))
        for k, v in collected.skipped.items():
            print(f"(skipped {k}: {v})")
    return 0


def cmd_profile(args) -> int:
    from .profiling import report

    device, dtype = _device_dtype(args)
    if args.resolutions:
        _check_resolutions(args.model, args.resolutions, "--resolutions")
    plan = report.make_plan(args.model, device, dtype, args.resolutions, args.backends, reps=args.reps)
    progress = _progress(report.steps(plan) + (0 if args.no_plots else 1), enabled=not args.no_progress)
    command = "fastvit " + " ".join(shlex.quote(a) for a in (args._argv or ["profile"]))
    results = report.run_profile(plan, progress=progress, command=command)
    if not args.no_plots:
        progress("plots")
    paths = report.write_report(results, args.out, plots=not args.no_plots)
    progress.close()
    if paths["plot_note"] and not args.no_plots:
        print(f"fastvit profile: {paths['plot_note']}", file=sys.stderr)
    if args.json:
        _emit_json(results)
    else:
        print(report.render_markdown(results))
        print(f"wrote {paths['report']}, {paths['results']}" + "".join(f", {p}" for p in paths["plots"]))
    return 0


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("FASTVIT_DEBUG", "") not in ("", "0")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            raise CLIError("fastvit: error: choose a command: profile, flops, memory, bench, compile-report "
                           "(see fastvit --help)")
        args._argv = argv
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except (CLIError, ValueError) as exc:
        if debug and not isinstance(exc, CLIError):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not msg.startswith("fastvit"):
            cmd = f"fastvit {argv[0]}" if argv and not argv[0].startswith("-") else "fastvit"
            msg = f"{cmd}: error: {msg}"
        print(msg, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
