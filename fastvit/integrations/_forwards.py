"""The forwards ``fastvit.patch`` installs, and the checks that decide whether a module gets one.

Each forward is a plain function bound to the module it replaces (``types.MethodType``): it reads
the module's own parameters and submodules, so the module tree, parameter names and state dict
stay as they were. Each one answers a call it was not written for (an attention mask, a causal
flag, cross-attention) with the module's original forward, remembered in ``_fastvit_patch``.

Fusions, all exact in fp32 up to rounding: LayerNorm -> ``ops.layer_norm``; the residual add
after attention (with its layer scale) -> ``ops.add_layer_norm`` together with the LayerNorm
before the MLP; fc1 + activation -> ``ops.linear_gelu``; attention -> ``ops.attention`` /
``ops.qkv_attention``. The add after the MLP stays a plain add inside the layer: folding it into
the next layer's LayerNorm would change what each layer returns, which forward hooks and
``output_hidden_states`` read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


@dataclass
class PatchState:
    """What ``patch`` keeps on a module (``module._fastvit_patch``) to run and to undo."""
    backend: str
    original: object            # the instance's own ``forward`` before patching, or None (the class's)
    spec: dict = field(default_factory=dict)

    def call_original(self, module: nn.Module, *args, **kwargs):
        fn = self.original if self.original is not None else type(module).forward.__get__(module)
        return fn(*args, **kwargs)


def _state(module) -> PatchState:
    return module.__dict__["_fastvit_patch"]


# -- what can be fused ---------------------------------------------------------------------------
_LN_EQUIVALENTS = {("open_clip.transformer", "LayerNorm"), ("open_clip.transformer", "LayerNormFp32"),
                   ("timm.layers.norm", "LayerNorm")}


def layer_norm_problem(norm) -> str | None:
    """Why ``norm`` cannot run as ``ops.layer_norm``, or None."""
    if not isinstance(norm, nn.LayerNorm):
        return f"{type(norm).__name__} is not a LayerNorm"
    if len(norm.normalized_shape) != 1:
        return f"LayerNorm over {tuple(norm.normalized_shape)} (only the last dimension is supported)"
    own = type(norm).forward is nn.LayerNorm.forward
    if not own and (type(norm).__module__, type(norm).__name__) not in _LN_EQUIVALENTS:
        return f"{type(norm).__name__} has its own forward"
    if norm._forward_hooks or norm._forward_pre_hooks:
        return "it has forward hooks, which a fused LayerNorm would skip"
    return None


def activation_approximate(act) -> str | None:
    """The ``approximate`` of ``ops.linear_gelu`` that computes ``act``, or None."""
    mod, name = type(act).__module__, type(act).__name__
    if isinstance(act, nn.GELU):
        return act.approximate
    if mod.startswith("transformers"):
        if name == "GELUActivation":   # F.gelu, or the same erf formula written out
            return "none"
        if name in ("GELUTanh", "PytorchGELUTanh", "NewGELUActivation"):   # the tanh formula
            return "tanh"
        if name == "QuickGELUActivation":
            return "quick"
    if mod.startswith(("timm", "open_clip")):
        return {"GELU": "none", "GELUTanh": "tanh", "QuickGELU": "quick"}.get(name)
    return None


# -- shared pieces -------------------------------------------------------------------------------
def _ln(norm: nn.LayerNorm, x: torch.Tensor, backend: str) -> torch.Tensor:
    if type(norm).__name__ == "LayerNormFp32":   # open_clip: normalise in fp32, return the input dtype
        return ops.layer_norm(x.float(), norm.weight, norm.bias, norm.eps, backend=backend).to(x.dtype)
    return ops.layer_norm(x, norm.weight, norm.bias, norm.eps, backend=backend)


def _add_ln(norm: nn.LayerNorm, x, branch, backend, scale=None):
    return ops.add_layer_norm(x, branch, norm.weight, norm.bias, norm.eps, backend=backend, residual_scale=scale)


def _fc1_act(mlp, fc1: nn.Linear, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(fc1(x)) as one ``ops.linear_gelu`` (``act`` was matched to its ``approximate`` at patch time)."""
    st = _state(mlp)
    return ops.linear_gelu(x, fc1.weight, fc1.bias, st.spec["approximate"], backend=st.backend)


def layer_norm_forward(self, x):
    return _ln(self, x, _state(self).backend)


