"""``attn_implementation="fastvit"`` for Hugging Face transformers.

Importing this module registers :func:`fastvit_attention_forward` with transformers'
``AttentionInterface``, so any model whose attention goes through that interface (ViT, DeiT,
DINOv2, CLIP, SigLIP, ... in transformers >= 4.48) runs it on ``fastvit.ops.attention``::

    import fastvit.integrations.transformers  # noqa: F401  (registers "fastvit")
    model = AutoModel.from_config(cfg, attn_implementation="fastvit")
    model.set_attn_implementation("fastvit")          # or on a model you already have

What the function receives and returns follows transformers' ``sdpa_attention_forward``:
``query``, ``key``, ``value`` as (B, H, N, D), an optional additive or boolean
``attention_mask``, ``dropout`` (already 0 in eval), ``scaling``, ``is_causal``; it returns
``(output (B, N, H, D) contiguous, weights or None)``.

Where fastvit's kernels do not apply, the call is answered by another implementation, never
approximated, with a one-time warning saying why:

- an ``attention_mask`` (padding masks, as SigLIP 2 passes; masks are built as for "sdpa",
  which gives None when nothing is masked), ``is_causal``, ``position_bias``,
  key/value head groups (GQA): PyTorch SDPA (the kernels take no masks yet);
- ``output_attentions=True``: transformers expects the full (B, H, N, N) probabilities of every
  layer, which a fused kernel never forms; the eager formula computes them for that call. (The
  CLS row alone is available without the N x N matrix from the saved logsumexp, through
  ``FastViT.attention_maps``; transformers has no place for a row, so it is not offered here.)
- ``softcap``: refused, as transformers' SDPA refuses it.

``scaling=None`` means 1/sqrt(D), as in SDPA. The backend is ``"auto"`` (triton where the kernels
run, else sdpa), or ``module.fastvit_backend`` when a module carries one.
"""
from __future__ import annotations

import warnings

import torch

from .. import ops

IMPLEMENTATION = "fastvit"
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    # One warning per reason and process: a model calls this once per layer and step.
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def _eager_with_weights(module, query, key, value, attention_mask, dropout, scaling):
    """softmax(q k^T * scale + mask) v with the probabilities kept, as transformers' eager does."""
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def fastvit_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, dropout: float = 0.0,
                              scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature on ``fastvit.ops.attention``; see the module docstring."""
    if kwargs.get("softcap") is not None:
        raise ValueError("attn_implementation='fastvit' does not support softcap (the kernels compute plain "
                         "softmax attention); use 'eager' for models that need it")
    if kwargs.get("output_attentions", False):
        _warn_once("output_attentions",
                   "attn_implementation='fastvit': output_attentions=True needs every layer's full (B, H, N, N) "
                   "attention probabilities, which the fused kernels never form; those calls run the eager "
                   "formula instead (FastViT.attention_maps gives the CLS rows without the N x N matrix)")
        return _eager_with_weights(module, query, key, value, attention_mask, dropout, scaling)
    # SDPA's own default: a module that does not say otherwise is causal.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and query.shape[2] > 1 and attention_mask is None
    groups = getattr(module, "num_key_value_groups", 1)
    reason = ("an attention mask" if attention_mask is not None else "is_causal=True" if causal
              else "position_bias" if kwargs.get("position_bias") is not None
              else "grouped key/value heads" if groups > 1 or key.shape[1] != query.shape[1] else None)
    if reason is not None:
        _warn_once(reason, f"attn_implementation='fastvit': {reason} is not supported by fastvit's attention "
                           f"kernels yet; those calls run PyTorch's scaled_dot_product_attention instead")
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    backend = getattr(module, "fastvit_backend", "auto")
    out = ops.attention(query, key, value, dropout_p=float(dropout), scale=scaling, backend=backend)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``"fastvit"`` with transformers' ``AttentionInterface`` (done on import; idempotent)."""
    try:
        from transformers import AttentionInterface
    except ImportError as e:  # pragma: no cover - transformers is in the integrations extra
        raise ImportError("fastvit.integrations.transformers needs transformers>=4.48: "
                          "pip install 'fastvit[integrations]'") from e
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(IMPLEMENTATION, fastvit_attention_forward)
    # Masks are built as for "sdpa" (None when nothing is masked). Without a mask function of its
    # own, transformers builds no mask at all for a custom implementation, and a padding mask
    # (SigLIP 2's) would be dropped silently instead of reaching the SDPA fallback above.
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


register()
