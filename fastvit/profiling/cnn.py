"""A torchvision classification CNN beside FastViT: its name, its analytic FLOPs, its measured memory.

The FLOP count is **analytic**, in the convention of :mod:`fastvit.profiling.flops` (FLOPs = 2 x
MACs, matrix products only): one forward of the model on the ``meta`` device (no memory, no
arithmetic, just shapes) with a forward hook on every ``Conv1d/2d/3d`` and ``Linear``, each adding
``output elements x (in_channels / groups) x kernel area`` (a Linear: ``output elements x
in_features``) multiply-accumulates. Element-wise work is listed apart, by module, with the same
spirit as the ViT's count: BatchNorm 4 per element (subtract the mean, scale by rstd, by the weight,
add the bias), an activation 1 per element, a pooling layer its window area per output element.
Residual adds are not modules, so they are not counted.

A model whose matrix products are not all inside Conv/Linear modules (attention in torchvision's
ViT, Swin, MaxViT) is refused with one line: a module walk cannot see them. The forward that
counts also watches every matrix-product ATen op and checks it came from a counted module.

Published reference: torchvision's weights enums carry ``meta["_ops"]`` (labelled GFLOPS; it
counts multiply-accumulates, i.e. GMACs here: 4.089 for ResNet-50) and ``meta["num_params"]``,
read without downloading anything.
"""
from __future__ import annotations

import difflib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["classification_models", "check_cnn_name", "build_cnn", "published", "count_cnn_flops",
           "measure_cnn_memory"]

# torchvision's other model families: a name from one of them is not a classification model
_OTHER_KINDS = ("detection", "segmentation", "video", "optical_flow", "quantization")
_MATMUL_OPS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.matmul", "aten.convolution",
               "aten._scaled_dot_product", "aten.linear")
ELEMENTWISE_PER_ELEMENT = {"batch_norm": 4, "activation": 1}


def classification_models() -> list[str]:
    import torchvision.models as tm
    return tm.list_models(module=tm)


def check_cnn_name(name: str) -> str:
    """``name`` if it is a torchvision classification model; otherwise a one-line ValueError:
    which family it belongs to, or the close matches among the classification models."""
    import torchvision.models as tm

    names = classification_models()
    if name in names:
        return name
    for kind in _OTHER_KINDS:
        if name in tm.list_models(module=getattr(tm, kind)):
            raise ValueError(f"{name!r} is a torchvision {kind.replace('_', ' ')} model, not a "
                             "classification model (e.g. resnet50, convnext_tiny)")
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown torchvision classification model {name!r}{hint} "
                     "(torchvision.models.list_models(module=torchvision.models) lists them)")


def build_cnn(name: str, device="cpu", dtype=torch.float32) -> torch.nn.Module:
    """The model, randomly initialised (``weights=None``: nothing is downloaded)."""
    import torchvision.models as tm

    check_cnn_name(name)
    device = torch.device(device)
    with torch.device(device):
        model = tm.get_model(name, weights=None)
    return model.to(dtype=dtype)


def published(name: str) -> dict:
    """torchvision's published figures for ``name``'s default weights: ``gmacs`` (its
    ``meta["_ops"]``, labelled GFLOPS there, a multiply-accumulate count), ``params``, the
    weights' name and the input size they were evaluated at (``min_size`` is not that: the
    ``_ops`` figures are at the transforms' crop, 224 for ResNets)."""
    import torchvision.models as tm

    check_cnn_name(name)
    w = tm.get_model_weights(name).DEFAULT
    return {"weights": str(w), "gmacs": w.meta.get("_ops"), "params": w.meta.get("num_params"),
            "crop_size": getattr(w.transforms, "keywords", {}).get("crop_size"),
            "note": "torchvision's meta['_ops'] is labelled GFLOPS but counts multiply-accumulates (GMACs here)"}


class _MatmulWatch(TorchDispatchMode):
    """Records every matrix-product ATen op run while no counted module is running."""

    def __init__(self):
        super().__init__()
        self.depth = 0          # > 0 inside a counted module's forward
        self.outside: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if self.depth == 0 and name.startswith(_MATMUL_OPS):
            self.outside.append(name)
        return func(*args, **(kwargs or {}))


