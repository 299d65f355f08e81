"""from_transformers: each family's outputs (per the table in fastvit/convert/transformers_vit.py)
and input gradients equal the source's, fp32 relative error <= 1e-5, on sdpa and triton;
load_checkpoint reads the same layout; refusals name the feature."""
import pytest
import torch

import fastvit
from fastvit.convert import UnsupportedModelError
from tests._tolerances import rel_err
from tests.test_integrations_transformers import hf_model, randomize

transformers = pytest.importorskip("transformers")

def _feats(ours, x):
    return ours.forward_features(x)


def _pooled(ours, x):
    return ours.forward_head(ours.forward_features(x), pre_logits=True)


def _logits(ours, x):
    return ours(x)


def _post_ln(src, out):   # CLIP's last_hidden_state is taken before post_layernorm
    return src.post_layernorm(out.last_hidden_state)


# name: (source builder, [(fastvit output, source output), ...])
CASES = {
    "vit_cls": (lambda: hf_model("vit", "ViTForImageClassification", num_labels=5), [(_logits, lambda s, o: o.logits)]),
    "deit_teacher": (lambda: hf_model("deit", "DeiTForImageClassificationWithTeacher", num_labels=5),
                     [(_logits, lambda s, o: o.logits)]),
    "dinov2": (lambda: hf_model("dinov2"), [(_feats, lambda s, o: o.last_hidden_state),
                                            (_pooled, lambda s, o: o.pooler_output)]),
    "dinov2_reg": (lambda: hf_model("dinov2_reg"), [(_feats, lambda s, o: o.last_hidden_state),
                                                    (_pooled, lambda s, o: o.pooler_output)]),
    "clip_gelu": (lambda: hf_model("clip", hidden_act="gelu"), [(_feats, _post_ln),
                                                                (_pooled, lambda s, o: o.pooler_output)]),
    "clip_quick_proj": (lambda: hf_model("clip", "CLIPVisionModelWithProjection", projection_dim=16),
                        [(_logits, lambda s, o: o.image_embeds)]),
    "siglip": (lambda: hf_model("siglip"), [(_feats, lambda s, o: o.last_hidden_state),
                                            (_pooled, lambda s, o: o.pooler_output)]),
}


def _grad(out, x):
    return torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x)[0]


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_equals_source(name, backend):
    build, pairs = CASES[name]
    src = build()
    ours = fastvit.from_transformers(src, backend=backend)
    for ours_fn, src_fn in pairs:
        x1 = torch.randn(2, 3, 32, 32, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_(True)
        a, b = ours_fn(ours, x1), src_fn(src, src(pixel_values=x2))
        assert a.shape == b.shape
        assert rel_err(a, b) <= 1e-5
        assert rel_err(_grad(a, x1), _grad(b, x2)) <= 1e-5


def test_mapping_names_and_dropped_keys():
    sd = fastvit.convert.transformers_to_timm(hf_model("dinov2_reg").state_dict())
    assert "blocks.1.attn.qkv.weight" in sd and sd["blocks.1.attn.qkv.weight"].shape == (96, 32)
    assert "blocks.0.ls2.gamma" in sd and "reg_token" in sd
    assert not any("mask_token" in k for k in sd)


def test_vit_pooler_is_dropped_with_a_warning():
    src = hf_model("vit", "ViTModel")
    with pytest.warns(UserWarning, match="pooler"):
        ours = fastvit.from_transformers(src, backend="sdpa")
    x = torch.randn(2, 3, 32, 32)
    assert rel_err(ours.forward_features(x), src(x).last_hidden_state) <= 1e-5


@pytest.mark.parametrize("family,cls", [("siglip", "SiglipVisionModel"), ("vit", "ViTForImageClassification")])
def test_load_checkpoint_reads_the_transformers_layout(tmp_path, family, cls):
    from safetensors.torch import save_file
    src = hf_model(family, cls, **({"num_labels": 5} if cls.endswith("Classification") else {}))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    expected = fastvit.from_transformers(src, backend="sdpa")
    model = fastvit.FastViT(img_size=32, patch_size=8,
                            embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                            num_classes=expected.num_classes, class_token=expected.cls_token is not None,
                            global_pool=expected.global_pool, gelu_approximate=expected.gelu_approximate,
                            norm_eps=expected.blocks[0].norm1.eps, backend="sdpa")
    fastvit.load_checkpoint(model, path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), expected(x))


@pytest.mark.parametrize("build,match", [
    (lambda: transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8,
        num_patches=16)), "SigLIP 2"),
    (lambda: hf_model("dinov2", "Dinov2ForImageClassification", num_labels=3), "CLS token concatenated"),
    (lambda: hf_model("dinov2", use_swiglu_ffn=True), "SwiGLU"),
])
def test_refusals_name_the_feature(build, match):
    with pytest.raises(UnsupportedModelError, match=match):
        fastvit.from_transformers(build())


def test_multimodal_and_foreign_models():
    from tests.test_integrations_patch import clip_model, timm_vit
    with pytest.raises(UnsupportedModelError, match="model.vision_model"):
        fastvit.from_transformers(clip_model())
    with pytest.raises(TypeError, match="must be a transformers model.*got VisionTransformer"):
        fastvit.from_transformers(timm_vit())
