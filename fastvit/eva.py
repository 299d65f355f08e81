"""timm's ``Eva`` block pieces (EVA-02, DINOv3, the vit_*_rope_* models) on fastvit's ops, with
timm's parameter names: gated MLPs (``SwiGLU``, ``SwiGLUPacked``), the GELU MLP with a norm
inside (``scale_mlp``), attention with rotary position embeddings and EVA's q/v-only biases,
and ``EvaBlock``, the pre-norm block with ``gamma_1``/``gamma_2`` layer scales.

Every residual add (and its layer scale) rides in the LayerNorm after it, as in
``fastvit.layers.Block``; ``EvaBlock.forward(x, pending, packing=None, rope=None)`` takes the
rotary tables (cos, sin) of the input's patch grid from the model (``fastvit.rope``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .backend import check_backend
from .layers import AttentionProbe, DropPath, LayerNorm, Mlp, Pending, init_heads

MLP_LAYERS = ("mlp", "swiglu", "swiglu_packed")


def check_eva_options(rope, mlp_layer, scale_mlp, qkv_fused, pos_embed, qk_norm, proj_bias, head_dim) -> bool:
    """Validate timm's Eva options; True when the blocks must be EvaBlocks."""
    if mlp_layer not in MLP_LAYERS:
        raise ValueError(f"mlp_layer must be one of {', '.join(map(repr, MLP_LAYERS))}, got {mlp_layer!r}")
    if pos_embed not in ("learn", "none"):
        raise ValueError(f"pos_embed must be 'learn' or 'none', got {pos_embed!r}")
    eva = rope is not None or mlp_layer != "mlp" or bool(scale_mlp) or not qkv_fused
    if eva and (qk_norm or not proj_bias):
        raise ValueError("qk_norm=True and proj_bias=False are not supported with the Eva options (rope, mlp_layer, "
                         "scale_mlp, qkv_fused=False)")
    if rope is not None and head_dim % 4:
        raise ValueError(f"rope needs head_dim (embed_dim / num_heads) divisible by 4, got {head_dim}")
    return eva