def _conv_macs(m, out: torch.Tensor) -> int:
    k = 1
    for s in m.kernel_size:
        k *= s
    return out.numel() * (m.in_channels // m.groups) * k


def count_cnn_flops(name: str, img_size: int = 224, batch: int = 1) -> dict:
    """Analytic FLOPs of one forward of torchvision's ``name`` on ``batch`` images of
    ``img_size`` px, as a dict with the keys of :meth:`fastvit.profiling.flops.FlopReport.to_dict`
    (``patches``/``tokens`` None: a CNN has none; ``attention_*`` 0; ``timm_macs`` None)."""
    import torch.nn as nn

    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    model = build_cnn(name, device="meta").eval()
    matmul = {"conv": 0, "linear": 0}
    elementwise = {"batch_norm": 0, "activation": 0, "pool": 0}
    first_conv: list[int] = []
    watch = _MatmulWatch()
    acts = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)
    pools = (nn.MaxPool2d, nn.AvgPool2d)

    def pre(m, inp):
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            watch.depth += 1

    def post(m, inp, out):
        if isinstance(m, nn.modules.conv._ConvNd):
            watch.depth -= 1
            macs = _conv_macs(m, out)
            matmul["conv"] += macs
            if not first_conv:
                first_conv.append(macs)
        elif isinstance(m, nn.Linear):
            watch.depth -= 1
            matmul["linear"] += out.numel() * m.in_features
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            elementwise["batch_norm"] += ELEMENTWISE_PER_ELEMENT["batch_norm"] * out.numel()
        elif isinstance(m, acts):
            elementwise["activation"] += ELEMENTWISE_PER_ELEMENT["activation"] * out.numel()
        elif isinstance(m, pools):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            elementwise["pool"] += out.numel() * k[0] * k[1]
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            elementwise["pool"] += inp[0].numel()  # every input element is summed once

    handles = []
    for m in model.modules():
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad(), watch:
            model(torch.empty(batch, 3, img_size, img_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    if watch.outside:
        raise ValueError(f"{name} runs matrix products outside Conv/Linear modules "
                         f"({sorted(set(watch.outside))[0]}, e.g. in attention): the CNN counter cannot see them "
                         "(for a ViT use fastvit's own count, e.g. vit_base_patch16_224)")
    macs = sum(matmul.values())
    flops = 2 * macs
    ew = sum(elementwise.values())
    return {"model": name, "img_size": img_size, "batch": batch, "patches": None, "tokens": None,
            "params": sum(p.numel() for p in model.parameters()), "flops": flops, "macs": macs,
            "by_component": {"matmul": {k: 2 * v for k, v in matmul.items()}, "elementwise": elementwise},
            "elementwise_flops": ew, "total_flops": flops + ew, "attention_flops": 0, "attention_share": 0.0,
            # the image needs no gradient: the first convolution's backward is one product, not two
            "backward_flops": 2 * flops - 2 * (first_conv[0] if first_conv else 0), "timm_macs": None,
            "convention": "flops = 2 * macs; flops/macs count matrix products only; elementwise apart",
            "counter": "analytic: Conv/Linear MACs from module forward hooks on a meta-device forward",
            "source": "model"}


def measure_cnn_memory(name_or_model, img_size: int, *, mode: str = "inference", batch: int = 1,
                       dtype=torch.float32, device="cpu") -> dict:
    """Measured peak memory of a whole torchvision CNN above its parameters and input (the same
    scope and the same tracker as :func:`fastvit.profiling.memory.measure_model`): ``inference``
    = forward under no_grad in eval mode; ``training`` = forward + backward of the summed logits in
    train mode (BatchNorm batch statistics, parameter gradients included)."""
    from .memory import _warm_up
    from .memory_model import MODES, _check_choice
    from .tracker import measure_peak

    _check_choice(mode, MODES, "mode")
    device = torch.device(device)
    model = build_cnn(name_or_model, device, dtype) if isinstance(name_or_model, str) else name_or_model
    name = name_or_model if isinstance(name_or_model, str) else type(model).__name__.lower()
    was_training = model.training
    model.train(mode == "training")
    x = torch.randn(batch, 3, img_size, img_size, device=device, dtype=dtype)
    params = list(model.parameters())

    def run():
        if mode == "training":
            model(x).sum().backward()
            return None
        with torch.no_grad():
            return model(x)

    saved = [p.grad for p in params]
    try:
        _warm_up(run, device, "eager")
        for p in params:
            p.grad = None
        m = measure_peak(run, device=device, baseline=(model, x))
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        model.train(was_training)
    return dict(network=name, img_size=img_size, tokens=None, pixels=img_size * img_size, backend="eager",
                mode=mode, scope="model", batch=batch, dtype=str(dtype).replace("torch.", ""), device=str(device),
                model_bytes=None, peak_bytes=m.peak_bytes, available=True, reason=None, seconds=round(m.seconds, 4),
                method=m.method, baseline_bytes=m.baseline_bytes, source="measured")