# -- timm ----------------------------------------------------------------------------------------
def timm_attention_forward(self, x, attn_mask=None, is_causal=False, **kwargs):
    st = _state(self)
    if attn_mask is not None or is_causal or kwargs:
        return st.call_original(self, x, attn_mask=attn_mask, is_causal=is_causal, **kwargs)
    B, N, _ = x.shape
    qkv = self.qkv(x)
    p = self.attn_drop.p if self.training else 0.0
    if isinstance(self.q_norm, nn.Identity):   # packed: q, k, v read from the qkv output by strides
        out = ops.qkv_attention(qkv, self.num_heads, dropout_p=p, scale=self.scale, backend=st.backend)
    else:
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = _ln(self.q_norm, q, st.backend), _ln(self.k_norm, k, st.backend)
        out = ops.attention(q, k, v, dropout_p=p, scale=self.scale, backend=st.backend)
        out = out.transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(out))


def timm_mlp_forward(self, x):
    return self.drop2(self.fc2(self.drop1(_fc1_act(self, self.fc1, self.act, x))))


def timm_block_forward(self, x, attn_mask=None, is_causal=False, **kwargs):
    st = _state(self)
    if attn_mask is not None or is_causal or kwargs:
        return st.call_original(self, x, attn_mask=attn_mask, is_causal=is_causal, **kwargs)
    y = _ln(self.norm1, x, st.backend)
    # layer scale and stochastic depth commute (per channel, per sample): gamma rides in the add
    h, y = _add_ln(self.norm2, x, self.drop_path1(self.attn(y)), st.backend, getattr(self.ls1, "gamma", None))
    return h + self.drop_path2(self.ls2(self.mlp(y)))


# -- transformers --------------------------------------------------------------------------------
def hf_attention_forward(self, hidden_states, attention_mask=None, **kwargs):
    st = _state(self)
    if attention_mask is not None or kwargs.get("output_attentions", False):
        return st.call_original(self, hidden_states, attention_mask=attention_mask, **kwargs)
    spec = st.spec
    shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
    k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
    v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
    p = float(getattr(self, spec["dropout"])) if self.training else 0.0
    out = ops.attention(q, k, v, dropout_p=p, scale=getattr(self, spec["scale"]), backend=st.backend)
    out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
    return getattr(self, spec["out"])(out), None


def hf_mlp_forward(self, hidden_states):
    return self.fc2(_fc1_act(self, self.fc1, self.activation_fn, hidden_states))


def hf_layer_forward(self, hidden_states, attention_mask=None, **kwargs):
    st = _state(self)
    s = st.spec   # attribute names of this layer class (patch.HF_LAYERS)
    x = hidden_states
    y = _ln(getattr(self, s["norm1"]), x, st.backend)
    a, _ = getattr(self, s["attn"])(hidden_states=y, attention_mask=attention_mask, **kwargs)
    gamma = None
    if s.get("ls1"):
        gamma = getattr(self, s["ls1"]).lambda1
    a = getattr(self, s["drop"])(a) if s.get("drop") else a
    h, y = _add_ln(getattr(self, s["norm2"]), x, a, st.backend, gamma)
    m = getattr(self, s["mlp"])(y)
    if s.get("ls2"):
        m = getattr(self, s["ls2"])(m)
    m = getattr(self, s["drop"])(m) if s.get("drop") else m
    return h + m


# -- open_clip -----------------------------------------------------------------------------------
def mha_self_attention_forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                               average_attn_weights=True, is_causal=False):
    """nn.MultiheadAttention (batch_first) as open_clip's blocks call it: self-attention, no
    masks, ``need_weights=False``. Anything else runs the original."""
    st = _state(self)
    if (need_weights or key_padding_mask is not None or attn_mask is not None or is_causal
            or key is not query or value is not query):
        return st.call_original(self, query, key, value, key_padding_mask=key_padding_mask,
                                need_weights=need_weights, attn_mask=attn_mask,
                                average_attn_weights=average_attn_weights, is_causal=is_causal)
    qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
    p = self.dropout if self.training else 0.0
    out = ops.qkv_attention(qkv, self.num_heads, dropout_p=p, backend=st.backend)
    return self.out_proj(out), None


def open_clip_mlp_forward(self, x):
    return self.c_proj(_fc1_act(self, self.c_fc, self.gelu, x))


def open_clip_block_forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
    st = _state(self)
    if k_x is not None or v_x is not None or attn_mask is not None:
        return st.call_original(self, q_x, k_x, v_x, attn_mask=attn_mask)
    y = _ln(self.ln_1, q_x, st.backend)
    h, y = _add_ln(self.ln_2, q_x, self.attention(q_x=y), st.backend, getattr(self.ls_1, "gamma", None))
    return h + self.ls_2(self.mlp(y))
