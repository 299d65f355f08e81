"""The subcommands of ``fastvit``: each takes the parsed arguments and returns the exit status.

0: done; 1: a case raised (with ``--keep-going``, after recording it and finishing the rest);
a user error raises :class:`~fastvit._cli_args.CLIError` (status 2, see ``fastvit.cli.main``).
"""
from __future__ import annotations

import json
import math
import sys

from ._cli_args import CLIError, check_resolutions, portable_command
from .profiling import defaults

__all__ = ["cmd_flops", "cmd_memory", "cmd_bench", "cmd_compile_report", "cmd_profile", "cmd_list"]


# ------------------------------------------------------------------------------------------------
# Output helpers
# ------------------------------------------------------------------------------------------------
def _emit_json(obj) -> None:
    print(json.dumps(_nan_to_none(obj), indent=1, default=str, allow_nan=False))


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
    device = args.device or defaults.default_device()
    return device, args.dtype or defaults.default_dtype(device)


def _progress(total: int, enabled: bool):
    from .profiling.progress import Progress
    return Progress(total, enabled=enabled)


def _report_failures(command: str, failures: list[dict]) -> int:
    """One stderr line per case that raised (recorded under --keep-going); 1 if any, else 0."""
    for f in failures:
        print(f"fastvit {command}: case {f['case']!r} raised {f['error']}", file=sys.stderr)
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------------
# Subcommands
# ------------------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    from .vit import list_models, model_config

    if args.json:
        _emit_json([{"name": n, **model_config(n).kwargs()} for n in list_models()])
    else:
        print("\n".join(list_models()))
    return 0


def cmd_flops(args) -> int:
    from .profiling.flops import (attention_share_by_resolution, count_flops, format_attention_share_table,
                                  format_flops_table)
    from .vit import list_models, model_config

    if args.model not in list_models():
        return _cmd_flops_cnn(args)
    p = model_config(args.model).patch_size
    if args.img_size is not None:
        check_resolutions(args.model, [args.img_size], "--img-size")
    if args.resolutions:
        check_resolutions(args.model, args.resolutions, "--resolutions")
        sizes = args.resolutions
    else:  # the usual sizes, rounded to whole patches
        sizes = list(dict.fromkeys(p * max(1, round(s / p)) for s in defaults.DEFAULT_RESOLUTIONS))
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


def _cmd_flops_cnn(args) -> int:
    """``fastvit flops resnet50``: the same JSON keys as for a ViT (tokens None, attention 0)."""
    from .profiling.cnn import count_cnn_flops, published

    size = args.img_size or defaults.COMPARE_FLOPS_SIZE
    rep = count_cnn_flops(args.model, size, args.batch)
    sizes = args.resolutions or list(defaults.DEFAULT_RESOLUTIONS)
    share = []
    for s in sizes:
        r = count_cnn_flops(args.model, s, args.batch)
        share.append({"img_size": s, "tokens": None, "attention_flops": 0, "linear_flops": r["flops"],
                      "flops": r["flops"], "attention_share": 0.0, "attention_to_linear": 0.0})
    pub = published(args.model)
    if args.json:
        # the ViT report's keys, none of which a CNN has (FlopReport: prefix tokens, ViT structure)
        _emit_json({"prefix_tokens": None, "structure": None, **rep, "attention_share_by_resolution": share,
                    "published": pub})
        return 0
    print(f"{args.model} @ {size}x{size}, batch {args.batch}: {rep['params'] / 1e6:.2f} M params "
          f"(counter: {rep['counter']})")
    print(f"FLOPs = 2 x MACs: {rep['flops'] / 1e9:,.3f} GFLOPs ({rep['macs'] / 1e9:,.3f} GMACs): conv "
          f"{rep['by_component']['matmul']['conv'] / 1e9:,.3f}, linear {rep['by_component']['matmul']['linear'] / 1e9:,.3f}")
    print("Element-wise (GFLOPs): " + ", ".join(f"{k} {v / 1e9:,.3f}" for k, v in rep["by_component"]["elementwise"].items()))
    print(f"torchvision published ({pub['weights']}): {pub['gmacs']} GMACs (its 'GFLOPS'), {pub['params']:,} params")
    print("By resolution: " + ", ".join(f"{r['img_size']}px {r['flops'] / 1e9:,.2f} GFLOPs" for r in share))
    return 0


