"""``fastvit profile --mixed``: images of mixed sizes, packed against padded and one at a time.

A seeded mix of image sizes (``defaults.MIXED``; the sizes are drawn when the plan is made and
recorded in it) is run three ways:

* ``packed``: ``model(list_of_images)``, every image's tokens in one sequence without padding,
  each image attending to itself (``fastvit.ops.varlen_qkv_attention``);
* ``padded``: every image at the longest sequence, as timm pads and masks. FLOPs (model) count
  every image at the longest image's token count. Memory and speed (measured) run a *proxy*: a
  batch of all the images at the size of the one with the most tokens, which is a padded batch
  without its key-padding mask (our attention takes no mask; a masked call holds the mask too);
* ``one_at_a_time``: each image alone, ``model(image[None])``. Its FLOPs are the packed FLOPs (the
  same products, image by image); its peak memory is the largest over the images.

Parts, each labelled: ``flops`` (model: :func:`fastvit.profiling.flops.count_flops` per image),
``memory`` (measured: whole model and the attention op, by the tracker or CUDA's allocator; for
padded and one-at-a-time the analytic memory model of those dense runs beside, labelled model;
none for packed), ``speed`` (measured, the three ways and the backends timed interleaved).
"""
from __future__ import annotations

import contextlib
import copy
import random

import torch

from . import speed
from .failures import CaseError, describe

__all__ = ["draw_sizes", "mixed_flops", "measure_packed_model", "measure_packed_attention", "padding_shares",
           "run_mixed", "WAYS"]

WAYS = ("packed", "padded", "one_at_a_time")


def draw_sizes(spec: dict, patch: int) -> list[list[int]]:
    """``spec["images"]`` (height, width) pairs, seeded by ``spec["seed"]``: the height uniform over
    the sides ``min_side..max_side`` in steps of ``step`` (each rounded to a multiple of ``patch``),
    then the width uniform over the sides keeping width / height within the aspect ratios."""
    sides = sorted({patch * max(1, round(s / patch))
                    for s in range(spec["min_side"], spec["max_side"] + 1, spec["step"])})
    rng = random.Random(spec["seed"])
    sizes = []
    for _ in range(spec["images"]):
        h = rng.choice(sides)
        widths = [w for w in sides if spec["min_aspect"] <= w / h <= spec["max_aspect"]]
        sizes.append([h, rng.choice(widths)])
    return sizes


def _longest(sizes) -> int:
    """Index of the image with the most pixels (so the most tokens), first on ties."""
    return max(range(len(sizes)), key=lambda i: (sizes[i][0] * sizes[i][1], -i))


def mixed_flops(model, sizes) -> dict:
    """Analytic FLOPs (FLOPs = 2 x MACs, matrix products) of the mix three ways: ``packed`` = the sum of
    each image's forward; ``padded`` = every image at the longest image's token count;
    ``one_at_a_time`` = ``packed`` (the same products, run image by image)."""
    from .flops import count_flops

    per = [count_flops(model, tuple(s)) for s in sizes]
    i = _longest(sizes)
    pad = count_flops(model, tuple(sizes[i]), batch=len(sizes))
    packed = {"flops": sum(r.flops for r in per), "attention_flops": sum(r.attention_flops for r in per),
              "tokens": sum(r.tokens for r in per)}
    padded = {"flops": pad.flops, "attention_flops": pad.attention_flops, "tokens": len(sizes) * pad.tokens}
    return {"source": "model", "per_image": [{"img_size": list(s), "tokens": r.tokens, "flops": r.flops,
                                              "attention_flops": r.attention_flops} for s, r in zip(sizes, per)],
            "ways": {"packed": packed, "padded": padded, "one_at_a_time": dict(packed)},
            "note": "one_at_a_time runs the same matrix products as packed, image by image: the same FLOPs",
            "padding_share": 1 - packed["flops"] / padded["flops"],
            "padding_token_share": 1 - packed["tokens"] / padded["tokens"]}


@contextlib.contextmanager
def _as(model, backend: str, training: bool):
    """``model`` on ``backend`` in train (or eval) mode, parameter gradients cleared; all restored."""
    prev, was, params = model.backend, model.training, list(model.parameters())
    grads = [p.grad for p in params]
    model.set_backend(backend)
    model.train(training)
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        model.train(was)
        model.set_backend(prev)


def _step(model, x, training: bool):
    """One forward (no_grad) or forward + backward of the summed logits, as ``measure_model`` runs."""
    if training:
        model(x).sum().backward()
        return None
    with torch.no_grad():
        return model(x)


def measure_packed_model(model, images: list, *, backend: str, mode: str, device) -> dict:
    """Peak memory above parameters and images of ``model(images)`` (a list: packed, no padding)."""
    from .memory import _warm_up
    from .tracker import measure_peak

    device = torch.device(device)
    training = mode == "training"
    with _as(model, backend, training):
        _warm_up(lambda: _step(model, images, training), device, backend)
        for p in model.parameters():
            p.grad = None
        m = measure_peak(_step, model, images, training, device=device, baseline=(model, images))
    return dict(peak_bytes=m.peak_bytes, seconds=round(m.seconds, 4), method=m.method, baseline_bytes=m.baseline_bytes)


