"""``fastvit.patch(model)`` / ``fastvit.unpatch(model)``: the model you already have, on fastvit's
fused ops, in place.

Recognised (anywhere in the module tree, e.g. ``CLIPModel.vision_model`` or a wrapper of yours):

- timm ``VisionTransformer``: its ``Block``s, ``Attention``s, ``Mlp``s and LayerNorms;
- transformers vision models (``ViTModel``, ``DeiTModel``, ``Dinov2Model``,
  ``Dinov2WithRegistersModel``, ``CLIPVisionModel``, ``SiglipVisionModel`` and DINOv2's
  backbones): each encoder layer, its attention, its MLP and the model's LayerNorms;
- open_clip's ``VisionTransformer`` (``model.visual``): each ``ResidualAttentionBlock``, its
  ``nn.MultiheadAttention``, its MLP and ``ln_pre`` / ``ln_post``.

Only ``forward`` changes, as an instance attribute; parameters, buffers, names, the state dict,
hooks, ``requires_grad``, dtype and device are untouched, and ``unpatch`` removes the attribute
again. Hooks on the layer, its attention and its MLP keep firing; hooks on a LayerNorm or an
activation that a fusion absorbs would not, so a layer with such hooks is left alone (named in
the report). Attention-like modules that are not recognised (timm ``Eva``, attention pooling
heads, text towers, ...) run as before and are named in the report with the reason.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch.nn as nn

from ..backend import check_backend
from . import _forwards as fw
from ._forwards import PatchState, activation_approximate, layer_norm_problem

# transformers encoder layers: the attribute names their forward uses
HF_LAYERS = {
    "ViTLayer": dict(norm1="layernorm_before", attn="attention", norm2="layernorm_after", mlp="mlp", drop="dropout"),
    "DeiTLayer": dict(norm1="layernorm_before", attn="attention", norm2="layernorm_after", mlp="mlp", drop="dropout"),
    "Dinov2Layer": dict(norm1="norm1", attn="attention", norm2="norm2", mlp="mlp", drop="drop_path",
                        ls1="layer_scale1", ls2="layer_scale2"),
    "CLIPEncoderLayer": dict(norm1="layer_norm1", attn="self_attn", norm2="layer_norm2", mlp="mlp"),
    "SiglipEncoderLayer": dict(norm1="layer_norm1", attn="self_attn", norm2="layer_norm2", mlp="mlp"),
}
HF_LAYERS["Dinov2WithRegistersLayer"] = HF_LAYERS["Dinov2Layer"]
# transformers models whose encoder layers are vision layers (text towers reuse CLIPEncoderLayer
# with a causal mask: they are left alone)
HF_VISION_ROOTS = {"ViTModel", "DeiTModel", "Dinov2Model", "Dinov2Backbone", "Dinov2WithRegistersModel",
                   "Dinov2WithRegistersBackbone", "CLIPVisionModel", "CLIPVisionTransformer", "SiglipVisionModel",
                   "SiglipVisionTransformer"}
_LEFT_ALONE = {
    "Eva": "timm Eva (EVA-02, rotary ViTs): its attention applies rotary position embeddings inside, which "
           "fastvit.ops.attention does not take; left alone",
}


@dataclass
class PatchReport:
    """What ``patch`` (or ``unpatch``) did: module paths whose forward now runs fastvit's ops
    (or was restored), and modules left as they are, with the reason."""
    patched: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    action: str = "patched"

    def __str__(self) -> str:
        lines = [f"fastvit: {self.action} {len(self.patched)} module(s)"]
        lines += [f"  {p or '<root>'}" for p in self.patched]
        if self.skipped:
            lines.append(f"left alone: {len(self.skipped)}")
            lines += [f"  {p or '<root>'}: {why}" for p, why in self.skipped.items()]
        return "\n".join(lines)


def _install(module: nn.Module, fn, backend: str, spec: dict | None = None) -> None:
    prior = module.__dict__.get("_fastvit_patch")
    if prior is not None:   # patched before: keep the true original, take the new backend
        prior.backend = backend
        return
    original = module.__dict__.get("forward")   # an instance forward someone else installed, or None
    module.__dict__["_fastvit_patch"] = PatchState(backend, original, dict(spec or {}))
    module.forward = types.MethodType(fn, module)


def _is_attention_like(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__


def patch(model: nn.Module, backend: str = "auto") -> PatchReport:
    """Run ``model``'s recognised ViT layers on fastvit's fused ops, in place (see the module
    docstring). Returns a :class:`PatchReport`; ``unpatch(model)`` undoes it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    backend = check_backend(backend)
    report = PatchReport()
    handled: set[int] = set()   # ids of modules patched or deliberately left alone (with their subtree)
    in_roots: set[int] = set()   # ids of modules inside a recognised model
    for path, m in model.named_modules():
        if id(m) in handled:
            continue
        name, mod = type(m).__name__, type(m).__module__
        if mod.startswith("timm") and name in _LEFT_ALONE:
            report.skipped[path] = _LEFT_ALONE[name]
            handled.update(id(s) for s in m.modules())
        elif mod.startswith("timm.models.vision_transformer") and name == "VisionTransformer":
            _patch_timm(m, path, backend, report, handled)
            in_roots.update(id(s) for s in m.modules())
        elif mod.startswith("open_clip") and name == "VisionTransformer":
            _patch_open_clip(m, path, backend, report, handled)
            in_roots.update(id(s) for s in m.modules())
        elif mod.startswith("transformers") and name in HF_VISION_ROOTS:
            _patch_hf(m, path, backend, report, handled)
            in_roots.update(id(s) for s in m.modules())
    for path, m in model.named_modules():
        if id(m) not in handled and _is_attention_like(m):
            where = ("inside a recognised model, but not a layout fastvit.patch fuses" if id(m) in in_roots else
                     "outside the vision models fastvit.patch recognises (e.g. a text tower, whose causal mask "
                     "the kernels do not take)")
            report.skipped.setdefault(path, f"{type(m).__name__}: {where}; runs as before")
    return report


