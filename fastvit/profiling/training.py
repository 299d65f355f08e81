"""The report's "Training memory per block" section: what each backend keeps for the backward
(model), what its backward launches (measured) and moves (model), and what fusing RoPE into
attention saves (model).

* ``saved``: bytes kept per token per block (``activations.saved_bytes_per_token``) at the
  issue's reference point, full depth, batch 32, bf16, 224 and 1024 px, and the whole model's
  total there; **model**.
* ``backward``: kernel launches of one block's backward, counted on this machine with
  ``launches.count_launches`` (**measured**: the same code a GPU runs, the triton kernels in
  Triton's interpreter on a CPU), beside the bytes the MLP's backward moves (**model**): the
  storing path (fc2's GEMMs read the GELU output h and write its gradient dh, GELU's backward
  reads dh and pre and writes dpre) against triton's (dpre = (dy W2) * GELU'(pre) in one GEMM,
  dW2 = dy^T GELU(pre) with GELU applied as pre is loaded: pre read twice, no h, no dh).
* ``rope``: the bytes per attention layer a separate rotation pass moves and the fused kernel
  does not (``fastvit.rope.rope_fusion_traffic``); **model**.
"""
from __future__ import annotations

import torch

from .activations import SAVED_BACKENDS, saved_bytes_per_token

__all__ = ["training_section", "mlp_backward_bytes", "block_backward_launches", "render_training_md"]

REFERENCE = dict(batch=32, dtype_bytes=2, sizes=(224, 1024))  # the point: bf16, batch 32
ROPE_MODELS = ("eva02_base_patch14_224", "vit_base_patch16_dinov3")


def mlp_backward_bytes(tokens: int, width: int, hidden: int, dtype_bytes: int, *, recompute: bool) -> int:
    """Model: DRAM bytes the MLP's backward moves for ``tokens`` rows (activations and their
    gradients, weights read once per GEMM, weight gradients written once; biases ignored)."""
    M, C, H, e = tokens, width, hidden, dtype_bytes
    act_c, act_h, w = M * C * e, M * H * e, C * H * e
    fc1 = (act_h + w + act_c) + (act_h + act_c + w)  # dx = dpre W1; dW1 = dpre^T x
    if recompute:
        fc2 = (act_c + w + act_h + act_h) + (act_c + act_h + w)  # dpre GEMM (reads pre); dW2 (reads pre)
        return fc2 + fc1
    fc2 = (act_c + w + act_h) + (act_c + act_h + w)  # dh = dy W2; dW2 = dy^T h
    gelu = 3 * act_h  # dpre = dh * GELU'(pre): read dh, pre; write dpre
    return fc2 + gelu + fc1


def block_backward_launches(backend: str, model: str, grid: int = 2, batch: int = 1) -> dict:
    """Measured: kernel launches (Triton and PyTorch compute ops) of one training block's backward
    (the second block of a depth-2 ``model``, its input with the first block's MLP branch pending,
    as the model runs it), on a ``grid`` x ``grid`` patch image: the count does not depend on the size."""
    from ..layers import Pending
    from ..vit import create_model
    from .launches import count_launches

    from .flops import vit_shape

    net = create_model(model, depth=2, img_size=grid * vit_shape(model).patch_size[0], backend=backend).train()
    tokens = net.patch_embed.num_patches + net.num_prefix_tokens
    x = torch.randn(batch, tokens, net.embed_dim, requires_grad=True)
    branch = torch.randn(batch, tokens, net.embed_dim, requires_grad=True)
    rope = () if net.rope is None else (net.rope(net.patch_embed.grid_size, x.device),)
    h, pending = net.blocks[1](x, Pending(branch), None, *rope)
    loss = (h + pending.branch).sum()
    with count_launches() as c:
        loss.backward()
    return {"total": c.total, "triton": dict(c.triton), "torch": dict(c.torch)}


