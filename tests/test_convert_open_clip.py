"""from_open_clip: the image embedding (forward) and the pooled feature equal open_clip's tower,
with input gradients, fp32 relative error <= 1e-5, on sdpa and triton; load_checkpoint reads a
whole CLIP state dict (``visual.`` keys); refusals name the feature."""
import pytest
import torch

import fastvit
from fastvit.convert import UnsupportedModelError
from tests._tolerances import rel_err
from tests.test_integrations_patch import open_clip_visual

open_clip = pytest.importorskip("open_clip")

VARIANTS = {
    "tok": {},
    "avg_ln_after_pool_layer_scale": dict(pool_type="avg", final_ln_after_pool=True, ls_init_value=1e-2),
    "quick_gelu_no_ln_pre": dict(no_ln_pre=True),
}


def _build(name):
    if name == "quick_gelu_no_ln_pre":   # open_clip's QuickGELU comes from the model-level flag
        model = open_clip.create_model("ViT-B-32", pretrained=None, embed_dim=16, force_quick_gelu=True,
                                       vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8,
                                                       head_width=16, no_ln_pre=True),
                                       text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))
        from tests.test_integrations_transformers import randomize
        return randomize(model.visual)
    return open_clip_visual(**VARIANTS[name])


def _grad(out, x):
    return torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x)[0]


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_converted_equals_open_clip(name, backend):
    src = _build(name)
    ours = fastvit.from_open_clip(src, backend=backend)
    if name == "quick_gelu_no_ln_pre":
        assert ours.gelu_approximate == "quick" and isinstance(ours.norm_pre, torch.nn.Identity)
    x1 = torch.randn(2, 3, 32, 32, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    a, b = ours(x1), src(x2)
    assert a.shape == b.shape == (2, 16)
    assert rel_err(a, b) <= 1e-5
    assert rel_err(_grad(a, x1), _grad(b, x2)) <= 1e-5
    with torch.no_grad():
        pooled, _ = src._pool(src.transformer(src._embeds(x2)))
        assert rel_err(ours.forward_head(ours.forward_features(x1), pre_logits=True), pooled) <= 1e-5


def test_load_checkpoint_of_a_whole_clip_state_dict(tmp_path):
    src = open_clip_visual()
    full = {f"visual.{k}": v for k, v in src.state_dict().items()}
    full["logit_scale"] = torch.ones(())   # the other towers' keys are not the image tower's
    full["transformer.resblocks.0.ln_1.weight"] = torch.ones(32)
    path = tmp_path / "clip.pt"
    torch.save(full, path)
    model = fastvit.FastViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=16,
                            pre_norm=True, norm_eps=1e-5, backend="sdpa")
    fastvit.load_checkpoint(model, path)
    x = torch.randn(2, 3, 32, 32)
    assert rel_err(model(x), src(x)) <= 1e-5


@pytest.mark.parametrize("vision,match", [
    (dict(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2), "attentional pooling"),
    (dict(qk_norm=True), "CustomResidualAttentionBlock"),
    (dict(patch_dropout=0.5), "patch dropout"),
])
def test_refusals_name_the_feature(vision, match):
    with pytest.raises(UnsupportedModelError, match=match):
        fastvit.from_open_clip(open_clip_visual(**vision))


def test_whole_model_is_pointed_to_visual():
    model = open_clip.create_model("ViT-B-32", pretrained=None, embed_dim=16,
                                   vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                                   text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))
    with pytest.raises(TypeError, match=r"pass model.visual"):
        fastvit.from_open_clip(model)