def measure_packed_attention(lengths, num_heads: int, head_dim: int, *, backend: str, mode: str, dtype, device) -> dict:
    """Peak memory above its inputs of one ``varlen_qkv_attention`` call on packed qkv (T, 3*H*D) of
    sequences of ``lengths``; training: forward + backward with qkv requiring grad."""
    from .. import ops
    from .memory import _warm_up
    from .tracker import measure_peak

    device = torch.device(device)
    training = mode == "training"
    T = sum(lengths)
    cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32, device=device)
    qkv = torch.randn(T, 3 * num_heads * head_dim, device=device, dtype=dtype, requires_grad=training)
    grad = torch.randn(T, num_heads * head_dim, device=device, dtype=dtype) if training else None

    def run():
        if training:
            out = ops.varlen_qkv_attention(qkv, num_heads, cu, max(lengths), backend=backend)
            out.backward(grad)
            return out
        with torch.no_grad():
            return ops.varlen_qkv_attention(qkv, num_heads, cu, max(lengths), backend=backend)

    _warm_up(run, device, backend)
    qkv.grad = None
    m = measure_peak(run, device=device, baseline=(qkv, grad, cu))
    return dict(peak_bytes=m.peak_bytes, seconds=round(m.seconds, 4), method=m.method, baseline_bytes=m.baseline_bytes)


