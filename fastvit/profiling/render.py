"""``report.md`` from a results dict (see :mod:`fastvit.profiling.run`).

Measured figures and modelled ones sit in different columns or tables, each labelled; roofline
predictions for data-centre GPUs have their own table, never beside measurements. A row that did
not run says why ("not run: <stated reason>"); one whose case raised says "failed: <error>".
"""
from __future__ import annotations

from .markdown import MIB, PLOT_FILES, md_table as _md_table, mib as _mib, plot_ref as _plot_ref
from .render_compare import compare_md
from .render_mixed import mixed_md
from .training import render_training_md

__all__ = ["render_markdown", "PLOT_FILES", "MIB"]

def _g(x) -> str:
    return f"{x / 1e9:,.2f}"


def render_markdown(results: dict) -> str:
    """The whole ``report.md``: header and notes, failures (if any), FLOPs, memory, speed,
    autotuner picks (if any), roofline predictions."""
    out = _header_md(results) + _failures_md(results) + _flops_md(results) + _memory_md(results)
    if results.get("training_memory"):
        out += render_training_md(results["training_memory"])

    out += _speed_md(results) + compare_md(results) + mixed_md(results) + _autotune_md(results)
    out += _roofline_md(results)
    out += ["Raw numbers: `results.json` (same labels: `source: measured` or `source: model`).", ""]
    return "\n".join(out)


def _header_md(results: dict) -> list[str]:
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
    return out


def _failures_md(results: dict) -> list[str]:
    failures = results.get("failures") or []
    if not failures:
        return []
    out = [f"## Failures ({len(failures)})", "", "These cases raised (recorded with --keep-going); their rows say "
           "\"failed\" below.", ""]
    return out + [f"- `{f['case']}`: {f['error']}" for f in failures] + [""]


def _flops_md(results: dict) -> list[str]:
    f = results["flops"]["report"]
    img = f["img_size"] if isinstance(f["img_size"], int) else "x".join(map(str, f["img_size"]))
    out = [f"## FLOPs (model: analytic count) of {f['model']} at {img}px", "",
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
    return out


def _memory_md(results: dict) -> list[str]:
    plan, m = results["plan"], results["memory"]
    out = ["## Attention peak memory (measured, with the model beside it)", "",
            f"Scope: {m['scope']}; {plan['dtype']} on {plan['device']}. Peak bytes allocated above "
            "the inputs, **measured** (`torch.cuda.max_memory_allocated` on CUDA, a tensor tracker on CPU), and "
            "the analytic **model** of `fastvit.profiling.memory`. Inference = forward under no_grad; training = "
            "forward + backward.", ""]
    rows = []
    for r in m["rows"]:
        if not r.get("available", True):
            why = f"failed: {r['error']}" if r.get("error") else f"not run: {r['reason']}"
            rows.append([r["mode"], r["backend"], r["img_size"], r["tokens"], "n/a", _mib(r["model_bytes"]), why])
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
    return out


def _speed_md(results: dict) -> list[str]:
    plan, s = results["plan"], results["speed"]
    threads = f", {s['threads']} torch thread{'s' if s['threads'] != 1 else ''}" if s.get("threads") else ""
    out = ["## Speed (measured)", "",
            f"Median time per call on {plan['device']} ({plan['dtype']}{threads}); speed-up = eager median / backend "
            "median, the backends of each row group timed interleaved, round by round, in this run. `fwd` = forward "
            "under no_grad, `fwdbwd` = forward + backward. TFLOP/s counts matrix-product FLOPs (backward = 2 x "
            "forward); GB/s the minimum LayerNorm traffic.", ""]
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
            why = f"failed: {r['error']}" if r.get("error") else r["reason"]
            reasons.setdefault(f"{r['backend']}: {why}", []).append(f"{r['op']} {r['mode']} {r['img_size']}px")
        out += ["Not run:", ""]
        out += [f"- {k} ({', '.join(v)})" for k, v in reasons.items()]
        out += [""]
    out += _plot_ref(results, "speedup", "Speed-up against eager (measured)")
    return out


def _autotune_md(results: dict) -> list[str]:
    picks = (results.get("autotune") or {}).get("picks") or []
    if not picks:
        return []
    out = ["## Autotuner picks (measured)", "", "The configuration each autotuned kernel chose in this run, per "
           "autotune key.", ""]
    rows = [[p["kernel"], ", ".join(map(str, p["key"])), ", ".join(f"{k}={v}" for k, v in p["config"].items())]
            for p in picks]
    return out + [_md_table(["kernel", "key", "configuration"], rows, "lll"), ""]


def _roofline_md(results: dict) -> list[str]:
    rf = results["roofline"]
    out = ["## Roofline predictions for GPUs (model, not measured)", "",
           f"{rf['note']}. {rf['dtype']}, batch as the GPU benchmarks use it. `eager` counts the unfused kernels "
           "(the N x N matrix through DRAM; a separate residual add, bias and GELU); `sdpa` what timm and "
           "transformers run (fused attention; add, LayerNorm, GEMM + bias and GELU apart); `compile` "
           "torch.compile's default fusions as modelled (add folded into LayerNorm; GELU still its own "
           "kernel); `fused` fastvit's kernels. Speed-ups are fused over each.", ""]
    rows = [[r["gpu"], r["op"], r["mode"], r["img_size"], r["batch"], f"{r['eager_us']:,.1f} ({r['eager_bound']})",
             f"{r['sdpa_us']:,.1f}", f"{r['compile_us']:,.1f}", f"{r['fused_us']:,.1f} ({r['fused_bound']})",
             f"{r['predicted_speedup']:.2f}x", f"{r['speedup_vs_sdpa']:.2f}x", f"{r['speedup_vs_compile']:.2f}x"]
            for r in rf["rows"]]
    out += [_md_table(["GPU", "op", "mode", "img px", "batch", "eager us", "sdpa us", "compile us", "fused us",
                       "vs eager", "vs sdpa", "vs compile"], rows, "lllrrrrrrrrr"), ""]
    return out
