"""The ``fastvit`` command.

  fastvit profile          FLOPs, attention memory and backend speed on this machine -> fastvit-report/
  fastvit flops MODEL      analytic FLOPs of a model, by component, and the attention share by resolution
  fastvit memory           peak memory of attention (or the model) by resolution, measured and modelled
  fastvit bench            speed of the backends side by side, with ratios against eager
  fastvit compile-report   registers, spills, shared memory, tensor-core instructions, occupancy of
                           the Triton kernels compiled for sm_80 / sm_90 (no GPU needed)
  fastvit list             the registered model names

Every subcommand takes ``--json`` (the result on stdout, progress and notes on stderr). Bad
arguments give one line on stderr and exit status 2; a case that raises, one line naming it and
exit status 1 (``--keep-going`` records it and finishes first). ``FASTVIT_DEBUG=1`` shows
tracebacks. This is the only place in fastvit that sets ``TRITON_INTERPRET`` (see
:func:`choose_triton_mode`); the subcommands live in ``_cli_commands.py``, the argument types in
``_cli_args.py``.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import _cli_args as A
from ._cli_commands import cmd_bench, cmd_compile_report, cmd_flops, cmd_list, cmd_memory, cmd_profile
from .profiling import defaults
from .profiling.compile_report import KERNEL_MODULES

__all__ = ["main", "build_parser", "choose_triton_mode"]

# Subcommands that may run the triton backend on a CPU, which needs Triton's interpreter.
_INTERPRETED_COMMANDS = ("profile", "memory")
INTERPRETER_NOTE = ("On a CPU, `fastvit profile` and `fastvit memory` set TRITON_INTERPRET=1 before Triton is "
                    "imported (unless TRITON_INTERPRET is already set), so the triton backend runs in Triton's CPU "
                    "interpreter: exact memory, meaningless speed (never timed there).")


def _csv(values) -> str:
    return ",".join(map(str, values))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .profiling import speed_cases as sc

    parser = A.Parser(prog="fastvit", description="Profile and benchmark fastvit's Vision Transformer kernels.",
                      epilog=INTERPRETER_NOTE)
    parser.add_argument("--version", action="version", version=f"fastvit {__version__}",
                        help="print fastvit's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    model_default = defaults.DEFAULT_MODEL

    def common(p, *, device=True, model=True, keep_going=False, progress=False):
        p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        if device:
            p.add_argument("--threads", type=A.positive_int, default=None,
                           help="torch CPU threads (torch.set_num_threads; default: torch's own choice)")
            p.add_argument("--device", type=A.device, default=None, help="cpu or cuda[:N] (default: cuda if available)")
            p.add_argument("--dtype", type=A.dtype, default=None,
                           help="fp32, fp16 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
        if model:
            p.add_argument("--model", type=A.model, default=model_default,
                           help=f"a registered model, for its sizes (default {model_default}; `fastvit list` "
                                "prints them all)")
        if keep_going:
            p.add_argument("--keep-going", action="store_true",
                           help="when a case raises, record it (its row says 'failed') and go on; the exit status "
                                "is still 1 at the end (default: stop at the first, naming it)")
        if progress:
            p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    p = sub.add_parser("profile", help="FLOPs, attention memory and backend speed -> a report folder",
                       description="Measure and model what the kernels buy on this machine; writes report.md, "
                                   "results.json and PNG plots. On a CPU it runs fewer, smaller cases and says so.",
                       epilog=INTERPRETER_NOTE)
    common(p, keep_going=True, progress=True)
    p.add_argument("--resolutions", type=A.int_list, default=None,
                   help="image sizes for the memory table; speed is compared at the smallest and the largest "
                        f"(default {_csv(defaults.DEFAULT_RESOLUTIONS)})")
    p.add_argument("--backends", type=A.choice_list(sc.SPEED_BACKENDS), default=None,
                   help=f"backends to measure (default all: {_csv(sc.SPEED_BACKENDS)}; eager is always included)")
    p.add_argument("--reps", type=A.positive_int, default=None, help="timed rounds per case (default: from a time "
                   "budget, 3 to 20 on CPU)")
    p.add_argument("--out", default="fastvit-report", help="output folder (default fastvit-report)")
    p.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    p.add_argument("--compare", type=A.cnn_model, default=None, metavar="CNN",
                   help="add a 'ViT against a CNN' section for this torchvision classification model (e.g. "
                        "resnet50): parameters and FLOPs at 224px, whole-model peak memory against resolution "
                        f"({_csv(defaults.COMPARE_RESOLUTIONS['cuda'])}px on CUDA, "
                        f"{_csv(defaults.COMPARE_RESOLUTIONS['cpu'])}px on CPU) and speed")
    mix = defaults.MIXED
    p.add_argument("--mixed", action="store_true",
                   help="add a 'Mixed resolution' section: a seeded mix of image sizes run packed (model(list)), "
                        "padded to the longest and one image at a time; FLOPs (model), peak memory and speed "
                        f"(measured). The mix: {mix['cuda']['images']} images of {mix['cuda']['min_side']}-"
                        f"{mix['cuda']['max_side']}px on CUDA, {mix['cpu']['images']} of {mix['cpu']['min_side']}-"
                        f"{mix['cpu']['max_side']}px on {mix['cpu']['model']} on CPU")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("flops", help="analytic FLOPs of a model by component",
                       description="Analytic FLOPs (= 2 x MACs, matrix products; element-wise work apart) of one "
                                   "forward pass, and the attention share across resolutions.")
    p.add_argument("model", type=A.flops_model, nargs="?", default=model_default, metavar="MODEL",
                   help=f"a registered model (default {model_default}; `fastvit list` prints them all), or a "
                        "torchvision classification model such as resnet50 (Conv/Linear MACs counted analytically)")
    p.add_argument("--img-size", type=A.positive_int, default=None, help="image size (default: the model's)")
    p.add_argument("--batch", type=A.positive_int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--resolutions", type=A.int_list, default=None,
                   help=f"sizes of the attention-share table (default {_csv(defaults.DEFAULT_RESOLUTIONS)}, "
                        "rounded to the patch size)")
    common(p, device=False, model=False)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("memory", help="peak memory by resolution, measured and modelled",
                       description="Peak memory above the inputs of one attention call (or the whole model), "
                                   "measured, beside the analytic model, and the log-log slopes against tokens.",
                       epilog=INTERPRETER_NOTE)
    common(p, keep_going=True, progress=True)
    p.add_argument("--resolutions", type=A.int_list, default=None,
                   help=f"image sizes, multiples of the patch size (default {_csv(defaults.DEFAULT_RESOLUTIONS)})")
    p.add_argument("--backends", type=A.choice_list(("eager", "sdpa", "triton")), default=None,
                   help="default eager,sdpa,triton on CUDA; eager,sdpa on CPU (triton runs in Triton's "
                        "interpreter there: exact but slow; ask for it explicitly)")
    p.add_argument("--modes", type=A.choice_list(("inference", "training")), default=["inference", "training"],
                   help="inference (forward under no_grad) and/or training (forward + backward); default both")
    p.add_argument("--scope", choices=("attention", "model"), default="attention",
                   help="attention: one attention call with the model's heads; model: the whole model "
                        "(default attention)")
    p.add_argument("--depth", type=A.positive_int, default=None,
                   help="blocks of the model (--scope model only; default: the model's depth)")
    p.add_argument("--batch", type=A.positive_int, default=1, help="images per call (default 1)")
    p.add_argument("--peak-breakdown", action="store_true",
                   help="also list what is alive at the measured peak, grouped by op and (--scope model) module "
                        "path, largest first, split into parameter gradients, saved activations and transients "
                        "(measured by the tensor tracker, on CUDA too)")
    p.add_argument("--per-block", action="store_true",
                   help="also print what training keeps per token per block on each backend at bf16, batch 32, "
                        "224 and 1024 px (model), one block's backward launches (measured, on --backends) and "
                        "the MLP backward's bytes moved (model), and the bytes fusing RoPE saves (model)")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("bench", help="backend speed side by side, ratios against eager",
                       description="Time the backends of each (op, mode, resolution) interleaved and report "
                                   "median times and speed-ups against eager measured in the same run.")
    common(p, keep_going=True, progress=True)
    p.add_argument("--ops", type=A.choice_list(sc.OPS), default=list(defaults.BENCH_OPS),
                   help=f"ops to time, a subset of {_csv(sc.OPS)} (default {_csv(defaults.BENCH_OPS)})")
    p.add_argument("--resolutions", type=A.int_list, default=None,
                   help=f"image sizes (default {_csv(defaults.BENCH_RESOLUTIONS['cpu'])} on CPU, "
                        f"{_csv(defaults.BENCH_RESOLUTIONS['cuda'])} on CUDA)")
    p.add_argument("--backends", type=A.choice_list(sc.SPEED_BACKENDS), default=list(sc.SPEED_BACKENDS),
                   help=f"backends to compare (default all: {_csv(sc.SPEED_BACKENDS)}; eager is always timed as "
                        "the baseline; triton only on CUDA)")
    p.add_argument("--modes", type=A.choice_list(sc.MODES), default=list(sc.MODES),
                   help="fwd (forward under no_grad) and/or fwdbwd (forward + backward); default both")
    p.add_argument("--batch", type=A.positive_int, default=None, help="default 1 on CPU, ~8192/tokens on CUDA")
    p.add_argument("--reps", type=A.positive_int, default=None, help="timed rounds (default: from a time budget)")
    p.add_argument("--warmup", type=A.positive_int, default=1, help="untimed calls first (default 1)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compile-report", help="resources of the Triton kernels compiled for GPUs (no GPU needed)",
                       description="Compile every kernel configuration for the given architectures and report "
                                   "registers, spills, shared memory, HMMA/HGMMA counts and occupancy. All of "
                                   "them take many minutes on a small CPU the first time (Triton's cache makes "
                                   "reruns fast); --kernels and --name narrow the set.")
    p.add_argument("--arch", type=A.archs, default=[80, 90], help="e.g. sm_80,sm_90 (default)")
    p.add_argument("--kernels", type=A.choice_list(KERNEL_MODULES), default=list(KERNEL_MODULES),
                   help=f"kernel modules (default all: {','.join(KERNEL_MODULES)})")
    p.add_argument("--name", default=None, help="only configurations whose name contains this text")
    common(p, device=False, model=False)
    p.set_defaults(func=cmd_compile_report)

    p = sub.add_parser("list", help="the registered model names",
                       description="Print the names `--model` and `fastvit flops MODEL` accept, one a line.")
    common(p, device=False, model=False)
    p.set_defaults(func=cmd_list)
    return parser


def choose_triton_mode(args, environ=None, modules=None) -> str | None:
    """Before anything imports triton: on a CPU, choose Triton's interpreter for the subcommands
    that may run the triton backend (``TRITON_INTERPRET=1``), unless the user set
    ``TRITON_INTERPRET`` already. Returns what was decided, for ``--help`` readers and tests:
    ``"set"``, or None when nothing was done. Library code never does this."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if args.command not in _INTERPRETED_COMMANDS or "TRITON_INTERPRET" in environ:
        return None
    device = args.device or defaults.default_device()
    if not device.startswith("cpu") or "triton" in modules:
        return None  # on CUDA the real compiler; once triton is imported, too late to choose
    environ["TRITON_INTERPRET"] = "1"
    return "set"


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from .profiling.failures import CaseError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("FASTVIT_DEBUG", "") not in ("", "0")
    command = f"fastvit {argv[0]}" if argv and not argv[0].startswith("-") else "fastvit"
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise A.CLIError("fastvit: error: choose a command: profile, flops, memory, bench, compile-report, list "
                             "(see fastvit --help)")
        choose_triton_mode(args)
        args.argv = argv
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except CaseError as exc:
        if debug:
            raise
        hint = " (--keep-going records failures and finishes the run)" if "--keep-going" not in argv else ""
        print(f"{command}: {exc}{hint}", file=sys.stderr)
        return 1
    except (A.CLIError, ValueError) as exc:
        if debug and not isinstance(exc, A.CLIError):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not msg.startswith("fastvit"):
            msg = f"{command}: error: {msg}"
        print(msg, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fastvit list | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
