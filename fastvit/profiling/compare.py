"""``fastvit profile --compare CNN``: the ViT against a torchvision CNN, on this machine.

Three parts, each labelled:

* ``flops`` (model): parameters and analytic FLOPs of both at ``flops_size`` (224 px), the CNN's
  also beside torchvision's published figures (``meta["_ops"]``, a GMAC count, and
  ``meta["num_params"]``), with the ratio of ours to theirs;
* ``memory`` (measured): whole-model peak bytes above parameters and input, inference and a
  training step, of the CNN and of the ViT on each attention backend, against resolution, with
  the log-log slope against pixels; the same tracker (or CUDA allocator statistics) for both;
* ``speed`` (measured): the CNN and the ViT's backends timed interleaved, round by round.
"""
from __future__ import annotations

import torch

from . import speed
from .failures import CaseError, describe

__all__ = ["run_compare", "pixel_slopes"]


def _flops(plan, cmp) -> dict:
    from .cnn import count_cnn_flops, published
    from .flops import count_flops

    size = cmp["flops_size"]
    vit = count_flops(plan.model, size).to_dict()
    cnn = count_cnn_flops(cmp["cnn"], size)
    pub = published(cmp["cnn"])
    check = {"gmacs_ratio": cnn["macs"] / 1e9 / pub["gmacs"] if pub["gmacs"] else None,
             "params_ratio": cnn["params"] / pub["params"] if pub["params"] else None}
    return {"source": "model", "img_size": size, "vit": vit, "cnn": cnn, "cnn_published": pub,
            "cnn_vs_published": check, "vit_to_cnn_flops": vit["flops"] / cnn["flops"],
            "vit_to_cnn_params": vit["params"] / cnn["params"]}


def _memory(plan, cmp, progress, keep_going) -> dict:
    from ..vit import create_model
    from .cnn import build_cnn, measure_cnn_memory
    from .memory import measure_model

    dtype = speed.parse_dtype(plan.dtype)
    rows = []
    # each network built once (initialising ViT-B takes seconds on a CPU); measure_model sets the
    # backend and the mode and restores them, and runs other sizes as the memory section does
    cnn_model = build_cnn(cmp["cnn"], plan.device, dtype)
    vit_model = create_model(plan.model).to(device=plan.device, dtype=dtype)
    for mode in ("inference", "training"):
        for size in cmp["resolutions"]:
            jobs = [(cmp["cnn"], "eager")] + [(plan.model, b) for b in cmp["backends"]]
            for net, backend in jobs:
                label = f"compare memory {mode} {net}{'' if net == cmp['cnn'] else ' ' + backend} {size}px"
                progress(label)
                try:
                    if net == cmp["cnn"]:
                        row = measure_cnn_memory(cnn_model, size, mode=mode, dtype=dtype, device=plan.device)
                        row["network"] = net
                    else:
                        row = measure_model(vit_model, size, backend=backend, mode=mode, dtype=dtype,
                                            device=plan.device)
                        row.update(network=net, pixels=size * size, source="measured")
                except Exception as exc:  # noqa: BLE001 - re-raised as CaseError unless keep_going
                    if not keep_going:
                        raise CaseError(label, exc) from exc
                    row = dict(network=net, backend=backend, mode=mode, img_size=size, pixels=size * size,
                               peak_bytes=None, model_bytes=None, available=False, reason=None, error=describe(exc))
                rows.append(row)
    del cnn_model, vit_model
    return {"source": "measured", "scope": "whole model, batch 1: peak bytes above parameters and the input",
            "measured": ["peak_bytes", "slope"], "model": ["model_bytes (the ViT's analytic model; none for the CNN)"],
            "rows": rows, "slopes": pixel_slopes(rows)}