def _images(model, sizes, dtype, device, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    c = model.patch_embed.proj.in_channels
    return [torch.randn(c, h, w, generator=g, dtype=dtype).to(device) for h, w in sizes]


def _memory_row(scope, way, mode, backend, model, mx, imgs, dtype, device, not_run) -> dict:
    """One measured row: ``peak_bytes`` of ``way``; for one_at_a_time the largest over the images."""
    from .flops import vit_shape
    from .memory import measure_attention, measure_model

    sizes, n = mx["sizes"], len(mx["sizes"])
    big = sizes[_longest(sizes)]
    row = dict(scope=scope, way=way, mode=mode, backend=backend, images=n, source="measured", model_bytes=None,
               available=True, reason=None)
    if not_run:
        return {**row, "available": False, "reason": not_run, "peak_bytes": None}
    s = vit_shape(model)
    if way == "packed":
        lengths = [vit_shape(model, tuple(hw)).tokens for hw in sizes]
        row["tokens"] = sum(lengths)
        if scope == "model":
            return {**row, **measure_packed_model(model, imgs, backend=backend, mode=mode, device=device)}
        return {**row, **measure_packed_attention(lengths, s.num_heads, s.head_dim, backend=backend, mode=mode,
                                                  dtype=dtype, device=device)}
    cases = [(tuple(big), n)] if way == "padded" else [(tuple(hw), 1) for hw in sizes]
    measured = []
    for size, batch in cases:
        if scope == "model":
            r = measure_model(model, size, backend=backend, mode=mode, batch=batch, dtype=dtype, device=device)
        else:
            r = measure_attention(size, patch_size=s.patch_size, num_heads=s.num_heads, head_dim=s.head_dim,
                                  backend=backend, mode=mode, batch=batch, dtype=dtype, device=device)
        if not r["available"]:
            return {**row, "available": False, "reason": r["reason"], "peak_bytes": None}
        measured.append(r)
    top = max(measured, key=lambda r: r["peak_bytes"])
    row.update(peak_bytes=top["peak_bytes"], model_bytes=top["model_bytes"], method=top["method"],
               seconds=round(sum(r["seconds"] for r in measured), 4), tokens=top["tokens"] * top["batch"],
               img_size=top["img_size"], batch=top["batch"])
    if way == "one_at_a_time":
        row["largest_image"] = cases[measured.index(top)][0]
    return row


def _memory(plan, mx, model, imgs, progress, keep_going) -> dict:
    from .defaults import CPU_MIXED_MODEL_REASON
    from .memory import triton_unavailable

    dtype, cpu = speed.parse_dtype(plan.dtype), not str(plan.device).startswith("cuda")
    rows = []
    for scope, backends in (("model", mx["memory_backends"]), ("attention", mx["attention_backends"])):
        for mode in ("inference", "training"):
            for backend in backends:
                for way in WAYS:
                    label = f"mixed memory {scope} {mode} {backend} {way}"
                    progress(label)
                    not_run = CPU_MIXED_MODEL_REASON if cpu and scope == "model" and backend == "triton" else None
                    if backend == "triton" and not not_run:
                        not_run = triton_unavailable(plan.device)
                    try:
                        rows.append(_memory_row(scope, way, mode, backend, model, mx, imgs, dtype, plan.device,
                                                not_run))
                    except Exception as exc:  # noqa: BLE001 - re-raised as CaseError unless keep_going
                        if not keep_going:
                            raise CaseError(label, exc) from exc
                        rows.append(dict(scope=scope, way=way, mode=mode, backend=backend, source="measured",
                                         peak_bytes=None, model_bytes=None, available=False, reason=None,
                                         error=describe(exc)))
    return {"source": "measured", "measured": ["peak_bytes"],
            "model": ["model_bytes (the dense runs' analytic memory model; none for packed)"],
            "scope": {"model": "whole model: peak bytes above parameters and the images",
                      "attention": "one attention call with the model's heads and head_dim, above its inputs"},
            "rows": rows}


def padding_shares(rows: list[dict]) -> list[dict]:
    """Per (scope, mode, backend): 1 - packed peak / padded peak (measured)."""
    by = {(r["scope"], r["mode"], r["backend"], r["way"]): r for r in rows if r.get("peak_bytes")}
    out = []
    for (scope, mode, backend, way), r in by.items():
        pad = by.get((scope, mode, backend, "padded"))
        if way == "packed" and pad:
            out.append({"scope": scope, "mode": mode, "backend": backend, "source": "measured",
                        "padding_share": 1 - r["peak_bytes"] / pad["peak_bytes"],
                        "padded_to_packed": pad["peak_bytes"] / r["peak_bytes"]})
    return out


def _speed(plan, mx, model, imgs, progress, keep_going) -> dict:
    dtype = speed.parse_dtype(plan.dtype)
    sizes = mx["sizes"]
    h, w = sizes[_longest(sizes)]
    padded = torch.randn(len(sizes), model.patch_embed.proj.in_channels, h, w, dtype=dtype, device=plan.device)
    singles = [img[None] for img in imgs]
    rows = []
    for mode in mx["speed_modes"]:
        label = f"mixed speed {mode}"
        progress(label)
        training = mode == "fwdbwd"
        try:
            rows += _speed_group(plan, mx, model, training, mode, {"packed": [imgs], "padded": [padded],
                                                                   "one_at_a_time": singles})
        except Exception as exc:  # noqa: BLE001 - re-raised as CaseError unless keep_going
            if not keep_going:
                raise CaseError(label, exc) from exc
            rows.append(dict(way="-", backend="-", mode=mode, available=False, reason=None, error=describe(exc)))
    return {"source": "measured", "threads": torch.get_num_threads(),
            "ratio": "this row's median / packed's median on the same backend, timed interleaved in the same rounds",
            "rows": rows}


def _speed_group(plan, mx, model, training, mode, inputs) -> list[dict]:
    fns, unavailable, copies = {}, {}, {}
    for b in mx["speed_backends"]:
        why = speed.backend_unavailable(b, plan.device)
        if why:
            unavailable[b] = why
            continue
        m = copies[b] = copy.deepcopy(model).set_backend(b).train(training)
        for way, xs in inputs.items():
            def fn(m=m, xs=xs):
                if training:
                    m.zero_grad(set_to_none=True)
                for x in xs:
                    _step(m, x, training)
            fns[(way, b)] = fn
    timings = speed.time_interleaved(fns, plan.device, reps=plan.reps, warmup=1, budget_s=plan.budget_s)
    n = len(mx["sizes"])
    rows = [dict(way=way, backend=b, mode=mode, images=n, dtype=plan.dtype, available=True, reason=None,
                 **t.to_dict(), images_per_s=n / t.median_s,
                 time_vs_packed=t.median_s / timings[("packed", b)].median_s, source="measured")
            for (way, b), t in timings.items()]
    rows += [dict(way=way, backend=b, mode=mode, images=n, available=False, reason=why)
             for b, why in unavailable.items() for way in WAYS]
    del copies
    return rows


def run_mixed(plan, progress=None, keep_going: bool = False) -> dict:
    """The ``mixed`` section of ``results.json`` for ``plan.mixed`` (see :mod:`.plan`)."""
    from ..vit import create_model

    progress = progress or (lambda label: None)
    mx = plan.mixed
    progress("mixed FLOPs (analytic)")
    out = {"model": mx["model"], "spec": mx["spec"], "sizes": mx["sizes"],
           "flops": mixed_flops(mx["model"], mx["sizes"])}
    dtype = speed.parse_dtype(plan.dtype)
    model = create_model(mx["model"]).to(device=plan.device, dtype=dtype)
    imgs = _images(model, mx["sizes"], dtype, plan.device, mx["spec"]["seed"])
    threads = torch.get_num_threads()
    if plan.speed_threads:  # the CPU policy's thread count for the whole section: the memory does not
        torch.set_num_threads(plan.speed_threads)  # depend on it, and on a busy machine it is much faster
    try:
        out["memory"] = _memory(plan, mx, model, imgs, progress, keep_going)
        out["memory"]["padding_shares"] = padding_shares(out["memory"]["rows"])
        out["speed"] = _speed(plan, mx, model, imgs, progress, keep_going)
    finally:
        torch.set_num_threads(threads)
    return out
