"""The "Mixed resolution" section of ``report.md`` (``fastvit profile --mixed``)."""
from __future__ import annotations

from .markdown import md_table as _md_table, mib

__all__ = ["mixed_md", "headline"]

_WAY = {"packed": "packed (`model(list)`)", "padded": "padded to the longest", "one_at_a_time": "one at a time"}


def _mib(x) -> str:
    return mib(x, digits=3)


def _why(r) -> str:
    return f"failed: {r['error']}" if r.get("error") else f"not run: {r['reason']}"


def headline(m: dict) -> str:
    """One sentence: padding's share of the padded batch's FLOPs (model) and of its whole-model peak
    memory (measured; on sdpa when it ran, else the first backend), per mode."""
    f = m["flops"]
    out = (f"For this mix, padding is **{f['padding_share']:.0%} of the padded batch's FLOPs** (model; "
           f"{f['padding_token_share']:.0%} of its tokens)")
    mem = [s for s in m["memory"]["padding_shares"] if s["scope"] == "model"]
    backend = "sdpa" if any(s["backend"] == "sdpa" for s in mem) else (mem[0]["backend"] if mem else None)
    mem = [s for s in mem if s["backend"] == backend]
    if mem:
        out += (" and **" + " and ".join(f"{s['padding_share']:.0%} of its whole-model peak memory in {s['mode']}"
                                         for s in mem) + f"** (measured on {backend}, against the padded proxy; every "
                "backend and the attention op below)")
    return out + "."


def mixed_md(results: dict) -> list[str]:
    m = results.get("mixed")
    if not m:
        return []
    spec, sizes, f = m["spec"], m["sizes"], m["flops"]
    per = f["per_image"]
    out = ["## Mixed resolution: packed against padded and one image at a time", "",
           f"The mix: {len(sizes)} images on **{m['model']}**, sides {spec['min_side']}-{spec['max_side']}px in steps "
           f"of {spec['step']} (height drawn first, then width within aspect ratios {spec['min_aspect']:g} to "
           f"{spec['max_aspect']:g}), seed {spec['seed']}: " +
           ", ".join(f"{p['img_size'][0]}x{p['img_size'][1]} ({p['tokens']})" for p in per) +
           " (tokens in brackets).", "", headline(m), "",
           "Three ways: **packed** = `model(list_of_images)`, tokens packed without padding, variable-length "
           "attention per image; **padded** = every image at the longest sequence, as timm pads and masks; its "
           "memory and speed are measured on a *proxy*, a batch of all the images at the size of the one with the "
           "most tokens (a padded batch without its key-padding mask); **one at a time** = `model(image[None])` for "
           "each image.", ""]
    ways = f["ways"]
    rows = [[_WAY[w], ways[w]["tokens"], f"{ways[w]['flops'] / 1e9:,.3f}", f"{ways[w]['attention_flops'] / 1e9:,.3f}",
             f"{ways[w]['flops'] / ways['packed']['flops']:.2f}x"] for w in ("packed", "padded", "one_at_a_time")]
    out += ["### FLOPs (model: analytic)", "",
            "FLOPs = 2 x MACs, matrix products, from `fastvit.profiling.flops` per image. One at a time runs the "
            "same products as packed, image by image: the same FLOPs.", "",
            _md_table(["way", "tokens", "GFLOPs (model)", "attention GFLOPs (model)", "vs packed"], rows, "lrrrr"), ""]
    return out + _memory_md(results, m) + _speed_md(m)


def _memory_md(results, m) -> list[str]:
    mem = m["memory"]
    out = ["### Peak memory (measured)", "",
           f"{results['plan']['dtype']} on {results['plan']['device']}, by the tensor tracker "
           "(`torch.cuda.max_memory_allocated` on CUDA). Scope: " + mem["scope"]["model"] + "; " +
           mem["scope"]["attention"] + " (packed: one `varlen_qkv_attention` call on the mix's packed qkv). "
           "Inference = forward under no_grad; training = forward + backward of the summed logits (attention: of "
           "the output). One at a time: the largest peak over the images. The analytic memory model of the dense "
           "runs is beside them (**model**); packed has none (\"-\").", ""]
    rows = []
    for r in mem["rows"]:
        if not r.get("available", True):
            rows.append([r["scope"], r["mode"], r["backend"], _WAY[r["way"]], "-", "n/a", "-", _why(r)])
            continue
        note = f"largest: {'x'.join(map(str, r['largest_image']))}" if r.get("largest_image") else ""
        rows.append([r["scope"], r["mode"], r["backend"], _WAY[r["way"]], r.get("tokens", "-"), _mib(r["peak_bytes"]),
                     _mib(r.get("model_bytes")), note])
    out += [_md_table(["scope", "mode", "backend", "way", "tokens", "peak MiB (measured)", "MiB (model)", "note"], rows,
                      "llllrrrl"), ""]
    srows = [[s["scope"], s["mode"], s["backend"], f"{s['padding_share']:.1%}", f"{s['padded_to_packed']:.2f}x"]
             for s in mem["padding_shares"]]
    out += ["Padding's share of the padded proxy's peak (1 - packed / padded, measured; negative: packed held more):",
            "", _md_table(["scope", "mode", "backend", "padding share (measured)", "padded / packed"], srows, "lllrr"),
            ""]
    return out


def _speed_md(m) -> list[str]:
    s = m["speed"]
    out = ["### Speed (measured)", "",
           f"Median time for the whole mix, {s['threads']} torch thread(s) on a CPU; {s['ratio']}. `fwd` = forward "
           "under no_grad; `fwdbwd` = forward + backward of the summed logits.", ""]
    rows, skipped = [], {}
    for r in s["rows"]:
        if not r.get("available", True):
            why = f"failed: {r['error']}" if r.get("error") else r["reason"]
            skipped.setdefault(f"{r['backend']}: {why}", []).append(f"{r['mode']} {r['way'].replace('_', ' ')}")
            continue
        rows.append([r["mode"], r["backend"], _WAY[r["way"]], f"{r['median_ms']:.1f}", f"{r['images_per_s']:.1f}",
                     f"{r['time_vs_packed']:.2f}x", r["reps"]])
    out += [_md_table(["mode", "backend", "way", "median ms", "images/s", "time vs packed", "reps"], rows, "lllrrrr"),
            ""]
    if skipped:
        out += ["Not run:", ""] + [f"- {k} ({', '.join(v)})" for k, v in skipped.items()] + [""]
    return out