def unpatch(model: nn.Module) -> PatchReport:
    """Restore every forward ``patch`` replaced in ``model``'s tree."""
    report = PatchReport(action="restored")
    for path, m in model.named_modules():
        st = m.__dict__.pop("_fastvit_patch", None)
        if st is None:
            continue
        if st.original is None:
            del m.__dict__["forward"]
        else:
            m.__dict__["forward"] = st.original
        report.patched.append(path)
    return report


def _join(path: str, sub: str) -> str:
    return f"{path}.{sub}" if path else sub


def _norms(owner: nn.Module, path: str, backend, report, handled) -> None:
    """The LayerNorms directly owned by a recognised model (pre/final norms), as ops.layer_norm."""
    for sub, child in owner.named_children():
        if isinstance(child, nn.LayerNorm) and id(child) not in handled and layer_norm_problem(child) is None:
            _install(child, fw.layer_norm_forward, backend)
            report.patched.append(_join(path, sub))
            handled.add(id(child))


def _layer(block, path, backend, report, handled, fn, norms, parts, spec=None):
    """Patch one layer (its forward, its attention and its MLP) if every piece can be fused.
    ``parts``: (attn name, attn forward, attn spec or None if unrecognised, mlp name, activation,
    mlp forward)."""
    attn_name, attn_fn, attn_spec, mlp_name, act, mlp_fn = parts
    problems = [f"{n}: {p}" for n in norms if (p := layer_norm_problem(getattr(block, n))) is not None]
    approx = activation_approximate(act)
    if approx is None:
        problems.append(f"MLP activation {type(act).__name__} is not GELU, GELU-tanh or QuickGELU")
    attn = getattr(block, attn_name)
    if attn_spec is None:
        problems.append(f"attention {type(attn).__name__}: layout not recognised")
    handled.update(id(s) for s in block.modules())
    if problems:
        report.skipped[path] = "; ".join(problems) + "; layer runs as before"
        return
    _install(block, fn, backend, spec)
    _install(attn, attn_fn, backend, attn_spec)
    _install(getattr(block, mlp_name), mlp_fn, backend, {"approximate": approx})
    report.patched += [path, _join(path, attn_name), _join(path, mlp_name)]