def cmd_memory(args) -> int:
    from .profiling.failures import CaseError, describe
    from .profiling.flops import vit_shape
    from .profiling.memory import fit_slopes, format_memory_table, measure_attention, measure_model
    from .profiling.speed_cases import parse_dtype

    device, dtype = _device_dtype(args)
    sizes = args.resolutions or list(defaults.DEFAULT_RESOLUTIONS)
    check_resolutions(args.model, sizes, "--resolutions")
    backends = args.backends or list(defaults.default_memory_backends(device))
    if args.depth is not None and args.scope != "model":
        raise CLIError("--depth applies to --scope model only")
    jobs = [(m, b, s) for m in args.modes for b in backends for s in sizes]
    progress = _progress(len(jobs), enabled=not args.no_progress)
    rows, failures = [], []
    for mode, backend, size in jobs:
        label = f"{args.scope} {mode} {backend} {size}px"
        progress(label)
        try:
            if args.scope == "attention":
                s = vit_shape(args.model, size)
                rows.append(measure_attention(size, patch_size=s.patch_size, num_heads=s.num_heads,
                                              head_dim=s.head_dim, num_prefix_tokens=s.num_prefix_tokens,
                                              backend=backend, mode=mode, batch=args.batch,
                                              dtype=parse_dtype(dtype), device=device,
                                              peak_breakdown=args.peak_breakdown))
            else:
                rows.append(measure_model(args.model, size, backend=backend, mode=mode, batch=args.batch,
                                          depth=args.depth, dtype=parse_dtype(dtype), device=device,
                                          peak_breakdown=args.peak_breakdown))
        except Exception as exc:  # noqa: BLE001 - a case that raises is named; --keep-going records it
            if not args.keep_going:
                raise CaseError(f"memory {label}", exc) from exc
            failures.append({"case": f"memory {label}", "error": describe(exc)})
            rows.append(dict(scope=args.scope, mode=mode, backend=backend, img_size=size,
                             tokens=vit_shape(args.model, size).tokens, peak_bytes=None, model_bytes=None,
                             available=False, reason=None, error=describe(exc)))
    progress.close()
    result = {"model": args.model, "scope": args.scope, "device": device, "dtype": dtype, "batch": args.batch,
              "labels": {"measured": ["peak_bytes", "slope"], "model": ["model_bytes", "model_slope"]},
              "rows": rows, "slopes": fit_slopes(rows), "failures": failures}
    if args.per_block:
        from .profiling.training import training_section
        result["per_block"] = training_section(args.model, backends=backends)
    if args.json:
        _emit_json(result)
    else:
        print(f"Peak memory above the inputs, {args.scope}, {args.model}, {dtype} on {device} "
              "(peak: measured; model: analytic):")
        print(format_memory_table(result))
        if args.peak_breakdown:
            from .profiling.breakdown import format_breakdown
            for r in rows:
                if r.get("breakdown"):
                    print(f"\n{r['scope']} {r['mode']} {r['backend']} {r['img_size']}px, peak breakdown (measured):")
                    print(format_breakdown(r["breakdown"]))
        if device == "cpu" and "triton" not in backends:
            print("(triton on CPU runs in Triton's interpreter, exact but slow: add --backends eager,sdpa,triton)")
    if args.per_block and not args.json:
        from .profiling.training import render_training_md
        print("\n" + "\n".join(render_training_md(result["per_block"])))
    return _report_failures("memory", failures)


