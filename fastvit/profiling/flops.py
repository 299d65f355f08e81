"""Analytic FLOP count of a FastViT forward pass, component by component, for every model
FastViT builds (plain ViT, DeiT, DINOv2 with registers, CLIP, SigLIP's MAP head, EVA-02, DINOv3,
the rope ViTs). The model is read, not mirrored: :func:`fastvit.profiling.model_shape.vit_shape`
builds it on the meta device and reads its module tree.

Convention, everywhere in fastvit: **FLOPs = 2 x MACs** (a multiply-accumulate is two floating
point operations). ``macs`` and ``flops`` count the matrix products only, which is what
``torch.utils.flop_counter.FlopCounterMode`` counts; bias adds are not part of them:

=============  ===========================================================================
patch_embed    the strided patch convolution, a (P, C*ph*pw) x (C*ph*pw, D) GEMM per image
qkv            the q, k, v projections of every block (one GEMM, or q_proj/k_proj/v_proj)
attn_qk        Q K^T of every block, over every token (patches and prefix tokens)
attn_av        attention x V of every block
proj           the attention output projection
fc1            the MLP's first layer; for SwiGLU both halves (fc1_g and fc1_x, or the packed
               fc1 of 2 x hidden outputs)
fc2            the MLP's second layer
head           the classifier (0 without one); with ``global_pool=""`` on every token
attn_pool      *only with MAP pooling* (``global_pool="map"``): the latent's q, kv of the
               patch tokens, its single-query attention, proj and its MLP's fc1 and fc2
head_dist      *only with a distillation token*: DeiT's second head
=============  ===========================================================================

Element-wise work is listed apart, in FLOPs, with these per-element counts (a transcendental
such as exp, erf or tanh counts as one FLOP; per-row statistics such as the division of a sum
by the row length or an rsqrt are ignored):

=============  ===========================================================================
layer_norm     7 per element: sum for the mean, subtract the mean, square, sum for the
               variance, multiply by rstd, multiply by the weight, add the bias. Every
               LayerNorm: norm1 and norm2 of each block, norm_pre (CLIP), q_norm and k_norm
               (qk_norm, over each head), the norm inside the MLP (EVA's scale_mlp, over the
               hidden width), the final norm on every token or fc_norm on the pooled features,
               and the MAP head's norm
softmax        6 per score: scale by 1/sqrt(head_dim), row max, subtract the max, exp, row
               sum, divide by the sum (the blocks' N x N scores and the MAP head's 1 x P)
gelu           per element of a GELU MLP's hidden layer: exact ("none") 5: x/sqrt(2), erf,
               +1, *x, *0.5; "tanh" 9: x^3 (2), *0.044715, +x, *sqrt(2/pi), tanh, +1, *x,
               *0.5; QuickGELU ("quick") 4: *(-1.702), exp, +1, x / that. 0 in SwiGLU models
bias           1 per output element of every Linear with a bias and of the patch convolution;
               EVA's q/v-only biases: 2 per token and channel (the key has none)
residual       1 per element for each of the two residual adds of a block (and the MAP
               head's MLP residual)
pos_embed      1 per element of the tokens the position embedding is added to (the patches,
               plus the prefix tokens it covers; 0 with rotary embeddings only)
pool           1 per element of the averaged patch tokens with ``global_pool="avg"``; with a
               distillation token 2 per output element of the two heads' mean; else 0
rope           *only with rotary embeddings*: rotating q and k of the patch tokens in every
               block, 3 per element (two multiplies and an add; ``fastvit.rope.rope_flops``)
gating         *only with SwiGLU*: act(gate) * value per hidden element, SiLU 4 + 1 (GEGLU's
               GELU 8 + 1; ``fastvit.eva.glu_flops``'s gating part)
layer_scale    *only with layer scale* (DeiT-III, DINOv2/v3, ``init_values``): 1 per element
               of each of the two scaled branches of a block
=============  ===========================================================================

Rows in italics appear in ``by_component`` only for models that have the part (so a plain
ViT's report reads as before); the others are always there, 0 where the model has none of it.
``FlopReport.structure`` records what was read from the model.

``timm_macs`` reproduces the GMACs column of timm's benchmark tables
(huggingface/pytorch-image-models ``results/benchmark-infer-amp-nchw-*.csv``; timm's
``benchmark.py`` gets it from fvcore's ``FlopCountAnalysis``): the matmul MACs above plus fvcore's
"rough estimate" of 5 per element for every affine LayerNorm
(facebookresearch/fvcore ``fvcore/nn/jit_handles.py``, ``norm_flop_counter``). fvcore adds those
LayerNorm units to the MACs, so we do the same there, and only there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..eva import glu_flops
from ..rope import rope_flops
from .model_shape import ViTShape, vit_shape

__all__ = ["FlopReport", "ViTShape", "vit_shape", "count_flops", "attention_share_by_resolution",
           "format_flops_table", "format_attention_share_table", "describe_structure", "MATMUL_COMPONENTS",
           "OPTIONAL_MATMUL_COMPONENTS", "ELEMENTWISE_COMPONENTS", "OPTIONAL_ELEMENTWISE_COMPONENTS",
           "ELEMENTWISE_FLOPS_PER_ELEMENT"]

# always in by_component (0 where the model has none of it) ...
MATMUL_COMPONENTS = ("patch_embed", "qkv", "attn_qk", "attn_av", "proj", "fc1", "fc2", "head")
ELEMENTWISE_COMPONENTS = ("layer_norm", "softmax", "gelu", "bias", "residual", "pos_embed", "pool")
# ... and only for the models that have the part
OPTIONAL_MATMUL_COMPONENTS = ("attn_pool", "head_dist")
OPTIONAL_ELEMENTWISE_COMPONENTS = ("rope", "gating", "layer_scale")
ELEMENTWISE_FLOPS_PER_ELEMENT = {"layer_norm": 7, "softmax": 6, "gelu": 5, "gelu_tanh": 9, "gelu_quick": 4,
                                 "bias": 1, "residual": 1, "pos_embed": 1, "pool": 1, "rope": 3, "gating_silu": 5,
                                 "gating_gelu": 9, "layer_scale": 1}
FVCORE_LAYER_NORM_PER_ELEMENT = 5  # fvcore's count for an affine LayerNorm, used by timm's tables


@dataclass
class FlopReport:
    """FLOPs of one forward pass. ``flops == 2 * macs`` and both cover the matrix products only;
    ``by_component["matmul"]`` sums to ``flops``, ``by_component["elementwise"]`` to
    ``elementwise_flops``; ``total_flops`` is their sum. ``tokens`` counts every token the
    blocks see (``patches`` + ``prefix_tokens``: class, distillation and register tokens);
    ``structure`` is the architecture as read from the model (``ViTShape.features``)."""
    model: str
    img_size: tuple[int, int]
    batch: int
    patches: int
    tokens: int
    params: int
    flops: int
    macs: int
    by_component: dict = field(default_factory=dict)
    elementwise_flops: int = 0
    total_flops: int = 0
    attention_flops: int = 0
    attention_share: float = 0.0
    backward_flops: int = 0
    timm_macs: int = 0
    prefix_tokens: int = 1
    structure: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        h, w = self.img_size
        d["img_size"] = h if h == w else [h, w]
        d["convention"] = "flops = 2 * macs; flops/macs count matrix products only; elementwise apart"
        return d


# -- the count -----------------------------------------------------------------------------------
def _pooled_rows(s: ViTShape) -> int:
    """Feature vectors per image the head sees: one, or every token with ``global_pool=""``."""
    return s.tokens if s.global_pool == "" and s.attn_pool is None else 1


def _matmul_macs(s: ViTShape, batch: int) -> dict:
    B, N, P, D = batch, s.tokens, s.patches, s.embed_dim
    ph, pw = s.patch_size
    macs = {"patch_embed": B * P * D * s.in_chans * ph * pw}  # the strided conv: a (P, C*ph*pw) x (C*ph*pw, D) GEMM
    for k in MATMUL_COMPONENTS[1:-1]:
        macs[k] = 0
    for b in s.blocks:
        inner = b.num_heads * b.head_dim
        macs["qkv"] += B * N * D * 3 * inner
        macs["attn_qk"] += B * b.num_heads * N * N * b.head_dim
        macs["attn_av"] += B * b.num_heads * N * N * b.head_dim
        macs["proj"] += B * N * inner * D
        macs["fc1"] += B * N * D * b.mlp.fc1_out  # both halves of a gated MLP
        macs["fc2"] += B * N * b.mlp.hidden * D
    rows = B * _pooled_rows(s)
    macs["head"] = rows * D * s.num_classes
    a = s.attn_pool
    if a is not None:  # MAP: the latent's q, kv of the patch tokens, its attention, proj and MLP
        Q, inner = B * a.latent_len, a.num_heads * a.head_dim
        macs["attn_pool"] = (Q * D * inner + B * P * D * 2 * inner + 2 * B * a.num_heads * a.latent_len * P * a.head_dim
                             + Q * inner * D + Q * D * a.mlp.fc1_out + Q * a.mlp.hidden * D)
    if s.head_dist:
        macs["head_dist"] = B * D * s.num_classes
    return macs


def _layer_norm_elements(s: ViTShape, batch: int) -> int:
    """Elements every LayerNorm of a forward normalises (the ``layer_norm`` row's table)."""
    B, N, D = batch, s.tokens, s.embed_dim
    n = B * N * D if s.norm_pre else 0
    for b in s.blocks:
        n += 2 * B * N * D  # norm1, norm2
        n += 2 * B * N * b.num_heads * b.head_dim if b.qk_norm else 0  # q_norm, k_norm over each head
        n += B * N * b.mlp.hidden if b.mlp.norm else 0  # scale_mlp: inside the MLP
    if s.norm:
        n += B * N * D  # every token
    if s.fc_norm and not s.dist_token:  # on the pooled features (the distilled heads skip it)
        n += B * _pooled_rows(s) * D
    if s.attn_pool is not None:
        n += B * s.attn_pool.latent_len * D + (B * s.attn_pool.latent_len * s.attn_pool.mlp.hidden
                                               if s.attn_pool.mlp.norm else 0)
    return n


def _mlp_elementwise(mlp, rows: int, D: int) -> tuple[int, int, int]:
    """(gelu FLOPs, gating FLOPs, bias elements) of an MLP on ``rows`` tokens."""
    per = ELEMENTWISE_FLOPS_PER_ELEMENT
    if mlp.gated:
        gelu, gating = 0, glu_flops(rows, D, mlp.hidden, mlp.activation)["gating"]
    else:
        gelu, gating = per[mlp.activation] * rows * mlp.hidden, 0
    bias = rows * (mlp.fc1_out + D) if mlp.bias else 0
    return gelu, gating, bias


def _elementwise_flops(s: ViTShape, batch: int) -> dict:
    B, N, P, D = batch, s.tokens, s.patches, s.embed_dim
    per = ELEMENTWISE_FLOPS_PER_ELEMENT
    softmax = gelu = gating = layer_scale = rope = 0
    bias = B * P * D if s.patch_bias else 0
    residual = 0
    for b in s.blocks:
        inner = b.num_heads * b.head_dim
        softmax += B * b.num_heads * N * N
        g, gt, bi = _mlp_elementwise(b.mlp, B * N, D)
        gelu, gating = gelu + g, gating + gt
        bias += B * N * ({"qkv": 3, "qv": 2, "none": 0}[b.qkv_bias] * inner + (D if b.proj_bias else 0)) + bi
        residual += 2 * B * N * D
        layer_scale += 2 * B * N * D if b.layer_scale else 0
        rope += rope_flops(B, b.num_heads, s.rotated_tokens, b.head_dim) if b.rope else 0
    rows = B * _pooled_rows(s)
    heads = 2 if s.head_dist else 1
    bias += heads * rows * s.num_classes
    a = s.attn_pool
    if a is not None:
        Q, inner = B * a.latent_len, a.num_heads * a.head_dim
        softmax += B * a.num_heads * a.latent_len * P
        g, gt, bi = _mlp_elementwise(a.mlp, Q, D)
        gelu, gating = gelu + g, gating + gt
        bias += (Q * inner if a.q_bias else 0) + (B * P * 2 * inner if a.kv_bias else 0) + (Q * D if a.proj_bias else 0)
        bias += bi
        residual += Q * D
    if s.global_pool == "avg":
        pool = per["pool"] * B * P * D  # the mean over the patch tokens
    elif s.head_dist:
        pool = 2 * B * (s.num_classes or D)  # (cls + dist) / 2 of the two heads' outputs
    else:
        pool = 0
    out = {
        "layer_norm": per["layer_norm"] * _layer_norm_elements(s, batch),
        "softmax": per["softmax"] * softmax,
        "gelu": gelu,
        "bias": per["bias"] * bias,
        "residual": per["residual"] * residual,
        "pos_embed": per["pos_embed"] * B * s.pos_embed_tokens * D,
        "pool": pool,
    }
    if s.rope is not None:
        out["rope"] = rope
    if any(b.mlp.gated for b in s.blocks) or (a is not None and a.mlp.gated):
        out["gating"] = gating
    if s.layer_scale:
        out["layer_scale"] = per["layer_scale"] * layer_scale
    return out


def count_flops(model_or_name, img_size=None, batch: int = 1, **overrides) -> FlopReport:
    """Analytic FLOPs of one forward pass of ``model_or_name`` (a ``FastViT``, a registered name,
    a ``VariantConfig``, a dict of ``FastViT`` arguments or a ``ViTShape``) on ``batch`` images of
    ``img_size`` (int or (H, W), multiples of the patch size; default the model's own size).

    ``by_component = {"matmul": {...}, "elementwise": {...}}`` in FLOPs (the optional rows only
    for models that have the part: module docstring); ``flops = 2 * macs`` (matrix products
    only); ``attention_share`` is the blocks' (Q K^T + attention x V) / matmul FLOPs;
    ``backward_flops`` is the matmul work of the backward pass (twice the forward per product,
    except the patch embedding, whose image input needs no gradient: once); ``structure`` says
    what was read from the model and counted.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    s = vit_shape(model_or_name, img_size, **overrides)
    macs = _matmul_macs(s, batch)
    matmul = {k: 2 * v for k, v in macs.items()}
    elementwise = _elementwise_flops(s, batch)
    total_macs = sum(macs.values())
    flops = 2 * total_macs
    attn = matmul["attn_qk"] + matmul["attn_av"]
    ew = sum(elementwise.values())
    return FlopReport(
        model=s.name, img_size=s.img_size, batch=batch, patches=s.patches, tokens=s.tokens, params=s.params,
        flops=flops, macs=total_macs, by_component={"matmul": matmul, "elementwise": elementwise},
        elementwise_flops=ew, total_flops=flops + ew, attention_flops=attn,
        attention_share=attn / flops if flops else 0.0,
        backward_flops=2 * flops - matmul["patch_embed"],
        timm_macs=total_macs + FVCORE_LAYER_NORM_PER_ELEMENT * _layer_norm_elements(s, batch),
        prefix_tokens=s.num_prefix_tokens, structure=s.features(),
    )


def attention_share_by_resolution(model_or_name, sizes=(224, 384, 512, 768, 1024), batch: int = 1,
                                  **overrides) -> list[dict]:
    """How the attention products (Q K^T and attention x V, O(N^2 D) per layer) grow against the
    linear layers (O(N D^2)) as the resolution rises. One dict per size: ``img_size, tokens,
    attention_flops, linear_flops`` (all other matrix products), ``flops``, ``attention_share``
    and ``attention_to_linear``, which grows about linearly with the token count."""
    shape = vit_shape(model_or_name, None, **overrides)  # read once, evaluated at each size
    rows = []
    for size in sizes:
        r = count_flops(shape, size, batch)
        linear = r.flops - r.attention_flops
        h, w = r.img_size
        rows.append({"img_size": h if h == w else [h, w], "tokens": r.tokens, "attention_flops": r.attention_flops,
                     "linear_flops": linear, "flops": r.flops, "attention_share": r.attention_share,
                     "attention_to_linear": r.attention_flops / linear if linear else float("inf")})
    return rows


# -- text tables ---------------------------------------------------------------------------------
def _g(x: int) -> str:
    return f"{x / 1e9:,.3f}"


def describe_structure(st: dict) -> str:
    """One line of what a report counted (``FlopReport.structure``)."""
    mlp = {"mlp": f"GELU MLP ({st['mlp_activation']})", "swiglu": "SwiGLU (fc1_g, fc1_x)",
           "swiglu_packed": "SwiGLU (packed fc1)"}[st["mlp"]]
    parts = [f"{st['blocks']} blocks", f"qkv bias {'q,v' if st['qkv_bias'] == 'qv' else st['qkv_bias']}",
             f"{mlp} hidden {st['mlp_hidden']}" + (" + norm" if st["mlp_norm"] else "")]
    parts += [name for name, on in (("qk_norm", st["qk_norm"]), ("layer scale", st["layer_scale"]),
                                    ("norm_pre", st["norm_pre"])) if on]
    if st["rope"]:
        parts.append(f"rope ({st['rope']}) on the patches")
    parts.append(f"pos_embed on {st['pos_embed_tokens']} tokens" if st["pos_embed_tokens"] else "no pos_embed")
    pool = {"token": "token", "avg": "avg", "map": "MAP", "": "none"}[st["global_pool"]]
    parts.append(f"pool {pool}" + (f" + {st['final_norm']}" if st["final_norm"] else ""))
    parts.append({0: "no head", 1: "head", 2: "head + head_dist"}[st["heads"]])
    return ", ".join(parts)


def format_flops_table(report: FlopReport) -> str:
    """A plain-text table of one :class:`FlopReport` (GFLOPs, FLOPs = 2 x MACs)."""
    h, w = report.img_size
    st = report.structure
    prefix = st.get("prefix", f"{report.prefix_tokens} prefix tokens")
    prefix = ", no prefix token" if report.prefix_tokens == 0 else f" + {prefix}"
    lines = [f"{report.model} @ {h}x{w}, batch {report.batch}: {report.tokens} tokens "
             f"({report.patches} patches{prefix}), {report.params / 1e6:.2f} M params"]
    if st:
        lines.append(f"Counted: {describe_structure(st)}")
    lines += ["FLOPs = 2 x MACs. Matrix products:", f"  {'component':<14}{'GFLOPs':>14}{'share':>9}"]
    for k, v in report.by_component["matmul"].items():
        share = v / report.flops if report.flops else 0.0
        lines.append(f"  {k:<14}{_g(v):>14}{share:>8.1%}")
    lines.append(f"  {'total':<14}{_g(report.flops):>14}{'':>9}  ({report.macs / 1e9:,.3f} GMACs)")
    lines.append("Element-wise (FLOPs per element: layer_norm 7, softmax 6, gelu 5 (tanh 9, quick 4), bias 1, "
                 "residual 1, pos_embed 1, pool 1; where the model has them: rope 3, gating 5 (SiLU), "
                 "layer_scale 1):")
    for k, v in report.by_component["elementwise"].items():
        lines.append(f"  {k:<14}{_g(v):>14}")
    lines.append(f"  {'total':<14}{_g(report.elementwise_flops):>14}")
    lines.append(f"attention (QK^T + AV) share of matmul FLOPs: {report.attention_share:.1%}")
    lines.append(f"all FLOPs: {_g(report.total_flops)} G; backward matmul: {_g(report.backward_flops)} G; "
                 f"timm/fvcore GMACs: {report.timm_macs / 1e9:.2f}")
    return "\n".join(lines)


def format_attention_share_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`attention_share_by_resolution`."""
    lines = [f"{'img_size':>9}{'tokens':>8}{'attn GFLOPs':>13}{'linear GFLOPs':>15}{'attn share':>12}"
             f"{'attn/linear':>13}"]
    for r in rows:
        size = r["img_size"] if isinstance(r["img_size"], int) else "x".join(map(str, r["img_size"]))
        lines.append(f"{size:>9}{r['tokens']:>8}{_g(r['attention_flops']):>13}{_g(r['linear_flops']):>15}"
                     f"{r['attention_share']:>11.1%}{r['attention_to_linear']:>13.3f}")
    return "\n".join(lines)