def _patch_timm(vit, path, backend, report, handled) -> None:
    from timm.layers import Mlp
    from timm.models.vision_transformer import Block
    for i, blk in enumerate(getattr(vit, "blocks", [])):
        where = _join(path, f"blocks.{i}")
        if type(blk) is not Block or type(blk.mlp) is not Mlp or not isinstance(blk.mlp.norm, nn.Identity):
            what = type(blk).__name__ if type(blk) is not Block else f"its MLP {type(blk.mlp).__name__}"
            report.skipped[where] = f"{what} is not timm's pre-norm Block with an fc1-GELU-fc2 Mlp; runs as before"
            handled.update(id(s) for s in blk.modules())
            continue
        a = blk.attn
        ok = (hasattr(a, "qkv") and isinstance(getattr(a, "norm", nn.Identity()), nn.Identity)
              and getattr(a, "gate", None) is None
              and all(isinstance(n, nn.Identity) or layer_norm_problem(n) is None for n in (a.q_norm, a.k_norm)))
        _layer(blk, where, backend, report, handled, fw.timm_block_forward, ("norm1", "norm2"),
               ("attn", fw.timm_attention_forward, {} if ok else None, "mlp", blk.mlp.act, fw.timm_mlp_forward))
    _norms(vit, path, backend, report, handled)


def _patch_hf(root, path, backend, report, handled) -> None:
    for sub, m in root.named_modules():
        spec = HF_LAYERS.get(type(m).__name__)
        if spec is None or id(m) in handled:
            continue
        where = _join(path, sub)
        attn, mlp = getattr(m, spec["attn"]), getattr(m, spec["mlp"])
        if not (hasattr(mlp, "fc1") and hasattr(mlp, "activation_fn") and hasattr(mlp, "fc2")):
            report.skipped[where] = f"MLP {type(mlp).__name__} (e.g. SwiGLU) is not fused; layer runs as before"
            handled.update(id(s) for s in m.modules())
            continue
        out = "o_proj" if hasattr(attn, "o_proj") else "out_proj"
        attn_spec = None
        # the layout of transformers >= 5 (q_proj/k_proj/v_proj); older versions' nested
        # attention.attention.query modules are not recognised (attn_implementation="fastvit" covers them)
        if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", out, "head_dim")) \
                and not getattr(attn, "is_causal", False):
            attn_spec = {"out": out, "scale": "scaling" if hasattr(attn, "scaling") else "scale",
                         "dropout": "attention_dropout" if hasattr(attn, "attention_dropout") else "dropout"}
        _layer(m, where, backend, report, handled, fw.hf_layer_forward, (spec["norm1"], spec["norm2"]),
               (spec["attn"], fw.hf_attention_forward, attn_spec, spec["mlp"], mlp.activation_fn, fw.hf_mlp_forward),
               spec)
    _norms(root, path, backend, report, handled)


def _patch_open_clip(vit, path, backend, report, handled) -> None:
    from open_clip.transformer import ResidualAttentionBlock
    for i, blk in enumerate(vit.transformer.resblocks):
        where = _join(path, f"transformer.resblocks.{i}")
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            report.skipped[where] = (f"{type(blk).__name__} (qk_norm, scaled cosine attention, ...): only open_clip's "
                                     f"default ResidualAttentionBlock is patched; runs as before")
            handled.update(id(s) for s in blk.modules())
            continue
        a = blk.attn
        ok = a.batch_first and a._qkv_same_embed_dim and a.bias_k is None and not a.add_zero_attn
        _layer(blk, where, backend, report, handled, fw.open_clip_block_forward, ("ln_1", "ln_2"),
               ("attn", fw.mha_self_attention_forward, {} if ok else None, "mlp", blk.mlp.gelu,
                fw.open_clip_mlp_forward))
    _norms(vit, path, backend, report, handled)