def cmd_bench(args) -> int:
    from .profiling import speed

    device, dtype = _device_dtype(args)
    sizes = args.resolutions or list(defaults.bench_resolutions(device))
    check_resolutions(args.model, sizes, "--resolutions")
    total = len(args.ops) * len(args.modes) * len(sizes)
    progress = _progress(total, enabled=not args.no_progress)
    rows = speed.compare(args.ops, sizes, args.backends, args.modes, model=args.model, dtype=dtype, device=device,
                         batch=args.batch, reps=args.reps, warmup=args.warmup, progress=progress,
                         keep_going=args.keep_going)
    progress.close()
    failures = [{"case": speed.case_label(r["op"], r["mode"], r["img_size"], r["backend"]), "error": r["error"]}
                for r in rows if r.get("error")]
    if args.json:
        _emit_json({"model": args.model, "device": device, "dtype": dtype, "source": "measured",
                    "speedup": "eager median / backend median, timed interleaved in the same run", "rows": rows,
                    "failures": failures})
    else:
        print(f"Speed on {device} ({dtype}), sizes of {args.model}; all measured. vs eager = eager median / backend "
              "median, the backends of each case timed interleaved in this run.")
        print(speed.format_speed_table(rows))
    return _report_failures("bench", failures)


def cmd_compile_report(args) -> int:
    from .profiling import head_dim_report
    from .profiling.arch_limits import arch_name
    from .profiling.compile_report import CompileReportError, collect_arch_specs, format_table, report, report_pairs

    archs = [arch_name(a) for a in args.arch]
    pairs, skipped = collect_arch_specs(args.kernels, archs)
    pairs = [(s, a) for s, a in pairs if args.name is None or args.name in s.name]
    if not pairs:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise CLIError(f"no kernel configuration matches"
                       f"{f' --name {args.name!r}' if args.name else ''}{f' ({why})' if why else ''}")
    # The head-dim scaling table: a full report of the attention kernels, on architectures whose
    # matrix instruction has one shape (there the count measures work).
    scaling_archs = [a for a in archs if head_dim_report.fixed_shape_mma(a)] \
        if "attention" in args.kernels and args.name is None else []
    scaling_specs = {a: head_dim_report.specs(a) for a in scaling_archs}
    n_scaling = sum(len(v) for v in scaling_specs.values())
    print(f"compiling {len(pairs) + n_scaling} configuration(s) for {', '.join(archs)} ...", file=sys.stderr)
    try:
        reports = report_pairs(pairs)
        scaling = head_dim_report.rows([r for a, specs in scaling_specs.items() for r in report(specs, [a])])
    except CompileReportError as exc:
        print(f"fastvit compile-report: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _emit_json({"archs": archs, "reports": [r.to_dict() for r in reports], "skipped": skipped,
                    "head_dim_scaling": scaling})
    else:
        print(format_table(reports))
        for k, v in skipped.items():
            print(f"(skipped {k}: {v})")
        if scaling:
            print("\nHead-dim scaling (measured: matrix instructions per program, same tile, over head dim 64; "
                  "modelled: chunked = head dim rounded up to 16 over 64, padded = next power of two over 64)\n")
            print(head_dim_report.format_markdown(scaling))
    return 0


def cmd_profile(args) -> int:
    from .profiling import report

    device, dtype = _device_dtype(args)
    if args.resolutions:
        check_resolutions(args.model, args.resolutions, "--resolutions")
    plan = report.make_plan(args.model, device, dtype, args.resolutions, args.backends, reps=args.reps,
                            threads=args.threads, compare=args.compare, mixed=args.mixed)
    progress = _progress(report.steps(plan) + (0 if args.no_plots else 1), enabled=not args.no_progress)
    results = report.run_profile(plan, progress=progress, command=portable_command(args.argv),
                                 keep_going=args.keep_going)
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
    return _report_failures("profile", results["failures"])
