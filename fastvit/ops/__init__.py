"""The public functional API: three op families, each with the same shape and the same policies.

Each op takes ``backend=`` ("auto", "eager", "sdpa", "triton"), resolved against its input's
device by ``fastvit.backend.resolve_backend`` (the one place the choice is made). Each family
is four layers: kernels + launchers (``fastvit.kernels.<op>``), custom ops + the autograd
Function (``_<op>_triton.py``), the public function (``<op>.py``, validating every argument
through ``_checks.py`` before anything runs), and the module (``fastvit.layers``).

Also: ``linear_glu`` (SwiGLU / GEGLU, the gated sibling of ``linear_gelu``, same layers), ``mlp``
(fc1 -> GELU -> fc2 as one op, ``mlp.py`` + ``_mlp_triton.py``: on triton the GELU output is
recomputed in fc2's weight-gradient GEMM rather than kept for the backward) and the
rotary-embedding ops ``apply_rope``, ``rope_qkv``, ``rope_attention``, ``rope_qkv_attention``
(``rope.py``: tables + prefix count + pairing; the rotation runs in PyTorch on every backend until
the attention kernel rotates q and k in its loads).

Policies, the same for every family:

- **autocast**: the Triton path does what PyTorch's own op does under autocast, on every
  device (the CPU under Triton's interpreter as on CUDA), by casting before the autograd
  Function so the backward runs in exactly the forward's dtypes: ``attention`` and
  ``linear_gelu`` run in the autocast dtype (as SDPA and F.linear do); ``layer_norm`` and
  ``add_layer_norm`` read fp16/bf16 activations with fp32 parameters as they are and return
  fp32 (autocast's policy for layer_norm).
- **float64**: runs the PyTorch path on every backend (``fastvit.backend``); the kernels
  compute in fp32.
- **naming**: ``AttentionFunction``, ``QKVAttentionFunction``, ``VarlenAttentionFunction``,
  ``VarlenQKVAttentionFunction``, ``LayerNormFunction``,
  ``AddLayerNormFunction``, ``LinearGeluFunction``, ``LinearGluFunction``, ``MlpFc1Function`` + ``MlpFc2Function``; custom ops
  ``fastvit::<op>_fwd`` and ``fastvit::<op>_bwd`` (``mlp`` reuses ``fastvit::linear_gelu_fwd``).
"""
from .attention import attention, cls_attention, qkv_attention
from .layer_norm import add_layer_norm, layer_norm
from .linear_gelu import linear_gelu, linear_glu
from .mlp import mlp
from .rope import apply_rope, rope_attention, rope_qkv, rope_qkv_attention
from .varlen_attention import varlen_attention, varlen_qkv_attention

__all__ = ["attention", "qkv_attention", "cls_attention", "layer_norm", "add_layer_norm", "linear_gelu",
           "linear_glu", "mlp", "varlen_attention", "varlen_qkv_attention",
           "apply_rope", "rope_attention", "rope_qkv", "rope_qkv_attention"]
