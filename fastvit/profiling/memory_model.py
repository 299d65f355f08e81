"""The analytic memory model (the modelled half of ``memory.py``): peak bytes of one attention
call and of a whole FastViT, in the same "above baseline" scope as the measurements.

With e the dtype's size in bytes,
S = B*H*N^2*e one attention matrix, O = B*N*D*e one (B, N, H*Dh) activation and L = B*H*N*4 one
fp32 row statistic:
  attention, inference:  eager max(2S, S + O) (scores and scaled scores, then probabilities
                         and output);  sdpa / triton  O + L (output, logsumexp)
  attention, training:   eager max(3S + 2O, S + 4O, 5O) (probabilities kept for backward, their
                         gradient and the softmax gradient at once, with the output and dv; then
                         the scores' gradient with dq, dk; then a layout copy of dk);
                         sdpa 4O + max(L, O) (out, lse, dq, dk, dv, then a layout copy of a
                         gradient);  triton 4O + 2L (plus the backward's delta)
  model: see :func:`model_memory_bytes` (activations autograd saves per block, parameter
                         gradients, and the largest transient of a block); per token and
                         tensor: ``fastvit.profiling.activations``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["attention_scores", "attention_model_bytes", "model_memory_bytes", "MODES", "MEMORY_BACKENDS"]

MODES = ("inference", "training")
MEMORY_BACKENDS = ("eager", "sdpa", "triton")


def _pair(v) -> tuple[int, int]:
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in pair):
        raise ValueError(f"expected a positive int or a pair of positive ints, got {v!r}")
    return pair


def attention_scores(img_size, patch_size=16, heads: int = 1, layers: int = 1, batch: int = 1) -> dict:
    """How many attention scores one image makes: ``patches`` and ``tokens`` (patches + CLS),
    scores per head per layer with patches only (``patches**2``) and with the CLS token
    (``tokens**2``), and the totals over ``heads`` x ``layers`` x ``batch`` for both.

    E.g. 384 px, 16 px patches: 576 patches, 331,776 scores per head per layer, 3,981,312 with 12
    heads (with CLS: 577**2 = 332,929 per head); 1024 px: 4,096 patches, 16,777,216 per head.
    """
    h, w = _pair(img_size)
    ph, pw = _pair(patch_size)
    if h % ph or w % pw:
        raise ValueError(f"img_size {(h, w)} must be a multiple of the patch size {(ph, pw)}")
    for name, v in (("heads", heads), ("layers", layers), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    patches = (h // ph) * (w // pw)
    tokens = patches + 1
    mult = heads * layers * batch
    return {"patches": patches, "tokens": tokens,
            "scores_per_head": patches ** 2, "scores_per_head_with_cls": tokens ** 2,
            "scores": patches ** 2 * mult, "scores_with_cls": tokens ** 2 * mult,
            "heads": heads, "layers": layers, "batch": batch}


def _esize(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def attention_model_bytes(tokens: int, num_heads: int, head_dim: int, *, backend: str, mode: str, batch: int = 1,
                          dtype=torch.float32) -> int:
    """Modelled peak bytes of one attention call above its inputs q, k, v (and, in training, the
    incoming gradient): see the module docstring for the terms."""
    _check_choice(backend, MEMORY_BACKENDS, "backend")
    _check_choice(mode, MODES, "mode")
    e = _esize(dtype)
    S = batch * num_heads * tokens * tokens * e
    O = batch * num_heads * tokens * head_dim * e
    L = batch * num_heads * tokens * 4
    if backend == "eager":
        if mode == "inference":
            return max(2 * S, S + O)
        # softmax backward (P, dP, dS; out, dv), then dS with dq, dk (out, dv), then dk copied
        # into the leaf's layout by AccumulateGrad (PyTorch's bmm gives it transposed)
        return max(3 * S + 2 * O, S + 4 * O, 5 * O)
    if mode == "inference":
        return O + L
    if backend == "sdpa":
        # out, lse, dq, dk, dv; PyTorch returns the gradients in its own (B, N, H, D) layout and
        # AccumulateGrad copies each into the leaf's layout, one at a time (lse is gone by then)
        return 4 * O + max(L, O)
    return 4 * O + 2 * L


def model_memory_bytes(model_or_name, img_size=None, *, backend: str, mode: str, batch: int = 1,
                       dtype=torch.float32, **overrides) -> dict:
    """Modelled peak bytes of a whole FastViT forward (``inference``) or forward + backward
    (``training``), above parameters and the input image: ``{"bytes": peak, "terms": {...}}``.

    Built from which tensors are alive when, as ``FastViT.forward`` holds them. With O one
    (B, N, D) activation, S one attention matrix (B, H, N, N), L one fp32 (B, H, N) row statistic
    and r = mlp_ratio:

    inference (every backend runs the form with each residual add folded into the next
      LayerNorm): while a block runs, its caller still holds the block's input and the previous
      block's MLP branch (2 O carried from the second block on; 1 O in a one-block model), and
      the block holds norm1's add+norm pair (2 O; 1 O for the first block, whose input is h).
      Attention phase: those, qkv (3 O) and the attention's own peak (eager 2 S: scores and
      scaled scores, or its output and the (B, N, H*D) copy, 2 O; fused O + L: output and
      logsumexp). MLP phase: the carry, norm2's add+norm pair (2 O) and the MLP's peak: fc1 and
      GELU outputs at once, then the GELU output and fc2's (r O + max(r O, O)); triton's fused
      fc1+GELU output and fc2's ((r + 1) O).
    training: autograd keeps per block (8 + 2r) O (block input, norm1 output, qkv, attention
      output, residual, norm2 output, fc1 and GELU outputs; triton (8 + r) O: the GELU output is
      recomputed in the backward, ``fastvit.ops.mlp``) plus S (eager: the probabilities) or
      L (fused: the logsumexp) and the LayerNorm statistics. The peak is the largest of: the last
      block's MLP backward (everything saved + the incoming gradient + the GELU-output gradient
      or triton's dpre, (1 + r) O; + head and fc2 weight gradients; triton then frees pre before
      fc1's backward holds dpre, dx and the incoming gradient at once, (2 + r) O, + fc1's weight
      gradients; triton's forward peak, the last MLP's GELU and fc2 outputs and the carried
      branch, (2 + r) O above everything saved, can be the largest at small batches); its attention backward (one block's MLP
      part freed; eager adds the probabilities' and the softmax gradient 2 S, dv and the residual
      gradient; fused dq, dk, dv, their packed copy and the residual gradient 7 O); the end of the
      backward (every parameter gradient and the patch embedding's output gradient, O).
    """
    from .flops import vit_shape

    _check_choice(backend, MEMORY_BACKENDS, "backend")
    _check_choice(mode, MODES, "mode")
    s = vit_shape(model_or_name, img_size, **overrides)
    e = _esize(dtype)
    B, N, D, H, Hd = batch, s.tokens, s.embed_dim, s.num_heads, s.mlp_hidden
    r = Hd / D
    O = B * N * D * e
    S = B * H * N * N * e
    L = B * H * N * 4
    stats = 2 * B * N * 4  # one LayerNorm's mean and rstd, fp32
    eager, triton = backend == "eager", backend == "triton"
    if mode == "inference":
        attn_peak = attention_model_bytes(N, H, s.head_dim, backend=backend, mode="inference", batch=B, dtype=dtype)
        if eager:  # the (B, H, N, Dh) output is copied to (B, N, H*D) while qkv is alive
            attn_peak = max(attn_peak, 2 * O)
        carry = 2 * O if s.depth >= 2 else O
        norm1 = 2 * O if s.depth >= 2 else O
        mlp_peak = (r + 1) * O if triton else r * O + max(r * O, O)
        terms = {"attention_phase": int(carry + norm1 + 3 * O + attn_peak),
                 "mlp_phase": int(carry + 2 * O + mlp_peak)}
        return {"bytes": max(terms.values()), "terms": terms}
    kept_mlp = r * O if triton else 2 * r * O  # triton keeps fc1's pre-activation only (fastvit.ops.mlp)
    per_block = 8 * O + kept_mlp + (S if eager else L) + 2 * stats
    saved = s.depth * per_block
    params = lambda *shapes: sum(math.prod(x) for x in shapes) * e  # noqa: E731
    head_grads = params((s.num_classes, D), (s.num_classes,), (2 * D,)) if s.num_classes else params((2 * D,))
    fc2_grads = params((D, Hd), (D,))
    fc1_grads = params((Hd, D), (Hd,))
    rest_grads = fc1_grads + params((2 * D,), (D, D), (D,))  # fc1, norm2, proj
    mlp_part = 3 * O + kept_mlp + stats  # residual, norm2 output, attention output/copy, fc1 (/GELU) outputs
    attn_transient = (2 * S + 2 * O) if eager else 7 * O
    mlp_backward = saved + (1 + r) * O + head_grads + fc2_grads
    terms = {"mlp_backward": int(mlp_backward)}
    if triton:
        # fc2's backward node frees the last block's pre before fc1's allocates dx and dW1
        terms["mlp_backward_fc1"] = int(saved - r * O + (2 + r) * O + head_grads + fc2_grads + fc1_grads)
        # the last block's MLP forward: its GELU output and fc2's output beside everything saved,
        # and the previous block's MLP branch the caller still holds
        terms["mlp_forward"] = int(saved + (2 + r) * O)
    terms.update({
        "attention_backward": int(saved - mlp_part + attn_transient + head_grads + fc2_grads + rest_grads),
        "end_of_backward": int(s.params * e + O),
    })
    return {"bytes": max(terms.values()), "terms": terms}


def _check_choice(v, choices, name):
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v