def training_section(model: str = "vit_base_patch16_224", backends=SAVED_BACKENDS) -> dict:
    """The section's data (see the module docstring); ``backends`` whose launches to count (the
    triton count needs CUDA or Triton's interpreter)."""
    from ..rope import rope_fusion_traffic
    from .flops import vit_shape

    from .memory import not_modelled

    saved = []
    unmodelled = not_modelled(vit_shape(model), "training")  # blocks whose saved tensors differ
    for size in REFERENCE["sizes"] if unmodelled is None else ():
        s = vit_shape(model, size)
        for backend in SAVED_BACKENDS:
            per = saved_bytes_per_token(backend, width=s.embed_dim, hidden=s.mlp_hidden, heads=s.num_heads,
                                        tokens=s.tokens, dtype_bytes=REFERENCE["dtype_bytes"])
            saved.append({"img_size": size, "tokens": s.tokens, "backend": backend, "bytes_per_token": per["total"],
                          "model_bytes": per["total"] * s.tokens * s.depth * REFERENCE["batch"], "depth": s.depth,
                          "terms": per})
    s = vit_shape(model, REFERENCE["sizes"][0])
    rows = s.tokens * REFERENCE["batch"]
    backward = []
    for backend in backends:
        launches = block_backward_launches(backend, model)
        mlp = None if unmodelled else mlp_backward_bytes(rows, s.embed_dim, s.mlp_hidden, REFERENCE["dtype_bytes"],
                                                         recompute=backend == "triton")
        backward.append({"backend": backend, "launches": launches, "mlp_backward_bytes": mlp})
    rope = []
    for name in ROPE_MODELS:
        patch = vit_shape(name).patch_size[0]
        for size in REFERENCE["sizes"]:
            r = vit_shape(name, size - size % patch)  # whole patches: 1022 px at patch 14
            t = rope_fusion_traffic(REFERENCE["batch"], r.num_heads, r.patches, r.head_dim, REFERENCE["dtype_bytes"])
            rope.append({"model": name, "img_size": r.img_size[0], "tokens": r.tokens, **t})
    return {"source": "model (saved bytes, bytes moved, rope) and measured (launch counts)", "model": model,
            "batch": REFERENCE["batch"], "dtype": "bf16", "saved": saved, "backward": backward, "rope": rope,
            "not_modelled": unmodelled,
            "backward_img_size": REFERENCE["sizes"][0]}


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def render_training_md(sec: dict) -> list[str]:
    """Markdown of :func:`training_section`."""
    from .markdown import md_table

    out = [f"## Training memory per block of {sec['model']}", "",
           f"**Model** (analytic, `fastvit.profiling.activations`; equal to what autograd saves, tested): bytes kept "
           f"for the backward per token per block, and for the whole model at batch {sec['batch']}, "
           f"{sec['dtype']}. triton does not keep the GELU output (fc2's weight gradient recomputes it as it "
           "loads the pre-activation); eager keeps the attention probabilities (H x N per token).", ""]
    if sec.get("not_modelled"):
        out += [f"Not modelled for {sec['model']}: {sec['not_modelled']} (the model covers plain ViT blocks).", ""]
    else:
        sdpa = {r["img_size"]: r["bytes_per_token"] for r in sec["saved"] if r["backend"] == "sdpa"}
        rows = [[r["backend"], r["img_size"], r["tokens"], f"{r['bytes_per_token']:,}", f"{_mib(r['model_bytes'])}",
                 f"{r['bytes_per_token'] / sdpa[r['img_size']]:.2f}x"] for r in sec["saved"]]
        out += [md_table(["backend", "img px", "tokens", "bytes / token / block", f"model, {sec['dtype']} batch "
                          f"{sec['batch']} (MiB)", "vs sdpa"], rows, "lrrrrr"), ""]
    out += [f"One block's backward: kernel launches (**measured** here with the launch counter) and the bytes the "
            f"MLP's backward moves (**model**) at {sec['backward_img_size']} px, batch {sec['batch']}, "
            f"{sec['dtype']}.", ""]
    rows = [[b["backend"], b["launches"]["total"], ", ".join(f"{k} {v}" for k, v in sorted(b["launches"]["triton"].items()))
             or "-", "not modelled" if b["mlp_backward_bytes"] is None else _mib(b["mlp_backward_bytes"])]
            for b in sec["backward"]]
    out += [md_table(["backend", "launches", "of which Triton", "MLP backward MiB moved (model)"], rows, "lrlr"), ""]
    out += [f"RoPE fused into attention (**model**, `fastvit.rope.rope_fusion_traffic`): bytes per attention "
            f"layer a separate rotation pass moves (read q, k; write the rotated copies; the same for dq, dk in "
            f"the backward) that the fused kernels do not, batch {sec['batch']}, {sec['dtype']}.", ""]
    rows = [[r["model"], r["img_size"], r["tokens"], _mib(r["forward_bytes"]), _mib(r["backward_bytes"]),
             _mib(r["table_bytes"])] for r in sec["rope"]]
    out += [md_table(["model", "img px", "tokens", "forward MiB saved", "backward MiB saved",
                      "tables read (MiB)"], rows, "lrrrrr"), ""]
    return out