class NormMlp(Mlp):
    """fc1 -> GELU -> LayerNorm over the hidden width (timm's ``Mlp(norm_layer=...)``, EVA's
    ``scale_mlp``) -> fc2; fc1's bias and GELU fused as in ``Mlp``, the norm on fastvit's op."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, approximate: str = "none",
                 bias: bool = True, eps: float = 1e-6, backend: str = "auto"):
        super().__init__(in_features, hidden_features, drop=drop, approximate=approximate, bias=bias,
                         backend=backend)
        self.norm = LayerNorm(hidden_features, eps=eps, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ops.linear_gelu(x, self.fc1.weight, self.fc1.bias, self.approximate, backend=self.backend)
        return self.drop2(self.fc2(self.norm(self.drop1(x))))


class SwiGLU(nn.Module):
    """timm's ``SwiGLU``: separate gate and value projections ``fc1_g``, ``fc1_x``, then
    act(gate) * value, an optional LayerNorm (``norm``: EVA-02's ``scale_mlp``) and ``fc2``.
    Both projections, the biases, SiLU and the product are one ``ops.linear_glu`` (one GEMM
    reading both weights on triton)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, norm: bool = False,
                 bias: bool = True, eps: float = 1e-6, activation: str = "silu", backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)
        self.activation = activation
        self.fc1_g = nn.Linear(in_features, hidden_features, bias=bias)
        self.fc1_x = nn.Linear(in_features, hidden_features, bias=bias)
        self.drop1 = nn.Dropout(drop)
        self.norm = LayerNorm(hidden_features, eps=eps, backend=backend) if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = (self.fc1_g.bias, self.fc1_x.bias) if self.fc1_g.bias is not None else None
        x = ops.linear_glu(x, (self.fc1_g.weight, self.fc1_x.weight), bias, self.activation, backend=self.backend)
        return self.drop2(self.fc2(self.norm(self.drop1(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, backend={self.backend!r}"


class SwiGLUPacked(nn.Module):
    """timm's ``SwiGLUPacked`` (``GluMlp(act_layer=SiLU, gate_last=False)``): one ``fc1`` of
    2 * hidden outputs, gate half first, act(gate) * value, optional ``norm``, ``fc2``."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, norm: bool = False,
                 bias: bool = True, eps: float = 1e-6, activation: str = "silu", backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)
        self.activation = activation
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.drop1 = nn.Dropout(drop)
        self.norm = LayerNorm(hidden_features, eps=eps, backend=backend) if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ops.linear_glu(x, self.fc1.weight, self.fc1.bias, self.activation, backend=self.backend)
        return self.drop2(self.fc2(self.norm(self.drop1(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, backend={self.backend!r}"


def make_mlp(kind: str, dim: int, hidden: int, *, scale_mlp: bool, drop: float, approximate: str, eps: float,
             backend: str) -> nn.Module:
    """The MLP of an Eva block, as timm's EvaBlock picks it: "mlp" (GELU; with ``scale_mlp`` a
    norm inside), "swiglu" (split fc1_g / fc1_x, what timm builds for SwiGLU with ``scale_mlp``
    or ``swiglu_align_to``) or "swiglu_packed" (one packed fc1)."""
    if kind == "mlp":
        if scale_mlp:
            return NormMlp(dim, hidden, drop=drop, approximate=approximate, eps=eps, backend=backend)
        return Mlp(dim, hidden, drop=drop, approximate=approximate, backend=backend)
    cls = SwiGLU if kind == "swiglu" else SwiGLUPacked
    return cls(dim, hidden, drop=drop, norm=scale_mlp, eps=eps, backend=backend)


class EvaAttention(nn.Module):
    """timm's ``EvaAttention``: a fused ``qkv`` Linear without bias plus ``q_bias`` and
    ``v_bias`` (the key bias is always zero), or separate
    ``q_proj`` / ``k_proj`` / ``v_proj`` (``qkv_fused=False``, key without bias); rotary
    embeddings on every token after the ``num_prefix_tokens`` first.

    Either way q, k and v come out of one GEMM into the packed (B, N, 3*H*D) layout (the
    separate weights concatenated per call: 3*D*D elements, small beside the activations), so
    attention reads them by strides (``ops.rope_qkv_attention``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qkv_fused: bool = True,
                 num_prefix_tokens: int = 1, rope_pairing: str = "interleaved", attn_drop: float = 0.0,
                 proj_drop: float = 0.0, backend: str = "auto"):
        super().__init__()
        init_heads(self, dim, num_heads, backend)
        self.num_prefix_tokens = num_prefix_tokens
        self.rope_pairing = rope_pairing
        if qkv_fused:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.q_proj = self.k_proj = self.v_proj = None
            # timm's zero key bias is a non-persistent buffer: here a constant made on first use
            # (no state-dict key either way, and nothing left on the meta device by conversions)
            self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
            self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        else:
            self.qkv = None
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.q_bias = self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.probe: Optional[AttentionProbe] = None
        self._qkv_bias_cache = None  # (key, vector); like _zero_cache not a parameter or buffer: no state-dict key
        self._zero_cache: dict = {}

    def init_weights(self) -> None:
        for b in (self.q_bias, self.v_bias):
            if b is not None:
                nn.init.zeros_(b)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        if self.qkv is not None:
            weight = self.qkv.weight
            bias = None if self.q_bias is None else self._qkv_bias((self.q_bias, None, self.v_bias))
        else:
            # Separate weights are concatenated per call, never kept: a kept copy would double the
            # qkv weights of every layer (eva02_large: +300 MB in fp32) to save one launch.
            weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
            bias = None if self.q_proj.bias is None else self._qkv_bias((self.q_proj.bias, None, self.v_proj.bias))
        return F.linear(x, weight, bias)

    def _qkv_bias(self, parts) -> torch.Tensor:
        """q, k and v's biases as one vector for the single qkv GEMM (None: the key's zero bias).
        While autograd records, one concatenation per call (its backward splits the gradient);
        otherwise the vector (3 x width) is kept and reused until a bias changes (the key: storage
        and in-place version of each part), so inference launches nothing for it."""
        given = [p for p in parts if p is not None]
        recording = torch.is_grad_enabled() and any(p.requires_grad for p in given)
        if recording or torch.compiler.is_compiling():
            return torch.cat([self._zeros(given[0]) if p is None else p for p in parts])
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in given)
        if self._qkv_bias_cache is None or self._qkv_bias_cache[0] != key:
            self._qkv_bias_cache = (key, torch.cat([self._zeros(given[0]) if p is None else p for p in parts]))
        return self._qkv_bias_cache[1]

    def _zeros(self, like: torch.Tensor) -> torch.Tensor:
        """The key's zero bias (a constant: made once per dtype and device, never in the state dict)."""
        key = (like.dtype, like.device)
        if key not in self._zero_cache:
            self._zero_cache[key] = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
        return self._zero_cache[key]

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                packing=None) -> torch.Tensor:
        """x (B, N, C) with the tables (N - num_prefix_tokens, D) of its grid; or packed images
        (1, T, C) with their ``packing`` and per-token tables (T, D) (``fastvit.packed``)."""
        qkv = self._qkv(x)
        p = self.attn_drop.p if self.training else 0.0
        kw = dict(dropout_p=p, scale=self.scale, backend=self.backend)
        rot = dict(num_prefix_tokens=self.num_prefix_tokens, pairing=self.rope_pairing)
        if packing is not None:
            return self.proj_drop(self.proj(self._packed(qkv, rope, packing, kw)))
        if self.probe is not None:  # the probe sees q and k as attention does: rotated
            if rope is not None:
                qkv = ops.rope_qkv(qkv, self.num_heads, rope[0], rope[1], **rot)
            out, lse = ops.qkv_attention(qkv, self.num_heads, return_lse=True, **kw)
            B, N, _ = qkv.shape
            q, k, _ = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            self.probe(self, q, k, lse)
        elif rope is not None:  # rotated inside the attention kernel on triton
            out = ops.rope_qkv_attention(qkv, self.num_heads, rope[0], rope[1], **rot, **kw)
        else:
            out = ops.qkv_attention(qkv, self.num_heads, **kw)
        return self.proj_drop(self.proj(out))

    def _packed(self, qkv: torch.Tensor, rope, packing, kw: dict) -> torch.Tensor:
        # Each image attends to itself only (variable-length attention, no padding). The tables
        # hold a row per packed token, identity rows on each image's prefix tokens; the rotation
        # is a separate pass here (the varlen kernels do not rotate).
        if self.probe is not None:
            raise ValueError("attention maps are computed on image batches (B, C, H, W), not on packed lists")
        T = qkv.shape[1]
        if rope is not None:
            qkv = ops.rope_qkv(qkv, self.num_heads, rope[0], rope[1], num_prefix_tokens=0, pairing=self.rope_pairing)
        out = ops.varlen_qkv_attention(qkv.view(T, -1), self.num_heads, packing.cu_seqlens, packing.max_seqlen, **kw)
        return out.reshape(1, T, -1)


class EvaBlock(nn.Module):
    """timm's pre-norm ``EvaBlock``: x + gamma_1 * attn(norm1(x)), then + gamma_2 * mlp(norm2(x)),
    with the adds folded into the LayerNorms after them (``fastvit.layers.Block``'s form)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qkv_fused: bool = True, mlp_layer: str = "mlp", scale_mlp: bool = False, num_prefix_tokens: int = 1,
                 rope_pairing: str = "interleaved", proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, init_values: float | None = None, gelu_approximate: str = "none",
                 eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)
        self.norm1 = LayerNorm(dim, eps=eps, backend=backend)
        self.attn = EvaAttention(dim, num_heads, qkv_bias=qkv_bias, qkv_fused=qkv_fused,
                                 num_prefix_tokens=num_prefix_tokens, rope_pairing=rope_pairing, attn_drop=attn_drop,
                                 proj_drop=proj_drop, backend=backend)
        self.init_values = init_values
        self.gamma_1 = nn.Parameter(torch.zeros(dim)) if init_values is not None else None
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=eps, backend=backend)
        self.mlp = make_mlp(mlp_layer, dim, int(dim * mlp_ratio), scale_mlp=scale_mlp, drop=proj_drop,
                            approximate=gelu_approximate, eps=eps, backend=backend)
        self.gamma_2 = nn.Parameter(torch.zeros(dim)) if init_values is not None else None
        self.drop_path2 = DropPath(drop_path)

    def init_weights(self) -> None:
        for g in (self.gamma_1, self.gamma_2):
            if g is not None:
                nn.init.constant_(g, self.init_values)
        self.attn.init_weights()

    def forward(self, x: torch.Tensor, pending: Pending | None = None, packing=None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, Pending]:
        if pending is None:
            h, y = x, self.norm1(x)
        else:
            h, y = self.norm1.forward_add(x, pending.branch, pending.scale)
        h, y = self.norm2.forward_add(h, self.drop_path1(self.attn(y, rope, packing)), self.gamma_1)
        return h, Pending(self.drop_path2(self.mlp(y)), self.gamma_2)


def glu_flops(tokens: int, dim: int, hidden: int, activation: str = "silu") -> dict:
    """Forward flops of a gated MLP's first layer per call, by part: the GEMM of both halves
    (2 * tokens * dim * 2 * hidden) and the gating, per hidden element: the activation (SiLU:
    negate, exp, add, divide, 4; erf GELU: counted as 8, its polynomial's cost is
    implementation-defined) and the product with the value (1)."""
    act = {"silu": 4, "gelu": 8}[activation]
    return {"gemm": 2 * tokens * dim * 2 * hidden, "gating": tokens * hidden * (act + 1)}
