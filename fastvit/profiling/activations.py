"""What training keeps for the backward, per token and per block: the analytic model of the
activations autograd saves (``saved_bytes_per_token``, "model") and their measurement on a real
forward (``measure_saved_per_block``, "measured": every tensor autograd packs, by storage).

Per token of one ViT block, with C the width, r C the MLP's hidden width, H heads, N tokens, e
the activation dtype's size (fp32 statistics are 4 bytes whatever e is):

=========  ==========================================================================================
every      the two residual sums that the LayerNorms normalise (2 C), their outputs, the inputs
backend    of qkv and fc1 (2 C), the MLP's pre-activation (r C), two fp32 (mean, rstd) pairs
eager      + q, k, v in the batched-matmul layout (3 C), the attention probabilities (H N: the
           term that grows with the resolution), the attention output's (B, N, C) copy (C),
           the GELU output (r C)
sdpa       + the qkv output (3 C, q k v are views of it), SDPA's output (C; PyTorch lays it out
           as (B, N, H, D), so proj reads it without a copy), the logsumexp (H, fp32), the GELU
           output (r C)
triton     + the qkv output (3 C), the attention output (C, already (B, N, C): no copy), the
           logsumexp (H, fp32); the GELU output is not kept: fc2's weight gradient recomputes it
           from the pre-activation in its GEMM's prologue (``fastvit.ops.mlp``)
=========  ==========================================================================================

The LayerNorm outputs are kept on every backend: recomputing them inside the qkv and fc1
weight-gradient GEMMs needs the LayerNorm's input, statistics and affine parameters in those
GEMMs' prologues, which the op boundaries between ``add_layer_norm`` and the GEMMs do not pass
today (2 C per token per block, the figure the report gives beside the rest).
"""
from __future__ import annotations

from collections import defaultdict

import torch

__all__ = ["saved_bytes_per_token", "measure_saved_per_block", "SAVED_BACKENDS"]

SAVED_BACKENDS = ("eager", "sdpa", "triton")
STAT_BYTES = 4


def saved_bytes_per_token(backend: str, *, width: int, hidden: int, heads: int, tokens: int,
                          dtype_bytes: int) -> dict[str, int]:
    """Model: bytes autograd keeps per token of one block for ``backend``, by tensor (see the
    module docstring); ``["total"]`` is their sum."""
    if backend not in SAVED_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, SAVED_BACKENDS))}, got {backend!r}")
    C, e = width, dtype_bytes
    terms = {
        "residual sums (norm1, norm2 inputs)": 2 * C * e,
        "LayerNorm outputs (qkv, fc1 inputs)": 2 * C * e,
        "fc1 pre-activation": hidden * e,
        "LayerNorm statistics (fp32)": 2 * 2 * STAT_BYTES,
    }
    if backend == "eager":
        terms["q, k, v (batched-matmul layout)"] = 3 * C * e
        terms["attention probabilities (H x N)"] = heads * tokens * e
        terms["attention output (B, N, C) copy"] = C * e
    else:
        terms["qkv output"] = 3 * C * e
        terms["attention output"] = C * e
        terms["logsumexp (fp32)"] = heads * STAT_BYTES
    if backend != "triton":
        terms["GELU output (fc2 input)"] = hidden * e
    terms["total"] = sum(terms.values())
    return terms


def measure_saved_per_block(model, x: torch.Tensor) -> list[int]:
    """Measured: bytes of the tensors autograd saves during each block's forward on ``x``
    (parameters and ``x`` excluded), one entry per block. A storage counts once, in the first
    block that saves it (a residual sum made at the end of one block and saved by the next is
    the next block's)."""
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
    per_block: dict[int, int] = defaultdict(int)
    seen: set[int] = set()
    current = [-1]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if current[0] >= 0 and key and key not in exclude and key not in seen:
            seen.add(key)
            per_block[current[0]] += storage.nbytes()
        elif current[0] < 0 and key:
            seen.add(key)  # saved outside any block (embedding, head): not a block's
        return t

    hooks = []
    for i, blk in enumerate(model.blocks):
        hooks.append(blk.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
        hooks.append(blk.register_forward_hook(lambda m, a, o: current.__setitem__(0, -1)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [per_block[i] for i in range(len(model.blocks))]
