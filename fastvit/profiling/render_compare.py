"""The "ViT against a CNN" section of ``report.md`` (``fastvit profile --compare CNN``)."""
from __future__ import annotations

from .markdown import md_table as _md_table, mib as _mib, plot_ref as _plot_ref

__all__ = ["compare_md"]


def _m(x) -> str:
    return f"{x / 1e6:,.2f}M"


def compare_md(results: dict) -> list[str]:
    c = results.get("compare")
    if not c:
        return []
    f = c["flops"]
    vit, cnn, pub = f["vit"], f["cnn"], f["cnn_published"]
    out = [f"## ViT against a CNN: {c['vit']} and {c['cnn']}", "",
           f"### Parameters and FLOPs at {f['img_size']}px (model: analytic)", "",
           "FLOPs = 2 x MACs, matrix products only (convolutions and Linear layers for the CNN, counted by "
           f"{cnn['counter']}). torchvision publishes the CNN's `_ops` as \"GFLOPS\", but that figure counts "
           "multiply-accumulates: it sits beside our GMACs.", ""]
    rows = [[c["vit"], _m(vit["params"]), f"{vit['macs'] / 1e9:,.3f}", f"{vit['flops'] / 1e9:,.2f}", "-"],
            [c["cnn"], _m(cnn["params"]), f"{cnn['macs'] / 1e9:,.3f}", f"{cnn['flops'] / 1e9:,.2f}",
             f"{pub['params'] / 1e6:,.2f}M params, {pub['gmacs']} GMACs ({pub['weights']})"]]
    out += [_md_table(["network", "parameters", "GMACs (model)", "GFLOPs (model)", "torchvision published"], rows,
                      "lrrrl"), ""]
    chk = f["cnn_vs_published"]
    out += [f"{c['cnn']} against torchvision's published figures: GMACs x{chk['gmacs_ratio']:.4f}, parameters "
            f"x{chk['params_ratio']:.4f}. {c['vit']} has **{f['vit_to_cnn_params']:.1f}x** the parameters and "
            f"**{f['vit_to_cnn_flops']:.1f}x** the FLOPs of {c['cnn']}.", ""]
    out += _memory_md(results, c) + _speed_md(c)
    return out


def _memory_md(results, c) -> list[str]:
    m = c["memory"]
    out = ["### Whole-model peak memory against resolution (measured)", "",
           f"Scope: {m['scope']}; {results['plan']['dtype']} on {results['plan']['device']}, measured by the same "
           "tracker for both (`torch.cuda.max_memory_allocated` on CUDA). Inference = forward under no_grad in eval "
           "mode; training = forward + backward of the summed logits in train mode (parameter gradients included). "
           "The ViT's analytic model is beside its rows; the CNN has none (\"-\").", ""]
    rows = []
    for r in m["rows"]:
        name = r["network"] + ("" if r["network"] == c["cnn"] else f" ({r['backend']})")
        if not r.get("available", True):
            why = f"failed: {r['error']}" if r.get("error") else f"not run: {r['reason']}"
            rows.append([r["mode"], name, r["img_size"], "n/a", "-", why])
            continue
        rows.append([r["mode"], name, r["img_size"], _mib(r["peak_bytes"]), _mib(r.get("model_bytes")), ""])
    out += [_md_table(["mode", "network", "img px", "peak MiB (measured)", "MiB (model)", "note"], rows, "llrrrl"), ""]
    srows = [[s["mode"], s["network"] + ("" if s["network"] == c["cnn"] else f" ({s['backend']})"), s["points"],
              "-" if s["slope"] is None else f"{s['slope']:.2f}"] for s in m["slopes"]]
    out += ["Log-log slope of the measured peak against pixels (1: grows as the pixel count; 2: as its square):", "",
            _md_table(["mode", "network", "points", "slope (measured)"], srows, "llrr"), ""]
    return out + _plot_ref(results, "compare", "Whole-model peak memory against pixels, log-log (measured)")


def _speed_md(c) -> list[str]:
    s = c["speed"]
    out = ["### Speed (measured)", "",
           f"Median time per call, batch as shown, {s['threads']} torch thread(s) on a CPU; {s['ratio']}. `fwd` = "
           "forward under no_grad; `fwdbwd` = forward + backward.", ""]
    rows = []
    for r in s["rows"]:
        name = r["network"] + ("" if r["network"] == c["cnn"] else f" ({r['backend']})")
        if not r.get("available", True):
            why = f"failed: {r['error']}" if r.get("error") else f"not run: {r['reason']}"
            rows.append([r["mode"], r["img_size"], name, "-", "-", "-", why])
            continue
        rows.append([r["mode"], r["img_size"], name, f"{r['median_ms']:.1f}", f"{r['images_per_s']:.2f}",
                     f"{r['time_vs_cnn']:.2f}x", r["reps"]])
    return out + [_md_table(["mode", "img px", "network", "median ms", "images/s", "time vs CNN", "reps"], rows,
                            "lrlrrrr"), ""]


