"""Analytic FLOP count of a FastViT forward pass, component by component.

Convention, everywhere in fastvit: **FLOPs = 2 x MACs** (a multiply-accumulate is two floating
point operations). ``macs`` and ``flops`` count the matrix products only (patch-embedding
convolution, qkv, Q K^T, attention x V, proj, fc1, fc2, head), which is what
``torch.utils.flop_counter.FlopCounterMode`` counts; bias adds are not part of them.

Element-wise work is listed apart, in FLOPs, with these per-element counts (a transcendental
such as exp, erf or tanh counts as one FLOP; per-row statistics such as the division of a sum
by the row length or an rsqrt are ignored):

=============  ===========================================================================
layer_norm     7 per element: sum for the mean, subtract the mean, square, sum for the
               variance, multiply by rstd, multiply by the weight, add the bias
softmax        6 per score: scale by 1/sqrt(head_dim), row max, subtract the max, exp, row
               sum, divide by the sum
gelu           exact ("none"): 5 per element: x/sqrt(2), erf, +1, *x, *0.5;
               "tanh": 9 per element: x^3 (2), *0.044715, +x, *sqrt(2/pi), tanh, +1, *x, *0.5
bias           1 per output element of every Linear with a bias and of the patch convolution
residual       1 per element for each of the two residual adds of a block
pos_embed      1 per element: adding the position embeddings to the tokens
pool           1 per element of the averaged patch tokens with ``global_pool="avg"``; 0 with
               the CLS token
=============  ===========================================================================

``timm_macs`` reproduces the GMACs column of timm's benchmark tables
(huggingface/pytorch-image-models ``results/benchmark-infer-amp-nchw-*.csv``; timm's
``benchmark.py`` gets it from fvcore's ``FlopCountAnalysis``): the matmul MACs above plus fvcore's
"rough estimate" of 5 per element for every affine LayerNorm
(facebookresearch/fvcore ``fvcore/nn/jit_handles.py``, ``norm_flop_counter``). fvcore adds those
LayerNorm units to the MACs, so we do the same there, and only there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["FlopReport", "ViTShape", "vit_shape", "count_flops", "attention_share_by_resolution",
           "format_flops_table", "format_attention_share_table", "MATMUL_COMPONENTS",
           "ELEMENTWISE_COMPONENTS", "ELEMENTWISE_FLOPS_PER_ELEMENT"]

MATMUL_COMPONENTS = ("patch_embed", "qkv", "attn_qk", "attn_av", "proj", "fc1", "fc2", "head")
ELEMENTWISE_COMPONENTS = ("layer_norm", "softmax", "gelu", "bias", "residual", "pos_embed", "pool")
ELEMENTWISE_FLOPS_PER_ELEMENT = {"layer_norm": 7, "softmax": 6, "gelu": 5, "gelu_tanh": 9, "bias": 1,
                                 "residual": 1, "pos_embed": 1, "pool": 1}
FVCORE_LAYER_NORM_PER_ELEMENT = 5  # fvcore's count for an affine LayerNorm, used by timm's tables


@dataclass(frozen=True)
class ViTShape:
    """Everything the count needs to know about a model, at its evaluation resolution."""
    name: str
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    num_classes: int
    qkv_bias: bool
    global_pool: str
    gelu_approximate: str
    params: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]

    @property
    def patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def tokens(self) -> int:
        return self.patches + 1  # the CLS token

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass
class FlopReport:
    """FLOPs of one forward pass. ``flops == 2 * macs`` and both cover the matrix products only;
    ``by_component["matmul"]`` sums to ``flops``, ``by_component["elementwise"]`` to
    ``elementwise_flops``; ``total_flops`` is their sum."""
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

    def to_dict(self) -> dict:
        d = asdict(self)
        h, w = self.img_size
        d["img_size"] = h if h == w else [h, w]
        d["convention"] = "flops = 2 * macs; flops/macs count matrix products only; elementwise apart"
        return d


# -- resolving a model, a name or a config into a ViTShape ----------------------------------------
def vit_shape(model_or_name, img_size=None, **overrides) -> ViTShape:
    """A :class:`ViTShape` for a ``FastViT``, a registered name (``fastvit.list_models()``), a
    ``VariantConfig`` or a dict of ``FastViT`` keyword arguments, evaluated at ``img_size``
    (int or (H, W); default: the model's own). ``overrides`` (e.g. ``depth=2``) apply to names and
    configs, not to a built model."""
    from ..vit import FastViT, VariantConfig, count_params, model_config

    if isinstance(model_or_name, FastViT):
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} apply to a model name or config, not to a built FastViT")
        m = model_or_name
        blk = m.blocks[0]
        name = getattr(m, "name", None) or "FastViT"
        cfg = dict(img_size=tuple(m.img_size), patch_size=tuple(m.patch_size), in_chans=m.patch_embed.proj.in_channels,
                   embed_dim=m.embed_dim, depth=len(m.blocks), num_heads=m.num_heads,
                   mlp_hidden=blk.mlp.fc1.out_features, num_classes=m.num_classes,
                   qkv_bias=blk.attn.qkv.bias is not None, global_pool=m.global_pool,
                   gelu_approximate=blk.mlp.approximate, params=sum(p.numel() for p in m.parameters()))
    else:
        if isinstance(model_or_name, str):
            name, kwargs = model_or_name, model_config(model_or_name).kwargs()
        elif isinstance(model_or_name, VariantConfig):
            name, kwargs = "custom", model_or_name.kwargs()
        elif isinstance(model_or_name, dict):
            name, kwargs = "custom", dict(model_or_name)
        else:
            raise TypeError("model_or_name must be a FastViT, a registered model name, a VariantConfig or a dict "
                            f"of FastViT arguments, got {type(model_or_name).__name__}")
        kwargs.update(overrides)
        defaults = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                        num_heads=12, mlp_ratio=4.0, qkv_bias=True, global_pool="token", gelu_approximate="none")
        unknown = set(kwargs) - set(defaults) - {"drop_rate", "attn_drop_rate", "proj_drop_rate", "drop_path_rate",
                                                  "backend"}
        if unknown:
            raise ValueError(f"unknown FastViT argument(s) {sorted(unknown)}")
        c = {**defaults, **{k: v for k, v in kwargs.items() if k in defaults}}
        _check_positive(c, ("in_chans", "embed_dim", "depth", "num_heads"))
        if c["embed_dim"] % c["num_heads"]:
            raise ValueError(f"embed_dim ({c['embed_dim']}) must be divisible by num_heads ({c['num_heads']})")
        if c["global_pool"] not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {c['global_pool']!r}")
        if c["gelu_approximate"] not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {c['gelu_approximate']!r}")
        cfg = dict(img_size=_pair_checked(c["img_size"]), patch_size=_pair_checked(c["patch_size"], "patch_size"),
                   in_chans=c["in_chans"], embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                   mlp_hidden=int(c["embed_dim"] * c["mlp_ratio"]), num_classes=c["num_classes"],
                   qkv_bias=bool(c["qkv_bias"]), global_pool=c["global_pool"],
                   gelu_approximate=c["gelu_approximate"], params=count_params(**c))
    size = cfg["img_size"] if img_size is None else _pair_checked(img_size)
    ph, pw = cfg["patch_size"]
    if size[0] % ph or size[1] % pw or size[0] < ph or size[1] < pw:
        raise ValueError(f"img_size {size} must be positive multiples of the patch size {(ph, pw)}")
    cfg["img_size"] = size
    return ViTShape(name=name, **cfg)


def _pair_checked(v, name: str = "img_size") -> tuple[int, int]:
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in pair):
        raise ValueError(f"{name} must be a positive int or a pair (H, W) of positive ints, got {v!r}")
    return int(pair[0]), int(pair[1])


def _check_positive(c: dict, names) -> None:
    for n in names:
        v = c[n]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{n} must be a positive int, got {v!r}")


# -- the count -----------------------------------------------------------------------------------
def _matmul_macs(s: ViTShape, batch: int) -> dict:
    B, N, P, D, L = batch, s.tokens, s.patches, s.embed_dim, s.depth
    ph, pw = s.patch_size
    return {
        "patch_embed": B * P * D * s.in_chans * ph * pw,  # the strided conv is a (P, C*ph*pw) x (C*ph*pw, D) GEMM
        "qkv": L * B * N * D * 3 * D,
        "attn_qk": L * B * s.num_heads * N * N * s.head_dim,
        "attn_av": L * B * s.num_heads * N * N * s.head_dim,
        "proj": L * B * N * D * D,
        "fc1": L * B * N * D * s.mlp_hidden,
        "fc2": L * B * N * s.mlp_hidden * D,
        "head": B * D * s.num_classes,
    }


def _layer_norm_elements(s: ViTShape, batch: int) -> int:
    B, N, D = batch, s.tokens, s.embed_dim
    final = B * N * D if s.global_pool == "token" else B * D  # norm on all tokens, or fc_norm on the pooled vector
    return 2 * s.depth * B * N * D + final


def _elementwise_flops(s: ViTShape, batch: int) -> dict:
    B, N, P, D, L, Hd = batch, s.tokens, s.patches, s.embed_dim, s.depth, s.mlp_hidden
    per = ELEMENTWISE_FLOPS_PER_ELEMENT
    gelu = per["gelu_tanh"] if s.gelu_approximate == "tanh" else per["gelu"]
    bias_elems = (B * P * D  # patch conv
                  + L * B * N * ((3 * D if s.qkv_bias else 0) + D + Hd + D)  # qkv, proj, fc1, fc2
                  + B * s.num_classes)
    return {
        "layer_norm": per["layer_norm"] * _layer_norm_elements(s, batch),
        "softmax": per["softmax"] * L * B * s.num_heads * N * N,
        "gelu": gelu * L * B * N * Hd,
        "bias": per["bias"] * bias_elems,
        "residual": per["residual"] * 2 * L * B * N * D,
        "pos_embed": per["pos_embed"] * B * N * D,
        "pool": per["pool"] * B * P * D if s.global_pool == "avg" else 0,
    }


def count_flops(model_or_name, img_size=None, batch: int = 1, **overrides) -> FlopReport:
    """Analytic FLOPs of one forward pass of ``model_or_name`` (a ``FastViT``, a registered name,
    a ``VariantConfig`` or a dict of ``FastViT`` arguments) on ``batch`` images of ``img_size``
    (int or (H, W), multiples of the patch size; default the model's own size).

    ``by_component = {"matmul": {...}, "elementwise": {...}}`` in FLOPs; ``flops = 2 * macs`` (matrix
    products only); ``attention_share`` is (Q K^T + attention x V) / matmul FLOPs;
    ``backward_flops`` is the matmul work of the backward pass (twice the forward per product,
    except the patch embedding, whose image input needs no gradient: once).
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
    )


def attention_share_by_resolution(model_or_name, sizes=(224, 384, 512, 768, 1024), batch: int = 1,
                                  **overrides) -> list[dict]:
    """How the attention products (Q K^T and attention x V, O(N^2 D) per layer) grow against the
    linear layers (O(N D^2)) as the resolution rises. One dict per size: ``img_size, tokens,
    attention_flops, linear_flops`` (all other matrix products), ``flops``, ``attention_share``
    and ``attention_to_linear``, which grows about linearly with the token count."""
    rows = []
    for size in sizes:
        r = count_flops(model_or_name, size, batch, **overrides)
        linear = r.flops - r.attention_flops
        h, w = r.img_size
        rows.append({"img_size": h if h == w else [h, w], "tokens": r.tokens, "attention_flops": r.attention_flops,
                     "linear_flops": linear, "flops": r.flops, "attention_share": r.attention_share,
                     "attention_to_linear": r.attention_flops / linear if linear else float("inf")})
    return rows


# -- text tables ---------------------------------------------------------------------------------
def _g(x: int) -> str:
    return f"{x / 1e9:,.3f}"


def format_flops_table(report: FlopReport) -> str:
    """A plain-text table of one :class:`FlopReport` (GFLOPs, FLOPs = 2 x MACs)."""
    h, w = report.img_size
    lines = [f"{report.model} @ {h}x{w}, batch {report.batch}: {report.tokens} tokens "
             f"({report.patches} patches + CLS), {report.params / 1e6:.2f} M params",
             "FLOPs = 2 x MACs. Matrix products:",
             f"  {'component':<14}{'GFLOPs':>14}{'share':>9}"]
    for k, v in report.by_component["matmul"].items():
        share = v / report.flops if report.flops else 0.0
        lines.append(f"  {k:<14}{_g(v):>14}{share:>8.1%}")
    lines.append(f"  {'total':<14}{_g(report.flops):>14}{'':>9}  ({report.macs / 1e9:,.3f} GMACs)")
    lines.append("Element-wise (FLOPs per element: layer_norm 7, softmax 6, gelu 5 (tanh 9), bias 1, "
                 "residual 1, pos_embed 1, pool 1):")
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
