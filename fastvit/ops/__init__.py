"""The public functional API. Each op takes ``backend=`` ("auto", "eager", "sdpa", "triton").

The Triton path of each op lives in ``_<op>_triton.py``: its ``torch.library.custom_op``
registrations and ``torch.autograd.Function``; the kernels and launchers in ``fastvit.kernels``.
"""
from .attention import attention, cls_attention, qkv_attention
from .layer_norm import add_layer_norm, layer_norm
from .linear_gelu import linear_gelu

__all__ = ["attention", "qkv_attention", "cls_attention", "layer_norm", "add_layer_norm", "linear_gelu"]