def pixel_slopes(rows: list[dict]) -> list[dict]:
    """Log-log slope of measured peak bytes against pixels per (network, backend, mode): 1 means
    the peak grows as the pixel count (linear in tokens), 2 as its square."""
    from .memory import fit_slope

    groups: dict[tuple, list] = {}
    for r in rows:
        if r.get("available", True) and r.get("peak_bytes"):
            groups.setdefault((r["network"], r["backend"], r["mode"]), []).append(r)
    out = []
    for (net, backend, mode), rs in groups.items():
        ok = len({r["pixels"] for r in rs}) >= 2
        out.append({"network": net, "backend": backend, "mode": mode, "points": len(rs),
                    "slope": fit_slope([r["pixels"] for r in rs], [r["peak_bytes"] for r in rs]) if ok else None})
    return out


def _speed(plan, cmp, progress, keep_going) -> dict:
    from .cnn import build_cnn
    from .flops import vit_shape

    dtype = speed.parse_dtype(plan.dtype)
    rows = []
    threads = torch.get_num_threads()
    if plan.speed_threads:
        torch.set_num_threads(plan.speed_threads)
    try:
        for mode in cmp["speed_modes"]:
            for size in cmp["speed_sizes"]:
                label = f"compare speed {mode} {size}px"
                progress(label)
                batch = speed.default_batch(vit_shape(plan.model, size).tokens, plan.device)
                try:
                    rows += _speed_group(plan, cmp, mode, size, batch, dtype, build_cnn)
                except Exception as exc:  # noqa: BLE001 - re-raised as CaseError unless keep_going
                    if not keep_going:
                        raise CaseError(label, exc) from exc
                    rows.append(dict(network="+".join([cmp["cnn"], plan.model]), backend="-", mode=mode,
                                     img_size=size, available=False, reason=None, error=describe(exc)))
    finally:
        torch.set_num_threads(threads)
    return {"source": "measured", "threads": plan.speed_threads or threads,
            "ratio": "this row's median / the CNN's median, timed interleaved in the same rounds", "rows": rows}


def _speed_group(plan, cmp, mode, size, batch, dtype, build_cnn) -> list[dict]:
    train = mode == "fwdbwd"
    cnn = build_cnn(cmp["cnn"], plan.device, dtype).train(train)
    img = torch.randn(batch, 3, size, size, device=plan.device, dtype=dtype)

    def cnn_fn():
        if train:
            cnn.zero_grad(set_to_none=True)
            cnn(img).sum().backward()
        else:
            with torch.no_grad():
                cnn(img)

    fns, unavailable = {(cmp["cnn"], "eager"): cnn_fn}, {}
    for b in cmp["backends"]:
        reason = speed.backend_unavailable(b, plan.device)
        if reason:
            unavailable[b] = reason
            continue
        fns[(plan.model, b)] = speed.build_case("model", b, mode, size, model=plan.model, batch=batch, dtype=dtype,
                                                device=plan.device).fn
    for fn in fns.values():  # the first call compiles (Triton's JIT on a GPU): never timed
        fn()
    # one more untimed call each; without --reps, the rounds come from its time and the budget
    timings = speed.time_interleaved(fns, plan.device, reps=plan.reps, warmup=1, budget_s=plan.budget_s)
    base = timings[(cmp["cnn"], "eager")].median_s
    rows = []
    for (net, b), t in timings.items():
        rows.append(dict(network=net, backend=b, mode=mode, img_size=size, batch=batch, dtype=plan.dtype,
                         available=True, reason=None, **t.to_dict(), images_per_s=batch / t.median_s,
                         time_vs_cnn=t.median_s / base, source="measured"))
    rows += [dict(network=plan.model, backend=b, mode=mode, img_size=size, batch=batch, available=False,
                  reason=why) for b, why in unavailable.items()]
    return rows


def run_compare(plan, progress=None, keep_going: bool = False) -> dict:
    """The ``compare`` section of ``results.json`` for ``plan.compare`` (see :mod:`.plan`)."""
    progress = progress or (lambda label: None)
    cmp = plan.compare
    progress(f"compare FLOPs {plan.model} / {cmp['cnn']} (analytic)")
    out = {"cnn": cmp["cnn"], "vit": plan.model, "flops": _flops(plan, cmp)}
    out["memory"] = _memory(plan, cmp, progress, keep_going)
    out["speed"] = _speed(plan, cmp, progress, keep_going)
    return out
